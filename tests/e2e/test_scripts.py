"""The example (the main job) and the benchmark run end to end at tiny sizes, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())


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
        "--memcpy-mib",
        "16",
        "--dir",
        str(tmp_path / "b"),
        cwd=tmp_path,
    )
    for op in [
        "shuffled (default level)",
        "actbridge, ACTBRIDGE_SIMD=portable",
        "block-shuffled batches",
        "sequential read",
        "append",
    ]:
        assert f"| {op}" in out
    assert "# memcpy" in out
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


def test_demo_smoke_writes_a_report_and_reuses_its_cache(tmp_path):
    demo = [
        str(Path(sys.executable).parent / "actbridge"),
        "demo",
        "--smoke",
        "--quiet",
        "--dir",
        str(tmp_path / "d"),
    ]
    r = subprocess.run(demo, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "alignment rate" in out and "| affine |" in out and "| autoencoder |" in out
    assert "mapped (affine) +" in out and "noise (same norm) -" in out
    report = tmp_path / "d" / "report"
    for name in ("report.json", "report.md", "steering.png", "substitution.png", "autoencoder_training.png"):
        assert (report / name).is_file(), name
    import json

    import actbridge as ab

    data = json.loads((report / "report.json").read_text())
    assert set(data["maps"]) == {"affine", "autoencoder"}
    assert {"value", "ci95"} <= set(data["maps"]["affine"]["substitution"]["ce_recovered"])
    assert ab.load_map(tmp_path / "d" / "affine").d_target == 48
    rows = len(ab.ActivationStore(tmp_path / "d" / "pairs"))
    # Again without --quiet: every long step shows a bar with counts (the store is reused).
    loud = [arg for arg in demo if arg != "--quiet"]
    r = subprocess.run(loud, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(ab.ActivationStore(tmp_path / "d" / "pairs")) == rows  # the finished store is reused
    batches = -(-6 // 8) * 2  # the mean pass and the substitution pass over 6 texts, batches of 8
    assert "substitution eval: 100%" in r.stderr and f"{batches}/{batches}" in r.stderr
    # 9 conditions x 8 prompts x 6 new tokens, counted token by token
    assert "sweep generations: 100%" in r.stderr and "432/432" in r.stderr


def test_collect_benchmark_smoke(tmp_path):
    out = run(str(ROOT / "benches" / "bench_collect.py"), "--smoke", "--repeats", "1", cwd=tmp_path)
    assert "| tiny-llama | 1,2 |" in out and "overhead" in out
    assert "| tiny-llama -> tiny-gemma3 |" in out
    assert "| tiny-llama-4 | 1,2 |" in out and "| tiny-llama-3 -> tiny-llama-4 | 1 -> 2 |" in out


def test_hooks_benchmark_smoke(tmp_path):
    out = run(str(ROOT / "benches" / "bench_hooks.py"), "--smoke", cwd=tmp_path)
    for label in ("| plain |", "| steer α=0 |", "| steer |", "| ablate (all layers) |"):
        assert label in out


def test_sweep_benchmark_smoke(tmp_path):
    bench = str(ROOT / "benches" / "bench_sweep.py")
    out = run(bench, "--smoke", "--prompts", "6", "--new-tokens", "4", cwd=tmp_path)
    assert "| tiny-llama |" in out and "96/96 (100.0%)" in out and "GiB |" in out


def test_evaluate_benchmark_smoke(tmp_path):
    bench = str(ROOT / "benches" / "bench_evaluate.py")
    out = run(bench, "--smoke", "--texts", "6", "--repeats", "1", cwd=tmp_path)
    assert "one call for both (after)" in out and "| True |" in out


def test_finetune_benchmark_smoke(tmp_path):
    out = run(str(ROOT / "benches" / "bench_finetune.py"), "--smoke", cwd=tmp_path)
    for label in ("| full |", "| lora |", "| lora+ckpt |", "| peft loop |", "| peft loop+ckpt |"):
        assert label in out
    assert "failed" not in out and "| peft loop | " in out and "| 1.00x |" in out


def test_attack_campaign_smoke_finds_nothing(tmp_path):
    out = run(str(ROOT / "benches" / "attack.py"), "--scale", "0.1", cwd=tmp_path)
    table = [line for line in out.splitlines() if line.startswith("| ") and "tried" not in line]
    rows = [line.split("|")[2:-1] for line in table]
    assert len(rows) == 9, out
    for tried, typed, unchanged, silent, untyped, crash in rows:
        assert int(tried) == int(typed) + int(unchanged), out  # every attempt typed or harmless
        assert int(silent) == int(untyped) == int(crash) == 0, out
