"""Refusal transfer, the paper's own setting: Qwen2.5-Coder-0.5B-Instruct (source) →
Qwen2.5-Coder-1.5B-Instruct (target), and cross-family SmolLM2-135M-Instruct → the 1.5B.

Prompts are ``ab.tasks.refusal``'s, split by topic: the ``directions`` split (72 harmful + 72
harmless) computes directions and map-training prompts; the ``eval`` split is cut, again by
topic, into ``select`` (the first --select-topics topics: layer selection) and ``test`` (the rest,
108 + 108: every reported rate). Nothing near-duplicate crosses (``check_disjoint``).

1. **Directions** in each model, every layer: mean(harmful) − mean(harmless) of the residual
   stream after block l at the post-instruction positions (the chat template's tokens after the
   user's text: ``<|im_end|>\\n<|im_start|>assistant\\n`` for Qwen). **Layer sweep** on the
   select prompts with the no-generation refusal score: directional ablation of r̂_l at every
   layer on harmful prompts (refusal should fall) and activation addition of r_l at layer l on
   harmless prompts (refusal should appear). The layer: Arditi et al.'s rule, the lowest
   ablation score among layers below 0.8·L whose addition makes the harmless prompts' mean score
   positive.
2. **Maps** source layer → target layer (affine closed form; autoencoder) on paired activations
   of the bundled corpus plus the directions-split prompts (chat-rendered), for each seed (the
   train/val split and the autoencoder's init); held-out FVU with CIs, and KL / CE-recovered on
   corpus texts no seed trained on.
3. **Mapped refusal direction** (``ab.transfer_vector`` of the directions-split contrast through
   each map) in the target next to its native direction and same-norm random vectors (one per
   seed): (a) ablation at every layer → refusal rate on the test harmful prompts; (b) addition
   over an α sweep → refusal rate on the test harmless prompts; (c) cost: CE on benign corpus
   text and ROUGE-L of harmless answers vs unsteered ones, under ablation; cosine to native.
   Rates are greedy answers scored by ``is_refusal`` (Wilson 95% CIs), next to mean refusal
   scores, and the two scorings' agreement.

Every step is cached under --out and resumes after an interruption (each finished condition is
saved at once). The default --out is ``experiments/runs/refusal-transfer``, in the repository:
the run takes longer than a working session, so its small step files (directions, sweeps, the
mapped vectors and map quality, per-condition rows) are committed and it resumes on any machine;
the paired store and the maps themselves are ignored (only their products are needed again).
``--pairs qwen`` runs the Qwen pair, ``--pairs cross`` the SmolLM2 source.

    python experiments/refusal_transfer.py                 # both pairs (hours on 2 CPUs)
    python experiments/refusal_transfer.py --pairs qwen
    python experiments/refusal_transfer.py --smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import actbridge as ab
import numpy as np
from _common import OUT, RUNS, fit_autoencoder, resumable_rows, run_info, write_json
from actbridge.evaluation.generation import similarity
from actbridge.hooks import decoder_blocks, forward_to_layers
from actbridge.models import model_name
from actbridge.tasks import refusal
from actbridge.texts import as_chat, render

QWEN_S, QWEN_T, SMOL = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"
SENTINEL = "\x00SENTINEL\x00"


# -- prompts ------------------------------------------------------------------------------------


def splits(select_topics: int) -> dict[str, dict[bool, list[str]]]:
    """``{"directions"|"select"|"test": {harmful: [texts]}}``, disjoint by topic."""
    ev = refusal.prompts("eval")
    topics = sorted({p.topic for p in ev}, key=[p.topic for p in ev].index)
    chosen = set(topics[:select_topics])
    parts = {
        "directions": refusal.prompts("directions"),
        "select": [p for p in ev if p.topic in chosen],
        "test": [p for p in ev if p.topic not in chosen],
    }
    refusal.check_disjoint(parts["directions"], parts["select"])
    refusal.check_disjoint(parts["directions"], parts["test"])
    refusal.check_disjoint(parts["select"], parts["test"])
    return {k: {h: [p.text for p in v if p.harmful == h] for h in (True, False)} for k, v in parts.items()}


def chat(tok: Any, text: str) -> str:
    """``text`` as a one-turn user conversation rendered with the generation prompt."""
    return render(as_chat(text), tok, generation_prompt=True)[0]


def suffix_length(tok: Any) -> int:
    """Characters of the rendered template after the user's text (the post-instruction part)."""
    rendered = chat(tok, SENTINEL)
    return len(rendered) - rendered.index(SENTINEL) - len(SENTINEL)


def post_instruction(tok: Any) -> Any:
    """``positions`` callable: the tokens of a chat-rendered prompt after the user's text."""
    n = suffix_length(tok)

    def positions(text: str, ids: Any, offsets: Any) -> Any:
        return np.flatnonzero(np.asarray(offsets)[:, 0] >= len(text) - n)

    positions.__name__ = "post_instruction"
    return positions


# -- 1. directions and the layer sweep ----------------------------------------------------------


def directions(model: Any, tok: Any, harmful: list[str], harmless: list[str], batch: int) -> np.ndarray:
    """``(L, d)`` float32: per layer, mean(harmful) − mean(harmless) at post-instruction tokens
    (``ab.contrast_directions``: one forward pass per batch for every layer)."""
    got = ab.contrast_directions(
        model,
        tok,
        [chat(tok, t) for t in harmful],
        [chat(tok, t) for t in harmless],
        positions=post_instruction(tok),
        batch_size=batch,
    )
    return np.stack([got[layer].vector for layer in sorted(got)])


def layer_sweep(
    model: Any, tok: Any, dirs: np.ndarray, sel: dict[bool, list[str]], candidates: list[int], path: Path
) -> dict[str, Any]:
    """Mean refusal scores on the select prompts: unsteered, under ablation of each candidate
    direction (all layers), and under addition of it at its layer (α = 1)."""
    all_layers = list(range(len(decoder_blocks(model))))

    def score(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for key in batch:
            layer, kind = key["layer"], key["kind"]
            texts = sel[kind == "ablate"]
            if layer < 0:
                s = refusal.refusal_score(model, tok, texts)
            elif kind == "ablate":
                with ab.ablate(model, ab.SteeringVector(dirs[layer], layer), layers=all_layers):
                    s = refusal.refusal_score(model, tok, texts)
            else:
                with ab.steer(model, ab.SteeringVector(dirs[layer], layer), 1.0):
                    s = refusal.refusal_score(model, tok, texts)
            out.append({"mean_score": float(np.mean(s)), "scores": [float(x) for x in s]})
        return out

    keys = [{"layer": -1, "kind": k} for k in ("ablate", "add")]
    keys += [{"layer": lay, "kind": k} for lay in candidates for k in ("ablate", "add")]
    rows = resumable_rows(path, keys, compute_many=score, group=2)
    base = {r["kind"]: r["mean_score"] for r in rows if r["layer"] < 0}
    per_layer = {lay: {r["kind"]: r["mean_score"] for r in rows if r["layer"] == lay} for lay in candidates}
    inducing = [lay for lay in candidates if per_layer[lay]["add"] > 0]
    pool = inducing or candidates
    chosen = min(pool, key=lambda lay: per_layer[lay]["ablate"])
    return {
        "baseline": {"harmful": base["ablate"], "harmless": base["add"]},
        "layers": {str(k): v for k, v in per_layer.items()},
        "chosen_layer": chosen,
        "rule": "lowest ablation score among layers < 0.8 L whose addition gives a positive mean"
        + ("" if inducing else " (no layer induced refusal: lowest ablation score)"),
    }


def model_directions(
    name: str, model: Any, tok: Any, p: dict[str, Any], args: Any, out: Path
) -> dict[str, Any]:
    """Step 1 for one model (cached): directions (L, d) and the sweep with the chosen layer."""
    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if (out / "directions.safetensors").is_file():
        dirs = load_file(str(out / "directions.safetensors"))["directions"]
    else:
        dirs = directions(model, tok, p["directions"][True], p["directions"][False], args.batch)
        save_file({"directions": dirs}, str(out / "directions.safetensors"))
    n = dirs.shape[0]
    step = args.sweep_step if n > 12 else 1
    candidates = list(range(max(1, n // 5), max(2, int(0.8 * n)), step))
    sweep = layer_sweep(model, tok, dirs, p["select"], candidates, out / "sweep_rows.json")
    sweep["norms"] = [float(np.linalg.norm(v)) for v in dirs]
    sweep["model"] = name
    prior = json.loads((out / "sweep.json").read_text())["wall_s"] if (out / "sweep.json").is_file() else 0.0
    sweep["wall_s"] = round(prior + time.perf_counter() - t0, 1)  # summed over runs, as timings.json
    write_json(out / "sweep.json", sweep)
    return {"directions": dirs, "sweep": sweep}


# -- 2. maps -------------------------------------------------------------------------------------


def fit_maps(
    pair: tuple[tuple[Any, Any, int], tuple[Any, Any, int]],
    texts: list[str],
    test_docs: list[int],
    args: Any,
    out: Path,
) -> dict[str, Any]:
    """Per seed, an affine and an autoencoder map on the non-test texts (cached)."""
    (m_s, tok_s, l_s), (m_t, tok_t, l_t) = pair
    store = ab.collect_pair(
        (m_s, tok_s, l_s), (m_t, tok_t, l_t), texts, out / "pairs", mode="a", progress=False
    )
    docs = store.column("doc")
    usable = np.flatnonzero(~np.isin(docs, test_docs))
    maps, quality = {}, {}
    for seed in args.seeds:
        train, val = store.split(0.1, seed=seed, by="doc", rows=usable)
        for kind in ("affine", "autoencoder"):
            where = out / f"{kind}-seed{seed}"
            if (where / "config.json").is_file():
                m = ab.load_map(where)
            elif kind == "affine":
                m = ab.AffineMap.fit(store, rows=train, ridge=1e-2, progress=False)
                m.save(where)
            else:
                m = fit_autoencoder(store, train, val, args.epochs, seed, not args.smoke)
                m.save(where)
            maps[(kind, seed)] = m
            quality[f"{kind} seed{seed}"] = {"rows": ab.evaluate_map(m, store, rows=val, ci=True, seed=seed)}
    path = out / "substitution.json"
    if path.is_file():
        subst = json.loads(path.read_text())
    else:
        named = {f"{k} seed{s}": m for (k, s), m in maps.items()}
        subst = ab.evaluate_substitution(
            (m_t, tok_t, l_t), (m_s, tok_s, l_s), named, [texts[d] for d in test_docs], progress=False
        )
        write_json(path, subst)
    for name in quality:
        quality[name]["substitution"] = subst[name]
    return {
        "maps": maps,
        "quality": quality,
        "store": {
            "rows": len(store),
            "texts": len(texts),
            "alignment_rate": store.metadata["alignment_rate"],
        },
    }


# -- 3. mapped directions in the target ----------------------------------------------------------


def target_conditions(
    m_t: Any, tok_t: Any, vectors: dict[str, ab.SteeringVector], p: dict[str, Any], args: Any, out: Path
) -> dict[str, Any]:
    """Refusal rates (greedy answers) and mean scores under ablation and addition of each vector."""
    all_layers = list(range(len(decoder_blocks(m_t))))
    test_h, test_b = p["test"][True], p["test"][False]
    prompts_h = [as_chat(t) for t in test_h]
    prompts_b = [as_chat(t) for t in test_b]
    cost_b = prompts_b[: args.cost_prompts]

    def condition(key: dict[str, Any]) -> ab.Condition:
        if key["vector"] == "unsteered":
            return ab.Condition(label="unsteered")
        v = vectors[key["vector"]]
        if key["kind"] == "ablate":
            return ab.Condition(ablate=v, ablate_layers=all_layers, label=key["vector"])
        return ab.Condition(v, key["alpha"], "all", label=key["vector"])

    def run(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kind = batch[0]["kind"]
        prompts = prompts_h if kind == "ablate" else prompts_b
        answers = ab.generate_conditions(
            m_t, tok_t, [condition(k) for k in batch], prompts, args.new_tokens, progress=not args.smoke
        )
        rows = []
        for outs in answers:
            flags = [refusal.is_refusal(a) for a in outs]
            rows.append({"refusal": ab.tasks.rate(flags), "flags": flags, "examples": outs[:3]})
        return rows

    names = ["unsteered", *vectors]
    ablate_keys = [{"kind": "ablate", "vector": n, "alpha": 0.0} for n in names]
    add_keys = [{"kind": "add", "vector": "unsteered", "alpha": 0.0}]
    add_keys += [{"kind": "add", "vector": n, "alpha": a} for a in args.alphas for n in vectors]
    ablation = resumable_rows(out / "ablation_rows.json", ablate_keys, compute_many=run, group=args.group)
    addition = resumable_rows(out / "addition_rows.json", add_keys, compute_many=run, group=args.group)

    # Scores (no generation) for the ablation cells and α = 1, and the two scorings' agreement.
    def scores(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for key in batch:
            texts = test_h if key["kind"] == "ablate" else test_b
            cond = condition(key)
            if key["vector"] == "unsteered":
                s = refusal.refusal_score(m_t, tok_t, texts)
            elif key["kind"] == "ablate":
                with ab.ablate(m_t, vectors[key["vector"]], layers=all_layers):
                    s = refusal.refusal_score(m_t, tok_t, texts)
            else:
                with ab.steer(m_t, cond.vector, cond.alpha):
                    s = refusal.refusal_score(m_t, tok_t, texts)
            rows.append({"mean_score": float(np.mean(s)), "scores": [float(x) for x in s]})
        return rows

    score_keys = ablate_keys + [add_keys[0]] + [k for k in add_keys[1:] if k["alpha"] == 1.0]
    scored = resumable_rows(out / "score_rows.json", score_keys, compute_many=scores, group=1)
    generated = {json.dumps([r["kind"], r["vector"], r["alpha"]]): r for r in ablation + addition}
    agree, total = 0, 0
    for s in scored:
        g = generated[json.dumps([s["kind"], s["vector"], s["alpha"]])]
        for flag, sc in zip(g["flags"], s["scores"], strict=True):
            agree += int(flag == (sc > 0))
            total += 1

    # Cost under ablation: CE on benign corpus text, ROUGE-L of harmless answers vs unsteered.
    def cost(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers = ab.generate_conditions(m_t, tok_t, [condition(k) for k in batch], cost_b, args.cost_tokens)
        rows = []
        for key, outs in zip(batch, answers, strict=True):
            ce = corpus_ce(
                m_t, tok_t, args.ce_texts, None if key["vector"] == "unsteered" else vectors[key["vector"]]
            )
            rows.append({"ce": ce, "answers": outs})
        return rows

    costs = resumable_rows(out / "cost_rows.json", ablate_keys, compute_many=cost, group=args.group)
    reference = costs[0]["answers"]
    for c in costs:
        c["rouge_l_vs_unsteered"] = similarity(c["answers"], reference)["rouge_l"]
    return {
        "ablation": ablation,
        "addition": addition,
        "scores": scored,
        "agreement": {"agree": agree, "total": total, "rate": agree / max(1, total)},
        "cost": [
            {k: v for k, v in c.items() if k != "answers"} | {"example": c["answers"][0]} for c in costs
        ],
        "n": {"harmful": len(test_h), "harmless": len(test_b), "cost_prompts": len(cost_b)},
    }


# -- 3b. controls for ablation ------------------------------------------------------------------


def orthogonal_part(v: ab.SteeringVector, native: ab.SteeringVector) -> ab.SteeringVector:
    """``v`` minus its component along the native direction (same layer): what ablating ``v``
    removes besides the native direction."""
    n = native.vector / np.linalg.norm(native.vector)
    rest = v.vector - float(v.vector @ n) * n
    return ab.SteeringVector(rest.astype(np.float32), v.layer, v.model, "orthogonal to native")


def top_pc_directions(
    model: Any, tok: Any, layer: int, n_texts: int, k: int, seeds: list[int], path: Path
) -> dict[str, ab.SteeringVector]:
    """Per seed, a random unit direction in the span of the top ``k`` principal components of the
    target's residual stream after block ``layer`` on the first ``n_texts`` corpus texts (≤ 256
    tokens each), scaled to the native direction's norm by the caller if needed. The PCs are
    cached in ``path`` (safetensors)."""
    import torch
    from safetensors.numpy import load_file, save_file

    if path.is_file():
        pcs = load_file(str(path))["pcs"]
    else:
        rows = []
        with torch.inference_mode():
            for text in ab.load_corpus()[:n_texts]:
                ids = tok(text, return_tensors="pt")["input_ids"][:, :256]
                got = forward_to_layers(model, [layer], input_ids=ids)
                rows.append(got[layer][0, 1:].float().numpy())  # the first token's row is an outlier
        x = np.concatenate(rows).astype(np.float64)
        x -= x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        pcs = vt[:k].astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"pcs": pcs}, str(path))
    out = {}
    for seed in seeds:
        c = np.random.default_rng(10_000 + seed).standard_normal(pcs.shape[0])
        v = (c / np.linalg.norm(c)) @ pcs
        out[f"top-PC random seed{seed}"] = ab.SteeringVector(
            (v / np.linalg.norm(v)).astype(np.float32), layer, model_name(model), f"top-{k} PC span"
        )
    return out


def ablation_controls(
    m_t: Any, tok_t: Any, controls: dict[str, ab.SteeringVector], p: dict[str, Any], args: Any, path: Path
) -> list[dict[str, Any]]:
    """Refusal rate (greedy answers) on the test harmful prompts with each control direction
    ablated at every layer; one resumable row per control (no scores: a scoring pass of the
    1.5B costs as much as a generation here)."""
    all_layers = list(range(len(decoder_blocks(m_t))))
    test_h = p["test"][True]
    prompts_h = [as_chat(t) for t in test_h]

    def run(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        conds = [
            ab.Condition(ablate=controls[k["vector"]], ablate_layers=all_layers, label=k["vector"])
            for k in batch
        ]
        answers = ab.generate_conditions(
            m_t, tok_t, conds, prompts_h, args.new_tokens, progress=not args.smoke
        )
        rows = []
        for outs in answers:
            flags = [refusal.is_refusal(a) for a in outs]
            rows.append({"refusal": ab.tasks.rate(flags), "flags": flags, "examples": outs[:3]})
        return rows

    keys = [{"kind": "ablate", "vector": n} for n in controls]
    return resumable_rows(path, keys, compute_many=run, group=args.group)


def corpus_ce(model: Any, tok: Any, n: int, ablate_dir: ab.SteeringVector | None) -> float:
    """Mean next-token cross-entropy (nats) on the first ``n`` corpus texts, optionally with
    ``ablate_dir`` projected out at every layer."""
    import contextlib

    import torch

    layers = list(range(len(decoder_blocks(model))))
    ctx = ab.ablate(model, ablate_dir, layers=layers) if ablate_dir is not None else contextlib.nullcontext()
    total, count = 0.0, 0
    with ctx, torch.inference_mode():
        for text in ab.load_corpus()[:n]:
            ids = tok(text, return_tensors="pt")["input_ids"][:, :256]
            logits = model(input_ids=ids).logits[0, :-1].double()
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return total / max(1, count)


# -- a pair ---------------------------------------------------------------------------------------


def slug(name: str) -> str:
    """A vector's name as a directory name: "mapped affine seed0" -> "mapped-affine-seed0"."""
    return name.replace(" ", "-")


def run_pair(
    name: str,
    source: tuple[str, Any, Any],
    target: tuple[str, Any, Any],
    tdirs: dict[str, Any],
    pc_controls: dict[str, ab.SteeringVector],
    p: dict[str, Any],
    args: Any,
    out: Path,
) -> dict[str, Any]:
    """Steps 1 (source), 2 and 3 for one source → target pair; ``pc_controls``: the target's
    random top-PC directions, ablated as controls next to each mapped vector's part orthogonal
    to native."""
    s_name, m_s, tok_s = source
    t_name, m_t, tok_t = target
    timing_path = out / "timings.json"
    timings: dict[str, float] = json.loads(timing_path.read_text()) if timing_path.is_file() else {}

    def add_time(step: str, since: float) -> None:
        """Wall seconds per step, summed over every run that worked on it (a resumed step too)."""
        timings[step] = round(timings.get(step, 0.0) + time.perf_counter() - since, 1)
        write_json(timing_path, timings)

    t0 = time.perf_counter()
    sdirs = model_directions(s_name, m_s, tok_s, p, args, out / "source")
    add_time("source directions + sweep", t0)
    l_s, l_t = sdirs["sweep"]["chosen_layer"], tdirs["sweep"]["chosen_layer"]
    t0 = time.perf_counter()
    native = ab.SteeringVector(tdirs["directions"][l_t], l_t, t_name, "post_instruction")
    mapped_names = [f"mapped {kind} seed{seed}" for seed in args.seeds for kind in ("affine", "autoencoder")]
    saved = out / "maps" / "quality.json"
    vector_dir = out / "vectors"
    if saved.is_file() and all((vector_dir / slug(n) / "config.json").is_file() for n in mapped_names):
        # The maps' products are kept (small, committed with the run); the maps and the paired
        # store are not needed again.
        fitted = json.loads(saved.read_text())
        vectors = {"native": native} | {n: ab.SteeringVector.load(vector_dir / slug(n)) for n in mapped_names}
    else:
        corpus = ab.load_corpus()[: 12 if args.smoke else None]
        prompt_texts = p["directions"][True] + p["directions"][False]
        # Plain strings: the maps see the chat-rendered prompts in the target's template (the Qwen
        # pair shares it; across families the characters still pair by offsets).
        texts = corpus + [chat(tok_t, t) for t in prompt_texts]
        rng = np.random.default_rng(1234)
        test_docs = sorted(
            rng.choice(
                len(corpus), size=max(2, min(args.eval_texts, len(corpus) // 5)), replace=False
            ).tolist()
        )
        maps = fit_maps(((m_s, tok_s, l_s), (m_t, tok_t, l_t)), texts, test_docs, args, out / "maps")
        harm_s = [chat(tok_s, t) for t in p["directions"][True]]
        safe_s = [chat(tok_s, t) for t in p["directions"][False]]
        vectors = {"native": native}
        for (kind, seed), m in maps.pop("maps").items():
            v = ab.transfer_vector(
                (harm_s, safe_s), m, m_s, tok_s, l_s, positions=post_instruction(tok_s), target_layer=l_t
            )
            v.save(vector_dir / slug(f"mapped {kind} seed{seed}"))
            vectors[f"mapped {kind} seed{seed}"] = v
        fitted = maps
        write_json(saved, fitted)
    add_time("collect + fit + evaluate maps", t0)
    t0 = time.perf_counter()
    for seed in args.seeds:
        vectors[f"noise seed{seed}"] = native.random_like(np.random.default_rng(seed))
    results = target_conditions(m_t, tok_t, vectors, p, args, out / "target")
    add_time("target conditions", t0)
    t0 = time.perf_counter()
    controls = {f"{n} ⊥native": orthogonal_part(vectors[n], native) for n in mapped_names}
    controls |= pc_controls
    results["controls"] = ablation_controls(
        m_t, tok_t, controls, p, args, out / "target" / "control_rows.json"
    )
    for row in results["controls"]:
        v = controls[row["vector"]]
        row["cosine_to_native"] = v.cosine(native)
        row["cosine_to_vector"] = (
            v.cosine(vectors[row["vector"].removesuffix(" ⊥native")])
            if row["vector"].endswith("⊥native")
            else None
        )
    add_time("ablation controls", t0)
    return {
        "source": s_name,
        "target": t_name,
        "layers": {"source": l_s, "target": l_t},
        "source_sweep": sdirs["sweep"],
        "maps": fitted["quality"],  # per map: held-out rows (FVU ...) and substitution
        "store": fitted["store"],
        "vectors": {k: {"norm": v.norm, "cosine_to_native": v.cosine(native)} for k, v in vectors.items()},
        **results,
        "timings_s": timings,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="qwen,cross", help="qwen (0.5B -> 1.5B) and/or cross (SmolLM2 -> 1.5B)")
    p.add_argument(
        "--out",
        default=str(RUNS / "refusal-transfer"),
        help="step files; the default is committed (experiments/runs/), so the run resumes anywhere",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--alphas", default="0.5,1,1.5,2")
    p.add_argument("--select-topics", type=int, default=4)
    p.add_argument(
        "--sweep-step", type=int, default=2, help="layer stride of the sweep in models over 12 layers"
    )
    p.add_argument("--epochs", type=int, default=10, help="autoencoder epochs")
    p.add_argument("--eval-texts", type=int, default=24, help="held-out corpus texts for KL / CE-recovered")
    p.add_argument("--new-tokens", type=int, default=12, help="greedy tokens per answer for refusal rates")
    p.add_argument("--cost-prompts", type=int, default=48, help="harmless prompts for the ROUGE-L cost")
    p.add_argument("--cost-tokens", type=int, default=32)
    p.add_argument("--ce-texts", type=int, default=24)
    p.add_argument("--pc-rank", type=int, default=16, help="top PCs spanning the random ablation controls")
    p.add_argument("--group", type=int, default=4, help="conditions per batched generation")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    names = {"source": QWEN_S, "target": QWEN_T, "cross": SMOL}
    if args.smoke:
        out = Path(args.out) if args.out != p.get_default("out") else OUT / "tiny-refusal-transfer"
        args.seeds, args.alphas, args.epochs, args.eval_texts = "0,1", "1", 2, 4
        args.new_tokens, args.cost_prompts, args.cost_tokens, args.ce_texts, args.select_topics = (
            4,
            4,
            4,
            2,
            2,
        )
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    args.alphas = [float(a) for a in str(args.alphas).split(",")]
    prompts = splits(args.select_topics)
    if args.smoke:  # a few prompts of each split: the pipeline, not the science
        prompts = {k: {h: v[:6] for h, v in d.items()} for k, d in prompts.items()}

    def load(name: str, d: int, seed: int) -> tuple[Any, Any]:
        if args.smoke:
            from actbridge.testing import tiny_model, tiny_tokenizer

            tok = tiny_tokenizer(padding_side="left")
            return tiny_model("llama", vocab=len(tok), layers=4, d=d, seed=seed), tok
        return ab.load_model(name, progress=False)

    t0 = time.perf_counter()
    m_t, tok_t = load(names["target"], 96, 1)
    tdirs = model_directions(names["target"], m_t, tok_t, prompts, args, out / "target-directions")
    target_time = time.perf_counter() - t0
    l_t = tdirs["sweep"]["chosen_layer"]
    pcs = top_pc_directions(
        m_t,
        tok_t,
        l_t,
        args.ce_texts,
        args.pc_rank,
        args.seeds,
        out / "target-directions" / "top_pcs.safetensors",
    )
    result: dict[str, Any] = {
        "splits": {k: {"harmful": len(v[True]), "harmless": len(v[False])} for k, v in prompts.items()},
        "target_sweep": tdirs["sweep"],
        "target_directions_s": round(target_time, 1),
        "pairs": {},
    }
    for pair in [x for x in args.pairs.split(",") if x]:
        src = names["source"] if pair == "qwen" else names["cross"]
        m_s, tok_s = load(src, 64 if pair == "qwen" else 48, 0)
        result["pairs"][pair] = run_pair(
            pair, (src, m_s, tok_s), (names["target"], m_t, tok_t), tdirs, pcs, prompts, args, out / pair
        )
        del m_s
    result["run"] = run_info(args.seeds[0], started)
    write_json(out / "results.json", result)
    plot(result, out / "refusal_transfer.png")
    report(result)


def spread(mean: list[float], vals: list[list[float]]) -> list[list[float]]:
    """Error bars from each mean down to the lowest and up to the highest of its values."""
    return [
        [m - min(v) for m, v in zip(mean, vals, strict=True)],
        [max(v) - m for m, v in zip(mean, vals, strict=True)],
    ]


def plot(result: dict[str, Any], path: Path) -> None:
    """The target's layer sweep, then per pair: refusal on harmless prompts against α (addition)
    and on harmful prompts under ablation, per vector kind (mean over seeds, bars: range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(result["pairs"].items())
    fig, axes = plt.subplots(1, 1 + 2 * len(pairs), figsize=(4.2 * (1 + 2 * len(pairs)), 3.6))
    ts = result["target_sweep"]
    layers = [int(k) for k in ts["layers"]]
    ax = axes[0]
    ax.plot(layers, [ts["layers"][str(k)]["ablate"] for k in layers], "o-", label="ablation (harmful)")
    ax.plot(layers, [ts["layers"][str(k)]["add"] for k in layers], "s-", label="addition (harmless)")
    ax.axhline(ts["baseline"]["harmful"], color="C0", ls=":", lw=1)
    ax.axhline(ts["baseline"]["harmless"], color="C1", ls=":", lw=1)
    ax.axvline(ts["chosen_layer"], color="grey", lw=0.8)
    ax.set(xlabel="layer", ylabel="mean refusal score", title="target layer sweep")
    ax.legend(fontsize=7)

    def group(name: str) -> str:
        return name.rsplit(" seed", 1)[0]

    for k, (pair, r) in enumerate(pairs):
        ax_add, ax_abl = axes[1 + 2 * k], axes[2 + 2 * k]
        kinds = sorted(
            {group(v) for v in r["vectors"]},
            key=["native", "mapped affine", "mapped autoencoder", "noise"].index,
        )
        alphas = sorted({row["alpha"] for row in r["addition"] if row["vector"] != "unsteered"})
        for kind in kinds:
            vals = [
                [
                    row["refusal"]["value"]
                    for row in r["addition"]
                    if group(row["vector"]) == kind and row["alpha"] == a
                ]
                for a in alphas
            ]
            mean = [float(np.mean(v)) for v in vals]
            ax_add.errorbar(
                alphas,
                mean,
                yerr=spread(mean, vals),
                marker="o",
                capsize=2,
                label=kind,
                ls="--" if kind == "noise" else "-",
            )
        base = next(row for row in r["addition"] if row["vector"] == "unsteered")["refusal"]["value"]
        ax_add.axhline(base, color="grey", ls=":", lw=1)
        ax_add.set(xlabel="α", ylim=(-0.02, 1.02), title=f"{pair}: addition, harmless prompts")
        ax_add.legend(fontsize=7)
        names = ["unsteered", *kinds]
        vals = [
            [
                row["refusal"]["value"]
                for row in r["ablation"]
                if (group(row["vector"]) if row["vector"] != "unsteered" else "unsteered") == n
            ]
            for n in names
        ]
        mean = [float(np.mean(v)) for v in vals]
        ax_abl.bar(
            range(len(names)),
            mean,
            yerr=spread(mean, vals),
            capsize=3,
            color=["grey"] + [f"C{i}" for i in range(len(kinds))],
        )
        ax_abl.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax_abl.set(ylim=(0, 1.02), title=f"{pair}: ablation, harmful prompts")
    axes[1].set_ylabel("refusal rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any]) -> None:
    print(f"target layer {result['target_sweep']['chosen_layer']} ({result['target_sweep']['rule']})")
    for name, r in result["pairs"].items():
        layers = r["layers"]
        src, tgt = f"{r['source']} layer {layers['source']}", f"{r['target']} layer {layers['target']}"
        print(f"\n## {name}: {src} -> {tgt}")
        print("| map | FVU | KL | CE recovered |\n|---|---|---|---|")
        for m, q in r["maps"].items():
            sub = q["substitution"]
            kl, ce = sub["kl"]["value"], sub["ce_recovered"]["value"]
            print(f"| {m} | {q['rows']['fvu']:.3f} | {kl:.3f} | {ce:.3f} |")
        print("| vector | cosine | ablation: refusal on harmful | addition α=1: refusal on harmless |")
        print("|---|---|---|---|")
        add1 = {
            row["vector"]: row for row in r["addition"] if row["alpha"] == 1.0 or row["vector"] == "unsteered"
        }
        for row in r["ablation"]:
            v = row["vector"]
            cos = r["vectors"].get(v, {}).get("cosine_to_native", float("nan"))
            a = add1.get(v, {}).get("refusal", {}).get("value", float("nan"))
            print(f"| {v} | {cos:.2f} | {row['refusal']['value']:.2f} | {a:.2f} |")
        print(f"scorings agree on {r['agreement']['rate']:.1%} of {r['agreement']['total']} answers")
        print("| ablation control | cosine to native | refusal on harmful |\n|---|---|---|")
        for row in r.get("controls", []):
            print(f"| {row['vector']} | {row['cosine_to_native']:+.2f} | {row['refusal']['value']:.2f} |")


if __name__ == "__main__":
    main()
