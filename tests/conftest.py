"""Shared helpers for the store tests."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32 in numpy (round to nearest even), the reference."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """What reading back ``x`` stored as ``dtype`` must give, as float32."""
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if x.dtype == np.float64:  # one rounding, straight from float64
        return _bf16_round_f64(x)
    return bf16_round(x.astype(np.float32))


def assert_rows_equal_hidden_states(store, model, tok, docs, layers, *, site="layer{}", pos_column="pos"):
    """Each document's stored rows equal a plain forward pass's hidden states after each block
    in ``layers`` (site names from ``site``), at the positions the store recorded; returns the
    positions of every document."""
    import torch

    positions = []
    for d, text in enumerate(docs):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        rows = np.flatnonzero(store.column("doc") == d)
        pos = store.column(pos_column, rows)
        assert len(rows) > 0 and pos.max() < ids.shape[1]
        for layer in layers:
            want = hs[layer + 1][0, pos].numpy()
            got = store.read(site.format(layer), rows)
            np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)
        positions.append((pos, ids.shape[1]))
    return positions


def _bf16_round_f64(x: np.ndarray) -> np.ndarray:
    """float64 -> nearest bfloat16 (ties to even), without a float32 detour."""
    m, e = np.frexp(x)  # x = m * 2**e, 0.5 <= |m| < 1
    q = np.round(m * 256.0) / 256.0  # 8 significant bits; np.round ties to even
    return np.ldexp(q, e).astype(np.float32)


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store"


# --- tiny tokenizers and random-init models (from the package, for the collection tests) ------

from actbridge.testing import ARCHS, tiny_model, tiny_tokenizer  # noqa: E402, F401


@pytest.fixture(scope="session")
def nonlinear_store(tmp_path_factory):
    """A store of 12,000 rows: 32-wide sources, 24-wide ReLU-of-linear targets plus noise."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12_000, 32)).astype(np.float32)
    w = rng.standard_normal((32, 24)).astype(np.float32) * 0.3
    y = np.maximum(x @ w, 0) + 0.05 * rng.standard_normal((12_000, 24)).astype(np.float32)
    path = tmp_path_factory.mktemp("ae") / "s"
    with ab.StoreWriter(path, sites={"source": 32, "target": 24}, dtype="float32") as wr:
        wr.append(source=x, target=y)
    return ab.ActivationStore(path)
