"""Every exception and warning actbridge raises, importable from one place (and re-exported at
the top level: ``ab.StoreError`` is ``actbridge.errors.StoreError``).

The hierarchy lets callers catch by origin or by kind::

    ActbridgeError
    ├── StoreError                      store operations (bad input, I/O, state)
    │   ├── StoreCorruptError           bytes that do not match the manifest
    │   ├── StoreArgumentError          also a ValueError: an argument out of range
    │   ├── StoreNotFoundError          also a FileNotFoundError: no store at the path
    │   └── StoreExistsError            also a FileExistsError: mode="x" on an existing path
    ├── MapError                        fitting, solving, saving, loading a map
    │   ├── MapArgumentError            also a ValueError
    │   └── MapCorruptError             saved files that fail their checksums
    ├── CollectError                    collection cannot run as asked
    ├── HookError                       blocks not found, layer out of range
    ├── ModelError                      a model that cannot be found or loaded
    ├── TextsError                      texts that cannot be collected on
    ├── InterventionError (SteerError)  also a ValueError: steering, ablation, substitution
    │   └── VectorCorruptError          a saved vector that fails its checks
    ├── EvaluateError                   also a ValueError: inconsistent evaluation arguments
    ├── FinetuneError                   examples or settings fine-tuning cannot use
    │   ├── LoraTargetError             also a ValueError
    │   ├── OutputExistsError           also a FileExistsError
    │   └── CheckpointMismatchError     a fine-tuning checkpoint written with other settings
    └── TaskError                       also a ValueError: a task asked for what it lacks
        ├── RefusalSplitError           prompt sets that overlap
        └── UnknownBackdoorError        also a KeyError

``ActbridgeError``, the ``Store*`` classes, ``MapError`` and ``MapArgumentError`` are made by the
native module (``actbridge._native``), which maps every core error onto them in one place; the
rest (``MapCorruptError`` included) are defined here.
"""

from __future__ import annotations

from actbridge._native import (
    ActbridgeError,
    MapArgumentError,
    MapError,
    StoreArgumentError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
)

__all__ = [
    "ActbridgeError",
    "CheckpointMismatchError",
    "CollectError",
    "CollectWarning",
    "DistributedError",
    "DistributedMismatchError",
    "EvaluateError",
    "FinetuneError",
    "HookError",
    "InterventionError",
    "LoraTargetError",
    "MapArgumentError",
    "MapCorruptError",
    "MapError",
    "MapWarning",
    "ModelError",
    "OutputExistsError",
    "RefusalSplitError",
    "SteerError",
    "StoreArgumentError",
    "StoreCorruptError",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "TaskError",
    "TextsError",
    "UnknownBackdoorError",
    "VectorCorruptError",
]


class MapCorruptError(MapError):
    """A saved map whose files do not match the checksums its config.json records (a flipped
    byte, a truncation, an edited file)."""


class MapWarning(UserWarning):
    """A fit succeeded but needed help (e.g. an automatic ridge for a singular system)."""


class CollectError(ActbridgeError):
    """Collection cannot run as asked (the message says how to fix it)."""


class CollectWarning(UserWarning):
    """Collection ran but changed the input (e.g. truncated long texts)."""


class HookError(ActbridgeError):
    """A model's blocks could not be found or a layer index is out of range."""


class ModelError(ActbridgeError):
    """A model could not be found or loaded (the message says which package or path to fix)."""


class TextsError(ActbridgeError):
    """Texts that cannot be collected on (empty, malformed, or of an unknown kind)."""


class InterventionError(ActbridgeError, ValueError):
    """An intervention (steering, ablation, substitution, patching, a safety switch) was asked
    for something it cannot do (the message says what to change)."""


#: The name this error had before substitution and patching shared it; kept for callers.
SteerError = InterventionError


class VectorCorruptError(InterventionError):
    """A saved steering vector whose files do not match their checksums, or hold a dtype,
    shape or values (NaN, inf) that no steering vector has."""


class DistributedError(ActbridgeError, RuntimeError):
    """A collective operation across torch.distributed ranks failed: a rank died, raised, or
    missed the process group's timeout (the message names the operation and the cause)."""


class DistributedMismatchError(DistributedError, ValueError):
    """The ranks of a process group were given different settings for one operation (the
    message lists what differs, rank by rank), detected before any data is reduced."""


class EvaluateError(ActbridgeError, ValueError):
    """An evaluation was asked for with inconsistent arguments (the message says which)."""


class FinetuneError(ActbridgeError):
    """Examples or settings the fine-tuning helper cannot use."""


class LoraTargetError(FinetuneError, ValueError):
    """LoRA target modules that the model does not have (the message lists the ones it has)."""


class OutputExistsError(FinetuneError, FileExistsError):
    """A save into a directory that already holds files (pass ``overwrite=True`` or a new path)."""


class CheckpointMismatchError(FinetuneError):
    """A fine-tuning checkpoint that another fine-tune wrote (other examples, settings or
    trainable parameters): resuming from it would mix two trainings. The message names what
    differs; pass the same settings, or remove the checkpoint directory to start over."""


class TaskError(ActbridgeError, ValueError):
    """A task was asked for something it does not have (a split, more prompts than it holds,
    candidates that do not match their references)."""


class RefusalSplitError(TaskError):
    """Two prompt sets that must be disjoint share a prompt, a twin pair, a topic or a
    near-duplicate (the message names them)."""


class UnknownBackdoorError(TaskError, KeyError):
    """A backdoor name that :func:`actbridge.tasks.backdoor` does not know."""
