"""Autoencoder maps: training from a store (torch), transform/to_torch/save/load, the paper's
mapper format, plateau/early-stop behaviour and bad input."""

from __future__ import annotations

import json

import actbridge as ab
import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_training_learns_a_nonlinear_map_better_than_affine(nonlinear_store, backend):
    s = nonlinear_store
    train, val = s.split(0.1, seed=0)
    m = ab.AutoencoderMap.fit(
        s, rows=train, val_rows=val, epochs=5, batch_size=256, lr=3e-3, progress=False, backend=backend
    )
    assert m.hidden == round((32 * 24) ** 0.5) == 28
    assert len(m.history) == 5
    vals = [h["val_mse"] for h in m.history]
    assert vals[-1] < vals[0] * 0.7
    affine = ab.AffineMap.fit(s, rows=train, progress=False)
    ae_val, aff_val = ab.evaluate_map(m, s, rows=val), ab.evaluate_map(affine, s, rows=val)
    assert ae_val["fvu"] < aff_val["fvu"]
    assert ae_val["mse"] == pytest.approx(m.metrics["val_mse"], rel=1e-5)


def test_torch_training_is_deterministic_for_a_seed(nonlinear_store):
    kw = dict(rows=slice(0, 4000), epochs=2, batch_size=500, progress=False, backend="torch")
    a = ab.AutoencoderMap.fit(nonlinear_store, seed=3, **kw)
    b = ab.AutoencoderMap.fit(nonlinear_store, seed=3, **kw)
    c = ab.AutoencoderMap.fit(nonlinear_store, seed=4, **kw)
    np.testing.assert_array_equal(a.w1, b.w1)
    np.testing.assert_array_equal(a.w2, b.w2)
    assert not np.array_equal(a.w1, c.w1)


@pytest.mark.parametrize("backend", ["torch", "rust"])
def test_plateau_halves_the_lr_and_early_stop_ends_training(nonlinear_store, backend):
    """Both trainers drive the core's one schedule: the same lrs, the same epoch count."""
    m = ab.AutoencoderMap.fit(
        nonlinear_store,
        rows=slice(0, 2000),
        val_rows=slice(2000, 2500),
        epochs=10,
        batch_size=500,
        lr=1e-7,  # too small to improve anything, large enough that halving it applies (torch's eps=1e-8)
        early_stop=2,
        progress=False,
        backend=backend,
    )
    lrs = [h["lr"] for h in m.history]
    assert len(m.history) == 3  # epoch 1 sets the best; 2 and 3 do not improve
    assert lrs[0] == lrs[1] == pytest.approx(1e-7, rel=1e-6) and lrs[2] == pytest.approx(5e-8, rel=1e-6)
    assert {"train_mse", "train_fvu", "val_mse", "val_fvu", "val_cosine", "lr"} <= m.history[-1].keys()


def test_transform_to_torch_and_save_load(nonlinear_store, tmp_path):
    m = ab.AutoencoderMap.fit(nonlinear_store, rows=slice(0, 3000), epochs=1, batch_size=300, progress=False)
    x = nonlinear_store.read("source", slice(0, 100))
    out = m.transform(x)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(m.transform(xt).numpy(), out, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(m.to_torch()(xt), m.transform(xt))
    m.save(tmp_path / "ae")
    m2 = ab.load_map(tmp_path / "ae")
    assert isinstance(m2, ab.AutoencoderMap)
    np.testing.assert_array_equal(m2.transform(x), out)
    assert m2.history == m.history
    cfg = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert (cfg["kind"], cfg["source_dim"], cfg["hidden_dim"], cfg["target_dim"]) == (
        "autoencoder",
        32,
        28,
        24,
    )
    cfg["hidden_dim"] = 29
    (tmp_path / "ae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ab.MapCorruptError, match="checksum"):
        ab.load_map(tmp_path / "ae")
    del cfg["integrity"]  # as a map saved before checksums: the shape check must catch it
    (tmp_path / "ae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ab.MapError, match="hidden 29"):
        ab.load_map(tmp_path / "ae")


class _NotATensor:
    """Pickling this needs code execution: torch.load(weights_only=True) must refuse it."""


def test_loads_the_papers_mapper_format_without_unpickling_code(tmp_path):
    from actbridge.maps.autoencoder import torch_module

    torch.manual_seed(0)
    mod = torch_module(10, 7, 6)
    d = tmp_path / "paper"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"source_dim": 10, "target_dim": 6, "hidden_dim": 7}))
    torch.save(mod.state_dict(), d / "pytorch_model.bin")
    m = ab.load_map(d)
    x = torch.randn(5, 10)
    with torch.no_grad():
        np.testing.assert_allclose(m.transform(x.numpy()), mod(x).numpy(), rtol=1e-5, atol=1e-6)
    # Prefixed keys (module./mapper.) are accepted; a wrong config is refused.
    torch.save({f"module.{k}": v for k, v in mod.state_dict().items()}, d / "pytorch_model.bin")
    assert ab.load_map(d).hidden == 7
    (d / "config.json").write_text(json.dumps({"source_dim": 11, "target_dim": 6, "hidden_dim": 7}))
    with pytest.raises(ab.MapError, match="config says 11"):
        ab.load_map(d)
    (d / "config.json").write_text(json.dumps({"source_dim": 10, "target_dim": 6, "hidden_dim": 7}))
    torch.save({"encoder.0.weight": _NotATensor()}, d / "pytorch_model.bin")
    with pytest.raises(ab.MapError, match="plain tensors"):
        ab.load_map(d)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02truncated")
    with pytest.raises(ab.MapError):
        ab.load_map(d)


def test_bad_autoencoder_input(nonlinear_store):
    with pytest.raises(ab.MapError, match="unknown site"):
        ab.AutoencoderMap.fit(nonlinear_store, source="nope", progress=False)
    with pytest.raises(ab.MapError, match="backend"):
        ab.AutoencoderMap.fit(nonlinear_store, backend="jax", progress=False)
    with pytest.raises(ab.MapError, match="epochs"):
        ab.AutoencoderMap.fit(nonlinear_store, epochs=0, progress=False)
    with pytest.raises(ab.MapError, match="inconsistent"):
        ab.AutoencoderMap(np.zeros((4, 3)), np.zeros(4), np.zeros((2, 5)), np.zeros(2))
    with pytest.raises(ab.MapError, match="not an autoencoder state dict"):
        ab.AutoencoderMap.from_state_dict({"weight": np.zeros((2, 2))})


@pytest.mark.parametrize("products", ["torch-sgemm", "faer"])
def test_rust_gradients_match_torch_autograd(products):
    from actbridge import _blas, _native
    from actbridge.maps.autoencoder import torch_module

    _native.register_dense_sgemm(_blas.torch_sgemm() if products == "torch-sgemm" else None)
    assert _native.dense_gemm_backend() == ("blas" if products == "torch-sgemm" else "faer")
    torch.manual_seed(0)
    d_s, h, d_t, n = 24, 17, 13, 64
    mod = torch_module(d_s, h, d_t)
    x, y = torch.randn(n, d_s), torch.randn(n, d_t)
    loss = torch.nn.functional.mse_loss(mod(x), y)
    loss.backward()
    params = [p.detach().numpy().ravel().copy() for p in mod.parameters()]  # w1, b1, w2, b2
    got = _native.autoencoder_loss_and_grad((d_s, h, d_t), params, x.numpy(), y.numpy())
    assert got[0] == pytest.approx(float(loss.detach()), rel=1e-5)
    for g_rust, p in zip(got[1:], mod.parameters(), strict=True):
        want = p.grad.numpy().ravel()
        rel = np.linalg.norm(g_rust - want) / np.linalg.norm(want)
        assert rel < 1e-4, rel


@pytest.mark.parametrize("clip", [None, 0.05])
def test_rust_and_torch_trainers_agree_from_the_same_init(nonlinear_store, clip):
    s = nonlinear_store
    train, val = s.split(0.1, seed=1)
    init = ab.AutoencoderMap.fit(
        s, rows=train[:10], epochs=1, batch_size=10, lr=1e-12, progress=False, backend="torch", seed=7
    )  # PyTorch-default init, one negligible step
    kw = dict(
        rows=train,
        val_rows=val,
        epochs=3,
        batch_size=256,
        lr=2e-3,
        seed=5,
        progress=False,
        init=init,
        grad_clip=clip,
    )
    rust = ab.AutoencoderMap.fit(s, backend="rust", **kw)
    ref = ab.AutoencoderMap.fit(s, backend="torch", **kw)
    assert rust.config["backend"] == "rust" and ref.config["backend"] == "torch"
    for a, b in zip(rust.history, ref.history, strict=True):
        assert a["val_mse"] == pytest.approx(b["val_mse"], rel=0.02)
        assert a["lr"] == pytest.approx(b["lr"])
    assert rust.history[-1]["val_mse"] < rust.history[0]["val_mse"]


def test_rust_trainer_on_torch_sgemm_equals_the_trainer_on_faer(nonlinear_store, monkeypatch):
    """With torch imported the trainer's products run on torch's sgemm (MKL on x86) and its
    elementwise passes serially; ACTBRIDGE_GEMM=faer keeps everything on faer and rayon."""
    from actbridge import _blas, _native

    assert _blas.torch_sgemm() is not None  # the x86-64 Linux torch wheels export MKL's sgemm_
    kw = dict(rows=slice(0, 4000), val_rows=slice(4000, 5000), epochs=2, batch_size=250, seed=3)
    mkl = ab.AutoencoderMap.fit(nonlinear_store, progress=False, backend="rust", **kw)
    assert _native.dense_gemm_backend() == "blas"
    monkeypatch.setenv("ACTBRIDGE_GEMM", "faer")
    faer = ab.AutoencoderMap.fit(nonlinear_store, progress=False, backend="rust", **kw)
    assert _native.dense_gemm_backend() == "faer"
    for a, b in zip(mkl.history, faer.history, strict=True):
        assert a["val_mse"] == pytest.approx(b["val_mse"], rel=1e-4)
    np.testing.assert_allclose(mkl.w2, faer.w2, atol=1e-4)


def test_rust_trainer_is_deterministic(nonlinear_store):
    kw = dict(rows=slice(0, 3000), epochs=2, batch_size=300, progress=False, backend="rust")
    a = ab.AutoencoderMap.fit(nonlinear_store, seed=1, **kw)
    b = ab.AutoencoderMap.fit(nonlinear_store, seed=1, **kw)
    np.testing.assert_array_equal(a.w1, b.w1)
    np.testing.assert_array_equal(a.w2, b.w2)


def test_rust_trainer_progress_interrupt(nonlinear_store):
    def stop(done, total):
        raise KeyboardInterrupt

    from actbridge import _native

    with pytest.raises(KeyboardInterrupt):
        _native.train_autoencoder(
            store=nonlinear_store._store,
            source="source",
            target="target",
            rows=np.arange(5000),
            val_rows=None,
            hidden=8,
            config=ab.AutoencoderConfig(epochs=3, batch_size=100),
            init=None,
            progress=stop,
        )


@pytest.fixture(scope="module")
def skewed_store(tmp_path_factory):
    """Targets whose dimensions differ in scale by 10^4, inputs with large offsets."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8000, 16)) * rng.uniform(0.1, 50, 16) + rng.uniform(-100, 100, 16)).astype(
        np.float32
    )
    xs = (x - x.mean(0)) / x.std(0)
    y = np.maximum(xs @ rng.standard_normal((16, 6)), 0) * np.array([1e-2, 1e-1, 1, 10, 100, 1000])
    path = tmp_path_factory.mktemp("skew") / "s"
    with ab.StoreWriter(path, sites={"source": 16, "target": 6}, dtype="float32") as wr:
        wr.append(source=x, target=y.astype(np.float32))
    return ab.ActivationStore(path)


@pytest.mark.parametrize("backend", ["rust", "torch"])
def test_standardized_training_folds_into_a_plain_map(skewed_store, backend):
    s = skewed_store
    train, val = s.split(0.2, seed=0)
    kw = dict(rows=train, val_rows=val, epochs=4, batch_size=128, lr=3e-3, progress=False, backend=backend)
    plain = ab.AutoencoderMap.fit(s, **kw)
    z = ab.AutoencoderMap.fit(s, standardize=True, **kw)
    assert z.config["standardized"] is True
    # The saved map works on raw rows and reproduces the validation score recorded in training.
    ev = ab.evaluate_map(z, s, rows=val)
    assert ev["mse"] == pytest.approx(z.history[-1]["val_mse"], rel=1e-4)
    # Standardising balances the dimensions: mean per-dimension R² is much better.
    assert ev["r2"] > ab.evaluate_map(plain, s, rows=val)["r2"] + 0.2


def test_standardized_rust_and_torch_agree(skewed_store):
    s = skewed_store
    train, val = s.split(0.2, seed=1)
    init = ab.AutoencoderMap.fit(
        s, rows=train[:8], epochs=1, batch_size=8, lr=1e-12, progress=False, backend="torch", seed=2
    )
    kw = dict(
        rows=train,
        val_rows=val,
        epochs=2,
        batch_size=128,
        lr=1e-3,
        seed=3,
        progress=False,
        init=init,
        standardize=True,
    )
    rust, ref = (
        ab.AutoencoderMap.fit(s, backend="rust", **kw),
        ab.AutoencoderMap.fit(s, backend="torch", **kw),
    )
    for a, b in zip(rust.history, ref.history, strict=True):
        assert a["val_mse"] == pytest.approx(b["val_mse"], rel=0.02)
    np.testing.assert_allclose(
        rust.transform(s.read("source", val)),
        ref.transform(s.read("source", val)),
        rtol=1e-2,
        atol=1e-2 * float(np.abs(ref.transform(s.read("source", val))).max()),
    )
