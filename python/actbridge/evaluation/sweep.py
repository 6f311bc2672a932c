"""Layer sweeps: how well a difference-of-means vector steers a behaviour, per layer and
strength, against a same-norm noise vector (the paper picks the last layer before success
drops)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from actbridge._typing import Model, Texts, Tokenizer
from actbridge.evaluation.generation import similarity
from actbridge.interventions.vectors import SteeringVector
from actbridge.tasks.scoring import rate


def layer_sweep(
    model: Model,
    tokenizer: Tokenizer,
    pos_prompts: Texts,
    neg_prompts: Texts,
    prompts: Sequence[str],
    layers: Sequence[int],
    alphas: Sequence[float],
    behaviour: Callable[[str], bool],
    *,
    positions: str = "last",
    steer_positions: str = "all",
    trigger: str | Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    seed: int = 0,
) -> dict[str, Any]:
    """For each layer: v = mean(h⁺) − mean(h⁻) over the contrast prompts; steer ``prompts`` with
    ``−α·v`` (pushing away from the "positive" behaviour) and with a noise vector of the same
    norm; ``behaviour(completion)`` says whether the behaviour shows. All the cells (and the
    unsteered baseline) run as one batched sweep
    (:func:`actbridge.interventions.rowwise.generate_conditions`).

    Returns ``{"baseline": rate, "rows": [{"layer", "alpha", "native": rate, "noise": rate,
    "success": rate, "noise_success": rate}]}``, where success is the fraction of prompts that
    showed the behaviour unsteered and no longer do (:func:`actbridge.tasks.steering_success`).
    ``steer_positions`` is where the vector is added (any :class:`actbridge.steer` positions,
    e.g. :func:`actbridge.at_tokens` for the trigger's tokens). With ``references`` (one wanted
    completion per prompt, e.g. the answer to the untriggered prompt) each row also gets
    ``"similarity"`` and ``"noise_similarity"``: ROUGE-L of the steered completions against them,
    which tells a real answer from text the vector merely broke.
    """
    from actbridge.interventions.rowwise import UNSTEERED, Condition, generate_conditions
    from actbridge.tasks.scoring import steering_success

    rng = np.random.default_rng(seed)
    cells = []  # (vector, noise vector, alpha) per row of the result, layer-major
    for layer in layers:
        v = SteeringVector.from_contrast(
            model, tokenizer, pos_prompts, neg_prompts, layer, positions=positions, trigger=trigger
        )
        noise_v = v.random_like(rng)
        cells += [(v, noise_v, float(alpha)) for alpha in alphas]
    # Every cell's native and noise runs, and the unsteered baseline, in one batched pass.
    conditions = [UNSTEERED]
    for v, noise_v, alpha in cells:
        conditions += [Condition(v, -alpha, steer_positions), Condition(noise_v, -alpha, steer_positions)]
    texts = generate_conditions(model, tokenizer, conditions, prompts, max_new_tokens)
    base = [behaviour(c) for c in texts[0]]
    rows = []
    for k, (v, _, alpha) in enumerate(cells):
        native_text, noisy_text = texts[1 + 2 * k], texts[2 + 2 * k]
        native, noisy = [behaviour(c) for c in native_text], [behaviour(c) for c in noisy_text]
        s = steering_success(base, native, noisy)
        row = {
            "layer": v.layer,
            "alpha": alpha,
            "norm": v.norm,
            "native": rate(native),
            "noise": rate(noisy),
            "success": s["success"],
            "noise_success": s["noise"],
            "examples": native_text[:2],
        }
        if references is not None:
            row["similarity"] = similarity(native_text, references, seed=seed)["rouge_l"]
            row["noise_similarity"] = similarity(noisy_text, references, seed=seed)["rouge_l"]
        rows.append(row)
    return {"baseline": rate(base), "rows": rows}


def best_layer(sweep: dict[str, Any], alpha: float | None = None, drop: float = 0.5) -> int:
    """The paper's rule: the last layer before steering success drops (below ``drop`` × the best
    success seen so far), at ``alpha`` (default: each layer's best alpha)."""
    by_layer: dict[int, float] = {}
    for row in sweep["rows"]:
        if alpha is None or row["alpha"] == alpha:
            by_layer[row["layer"]] = max(by_layer.get(row["layer"], 0.0), row["success"]["value"])
    best, chosen = 0.0, min(by_layer)
    for layer in sorted(by_layer):
        value = by_layer[layer]
        if best > 0 and value < drop * best:
            break
        chosen, best = layer, max(best, value)
    return chosen


def plot_sweep(sweep: dict[str, Any], path: str, title: str = "steering success by layer") -> None:
    """Success (native vs noise) against layer, one line per alpha, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, alpha in enumerate(sorted({r["alpha"] for r in sweep["rows"]})):
        rows = sorted((r for r in sweep["rows"] if r["alpha"] == alpha), key=lambda r: r["layer"])
        xs = [r["layer"] for r in rows]
        colour = f"C{k}"  # one colour per alpha: solid native, dashed noise
        ax.plot(
            xs, [r["success"]["value"] for r in rows], marker="o", color=colour, label=f"native α={alpha:g}"
        )
        ax.plot(
            xs,
            [r["noise_success"]["value"] for r in rows],
            linestyle="--",
            marker="x",
            color=colour,
            alpha=0.6,
            label=f"noise α={alpha:g}",
        )
    ax.set_xlabel("layer")
    ax.set_ylabel("steering success")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
