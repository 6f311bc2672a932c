"""Resuming a store, and readers that open a store while it is written."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest


def rows(a, b, d=5):
    r = np.arange(a, b, dtype=np.float32)[:, None]
    return r + np.arange(d, dtype=np.float32)[None, :] / 4


def test_resume_continues_after_last_committed_row(store_path):
    with ab.StoreWriter(store_path, sites={"x": 5}, shard_rows=8, metadata={"run": 1}) as w:
        w.append(x=rows(0, 20), doc=np.arange(20) // 4)
    with ab.StoreWriter(store_path, sites={"x": 5}, shard_rows=8, mode="a", metadata={"resumed": True}) as w:
        assert w.rows == 20 and w.committed_rows == 20 and w.columns == ["doc"]
        w.append(x=rows(20, 31), doc=np.arange(20, 31) // 4)
    s = ab.ActivationStore(store_path)
    np.testing.assert_array_equal(s.read("x"), rows(0, 31))
    np.testing.assert_array_equal(s.column("doc"), np.arange(31) // 4)
    assert s.metadata == {"run": 1, "resumed": True}
    s.verify()


def test_mode_a_creates_a_missing_store(store_path):
    with ab.StoreWriter(store_path, sites={"x": 5}, mode="a") as w:
        w.append(x=rows(0, 3))
    assert len(ab.ActivationStore(store_path)) == 3


def test_reader_sees_committed_rows_and_refreshes(store_path):
    w = ab.StoreWriter(store_path, sites={"x": 5}, shard_rows=10)
    s = ab.ActivationStore(store_path)
    assert len(s) == 0
    w.append(x=rows(0, 25))  # two shards sealed in the background, five rows buffered
    assert w.flush() == 25
    assert len(s) == 0 and len(s.refresh()) == 25
    np.testing.assert_array_equal(s.read("x"), rows(0, 25))
    w.append(x=rows(25, 27))
    w.update_metadata({"alignment_rate": 0.97})
    w.close()
    s.refresh()
    assert len(s) == 27 and s.metadata["alignment_rate"] == 0.97


def test_metadata_update_alone_is_published_by_flush(store_path):
    with ab.StoreWriter(store_path, sites={"x": 1}) as w:
        w.update_metadata({"k": [1, 2]})
        w.flush()
        assert ab.ActivationStore(store_path).metadata == {"k": [1, 2]}


def test_parts_written_by_several_processes_open_as_one_store(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "multi"
    # Three "ranks" write concurrently, each its own part, columns given in different orders.
    code = (
        "import sys, numpy as np, actbridge as ab\n"
        "rank = int(sys.argv[1]); root = sys.argv[2]\n"
        "r = np.arange(rank * 100, rank * 100 + 30 + rank)\n"
        "with ab.StoreWriter(root, sites={'x': 5}, dtype='float32', shard_rows=7, part=rank,\n"
        "                    metadata={'rank': rank}) as w:\n"
        "    cols = {'doc': r // 10, 'token_id': r} if rank % 2 else {'token_id': r, 'doc': r // 10}\n"
        "    w.append(x=np.arange(r[0], r[-1] + 1, dtype=np.float32)[:, None] + np.arange(5) / 4, **cols)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(rank), str(root)]) for rank in (0, 1, 10)]
    assert all(p.wait() == 0 for p in procs)
    s = ab.ActivationStore(root)
    assert [p.rsplit("/", 1)[-1] for p in s.parts] == ["part-0", "part-1", "part-10"]  # natural order
    ids = np.concatenate([np.arange(k * 100, k * 100 + 30 + k) for k in (0, 1, 10)])
    assert len(s) == len(ids)
    np.testing.assert_array_equal(s.column("token_id"), ids)
    np.testing.assert_array_equal(s.column("doc"), ids // 10)
    np.testing.assert_array_equal(s.read("x"), ids[:, None] + np.arange(5, dtype=np.float32) / 4)
    assert s.metadata["rank"] == 0
    assert s.shards[0]["file"] == "part-0/shard-000000.safetensors"
    got = np.concatenate([b["token_id"] for b in s.batches(["x", "token_id"], batch_size=16)])
    np.testing.assert_array_equal(np.sort(got), np.sort(ids))
    s.verify()
    # A part added later is seen by refresh(); a part with other sites is refused.
    with ab.StoreWriter(root, sites={"x": 5}, dtype="float32", part=11) as w:
        w.append(x=np.zeros((4, 5)), token_id=np.arange(4), doc=np.zeros(4, np.int64))
    assert len(s.refresh()) == len(ids) + 4
    with ab.StoreWriter(root, sites={"x": 6}, dtype="float32", part=12) as w:
        w.append(x=np.zeros((1, 6)), token_id=[0], doc=[0])
    with pytest.raises(ab.StoreCorruptError, match="part-12"):
        ab.ActivationStore(root)
    with pytest.raises(ab.StoreError, match="single store"):
        ab.StoreWriter(root / "part-0", sites={"x": 5}, part=1)


def test_a_list_of_stores_opens_as_one_in_the_order_given(tmp_path):
    paths = []
    for k in range(3):
        p = tmp_path / f"s{k}"
        with ab.StoreWriter(p, sites={"x": 3}, dtype="float32", shard_rows=4) as w:
            w.append(x=np.full((5 + k, 3), k, np.float32), doc=np.full(5 + k, k))
        paths.append(p)
    s = ab.ActivationStore([paths[2], paths[0], str(paths[1])])
    np.testing.assert_array_equal(s.column("doc"), [2] * 7 + [0] * 5 + [1] * 6)
    np.testing.assert_array_equal(s.read("x")[:, 0], s.column("doc"))
    with ab.StoreWriter(paths[0], sites={"x": 3}, dtype="float32", mode="a") as w:
        w.append(x=np.zeros((2, 3), np.float32), doc=[9, 9])
    assert len(s.refresh()) == 20  # the same list, re-read
    assert list(s.column("doc")[7:14]) == [0] * 5 + [9, 9]
    with pytest.raises(ab.StoreError, match="missing"):
        ab.ActivationStore([paths[0], tmp_path / "missing"])
    with pytest.raises(ab.StoreError, match="empty list"):
        ab.ActivationStore([])
