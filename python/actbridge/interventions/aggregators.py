"""Aggregators: how contrast activations become one direction.

Each takes the positive and negative activations of one layer, ``pos (n_pos, d)`` and
``neg (n_neg, d)`` (float64 numpy arrays), and returns the direction ``(d,)``:

- ``"mean_diff"`` (default): ``mean(pos) − mean(neg)``. Rows are weighted equally, so with
  positions that select several tokens per prompt the mean is *token-weighted* (a long prompt
  counts more). Its norm is the distance between the two means, in the residual stream's units.
- ``"paired_mean_diff"``: the mean of paired differences ``mean_i(pos_i − neg_i)``, each row a
  prompt's mean over its selected tokens (*prompt-weighted*); prompts pair up in order, so both
  sets need the same length. steering-vectors' ``mean_aggregator``.
- ``"pca_diff"``: the first principal component of the paired differences (centred, as
  scikit-learn's PCA does), signed so that more pairs project higher on the positive side than
  on the negative one. Unit norm. repeng's ``pca_diff``.
- ``"pca_center"``: the first principal component of every row centred on its pair's midpoint
  (repeng's ``pca_center``), signed like ``pca_diff``. Unit norm.
- ``"pca_uncentered"``: the top left singular vector of the differences and their negatives
  (uncentred PCA), signed to agree with the mean difference. Unit norm. steering-vectors'
  ``pca_aggregator``.
- ``"logistic"``: the weight vector of an L2-regularised logistic regression (``C = 1``, no
  intercept, scikit-learn's defaults) of positive (+1) against negative (−1) rows, each centred
  on its pair's midpoint; normalised to unit norm. steering-vectors' ``logistic_aggregator``.

The paired aggregators read prompt means (one row per prompt) and are scale-free where the peers
are (the PCA and logistic directions have norm 1: give ``alpha`` in residual-stream units).
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt

from actbridge.errors import InterventionError

Aggregator: TypeAlias = Literal[
    "mean_diff", "paired_mean_diff", "pca_diff", "pca_center", "pca_uncentered", "logistic"
]
AGGREGATORS: tuple[str, ...] = get_args(Aggregator)
#: The aggregators that pair prompt i of the positive set with prompt i of the negative one.
PAIRED: frozenset[str] = frozenset(AGGREGATORS) - {"mean_diff"}

F64 = npt.NDArray[np.float64]


def check_aggregator(name: str) -> str:
    """``name`` if it is an aggregator, else an :class:`InterventionError` listing them."""
    if name not in AGGREGATORS:
        raise InterventionError(f"unknown aggregator {name!r}; choose one of {list(AGGREGATORS)}")
    return name


def check_counts(name: str, n_pos: int, n_neg: int) -> None:
    """Raise unless aggregator ``name`` can take ``n_pos`` positive and ``n_neg`` negative prompts
    (the paired ones need as many of each), before any forward pass is spent on them."""
    if name in PAIRED and n_pos != n_neg:
        raise InterventionError(
            f"aggregator {name!r} pairs positive prompt i with negative prompt i, but there are "
            f"{n_pos} positive and {n_neg} negative prompts; pass equally many, or use 'mean_diff'"
        )


def aggregate(name: str, pos: npt.ArrayLike, neg: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The direction ``(d,)`` float32 that aggregator ``name`` takes from ``pos (n_pos, d)`` and
    ``neg (n_neg, d)`` (for the paired ones, row i of each is prompt i's mean)."""
    check_aggregator(name)
    p, n = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if p.ndim != 2 or n.ndim != 2 or p.shape[1] != n.shape[1] or not len(p) or not len(n):
        raise InterventionError(
            f"aggregate needs two non-empty (n, d) sets of one width, got {p.shape} and {n.shape}"
        )
    if name == "mean_diff":
        return np.asarray(p.mean(0) - n.mean(0), dtype=np.float32)
    check_counts(name, len(p), len(n))
    diffs = p - n
    if name == "paired_mean_diff":
        return np.asarray(diffs.mean(0), dtype=np.float32)
    if name == "pca_diff":
        return _signed_by_pairs(_first_component(diffs - diffs.mean(0)), p, n)
    if name == "pca_center":
        mid = (p + n) / 2
        rows = np.concatenate([p - mid, n - mid])
        return _signed_by_pairs(_first_component(rows - rows.mean(0)), p, n)
    if name == "pca_uncentered":
        v = _first_component(np.concatenate([diffs, -diffs]))
        return np.asarray(v * np.sign((diffs @ v).mean() or 1.0), dtype=np.float32)
    mid = (p + n) / 2
    return _logistic_direction(np.concatenate([p - mid, n - mid]), np.r_[np.ones(len(p)), -np.ones(len(n))])


def _first_component(rows: F64) -> F64:
    """The top right singular vector of ``rows (m, d)`` (unit norm; its sign is arbitrary)."""
    _, s, vt = np.linalg.svd(rows, full_matrices=False)
    if not len(s) or s[0] <= 0:
        raise InterventionError("the contrast activations do not vary: there is no principal direction")
    return np.asarray(vt[0], dtype=np.float64)


def _signed_by_pairs(v: F64, pos: F64, neg: F64) -> npt.NDArray[np.float32]:
    """``v`` or ``−v``: the sign under which more pairs project higher on the positive prompt
    (repeng's rule; a tie keeps ``v``)."""
    higher = np.mean(pos @ v > neg @ v)
    lower = np.mean(pos @ v < neg @ v)
    return (-v if lower > higher else v).astype(np.float32)


def _logistic_direction(x: F64, y: F64, c: float = 1.0) -> npt.NDArray[np.float32]:
    """Unit weight vector of ``min_w ½‖w‖² + C Σ log(1 + exp(−yᵢ w·xᵢ))`` (labels ±1, no
    intercept: scikit-learn's ``LogisticRegression(fit_intercept=False)``), by damped Newton
    steps. The minimiser lies in the rows' span, ``w = xᵀa``, so the steps are taken on ``a``
    with the ``(m, m)`` Gram matrix when there are fewer rows than dimensions."""
    gram = x.shape[0] < x.shape[1]
    basis = x @ x.T if gram else np.eye(x.shape[1])  # w = xᵀa (gram) or w = a
    design = basis if gram else x  # the margins: y * (design @ a), (m,)

    def loss(a: F64) -> float:
        z = y * (design @ a)
        reg = 0.5 * float(a @ (basis @ a))
        return reg + c * float(np.logaddexp(0.0, -z).sum())

    a = np.zeros(basis.shape[0])
    for _ in range(200):
        z = y * (design @ a)
        sig = 0.5 * (1.0 + np.tanh(-0.5 * z))  # σ(−z), overflow-free
        grad = basis @ a - c * design.T @ (y * sig)
        hess = basis + c * design.T @ ((sig * (1 - sig))[:, None] * design)
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrease = float(grad @ step)
        if decrease <= 1e-20 * max(1.0, loss(a)):
            break
        t, before = 1.0, loss(a)
        while loss(a - t * step) > before - 0.25 * t * decrease and t > 1e-10:
            t *= 0.5  # backtracking (Armijo)
        a = a - t * step
    coef = x.T @ a if gram else a
    norm = float(np.linalg.norm(coef))
    if norm == 0:
        raise InterventionError("the logistic regression found no direction (the two sets coincide)")
    return (coef / norm).astype(np.float32)
