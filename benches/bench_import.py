"""Wall time of ``import actbridge`` (without torch) in fresh interpreters, and the modules that
cost the most; with several ``--tree`` paths (package roots put first on ``PYTHONPATH``, e.g. a
worktree of an older commit), the trees are timed interleaved, round by round, medians.

    python benches/bench_import.py
    python benches/bench_import.py --tree /tmp/old/python --tree python --rounds 21
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CODE = "import sys, actbridge; assert 'torch' not in sys.modules, 'import actbridge imported torch'"


def once(tree: str | None) -> float:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE], env=env, check=True)
    return time.perf_counter() - t0


def heaviest(tree: str | None, k: int) -> list[tuple[int, str]]:
    """The ``k`` actbridge modules with the largest self time (µs) under ``-X importtime``."""
    env = dict(os.environ) | ({"PYTHONPATH": tree} if tree else {})
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import actbridge"],
        env=env,
        capture_output=True,
        text=True,
    ).stderr
    rows = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, _, name = line.removeprefix("import time:").split("|")
            if self_us.strip().isdigit():
                rows.append((int(self_us), name.strip()))
    return sorted(rows, reverse=True)[:k]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", help="a package root to import from (repeatable)")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    trees = args.tree or [None]
    once(trees[0])  # warm the file cache and the bytecode
    times: dict[str | None, list[float]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for t in trees:
            times[t].append(once(t))
    base = statistics.median(times[trees[0]])
    print("| tree | median import (ms) | vs first |\n|---|--:|--:|")
    for t in trees:
        m = statistics.median(times[t])
        print(f"| {t or 'installed'} | {m * 1000:.0f} | {base / m:.2f}x |")
    print("\nlargest self times (µs), last tree:")
    for us, name in heaviest(trees[-1], 8):
        print(f"  {us:>7}  {name}")


if __name__ == "__main__":
    main()
