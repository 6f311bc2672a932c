"""Evaluating maps on held-out rows of a store.

FVU = Σ‖ŷ−y‖² / Σ‖y−ȳ‖² with ȳ the per-dimension mean of the evaluated targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, overload

import numpy as np

from actbridge._typing import Map, MapScores, Metric, ModelAt, Rows, SubstitutionScores, Texts, Tokenizer
from actbridge.errors import EvaluateError
from actbridge.store import ActivationStore

__all__ = ["EvaluateError", "bootstrap_ci", "evaluate_map", "evaluate_substitution"]


def evaluate_map(
    m: Map,
    store: ActivationStore,
    source: str = "source",
    target: str = "target",
    rows: Rows = None,
    batch_size: int = 16384,
    *,
    ci: bool = False,
    groups: int = 1000,
    seed: int = 0,
) -> MapScores:
    """Stream ``rows`` of a store through ``m.transform`` and compare with the target site.

    Returns ``mse`` (per element), ``fvu``, ``cosine`` (mean per-row cosine similarity of ŷ
    and y), ``r2`` (mean over target dimensions of 1 − SSE_j/SST_j) and ``rows``. Accumulates in
    float64, shifted by the first batch's mean, so large offsets do not cancel.

    ``ci=True`` adds ``ci95`` (95% bootstrap intervals, resampling texts: the store's ``doc``
    column, hashed into at most ``groups`` clusters; rows when there is no ``doc`` column).
    """
    with_docs = ci and "doc" in store.columns
    names = [source, target, "doc"] if with_docs else [source, target]
    acc: dict[str, Any] = {}
    pilot = None
    n_seen = 0
    for batch in store.batches(names, batch_size=batch_size, shuffle=False, rows=rows):
        x, y = batch[source], batch[target]
        y_hat = np.asarray(m.transform(x), dtype=np.float32)
        if pilot is None:
            pilot = y.mean(0, dtype=np.float64)
            d = y.shape[1]
            k = groups if ci else 1
            acc = {
                "n": np.zeros(k),
                "cos": np.zeros(k),
                "sse": np.zeros((k, d)),
                "sy": np.zeros((k, d)),
                "syy": np.zeros((k, d)),
            }
        if not ci:
            g = np.zeros(len(y), dtype=np.int64)
        elif with_docs:
            g = batch["doc"] % groups
        else:
            g = (np.arange(n_seen, n_seen + len(y)) * 2654435761) % groups
        n_seen += len(y)
        err = (y_hat - y).astype(np.float64)
        yc = y.astype(np.float64) - pilot
        num = np.einsum("ij,ij->i", y_hat, y, dtype=np.float64)
        den = np.linalg.norm(y_hat, axis=1).astype(np.float64) * np.linalg.norm(y, axis=1)
        np.add.at(acc["n"], g, 1.0)
        np.add.at(acc["cos"], g, num / np.maximum(den, 1e-30))
        np.add.at(acc["sse"], g, err * err)
        np.add.at(acc["sy"], g, yc)
        np.add.at(acc["syy"], g, yc * yc)
    if pilot is None:
        from actbridge._native import MapError

        raise MapError("no rows to evaluate; select at least one row")

    def stats(t: dict[str, Any]) -> dict[str, Any]:
        n = t["n"]
        sse, sy, syy = t["sse"], t["sy"], t["syy"]
        sst = np.maximum(syy - sy * sy / np.expand_dims(n, -1), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.nanmean(np.where(sst > 0, 1.0 - sse / sst, np.nan), axis=-1)
            return {
                "mse": sse.sum(-1) / (n * sse.shape[-1]),
                "fvu": sse.sum(-1) / sst.sum(-1),
                "cosine": t["cos"] / n,
                "r2": r2,
            }

    full = stats({k: v.sum(0) for k, v in acc.items()})
    out: MapScores = {
        "rows": int(acc["n"].sum()),
        "mse": float(full["mse"]),
        "fvu": float(full["fvu"]),
        "cosine": float(full["cosine"]),
        "r2": float(full["r2"]),
    }
    if ci:
        used = acc["n"] > 0
        per = {k: v[used] for k, v in acc.items()}
        k = int(used.sum())
        counts = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=1000).astype(np.float64)
        boot = stats({name: np.tensordot(counts, v, axes=1) for name, v in per.items()})  # (1000, ...) totals
        lo, hi = ({k: float(np.nanpercentile(v, q)) for k, v in boot.items()} for q in (2.5, 97.5))
        out["ci95"] = {
            "mse": [lo["mse"], hi["mse"]],
            "fvu": [lo["fvu"], hi["fvu"]],
            "cosine": [lo["cosine"], hi["cosine"]],
            "r2": [lo["r2"], hi["r2"]],
        }
    return out


def bootstrap_ci(
    per_doc: dict[str, np.ndarray], statistic: Any, n_boot: int = 1000, seed: int = 0
) -> tuple[float, list[float]]:
    """``statistic(sums)`` on all documents and its 95% percentile bootstrap interval, resampling
    whole documents. ``per_doc`` maps names to per-document sums; ``statistic`` takes a dict of
    their totals."""
    full = float(statistic({k: v.sum() for k, v in per_doc.items()}))
    n = len(next(iter(per_doc.values())))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(n_boot, n))
    sums = {k: v[picks].sum(1) for k, v in per_doc.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.asarray(statistic(sums), dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return full, [float("nan"), float("nan")]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return full, [float(lo), float(hi)]


Source = ModelAt  # (model, tokenizer, layer)


@overload
def evaluate_substitution(
    target: Source,
    source: Source,
    map: Map | Mapping[str, Map],  # noqa: A002
    texts: Texts,
    *,
    mean: Any = None,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> SubstitutionScores: ...


@overload
def evaluate_substitution(
    target: Source,
    source: Source | Mapping[str, Source],
    map: Mapping[str, Any],  # noqa: A002
    texts: Texts,
    *,
    mean: Any = None,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, SubstitutionScores]: ...


def evaluate_substitution(
    target: Source,
    source: Source | Mapping[str, Source],
    map: Map | Mapping[str, Map],  # noqa: A002
    texts: Texts,
    *,
    mean: Any = None,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """Teacher-forced quality of ``map`` as a substitute for the target's layer.

    On every text, the target's residual stream after its block ``layer`` is replaced by
    ``map(source states)`` at the paired positions (all positions with one tokenizer; tokens
    ending at the same character with two), and compared with the clean target and with the
    same positions mean-ablated (``mean``: ``(d_target,)``, default the target's mean over these
    texts at that layer).

    Returns ``{metric: {"value", "ci95", ...}}`` for ``kl`` (mean KL(p_clean ‖ p_subst) per
    predicted token, nats), ``ce_clean``, ``ce_substituted``, ``ce_ablated`` (nats per token),
    ``ce_recovered`` = (CE_abl − CE_sub)/(CE_abl − CE_clean), and ``alignment_rate``; 95%
    intervals by bootstrap over texts.

    Several maps at once: ``map`` a ``{name: map}`` dict (and ``source`` one source for all, or a
    ``{name: source}`` dict with the same names) returns ``{name: metrics}``. The target's mean,
    clean and mean-ablated passes then run once per batch for all of them (the ablated pass once
    per source tokenizer), and each distinct source model and layer runs once per batch.
    """
    if isinstance(map, Mapping):
        names = list(map)
        if isinstance(source, Mapping):
            if set(source) != set(names):
                raise EvaluateError(
                    f"source and map must name the same substitutions: {sorted(source)} vs {sorted(names)}"
                )
            cases = {k: (source[k], map[k]) for k in names}
        else:
            cases = {k: (source, map[k]) for k in names}
        return _evaluate_substitutions(target, cases, texts, mean, batch_size, max_length, seed, progress)
    if isinstance(source, Mapping):
        raise EvaluateError("a {name: source} dict needs a {name: map} dict with the same names")
    one = {"": (source, map)}
    return _evaluate_substitutions(target, one, texts, mean, batch_size, max_length, seed, progress)[""]


def _evaluate_substitutions(
    target: Source,
    cases: dict[str, tuple[Source, Any]],
    texts: Texts,
    mean: Any,
    batch_size: int,
    max_length: int,
    seed: int,
    progress: bool,
) -> dict[str, SubstitutionScores]:
    import torch

    from actbridge.align import pair_positions, pairable, same_tokenizer
    from actbridge.hooks import forward_padded, input_device, layer_indices, model_inputs, pad_batch
    from actbridge.interventions.base import torch_map
    from actbridge.interventions.replace import patch
    from actbridge.texts import documents, render

    m_t, tok_t, l_t = target
    (l_t,) = layer_indices(m_t, [l_t])
    resolved: dict[str, tuple[Any, Any, int, Any]] = {}
    for name, ((m_s, tok_s, l_s), m) in cases.items():
        (l_s,) = layer_indices(m_s, [l_s])
        resolved[name] = (m_s, tok_s, l_s, m)
    docs = [render(d, tok_t)[0] for d in documents(texts)]
    dev_t = input_device(m_t)
    # Pairings depend on the two tokenizers only: cases with one source tokenizer share them
    # (and the mean-ablated pass at the paired positions).
    tokenizers = {id(tok_s): tok_s for m_s, tok_s, l_s, m in resolved.values()}
    shared = {k: same_tokenizer(tok, tok_t) for k, tok in tokenizers.items()}

    def encode(tok: Tokenizer, batch: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        enc = tok(batch, return_offsets_mapping=True, truncation=True, max_length=max_length)
        return [
            (np.asarray(i, dtype=np.int64), np.asarray(o, dtype=np.int64).reshape(-1, 2))
            for i, o in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        ]

    batches = [docs[k : k + batch_size] for k in range(0, len(docs), batch_size)]
    # One bar over every batch pass: the mean pass (when the mean is computed here), then the
    # substitution pass (each source, the clean and ablated target, one target pass per map).
    bar = _progress_bar(len(batches) * (2 if mean is None else 1), progress)
    if mean is None:
        total: Any = 0.0
        count = 0
        for batch in batches:
            point_t = (l_t, "resid_post")
            hs_t, mask, _ = forward_padded(m_t, tok_t, [e[0] for e in encode(tok_t, batch)], [point_t])
            h, real = hs_t[point_t], mask.bool()
            s = h[real].double().sum(0)
            total = total + s
            count += int(real.sum())
            bar.update(1)
        mean = (total / count).float()
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    keys = ("kl", "ce_clean", "ce_sub", "ce_abl", "tokens", "paired", "all")
    cols: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name in cases}
    map_modules: dict[str, dict[tuple[Any, Any], Any]] = {name: {} for name in cases}

    for batch in batches:
        enc_t = encode(tok_t, batch)
        ids_t, mask_t, st_t = pad_batch([e[0] for e in enc_t], tok_t)
        ids = ids_t.to(dev_t)
        inputs_t = model_inputs(m_t, ids, mask_t.to(dev_t))
        with torch.inference_mode():
            clean = m_t(**inputs_t).logits.float().log_softmax(-1)
        # Per source tokenizer: encodings, paired positions and the mean-ablated logits.
        pairing: dict[int, tuple[Any, ...]] = {}
        for key, tok_s in tokenizers.items():
            enc_s = encode(tok_s, batch)
            pairs = [
                pair_positions(len(si), len(ti), so, to, shared=shared[key])
                for (ti, to), (si, so) in zip(enc_t, enc_s, strict=True)
            ]
            bi = np.concatenate([np.full(len(pt), i) for i, (_, pt) in enumerate(pairs)])
            pi = np.concatenate([st_t[i] + pt for i, (_, pt) in enumerate(pairs)])
            with torch.inference_mode(), patch(m_t, l_t, bi, pi, mean_t.expand(len(bi), -1)):
                abl = m_t(**inputs_t).logits.float().log_softmax(-1)
            pairing[key] = (enc_s, pairs, bi, pi, abl)
        states: dict[tuple[int, int, int], Any] = {}  # (source model, tokenizer, layer) -> states
        for name, (m_s, tok_s, l_s, m) in resolved.items():
            enc_s, pairs, bi, pi, abl = pairing[id(tok_s)]
            skey = (id(m_s), id(tok_s), l_s)
            if skey not in states:
                hs_s, _, st_s = forward_padded(m_s, tok_s, [e[0] for e in enc_s], [(l_s, "resid_post")])
                states[skey] = (hs_s[(l_s, "resid_post")], st_s)
            hs, st_s = states[skey]
            src_rows = [
                hs[i, torch.as_tensor(st_s[i] + ps, device=hs.device)] for i, (ps, _) in enumerate(pairs)
            ]
            module = torch_map(m, hs.device, torch.float32, map_modules[name])
            with torch.inference_mode():
                mapped = module(torch.cat(src_rows).float())
                with patch(m_t, l_t, bi, pi, mapped):
                    sub = m_t(**inputs_t).logits.float().log_softmax(-1)
            c = cols[name]
            for i, ((ti, to), (_, pt)) in enumerate(zip(enc_t, pairs, strict=True)):
                c["paired"].append(len(pt))
                c["all"].append(pairable(len(ti), None if shared[id(tok_s)] else to))
                a, n = int(st_t[i]), len(ti)
                if n < 2:
                    for k in ("kl", "ce_clean", "ce_sub", "ce_abl", "tokens"):
                        c[k].append(0.0)
                    continue
                nxt = ids[i, a + 1 : a + n].unsqueeze(-1)
                lc, ls, la = clean[i, a : a + n - 1], sub[i, a : a + n - 1], abl[i, a : a + n - 1]
                c["ce_clean"].append(float(-lc.gather(-1, nxt).sum()))
                c["ce_sub"].append(float(-ls.gather(-1, nxt).sum()))
                c["ce_abl"].append(float(-la.gather(-1, nxt).sum()))
                c["kl"].append(float((lc.exp() * (lc - ls)).sum()))
                c["tokens"].append(float(n - 1))
        bar.update(1)
    bar.close()
    return {name: _substitution_metrics(c, len(docs), seed) for name, c in cols.items()}


def _substitution_metrics(cols: dict[str, list[float]], texts: int, seed: int) -> SubstitutionScores:
    """Per-token means with bootstrap intervals over texts from one substitution's columns."""
    per_doc = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}

    def per_token(name: str) -> Any:
        return lambda s: s[name] / s["tokens"]

    def nats(name: str) -> Metric:
        value, ci = bootstrap_ci(per_doc, per_token(name), seed=seed)
        return {"value": value, "ci95": ci, "unit": "nats/token"}

    recovered, recovered_ci = bootstrap_ci(
        per_doc, lambda s: (s["ce_abl"] - s["ce_sub"]) / (s["ce_abl"] - s["ce_clean"]), seed=seed
    )
    aligned, aligned_ci = bootstrap_ci(per_doc, lambda s: s["paired"] / s["all"], seed=seed)
    return {
        "kl": nats("kl"),
        "ce_clean": nats("ce_clean"),
        "ce_substituted": nats("ce_sub"),
        "ce_ablated": nats("ce_abl"),
        "ce_recovered": {"value": recovered, "ci95": recovered_ci},
        "alignment_rate": {"value": aligned, "ci95": aligned_ci},
        "texts": {"value": texts},
        "tokens": {"value": int(per_doc["tokens"].sum())},
    }


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, disable=not enabled, desc="substitution eval", unit="batch", mininterval=1.0)
