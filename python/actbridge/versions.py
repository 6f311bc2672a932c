"""The versions of actbridge's dependencies: those installed, and the oldest supported.

``python -m actbridge.versions`` prints them (paste it into a bug report). The oldest supported
versions are the lower bounds of the package metadata (``pyproject.toml``, checked by the test
suite) and are what ``make test-min`` installs (``requirements/min.lock``) to run the
substitution, generation and collection tests on; the newest tested ones are pinned in
``requirements/test.lock``.
"""

from __future__ import annotations

import platform
import re
import sys
from typing import NamedTuple

#: The oldest release of each dependency that actbridge supports (distribution names): the
#: lower bounds of ``pyproject.toml`` (a test keeps the two equal). transformers 4.56 is the
#: oldest with the cache and masking API the interventions use (``DynamicCache(config=...)``,
#: masks built from the cache's length); tokenizers 0.22 is the oldest transformers 4.56 takes.
MINIMUM: dict[str, str] = {
    "numpy": "1.24",
    "safetensors": "0.4",
    "tqdm": "4.60",
    "torch": "2.1",
    "transformers": "4.56",
    "tokenizers": "0.22",
    "gguf": "0.10",
    "accelerate": "1.0",
    "matplotlib": "3.6",
    "peft": "0.17",
}

#: The packages ``make test-min`` installs at their oldest supported release
#: (``requirements/min.in`` pins them, with the huggingface-hub that transformers 4.56 needs).
OVERLAID = ("transformers", "tokenizers", "peft")


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string, trailing zeros dropped: ``"4.56.0"`` and
    ``"4.56"`` -> ``(4, 56)``, ``"2.15.0+cpu"`` -> ``(2, 15)``; ``()`` for none."""
    found = re.match(r"\d+(?:\.\d+)*", version.strip())
    parts = [int(p) for p in found.group(0).split(".")] if found else []
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def installed() -> dict[str, str | None]:
    """``{distribution: installed version or None}`` for every entry of :data:`MINIMUM`."""
    from importlib import metadata  # here, not at import: it costs ~40 ms

    out: dict[str, str | None] = {}
    for name in MINIMUM:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class SimdLevels(NamedTuple):
    """The x86 vector extensions the Rust kernels use: ``"avx512"``, ``"avx2"`` or
    ``"portable"``. ``active`` is ``detected`` capped by the ``ACTBRIDGE_SIMD`` environment
    variable (read once, at the first kernel call; ``requested`` is its raw value, None when
    unset). Every level computes bit-identical results; the cap exists to measure and test, on
    an AVX-512 machine, the AVX2 paths that machines without AVX-512 take."""

    detected: str
    active: str
    requested: str | None

    @property
    def requested_is_valid(self) -> bool:
        return self.requested is None or self.requested in ("avx512", "avx2", "portable")


def simd_levels() -> SimdLevels:
    """The vector level this CPU supports, the one in use, and what ``ACTBRIDGE_SIMD`` asks."""
    from actbridge import _native

    return SimdLevels(*_native.simd_levels())


def report() -> str:
    """A plain-text table: Python, platform, actbridge, and each dependency (installed, oldest)."""
    from importlib import metadata

    try:
        own = metadata.version("actbridge")
    except metadata.PackageNotFoundError:
        own = "not installed"
    simd = simd_levels()
    cap = "unset" if simd.requested is None else repr(simd.requested)
    if not simd.requested_is_valid:
        cap += " (not a level: ignored)"
    lines = [
        f"python        {platform.python_version()} ({platform.python_implementation()})",
        f"platform      {platform.platform()}",
        f"actbridge     {own}",
        f"simd          {simd.active} (this CPU: {simd.detected}; ACTBRIDGE_SIMD {cap})",
        f"{'package':<16}{'installed':<14}oldest supported",
    ]
    for name, version in installed().items():
        lines.append(f"{name:<16}{version or '-':<14}{MINIMUM[name]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m actbridge.versions", description=__doc__)
    p.add_argument(
        "--check-min",
        action="store_true",
        help=f"exit 1 unless {', '.join(OVERLAID)} are exactly their oldest supported releases",
    )
    args = p.parse_args(argv)
    print(report())
    if args.check_min:
        found = installed()
        wrong = [
            f"{n} {found[n]} (want {MINIMUM[n]})"
            for n in OVERLAID
            if found[n] is None or release(found[n] or "") != release(MINIMUM[n])
        ]
        if wrong:
            print("not the oldest supported releases: " + ", ".join(wrong), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
