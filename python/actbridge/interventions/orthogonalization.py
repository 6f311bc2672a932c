"""Weight orthogonalisation: directional ablation baked into a model's weights.

:func:`orthogonalize` edits, in place, every matrix that writes to the residual stream so that
its outputs have no component along a unit direction ``r̂`` (Arditi et al. 2024, section 4.1):

- the token embeddings ``E`` (``(vocab, d)``): ``E ← E − (E r̂) r̂ᵀ``;
- each block's attention output projection and MLP down projection (``nn.Linear`` with
  ``d`` outputs, weight ``(d, d_in)``): ``W ← W − r̂ (r̂ᵀ W)``, bias ``b ← b − (b·r̂) r̂``.

The edited model computes what :func:`actbridge.directional_ablation` computes with hooks (up
to float rounding), and can be saved with ``save_pretrained`` and loaded anywhere, hooks gone. A
model whose input and output embeddings share one matrix (SmolLM2, Qwen2.5, Gemma) is untied
first, so the unembedding keeps its original weights, as under the hooks.

Architectures that normalise a sub-layer's output before adding it to the stream (Gemma 2 and 3,
OLMo 2: ``post_attention_layernorm`` / ``post_feedforward_layernorm``) cannot be orthogonalised
through their projections (the norm rescales per coordinate after them); they raise
:class:`InterventionError` and are ablated with hooks instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actbridge._typing import Model
from actbridge.errors import InterventionError
from actbridge.hooks import ATTENTION_NAMES, MLP_NAMES, decoder_blocks, model_width
from actbridge.interventions.vectors import VectorLike, as_vector

#: The output projection of an attention module / of an MLP, by architecture (Llama, Qwen,
#: Mistral: ``o_proj`` / ``down_proj``; Phi, GPT-NeoX: ``dense`` / ``dense_4h_to_h``; OPT,
#: Falcon: ``out_proj`` / ``fc2``, ``dense_4h_to_h``; MPT: ``out_proj`` / ``down_proj``).
OUT_PROJECTIONS = {
    "attention": ("o_proj", "out_proj", "dense", "wo"),
    "mlp": ("down_proj", "dense_4h_to_h", "fc2", "w2"),
}
#: Modules that add position embeddings to the stream (GPT-2's ``wpe``, OPT's ``embed_positions``).
POSITION_EMBEDDINGS = ("wpe", "embed_positions", "position_embeddings")


def orthogonalize(model: Model, direction: VectorLike) -> Model:
    """Remove ``direction`` (``(d_model,)``, any norm) from everything ``model`` writes to its
    residual stream by editing its weights in place (see the module docstring). Returns
    ``model``. Raises :class:`InterventionError`, before any weight changes, for a zero or
    wrongly sized direction and for an architecture it cannot edit exactly."""
    import torch

    vec, _ = as_vector(direction)
    d = model_width(model)
    if vec.shape[0] != d:
        raise InterventionError(f"the direction has {vec.shape[0]} dimensions but the model's d_model is {d}")
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if not np.isfinite(norm) or norm == 0:
        raise InterventionError("cannot orthogonalise against a zero (or non-finite) direction")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise InterventionError(
            "some of this model's weights are offloaded (meta device, device_map with disk or CPU "
            "offload); load it whole (ab.load_model(..., device='cpu')) to edit its weights"
        )
    projections = _write_projections(model, d)  # every check before the first edit
    unit64 = torch.as_tensor(vec.astype(np.float64) / norm)
    with torch.no_grad():
        _untie_output_embeddings(model)
        embeddings: Any = model.get_input_embeddings()
        _project_rows(embeddings.weight, unit64)
        for linear in projections:
            w = linear.weight  # (d, d_in): the direction leaves its output space
            r = unit64.to(w.device)
            w64 = w.double()
            w.copy_(w64 - torch.outer(r, r @ w64))
            if linear.bias is not None:
                b64 = linear.bias.double()
                linear.bias.copy_(b64 - (b64 @ r) * r)
    return model


def _project_rows(weight: Any, unit64: Any) -> None:
    """``W ← W − (W r̂) r̂ᵀ`` for a ``(rows, d)`` matrix, in float64, written back in place."""
    import torch

    r = unit64.to(weight.device)
    w64 = weight.double()
    weight.copy_(w64 - torch.outer(w64 @ r, r))


def _write_projections(model: Model, d: int) -> list[Any]:
    """Every block's attention and MLP output ``nn.Linear`` (``d`` outputs), or a clear error."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    positional = sorted(names & set(POSITION_EMBEDDINGS))
    if positional:
        raise InterventionError(
            f"{type(model).__name__} adds position embeddings ({', '.join(positional)}) to the residual "
            "stream; orthogonalising them is not supported, use ab.directional_ablation's hooks"
        )
    out = []
    for index, block in enumerate(decoder_blocks(model)):
        if getattr(block, "post_feedforward_layernorm", None) is not None:
            raise InterventionError(
                f"{type(block).__name__} normalises its attention and MLP outputs before adding them to "
                "the residual stream, so no weight edit removes a direction exactly; use "
                "ab.directional_ablation (hooks) for this model"
            )
        for kind, holders in (("attention", ATTENTION_NAMES), ("mlp", MLP_NAMES)):
            holder = next((getattr(block, n) for n in holders if getattr(block, n, None) is not None), None)
            found = None
            if holder is not None:
                found = next(
                    (
                        getattr(holder, n)
                        for n in OUT_PROJECTIONS[kind]
                        if getattr(holder, n, None) is not None
                    ),
                    None,
                )
            if not isinstance(found, torch.nn.Linear) or found.out_features != d:
                raise InterventionError(
                    f"block {index} ({type(block).__name__}): found no {kind} output projection "
                    f"(an nn.Linear with {d} outputs named one of {', '.join(OUT_PROJECTIONS[kind])}); "
                    "this architecture cannot be orthogonalised, use ab.directional_ablation's hooks"
                )
            out.append(found)
    return out


def _untie_output_embeddings(model: Model) -> None:
    """Give the output embeddings their own copy of the weights when they share the input
    embeddings' matrix, and record it in the config so a saved model stays untied."""
    import torch

    output: Any = model.get_output_embeddings()
    inputs: Any = model.get_input_embeddings()
    if output is None or output.weight.data_ptr() != inputs.weight.data_ptr():
        return
    output.weight = torch.nn.Parameter(
        inputs.weight.detach().clone(), requires_grad=inputs.weight.requires_grad
    )
    for config in (model.config, getattr(model.config, "text_config", None)):
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
