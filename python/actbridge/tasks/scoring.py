"""Rates with 95% intervals, and steering success measured against a noise baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from actbridge.errors import TaskError


def rate(flags: Sequence[bool]) -> dict[str, Any]:
    """Fraction of ``flags`` that are true with its Wilson 95% score interval:
    ``{"value", "ci95": [lo, hi], "n", "k"}``."""
    n = len(flags)
    k = int(sum(bool(f) for f in flags))
    if n == 0:
        return {"value": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0, "k": 0}
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact at the ends (k = 0 or n), and never excluding p through rounding
    lo = 0.0 if k == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if k == n else max(p, min(1.0, centre + half))
    return {"value": p, "ci95": [lo, hi], "n": n, "k": k}


def steering_success(
    before: Sequence[bool], after: Sequence[bool], noise: Sequence[bool] | None = None
) -> dict[str, Any]:
    """Fraction of prompts whose behaviour flips (``before[i]`` true, ``after[i]`` false: e.g. a
    backdoor that fires without steering and not with it), with the same for a same-norm noise
    vector as the baseline. Each is a :func:`rate` over the prompts that showed the behaviour."""
    if len(before) != len(after) or (noise is not None and len(noise) != len(before)):
        raise TaskError("before, after (and noise) must score the same prompts")
    shown = [i for i, b in enumerate(before) if b]
    out = {"success": rate([not after[i] for i in shown])}
    if noise is not None:
        out["noise"] = rate([not noise[i] for i in shown])
    return out
