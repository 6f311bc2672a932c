"""Before/after: the same public-API workloads timed under two (or more) package trees, in
fresh interpreters, interleaved round by round (medians), so a refactor's cost shows as a ratio
measured side by side. A tree is a package root put first on ``PYTHONPATH`` with its own built
``_native`` module, e.g. a worktree of the older commit:

    git worktree add /tmp/old <commit> && (build or copy its _native.abi3.so into /tmp/old/python/actbridge)
    python benches/bench_trees.py --tree /tmp/old/python --tree python

Workloads (seeded data written once into --dir by the first tree):
- ``batches``: one epoch of shuffled bf16 -> f32 batches of 4096 rows from a store;
- ``affine``: ``AffineMap.fit`` streaming the store (XᵀX, XᵀY, solve);
- ``autoencoder``: ``AutoencoderMap.fit`` with the Rust trainer, validation each epoch;
- ``collect``: ``ab.collect`` of a tiny random-init llama's two layers over bundled texts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORK = r"""
import json, sys, time
import numpy as np
import actbridge as ab
from pathlib import Path

kind, root, rows, dim = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
path = root / f"store-{rows}x{dim}"
if not (path / "manifest.json").exists():
    rng = np.random.default_rng(0)
    with ab.StoreWriter(path, sites={"source": dim, "target": dim}, dtype="bfloat16") as w:
        for start in range(0, rows, 8192):
            n = min(8192, rows - start)
            x = rng.standard_normal((n, dim), dtype=np.float32)
            w.append(source=x, target=np.tanh(x @ np.eye(dim, dtype=np.float32)[::-1]))
s = ab.ActivationStore(path)
t0 = time.perf_counter()
if kind == "batches":
    n = sum(len(b["source"]) for b in s.batches(["source", "target"], batch_size=4096, shuffle=True, seed=1))
    assert n == rows
elif kind == "affine":
    ab.AffineMap.fit(s, ridge=1e-3, progress=False)
elif kind == "autoencoder":
    train, val = s.split(0.1, seed=0)
    ab.AutoencoderMap.fit(s, rows=train[:20000], val_rows=val[:4000], hidden=256, epochs=2, batch_size=256,
                          backend="rust", progress=False)
elif kind == "collect":
    from actbridge.testing import tiny_model, tiny_tokenizer
    tok = tiny_tokenizer()
    model = tiny_model("llama", vocab=len(tok), layers=4, d=128, seed=0)
    out = root / f"collect-{time.time_ns()}"
    t0 = time.perf_counter()
    ab.collect(model, tok, ab.load_corpus()[:64], [1, 3], out, progress=False)
    import shutil; shutil.rmtree(out)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def once(tree: str, kind: str, args: argparse.Namespace) -> float:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(
        [sys.executable, "-c", WORK, kind, args.dir, str(args.rows), str(args.dim)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", required=True, help="a package root (repeatable; first = base)")
    p.add_argument("--work", default="batches,affine,autoencoder,collect")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default="bench-data-trees")
    args = p.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    kinds = [k for k in args.work.split(",") if k]
    once(args.tree[0], "batches", args)  # write the store once, warm the page cache
    times = {(t, k): [] for t in args.tree for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            for t in args.tree:
                times[(t, k)].append(once(t, k, args))
    print(f"{args.rows:,} x {args.dim} bf16 rows, {args.rounds} interleaved rounds, medians (s)\n")
    print("| workload | " + " | ".join(args.tree) + " | base / last |")
    print("|---|" + "--:|" * (len(args.tree) + 1))
    for k in kinds:
        meds = [statistics.median(times[(t, k)]) for t in args.tree]
        print(f"| {k} | " + " | ".join(f"{m:.3f}" for m in meds) + f" | {meds[0] / meds[-1]:.2f}x |")


if __name__ == "__main__":
    main()
