"""Collection benchmark: ``ab.collect`` vs a bare forward pass truncated at the same layer.

Both sides run the same model on the same padded batches of the bundled corpus; the bare pass
calls the model's decoder stack with its block list cut after the last collected layer (no
hooks, no LM head, nothing copied or written). Also reports paired collection
SmolLM2-135M-Instruct -> Gemma-3-270m (tokens/s counts both models' tokens) and the alignment
rate. With ``--qwen`` also the Qwen2.5-Coder-1.5B-Instruct (``--qwen-texts`` texts, layers
``--qwen-layers``) and the paired Qwen 0.5B -> 1.5B collection. ``ab.collect`` and the bare pass
alternate round by round (for both models); the overhead is the median of the per-round ratios.

    python benches/bench_collect.py [--repeats 3] [--batch-size 8] [--device cpu] [--qwen]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import actbridge as ab  # noqa: E402
from timing import interleaved_times, median_ratio, median_time  # noqa: E402


def bare_forward(model, tok, texts, layer: int, batch_size: int, max_length: int, device) -> int:
    """Run the decoder stack up to ``layer`` on the same batches collect uses; tokens seen."""
    import torch

    blocks = ab.decoder_blocks(model)
    inner = model.model  # Llama layout: model.model.layers
    full = inner.layers
    inner.layers = torch.nn.ModuleList(list(blocks)[: layer + 1])
    tokens = 0
    try:
        for k in range(0, len(texts), batch_size):
            enc = tok(
                texts[k : k + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            mask = enc["attention_mask"]
            with torch.inference_mode():
                inner(
                    input_ids=enc["input_ids"],
                    attention_mask=mask,
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=False,
                )
            tokens += int(mask.sum())
    finally:
        inner.layers = full
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens


class Collections:
    """``ab.collect`` / ``ab.collect_pair`` runs, each into a fresh folder under one temporary root."""

    def __init__(self, args: argparse.Namespace, prefix: str) -> None:
        self.args, self.root, self.n = args, Path(tempfile.mkdtemp(prefix=prefix)), 0

    def _next(self, kind: str) -> Path:
        self.n += 1
        return self.root / f"{kind}{self.n}"

    def collect(self, model, tok, texts, layers) -> None:
        a = self.args
        ab.collect(
            model,
            tok,
            texts,
            layers,
            self._next("c"),
            batch_size=a.batch_size,
            max_length=a.max_length,
            skip_bos=False,
            progress=False,
        )

    def pair(self, source, target, texts) -> None:
        a = self.args
        ab.collect_pair(
            source,
            target,
            texts,
            self._next("p"),
            batch_size=a.batch_size,
            max_length=a.max_length,
            progress=False,
        )

    def last_pair(self) -> ab.ActivationStore:
        return ab.ActivationStore(self.root / f"p{self.n}")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--layers", default="6,13")
    p.add_argument("--device", default=None)
    p.add_argument("--qwen", action="store_true", help="add the Qwen2.5-Coder-1.5B and the 0.5B -> 1.5B pair")
    p.add_argument("--qwen-texts", type=int, default=48)
    p.add_argument("--qwen-layers", default="10,20")
    p.add_argument("--smoke", action="store_true", help="tiny random models (for the test suite)")
    args = p.parse_args()
    import torch

    texts = ab.load_corpus()
    layers = [int(v) for v in args.layers.split(",")]
    if args.smoke:
        from actbridge.testing import tiny_model, tiny_tokenizer

        tok_s, tok_t = tiny_tokenizer("bpe"), tiny_tokenizer("unigram", padding_side="left")
        m_s, m_t = tiny_model("llama", vocab=len(tok_s), layers=4), tiny_model("gemma3", vocab=len(tok_t))
        texts, layers, names = texts[:20], [1, 2], ("tiny-llama", "tiny-gemma3")
    else:
        m_s, tok_s = ab.load_model("smollm2-135m-instruct", device=args.device)
        m_t, tok_t = ab.load_model("gemma-3-270m", device=args.device)
        names = ("SmolLM2-135M", "Gemma-3-270m")
    print(f"# batch {args.batch_size}, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    bench_rows(
        args,
        (m_s, tok_s, names[0]),
        texts,
        layers,
        (m_s, tok_s, layers[-1], names[0]),
        (m_t, tok_t, layers[0], names[1]),
    )
    if args.qwen or args.smoke:
        qwen_rows(args)


def qwen_rows(args: argparse.Namespace) -> None:
    """The overhead row for the Qwen2.5-Coder-1.5B and the paired 0.5B -> 1.5B collection."""
    texts = ab.load_corpus()[: args.qwen_texts]
    layers = [int(v) for v in args.qwen_layers.split(",")]
    if args.smoke:
        from actbridge.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer("bpe")
        m_t, m_s = (
            tiny_model("llama", vocab=len(tok), layers=4, d=48),
            tiny_model("llama", vocab=len(tok), layers=3),
        )
        tok_s, tok_t, texts, layers = tok, tok, texts[:8], [1, 2]
        names = ("tiny-llama-3", "tiny-llama-4")
    else:
        m_s, tok_s = ab.load_model("qwen2.5-coder-0.5b-instruct", device=args.device, progress=False)
        m_t, tok_t = ab.load_model("qwen2.5-coder-1.5b-instruct", device=args.device, progress=False)
        names = ("Qwen2.5-Coder-0.5B", "Qwen2.5-Coder-1.5B")
    bench_rows(
        args,
        (m_t, tok_t, names[1]),
        texts,
        layers,
        (m_s, tok_s, layers[0], names[0]),
        (m_t, tok_t, layers[-1], names[1]),
    )


def bench_rows(args: argparse.Namespace, collected, texts, layers, source, target) -> None:
    """Print ``ab.collect`` of ``collected = (model, tok, name)`` at ``layers`` against the bare
    forward (alternating rounds; overhead = median of per-round ratios), then the paired
    collection ``source`` -> ``target`` (each ``(model, tok, layer, name)``)."""
    model, tok, name = collected
    (m_s, tok_s, l_s, n_s), (m_t, tok_t, l_t, n_t) = source, target
    device = next(model.parameters()).device
    runs = Collections(args, "bench-collect-")

    def bare() -> None:
        bare_forward(model, tok, texts, max(layers), args.batch_size, args.max_length, device)

    try:
        tokens = bare_forward(model, tok, texts, max(layers), args.batch_size, args.max_length, device)
        times = interleaved_times(
            {"ours": lambda: runs.collect(model, tok, texts, layers), "bare": bare}, args.repeats
        )
        t_pair = median_time(lambda: runs.pair((m_s, tok_s, l_s), (m_t, tok_t, l_t), texts), args.repeats)
        store = runs.last_pair()
        pair_tokens = sum(len(tok_s(t)["input_ids"]) + len(tok_t(t)["input_ids"]) for t in texts)
    finally:
        runs.cleanup()
    t_ours, t_bare = statistics.median(times["ours"]), statistics.median(times["bare"])
    overhead = median_ratio(times["ours"], times["bare"]) - 1
    print(f"\n# {name}: {len(texts)} texts, {tokens:,} tokens, {device}")
    print("| model | layers | ab.collect tok/s | bare forward to layer tok/s | overhead |")
    print("|---|---|---|---|---|")
    print(
        f"| {name} | {','.join(map(str, layers))} | {tokens / t_ours:,.0f} | {tokens / t_bare:,.0f} "
        f"| {100 * overhead:+.1f}% |"
    )
    print("\n| pair | layers | tok/s (both models) | rows | alignment rate |")
    print("|---|---|---|---|---|")
    print(
        f"| {n_s} -> {n_t} | {l_s} -> {l_t} | {pair_tokens / t_pair:,.0f} "
        f"| {len(store):,} | {store.metadata['alignment_rate']:.1%} |"
    )


if __name__ == "__main__":
    main()
