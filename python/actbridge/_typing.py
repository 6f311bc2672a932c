"""Types shared across the package: the allowed values of string options (``Literal``), the
``Map`` protocol every map kind satisfies, and the shapes of result dicts (``TypedDict``).

Imported by the modules that use them; nothing here imports another actbridge module, and
torch and transformers only while type checking, so any module may import it at no cost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypedDict, overload, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Document",
    "FitMethod",
    "Map",
    "MapScores",
    "Metric",
    "Model",
    "ModelAt",
    "OutDType",
    "Rows",
    "ShuffleOption",
    "StoredDType",
    "SubstitutionScores",
    "Tensor",
    "Texts",
    "Tokenizer",
    "WriteMode",
]

#: A Hugging Face causal LM with decoder blocks (``AutoModelForCausalLM`` and the like).
Model: TypeAlias = "PreTrainedModel"
#: Its tokenizer (fast tokenizers give character offsets, which pairing and triggers need).
Tokenizer: TypeAlias = "PreTrainedTokenizerBase"
#: A torch tensor; activations are ``(batch, seq, d)`` or ``(n, d)`` as each function states.
Tensor: TypeAlias = "torch.Tensor"
#: A model, its tokenizer and a block index: one side of a pair of models.
ModelAt: TypeAlias = "tuple[Model, Tokenizer, int]"
#: One text: a string, or a conversation ``[{"role": ..., "content": ...}, ...]``.
Document: TypeAlias = "str | list[dict[str, str]]"
#: Texts as functions take them: documents (and ``{"text": ...}`` / ``{"messages": [...]}``
#: records), or the path of a JSONL file of those.
Texts: TypeAlias = "str | os.PathLike[str] | Iterable[Document | dict[str, Any]]"

#: Element types a read or a batch returns (bfloat16 as ``ml_dtypes``-free uint16 views).
OutDType = Literal["float32", "float64", "float16", "bfloat16"]
#: Element types a store keeps site rows in.
StoredDType = Literal["float32", "float16", "bfloat16"]
#: How a :class:`StoreWriter` opens its path: "x" a new store, "a" append to / resume one.
WriteMode = Literal["x", "a"]
#: How :meth:`ActivationStore.batches` visits rows: True (seeded permutation), False (store
#: order) or "block" (shuffled blocks, for stores larger than RAM).
ShuffleOption = bool | Literal["block"]
#: How an affine weight is solved for.
FitMethod = Literal["lstsq", "procrustes"]
#: A selection of a store's rows: None (all), one index, a slice or range, or integer indices
#: (a sequence or any integer numpy array; negatives count from the end), or a boolean mask.
Rows = None | int | slice | range | Sequence[int] | npt.NDArray[np.integer[Any]]


@runtime_checkable
class Map(Protocol):
    """What every map kind (affine, autoencoder, a released paper mapper) provides."""

    kind: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def d_source(self) -> int: ...

    @property
    def d_target(self) -> int: ...

    @overload
    def transform(self, x: Tensor) -> Tensor: ...  # first: a Tensor is array-like too
    @overload
    def transform(self, x: npt.ArrayLike) -> npt.NDArray[np.floating[Any]]: ...
    def transform(self, x: Tensor | npt.ArrayLike) -> Tensor | npt.NDArray[np.floating[Any]]:
        """``(..., d_source) -> (..., d_target)``: numpy in, numpy out; torch in, torch out."""
        ...

    def to_torch(self) -> torch.nn.Module:
        """A ``torch.nn.Module`` computing the same map."""
        ...

    def tensors(self) -> dict[str, npt.NDArray[np.float32]]: ...

    def save(self, path: Any) -> None: ...


class _Interval(TypedDict):
    mse: list[float]
    fvu: list[float]
    cosine: list[float]
    r2: list[float]


class _MapScoresBase(TypedDict):
    rows: int
    mse: float
    fvu: float
    cosine: float
    r2: float


class MapScores(_MapScoresBase, total=False):
    """:func:`evaluate_map`'s result: rows scored, MSE per element, FVU, mean per-row cosine,
    mean per-dimension R²; with ``ci=True`` also ``ci95`` (95% bootstrap interval per metric)."""

    ci95: _Interval


class _Metric(TypedDict):
    value: float


class Metric(_Metric, total=False):
    """One scalar of :func:`evaluate_substitution` with its 95% bootstrap interval (texts
    resampled) and unit where it has them."""

    ci95: list[float]
    unit: str


class SubstitutionScores(TypedDict):
    """:func:`evaluate_substitution`'s result for one map: cross-entropies (nats/token) of the
    clean, substituted and mean-ablated target, KL(clean ‖ substituted), CE recovered, the
    alignment rate of the paired tokens, and how many texts and tokens were scored."""

    ce_clean: Metric
    ce_substituted: Metric
    ce_ablated: Metric
    kl: Metric
    ce_recovered: Metric
    alignment_rate: Metric
    texts: Metric
    tokens: Metric
