"""The example (the main job) and the benchmark run end to end at tiny sizes, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> str:
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_store_roundtrip_example_smoke(tmp_path):
    out = run(
        str(ROOT / "examples" / "store_roundtrip.py"), "--smoke", "--path", str(tmp_path / "s"), cwd=tmp_path
    )
    assert "resumed at row 500" in out
    assert "rows=1000" in out
    assert "documents on both sides: 0" in out
    assert "every shard checksum matches" in out


def test_store_benchmark_smoke(tmp_path):
    out = run(
        str(ROOT / "benches" / "bench_store.py"),
        "--rows",
        "6000",
        "--dim",
        "64",
        "--batch",
        "256",
        "--batches",
        "4",
        "--repeats",
        "1",
        "--dir",
        str(tmp_path / "b"),
        cwd=tmp_path,
    )
    for op in ["shuffled batches", "block-shuffled batches", "sequential read", "append"]:
        assert f"| {op}" in out
    assert not (tmp_path / "b").exists()  # cleaned up


def test_fit_benchmark_smoke(tmp_path):
    out = run(
        str(ROOT / "benches" / "bench_fit.py"),
        "--rows",
        "3000",
        "--lstsq-rows",
        "1000",
        "--repeats",
        "1",
        "--shapes",
        "32x16",
        "--ooc-gb",
        "0.01",
        "--ae",
        "--ae-rows",
        "2000",
        "--ae-shapes",
        "16x8",
        "--dir",
        str(tmp_path / "f"),
        cwd=tmp_path,
    )
    assert "| 32 -> 16 |" in out and "out of core:" in out and "peak RSS" in out
    assert "| 16 -> 11 -> 8 |" in out
    assert not (tmp_path / "f").exists()


def test_map_example_smoke(tmp_path):
    out = run(
        str(ROOT / "examples" / "map_smollm2_to_gemma.py"),
        "--smoke",
        "--dir",
        str(tmp_path / "m"),
        cwd=tmp_path,
    )
    assert "alignment rate" in out
    assert "| affine (ridge 1e-2) |" in out and "| autoencoder h=" in out
    import actbridge as ab

    assert ab.load_map(tmp_path / "m" / "affine").d_target == 48
    # a rerun reuses the finished store (mode="a" adds nothing)
    rows = len(ab.ActivationStore(tmp_path / "m" / "pairs"))
    run(
        str(ROOT / "examples" / "map_smollm2_to_gemma.py"),
        "--smoke",
        "--dir",
        str(tmp_path / "m"),
        cwd=tmp_path,
    )
    assert len(ab.ActivationStore(tmp_path / "m" / "pairs")) == rows


def test_collect_benchmark_smoke(tmp_path):
    out = run(str(ROOT / "benches" / "bench_collect.py"), "--smoke", "--repeats", "1", cwd=tmp_path)
    assert "| tiny-llama | 1,2 |" in out and "overhead" in out
    assert "| tiny-llama -> tiny-gemma3 |" in out
