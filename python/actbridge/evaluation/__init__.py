"""Measuring maps and interventions.

- :mod:`actbridge.evaluation.metrics`: :func:`evaluate_map` (FVU, cosine, R² over store rows) and
  :func:`evaluate_substitution` (KL, CE recovered with the map's output in the model).
- :mod:`actbridge.evaluation.generation`: batched greedy generation, ROUGE-L, comparisons.
- :mod:`actbridge.evaluation.sweep`: steering success per layer and strength against noise.
"""

from actbridge.evaluation.generation import compare_generations, rouge_l
from actbridge.evaluation.metrics import evaluate_map, evaluate_substitution

__all__ = ["compare_generations", "evaluate_map", "evaluate_substitution", "rouge_l"]
