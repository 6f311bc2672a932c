"""Progress bars for native loops that report absolute positions."""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar, or nothing when disabled or tqdm is missing. Native code reports absolute
    positions (rows or batches done), which :meth:`advance_to` turns into increments."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "row") -> None:
        self._bar: Any = None
        self._at = 0
        if enabled:
            try:
                from tqdm.auto import tqdm  # type: ignore[import-untyped]
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, mininterval=1.0)

    def update(self, k: int) -> None:
        if self._bar is not None:
            self._bar.update(k)
        self._at += k

    def advance_to(self, n: int, *_: object) -> None:
        self.update(n - self._at)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
