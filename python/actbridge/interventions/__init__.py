"""Interventions on a model's residual stream, as context managers that add hooks on enter and
remove them on exit.

- :mod:`actbridge.interventions.base`: :class:`Intervention` (hooks, the record of each call,
  positions), :func:`at_tokens`.
- :mod:`actbridge.interventions.vectors`: :class:`SteeringVector`, contrast directions,
  :func:`trigger_tokens`.
- :mod:`actbridge.interventions.steering`: ``steer`` (add a vector), ``ablate`` (project it out),
  ``directional_ablation`` (out of every residual write).
- :mod:`actbridge.interventions.orthogonalization`: :func:`orthogonalize` (that ablation baked into
  the weights).
- :mod:`actbridge.interventions.transfer`: :func:`transfer_vector` (a vector carried through a map).
- :mod:`actbridge.interventions.replace`: substitution, patching, mean ablation, :class:`SafetySwitch`.
- :mod:`actbridge.interventions.interop`: llama.cpp control vectors (GGUF) to and from vectors.
- :mod:`actbridge.interventions.rowwise`: a different intervention per batch row in one pass.
"""

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

__all__ = [
    "Condition",
    "Intervention",
    "SafetySwitch",
    "SteeringVector",
    "SteeringVectors",
    "ablate",
    "at_tokens",
    "contrast_directions",
    "directional_ablation",
    "generate_conditions",
    "load_control_vector",
    "from_peer",
    "mean_ablate",
    "orthogonalize",
    "patch",
    "save_control_vector",
    "to_repeng",
    "to_steering_vectors",
    "steer",
    "steer_rows",
    "substitute",
    "transfer_vector",
    "trigger_tokens",
]
