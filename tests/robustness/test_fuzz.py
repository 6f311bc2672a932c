"""Random and mutated bytes fed to the shard and manifest parsers: a typed error or a valid
store, never a crash, never a read outside the file."""

from __future__ import annotations

import json

import actbridge as ab
import numpy as np
import pytest


@pytest.fixture
def good_store(store_path):
    rng = np.random.default_rng(0)
    with ab.StoreWriter(
        store_path, sites={"a": 12, "b": 3}, dtype={"a": "bfloat16", "b": "float32"}, shard_rows=30
    ) as w:
        w.append(a=rng.standard_normal((70, 12)), b=rng.standard_normal((70, 3)), doc=np.arange(70))
    return store_path


def exercise(path):
    """Open and read everything; return normally or raise StoreError."""
    s = ab.ActivationStore(path)
    for site in s.sites:
        s.read(site)
    for c in s.columns:
        s.column(c)
    s.verify()


def test_mutated_shards(good_store):
    shard = good_store / "shard-000000.safetensors"
    good = shard.read_bytes()
    rng = np.random.default_rng(1)
    outcomes = {"error": 0, "ok": 0}
    for i in range(400):
        b = bytearray(good)
        kind = i % 4
        if kind == 0:  # flip bits anywhere (mostly the header, where structure lives)
            for _ in range(int(rng.integers(1, 4))):
                at = int(rng.integers(0, min(len(b), 400) if rng.random() < 0.8 else len(b)))
                b[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # random header length
            b[:8] = int(rng.integers(0, 2**63)).to_bytes(8, "little")
        elif kind == 2:  # truncate or extend
            b = (
                b[: int(rng.integers(0, len(b)))]
                if rng.random() < 0.5
                else b + bytes(int(rng.integers(1, 64)))
            )
        else:  # random bytes of the same length
            b = bytearray(rng.integers(0, 256, len(good), dtype=np.uint8).tobytes())
        shard.write_bytes(bytes(b))
        try:
            exercise(good_store)
            outcomes["ok"] += 1
        except ab.StoreError:
            outcomes["error"] += 1
    shard.write_bytes(good)
    exercise(good_store)
    assert outcomes["error"] > 300


def test_mutated_manifests(good_store):
    path = good_store / "manifest.json"
    good = path.read_bytes()
    doc = json.loads(good)
    rng = np.random.default_rng(2)
    edits = [
        lambda d: d.update(rows=-1),
        lambda d: d.update(version="1"),
        lambda d: d["shards"][0].update(bytes=2**62),
        lambda d: d["shards"][0].update(file="/etc/passwd"),
        lambda d: d["shards"][0].update(file="../x.safetensors"),
        lambda d: d["sites"][0].update(dim=2**40),
        lambda d: d["sites"][0].update(dim=11),
        lambda d: d["sites"][0].update(dtype="float32"),
        lambda d: d["sites"].append(dict(d["sites"][0])),
        lambda d: d["shards"].reverse(),
        lambda d: d.update(shards=None),
        lambda d: d["columns"].clear(),
    ]
    for edit in edits:
        d = json.loads(good)
        d.pop("checksum")  # as a manifest from before checksums: the structure checks must catch it
        edit(d)
        path.write_text(json.dumps(d))
        with pytest.raises(ab.StoreError):
            exercise(good_store)
    for _ in range(300):
        b = bytearray(good)
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        path.write_bytes(bytes(b))
        try:
            exercise(good_store)
        except ab.StoreError:
            pass
    path.write_bytes(good)
    assert json.loads(path.read_bytes()) == doc
    exercise(good_store)
