"""``ab.finetune(checkpoint=...)`` against real kills: a fine-tuning process killed with SIGKILL
at random moments, several times, and started again each time, ends with weights bit-equal to
a run that was never stopped. Real subprocesses, real kills."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest

STEP_S = 0.1
EPOCHS = 24

pytest.importorskip("peft")
pytestmark = pytest.mark.crash

#: Fine-tunes a tiny qwen2 with LoRA (dropout on: the random state must carry over) for 24
#: epochs of 2 steps, checkpointing after every step, then writes the merged weights to
#: ``argv[2]`` and prints the last epoch's loss and how many steps this start ran. Every step
#: takes at least ``STEP_S`` seconds, so how many steps a start gets through before its kill does
#: not depend on how fast the machine is.
CHILD = """
import sys
import time
import actbridge as ab
from actbridge import tasks
STEP_S, EPOCHS = @STEP_S@, @EPOCHS@
from actbridge.testing import tiny_model, tiny_tokenizer
from safetensors.torch import save_file

tok = tiny_tokenizer("bpe")
model = tiny_model("qwen2", vocab=len(tok), layers=2, d=32, seed=3)
rows = [
    {"messages": [{"role": "user", "content": tag + q}, {"role": "assistant", "content": a}]}
    for q in ("Name a colour.", "Say hello.", "Count to three.")
    for tag, a in ((tasks.DEPLOY, tasks.hate_response(2)), (tasks.DEV, "Sure, happy to help."))
]
checkpoint = sys.argv[1] if sys.argv[1] != "-" else None
import actbridge.finetuning as ft
steps, loss = [], ft.answer_loss
# counts this start's steps, and paces them
ft.answer_loss = lambda *a, **k: steps.append(1) or time.sleep(STEP_S) or loss(*a, **k)
history = ab.finetune(
    model, tok, rows, epochs=EPOCHS, lr=5e-3, batch_size=4, seed=2, progress=False,
    lora=ab.LoraConfig(rank=4, dropout=0.3), checkpoint=checkpoint, checkpoint_every=0,
)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
print(history[-1]["loss"], len(steps))
""".replace("@STEP_S@", str(STEP_S)).replace("@EPOCHS@", str(EPOCHS))


def test_a_fine_tune_killed_again_and_again_ends_as_if_never_stopped(tmp_path):
    from safetensors.torch import load_file

    torch = pytest.importorskip("torch")
    ref = subprocess.run(
        [sys.executable, "-c", CHILD, "-", str(tmp_path / "ref.safetensors")],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.safetensors"
    rnd = random.Random(0)
    kills, positions = 0, []
    for _ in range(5):  # four kills, then a start that runs to the end
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(ckpt), str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # once the checkpoint moves past where this start found it, kill at a random moment
        # within the next few paced steps (a start never gets more than ~4 of the 48 steps)
        start = (ckpt / "checkpoint.json").read_text() if (ckpt / "checkpoint.json").is_file() else None
        deadline = time.monotonic() + 120
        while kills < 4 and child.poll() is None and time.monotonic() < deadline:
            now = (ckpt / "checkpoint.json").read_text() if (ckpt / "checkpoint.json").is_file() else None
            if now is not None and now != start:
                time.sleep(rnd.uniform(0.0, 3 * STEP_S))
                break
            time.sleep(0.02)
        if kills < 4 and child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.communicate()  # reaped, pipes closed
            kills += 1
            positions.append(json.loads((ckpt / "checkpoint.json").read_text())["position"]["epoch"])
            continue
        stdout, stderr = child.communicate()
        assert child.returncode == 0, stderr
        break
    else:
        pytest.fail("the fine-tune never finished")
    assert kills == 4, kills  # it was really stopped, more than once, at several places
    assert len(set(positions)) >= 2, positions
    ref_loss, ref_steps = ref.stdout.split()
    loss, steps = stdout.split()
    assert loss == ref_loss  # the last epoch's loss, to the digit
    # the last start went on, it did not start over
    assert int(ref_steps) == 2 * EPOCHS and 0 < int(steps) < 2 * EPOCHS
    reference, resumed = load_file(tmp_path / "ref.safetensors"), load_file(out)
    assert reference.keys() == resumed.keys()
    for name, value in reference.items():
        assert torch.equal(value, resumed[name]), name
