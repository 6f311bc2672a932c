"""Per-row interventions (actbridge.interventions.rowwise): every row of a batch steered or
ablated its own way equals running that row's condition alone on the same batch, in
teacher-forced passes and inside generate() with a KV cache and left padding; unsteered rows
are untouched; bad input is a SteerError."""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from actbridge.interventions.rowwise import (
    UNSTEERED,
    Condition,
    generate_conditions,
    grid,
    rows_per_batch,
    steer_rows,
)
from conftest import tiny_model, tiny_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PROMPTS = ["The harbour town woke slowly.", "Rain fell", "A good cup of coffee depends on four things:"]
D, LAYERS, NEW = 32, 4, 5


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("bpe", padding_side="left")


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("llama", vocab=len(tok), layers=LAYERS, seed=3)


def vec(seed, scale=3.0):
    return np.random.default_rng(seed).standard_normal(D).astype(np.float32) * scale


def alone(model, cond):
    """The one-condition intervention (steer and/or ablate) for ``cond``, as a list of contexts."""
    out = []
    if cond.steers:
        out.append(
            ab.steer(
                model,
                cond.vector,
                alpha=cond.alpha,
                positions=cond.positions,
                layer=cond.layer,
                where=cond.where,
            )
        )
    if cond.ablate is not None:
        out.append(ab.ablate(model, cond.ablate, layers=cond.ablate_layers, where=cond.ablate_where))
    return out


def run(model, enc, contexts, generate):
    for c in contexts:
        c.on()
    try:
        with torch.inference_mode():
            if not generate:
                return model(**enc).logits, None
            out = model.generate(
                **enc,
                max_new_tokens=NEW,
                do_sample=False,
                pad_token_id=0,
                output_scores=True,
                return_dict_in_generate=True,
            )
            return out.sequences, torch.stack(out.scores)
    finally:
        for c in reversed(contexts):
            c.off()


def rows_of(tok, prompts):
    return tok(list(prompts), return_tensors="pt", padding=True)


conditions = st.builds(
    lambda kind, seed, alpha, positions, layer, abl_layer, read_at, where, abl_where: (
        UNSTEERED
        if kind == "none"
        else Condition(
            vector=ab.SteeringVector(vec(seed), layer, where=read_at) if kind in ("steer", "both") else None,
            alpha=alpha,
            positions=positions,
            ablate=ab.SteeringVector(vec(seed + 1), abl_layer, where=read_at)
            if kind in ("ablate", "both")
            else None,
            ablate_layers=[abl_layer, (abl_layer + 1) % LAYERS] if kind in ("ablate", "both") else None,
            where=where,
            ablate_where=abl_where,
        )
    ),
    kind=st.sampled_from(["none", "steer", "ablate", "both"]),
    seed=st.integers(0, 1000),
    alpha=st.sampled_from([0.0, 1.0, -2.5, 4.0]),
    positions=st.sampled_from(["all", "last", "prompt", "generated"]),
    layer=st.integers(0, LAYERS - 1),
    abl_layer=st.integers(0, LAYERS - 1),
    # the point each vector was read at (its default) and the condition's own choice, if any
    read_at=st.sampled_from(ab.HOOK_POINTS),
    where=st.sampled_from([None, *ab.HOOK_POINTS]),
    abl_where=st.sampled_from([None, "embed", "resid_pre", ["attn_out", "mlp_out"], list(ab.HOOK_POINTS)]),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conds=st.lists(conditions, min_size=3, max_size=6), generate=st.booleans())
def test_every_row_equals_its_condition_run_alone(model, tok, conds, generate):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(conds))]
    enc = rows_of(tok, prompts)
    with steer_rows(model, conds):
        got, got_scores = run(model, enc, [], generate)
    for i, cond in enumerate(conds):
        want, want_scores = run(model, enc, alone(model, cond), generate)
        if generate:
            # generation stops when every row has ended: a row that ended is padding after that
            n = min(got.shape[1], want.shape[1])
            assert torch.equal(got[i, :n], want[i, :n]), (i, cond)
            assert not got[i, n:].any() and not want[i, n:].any(), (i, cond)
            k = n - enc["input_ids"].shape[1]
            np.testing.assert_allclose(got_scores[:k, i].numpy(), want_scores[:k, i].numpy(), atol=1e-4)
        else:
            np.testing.assert_allclose(got[i].numpy(), want[i].numpy(), atol=1e-4)
    assert all(not b._forward_hooks for b in ab.decoder_blocks(model)) and not model._forward_pre_hooks


def test_steered_rows_are_the_same_floats_and_unsteered_rows_are_untouched(model, tok):
    enc = rows_of(tok, PROMPTS)
    clean, _ = run(model, enc, [], False)
    clean_seq, clean_scores = run(model, enc, [], True)
    v = ab.SteeringVector(vec(7), 2)
    conds = [UNSTEERED, Condition(v, alpha=2.0), Condition(v, alpha=0.0)]
    with steer_rows(model, conds):
        got, _ = run(model, enc, [], False)
        seq, scores = run(model, enc, [], True)
    with ab.steer(model, v, alpha=2.0):
        want, _ = run(model, enc, [], False)
    assert torch.equal(got[1], want[1])  # the same additions, bit for bit
    for i in (0, 2):  # no vector, alpha = 0: exactly the model without hooks
        assert torch.equal(got[i], clean[i]) and torch.equal(seq[i], clean_seq[i])
        assert torch.equal(scores[:, i], clean_scores[:, i])


def test_positions_callables_and_layers_differ_per_row(model, tok):
    enc = rows_of(tok, PROMPTS)
    first = int(enc["input_ids"][0, -1])
    at_last_token = ab.at_tokens([first])
    conds = [
        Condition(vec(1), alpha=1.5, positions=at_last_token, layer=0),
        Condition(vec(2), alpha=-1.0, positions="last", layer=3),
        Condition(vec(3), alpha=2.0, positions="all", layer=1, ablate=vec(4), ablate_layers=[1, 2]),
    ]
    with steer_rows(model, conds):
        got, _ = run(model, enc, [], False)
    for i, cond in enumerate(conds):
        want, _ = run(model, enc, alone(model, cond), False)
        np.testing.assert_allclose(got[i].numpy(), want[i].numpy(), atol=1e-4)


def test_a_vector_is_added_where_it_was_read_unless_the_condition_says_otherwise(model, tok):
    """A vector read at a block's input is added there in a sweep, as ab.steer adds it, not after
    the block (what steer_rows did before it knew hook points)."""
    enc = rows_of(tok, PROMPTS)
    v = ab.SteeringVector(vec(8, scale=10.0), 1, where="resid_pre")
    conds = [Condition(v, alpha=2.0), Condition(v, alpha=2.0, where="resid_post"), UNSTEERED]
    with steer_rows(model, conds):
        got, _ = run(model, enc, [], False)
    assert steer_rows(model, conds).points == [(1, "resid_pre"), (1, "resid_post")]
    with ab.steer(model, v, alpha=2.0):
        before_block, _ = run(model, enc, [], False)
    with ab.steer(model, v, alpha=2.0, where="resid_post"):
        after_block, _ = run(model, enc, [], False)
    # the same additions at the same points: the same floats
    assert torch.equal(got[0], before_block[0]) and torch.equal(got[1], after_block[1])
    assert (before_block[0] - after_block[0]).abs().max() > 1e-5  # the two points differ


def test_generate_conditions_matches_cell_by_cell_generation(model, tok):
    v = ab.SteeringVector(vec(5, scale=6.0), 1)
    conds = grid({"v": v, "noise": v.random_like(np.random.default_rng(0))}, [0.0, 2.0, -2.0])
    assert [c.label for c in conds][:2] == ["v α=0", "v α=2"]
    prompts = PROMPTS * 2
    cells = []
    for c in conds:
        with ab.steer(model, c.vector, alpha=c.alpha, positions=c.positions):
            cells.append(ab.evaluation.generation.generate(model, tok, prompts, NEW))
    for batch_rows in (None, 4, 1):
        got = generate_conditions(model, tok, conds, prompts, NEW, batch_rows=batch_rows)
        assert len(got) == len(conds) and all(len(g) == len(prompts) for g in got)
        same = sum(a == b for g, cell in zip(got, cells, strict=True) for a, b in zip(g, cell, strict=True))
        assert same == len(conds) * len(prompts), batch_rows
    assert tok.padding_side == "left"
    assert all(not b._forward_hooks for b in ab.decoder_blocks(model))


def test_rows_per_batch_follows_the_budget(model):
    small = rows_per_batch(model, 64, 2**20)
    assert small >= 1
    assert rows_per_batch(model, 64, 2**30) > 100 * small // 2
    assert rows_per_batch(model, 64, 1.0) == 1
    assert rows_per_batch(model, 640, 2**28) < rows_per_batch(model, 64, 2**28)


def test_bad_conditions_are_steer_errors(model, tok):
    with pytest.raises(ab.SteerError, match="one condition per batch row"):
        steer_rows(model, [])
    with pytest.raises(ab.SteerError, match="not an actbridge Condition"):
        steer_rows(model, [UNSTEERED, "steer"])  # type: ignore[list-item]
    with pytest.raises(ab.SteerError, match="pass layer"):
        steer_rows(model, [Condition(vec(0))])
    with pytest.raises(ab.SteerError, match="dimensions"):
        steer_rows(model, [Condition(np.ones(D + 1, np.float32), layer=0)])
    with pytest.raises(ab.SteerError, match="NaN"):
        steer_rows(model, [Condition(np.full(D, np.nan, np.float32), layer=0)])
    with pytest.raises(ab.SteerError, match="zero direction"):
        steer_rows(model, [Condition(ablate=np.zeros(D, np.float32), ablate_layers=[0])])
    with pytest.raises(ab.SteerError, match="positions must be"):
        steer_rows(model, [Condition(vec(0), layer=0, positions="everywhere")])
    with pytest.raises(ab.HookError, match="out of range"):
        steer_rows(model, [Condition(vec(0), layer=LAYERS)])
    with pytest.raises(ab.SteerError, match=r"conditions\[1\]: unknown hook point 'mlp'"):
        steer_rows(model, [UNSTEERED, Condition(vec(0), layer=0, where="mlp")])
    with pytest.raises(ab.SteerError, match=r"conditions\[0\]: .*name one point twice"):
        steer_rows(model, [Condition(ablate=vec(0), ablate_layers=[0], ablate_where=["mlp_out", "mlp_out"])])
    with pytest.raises(TypeError):
        Condition(vec(0), 1.0, "all", 0, None, None, "", "attn_out")  # type: ignore[misc]  # keyword-only
    with pytest.raises(ab.SteerError, match="batch_rows"):
        generate_conditions(model, tok, [UNSTEERED], PROMPTS, 2, batch_rows=0)
    enc = rows_of(tok, PROMPTS)
    with (
        pytest.raises(ab.SteerError, match="this batch has 3 rows"),
        steer_rows(model, [Condition(vec(0), layer=0)] * 2),
    ):
        model(**enc)
    assert all(not b._forward_hooks for b in ab.decoder_blocks(model)) and not model._forward_pre_hooks
