"""Batches: each row exactly once per epoch, seeded, in every shuffle mode; owned arrays."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest

N = 1003


@pytest.fixture
def store(store_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 6)).astype(np.float32)
    with ab.StoreWriter(
        store_path, sites={"x": 6, "y": 2}, dtype={"x": "float32", "y": "float16"}, shard_rows=97
    ) as w:
        w.append(x=x, y=x[:, :2], token_id=np.arange(N))
    return ab.ActivationStore(store_path), x


@pytest.mark.parametrize("shuffle", [True, False, "block"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_row_once_and_rows_consistent(store, shuffle, drop_last):
    s, x = store
    it = s.batches(
        ["x", "token_id", "y"],
        batch_size=64,
        shuffle=shuffle,
        seed=3,
        drop_last=drop_last,
        block_rows=50,
        window_blocks=3,
    )
    expected = N // 64 if drop_last else -(-N // 64)
    assert len(it) == expected
    seen = []
    for b in it:
        assert b["x"].shape[0] == b["token_id"].shape[0] == b["y"].shape[0]
        assert b["x"].dtype == np.float32 and b["token_id"].dtype == np.int64
        np.testing.assert_array_equal(b["x"], x[b["token_id"]])
        np.testing.assert_array_equal(b["y"], x[b["token_id"], :2].astype(np.float16).astype(np.float32))
        seen.append(b["token_id"])
    ids = np.concatenate(seen)
    assert len(seen) == expected
    if drop_last:
        assert len(ids) == (N // 64) * 64 and len(np.unique(ids)) == len(ids)
    else:
        np.testing.assert_array_equal(np.sort(ids), np.arange(N))
    if shuffle is False:
        np.testing.assert_array_equal(ids, np.arange(len(ids)))


def test_seed_and_epoch_select_the_permutation(store):
    s, _ = store

    def order(**kw):
        return np.concatenate([b["token_id"] for b in s.batches("token_id", batch_size=100, **kw)])

    a = order(seed=1)
    np.testing.assert_array_equal(a, order(seed=1))
    assert not np.array_equal(a, order(seed=2))
    assert not np.array_equal(a, order(seed=1, epoch=1))
    assert not np.array_equal(a, np.arange(N))


def test_row_subset_and_dtype(store):
    s, x = store
    train, val = s.split(0.25, seed=0)
    assert len(val) == round(0.25 * N) and len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(N))
    got = np.concatenate([b["token_id"] for b in s.batches("token_id", batch_size=77, rows=val)])
    np.testing.assert_array_equal(np.sort(got), val)
    b = next(iter(s.batches("x", batch_size=5, dtype="float16", shuffle=False)))
    assert b["x"].dtype == np.float16
    np.testing.assert_array_equal(b["x"], x[:5].astype(np.float16))


def test_split_by_group_keeps_groups_whole(store_path):
    doc = np.repeat(np.arange(50), 7)
    with ab.StoreWriter(store_path, sites={"x": 1}) as w:
        w.append(x=np.zeros((len(doc), 1)), doc=doc)
    s = ab.ActivationStore(store_path)
    train, val = s.split(0.2, seed=4, by="doc")
    assert len(np.intersect1d(doc[train], doc[val])) == 0
    assert len(np.unique(doc[val])) == 10
    assert len(train) + len(val) == len(doc)


def test_batches_are_fresh_writable_arrays(store):
    s, x = store
    b = next(iter(s.batches("x", batch_size=10, shuffle=False)))
    # Allocated by numpy and filled in place by Rust: numpy owns it, nothing was copied.
    assert b["x"].flags.owndata and b["x"].flags.writeable and b["x"].flags.c_contiguous
    assert b["x"].base is None
    b["x"][:] = 0
    np.testing.assert_array_equal(s.read("x", slice(0, 10)), x[:10])


def test_abandoned_iterators_do_not_hang(store):
    s, _ = store
    for _ in range(20):
        it = s.batches("x", batch_size=8, prefetch=1)
        next(it)
        del it  # the producer thread sees the closed channel and stops
    assert sum(1 for _ in s.batches("x", batch_size=500)) == 3


def test_exit_with_an_unfinished_iterator_is_clean(store):
    import subprocess
    import sys

    s, _ = store
    code = (
        "import actbridge as ab\n"
        f"s = ab.ActivationStore({s.path!r})\n"
        "it = s.batches('x', batch_size=8, prefetch=4)\n"
        "next(it)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batches_held_by_the_user_are_never_overwritten(store, prefetch):
    """The batch thread recycles arrays nobody references; every kind of holder (the dict, an
    array, a view, a torch tensor sharing its memory) keeps its batch intact."""
    torch = pytest.importorskip("torch")
    s, x = store
    kept = []
    for k, b in enumerate(s.batches(["x", "token_id"], batch_size=16, seed=5, prefetch=prefetch)):
        ids = b["token_id"].copy()
        holders = [
            (lambda h: h["x"], b, slice(None)),
            (np.asarray, b["x"], slice(None)),
            (np.asarray, b["x"][2:], slice(2, None)),
            (lambda t: t.numpy(), torch.from_numpy(b["x"]), slice(None)),
        ]
        kept.append((ids, *holders[k % 4]))
        del b, holders  # only the kept holder refers to this batch now
    assert len(kept) == -(-N // 16)
    for ids, as_array, holder, rows in kept:
        np.testing.assert_array_equal(as_array(holder), x[ids][rows])


def test_released_batches_are_recycled_without_changing_what_is_seen(store):
    """Dropping each batch lets the thread reuse its memory: the data pointers repeat, and
    every batch still holds exactly its rows."""
    s, x = store
    pointers = set()
    for b in s.batches(["x", "token_id"], batch_size=32, seed=1, prefetch=1):
        np.testing.assert_array_equal(b["x"], x[b["token_id"]])
        pointers.add(b["x"].ctypes.data)
    assert len(pointers) < -(-N // 32)  # fewer distinct buffers than batches


def test_every_vector_level_gathers_the_same_bits(tmp_path):
    """ACTBRIDGE_SIMD caps the kernels (the AVX2 paths run on an AVX-512 machine, the portable
    ones on any): batches and reads are bit-identical at every level, for each stored dtype."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 1024)).astype(np.float32) * 10.0
    x[0, :8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 6e4, -7e4]
    path = tmp_path / "s"
    dtypes = {"b": "bfloat16", "h": "float16", "f": "float32"}
    with ab.StoreWriter(path, sites={k: 1024 for k in dtypes}, dtype=dtypes, shard_rows=1100) as w:
        w.append(b=x, h=np.clip(x, -6e4, 6e4), f=x)
    code = (
        "import sys, numpy as np, actbridge as ab\n"
        f"s = ab.ActivationStore({str(path)!r})\n"
        "out = {}\n"
        "for k in 'bhf':\n"
        "    out[k + '_batches'] = np.concatenate([b[k] for b in s.batches(k, batch_size=2048, seed=3)])\n"
        "    out[k + '_read'] = s.read(k, np.random.default_rng(4).permutation(3000))\n"
        "np.savez(sys.argv[1], level=ab.simd_levels().active, **out)\n"
    )
    results = {}
    for level in ("avx512", "avx2", "portable"):
        out = tmp_path / f"{level}.npz"
        env = dict(os.environ, ACTBRIDGE_SIMD=level)
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, timeout=120)
        with np.load(out) as f:
            results[level] = {k: f[k] for k in f.files}
    ran = {str(r["level"]) for r in results.values()}
    # Levels above this CPU's run as its own; the portable one always runs.
    assert "portable" in ran
    assert len(ran) == {"portable": 1, "avx2": 2, "avx512": 3}[ab.simd_levels().detected]
    ref = results["portable"]
    for level, got in results.items():
        for k in ref:
            if k != "level":
                assert got[k].tobytes() == ref[k].tobytes(), (level, k)
    # and the values are the stored ones
    np.testing.assert_array_equal(ref["f_read"], x[np.random.default_rng(4).permutation(3000)])


def test_recycling_survives_weak_references_and_in_place_reshapes(store):
    """An array revived through a weak reference keeps its rows, and one reshaped or resized in
    place before it was dropped is not handed out again with the wrong shape."""
    import weakref

    s, x = store
    revived = []
    for k, b in enumerate(s.batches(["x", "token_id"], batch_size=16, seed=2, prefetch=1)):
        assert b["x"].shape == (min(16, N - 16 * k), 6)
        np.testing.assert_array_equal(b["x"], x[b["token_id"]])
        if k % 3 == 0:
            revived.append((b["token_id"].copy(), weakref.ref(b["x"])))
        elif k % 3 == 1:
            b["x"].shape = (-1,)
        else:
            arr = b.pop("x")
            arr.resize((4, 6), refcheck=False)
            del arr
    for ids, ref in revived:
        arr = ref()
        if arr is not None:  # still alive: only weakly referenced, never overwritten
            np.testing.assert_array_equal(arr, x[ids])


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_global_batch_rows_are_the_whole_batch_every_rank_slices(store, world, drop_last):
    """A data-parallel loss divides by the global batch's rows: each rank's iterator reports the
    same count, equal to the ranks' slices together (and to the batch under one process)."""
    s, _ = store
    rows = np.arange(5, N - 3)
    its = [
        s.batches(["x"], batch_size=64, seed=2, rows=rows, drop_last=drop_last, share=(rank, world))
        for rank in range(world)
    ]
    slices = [[len(b["x"]) for b in it] for it in its]
    for i in range(len(slices[0])):
        whole = sum(sizes[i] for sizes in slices)
        assert {it.global_batch_rows(i) for it in its} == {whole}
        assert whole == (64 if drop_last or i < len(slices[0]) - 1 else (len(rows) - 1) % 64 + 1)
    with pytest.raises(IndexError, match=f"no batch {len(slices[0])}"):
        its[0].global_batch_rows(len(slices[0]))
