"""Layer sweeps: how well a difference-of-means vector steers a behaviour, per layer and
strength, against a same-norm noise vector (the paper picks the last layer before success
drops)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actbridge._typing import Model, Texts, Tokenizer
from actbridge.errors import EvaluateError
from actbridge.evaluation.generation import similarity
from actbridge.integrity import replacing
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
    checkpoint: str | os.PathLike[str] | None = None,
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

    ``checkpoint``: a JSON file (e.g. ``sweep_completions.json``) that keeps the completions as
    the sweep goes, the baseline and then one layer (its native and noise cells) per batched
    pass, each written atomically when its pass ends; a sweep cut off (a killed process, the end
    of a session) resumes from it and generates only what is missing. The file is bound to the
    sweep's settings (prompts, every cell's vectors, strengths, tokens): another sweep's file is
    an :class:`EvaluateError` that names it, never silently reused.
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
    # Every cell's native and noise runs, and the unsteered baseline: one batched pass, or with
    # a checkpoint one pass per layer.
    named: dict[str, Any] = {"baseline": UNSTEERED}
    for v, noise_v, alpha in cells:
        named[cell_key(v.layer, alpha, "native")] = Condition(v, -alpha, steer_positions)
        named[cell_key(v.layer, alpha, "noise")] = Condition(noise_v, -alpha, steer_positions)

    if len(named) != 1 + 2 * len(cells):
        raise EvaluateError(
            f"name each layer and each alpha once (layers {list(layers)}, alphas {list(alphas)})"
        )

    def run(names: list[str]) -> dict[str, list[str]]:
        texts = generate_conditions(model, tokenizer, [named[n] for n in names], prompts, max_new_tokens)
        return dict(zip(names, texts, strict=True))

    if checkpoint is None:
        done = run(list(named))
    else:
        digest = sweep_digest(cells, prompts, max_new_tokens)
        done = read_checkpoint(Path(checkpoint), digest)
        passes = [["baseline"]] + [
            [n for n in named if n.startswith(f"{layer}/")]
            for layer in dict.fromkeys(c[0].layer for c in cells)
        ]
        for names in passes:
            todo = [n for n in names if n not in done]
            if todo:
                done |= run(todo)
                write_checkpoint(Path(checkpoint), digest, done)
    texts = [done[n] for n in named]
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


#: the ``format`` of a sweep checkpoint file
CHECKPOINT_FORMAT = "actbridge.sweep-checkpoint"


def cell_key(layer: int, alpha: float, which: str) -> str:
    """A cell's name in a checkpoint: ``"{layer}/{alpha}/{native|noise}"``."""
    return f"{layer}/{alpha!r}/{which}"


def sweep_digest(
    cells: Sequence[tuple[SteeringVector, SteeringVector, float]], prompts: Sequence[Any], max_new_tokens: int
) -> str:
    """sha256 over what a sweep's completions depend on: the prompts, the token budget and
    every cell's layer, strength and native and noise vectors (bytes)."""
    h = hashlib.sha256(json.dumps([list(prompts), max_new_tokens], default=str).encode())
    for v, noise_v, alpha in cells:
        h.update(f"{v.layer}/{alpha!r}/{v.where}".encode())
        h.update(v.vector.tobytes())
        h.update(noise_v.vector.tobytes())
    return h.hexdigest()


def read_checkpoint(path: Path, digest: str) -> dict[str, list[str]]:
    """The completions a checkpoint holds (none if the file does not exist yet)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        fmt, written, completions = data["format"], data["settings"], data["completions"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvaluateError(
            f"{path} is not a sweep checkpoint ({e}); move it away to start the sweep over"
        ) from e
    if fmt != CHECKPOINT_FORMAT or written != digest:
        raise EvaluateError(
            f"{path} holds another sweep's completions (other prompts, vectors, strengths or token "
            "budget); delete it to start this sweep over, or pass another checkpoint path"
        )
    return {str(k): [str(t) for t in v] for k, v in completions.items()}


def write_checkpoint(path: Path, digest: str, completions: dict[str, list[str]]) -> None:
    """Replace ``path`` whole: a kill leaves the old or the new file."""
    with replacing(path) as tmp:
        tmp.write_text(
            json.dumps({"format": CHECKPOINT_FORMAT, "settings": digest, "completions": completions})
        )


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
