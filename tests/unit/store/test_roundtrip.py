"""Round trips over random shapes, dtypes and append chunkings (hypothesis), checked against
numpy references; shards checked with the reference safetensors reader."""

from __future__ import annotations

import json

import actbridge as ab
import numpy as np
import pytest
from conftest import bf16_round, stored
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DTYPES = ["float32", "float16", "bfloat16"]


@st.composite
def store_cases(draw):
    n_sites = draw(st.integers(1, 3))
    sites = {f"s{i}": draw(st.integers(1, 40)) for i in range(n_sites)}
    dtypes = {k: draw(st.sampled_from(DTYPES)) for k in sites}
    chunks = draw(st.lists(st.integers(0, 60), min_size=1, max_size=6))
    shard_rows = draw(st.integers(1, 70))
    input_dtype = draw(st.sampled_from(["float32", "float64", "float16"]))
    seed = draw(st.integers(0, 2**31))
    return sites, dtypes, chunks, shard_rows, input_dtype, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=store_cases())
def test_round_trip_any_shape_dtype_and_chunking(tmp_path_factory, case):
    sites, dtypes, chunks, shard_rows, input_dtype, seed = case
    path = tmp_path_factory.mktemp("rt") / "s"
    rng = np.random.default_rng(seed)
    total = sum(chunks)
    data = {k: (rng.standard_normal((total, d)) * 10).astype(input_dtype) for k, d in sites.items()}
    token = rng.integers(-(2**40), 2**40, total)
    with ab.StoreWriter(path, sites=sites, dtype=dtypes, shard_rows=shard_rows, columns=["token_id"]) as w:
        at = 0
        for c in chunks:
            w.append(token_id=token[at : at + c], **{k: v[at : at + c] for k, v in data.items()})
            at += c
    store = ab.ActivationStore(path)
    assert len(store) == total
    assert store.sites == sites
    assert store.dtypes == dtypes
    assert len(store.shards) == -(-total // shard_rows)
    for k, v in data.items():
        want = stored(v, dtypes[k])
        np.testing.assert_array_equal(store.read(k), want)
        idx = rng.integers(-total, total, size=min(total, 50)) if total else np.zeros(0, np.int64)
        np.testing.assert_array_equal(store.read(k, idx), want[idx])
        np.testing.assert_array_equal(store.read(k, slice(3, None, 2)), want[3::2])
        np.testing.assert_array_equal(store.read(k, dtype="float64"), want.astype(np.float64))
    np.testing.assert_array_equal(store.column("token_id"), token)
    store.verify()


def test_bfloat16_rounding_matches_torch(store_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32).reshape(-1, 10)
    x = np.where(np.isfinite(x), x, 1.0).astype(np.float32)
    x[0, :4] = [np.float32(1.00390625), np.float32(1.01171875), 3.4e38, -0.0]  # ties and overflow
    with ab.StoreWriter(store_path, sites={"x": 10}) as w:
        w.append(x=x)
    store = ab.ActivationStore(store_path)
    want = torch.from_numpy(x).to(torch.bfloat16)
    got = store.read_torch("x", dtype=torch.bfloat16)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    np.testing.assert_array_equal(store.read("x"), bf16_round(x))


@pytest.mark.parametrize("tdtype", ["float32", "float16", "bfloat16", "float64"])
def test_torch_tensors_append_like_numpy(store_path, tdtype):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(33, 7, generator=g).to(getattr(torch, tdtype))
    t = torch.arange(33)
    with ab.StoreWriter(store_path, sites={"x": 7}, dtype="float32") as w:
        w.append(x=x[:20], token_id=t[:20])
        w.append(x=x[20:].T.contiguous().T, token_id=t[20:])  # non-contiguous-origin input
    store = ab.ActivationStore(store_path)
    np.testing.assert_array_equal(store.read("x"), x.to(torch.float32).numpy())
    np.testing.assert_array_equal(store.column("token_id"), t.numpy())
    assert store.read_torch("x", dtype=torch.float16).dtype == torch.float16


def test_shards_are_plain_safetensors(store_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(2)
    a = rng.standard_normal((25, 6)).astype(np.float32)
    b = rng.standard_normal((25, 3)).astype(np.float32)
    with ab.StoreWriter(
        store_path,
        sites={"a": 6, "b": 3},
        dtype={"a": "float32", "b": "float16"},
        shard_rows=10,
        metadata={"model": "m", "layer": 3},
    ) as w:
        w.append(a=a, b=b, doc=np.arange(25) // 5, pos=np.arange(25) % 5)
    store = ab.ActivationStore(store_path)
    parts = [load_file(str(store_path / s["file"])) for s in store.shards]
    assert [p["a"].shape[0] for p in parts] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([p["a"] for p in parts]), a)
    np.testing.assert_array_equal(np.concatenate([p["b"] for p in parts]), b.astype(np.float16))
    np.testing.assert_array_equal(np.concatenate([p["doc"] for p in parts]), np.arange(25) // 5)
    manifest = json.loads((store_path / "manifest.json").read_text())
    assert manifest["rows"] == 25 and manifest["metadata"] == {"model": "m", "layer": 3}
    assert store.metadata == {"model": "m", "layer": 3}


def test_torch_reader_opens_bf16_shards(store_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    x = torch.randn(12, 5)
    with ab.StoreWriter(store_path, sites={"x": 5}) as w:
        w.append(x=x)
    shard = load_file(str(store_path / ab.ActivationStore(store_path).shards[0]["file"]))
    assert shard["x"].dtype == torch.bfloat16
    assert torch.equal(shard["x"], x.to(torch.bfloat16))


def test_selections(store_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    with ab.StoreWriter(store_path, sites={"x": 3}, dtype="float32", shard_rows=6) as w:
        w.append(x=x)
    store = ab.ActivationStore(store_path)
    np.testing.assert_array_equal(store.read("x", 4), x[4])
    np.testing.assert_array_equal(store.read("x", -1), x[-1])
    np.testing.assert_array_equal(store.read("x", slice(None, None, -3)), x[::-3])
    np.testing.assert_array_equal(store.read("x", slice(15, 5)), x[15:5])
    mask = np.arange(20) % 3 == 0
    np.testing.assert_array_equal(store.read("x", mask), x[mask])
    np.testing.assert_array_equal(store.read("x", [5, 5, 0]), x[[5, 5, 0]])
    np.testing.assert_array_equal(store.read("x", np.array([], dtype=np.int64)), x[:0])
    out = store.read("x", slice(0, 4))
    out[:] = -1  # a fresh array: the store is untouched
    np.testing.assert_array_equal(store.read("x", slice(0, 4)), x[:4])


def test_stats_match_numpy(store_path):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5000, 16)) * 3 + 100).astype(np.float32)
    with ab.StoreWriter(store_path, sites={"x": 16}, dtype="float32", shard_rows=700) as w:
        w.append(x=x)
    s = ab.ActivationStore(store_path).stats("x")
    x64 = x.astype(np.float64)
    assert s["count"] == 5000
    np.testing.assert_allclose(s["mean"], x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["var"], x64.var(0), rtol=1e-9)
    np.testing.assert_allclose(s["std"], x64.std(0), rtol=1e-9)
    np.testing.assert_array_equal(s["min"], x.min(0))
    np.testing.assert_array_equal(s["max"], x.max(0))
    norms = np.linalg.norm(x64, axis=1)
    np.testing.assert_allclose(
        [s["norm_mean"], s["norm_std"], s["norm_min"], s["norm_max"]],
        [norms.mean(), norms.std(), norms.min(), norms.max()],
        rtol=1e-9,
    )
    sub = ab.ActivationStore(store_path).stats("x", rows=slice(100, 300))
    np.testing.assert_allclose(sub["mean"], x64[100:300].mean(0), rtol=1e-12)
