"""Sweep benchmark: a vectors × α steering sweep cell by cell vs in one batched pass.

For each model (SmolLM2-135M-Instruct; Qwen2.5-Coder-0.5B-Instruct when installed), 4 vectors
(a sentiment difference of means at the middle layer and at 3/4 depth, and two same-norm noise
vectors) × 4 α over 48 prompts, 24 new greedy tokens:

- cell by cell: today's way, one ``with ab.steer(...)`` block and one ``generate()`` over the
  prompts per cell (batches of 8 prompts);
- one pass: :func:`actbridge.interventions.rowwise.generate_conditions`, every (cell, prompt) row in batches
  sized to a memory budget, each row steered its own way.

Each mode runs in a child process of its own (peak RSS = the child's VmHWM), alternating order
over --repeats rounds; the ratio is the median of per-round ratios. Outputs are compared row by
row: the share of the 768 completions that are token-identical between the two modes.

    python benches/bench_sweep.py [--repeats 1] [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

POSITIVE = [
    "I love this place, it is wonderful and bright.",
    "What a delightful, happy morning this is.",
    "The food was excellent and the staff were kind.",
    "This is the best day I have had in years.",
    "We had a lovely time and laughed all evening.",
    "Great news: the project succeeded brilliantly.",
]
NEGATIVE = [
    "I hate this place, it is awful and gloomy.",
    "What a miserable, depressing morning this is.",
    "The food was terrible and the staff were rude.",
    "This is the worst day I have had in years.",
    "We had a horrible time and argued all evening.",
    "Bad news: the project failed completely.",
]


def prompts(n: int) -> list[str]:
    """``n`` prompt openings: the first words of the bundled corpus texts."""
    import actbridge as ab

    texts = ab.load_corpus()
    return [" ".join(texts[i % len(texts)].split()[: 6 + i % 5]) for i in range(n)]


def conditions(model: Any, tok: Any, alphas: list[float]) -> list[Any]:
    import actbridge as ab
    from actbridge.interventions.rowwise import grid

    n = len(ab.decoder_blocks(model))
    mid, late = n // 2, (3 * n) // 4
    v_mid = ab.SteeringVector.from_contrast(model, tok, POSITIVE, NEGATIVE, mid, positions="all")
    v_late = ab.SteeringVector.from_contrast(model, tok, POSITIVE, NEGATIVE, late, positions="all")
    rng = np.random.default_rng(0)
    vectors = {
        f"sentiment L{mid}": v_mid,
        f"sentiment L{late}": v_late,
        f"noise L{mid}": v_mid.random_like(rng),
        f"noise L{late}": v_late.random_like(rng),
    }
    return grid(vectors, alphas)


def child(args: argparse.Namespace) -> None:
    """One mode in this process; prints a JSON line (wall s, outputs, peak RSS GiB)."""
    import actbridge as ab
    import torch
    from actbridge.evaluation.generation import generate
    from actbridge.interventions.rowwise import generate_conditions

    torch.manual_seed(0)
    if args.smoke:
        from actbridge.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer("bpe", padding_side="left")
        model = tiny_model("llama", vocab=len(tok), layers=4, seed=3)
    else:
        model, tok = ab.load_model(args.model, progress=False)
    conds = conditions(model, tok, [float(a) for a in args.alphas.split(",")])
    ps = prompts(args.prompts)
    t0 = time.perf_counter()
    if args.child == "cells":
        outs = []
        for c in conds:
            with ab.steer(model, c.vector, alpha=c.alpha, positions=c.positions):
                outs.append(generate(model, tok, ps, args.new_tokens, batch_size=args.cell_batch))
    else:
        outs = generate_conditions(
            model, tok, conds, ps, args.new_tokens, memory_budget=args.budget_gib * 2**30
        )
    wall = time.perf_counter() - t0
    peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 2**20  # kB -> GiB
    print(json.dumps({"wall": wall, "outputs": outs, "peak_gib": peak}))


def run_child(mode: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--model",
        model,
        "--prompts",
        str(args.prompts),
        "--new-tokens",
        str(args.new_tokens),
        f"--alphas={args.alphas}",  # "=": the list may start with a minus sign
        "--budget-gib",
        str(args.budget_gib),
        "--cell-batch",
        str(args.cell_batch),
    ] + (["--smoke"] if args.smoke else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{mode} on {model} failed:\n{r.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct")
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--alphas", default="-8,-4,4,8")
    p.add_argument("--budget-gib", type=float, default=2.0, help="memory budget of one batched pass")
    p.add_argument("--cell-batch", type=int, default=8, help="prompts per generate() call, cell by cell")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="a tiny random-init model (seconds)")
    p.add_argument("--child", choices=["cells", "onepass"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import actbridge as ab

    cells = len(args.alphas.split(",")) * 4
    rows = cells * args.prompts
    print(
        f"# {cells} cells (4 vectors x {cells // 4} alpha) x {args.prompts} prompts = {rows} rows, "
        f"{args.new_tokens} new tokens, {os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print(
        "| model | cell by cell | one pass | ratio | tokens/s cell by cell | tokens/s one pass "
        "| identical rows | peak RSS cells / one pass |"
    )
    print("|---|---|---|---|---|---|---|---|")
    models = ["tiny-llama"] if args.smoke else [m for m in args.models.split(",") if m]
    for name in models:
        if not args.smoke and name not in ab.EMBEDDED:
            print(f"| {name} | not an embedded model (yet) | | | | | | |")
            continue
        if not args.smoke:
            try:
                ab.EMBEDDED[name].gguf_path(ab.models.cache_dir())
            except ab.ModelError as e:
                print(f"| {name} | not installed: {e} | | | | | | |")
                continue
        times: dict[str, list[float]] = {"cells": [], "onepass": []}
        last: dict[str, dict[str, Any]] = {}
        for r in range(args.repeats):
            for mode in ("cells", "onepass") if r % 2 == 0 else ("onepass", "cells"):
                last[mode] = run_child(mode, name, args)
                times[mode].append(last[mode]["wall"])
        ratio = statistics.median(c / o for c, o in zip(times["cells"], times["onepass"], strict=True))
        same = sum(
            a == b
            for ca, cb in zip(last["cells"]["outputs"], last["onepass"]["outputs"], strict=True)
            for a, b in zip(ca, cb, strict=True)
        )
        t_c, t_o = statistics.median(times["cells"]), statistics.median(times["onepass"])
        tokens = rows * args.new_tokens
        print(
            f"| {name} | {t_c:.1f} s | {t_o:.1f} s | {ratio:.2f}x "
            f"| {tokens / t_c:,.0f} | {tokens / t_o:,.0f} "
            f"| {same}/{rows} ({100 * same / rows:.1f}%) "
            f"| {last['cells']['peak_gib']:.2f} / {last['onepass']['peak_gib']:.2f} GiB |"
        )


if __name__ == "__main__":
    main()
