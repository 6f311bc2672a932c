"""AutoencoderConfig (settings, CLI schema, saved config) and the pieces both trainers share
through the core: the plateau schedule, standardisation folding and validation scores."""

from __future__ import annotations

import argparse
import dataclasses

import actbridge as ab
import numpy as np
import pytest
from actbridge import _native
from hypothesis import given, settings
from hypothesis import strategies as st


def test_defaults_are_the_documented_ones_and_every_field_is_documented():
    cfg = ab.AutoencoderConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_factor, cfg.backend) == (3, 1024, 1e-3, 0.5, "auto")
    for f in dataclasses.fields(ab.AutoencoderConfig):
        assert f.metadata["doc"], f.name
        assert f"``{f.name}``" in ab.AutoencoderConfig.__doc__


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": float("nan")}, "lr must be > 0"),
        ({"lr_factor": 1.0}, "lr_factor must be in (0, 1)"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"early_stop": 0}, "early_stop must be an integer >= 1 or None"),
        ({"grad_clip": 0.0}, "grad_clip must be > 0"),
        ({"hidden": 0}, "hidden must be an integer >= 1 or None"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"standardize": "yes"}, "standardize must be True or False"),
        ({"backend": "cuda"}, "backend must be one of ('auto', 'rust', 'torch')"),
    ],
)
def test_bad_settings_are_value_errors_that_say_what_is_allowed(change, words):
    with pytest.raises(ab.MapArgumentError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        ab.AutoencoderConfig(**change)
    assert isinstance(e.value, ValueError)
    with pytest.raises(ab.MapArgumentError):
        ab.AutoencoderConfig().replace(**change)


def test_a_config_round_trips_through_a_dict_and_refuses_unknown_keys():
    cfg = ab.AutoencoderConfig(epochs=7, lr=3e-4, early_stop=2, grad_clip=1.0, standardize=True)
    assert ab.AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ab.MapArgumentError, match="unknown autoencoder settings \\['epoch'\\]"):
        ab.AutoencoderConfig.from_dict({"epoch": 3})


def test_the_cli_options_are_the_config_fields():
    p = argparse.ArgumentParser()
    ab.AutoencoderConfig.add_arguments(p, exclude=("seed",), defaults={"plateau_patience": 1})
    ns = p.parse_args(
        ["--epochs", "5", "--lr", "0.01", "--early-stop", "2", "--standardize", "--backend", "rust"]
    )
    cfg = ab.AutoencoderConfig.from_arguments(ns, seed=4)
    assert cfg == ab.AutoencoderConfig(
        epochs=5, lr=0.01, early_stop=2, standardize=True, backend="rust", seed=4, plateau_patience=1
    )
    flags = {a.dest for a in p._actions} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(ab.AutoencoderConfig)} - {"seed"}
    with pytest.raises(SystemExit):
        p.parse_args(["--backend", "cuda"])


@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_fit_takes_a_config_with_overrides_and_records_it(nonlinear_store, backend):
    cfg = ab.AutoencoderConfig(epochs=2, batch_size=256, hidden=16, backend=backend, seed=3)
    m = ab.AutoencoderMap.fit(nonlinear_store, rows=np.arange(4000), config=cfg, lr=2e-3, progress=False)
    assert m.config["training"] == cfg.replace(lr=2e-3).to_dict() | {"backend": backend}
    assert len(m.history) == 2 and m.hidden == 16
    with pytest.raises(ab.MapArgumentError, match="unknown autoencoder settings \\['epoch'\\]"):
        ab.AutoencoderMap.fit(nonlinear_store, epoch=3, progress=False)
    with pytest.raises(ab.MapArgumentError, match="config must be an AutoencoderConfig"):
        ab.AutoencoderMap.fit(nonlinear_store, config={"epochs": 3}, progress=False)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=25),
    patience=st.integers(0, 3),
    factor=st.sampled_from([0.1, 0.5, 0.9]),
)
def test_the_core_schedule_is_torchs_reduce_lr_on_plateau(scores, patience, factor):
    """The one schedule both trainers use, against torch's scheduler on the same scores."""
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=factor, patience=patience, threshold=1e-4
    )
    ours = _native.PlateauSchedule(lr=0.1, lr_factor=factor, plateau_patience=patience, early_stop=None)
    for s in scores:
        ref.step(s)
        assert not ours.step(s)
        assert ours.lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)


def test_early_stop_counts_epochs_without_improvement():
    s = _native.PlateauSchedule(lr=1.0, lr_factor=0.5, plateau_patience=10, early_stop=2)
    assert [s.step(x) for x in (1.0, 0.5, 0.6, 0.7)] == [False, False, False, True]
    with pytest.raises(ab.MapArgumentError, match="early_stop must be at least 1"):
        _native.PlateauSchedule(lr=1.0, lr_factor=0.5, plateau_patience=0, early_stop=0)


def test_folding_standardisation_matches_its_definition_and_inverts():
    from actbridge.maps.training import fold

    rng = np.random.default_rng(0)
    d_s, h, d_t = 5, 4, 3
    t = {
        "encoder.0.weight": rng.standard_normal((h, d_s)).astype(np.float32),
        "encoder.0.bias": rng.standard_normal(h).astype(np.float32),
        "decoder.weight": rng.standard_normal((d_t, h)).astype(np.float32),
        "decoder.bias": rng.standard_normal(d_t).astype(np.float32),
    }
    mx, my = rng.standard_normal(d_s).astype(np.float32), rng.standard_normal(d_t).astype(np.float32)
    sx, sy = rng.uniform(0.5, 2, d_s).astype(np.float32), rng.uniform(0.5, 2, d_t).astype(np.float32)
    raw = fold(t, (mx, sx, my, sy))
    # W1' = W1 diag(1/σx), b1' = b1 − W1' μx, W2' = diag(σy) W2, b2' = σy b2 + μy
    w1 = t["encoder.0.weight"] / sx
    np.testing.assert_allclose(raw["encoder.0.weight"], w1, rtol=1e-6)
    np.testing.assert_allclose(raw["encoder.0.bias"], t["encoder.0.bias"] - w1 @ mx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw["decoder.weight"], t["decoder.weight"] * sy[:, None], rtol=1e-6)
    np.testing.assert_allclose(raw["decoder.bias"], t["decoder.bias"] * sy + my, rtol=1e-6)
    # the folded map on raw x equals the standardised map on standardised x, un-standardised
    x = rng.standard_normal((7, d_s)).astype(np.float32)

    def forward(p, v):
        return (
            np.maximum(v @ p["encoder.0.weight"].T + p["encoder.0.bias"], 0) @ p["decoder.weight"].T
            + p["decoder.bias"]
        )

    np.testing.assert_allclose(forward(raw, x), forward(t, (x - mx) / sx) * sy + my, rtol=1e-4, atol=1e-5)
    back = fold(raw, (mx, sx, my, sy), inverse=True)
    for k in t:
        np.testing.assert_allclose(back[k], t[k], rtol=1e-4, atol=1e-5)


def test_validation_scores_are_the_same_as_evaluate_map(nonlinear_store):
    m = ab.AutoencoderMap.fit(nonlinear_store, rows=np.arange(3000), epochs=1, backend="rust", progress=False)
    rows = np.arange(3000, 4000)
    ref = ab.evaluate_map(m, nonlinear_store, rows=rows)
    got = _native.evaluate_autoencoder(
        store=nonlinear_store._store,
        source="source",
        target="target",
        rows=rows,
        dims=(m.d_source, m.hidden, m.d_target),
        tensors=[np.ascontiguousarray(a).ravel() for a in m.tensors().values()],
    )
    for k in ("mse", "fvu", "cosine"):
        assert got[k] == pytest.approx(ref[k], rel=1e-4), k
    with pytest.raises(ab.MapArgumentError, match="zero rows"):
        _native.evaluate_autoencoder(
            store=nonlinear_store._store,
            source="source",
            target="target",
            rows=np.arange(0),
            dims=(m.d_source, m.hidden, m.d_target),
            tensors=[np.ascontiguousarray(a).ravel() for a in m.tensors().values()],
        )


def test_string_options_of_the_binding_list_their_allowed_values(tmp_path):
    w = ab.StoreWriter(tmp_path / "s", sites={"a": 4})
    w.append(a=np.ones((3, 4), np.float32))
    w.close()
    s = ab.ActivationStore(tmp_path / "s")
    with pytest.raises(
        ab.StoreArgumentError, match='dtype must be one of "float32", "float64", "float16", "bfloat16"'
    ):
        s._store.read("a", None, dtype="int8")
    with pytest.raises(
        ab.StoreArgumentError, match='shuffle must be one of "none", "global", "block"; got "random"'
    ):
        s._store.batches(
            names=["a"], batch_size=2, shuffle="random", seed=0, epoch=0, rows=None, drop_last=False,
            dtype="float32", block_rows=4, window_blocks=4, prefetch=1,
        )  # fmt: skip
    with pytest.raises(ab.MapArgumentError, match='method must be one of "lstsq", "procrustes"'):
        ab.AffineStats(2, 2)._stats.solve(method="svd")
    with pytest.raises(ab.StoreArgumentError, match='mode must be one of "x", "a"'):
        _native.StoreWriter(
            path=str(tmp_path / "t"), sites=[("a", 4, "float32")], columns=None, metadata_json="{}",
            mode="w", shard_rows=None, shard_bytes=2**20, queue=1,
        )  # fmt: skip
    with pytest.raises(TypeError, match="positional"):
        s._store.batches(["a"], 2, "none", 0, 0, None, False, "float32", 4, 4, 1)  # keyword-only
