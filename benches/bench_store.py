"""Store benchmark: actbridge vs numpy on the same rows, in one run.

Writes a store of N rows x D bfloat16 (default 1,000,000 x 1024, ~2 GB) and the same rows as a
float16 ``.npy`` file, then measures side by side (median of --repeats runs):

- shuffled batches: ``store.batches(shuffle=True)`` vs ``np.memmap`` fancy indexing
  ``mm[idx].astype(float32)`` with the same shuffled indices, and vs the machine's ``memcpy``
  (``np.copyto`` of 256 MiB into a warm buffer), all in interleaved rounds. Memory traffic is
  bytes read plus bytes written: 2 + 4 per element for a bf16 -> f32 batch, 4 + 4 for memcpy.
  The shuffled gather runs at every vector level this CPU has (``ACTBRIDGE_SIMD`` =
  ``avx512``, ``avx2``, ``portable``; one worker process per level), so an AVX-512 machine
  also measures the AVX2 + F16C path that machines without AVX-512 take;
- block-shuffled batches (the mode for stores larger than RAM);
- sequential read: ``store.read(slice)`` vs ``mm[slice].astype(float32)``;
- append: ``StoreWriter.append`` of float32 rows (converted to bf16, checksummed, fsynced) vs
  ``np.save`` of the same rows converted to float16 by numpy, and already converted (plus fsync).

Both files are read from the page cache (warm), as in a training loop over a store that fits
in RAM. Run: ``python benches/bench_store.py`` (``--rows 100000`` for a quick look).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import shutil
import statistics
import sys
from pathlib import Path

import actbridge as ab
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved_times, median_ratio, median_time  # noqa: E402

LEVELS = ("avx512", "avx2", "portable")


def level_worker(conn, store_path: str, perm: np.ndarray, bs: int, n_batches: int, d: int) -> None:
    """Run one shuffled epoch at this process's ``ACTBRIDGE_SIMD`` level per request (the parent
    times the round trip; the pipe adds microseconds to seconds-long epochs)."""
    store = ab.ActivationStore(store_path)
    active = ab.simd_levels().active

    def epoch() -> None:
        it = store.batches("x", batch_size=bs, shuffle=True, seed=1, rows=perm)
        for b in itertools.islice(it, n_batches):
            assert b["x"].shape == (bs, d)

    epoch()  # warm: maps the pages, starts rayon
    conn.send(active)
    while conn.recv():
        epoch()
        conn.send(True)


def start_level_workers(levels, store_path, perm, bs, n_batches, d):
    """One worker per level, spawned with ``ACTBRIDGE_SIMD`` set; returns ``{level: conn}``."""
    ctx = mp.get_context("spawn")
    workers = {}
    for level in levels:
        parent, child = ctx.Pipe()
        old = os.environ.get("ACTBRIDGE_SIMD")
        os.environ["ACTBRIDGE_SIMD"] = level
        try:
            proc = ctx.Process(target=level_worker, args=(child, str(store_path), perm, bs, n_batches, d))
            proc.start()
            child.close()  # so a worker that dies unblocks recv() with EOFError
        finally:
            if old is None:
                os.environ.pop("ACTBRIDGE_SIMD", None)
            else:
                os.environ["ACTBRIDGE_SIMD"] = old
        active = parent.recv()
        if active == level:  # a level above the CPU's runs as a lower one: skip it
            workers[level] = (parent, proc)
        else:
            parent.send(False)
            proc.join()
    return workers


def remote(conn):
    def run() -> None:
        conn.send(True)
        conn.recv()

    return run


def bench_append(store_path: Path, npy_path: Path, chunk: np.ndarray, n: int, repeats: int):
    """Seconds to write n rows: StoreWriter (f32 in), np.save converting, np.save pre-converted."""
    chunk_rows, d = chunk.shape

    def write_store() -> None:
        shutil.rmtree(store_path, ignore_errors=True)
        with ab.StoreWriter(store_path, sites={"x": d}, dtype="bfloat16") as w:
            for start in range(0, n, chunk_rows):
                k = min(chunk_rows, n - start)
                w.append(x=chunk[:k], token_id=np.arange(start, start + k))

    full32 = np.concatenate([chunk[: min(chunk_rows, n - s)] for s in range(0, n, chunk_rows)])
    full16 = full32.astype(np.float16)

    def save(make) -> None:
        with open(npy_path, "wb") as f:
            np.save(f, make())
            f.flush()
            os.fsync(f.fileno())

    return (
        median_time(write_store, repeats),
        median_time(lambda: save(lambda: full32.astype(np.float16)), repeats),
        median_time(lambda: save(lambda: full16), repeats),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--batches", type=int, default=60, help="batches per timed shuffled run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", default="bench-data")
    p.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    p.add_argument("--levels", default=",".join(LEVELS), help="vector levels to time the shuffled gather at")
    p.add_argument("--memcpy-mib", type=int, default=256, help="size of the memcpy reference")
    args = p.parse_args()
    n, d, bs = args.rows, args.dim, args.batch
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    store_path, npy_path = root / "store", root / "rows_f16.npy"
    chunk_rows = min(n, 65536)
    chunk = np.random.default_rng(0).standard_normal((chunk_rows, d)).astype(np.float32)
    row_bytes16 = 2 * d
    print(
        f"# {n:,} rows x {d} ({n * row_bytes16 / 1e9:.2f} GB as 16-bit), batch {bs}, "
        f"{os.cpu_count()} CPUs, median of {args.repeats}"
    )

    # -- append -------------------------------------------------------------------------------
    t_store_w, t_npy_cw, t_npy_w = bench_append(store_path, npy_path, chunk, n, max(1, min(3, args.repeats)))

    store = ab.ActivationStore(store_path)
    mm = np.load(npy_path, mmap_mode="r")
    assert len(store) == n
    # Warm both files into the page cache once.
    for _ in store.batches("x", batch_size=65536, shuffle=False):
        pass
    for s in range(0, n, 65536):
        np.asarray(mm[s : s + 65536]).sum()

    # -- shuffled batches ---------------------------------------------------------------------
    n_batches = min(args.batches, n // bs)
    rows_timed = n_batches * bs
    perm = np.random.default_rng(1).permutation(n)[:rows_timed]

    def ours_block() -> None:
        it = store.batches("x", batch_size=bs, shuffle="block", seed=1)
        for b in itertools.islice(it, n_batches):
            assert b["x"].shape == (bs, d)

    def numpy_shuffled() -> None:
        for i in range(n_batches):
            b = mm[perm[i * bs : (i + 1) * bs]].astype(np.float32)
            assert b.shape == (bs, d)

    copy_src = np.random.default_rng(2).standard_normal(args.memcpy_mib << 18, dtype=np.float32)
    copy_dst = np.empty_like(copy_src)
    copy_dst[:] = copy_src

    def memcpy() -> None:
        np.copyto(copy_dst, copy_src)

    workers = start_level_workers(args.levels.split(","), store_path, perm, bs, n_batches, d)
    fns = {"numpy": numpy_shuffled, "memcpy": memcpy}
    fns.update({f"level {k}": remote(conn) for k, (conn, _) in workers.items()})
    times = interleaved_times(fns, args.repeats)
    levels = [k for k in fns if k.startswith("level")]
    for conn, proc in workers.values():
        conn.send(False)
        proc.join()
    memcpy_traffic = 2 * copy_src.nbytes / statistics.median(times["memcpy"])
    t_np = statistics.median(times["numpy"])
    elems = rows_timed * d
    print(
        f"# memcpy (np.copyto, {args.memcpy_mib} MiB, warm destination): "
        f"{memcpy_traffic / 1e9:.1f} GB/s read + written"
    )
    print("| shuffled bf16 -> f32 batches | M rows/s | GB/s in | traffic GB/s | % of memcpy | vs np.memmap |")
    print("|---|---|---|---|---|---|")
    print(
        f"| np.memmap f16 fancy idx + astype | {rows_timed / t_np / 1e6:.2f} | {2 * elems / t_np / 1e9:.2f} "
        f"| {6 * elems / t_np / 1e9:.1f} | {6 * elems / t_np / memcpy_traffic:.0%} | 1.00x |"
    )
    for k in levels:
        t = statistics.median(times[k])
        print(
            f"| actbridge, ACTBRIDGE_SIMD={k.split()[1]} | {rows_timed / t / 1e6:.2f} "
            f"| {2 * elems / t / 1e9:.2f} "
            f"| {6 * elems / t / 1e9:.1f} | {6 * elems / t / memcpy_traffic:.0%} "
            f"| {median_ratio(times['numpy'], times[k]):.2f}x |"
        )
    print()
    t_ours = statistics.median(times[levels[0]]) if levels else float("nan")
    t_block = median_time(ours_block, args.repeats)

    # -- sequential ---------------------------------------------------------------------------
    seq_rows = min(n, 262144)

    def ours_seq() -> None:
        for s in range(0, seq_rows, 65536):
            store.read("x", slice(s, s + 65536))

    def numpy_seq() -> None:
        for s in range(0, seq_rows, 65536):
            mm[s : s + 65536].astype(np.float32)

    t_seq = median_time(ours_seq, args.repeats)
    t_np_seq = median_time(numpy_seq, args.repeats)

    def line(name: str, rows: int, t_ours: float, t_ref: float, ref: str) -> None:
        gb = rows * row_bytes16 / 1e9
        print(
            f"| {name:<24} | {rows / t_ours / 1e6:8.2f} M rows/s | {gb / t_ours:6.2f} GB/s "
            f"| {ref:<34} | {rows / t_ref / 1e6:8.2f} M rows/s | {gb / t_ref:6.2f} GB/s "
            f"| {t_ref / t_ours:5.2f}x |"
        )

    print(
        "| operation                | actbridge        | GB/s*      | reference                          "
        "| reference        | GB/s*      | speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    line("shuffled (default level)", rows_timed, t_ours, t_np, "np.memmap f16 fancy idx + astype")
    line("block-shuffled batches", rows_timed, t_block, t_np, "np.memmap f16 fancy idx + astype")
    line("sequential read", seq_rows, t_seq, t_np_seq, "np.memmap f16 slice + astype")
    line("append (f32 in, fsync)", n, t_store_w, t_npy_cw, "np.save(x.astype(f16)) + fsync")
    line("append (f32 in, fsync)", n, t_store_w, t_npy_w, "np.save f16 (pre-converted) + fsync")
    print("* GB/s of 16-bit rows read or written (2 bytes x dim per row); outputs are float32.")
    if not args.keep:
        del store, mm
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
