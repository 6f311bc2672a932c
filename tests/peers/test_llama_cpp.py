"""A control vector written by ``ab.save_control_vector`` steers llama.cpp as ``ab.steer`` steers
transformers: SmolLM2-135M-Instruct's own GGUF file (Q4_1) in llama.cpp, the same weights
dequantised in transformers.

Opt-in (`make test-llama-cpp`): llama-cpp-python ships only a source distribution, which builds
llama.cpp (about 25 minutes on 2 cores). The vector file is read back with the ``gguf`` package
and laid out as llama.cpp's own loader lays it out (``common.cpp``: ``direction.N`` fills slot
``N - 1`` of an ``n_layer × n_embd`` buffer, applied to block ``N``'s output), then handed to
llama.cpp's control-vector API. Figures go to stdout (``-s``).
"""

from __future__ import annotations

import ctypes

import actbridge as ab
import numpy as np
import pytest

pytestmark = [pytest.mark.peers, pytest.mark.real]

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

POS = ["I love this, it is wonderful and makes me happy.", "What a delightful, lovely day!"]
NEG = ["I hate this, it is awful and makes me sad.", "What a miserable, horrible day!"]
PROMPT = "My opinion of the new restaurant downtown:"
LAYERS = [10, 14, 18]
ALPHA = 6.0


def apply_control_vector(llm, path, scale: float, shift: int = 0) -> None:
    """Load a control-vector GGUF the way llama.cpp's ``--control-vector-scaled PATH SCALE``
    does and apply it to ``llm``'s context (``shift``: place every direction that many blocks
    later, the wrong convention, for the control)."""
    reader = gguf.GGUFReader(str(path))
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    data = np.zeros(n_layer * n_embd, dtype=np.float32)
    for t in reader.tensors:
        layer = int(t.name.removeprefix("direction.")) + shift
        assert t.name.startswith("direction.") and 1 <= layer < n_layer
        data[(layer - 1) * n_embd : layer * n_embd] += np.asarray(t.data, dtype=np.float32) * scale
    ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, data.size, n_embd, 1, n_layer)
    assert rc == 0


def last_logits(llm, ids) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_our_control_vector_steers_llama_cpp_like_our_hooks_steer_transformers(tmp_path):
    from actbridge import models

    model, tok = ab.load_model("smollm2-135m-instruct", device="cpu")
    vs = ab.SteeringVectors.from_contrast(model, tok, POS, NEG, layers=LAYERS, positions="all")
    path = ab.save_control_vector(vs, tmp_path / "cv.gguf")
    ids = tok(PROMPT)["input_ids"]
    enc = {"input_ids": torch.tensor([ids])}
    with torch.no_grad():
        hf_base = model(**enc).logits[0, -1].double().numpy()
        with ab.steer(model, vs, ALPHA):
            hf_steered = model(**enc).logits[0, -1].double().numpy()

    gguf_file = models.EMBEDDED["smollm2-135m-instruct"].gguf_path(models.cache_dir())
    llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    lc_base = last_logits(llm, ids)
    apply_control_vector(llm, path, ALPHA)
    lc_steered = last_logits(llm, ids)
    apply_control_vector(llm, path, ALPHA, shift=1)  # replaces the buffer: one block later
    lc_shifted = last_logits(llm, ids)

    base_agreement = cosine(lc_base, hf_base)
    change = cosine(lc_steered - lc_base, hf_steered - hf_base)
    shifted = cosine(lc_shifted - lc_base, hf_steered - hf_base)
    print(
        f"\nllama.cpp (Q4_1) vs transformers (dequantised), SmolLM2 layers {LAYERS}, alpha {ALPHA}: "
        f"cosine of unsteered logits {base_agreement:.4f}; of the steering's logit change {change:.4f} "
        f"(one block later: {shifted:.4f}); max |Δlogit| llama.cpp {np.abs(lc_steered - lc_base).max():.2f}, "
        f"transformers {np.abs(hf_steered - hf_base).max():.2f}"
    )
    assert base_agreement > 0.99
    assert np.abs(lc_steered - lc_base).max() > 1.0  # the vector does change llama.cpp's output
    assert change > 0.9 and change > shifted + 0.02
