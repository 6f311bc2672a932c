"""A hostile user's campaign against stores, maps and steering vectors, counted the way the
hardening issue counts it: each attempt ends in a typed error (an ``ab.ActbridgeError``), an
unchanged result (the damage touched nothing that is read, e.g. JSON whitespace), a **silent
change** (loaded without error, different content), another exception (untyped), or a **crash**
(the process died on a signal, aborted, or hung past --timeout).

Attempts run in child processes, many per child; a child that dies is counted as a crash of the
attempt it was running and a new child continues with the next one. Writers are SIGKILLed at
random moments and the store reopened: every row the writer had flushed must be there, intact.

    python benches/attack.py                 # the issue's numbers: 66 kills, 300 flips, ...
    python benches/attack.py --scale 0.1     # a quick pass
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# The crash tests' writer: appends known rows until killed, printing each flushed count.
CRASH_WRITER = Path(__file__).resolve().parents[1] / "tests" / "robustness" / "crash_writer.py"
sys.path.insert(0, str(CRASH_WRITER.parent))
from crash_writer import expected_rows  # noqa: E402

CAMPAIGNS = {  # name: attempts at --scale 1
    "writer SIGKILLs": 66,
    "shard byte flips": 300,
    "shard truncations": 60,
    "hostile shard headers": 35,
    "manifest byte flips": 120,
    "links, FIFOs, devices, shrinking shards": 6,
    "map byte flips / truncations": 60,
    "vector byte flips / truncations": 60,
    "bad arguments": 0,  # the length of BAD_ARGUMENTS
}
STORE_CAMPAIGNS = ("shard byte flips", "shard truncations", "hostile shard headers", "manifest byte flips")
BAD_ARGUMENTS = [
    "ab.StoreWriter(W, sites={'a': 2}, queue=-1)",
    "ab.StoreWriter(W, sites={'a': 2}, queue=0)",
    "ab.StoreWriter(W, sites={'a': 2}, queue=10**6)",
    "ab.StoreWriter(W, sites={'a': 2}, shard_bytes=0)",
    "ab.StoreWriter(W, sites={'a': 2}, shard_bytes=-5)",
    "ab.StoreWriter(W, sites={'a': 2}, shard_rows=0)",
    "ab.StoreWriter(W, sites={'a': 2}, shard_rows=1.5)",
    "ab.StoreWriter(W, sites={'a': 2}, shard_rows=2**62).append(a=np.ones((1, 2)))",
    "ab.StoreWriter(W, sites={'a': 2**40})",
    "ab.StoreWriter(W, sites={'a': -3})",
    "ab.StoreWriter(W, sites={'a': 2}, dtype='float64')",
    "ab.StoreWriter(W, sites={'../x': 2})",
    "ab.StoreWriter(W, sites={'a': 2}, part='../../evil')",
    "ab.StoreWriter(W, sites={'a': 2}, part='a/b')",
    "ab.StoreWriter(W, sites={'a': 2}, part='..')",
    "ab.StoreWriter(W, sites={'a': 2}, mode='w')",
    "ab.ActivationStore(S, page_budget=0)",
    "ab.ActivationStore(S, page_budget=-1)",
    "ab.ActivationStore(S, page_budget=2**70)",
    "ab.ActivationStore(S).batches('a', 2, prefetch=10**9)",
    "ab.ActivationStore(S).batches('a', 2, prefetch=-1)",
    "ab.ActivationStore(S).batches('a', 2, seed=-1)",
    "ab.ActivationStore(S).batches('a', 2, seed=2**64)",
    "ab.ActivationStore(S).batches('a', 2, epoch=-1)",
    "ab.ActivationStore(S).batches('a', 2**64)",
    "ab.ActivationStore(S).batches('a', 0)",
    "ab.ActivationStore(S).batches('a', True)",
    "ab.ActivationStore(S).batches('a', 2, shuffle='block', block_rows=0)",
    "ab.ActivationStore(S).batches('a', 2, shuffle='block', window_blocks=0)",
    "ab.ActivationStore(S).batches('a', 2, shuffle='block', window_blocks=2**40)",
    "ab.ActivationStore(S).batches('a', 2, shuffle='sideways')",
    "ab.ActivationStore(S).batches('nope', 2)",
    "ab.ActivationStore(S).read('a', rows=np.array([2**64 - 1], dtype=np.uint64))",
    "ab.ActivationStore(S).read('a', rows=np.array([-10**6]))",
    "ab.ActivationStore(S).read('a', rows=np.array([0.5]))",
    "ab.ActivationStore(S).read('a', rows=slice(0, 10, 0))",
    "ab.ActivationStore(S).read('a', rows=np.array([[0, 1]]))",
    "ab.ActivationStore(S).read('nope')",
    "ab.ActivationStore(S).column('nope')",
    "ab.ActivationStore(S).split(1.5)",
    "ab.ActivationStore(S).split(0.1, by='nope')",
    "ab.load_map(S)",
    "ab.SteeringVector(np.ones(3), 1.5)",
    "ab.SteeringVector(np.full(3, np.nan), 1)",
    "ab.SteeringVector(np.ones((2, 2)), 1)",
]


# -- fixtures ------------------------------------------------------------------------------------


def fixtures(root: Path) -> None:
    """The good artifacts every attempt starts from (copied fresh per attempt)."""
    import actbridge as ab

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((70, 12)), rng.standard_normal((70, 3))
    with ab.StoreWriter(
        root / "store", sites={"a": 12, "b": 3}, dtype={"a": "bfloat16", "b": "float32"}, shard_rows=30
    ) as w:
        w.append(a=a, b=b, doc=np.arange(70))
    weight, bias = rng.standard_normal((3, 4)), rng.standard_normal(3)
    ab.AffineMap(weight.astype(np.float32), bias.astype(np.float32)).save(root / "map")
    ab.SteeringVector(rng.standard_normal(16).astype(np.float32), 3, model="m").save(root / "vector")


def store_content(path: Path) -> Any:
    import actbridge as ab

    s = ab.ActivationStore(path)
    out = {site: s.read(site) for site in s.sites} | {c: s.column(c) for c in s.columns}
    s.verify()
    return out, dict(s.metadata), len(s)


def same(x: Any, y: Any) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (tuple, list)):
        return isinstance(y, (tuple, list)) and len(x) == len(y) and all(map(same, x, y))
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
    return bool(x == y)


def damage(data: bytes, rng: np.random.Generator, truncate: bool) -> bytes:
    b = bytearray(data)
    if truncate:
        return bytes(b[: int(rng.integers(0, len(b)))])
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(0, len(b)))
        b[k] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def hostile_header(i: int, good: bytes) -> bytes:
    """Shard files whose safetensors header lies: lengths, offsets, shapes, dtypes, JSON."""
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    data = good[8 + n :]
    names = [k for k in header if k != "__metadata__"]
    k = names[i % len(names)]
    kind = i // len(names) if i < 8 * len(names) else i
    h = json.loads(json.dumps(header))
    raw: bytes | None = None
    if kind == 0:
        h[k]["data_offsets"] = [0, 2**63]
    elif kind == 1:
        h[k]["data_offsets"] = [len(data), len(data) + 8]
    elif kind == 2:
        h[k]["shape"] = [2**62, 2**62]
    elif kind == 3:
        h[k]["dtype"] = "F64"
    elif kind == 4:
        h[k]["data_offsets"] = [-8, 0]
    elif kind == 5:
        h[k]["data_offsets"] = h[names[(i + 1) % len(names)]]["data_offsets"]  # overlap
    elif kind == 6:
        del h[k]
    elif kind == 7:
        h[k]["shape"] = [-1]
    else:
        raw = [
            struct.pack("<Q", 2**64 - 1) + good[8:],
            struct.pack("<Q", len(good)) + good[8:],
            struct.pack("<Q", 3) + b"{}}" + data,
            struct.pack("<Q", 100_000) + b"[" * 50_000 + b"]" * 50_000 + data,
            b"",
            good[:7],
            struct.pack("<Q", n) + b"\xff" * n + data,
            struct.pack("<Q", 2) + b"{}" + data,
            struct.pack("<Q", n) + good[8 : 8 + n].replace(b'"', b"'", 1) + data,
            good + b"\x00" * 64,
            struct.pack("<Q", 0) + data,
        ][(i - 8 * len(names)) % 11]
    if raw is None:
        text = json.dumps(h).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        raw = struct.pack("<Q", len(text)) + text + data
    return raw


def adopt(store: Path, shard: str, raw: bytes) -> None:
    """Write ``raw`` as ``shard`` and make the manifest agree on its size (and drop the manifest's
    own checksum, as a pre-checksum store), so the shard's header parser is what gets attacked."""
    (store / shard).write_bytes(raw)
    m = json.loads((store / "manifest.json").read_text())
    m.pop("checksum", None)
    for e in m["shards"]:
        if e["file"] == shard:
            e["bytes"] = len(raw)
    (store / "manifest.json").write_text(json.dumps(m))


# -- one attempt, in the child -------------------------------------------------------------------


def attempt(campaign: str, i: int, root: Path, work: Path, seed: int) -> str:
    """Run attempt ``i`` of ``campaign``; return "typed", "unchanged", "silent" or "untyped:<Type>"."""
    import actbridge as ab

    rng = np.random.default_rng([seed, i, sum(map(ord, campaign))])
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root, work, symlinks=True)
    store, shard = work / "store", "shard-000000.safetensors"
    try:
        if campaign in STORE_CAMPAIGNS:
            before = store_content(root / "store")
            if campaign == "hostile shard headers":
                adopt(store, shard, hostile_header(i, (store / shard).read_bytes()))
            else:
                name = "manifest.json" if campaign.startswith("manifest") else shard
                if i % 2 and campaign == "shard byte flips":
                    name = "shard-000001.safetensors"
                (store / name).write_bytes(
                    damage((store / name).read_bytes(), rng, truncate=campaign == "shard truncations")
                )
            return "unchanged" if same(store_content(store), before) else "silent"
        if campaign.startswith("links"):
            outside = work / "outside"
            shutil.copytree(store, outside)
            target = store / ("manifest.json" if i in (0, 2, 4) else shard)
            if i < 5:
                target.unlink()
            if i in (0, 1):
                target.symlink_to(outside / target.name)
            elif i in (2, 3):
                os.mkfifo(target)
            elif i == 4:
                target.symlink_to("/dev/zero")
            else:
                s = ab.ActivationStore(store)
                with open(target, "r+b") as f:
                    f.truncate(100)
                s.read("a")  # would be a SIGBUS on the mapped pages that are gone
            ab.ActivationStore(store).read("a")
            return "silent"
        if campaign.startswith("map"):
            good = ab.load_map(root / "map")
            name = ("model.safetensors", "config.json")[i % 2]
            (work / "map" / name).write_bytes(damage((work / "map" / name).read_bytes(), rng, i % 4 >= 2))
            m = ab.load_map(work / "map")
            x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
            ok = same(np.asarray(m.weight), np.asarray(good.weight))
            ok = ok and same(np.asarray(m.transform(x)), np.asarray(good.transform(x)))
            return "unchanged" if ok else "silent"
        if campaign.startswith("vector"):
            good = ab.SteeringVector.load(root / "vector")
            name = ("vector.safetensors", "config.json")[i % 2]
            d = work / "vector" / name
            d.write_bytes(damage(d.read_bytes(), rng, i % 4 >= 2))
            v = ab.SteeringVector.load(work / "vector")
            ok = same(v.vector, good.vector) and (v.layer, v.model, v.positions) == (
                good.layer,
                good.model,
                good.positions,
            )
            return "unchanged" if ok else "silent"
        if campaign == "bad arguments":
            env = {"ab": ab, "np": np, "W": str(work / "new-store"), "S": str(store)}
            eval(BAD_ARGUMENTS[i], env)  # noqa: S307 - our own literal list
            return f"silent:accepted:{i}"  # nothing rejected it
    except ab.ActbridgeError:
        return "typed"
    except Exception as e:  # noqa: BLE001 - counted, not hidden
        return f"untyped:{type(e).__name__}"
    raise ValueError(campaign)


def child(campaign: str, start: int, stop: int, root: Path, seed: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="attack-"))
    for i in range(start, stop):
        print(f"start {i}", flush=True)
        print(f"done {i} {attempt(campaign, i, root, work / 'w', seed)}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


# -- the parent ----------------------------------------------------------------------------------


def pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    """Lines of a child's stdout into ``lines``, then None at its end."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_campaign(campaign: str, n: int, root: Path, seed: int, timeout: float) -> dict[str, int]:
    counts: dict[str, int] = {}

    def count(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    i = 0
    while i < n:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", campaign, str(i), str(n), str(root), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=pump, args=(proc.stdout, lines), daemon=True).start()
        current = None
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:  # the attempt hangs
                proc.kill()
                count("crash (hang)")
                break
            if line is None:  # the child ended: finished, or died in an attempt
                if current is not None:
                    count(f"crash (exit {proc.wait()})")
                break
            word, idx, *rest = line.split()
            if word == "start":
                current = int(idx)
            else:
                count(rest[0])
                current = None
            i = int(idx) + 1
        proc.wait()
    return counts


def run_kills(n: int, work: Path, seed: int) -> dict[str, int]:
    import actbridge as ab

    rng = np.random.default_rng(seed)
    path = work / "killed-store"
    counts: dict[str, int] = {}
    previous = 0
    for k in range(n):
        proc = subprocess.Popen(
            [sys.executable, str(CRASH_WRITER), str(path), str(k)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        committed = max([int(x.split()[1]) for x in out.splitlines() if x.startswith("committed")], default=0)
        try:
            s = ab.ActivationStore(path)
            rows = len(s)
            intact = np.array_equal(s.read("x"), expected_rows(0, rows)) and np.array_equal(
                s.column("token_id"), np.arange(rows)
            )
            s.verify()
            lost = rows < max(committed, previous) or not intact
            key = "silent (rows lost)" if lost else "unchanged"
            previous = rows
        except ab.ActbridgeError:
            key = "typed"
        counts[key] = counts.get(key, 0) + 1
    counts["rows at the end"] = previous
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of each campaign's attempts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds before an attempt counts as a hang")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        campaign, start, stop, root, seed = args.child
        child(campaign, int(start), int(stop), Path(root), int(seed))
        return
    import actbridge as ab

    print(f"actbridge {ab.__version__} on {platform.processor() or platform.machine()}, seed {args.seed}")
    work = Path(tempfile.mkdtemp(prefix="attack-root-"))
    fixtures(work / "good")
    cols = ["typed", "unchanged", "silent", "untyped", "crash"]
    print(f"| attack | tried | {' | '.join(cols)} |\n|---|--:|{'--:|' * len(cols)}")
    for campaign, full in CAMPAIGNS.items():
        n = len(BAD_ARGUMENTS) if campaign == "bad arguments" else max(1, round(full * args.scale))
        t0 = time.perf_counter()
        if campaign == "writer SIGKILLs":
            counts = run_kills(n, work, args.seed)
            extra = f" ({counts.pop('rows at the end')} rows)"
        else:
            counts = run_campaign(campaign, n, work / "good", args.seed, args.timeout)
            extra = ""
        row = {c: 0 for c in cols}
        detail = []
        for key, v in sorted(counts.items()):
            col = key.split(":")[0].split(" (")[0]
            row[col] += v
            if col in ("untyped", "crash") or "(" in key or ":" in key:
                detail.append(f"{key} ×{v}")
        cells = " | ".join(str(row[c]) for c in cols)
        note = f" — {', '.join(detail)}" if detail else ""
        print(f"| {campaign}{extra} | {n} | {cells} |{note}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
