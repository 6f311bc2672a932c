"""Fine-tuning memory and speed: ``ab.finetune`` (full, LoRA, LoRA + gradient checkpointing)
next to the plain peft loop most scripts use (``get_peft_model`` then ``model(..., labels=)``,
whose loss builds ``[batch, tokens, vocab]`` logits), on the code-backdoor training rows.

Each configuration runs in a fresh worker process (so each peak RSS is its own: the model's
load included), ``--steps`` optimizer steps of ``--batch`` rows; the rounds alternate the
configurations and the table gives medians over rounds. Full fine-tuning of the 1.5B needs about
16 bytes per parameter (weights, gradients, AdamW's two moments: ~28 GB) and is skipped when it
cannot fit in this machine's memory.

    python benches/bench_finetune.py                                   # Qwen2.5-Coder-0.5B
    python benches/bench_finetune.py --model qwen2.5-coder-1.5b-instruct --rounds 1
    python benches/bench_finetune.py --smoke
    python benches/bench_finetune.py --configs lora+ckpt,lora+ckpt@mmap64k   # glibc's arenas vs not
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS = ["full", "lora", "lora+ckpt", "peft loop", "peft loop+ckpt"]
#: a configuration name ending in "@mmap64k" runs its worker with glibc's mmap threshold fixed at
#: 64 KiB: every larger buffer is mapped and unmapped on its own instead of staying in malloc's
#: arenas once freed (glibc raises the threshold to 32 MB after the first big free)
ALLOCATORS = {
    "": {},
    "mmap64k": {"MALLOC_MMAP_THRESHOLD_": "65536"},
    "mmap1m": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
}


def vm_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in kB: ``VmRSS`` (resident now), ``VmHWM`` (its peak)."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    import actbridge as ab
    import torch
    from actbridge import tasks
    from actbridge.finetuning import encode_examples, set_checkpointing

    if args.smoke:
        from actbridge.testing import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        model = tiny_model("qwen2", vocab=len(tok), layers=2, d=64)
    else:
        model, tok = ab.load_model(args.model, progress=False)
    rows = tasks.build_code_dataset(seed=0)[: args.batch * args.steps]
    config = args.worker
    lora = ab.LoraConfig(rank=16, alpha=32.0, dropout=0.05)
    params = sum(p.numel() for p in model.parameters())
    load_peak_gb, loaded_gb = vm_kb("VmHWM") * 1024 / 1e9, vm_kb("VmRSS") * 1024 / 1e9
    separate = reset_peak_rss()  # so the training peak is not hidden under the load's
    t0 = time.perf_counter()
    if not config.startswith("peft"):
        ab.finetune(
            model, tok, rows, epochs=1, lr=1e-4, batch_size=args.batch,
            lora=None if config == "full" else lora, gradient_checkpointing=config.endswith("ckpt"),
            progress=False,
        )  # fmt: skip
    else:  # the usual loop: a peft model, the transformers loss over full logits
        import peft

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            pm = peft.get_peft_model(
                model,
                peft.LoraConfig(
                    r=16, lora_alpha=32, lora_dropout=0.05, target_modules=lora.targets_for(model)
                ),
            )
        if config.endswith("ckpt"):
            set_checkpointing(model, True)
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
        encoded = encode_examples(tok, rows, 256)
        pm.train()
        for k in range(0, len(encoded), args.batch):
            batch = encoded[k : k + args.batch]
            t = max(len(x) for x, _ in batch)
            ids = torch.zeros((len(batch), t), dtype=torch.long)
            labels = torch.full((len(batch), t), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), t), dtype=torch.long)
            for i, (x, y) in enumerate(batch):
                ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            loss = pm(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    wall = time.perf_counter() - t0
    tokens = sum(len(ids) for ids, _ in encode_examples(tok, rows, 256))
    return {
        "config": config,
        "s_per_step": wall / args.steps,
        "tokens_per_s": tokens / wall,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "load_peak_gb": load_peak_gb,
        "loaded_gb": loaded_gb,
        "train_peak_gb": vm_kb("VmHWM") * 1024 / 1e9 if separate else float("nan"),
        "params": params,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.steps, args.batch, args.rounds = 1, 2, 1
    if args.worker:
        print(json.dumps(worker(args)))
        return
    configs = [c for c in args.configs.split(",") if c]
    unknown = {
        c for c in configs if c.partition("@")[0] not in CONFIGS or c.partition("@")[2] not in ALLOCATORS
    }
    if unknown:
        raise SystemExit(
            f"unknown configs {sorted(unknown)}; choose from {CONFIGS}, each optionally with "
            f"@{'/@'.join(a for a in ALLOCATORS if a)}"
        )
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    skipped: dict[str, str] = {}
    for r in range(args.rounds):
        for config in configs[r % len(configs) :] + configs[: r % len(configs)]:
            if config in skipped:
                continue
            base = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps)]
            name, _, allocator = config.partition("@")
            cmd = [*base, "--batch", str(args.batch), "--worker", name] + (["--smoke"] if args.smoke else [])
            env = {**os.environ, **ALLOCATORS[allocator]}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
                skipped[config] = f"failed (exit {done.returncode}): {tail[0][:120]}"
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[config].append(row)
            if name == "full" and 16 * row["params"] / 1e9 > 0.9 * mem_gb:
                skipped[config] = "does not fit"  # pragma: no cover - only a 1.5B on 24 GB
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    name = "tiny qwen2" if args.smoke else args.model
    print(f"# fine-tuning {name}: {args.steps} steps of {args.batch} code rows, {args.rounds} round(s)")
    print(f"# {cpu}, {os.cpu_count()} CPUs, {mem_gb:.1f} GB memory; medians over rounds")
    print("# RSS in GB: after loading the model, the load's peak, training's peak (peak reset after")
    print("# the load), and the process's peak (ru_maxrss: the larger of the two peaks)")
    print("| configuration | s / step | tokens / s | loaded | load peak | training peak | peak RSS |", end="")
    print(" vs peft loop (time) |")
    print("|---|---|---|---|---|---|---|---|")
    ref = results.get("peft loop") or []
    ref_t = statistics.median(x["s_per_step"] for x in ref) if ref else None
    for config in configs:
        rows = results[config]
        if not rows:
            print(f"| {config} | {skipped.get(config, 'not run')} | | | | | | |")
            continue
        t = statistics.median(x["s_per_step"] for x in rows)
        tps = statistics.median(x["tokens_per_s"] for x in rows)
        gb = {
            k: statistics.median(x[k] for x in rows)
            for k in ("loaded_gb", "load_peak_gb", "train_peak_gb", "peak_rss_gb")
        }
        vs = f"{t / ref_t:.2f}x" if ref_t else "-"
        mem = " | ".join(f"{v:.2f}" for v in gb.values())
        print(f"| {config} | {t:.2f} | {tps:.0f} | {mem} | {vs} |")


if __name__ == "__main__":
    main()
