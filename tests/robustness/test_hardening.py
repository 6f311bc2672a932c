"""The hostile-user findings of the hardening issue, each in a subprocess (an abort, a panic or a
hang there is a failed test, not a crashed suite): every one now ends in a typed error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import actbridge as ab
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PRELUDE = """
import os, sys
import numpy as np
import actbridge as ab
from actbridge import _native
path = sys.argv[1]
def store(rows=10, shard_rows=4):
    with ab.StoreWriter(path, sites={"a": 3}, dtype="float32", shard_rows=shard_rows) as w:
        w.append(a=np.arange(rows * 3, dtype=np.float32).reshape(rows, 3), doc=np.arange(rows))
    return ab.ActivationStore(path)
def expect(fn, *kinds):
    try:
        fn()
    except kinds as e:
        print("TYPED", type(e).__name__, e)
        return e
    except BaseException as e:
        print("WRONG", type(e).__name__, e)
        raise SystemExit(3)
    print("NO ERROR")
    raise SystemExit(4)
"""


def run(tmp_path, body: str, timeout: float = 60) -> str:
    code = PRELUDE + textwrap.dedent(body)
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "WRONG" not in r.stdout and "PanicException" not in r.stdout + r.stderr
    return r.stdout


def test_a_huge_prefetch_is_a_value_error_not_an_abort(tmp_path):
    out = run(
        tmp_path,
        """
        s = store()
        e = expect(lambda: s.batches("a", 4, prefetch=10**9), ab.StoreArgumentError)
        assert isinstance(e, ValueError) and isinstance(e, ab.StoreError) and "[0, 1024]" in str(e)
        # the binding checks too (no Python layer in front of it)
        expect(lambda: s._store.batches(names=["a"], batch_size=4, shuffle="none", seed=0, epoch=0,
                                        rows=None, drop_last=False, dtype="float32", block_rows=4,
                                        window_blocks=4, prefetch=10**9), ab.StoreError)
        assert sum(1 for _ in s.batches("a", 4, prefetch=1024)) == 3
        """,
    )
    assert out.count("TYPED") == 2


def test_a_huge_shard_size_is_a_typed_error_not_a_panic(tmp_path):
    out = run(
        tmp_path,
        """
        expect(lambda: ab.StoreWriter(path, sites={"a": 8}, shard_rows=2**62), ab.StoreArgumentError)
        # straight into the binding: the core checks its own arithmetic
        w = expect(lambda: _native.StoreWriter(path=path + "-n", sites=[("a", 8, "float32")], columns=None,
                                               metadata_json="{}", mode="x", shard_rows=2**40,
                                               shard_bytes=2**20, queue=1), ab.StoreError)
        assert "exceed" in str(w)
        # rows x width beyond the cap: refused when the writer opens, before any allocation
        expect(lambda: _native.StoreWriter(path=path + "-m", sites=[("a", 2**20, "float32")], columns=None,
                                           metadata_json="{}", mode="x", shard_rows=2**19,
                                           shard_bytes=2**20, queue=1), ab.StoreError)
        expect(lambda: ab.StoreWriter(path + "-p", sites={"a": 2**40}), ab.StoreError)
        """,
    )
    assert out.count("TYPED") == 4


@pytest.mark.parametrize("what", ["manifest", "shard"])
def test_links_out_of_the_store_are_refused(tmp_path, what):
    out = run(
        tmp_path,
        f"""
        import shutil
        s = store()
        elsewhere = path + "-elsewhere"
        os.mkdir(elsewhere)
        name = "manifest.json" if "{what}" == "manifest" else "shard-000000.safetensors"
        shutil.move(os.path.join(path, name), os.path.join(elsewhere, name))
        os.symlink(os.path.join(elsewhere, name), os.path.join(path, name))
        e = expect(lambda: ab.ActivationStore(path).verify(), ab.StoreCorruptError)
        assert "symbolic link" in str(e), e
        # the whole store reached through a link is fine
        os.remove(os.path.join(path, name))
        shutil.move(os.path.join(elsewhere, name), os.path.join(path, name))
        os.symlink(path, path + "-link")
        assert len(ab.ActivationStore(path + "-link")) == 10
        """,
    )
    assert "TYPED StoreCorruptError" in out


def test_a_symlinked_part_directory_is_refused(tmp_path):
    run(
        tmp_path,
        """
        os.mkdir(path)
        for k in (0, 1):
            with ab.StoreWriter(path, sites={"a": 2}, part=k) as w:
                w.append(a=np.ones((3, 2)), doc=np.zeros(3, np.int64))
        assert len(ab.ActivationStore(path)) == 6
        os.rename(os.path.join(path, "part-1"), path + "-away")
        os.symlink(path + "-away", os.path.join(path, "part-1"))
        expect(lambda: ab.ActivationStore(path), ab.StoreCorruptError)
        """,
    )


def test_fifos_and_devices_never_block_or_exhaust_memory(tmp_path):
    out = run(
        tmp_path,
        """
        s = store()
        m = os.path.join(path, "manifest.json")
        os.rename(m, m + ".bak")
        os.mkfifo(m)
        expect(lambda: ab.ActivationStore(path), ab.StoreCorruptError)  # returns at once
        os.remove(m)
        os.symlink("/dev/zero", m)
        expect(lambda: ab.ActivationStore(path), ab.StoreCorruptError)
        os.remove(m)
        os.rename(m + ".bak", m)
        shard = os.path.join(path, "shard-000001.safetensors")
        os.rename(shard, shard + ".bak")
        os.mkfifo(shard)
        expect(lambda: ab.ActivationStore(path), ab.StoreCorruptError)
        """,
        timeout=30,
    )
    assert out.count("TYPED StoreCorruptError") == 3


def test_row_indices_out_of_range_in_any_dtype_are_errors_not_wrapped(tmp_path):
    out = run(
        tmp_path,
        """
        s = store()
        for rows in (np.array([2**64 - 1], dtype=np.uint64), np.array([10], dtype=np.uint8),
                     np.array([-11], dtype=np.int8), 2**64 - 1, -11, np.uint64(2**63)):
            e = expect(lambda: s.read("a", rows), ab.StoreArgumentError)
            assert "out of range" in str(e)
        assert s.read("a", np.array([9], dtype=np.uint64))[0, 0] == 27.0
        assert s.read("a", np.array([-10], dtype=np.int8))[0, 0] == 0.0
        expect(lambda: s.column("doc", np.array([2**63], dtype=np.uint64)), ab.StoreArgumentError)
        expect(lambda: s.batches("a", 2, rows=np.array([2**64 - 1], np.uint64)), ab.StoreArgumentError)
        """,
    )
    assert out.count("TYPED") == 8


BAD_ARGUMENTS = [
    ("queue=-1", "lambda: ab.StoreWriter(path, sites={'a': 2}, queue=-1)"),
    ("queue=0", "lambda: ab.StoreWriter(path, sites={'a': 2}, queue=0)"),
    ("queue=10**6", "lambda: ab.StoreWriter(path, sites={'a': 2}, queue=10**6)"),
    ("shard_bytes=0", "lambda: ab.StoreWriter(path, sites={'a': 2}, shard_bytes=0)"),
    ("shard_rows=1.5", "lambda: ab.StoreWriter(path, sites={'a': 2}, shard_rows=1.5)"),
    ("part='../../evil'", "lambda: ab.StoreWriter(path, sites={'a': 2}, part='../../evil')"),
    ("part='a/b'", "lambda: ab.StoreWriter(path, sites={'a': 2}, part='a/b')"),
    ("part='..'", "lambda: ab.StoreWriter(path, sites={'a': 2}, part='..')"),
    ("page_budget=0", "lambda: ab.ActivationStore(path, page_budget=0)"),
    ("page_budget=-1", "lambda: ab.ActivationStore(path, page_budget=-1)"),
    ("prefetch=-1", "lambda: s.batches('a', 2, prefetch=-1)"),
    ("seed=-1", "lambda: s.batches('a', 2, seed=-1)"),
    ("seed=2**64", "lambda: s.batches('a', 2, seed=2**64)"),
    ("epoch=-1", "lambda: s.batches('a', 2, epoch=-1)"),
    ("batch_size=2**64", "lambda: s.batches('a', 2**64)"),
    ("batch_size=0", "lambda: s.batches('a', 0)"),
    ("batch_size=True", "lambda: s.batches('a', True)"),
    ("block_rows=0", "lambda: s.batches('a', 2, shuffle='block', block_rows=0)"),
    ("window_blocks=0", "lambda: s.batches('a', 2, shuffle='block', window_blocks=0)"),
]


def test_bad_size_arguments_are_value_errors_naming_the_range(tmp_path):
    calls = "\n".join(
        f"e = expect({call}, ab.StoreArgumentError)\n"
        f"assert isinstance(e, ValueError) and ('[' in str(e) or 'plain name' in str(e)), {label!r}"
        for label, call in BAD_ARGUMENTS
    )
    out = run(
        tmp_path, "s = store()\n" + calls.replace("ab.StoreWriter(path,", "ab.StoreWriter(path + '-w',")
    )
    assert out.count("TYPED StoreArgumentError") == len(BAD_ARGUMENTS)
    assert not os.path.exists(tmp_path / "evil") and not (tmp_path.parent / "evil").exists()


def test_a_shard_truncated_after_open_is_reported_not_a_bus_error(tmp_path):
    out = run(
        tmp_path,
        """
        s = store(rows=4000, shard_rows=1000)
        shard = os.path.join(path, "shard-000002.safetensors")
        size = os.path.getsize(shard)
        with open(shard, "r+b") as f:
            f.truncate(size // 2)
        e = expect(lambda: s.batches("a", 100), ab.StoreCorruptError)
        assert "shrank" in str(e), e
        expect(lambda: s.refresh(), ab.StoreCorruptError)
        expect(lambda: s.verify(), ab.StoreCorruptError)
        """,
    )
    assert out.count("TYPED StoreCorruptError") == 3


def test_valid_arguments_at_the_edges_of_their_ranges_still_work(tmp_path):
    path = tmp_path / "s"
    with ab.StoreWriter(path, sites={"a": 2}, shard_rows=2, queue=64, part="rank-0.1") as w:
        w.append(a=np.ones((5, 2)), doc=np.arange(5))
    s = ab.ActivationStore(path, page_budget=1)
    got = list(s.batches("a", 2, seed=2**64 - 1, epoch=2**64 - 1, prefetch=0, shuffle="block", block_rows=1))
    assert sum(len(b["a"]) for b in got) == 5
    assert s.read("a", np.array([4, -5], dtype=np.int64)).shape == (2, 2)
    assert ab.StoreArgumentError is ab.store.StoreArgumentError


def test_the_manifest_checksum_catches_silent_metadata_edits(tmp_path):
    path = tmp_path / "s"
    with ab.StoreWriter(path, sites={"a": 2}, metadata={"model": "m", "layer": 13}) as w:
        w.append(a=np.ones((3, 2)), doc=np.zeros(3, np.int64))
    manifest = path / "manifest.json"
    doc = json.loads(manifest.read_text())
    assert len(doc["checksum"]) == 16
    doc["metadata"]["layer"] = 14  # valid JSON, valid structure: only the checksum sees it
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ab.StoreCorruptError, match="checksum"):
        ab.ActivationStore(path)
    del doc["checksum"]  # a store written before checksums existed still opens
    manifest.write_text(json.dumps(doc))
    assert ab.ActivationStore(path).metadata["layer"] == 14
    with ab.StoreWriter(path, sites={"a": 2}, mode="a") as w:  # and gets one at its next commit
        w.append(a=np.ones((1, 2)), doc=np.zeros(1, np.int64))
    assert "checksum" in json.loads(manifest.read_text()) and len(ab.ActivationStore(path)) == 4


def _map(tmp_path):
    rng = np.random.default_rng(0)
    m = ab.AffineMap(
        rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    )
    m.save(tmp_path / "map")
    return m, tmp_path / "map"


def test_every_byte_flip_or_truncation_of_a_saved_map_is_an_error(tmp_path):
    m, d = _map(tmp_path)
    assert np.array_equal(ab.load_map(d).weight, m.weight)
    rng = np.random.default_rng(1)
    for name in ("model.safetensors", "config.json"):
        good = (d / name).read_bytes()
        for trial in range(40):
            bad = bytearray(good)
            if trial % 4 == 3:
                bad = bad[: int(rng.integers(0, len(bad)))]
            else:
                k = int(rng.integers(0, len(bad)))
                bad[k] ^= 1 << int(rng.integers(0, 8))
            (d / name).write_bytes(bytes(bad))
            with pytest.raises(ab.MapError):  # MapCorruptError, or a parse error: never silence
                ab.load_map(d)
        (d / name).write_bytes(good)
    config = json.loads((d / "config.json").read_text())
    config["metrics"] = {"fvu": 0.0}  # a plausible edit
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ab.MapCorruptError, match="checksum"):
        ab.load_map(d)
    del config["integrity"]  # a map saved before checksums loads as before
    (d / "config.json").write_text(json.dumps(config))
    assert np.array_equal(ab.load_map(d).weight, m.weight)


def test_a_hostile_map_config_is_a_map_error(tmp_path):
    _, d = _map(tmp_path)
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ab.MapError, match="nested too deeply|not valid JSON"):
        ab.load_map(d)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ab.MapError, match="JSON object"):
        ab.load_map(d)


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        (np.ones(4, np.float64), "F64"),
        (np.ones(4, np.int64), "I64"),
        (np.array([1.0, np.nan, 0.0, 0.0], np.float32), "NaN"),
        (np.array([1.0, np.inf, 0.0, 0.0], np.float32), "NaN or infinite"),
        (np.ones((2, 2), np.float32), "dim"),
    ],
)
def test_vector_files_with_the_wrong_dtype_shape_or_values_are_refused(tmp_path, tensor, needle):
    from safetensors.numpy import save_file

    v = ab.SteeringVector(np.ones(4, np.float32), 2)
    v.save(tmp_path / "v")
    save_file({"vector": tensor}, str(tmp_path / "v" / "vector.safetensors"))
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    del config["integrity"]  # as an unchecked (older or hand-made) file
    (tmp_path / "v" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ab.VectorCorruptError, match=needle):
        ab.SteeringVector.load(tmp_path / "v")


def test_saved_vectors_round_trip_and_flips_are_caught(tmp_path):
    v = ab.SteeringVector(np.arange(6, dtype=np.float32), 3, model="m", positions="trigger")
    v.save(tmp_path / "v")
    w = ab.SteeringVector.load(tmp_path / "v")
    assert np.array_equal(w.vector, v.vector) and w.layer == 3 and w.model == "m"
    good = (tmp_path / "v" / "vector.safetensors").read_bytes()
    bad = bytearray(good)
    bad[-3] ^= 0x10  # a flip in the data: valid safetensors, different numbers
    (tmp_path / "v" / "vector.safetensors").write_bytes(bytes(bad))
    with pytest.raises(ab.VectorCorruptError, match="checksum"):
        ab.SteeringVector.load(tmp_path / "v")
    (tmp_path / "v" / "vector.safetensors").write_bytes(good)
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"vector": torch.arange(6, dtype=torch.bfloat16)}, str(tmp_path / "v" / "vector.safetensors"))
    config = json.loads((tmp_path / "v" / "config.json").read_text())
    del config["integrity"]
    (tmp_path / "v" / "config.json").write_text(json.dumps(config))
    assert np.array_equal(ab.SteeringVector.load(tmp_path / "v").vector, np.arange(6, dtype=np.float32))


def test_a_map_config_that_is_a_fifo_is_an_error_not_a_hang(tmp_path):
    _, d = _map(tmp_path)
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")
    out = run(tmp_path, f"expect(lambda: ab.load_map({str(d)!r}), ab.MapError)", timeout=30)
    assert "regular file" in out


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: ab.SteeringVector(np.ones((2, 2)), 1), "shape"),
        (lambda: ab.SteeringVector(np.ones(0), 1), "shape"),
        (lambda: ab.SteeringVector(np.array([1.0, np.nan]), 1), "NaN"),
        (lambda: ab.SteeringVector(np.ones(3), "2"), "layer"),  # type: ignore[arg-type]
        (lambda: ab.SteeringVector(np.ones(3), True), "layer"),
        (lambda: ab.SteeringVector(np.ones(3), 1.5), "layer"),  # type: ignore[arg-type]
    ],
)
def test_steering_vectors_are_checked_when_made(make, needle):
    with pytest.raises(ab.SteerError, match=needle):
        make()
    assert isinstance(ab.SteerError("x"), ValueError)
    v = ab.SteeringVector(np.ones((1, 3)), np.int64(2))  # a keepdim mean and a numpy layer
    assert v.vector.shape == (3,) and type(v.layer) is int


def test_a_zero_step_row_slice_is_a_store_argument_error(tmp_path):
    with ab.StoreWriter(tmp_path / "s", sites={"a": 2}) as w:
        w.append(a=np.ones((3, 2)))
    with pytest.raises(ab.StoreArgumentError, match="step"):
        ab.ActivationStore(tmp_path / "s").read("a", rows=slice(0, 3, 0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=600),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
)
def test_map_config_parser_takes_any_bytes(tmp_path, data, edits):
    """The map-config parser (Python's side of the fuzz suite): random bytes and byte edits of a
    real config are a MapError or the same map, never another exception."""
    m, d = _map(tmp_path)
    good = (d / "config.json").read_bytes()
    for raw in (data, _edited(good, edits)):
        (d / "config.json").write_bytes(raw)
        try:
            loaded = ab.load_map(d)
        except ab.MapError:
            continue
        assert np.array_equal(loaded.weight, m.weight) and np.array_equal(loaded.bias, m.bias)


def _edited(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for at, value in edits:
        b[at % len(b)] = value
    return bytes(b)
