"""The install is reproducible: the locks in requirements/ are complete, hashed and agree with
each other, and the oldest supported versions recorded in actbridge.versions are the package
metadata's lower bounds and what `make test-min` installs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from actbridge import versions

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
REQ = ROOT / "requirements"
LOCKS = ("core", "demo", "models", "test", "test-models", "qwen-1.5b", "min")

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else None


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(name: str) -> dict[tuple[str, str], str]:
    """``{(package, marker): version}`` of ``requirements/<name>.lock``, checking that every
    pinned entry carries at least one sha256 hash."""
    text = (REQ / f"{name}.lock").read_text()
    pins: dict[tuple[str, str], str] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        line = entry.split("\\", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z0-9_.-]+)==([^ ;]+)\s*(?:;\s*(.*))?$", line)
        assert m, f"{name}.lock: not an exact pin: {line!r}"
        assert "--hash=sha256:" in entry, f"{name}.lock: {m.group(1)} has no hash"
        pins[(norm(m.group(1)), (m.group(3) or "").strip())] = m.group(2)
    assert pins, f"{name}.lock pins nothing"
    return pins


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", req)
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_lock_is_exact_and_hashed():
    for name in LOCKS:
        lock_pins(name)


def test_the_subset_locks_pin_the_same_versions_as_the_test_lock():
    test = lock_pins("test")
    for name in ("core", "demo"):
        for key, version in lock_pins(name).items():
            assert key in test, f"{key[0]} ({key[1] or 'all platforms'}) is in {name}.lock but not test.lock"
            assert test[key] == version, f"{key[0]}: {name}.lock has {version}, test.lock {test[key]}"


def test_each_lock_holds_what_its_in_file_asks_for():
    for name in ("core", "demo", "test", "models", "test-models", "qwen-1.5b", "min"):
        asked = set()
        for line in (REQ / f"{name}.in").read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-r"):
                asked.add(norm(re.split(r"[<>=!~; \[]", line, maxsplit=1)[0]))
        pinned = {pkg for pkg, _ in lock_pins(name)}
        assert asked <= pinned, f"{name}.lock lacks {sorted(asked - pinned)}"


def test_pyproject_lower_bounds_are_the_recorded_minimum_versions():
    project = pyproject()["project"]
    declared = lower_bounds(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        for pkg, bound in lower_bounds(extra).items():
            assert declared.setdefault(pkg, bound) == bound, f"{pkg}: two lower bounds in pyproject.toml"
    minimum = {norm(k): v for k, v in versions.MINIMUM.items()}
    for pkg, bound in minimum.items():
        said = declared.get(pkg)
        assert said == bound, f"{pkg}: pyproject says >={said}, versions.MINIMUM {bound}"
    # ...and the .in files (what the locks are resolved from) use the same bounds.
    for name in ("core", "demo", "test"):
        lines = [x.split("#", 1)[0] for x in (REQ / f"{name}.in").read_text().splitlines()]
        for pkg, bound in lower_bounds(lines).items():
            if pkg in declared:
                assert declared[pkg] == bound, f"{name}.in: {pkg}>={bound}, pyproject.toml >={declared[pkg]}"


def test_min_lock_installs_exactly_the_oldest_supported_releases():
    pins = {pkg: v for (pkg, _), v in lock_pins("min").items()}
    for pkg in versions.OVERLAID:
        assert versions.release(pins[norm(pkg)]) == versions.release(versions.MINIMUM[pkg]), pkg


def test_release_parses_versions_as_pip_orders_them():
    assert versions.release("4.56.0") == versions.release("4.56") == (4, 56)
    assert versions.release("2.15.0+cpu") == (2, 15)
    assert versions.release("5.24.0") > versions.release("4.56")
    assert versions.release("0.10") > versions.release("0.9.1")
    assert versions.release("not a version") == ()


def test_versions_report_and_the_min_check(capsys):
    assert versions.main([]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "oldest supported" in out
    found = versions.installed()
    at_min = all(
        versions.release(found[p] or "") == versions.release(versions.MINIMUM[p]) for p in versions.OVERLAID
    )
    assert versions.main(["--check-min"]) == (0 if at_min else 1)
    if not at_min:
        assert "not the oldest supported releases" in capsys.readouterr().err


def test_the_qwen_part_locks_pin_every_part_the_models_assemble():
    from actbridge.models import EMBEDDED

    for name, lock in (
        ("qwen2.5-coder-0.5b-instruct", "test-models"),
        ("qwen2.5-coder-1.5b-instruct", "qwen-1.5b"),
    ):
        parts = EMBEDDED[name].parts
        assert parts is not None
        pins = {pkg: v for (pkg, _), v in lock_pins(lock).items()}
        for k in range(1, parts.count + 1):
            assert pins.get(norm(f"{parts.dist}{k}")) == parts.version, f"{lock}.lock: part {k} of {name}"


def test_the_vector_level_is_reported_and_a_bad_cap_is_ignored():
    import os
    import subprocess
    import sys

    import actbridge as ab

    levels = ab.simd_levels()
    order = ["portable", "avx2", "avx512"]
    assert levels.detected in order and order.index(levels.active) <= order.index(levels.detected)
    code = (
        "import actbridge as ab\n"
        "v = ab.simd_levels()\n"
        "print(v.active, v.detected, v.requested, v.requested_is_valid)"
    )
    for cap, want in (("portable", "portable"), ("AVX2", "avx2"), ("sse9", None)):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=dict(os.environ, ACTBRIDGE_SIMD=cap),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        active, detected, requested, valid = out
        if want is None:
            assert active == detected and requested == "sse9" and valid == "False"
        else:
            assert (
                active == (want if order.index(want) <= order.index(detected) else detected)
                and valid == "True"
            )
    report = subprocess.run(
        [sys.executable, "-m", "actbridge.versions"],
        env=dict(os.environ, ACTBRIDGE_SIMD="sse9"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "ACTBRIDGE_SIMD 'sse9' (not a level: ignored)" in report
