"""Affine fit benchmark: actbridge vs numpy/scipy normal equations, numpy and torch lstsq.

In one run, for each shape (default N = 200,000 rows, 1024 -> 1024 and 576 -> 640), on the same
in-RAM float32 rows (median of --repeats):

Our fit and numpy's normal equations run in alternating rounds; their ratio is the median of the
per-round ratios (the machine is shared and its speed drifts).

- actbridge ``AffineMap.fit(x, y)`` (one pass of f32 chunk products into f64 statistics,
  centred, with bias; Cholesky solve; metrics included);
- numpy ``A = X.T @ X; B = X.T @ Y`` + ``scipy.linalg.cho_solve`` (no centring or bias: less
  work than ours);
- ``numpy.linalg.lstsq`` and ``torch.linalg.lstsq`` on --lstsq-rows rows, scaled linearly to N
  (their cost is linear in the row count; running them on N rows takes minutes);
- actbridge ``AffineMap.fit(store)`` straight from a bfloat16 store of the same rows.

``--ae`` adds the autoencoder trainers: samples/s of the Rust trainer vs an idiomatic PyTorch CPU
loop (``AutoencoderMap.fit(backend="torch", device="cpu")``: same shapes, batch, AdamW, threads,
init and store batches) at 576 -> 607 -> 640 and 896 -> 1173 -> 1536, end to end (one epoch
including validation), with the validation MSE each reaches after the same steps.

GFLOP/s counts the products actually needed (XᵀX triangle: N·d_s², XᵀY: 2·N·d_s·d_t) and is
compared with this machine's float32 GEMM rate (numpy, 4096³). ``--ooc-gb G`` adds an
out-of-core fit from a G-GB store, run in a subprocess whose peak RSS is reported.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import actbridge as ab
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved_times, median_ratio, median_time  # noqa: E402


def gemm_gflops(repeats: int) -> float:
    a = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    t = median_time(lambda: a @ a, repeats)
    return 2 * 4096**3 / t / 1e9


def data(n: int, d_s: int, d_t: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = np.empty((n, d_s), np.float32)
    y = np.empty((n, d_t), np.float32)
    w = (rng.standard_normal((d_s, d_t)) / np.sqrt(d_s)).astype(np.float32)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        x[s:e] = rng.standard_normal((e - s, d_s), dtype=np.float32) + 3.0
        y[s:e] = x[s:e] @ w + 0.1 * rng.standard_normal((e - s, d_t), dtype=np.float32)
    return x, y


def numpy_normal_equations(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    from scipy.linalg import cho_factor, cho_solve

    a = (x.T @ x).astype(np.float64)
    b = (x.T @ y).astype(np.float64)
    a[np.diag_indices_from(a)] += ridge
    return cho_solve(cho_factor(a), b).T


def ooc_child(path: str, budget: int) -> None:
    store = ab.ActivationStore(path, page_budget=budget)
    t0 = time.perf_counter()
    m = ab.AffineMap.fit(store, progress=False)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (fallback)
    print(f"{len(store)} {dt} {peak} {m.metrics['fvu']}")


def ooc_write(path: str, gb: float) -> None:
    """Write a 1024 -> 1024 bf16 store of about ``gb`` GB (run in a child process)."""
    d = 1024
    n = int(gb * 1e9 / (2 * 2 * d))
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    x = rng.standard_normal((16384, d), dtype=np.float32)
    y = x @ w
    with ab.StoreWriter(path, sites={"source": d, "target": d}) as wr:
        for s in range(0, n, 16384):
            k = min(16384, n - s)
            wr.append(source=x[:k], target=y[:k])


def out_of_core(root: Path, gb: float, budget: int) -> str:
    """Fit from a ``gb``-GB store in a child process; report its peak RSS.

    Runs before the in-RAM benchmarks and writes the store in another child, so that the
    measured process descends from a small parent (Linux carries a parent's peak RSS into
    children it forks).
    """
    path = root / "ooc"
    subprocess.run([sys.executable, __file__, "--ooc-write", str(path), str(gb)], check=True)
    cmd = [sys.executable, __file__, "--ooc-child", str(path), str(budget)]
    timed = os.path.exists("/usr/bin/time")
    r = subprocess.run(
        (["/usr/bin/time", "-v"] if timed else []) + cmd, capture_output=True, text=True, check=True
    )
    out = r.stdout.split()
    rows, secs, peak, fvu = int(out[0]), float(out[1]), float(out[2]), float(out[3])
    for line in r.stderr.splitlines():
        if "Maximum resident set size" in line:
            peak = int(line.split()[-1]) / 2**20  # KiB -> GiB
    size = ab.ActivationStore(path).nbytes / 1e9
    shutil.rmtree(path, ignore_errors=True)
    return (
        f"out of core: {size:.1f} GB store ({rows:,} rows, 1024 -> 1024 bf16), page budget "
        f"{budget / 2**30:.1f} GiB: {secs:.1f} s, {rows / secs / 1e3:.0f}k rows/s, "
        f"{size / secs:.2f} GB/s, peak RSS {peak:.2f} GiB (/usr/bin/time -v), train FVU {fvu:.2e}"
    )


def bench_shape(root: Path, n: int, d_s: int, d_t: int, lstsq_rows: int, repeats: int, gemm: float) -> str:
    """One table row: every method on the same N x d_s -> d_t rows."""
    import torch

    x, y = data(n, d_s, d_t)
    times = interleaved_times(
        {"ours": lambda: ab.AffineMap.fit(x, y, ridge=1e-3), "numpy": lambda: numpy_normal_equations(x, y)},
        repeats,
    )
    t_ours, t_np = statistics.median(times["ours"]), statistics.median(times["numpy"])
    ratio_np = median_ratio(times["numpy"], times["ours"])
    k = min(n, lstsq_rows)
    t_lstsq = median_time(lambda: np.linalg.lstsq(x[:k], y[:k], rcond=None), 1) * n / k
    xt, yt = torch.from_numpy(x[:k]), torch.from_numpy(y[:k])
    t_torch = median_time(lambda: torch.linalg.lstsq(xt, yt), 1) * n / k
    store_path = root / f"s{d_s}x{d_t}"
    with ab.StoreWriter(store_path, sites={"source": d_s, "target": d_t}) as w:
        for s in range(0, n, 65536):
            w.append(source=x[s : s + 65536], target=y[s : s + 65536])
    store = ab.ActivationStore(store_path)
    t_store = median_time(lambda: ab.AffineMap.fit(store, progress=False, ridge=1e-3), repeats)
    shutil.rmtree(store_path, ignore_errors=True)
    flops = n * d_s * d_s + 2 * n * d_s * d_t
    gf = flops / t_ours / 1e9
    return (
        f"| {d_s} -> {d_t} | {t_ours:.2f} s | {gf:.0f} ({100 * gf / gemm:.0f}%) | {t_np:.2f} s "
        f"| {ratio_np:.2f}x | {t_lstsq:.1f} s | {t_lstsq / t_ours:.0f}x ({t_lstsq / t_np:.0f}x) "
        f"| {t_torch:.1f} s "
        f"| {t_torch / t_ours:.0f}x ({t_torch / t_np:.0f}x) | {t_store:.2f} s | {n / t_store / 1e3:.0f}k |"
    )


def bench_autoencoder(root: Path, n: int, d_s: int, d_t: int, repeats: int) -> str:
    """One table row: Rust and torch trainers, one epoch over the same store rows."""
    import torch

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((d_s, d_t)) / np.sqrt(d_s)).astype(np.float32)
    path = root / f"ae{d_s}x{d_t}"
    with ab.StoreWriter(path, sites={"source": d_s, "target": d_t}) as wr:
        for s in range(0, n, 16384):
            x = rng.standard_normal((min(16384, n - s), d_s), dtype=np.float32)
            wr.append(
                source=x,
                target=np.maximum(x @ w, 0) + 0.1 * rng.standard_normal((len(x), d_t), dtype=np.float32),
            )
    store = ab.ActivationStore(path)
    train, val = store.split(0.1, seed=0)
    init = ab.AutoencoderMap.fit(
        store, rows=train[:8], epochs=1, batch_size=8, lr=1e-12, progress=False, backend="torch"
    )
    fits: dict[str, ab.AutoencoderMap] = {}

    def run(backend: str) -> None:
        fits[backend] = ab.AutoencoderMap.fit(
            store,
            rows=train,
            val_rows=val,
            epochs=1,
            batch_size=1024,
            lr=1e-4,
            progress=False,
            backend=backend,
            init=init,
            device="cpu",
        )

    times = interleaved_times({b: (lambda b=b: run(b)) for b in ("rust", "torch")}, repeats)
    shutil.rmtree(path, ignore_errors=True)
    t_r, t_t = statistics.median(times["rust"]), statistics.median(times["torch"])
    mse_r, mse_t = fits["rust"].history[-1]["val_mse"], fits["torch"].history[-1]["val_mse"]
    h = init.hidden
    return (
        f"| {d_s} -> {h} -> {d_t} | {len(train) / t_r:,.0f} | {len(train) / t_t:,.0f} "
        f"| {median_ratio(times['torch'], times['rust']):.2f}x "
        f"| {mse_r:.5f} | {mse_t:.5f} | {torch.get_num_threads()} |"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ooc-child":
        return ooc_child(sys.argv[2], int(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "--ooc-write":
        return ooc_write(sys.argv[2], float(sys.argv[3]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--lstsq-rows", type=int, default=20_000)
    p.add_argument("--shapes", default="1024x1024,576x640")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="bench-data-fit")
    p.add_argument("--ooc-gb", type=float, default=0.0, help="also fit from a store this large (GB)")
    p.add_argument("--ooc-budget-gib", type=float, default=1.0)
    p.add_argument("--ae", action="store_true", help="also benchmark the autoencoder trainers")
    p.add_argument("--ae-rows", type=int, default=50_000)
    p.add_argument("--ae-shapes", default="576x640,896x1536")
    args = p.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ooc = out_of_core(root, args.ooc_gb, int(args.ooc_budget_gib * 2**30)) if args.ooc_gb > 0 else None
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    gemm = gemm_gflops(args.repeats)
    print(
        f"# N = {args.rows:,} rows, float32 in RAM, {os.cpu_count()} CPUs, median of {args.repeats}; "
        f"numpy f32 GEMM {gemm:.0f} GFLOP/s"
    )
    print(
        "| d_s -> d_t | actbridge fit | GFLOP/s (% GEMM) | numpy X.T@X + cho_solve | ratio | numpy lstsq* "
        "| ratio | torch lstsq* | ratio | actbridge from bf16 store | rows/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in filter(None, args.shapes.split(",")):
        d_s, d_t = (int(v) for v in shape.split("x"))
        print(bench_shape(root, args.rows, d_s, d_t, args.lstsq_rows, args.repeats, gemm))
    print(
        f"* lstsq timed on {min(args.rows, args.lstsq_rows):,} rows and scaled linearly to N; in brackets, "
        "numpy's normal equations against the same lstsq (the most any normal-equations fit can reach here)."
    )
    if ooc:
        print(ooc)
    if args.ae:
        print(
            f"\n# autoencoder, one epoch over {int(args.ae_rows * 0.9):,} rows (batch 1024, AdamW lr 1e-4), "
            f"same init and batches, median of {args.repeats}"
        )
        print(
            "| d_s -> h -> d_t | rust samples/s | torch CPU samples/s | ratio | rust val MSE | torch val MSE "
            "| threads |"
        )
        print("|---|---|---|---|---|---|---|")
        for shape in args.ae_shapes.split(","):
            d_s, d_t = (int(v) for v in shape.split("x"))
            print(bench_autoencoder(root, args.ae_rows, d_s, d_t, args.repeats))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
