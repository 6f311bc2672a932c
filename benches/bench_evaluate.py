"""Substitution evaluation of two maps: one call per map (before) vs one call for both (after).

``ab.evaluate_substitution`` of SmolLM2-135M-Instruct layer 13 -> Gemma-3-270m layer 9 on
--texts held-out corpus texts with two maps of the right shape (576 -> 640 affine maps with
seeded random weights: the passes, not the map quality, are what is timed). Before: two calls,
each running the target's mean, clean and mean-ablated passes and the source pass itself.
After: one call with ``{"a": map_a, "b": map_b}``, which runs those once per batch. The two
modes alternate over --repeats rounds; the ratio is the median of the per-round ratios, and the
metrics of both modes are checked equal.

    python benches/bench_evaluate.py [--texts 24] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import actbridge as ab  # noqa: E402
from timing import interleaved_times, median_ratio  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny random-init models (seconds)")
    args = p.parse_args()
    if args.smoke:
        from actbridge.testing import tiny_model, tiny_tokenizer

        tok_s, tok_t = tiny_tokenizer("bpe"), tiny_tokenizer("unigram", padding_side="left")
        source = (tiny_model("llama", vocab=len(tok_s), layers=4), tok_s, 2)
        target = (tiny_model("gemma3", vocab=len(tok_t), layers=4, d=48), tok_t, 2)
        names = ("tiny-llama", "tiny-gemma3")
    else:
        m_s, tok_s = ab.load_model("smollm2-135m-instruct", progress=False)
        m_t, tok_t = ab.load_model("gemma-3-270m", progress=False)
        source, target = (m_s, tok_s, 13), (m_t, tok_t, 9)
        names = ("smollm2-135m-instruct L13", "gemma-3-270m L9")
    d_s = int(source[0].get_input_embeddings().embedding_dim)
    d_t = int(target[0].get_input_embeddings().embedding_dim)
    rng = np.random.default_rng(0)
    maps = {
        k: ab.AffineMap(
            (rng.standard_normal((d_t, d_s)) / np.sqrt(d_s)).astype(np.float32), np.zeros(d_t, np.float32)
        )
        for k in ("a", "b")
    }
    texts = ab.load_corpus()[: args.texts]
    results = {}

    def before() -> None:
        results["before"] = {
            k: ab.evaluate_substitution(target, source, m, texts, progress=False) for k, m in maps.items()
        }

    def after() -> None:
        results["after"] = ab.evaluate_substitution(target, source, maps, texts, progress=False)

    times = interleaved_times({"before": before, "after": after}, args.repeats)
    same = results["before"] == results["after"]
    t_b, t_a = statistics.median(times["before"]), statistics.median(times["after"])
    print(
        f"# evaluate_substitution of two maps, {names[0]} -> {names[1]}, {len(texts)} texts, "
        f"{os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print("| one call per map (before) | one call for both (after) | ratio | metrics equal |")
    print("|---|---|---|---|")
    print(f"| {t_b:.1f} s | {t_a:.1f} s | {median_ratio(times['before'], times['after']):.2f}x | {same} |")


if __name__ == "__main__":
    main()
