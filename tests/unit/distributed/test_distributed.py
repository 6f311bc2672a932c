"""Fits under torch.distributed: two gloo ranks on the CPU, spawned by the tests themselves,
against single-process fits of the same rows; a dead rank and mismatched settings fail with
typed errors instead of hanging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import actbridge as ab
import numpy as np
import pytest
from actbridge.testing import tiny_model, tiny_tokenizer

WORKER = Path(__file__).with_name("dist_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(mode: str, store: Path, out: Path, world: int = 2, timeout_s: float = 30) -> list[dict]:
    """Start ``world`` worker processes and wait for all of them (a hang fails the test on the
    subprocess timeout, never the suite)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ) | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "AB_TEST_TIMEOUT": str(timeout_s),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), mode, str(store), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout_s * 6)[0])
    finally:
        for p in procs:
            p.kill()
    reports = []
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        path = out / f"rank{rank}.json"
        if mode == "die" and rank == 1:
            assert p.returncode == 3, log
            continue
        assert p.returncode == 0 and path.exists(), f"rank {rank} exited {p.returncode}:\n{log[-3000:]}"
        reports.append(json.loads(path.read_text()) | {"arrays": dict(np.load(out / f"rank{rank}.npz"))})
    return reports


@pytest.fixture(scope="module")
def store_path(nonlinear_store):
    return Path(nonlinear_store.path)


def test_affine_fit_over_two_ranks_equals_one_process(store_path, nonlinear_store, tmp_path):
    reports = run_ranks("affine", store_path, tmp_path)
    single = ab.AffineMap.fit(nonlinear_store, rows=np.arange(0, 9000, 2), ridge=0.1, progress=False)
    for r in reports:
        assert r.get("error") is None, r
        assert r["provenance"] == {"mode": "split", "world": 2, "backend": "gloo"}
        np.testing.assert_allclose(r["arrays"]["weight"], single.weight, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["arrays"]["bias"], single.bias, rtol=1e-5, atol=1e-5)
    whole = ab.AffineMap.fit(nonlinear_store, progress=False)
    for r in reports:
        np.testing.assert_allclose(r["arrays"]["weight_all"], whole.weight, rtol=1e-5, atol=1e-6)
    # every rank solved the same statistics: identical maps
    np.testing.assert_array_equal(reports[0]["arrays"]["weight"], reports[1]["arrays"]["weight"])


def test_affine_fit_of_each_ranks_own_rows_sums_them(store_path, nonlinear_store, tmp_path):
    reports = run_ranks("affine_own", store_path, tmp_path)
    x, y = nonlinear_store.read("source"), nonlinear_store.read("target")
    single = ab.AffineMap.fit(x, y)
    for r in reports:
        np.testing.assert_allclose(r["arrays"]["weight"], single.weight, rtol=1e-5, atol=1e-6)


def test_autoencoder_ddp_over_two_ranks_matches_one_process(store_path, nonlinear_store, tmp_path):
    reports = run_ranks("ae", store_path, tmp_path)
    single = ab.AutoencoderMap.fit(
        nonlinear_store,
        rows=np.arange(0, 9000, 2),
        val_rows=np.arange(9000, 12000),
        epochs=3,
        batch_size=251,
        lr=3e-3,
        backend="torch",
        grad_clip=1.0,
        progress=False,
    )
    for r in reports:
        assert r.get("error") is None, r
        assert r["distributed"] == {"world": 2, "backend": "gloo"}
        assert len(r["history"]) == len(single.history) == 3
        for got, want in zip(r["history"], single.history, strict=True):
            for key in ("val_mse", "val_fvu", "val_cosine", "train_mse"):
                assert got[key] == pytest.approx(want[key], rel=1e-4), (key, got, want)
            assert got["lr"] == want["lr"]
        for k, v in single.tensors().items():
            np.testing.assert_allclose(r["arrays"][k], v, rtol=1e-3, atol=1e-4)
    # the ranks hold one model, and decided the same
    assert reports[0]["history"] == reports[1]["history"]
    for k in single.tensors():
        np.testing.assert_array_equal(reports[0]["arrays"][k], reports[1]["arrays"][k])


def test_ddp_gradients_of_uneven_shares_equal_the_single_process_mean_loss(
    store_path, nonlinear_store, tmp_path
):
    import torch
    from actbridge.maps.training import torch_module

    reports = run_ranks("grad", store_path, tmp_path)
    assert sorted(r["rows"] for r in reports) == [125, 126]
    torch.manual_seed(0)
    net = torch_module(32, 28, 24)
    x, y = (torch.from_numpy(nonlinear_store.read(s, np.arange(251))) for s in ("source", "target"))
    torch.nn.functional.mse_loss(net(x), y).backward()
    for r in reports:
        for k, p in net.named_parameters():
            np.testing.assert_allclose(r["arrays"][k], p.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_collection_over_two_ranks_equals_one_process(tmp_path):
    reports = run_ranks("collect", tmp_path / "store", tmp_path / "out")
    model, tok = tiny_model("llama", layers=3), tiny_tokenizer()
    texts = [f"text number {i} " + "word " * (i % 7 + 1) for i in range(23)]
    single = ab.collect(model, tok, texts, [0, 2], tmp_path / "single", batch_size=4, progress=False)
    store = ab.ActivationStore(tmp_path / "store")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["part-0", "part-1"]
    np.testing.assert_array_equal(store.column("doc"), single.column("doc"))
    np.testing.assert_allclose(store.read("layer2"), single.read("layer2"), rtol=1e-5, atol=1e-5)
    for r in reports:  # each rank opened the whole store once every part was committed
        np.testing.assert_array_equal(r["arrays"]["doc"], single.column("doc"))
    # a world size that changes between collection and fitting is fine: parts are shards
    m2 = ab.AffineMap.fit(store, source="layer0", target="layer2", progress=False)
    m1 = ab.AffineMap.fit(single, source="layer0", target="layer2", progress=False)
    np.testing.assert_allclose(m2.weight, m1.weight, rtol=1e-4, atol=1e-5)


def test_mismatched_settings_are_caught_before_the_reduction(store_path, tmp_path):
    reports = run_ranks("mismatch", store_path, tmp_path)
    for r in reports:
        assert r["error"] == "DistributedMismatchError", r
        assert "ridge: rank 0 has 0.1, rank 1 has 1.0" in r["message"]
    assert issubclass(ab.DistributedMismatchError, ValueError)


def test_a_dead_rank_gives_a_typed_error_not_a_hang(store_path, tmp_path):
    (report,) = run_ranks("die", store_path, tmp_path, timeout_s=20)
    assert report["error"] == "DistributedError", report
    assert "ranks failed" in report["message"] and "timeout" in report["message"]
    assert issubclass(ab.DistributedError, RuntimeError)


def test_the_rust_trainer_refuses_a_group(store_path, tmp_path):
    for r in run_ranks("rust", store_path, tmp_path):
        assert r["error"] == "MapArgumentError" and "backend='torch'" in r["message"], r


def test_without_a_group_distributed_modes_need_one(nonlinear_store):
    assert ab.distributed.active_group(None) is None and ab.distributed.active_group("off") is None
    assert ab.distributed.is_main()
    with pytest.raises(ab.MapArgumentError, match="init_process_group"):
        ab.AffineMap.fit(nonlinear_store, distributed="split", progress=False)
    with pytest.raises(ab.MapArgumentError, match="distributed must be"):
        ab.AffineMap.fit(nonlinear_store, distributed="both", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ab.MapArgumentError, match='"own" is for affine'):
        ab.AutoencoderMap.fit(nonlinear_store, distributed="own", progress=False)


def test_batch_shares_split_every_batch_in_order(nonlinear_store):
    kw = dict(batch_size=1000, shuffle=True, seed=4, epoch=1, rows=np.arange(0, 10_001))
    single = [b["source"] for b in nonlinear_store.batches("source", **kw)]
    shared = [[b["source"] for b in nonlinear_store.batches("source", share=(r, 3), **kw)] for r in range(3)]
    assert all(len(s) == len(single) for s in shared)
    for i, whole in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([s[i] for s in shared]), whole)
    for bad in [(3, 3), (0, 0), (-1, 2), (0.5, 2), "02", (True, 2)]:
        with pytest.raises(ab.StoreArgumentError, match="share"):
            nonlinear_store.batches("source", share=bad)  # type: ignore[arg-type]


def test_single_process_fits_do_not_import_torch(nonlinear_store):
    """No group can exist before torch.distributed is imported, so a plain fit never pays for
    importing torch to look for one."""
    code = (
        "import sys, numpy as np, actbridge as ab\n"
        f"s = ab.ActivationStore({nonlinear_store.path!r})\n"
        "ab.AffineMap.fit(s, progress=False)\n"
        "ab.AutoencoderMap.fit(s, rows=slice(0, 2000), epochs=1, backend='rust', progress=False)\n"
        "assert 'torch' not in sys.modules, 'a single-process fit imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
