"""Collecting residual-stream activations from Hugging Face causal LMs into stores.

:func:`collect` writes one site per layer (``layer6``, ``layer13``, ...) with int64 columns
``token_id``, ``doc`` (text index) and ``pos`` (token index in the text's tokenization).
:func:`collect_pair` runs a source and a target model on the same texts and writes paired
rows, sites ``source`` and ``target``, columns ``doc``, ``source_pos``, ``target_pos``,
``source_token_id``, ``target_token_id``. With one tokenizer the rows pair one to one; with two,
tokens pair when their character spans end at the same character (:mod:`actbridge.align`), and
the store's metadata records ``alignment_rate`` (the fraction of target tokens paired).

Each forward pass stops after the last wanted block; padding never reaches the store; the first
position of every text (BOS, or the attention sink when there is no BOS) is skipped by default.
Rows go to the Rust writer, whose background thread converts and writes them; on CUDA the
device-to-host copy of one batch overlaps the next batch's forward pass. ``mode="a"`` resumes an
interrupted run after its last committed row. Under ``torchrun`` (or with ``RANK`` and
``WORLD_SIZE`` set) each rank collects a contiguous share of the texts into its own part of the
store; ``ActivationStore(path)`` opens the parts as one store.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actbridge._typing import Document, Model, ModelAt, StoredDType, Tensor, Texts, Tokenizer, WriteMode
from actbridge.align import pair_positions, pairable, same_tokenizer
from actbridge.distributed import active_group, barrier, rank_and_world
from actbridge.errors import CollectError, CollectWarning
from actbridge.hooks import (
    Point,
    check_where,
    forward_padded,
    hook_points,
    input_device,
    layer_indices,
    model_width,
    point_site,
)
from actbridge.models import model_name
from actbridge.store import SHARD_BYTES, ActivationStore, StoreWriter
from actbridge.texts import documents, render

if TYPE_CHECKING:
    import torch

#: Metadata keys that must match for ``mode="a"`` to continue a store.
_RESUME_KEYS = ("kind", "layers", "where", "skip_bos", "skip_first", "max_length", "same_start", "models")


@dataclass
class _Encoded:
    ids: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64] | None
    truncated: bool


@dataclass
class _Side:
    """One model of a collection with its tokenizer and hooked layers and points."""

    model: Model
    tokenizer: Tokenizer
    layers: list[int]
    where: list[str] = field(default_factory=lambda: ["resid_post"])
    width: int = 0
    device: torch.device | None = None
    points: list[Point] = field(init=False)

    def __post_init__(self) -> None:
        self.layers = layer_indices(self.model, self.layers)
        self.where = check_where(self.where)
        self.points = hook_points(self.layers, self.where)
        self.width = model_width(self.model)
        self.device = input_device(self.model)

    def encode(self, docs: Sequence[Document], max_length: int, offsets: bool) -> list[_Encoded]:
        rendered = [render(d, self.tokenizer) for d in docs]
        out: list[_Encoded | None] = [None] * len(docs)
        for special in (True, False):
            idx = [i for i, (_, s) in enumerate(rendered) if s == special]
            if not idx:
                continue
            enc = self.tokenizer(
                [rendered[i][0] for i in idx],
                add_special_tokens=special,
                return_offsets_mapping=offsets,
                return_attention_mask=False,
            )
            for k, i in enumerate(idx):
                ids = np.asarray(enc["input_ids"][k], dtype=np.int64)
                off = np.asarray(enc["offset_mapping"][k], dtype=np.int64).reshape(-1, 2) if offsets else None
                cut = len(ids) > max_length
                out[i] = _Encoded(ids[:max_length], None if off is None else off[:max_length], cut)
        return [e for e in out if e is not None]

    def first_kept(self, enc: _Encoded, opts: _Options) -> int:
        """The first position of a text to store: 1 when ``skip_first``, or when ``skip_bos``
        and the text starts with this tokenizer's BOS token; else 0."""
        if opts.skip_first:
            return 1
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return int(opts.skip_bos and bos is not None and len(enc.ids) > 0 and int(enc.ids[0]) == bos)

    def forward(self, encs: Sequence[_Encoded]) -> tuple[dict[Point, Tensor], npt.NDArray[np.int64]]:
        """Hook point tensors ``{point: (batch * seq, d)}`` and each text's first flat row index."""
        hs, mask, starts = forward_padded(self.model, self.tokenizer, [e.ids for e in encs], self.points)
        b, t = mask.shape
        flat = {point: h.reshape(b * t, h.shape[-1]) for point, h in hs.items()}
        return flat, np.arange(b, dtype=np.int64) * t + starts

    def provenance(self) -> dict[str, Any]:
        return {
            "model": model_name(self.model),
            "layers": self.layers,
            "where": self.where,
            "d_model": self.width,
        }


class _HostRows:
    """Moves selected rows to the host and appends them, one batch behind on CUDA so the copy
    overlaps the next forward pass (pinned buffers, non-blocking copies, an event per batch)."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer
        self.pending: tuple[Any, dict[str, Any], dict[str, Any]] | None = None

    def submit(self, sites: dict[str, Any], columns: dict[str, Any]) -> None:
        import torch

        first = next(iter(sites.values()))
        if first.device.type != "cuda":
            self.writer.append(**sites, **columns)
            return
        host = {}
        for name, rows in sites.items():
            buf = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            buf.copy_(rows, non_blocking=True)
            host[name] = buf
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
        self.drain()
        self.pending = (event, host, columns)

    def drain(self) -> None:
        if self.pending is not None:
            event, host, columns = self.pending
            self.pending = None
            event.synchronize()
            self.writer.append(**host, **columns)


@dataclass(frozen=True)
class _Options:
    """The settings every collection shares (checked on construction)."""

    batch_size: int
    max_length: int
    skip_bos: bool
    skip_first: bool
    dtype: StoredDType
    progress: bool
    mode: WriteMode
    shard_bytes: int
    metadata: dict[str, Any] | None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CollectError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.max_length < 2:
            raise CollectError(f"max_length must be at least 2 tokens, not {self.max_length}")
        if self.mode not in ("x", "a"):
            raise CollectError(f"mode must be 'x' (new store) or 'a' (resume), not {self.mode!r}")


@dataclass
class _Batch:
    """One batch's rows: ``sites`` maps a site to (flat block outputs, row indices into them);
    ``columns`` to lists of per-text arrays."""

    sites: dict[str, tuple[Any, npt.NDArray[np.int64]]]
    columns: dict[str, list[Any]]
    tokens: int
    truncated: int


@dataclass
class _Run:
    """What the two collection kinds share: texts, writer, resume point, progress."""

    docs: list[Document]
    path: Any
    sites: dict[str, int]
    columns: list[str]
    settings: dict[str, Any]
    pos_column: str
    opts: _Options
    rank: int = 0
    world: int = 1
    first_doc: int = 0
    last_doc: int = 0
    resume: tuple[int, int] | None = None
    writer: StoreWriter = field(init=False)

    def open(self) -> None:
        o = self.opts
        self.settings = {
            **self.settings,
            "skip_bos": o.skip_bos,
            "skip_first": o.skip_first,
            "max_length": o.max_length,
            "dtype": o.dtype,
        }
        self.rank, self.world = rank_and_world()
        n = len(self.docs)
        self.first_doc, self.last_doc = self.rank * n // self.world, (self.rank + 1) * n // self.world
        meta = {"collect": {**self.settings, "texts": n, "rank": self.rank, "world_size": self.world}}
        part = self.rank if self.world > 1 else None
        store_path = os.path.join(os.fspath(self.path), f"part-{part}") if part is not None else self.path
        if o.mode == "a" and os.path.isfile(os.path.join(store_path, "manifest.json")):
            self._check_resumable(ActivationStore(store_path).metadata.get("collect", {}))
        self.writer = StoreWriter(
            self.path,
            self.sites,
            o.dtype,
            metadata={**(o.metadata or {}), **meta},
            mode=o.mode,
            columns=self.columns,
            shard_bytes=o.shard_bytes,
            part=part,
        )
        if self.writer.committed_rows:
            done = ActivationStore(self.writer.path)
            last = len(done) - 1
            self.resume = (int(done.column("doc", [last])[0]), int(done.column(self.pos_column, [last])[0]))

    def _check_resumable(self, before: dict[str, Any]) -> None:
        if "where" not in before:  # stores from before hook points: block outputs
            before = {**before, "where": ["resid_post"] if before.get("kind") == "layers" else "resid_post"}
        if "skip_first" not in before and "skip_bos" in before:
            # stores from before skip_first existed: skip_bos=True dropped position 0 of every text
            before = {**before, "skip_first": bool(before["skip_bos"])}
        for key in _RESUME_KEYS:
            if before.get(key) != self.settings.get(key):
                raise CollectError(
                    f"{self.path} was collected with {key}={before.get(key)!r}, this run asks for "
                    f"{self.settings.get(key)!r}; resume with the same settings or write a new store"
                )

    def todo(self) -> list[int]:
        start = self.first_doc if self.resume is None else max(self.first_doc, self.resume[0])
        return list(range(start, self.last_doc))

    def keep_from(self, doc: int, first: int) -> int:
        """First position (of ``pos_column``) to keep in ``doc``."""
        if self.resume is not None and doc == self.resume[0]:
            return max(first, self.resume[1] + 1)
        return first

    def run_batches(self, desc: str, step: Callable[[list[int]], _Batch], postfix: Callable[[], str]) -> int:
        """Collect every text still to do, ``batch_size`` at a time, through ``step``; the number
        of truncated texts. The writer is closed (what was committed stays) if anything fails."""
        rows = _HostRows(self.writer)
        todo = self.todo()
        bar = _progress(len(todo), self.opts.progress, desc)
        batch_size = self.opts.batch_size
        tokens, truncated, t0 = 0, 0, time.perf_counter()
        try:
            for k in range(0, len(todo), batch_size):
                doc_ids = todo[k : k + batch_size]
                batch = step(doc_ids)
                tokens += batch.tokens
                truncated += batch.truncated
                if len(next(iter(batch.sites.values()))[1]):
                    rows.submit(
                        {
                            name: flat[_index_tensor(idx, flat.device)]
                            for name, (flat, idx) in batch.sites.items()
                        },
                        {name: np.concatenate(v) for name, v in batch.columns.items()},
                    )
                bar.update(len(doc_ids))
                bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s{postfix()}")
            rows.drain()
        except BaseException:
            rows.pending = None
            self.writer.close()
            raise
        finally:
            bar.close()
        return truncated

    def finish(self, truncated: int, metadata: dict[str, Any]) -> ActivationStore:
        if truncated:
            warnings.warn(
                f"{truncated} text(s) were longer than max_length={self.settings['max_length']} tokens and "
                "were truncated; raise max_length to keep them whole",
                CollectWarning,
                stacklevel=3,
            )
        self.writer.update_metadata(metadata)
        self.writer.close()
        group = active_group(None)
        if group is not None:  # every part committed before any rank opens the store
            barrier(group, "collect (waiting for every rank's part)")
        return ActivationStore(self.path)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, disable=not enabled, unit="text", desc=desc, dynamic_ncols=True, mininterval=1.0)


def collect(
    model: Model,
    tokenizer: Tokenizer,
    texts: Texts,
    layers: int | Sequence[int],
    path: str | os.PathLike[str],
    batch_size: int = 8,
    max_length: int = 512,
    skip_bos: bool = True,
    dtype: StoredDType = "bfloat16",
    progress: bool = True,
    mode: WriteMode = "x",
    *,
    where: str | Sequence[str] = "resid_post",
    skip_first: bool = False,
    shard_bytes: int = SHARD_BYTES,
    metadata: dict[str, Any] | None = None,
) -> ActivationStore:
    """Run ``model`` on ``texts`` and store the residual stream after blocks ``layers`` (or
    another hook point of those blocks).

    Args:
        texts: strings, chat conversations, or a JSONL path (see :func:`actbridge.texts.documents`).
        layers: block indices (negative counts from the end); sites are ``layer{L}``.
        where: the hook point(s) to read at each of ``layers`` (see :mod:`actbridge.hooks`):
            "resid_post" (default, sites ``layer{L}``), "resid_pre", "attn_out", "mlp_out"
            (sites ``layer{L}.attn_out``, ...), "embed" (site ``embed``); several give one site
            each, from the same forward pass.
        path: the new store (``mode="x"``), or an existing one to continue (``mode="a"``).
        batch_size: texts per forward pass. max_length: tokens per text (longer ones are
            truncated, with one :class:`CollectWarning`).
        skip_bos: leave out a text's first token when it is the tokenizer's BOS token (the
            ``bos_token_id`` its tokenizer or chat template put there; its norm dominates). A
            text that starts with a real token (SmolLM2 and Qwen add no BOS) keeps it.
        skip_first: leave out position 0 of every text whatever it is (the attention sink of
            models without a BOS token); implies what ``skip_bos`` does. Both choices are
            recorded in the store's ``metadata["collect"]``.
        dtype: storage dtype ("bfloat16", "float16", "float32").

    Returns the store (all parts, when run under several ranks).
    """
    opts = _Options(
        batch_size, max_length, skip_bos, skip_first, dtype, progress, mode, shard_bytes, metadata
    )
    side = _Side(
        model, tokenizer, list([layers] if isinstance(layers, int) else layers), list(check_where(where))
    )
    run = _Run(
        documents(texts),
        path,
        {point_site(point): side.width for point in side.points},
        ["token_id", "doc", "pos"],
        {"kind": "layers", **side.provenance(), "models": [model_name(model)]},
        "pos",
        opts,
    )
    run.open()

    def step(doc_ids: list[int]) -> _Batch:
        encs = side.encode([run.docs[i] for i in doc_ids], max_length, offsets=False)
        flat, starts = side.forward(encs)
        index: list[Any] = []
        cols: dict[str, list[Any]] = {"token_id": [], "doc": [], "pos": []}
        for doc, enc, start in zip(doc_ids, encs, starts, strict=True):
            pos = np.arange(run.keep_from(doc, side.first_kept(enc, opts)), len(enc.ids), dtype=np.int64)
            index.append(start + pos)
            cols["token_id"].append(enc.ids[pos])
            cols["doc"].append(np.full(len(pos), doc, dtype=np.int64))
            cols["pos"].append(pos)
        idx = np.concatenate(index)
        return _Batch(
            {point_site(point): (flat[point], idx) for point in side.points},
            cols,
            sum(len(e.ids) for e in encs),
            sum(e.truncated for e in encs),
        )

    truncated = run.run_batches(f"collect {model_name(model)}", step, lambda: "")
    return run.finish(truncated, {})


def collect_pair(
    source: ModelAt,
    target: ModelAt,
    texts: Texts,
    path: str | os.PathLike[str],
    batch_size: int = 8,
    max_length: int = 512,
    skip_bos: bool = True,
    dtype: StoredDType = "bfloat16",
    progress: bool = True,
    mode: WriteMode = "x",
    *,
    same_start: bool = False,
    where: str = "resid_post",
    skip_first: bool = False,
    shard_bytes: int = SHARD_BYTES,
    metadata: dict[str, Any] | None = None,
) -> ActivationStore:
    """Run a source and a target model on the same ``texts`` and store paired rows.

    Args:
        source, target: ``(model, tokenizer, layer)`` each.
        same_start: with different tokenizers, pair tokens only when their spans also start
            at the same character (default: same end character is enough).
        where: the hook point read in both models (as in :func:`collect`; one point).
        Other arguments as in :func:`collect`.

    With one tokenizer (the same object, or the same class and vocabulary) tokens pair position
    by position; otherwise by character offsets (both tokenizers must be fast tokenizers). The
    store's metadata gets ``alignment_rate`` (paired / target tokens considered) and
    ``alignment`` (counts).
    """
    opts = _Options(
        batch_size, max_length, skip_bos, skip_first, dtype, progress, mode, shard_bytes, metadata
    )
    (m_s, t_s, l_s), (m_t, t_t, l_t) = source, target
    if not isinstance(where, str):
        raise CollectError(
            f"collect_pair reads one hook point in each model; pass where='...', not {where!r}"
        )
    src, tgt = _Side(m_s, t_s, [l_s], [where]), _Side(m_t, t_t, [l_t], [where])
    shared = same_tokenizer(t_s, t_t)
    docs = documents(texts)
    if not shared:
        for tok in (t_s, t_t):
            if not getattr(tok, "is_fast", False):
                raise CollectError(
                    f"{type(tok).__name__} gives no character offsets, which pairing two tokenizers needs; "
                    "load the fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))"
                )
        if any(not isinstance(d, str) for d in docs):
            raise CollectError(
                "chat conversations render differently under two tokenizers' templates, so their "
                "tokens cannot be paired by characters; pass plain strings for cross-tokenizer pairs"
            )
    settings = {
        "kind": "pair",
        "source": src.provenance(),
        "target": tgt.provenance(),
        "models": [model_name(m_s), model_name(m_t)],
        "layers": [src.layers[0], tgt.layers[0]],
        "where": where,
        "same_start": same_start,
        "shared_tokenizer": shared,
    }
    run = _Run(
        docs,
        path,
        {"source": src.width, "target": tgt.width},
        ["doc", "source_pos", "target_pos", "source_token_id", "target_token_id"],
        settings,
        "target_pos",
        opts,
    )
    run.open()
    counts = _previous_counts(run, tgt, max_length, opts, shared)

    def step(doc_ids: list[int]) -> _Batch:
        batch = [run.docs[i] for i in doc_ids]
        enc_s = src.encode(batch, max_length, offsets=not shared)
        enc_t = tgt.encode(batch, max_length, offsets=not shared)
        flat_s, starts_s = src.forward(enc_s)
        flat_t, starts_t = tgt.forward(enc_t)
        i_s, i_t = [], []
        cols: dict[str, list[Any]] = {c: [] for c in run.columns}
        for doc, es, et, a, b in zip(doc_ids, enc_s, enc_t, starts_s, starts_t, strict=True):
            first_s, first_t = src.first_kept(es, opts), tgt.first_kept(et, opts)
            ps, pt = pair_positions(
                len(es.ids), len(et.ids), es.offsets, et.offsets, shared=shared, first=(first_s, first_t)
            )
            counts["target_tokens"] += pairable(len(et.ids), et.offsets, first_t)
            keep = pt >= run.keep_from(doc, first_t)
            ps, pt = ps[keep], pt[keep]
            i_s.append(a + ps)
            i_t.append(b + pt)
            cols["doc"].append(np.full(len(pt), doc, dtype=np.int64))
            cols["source_pos"].append(ps)
            cols["target_pos"].append(pt)
            cols["source_token_id"].append(es.ids[ps])
            cols["target_token_id"].append(et.ids[pt])
        idx_t = np.concatenate(i_t)
        counts["paired"] += len(idx_t)
        return _Batch(
            {
                "source": (flat_s[src.points[0]], np.concatenate(i_s)),
                "target": (flat_t[tgt.points[0]], idx_t),
            },
            cols,
            sum(len(e.ids) for e in enc_s) + sum(len(e.ids) for e in enc_t),
            sum(e.truncated for e in enc_s) + sum(e.truncated for e in enc_t),
        )

    truncated = run.run_batches(
        f"collect {model_name(m_s)} -> {model_name(m_t)}",
        step,
        lambda: f", aligned {counts['paired'] / max(counts['target_tokens'], 1):.1%}",
    )
    rate = counts["paired"] / max(counts["target_tokens"], 1)
    return run.finish(truncated, {"alignment_rate": rate, "alignment": counts})


def _previous_counts(run: _Run, tgt: _Side, max_length: int, opts: _Options, shared: bool) -> dict[str, int]:
    """Alignment counts of the texts finished before a resume: paired = their committed rows,
    target tokens re-counted by tokenizing them (no forward pass)."""
    counts = {"paired": 0, "target_tokens": 0}
    if run.resume is None:
        return counts
    done = run.docs[run.first_doc : run.resume[0]]
    for k in range(0, len(done), 64):
        for enc in tgt.encode(done[k : k + 64], max_length, offsets=not shared):
            counts["target_tokens"] += pairable(len(enc.ids), enc.offsets, tgt.first_kept(enc, opts))
    # Every committed row is a pair of a finished text or of the resumed one, whose target
    # tokens (and remaining pairs) the collection loop counts.
    counts["paired"] = run.writer.committed_rows
    return counts


def _index_tensor(idx: npt.NDArray[np.int64], device: torch.device) -> Tensor:
    import torch

    return torch.from_numpy(idx).to(device, non_blocking=True)
