"""The package surface: the native stub matches the build, the typed package checks clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import actbridge as ab
import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())


def test_stub_matches_native_module():
    pytest.importorskip("mypy")
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "actbridge._native"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_package_type_checks_strictly():
    pytest.importorskip("mypy")
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_public_names():
    for name in ["StoreWriter", "ActivationStore", "StoreError", "StoreCorruptError", "ActbridgeError"]:
        assert hasattr(ab, name)
    assert (Path(ab.__file__).parent / "py.typed").exists()
