"""Cross-tokenizer alignment by character offsets: known answers and properties."""

from __future__ import annotations

from itertools import pairwise

import actbridge as ab
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st


def spans(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Offsets of ``pieces`` laid end to end over ``text`` (they must concatenate to it)."""
    assert "".join(pieces) == text
    out, at = [], 0
    for p in pieces:
        out.append((at, at + len(p)))
        at += len(p)
    return out


def test_known_answers_words_numbers_unicode_emoji():
    text = "naïve café: 3.14 🙂🙂!"
    # source splits digits and keeps each emoji whole; target merges "3.14" and splits the
    # first emoji into two byte-fallback pieces that share one span.
    src = spans(text, ["na", "ïve", " café", ":", " ", "3", ".", "1", "4", " ", "🙂", "🙂", "!"])
    # BOS, "naïve", " ca", "fé", ":", " 3.14", two byte pieces of " 🙂" (one span), "🙂", "!"
    tgt = [(0, 0), (0, 5), (5, 8), (8, 10), (10, 11), (11, 16), (16, 18), (16, 18), (18, 19), (19, 20)]
    s, t = ab.align_offsets(src, tgt)
    ends = [tgt[i][1] for i in t]
    # BOS (empty span) never pairs; "naïve", "café", ":", "3.14" (ends at 16), the first emoji
    # (its last piece), the second emoji and "!" do.
    assert ends == [5, 10, 11, 16, 18, 19, 20]
    assert list(t) == [1, 3, 4, 5, 7, 8, 9]  # target index 6 ends at 18 too; only the last pairs
    assert list(s) == [1, 2, 3, 8, 10, 11, 12]
    np.testing.assert_array_equal(np.asarray(src)[s, 1], np.asarray(tgt)[t, 1])


def test_same_start_and_allowed_masks():
    text = "ab cd"
    src = spans(text, ["ab", " cd"])
    tgt = spans(text, ["ab", " ", "cd"])
    s, t = ab.align_offsets(src, tgt)
    assert list(zip(s, t, strict=True)) == [(0, 0), (1, 2)]
    s, t = ab.align_offsets(src, tgt, same_start=True)  # " cd" starts at 2, "cd" at 3
    assert list(zip(s, t, strict=True)) == [(0, 0)]
    s, t = ab.align_offsets(src, tgt, target_allowed=[False, True, True])
    assert list(zip(s, t, strict=True)) == [(1, 2)]
    s, t = ab.align_offsets([], tgt)
    assert len(s) == len(t) == 0


def segmentation(text_strategy):
    """A text and two random segmentations of it (cut points), plus empty special spans."""

    @st.composite
    def build(draw):
        text = draw(text_strategy)
        n = len(text)
        cuts_a = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=n)) - {n}) if n > 1 else []
        cuts_b = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=n)) - {n}) if n > 1 else []

        def pieces(cuts):
            bounds = [0, *cuts, n]
            out = [(a, b) for a, b in pairwise(bounds) if b > a]
            # byte-fallback style: sometimes repeat a span (several tokens of one character)
            rep = draw(st.lists(st.integers(0, max(len(out) - 1, 0)), max_size=3)) if out else []
            for r in sorted(rep, reverse=True):
                out.insert(r, out[r])
            return [(0, 0), *out]

        return text, pieces(cuts_a), pieces(cuts_b)

    return build()


@settings(max_examples=200, deadline=None)
@given(segmentation(st.text(min_size=1, max_size=40)), st.booleans())
def test_every_pair_ends_at_the_same_character_and_no_shared_end_is_missed(case, same_start):
    text, a, b = case
    s, t = ab.align_offsets(a, b, same_start=same_start)
    A, B = np.asarray(a), np.asarray(b)
    assert len(s) == len(t)
    np.testing.assert_array_equal(A[s, 1], B[t, 1])
    if same_start:
        np.testing.assert_array_equal(A[s, 0], B[t, 0])
    assert (np.diff(t) > 0).all() and (np.diff(s) > 0).all()  # monotone, one-to-one
    assert (A[s, 1] > A[s, 0]).all()  # specials never pair
    if not same_start:
        shared = {e for x, e in a if e > x} & {e for x, e in b if e > x}
        assert set(A[s, 1]) == shared
        # the pairing token is the last one with that end on each side
        for i, j in zip(s, t, strict=True):
            assert all(a[k][1] != a[i][1] for k in range(i + 1, len(a)))
            assert all(b[k][1] != b[j][1] for k in range(j + 1, len(b)))


def test_pair_positions_and_pairable_count_from_first():
    from actbridge.align import pair_positions, pairable

    ps, pt = pair_positions(5, 4, None, None, shared=True, first=1)
    assert list(ps) == list(pt) == [1, 2, 3]
    src = spans("ab cd", ["ab", " cd"])
    tgt = [(0, 0), *spans("ab cd", ["ab", " ", "cd"])]
    ps, pt = pair_positions(2, 4, src, tgt, shared=False, first=1)
    assert list(zip(ps, pt, strict=True)) == [(1, 3)]  # source position 0 is skipped
    assert pairable(4, tgt, first=1) == 3 and pairable(4, None, first=1) == 3
    assert pairable(0, None, first=1) == 0
