"""The main job, ``actbridge demo``: carry a steering vector from SmolLM2-135M-Instruct to
Gemma-3-270m through learned maps, on the two embedded real models and the bundled corpus.

1. Collect paired activations (SmolLM2 layer 13 -> Gemma layer 9; the tokenizers differ, so
   tokens pair by character offsets).
2. Fit an affine map (closed form) and an autoencoder map on 90% of the texts; score both on
   the held-out texts: FVU / cosine of the mapped activations, then KL and CE-recovered when
   the mapped activations replace Gemma's own (teacher-forced, 95% bootstrap intervals).
3. Take a sentiment direction in SmolLM2 (difference of means, positive vs negative
   statements), map it into Gemma, and steer Gemma's completions of neutral prompts with it,
   next to Gemma's native vector for the same contrast and a random vector of the same norm.
4. Write a report folder: ``report.json``, ``report.md`` and PNG plots.

Everything is cached under ``--dir`` (a rerun reuses the store and maps). ``--smoke`` runs the
same steps on tiny random-init models (seconds; for the test suite).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import actbridge as ab
from actbridge.evaluation.generation import mean_ci
from actbridge.models import model_name

#: Contrast statements for the sentiment direction (written for this project).
POSITIVE = [
    "I love this place, it is wonderful and bright.",
    "What a delightful, happy morning this is.",
    "The food was excellent and the staff were kind.",
    "She smiled: everything had gone perfectly.",
    "This is the best day I have had in years.",
    "The concert was beautiful and full of joy.",
    "We had a lovely time and laughed all evening.",
    "Great news: the project succeeded brilliantly.",
    "The garden looks gorgeous in the warm sunshine.",
    "He was thrilled and grateful for the gift.",
    "Our holiday was fantastic from start to finish.",
    "The children were cheerful and full of hope.",
]
NEGATIVE = [
    "I hate this place, it is awful and gloomy.",
    "What a miserable, depressing morning this is.",
    "The food was terrible and the staff were rude.",
    "She frowned: everything had gone wrong.",
    "This is the worst day I have had in years.",
    "The concert was dreadful and full of noise.",
    "We had a horrible time and argued all evening.",
    "Bad news: the project failed completely.",
    "The garden looks ugly in the cold, grey rain.",
    "He was furious and bitter about the gift.",
    "Our holiday was a disaster from start to finish.",
    "The children were sullen and full of fear.",
]
NEUTRAL_PROMPTS = [
    "The weather today is",
    "My neighbour's new car is",
    "The meeting this afternoon was",
    "I think the movie we watched was",
    "The train journey to the city was",
    "Dinner at the restaurant last night was",
    "The new library building is",
    "Working from home this week has been",
]
POSITIVE_WORDS = set(
    "good great wonderful lovely beautiful happy excellent best love nice fantastic amazing perfect "
    "delightful enjoy enjoyed fun joy bright pleasant glad kind brilliant gorgeous cheerful thrilled "
    "grateful success successful warm awesome exciting exciting excited hope".split()
)
NEGATIVE_WORDS = set(
    "bad terrible awful horrible worst hate sad miserable dreadful ugly rude poor boring angry "
    "disaster failed fail wrong gloomy depressing bitter furious fear cold grey noise problem "
    "problems difficult annoying unpleasant disappointing disappointed".split()
)


def sentiment(text: str) -> int:
    """(# positive words) − (# negative words), from two small lexicons."""
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    return sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)


def _models(smoke: bool, progress: bool) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    if not smoke:
        return ab.load_model("smollm2-135m-instruct", progress=progress), ab.load_model(
            "gemma-3-270m", progress=progress
        )
    from actbridge.testing import tiny_model, tiny_tokenizer

    tok_s, tok_t = tiny_tokenizer("bpe"), tiny_tokenizer("unigram", padding_side="left")
    return (tiny_model("llama", vocab=len(tok_s), layers=16), tok_s), (
        tiny_model("gemma3", vocab=len(tok_t), layers=12, d=48),
        tok_t,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``args.dir/report``)."""
    root = Path(args.dir)
    report_dir = root / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.repeat, args.epochs, args.eval_texts, args.new_tokens = 1, 2, 6, 6
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    (m_s, tok_s), (m_t, tok_t) = _models(args.smoke, not args.quiet)
    timings["load models"] = time.perf_counter() - t0
    l_s, l_t = args.source_layer, args.target_layer

    corpus = ab.load_corpus()
    frames = ["{}", "Note: {}", "Read this carefully. {}", "Q: {}\nA:"]
    texts = [frames[r % len(frames)].format(t) for r in range(args.repeat) for t in corpus]
    t0 = time.perf_counter()
    store = ab.collect_pair(
        (m_s, tok_s, l_s), (m_t, tok_t, l_t), texts, root / "pairs", mode="a", progress=not args.quiet
    )
    timings["collect"] = time.perf_counter() - t0
    print(f"paired store: {len(store):,} rows, alignment rate {store.metadata['alignment_rate']:.1%}")

    train, val = store.split(0.1, seed=0, by="doc")
    t0 = time.perf_counter()
    affine = ab.AffineMap.fit(store, rows=train, ridge=1e-2, progress=False)
    timings["fit affine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ae = ab.AutoencoderMap.fit(
        store,
        rows=train,
        val_rows=val,
        epochs=args.epochs,
        lr=1e-3,
        batch_size=256,
        plateau_patience=1,
        standardize=True,
        progress=not args.quiet,
    )
    timings["fit autoencoder"] = time.perf_counter() - t0
    affine.save(root / "affine")
    ae.save(root / "autoencoder")

    held_docs = sorted(set(store.column("doc", val).tolist()))[: args.eval_texts]
    held_texts = [texts[d] for d in held_docs]
    maps: dict[str, Any] = {"affine": affine, "autoencoder": ae}
    quality: dict[str, Any] = {}
    t0 = time.perf_counter()
    # Both maps in one evaluation: the target's mean, clean and mean-ablated passes run once.
    substitution = ab.evaluate_substitution(
        (m_t, tok_t, l_t), (m_s, tok_s, l_s), maps, held_texts, batch_size=8, progress=not args.quiet
    )
    for name, m in maps.items():
        rows_quality = ab.evaluate_map(m, store, rows=val, ci=True)
        quality[name] = {"rows": rows_quality, "substitution": substitution[name]}
    timings["evaluate maps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    native = ab.SteeringVector.from_contrast(m_t, tok_t, POSITIVE, NEGATIVE, l_t, positions="all")
    vectors = {
        "native (Gemma's own)": native,
        "mapped (affine)": ab.transfer_vector(
            (POSITIVE, NEGATIVE), affine, m_s, tok_s, l_s, positions="all", target_layer=l_t
        ),
        "mapped (autoencoder)": ab.transfer_vector(
            (POSITIVE, NEGATIVE), ae, m_s, tok_s, l_s, positions="all", target_layer=l_t
        ),
    }
    vectors["noise (same norm)"] = native.random_like(np.random.default_rng(0))
    prompts = NEUTRAL_PROMPTS
    steering: dict[str, Any] = {}
    cos = {k: v.cosine(native) for k, v in vectors.items()}
    # Every condition (unsteered, each vector with +alpha and -alpha) in one batched pass; each
    # vector is scaled to the native vector's norm, so alpha means the same for all.
    conditions = [ab.rowwise.UNSTEERED]
    vector_of: list[str | None] = [None]  # the vector each condition steers with
    for name, v in vectors.items():
        scaled = ab.SteeringVector(v.vector / max(v.norm, 1e-12) * native.norm, l_t)
        for sign, label in ((1.0, "+"), (-1.0, "-")):
            conditions.append(ab.rowwise.Condition(scaled, sign * args.alpha, "all", label=f"{name} {label}"))
            vector_of.append(name)
    outs = ab.rowwise.generate_conditions(
        m_t, tok_t, conditions, prompts, args.new_tokens, progress=not args.quiet
    )
    for cond, steered_by, completions in zip(conditions, vector_of, outs, strict=True):
        entry: dict[str, Any] = {"completions": completions, "sentiment": [sentiment(c) for c in completions]}
        if steered_by is not None:
            entry["cosine_to_native"] = cos[steered_by]
        steering[cond.label] = entry
    timings["steer"] = time.perf_counter() - t0

    report = {
        "models": {"source": model_name(m_s), "target": model_name(m_t)},
        "layers": {"source": l_s, "target": l_t},
        "store": {
            "rows": len(store),
            "train_rows": len(train),
            "val_rows": len(val),
            "alignment_rate": store.metadata["alignment_rate"],
        },
        "maps": quality,
        "autoencoder_history": ae.history,
        "steering": {
            "alpha": args.alpha,
            "prompts": prompts,
            "vector_norm": native.norm,
            "results": steering,
        },
        "timings_s": timings,
    }
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    md = _markdown(report)
    (report_dir / "report.md").write_text(md)
    _plots(report, report_dir)
    print(md)
    print(f"report written to {report_dir}/ (report.md, report.json, *.png)")
    return report


def _ci(m: dict[str, Any]) -> str:
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _row(rows: dict[str, Any], key: str) -> dict[str, Any]:
    return {"value": rows[key], "ci95": rows["ci95"][key]}


def _mean_ci(values: list[int]) -> str:
    m = mean_ci(values)
    return f"{m['value']:+.2f} [{m['ci95'][0]:+.2f}, {m['ci95'][1]:+.2f}]"


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# actbridge demo: {r['models']['source']} layer {r['layers']['source']} -> "
        f"{r['models']['target']} layer {r['layers']['target']}",
        "",
        f"Paired rows: {r['store']['rows']:,} (alignment rate {r['store']['alignment_rate']:.1%}); "
        f"train {r['store']['train_rows']:,}, held-out {r['store']['val_rows']:,} rows.",
        "",
        "## Map quality on held-out texts (95% bootstrap CIs over texts)",
        "",
        "| map | FVU | cosine | KL(clean ‖ substituted) nats/token | CE clean | CE substituted "
        "| CE mean-ablated | CE recovered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, q in r["maps"].items():
        s = q["substitution"]
        lines.append(
            f"| {name} | {_ci(_row(q['rows'], 'fvu'))} | {_ci(_row(q['rows'], 'cosine'))} | {_ci(s['kl'])} "
            f"| {_ci(s['ce_clean'])} | {_ci(s['ce_substituted'])} | {_ci(s['ce_ablated'])} "
            f"| {_ci(s['ce_recovered'])} |"
        )
    st = r["steering"]
    lines += [
        "",
        f"## Steering the target with a sentiment direction (alpha = ±{st['alpha']}, vectors scaled to the "
        f"native norm {st['vector_norm']:.1f})",
        "",
        "Sentiment score per completion = positive minus negative lexicon words; mean over "
        f"{len(st['prompts'])} neutral prompts with a 95% bootstrap CI.",
        "",
        "| vector | cosine to native | sentiment |",
        "|---|---|---|",
    ]
    for name, res in st["results"].items():
        cos = f"{res['cosine_to_native']:.2f}" if "cosine_to_native" in res else ""
        lines.append(f"| {name} | {cos} | {_mean_ci(res['sentiment'])} |")
    lines += ["", "### Completions of the first prompts", ""]
    for i, prompt in enumerate(st["prompts"][:3]):
        lines.append(f"**{prompt!r}**")
        lines.append("")
        for name, res in st["results"].items():
            lines.append(f"- {name}: {res['completions'][i]!r}")
        lines.append("")
    lines.append("Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["timings_s"].items()))
    return "\n".join(lines) + "\n"


def _plots(r: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    hist = r["autoencoder_history"]
    if hist:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([h["epoch"] for h in hist], [h["train_mse"] for h in hist], label="train MSE")
        if "val_mse" in hist[0]:
            ax.plot([h["epoch"] for h in hist], [h["val_mse"] for h in hist], label="val MSE")
        ax.set_xlabel("epoch")
        ax.set_ylabel("MSE")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("autoencoder map training")
        fig.tight_layout()
        fig.savefig(out / "autoencoder_training.png", dpi=120)
        plt.close(fig)
    names = list(r["steering"]["results"])
    # The same means and 95% bootstrap intervals as the report's table.
    stats = [mean_ci(r["steering"]["results"][n]["sentiment"]) for n in names]
    means = [s["value"] for s in stats]
    err = np.array([[s["value"] - s["ci95"][0], s["ci95"][1] - s["value"]] for s in stats]).T
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(
        names,
        means,
        xerr=np.clip(err, 0.0, None),
        capsize=3,
        color=[
            "grey" if "unsteered" in n else ("tab:green" if n.endswith("+") else "tab:red") for n in names
        ],
    )
    ax.set_xlabel("mean sentiment score of completions (95% bootstrap CI)")
    ax.set_title("steering the target with native, mapped and noise vectors")
    fig.tight_layout()
    fig.savefig(out / "steering.png", dpi=120)
    plt.close(fig)
    maps = list(r["maps"])
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for ax, key, label in ((axes[0], "kl", "KL nats/token"), (axes[1], "ce_recovered", "CE recovered")):
        vals = [r["maps"][m]["substitution"][key] for m in maps]
        err = np.array([[v["value"] - v["ci95"][0], v["ci95"][1] - v["value"]] for v in vals]).T
        ax.bar(maps, [v["value"] for v in vals], yerr=err, capsize=4)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(out / "substitution.png", dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="actbridge-demo", help="cache and report folder")
    p.add_argument("--source-layer", type=int, default=13)
    p.add_argument("--target-layer", type=int, default=9)
    p.add_argument("--repeat", type=int, default=4, help="passes over the corpus with different framings")
    p.add_argument("--epochs", type=int, default=20, help="autoencoder epochs")
    p.add_argument("--eval-texts", type=int, default=40, help="held-out texts for the substitution metrics")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="tiny random-init models (seconds)")
