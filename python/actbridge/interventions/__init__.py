"""Interventions on a model's residual stream, as context managers that add hooks on enter and
remove them on exit.

- :mod:`actbridge.interventions.steering`: :class:`SteeringVector`, ``steer``, ``ablate``,
  contrast directions, :func:`transfer_vector` (a vector carried through a map).
- :mod:`actbridge.interventions.replace`: substitution, patching, mean ablation, :class:`SafetySwitch`.
- :mod:`actbridge.interventions.rowwise`: a different intervention per batch row in one pass.
"""

from actbridge.interventions.replace import SafetySwitch, mean_ablate, patch, substitute
from actbridge.interventions.rowwise import Condition, generate_conditions, steer_rows
from actbridge.interventions.steering import (
    Intervention,
    SteeringVector,
    ablate,
    at_tokens,
    contrast_directions,
    steer,
    transfer_vector,
    trigger_tokens,
)

__all__ = [
    "Condition",
    "Intervention",
    "SafetySwitch",
    "SteeringVector",
    "ablate",
    "at_tokens",
    "contrast_directions",
    "generate_conditions",
    "mean_ablate",
    "patch",
    "steer",
    "steer_rows",
    "substitute",
    "transfer_vector",
    "trigger_tokens",
]
