"""Pairing the tokens of two tokenizers on the same text by character offsets.

Two tokens pair when their spans end at the same character of the text (optionally: and start
at the same character). A token whose span is empty (special tokens such as BOS) never pairs.
When several tokens of one side end at the same character (byte-fallback pieces of one emoji,
say), only the last of them pairs: it is the first position whose residual stream has seen the
whole character.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Offsets = Sequence[tuple[int, int]] | npt.NDArray[np.int64]


def _last_per_end(offsets: npt.NDArray[np.int64], allowed: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Indices of tokens that are the last (allowed, non-empty) token ending at their end char."""
    idx = np.flatnonzero(allowed & (offsets[:, 1] > offsets[:, 0]))
    if idx.size == 0:
        return idx
    ends = offsets[idx, 1]
    # np.unique keeps the first occurrence; scan reversed to keep the last.
    _, first_rev = np.unique(ends[::-1], return_index=True)
    return np.sort(idx[::-1][first_rev])


def align_offsets(
    source: Offsets,
    target: Offsets,
    *,
    same_start: bool = False,
    source_allowed: npt.ArrayLike | None = None,
    target_allowed: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pair tokens of one text tokenized two ways.

    Args:
        source, target: ``(n, 2)`` character spans ``(start, end)`` per token (a fast
            tokenizer's ``offset_mapping``).
        same_start: also require both spans to start at the same character.
        source_allowed, target_allowed: optional ``(n,)`` masks of tokens that may pair
            (e.g. to leave out a skipped BOS position).

    Returns ``(source_index, target_index)``, equal-length int64 arrays in increasing order,
    such that ``source[source_index][:, 1] == target[target_index][:, 1]``.
    """
    s = np.asarray(source, dtype=np.int64).reshape(-1, 2)
    t = np.asarray(target, dtype=np.int64).reshape(-1, 2)
    s_ok = np.ones(len(s), bool) if source_allowed is None else np.asarray(source_allowed, bool)
    t_ok = np.ones(len(t), bool) if target_allowed is None else np.asarray(target_allowed, bool)
    si, ti = _last_per_end(s, s_ok), _last_per_end(t, t_ok)
    _, a, b = np.intersect1d(s[si, 1], t[ti, 1], assume_unique=True, return_indices=True)
    si, ti = si[a], ti[b]
    if same_start:
        keep = s[si, 0] == t[ti, 0]
        si, ti = si[keep], ti[keep]
    order = np.argsort(ti, kind="stable")
    return si[order], ti[order]


def same_tokenizer(a: Any, b: Any) -> bool:
    """Whether two tokenizers are one (the same object, or the same class and vocabulary): then
    their tokens pair position by position and no offsets are needed."""
    return a is b or (type(a) is type(b) and a.get_vocab() == b.get_vocab())


def pair_positions(
    n_source: int,
    n_target: int,
    source_offsets: Offsets | None,
    target_offsets: Offsets | None,
    *,
    shared: bool,
    first: int | tuple[int, int] = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Paired (source, target) positions of one text from position ``first`` on (one for both
    sides, or ``(source_first, target_first)``): position by position with a ``shared``
    tokenizer, else by :func:`align_offsets`."""
    first_s, first_t = (first, first) if isinstance(first, int) else first
    if shared:
        pos = np.arange(max(first_s, first_t), min(n_source, n_target), dtype=np.int64)
        return pos, pos
    assert source_offsets is not None and target_offsets is not None
    return align_offsets(
        source_offsets,
        target_offsets,
        source_allowed=np.arange(n_source) >= first_s,
        target_allowed=np.arange(n_target) >= first_t,
    )


def pairable(n: int, offsets: Offsets | None, first: int = 0) -> int:
    """Tokens of one side that count for an alignment rate: from ``first`` on, with a non-empty
    span (all of them when there are no offsets, i.e. a shared tokenizer)."""
    if offsets is None:
        return max(n - first, 0)
    o = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return int(((np.arange(n) >= first) & (o[:, 1] > o[:, 0])).sum())
