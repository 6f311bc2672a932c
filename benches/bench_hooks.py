"""Intervention overhead in generation: greedy batched ``generate()`` plain, under ``ab.steer``
(one layer, every position) and under ``ab.ablate`` (every layer), on the same prompts.

The runs alternate round by round (the order rotating); overheads are medians of the per-round
ratios to the plain run. A steer with α = 0 is timed too (the hooks' bare cost) and must give the
plain answers token for token.

    python benches/bench_hooks.py                      # Qwen2.5-Coder-1.5B-Instruct
    python benches/bench_hooks.py --model qwen2.5-coder-0.5b-instruct --prompts 16
    python benches/bench_hooks.py --smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import actbridge as ab  # noqa: E402
import numpy as np  # noqa: E402
from actbridge.evaluation.generation import encode_prompts, generate_batch  # noqa: E402
from actbridge.tasks import refusal  # noqa: E402
from actbridge.texts import as_chat  # noqa: E402
from timing import interleaved_times, median_ratio  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--prompts", type=int, default=32, help="harmless prompts in the batch")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layer", type=int, default=None, help="steering layer (default: half way)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    import torch

    if args.smoke:
        from actbridge.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer(padding_side="left")
        model, name = tiny_model("llama", vocab=len(tok), layers=4), "tiny-llama"
        args.prompts, args.new_tokens, args.repeats = 4, 4, 1
    else:
        model, tok = ab.load_model(args.model, progress=False)
        name = args.model
    n_layers = len(ab.decoder_blocks(model))
    layer = args.layer if args.layer is not None else n_layers // 2
    texts = refusal.instructions("eval", False)[: args.prompts]
    ids = encode_prompts(tok, [as_chat(t) for t in texts])
    d = model.get_input_embeddings().embedding_dim
    rng = np.random.default_rng(0)
    direction = ab.SteeringVector(rng.standard_normal(d).astype(np.float32), layer)
    direction = ab.SteeringVector(direction.unit() * 4.0, layer)
    answers: dict[str, list[str]] = {}

    def run(label: str, ctx_factory) -> None:
        with ctx_factory():
            answers[label] = generate_batch(model, tok, ids, args.new_tokens)

    import contextlib

    fns = {
        "plain": lambda: run("plain", contextlib.nullcontext),
        "steer α=0": lambda: run("steer α=0", lambda: ab.steer(model, direction, 0.0)),
        "steer": lambda: run("steer", lambda: ab.steer(model, direction, 1.0)),
        "ablate (all layers)": lambda: run(
            "ablate (all layers)", lambda: ab.ablate(model, direction, layers=list(range(n_layers)))
        ),
    }
    fns["plain"]()  # warm
    times = interleaved_times(fns, args.repeats)
    assert answers["steer α=0"] == answers["plain"], "an α = 0 steer changed the answers"
    tokens = args.prompts * args.new_tokens
    print(
        f"# {name}: {args.prompts} prompts x {args.new_tokens} new tokens, greedy, batch {args.prompts}, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats} interleaved rounds"
    )
    print("| run | s | new tokens/s | overhead vs plain |")
    print("|---|---|---|---|")
    for label, ts in times.items():
        t = statistics.median(ts)
        over = 0.0 if label == "plain" else 100 * (median_ratio(ts, times["plain"]) - 1)
        print(f"| {label} | {t:.2f} | {tokens / t:,.1f} | {over:+.1f}% |")


if __name__ == "__main__":
    main()
