"""Fitting under torch.distributed (gloo, CPU): N ranks against one process on the same machine,
for the affine statistics of a store (rows/s, and the share of the time the all-reduce takes)
and one autoencoder epoch with the torch backend (samples/s, DDP against a plain loop).

Every configuration gets the machine's cores: one process with all of them as threads, or N
ranks with cores / N threads each. Rounds are interleaved; medians are printed.

    python benches/bench_distributed.py                        # a 2 GB store (float32), 2 ranks
    python benches/bench_distributed.py --rows 100000 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def make_store(path: Path, rows: int, d: int) -> None:
    import actbridge as ab

    rng = np.random.default_rng(0)
    w = rng.standard_normal((d, d)).astype(np.float32) / np.sqrt(d)
    with ab.StoreWriter(path, sites={"source": d, "target": d}, dtype="float32") as wr:
        for start in range(0, rows, 50_000):
            x = rng.standard_normal((min(50_000, rows - start), d)).astype(np.float32)
            wr.append(source=x, target=np.maximum(x @ w, 0))


def worker(kind: str, store: str, ae_rows: int) -> None:
    """One rank (or the single process): time the fit and print one JSON line."""
    import actbridge as ab
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    group = ab.distributed.init_from_env()
    s = ab.ActivationStore(store)
    out: dict[str, float] = {}
    if kind == "affine":
        t0 = time.perf_counter()
        stats = ab.AffineStats(s.sites["source"], s.sites["target"])
        rows = None if group is None else ab.distributed.share_of_selection(group, None, len(s))
        stats.update_from_store(s, rows=rows, progress=False)
        t1 = time.perf_counter()
        if group is not None:
            ab.distributed.barrier(group, "bench")  # the reduction alone, not waiting for a slow rank
            t1 = time.perf_counter()
            stats = stats.all_reduce(group)
        t2 = time.perf_counter()
        stats.solve()
        out = {"rows": stats.n, "stats_s": t1 - t0, "reduce_s": t2 - t1, "total_s": time.perf_counter() - t0}
    else:
        t0 = time.perf_counter()
        ab.AutoencoderMap.fit(
            s,
            rows=np.arange(ae_rows),
            epochs=1,
            batch_size=512,
            backend="torch",
            device="cpu",
            progress=False,
        )
        out = {"rows": ae_rows, "total_s": time.perf_counter() - t0}
    if ab.distributed.is_main(group):
        print("RESULT " + json.dumps(out), flush=True)
    ab.distributed.shutdown()


def launch(kind: str, store: Path, ranks: int, cores: int, ae_rows: int) -> dict[str, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    threads = str(max(1, cores // ranks))
    procs = []
    for rank in range(ranks):
        env = dict(os.environ) | {v: threads for v in THREAD_VARS}
        if ranks > 1:
            env |= {"RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank)}
            env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        cmd = [sys.executable, __file__, "--worker", kind, "--store", str(store), "--ae-rows", str(ae_rows)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a {kind} run with {ranks} ranks failed")
    line = next(ln for o in outs for ln in o.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=500_000, help="store rows (500k x 2 x 512 float32 = 2 GB)")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--ae-rows", type=int, default=100_000, help="rows in the autoencoder epoch")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--store", help="reuse (or create) the store here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.store, a.ae_rows)
        return
    cores = os.cpu_count() or 1
    store = Path(a.store) if a.store else Path(tempfile.mkdtemp()) / "bench-store"
    if not store.exists():
        make_store(store, a.rows, a.d)
    size_gb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e9
    print(
        f"store: {a.rows:,} rows x 2 sites x {a.d} float32 ({size_gb:.2f} GB); {cores} cores; "
        f"{a.ranks} ranks x {max(1, cores // a.ranks)} threads vs 1 process x {cores} threads"
    )
    times: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(a.rounds):
        for kind in ("affine", "autoencoder"):
            for ranks in (1, a.ranks):
                times.setdefault((kind, ranks), []).append(launch(kind, store, ranks, cores, a.ae_rows))

    def med(kind: str, ranks: int, key: str) -> float:
        return statistics.median(r[key] for r in times[(kind, ranks)])

    print(f"\n| fit | 1 process | {a.ranks} ranks | ranks / 1 process | all-reduce share |")
    print("|---|--:|--:|--:|--:|")
    one, many = med("affine", 1, "total_s"), med("affine", a.ranks, "total_s")
    share = med("affine", a.ranks, "reduce_s") / many
    print(
        f"| affine statistics + solve (rows/s) | {a.rows / one:,.0f} | {a.rows / many:,.0f} "
        f"| {one / many:.2f}x | {share:.1%} |"
    )
    one, many = med("autoencoder", 1, "total_s"), med("autoencoder", a.ranks, "total_s")
    print(
        f"| autoencoder epoch, torch (samples/s) | {a.ae_rows / one:,.0f} | {a.ae_rows / many:,.0f} "
        f"| {one / many:.2f}x | |"
    )


if __name__ == "__main__":
    main()
