"""`kill -9` while checkpoints are being written never leaves the run without a valid latest checkpoint."""

import random

import pytest
import signal
import subprocess
import sys
import textwrap
import time

from rltune.train import checkpoint as ckpt
from tests.conftest import ROOT

WRITER = textwrap.dedent('''
    import sys, torch
    from pathlib import Path
    from rltune.config.schema import TinyModelConfig
    from rltune.models.policy import build_tiny_model
    from rltune.models.tokenizer import build_char_tokenizer
    from rltune.train import checkpoint as ckpt
    root = Path(sys.argv[1])
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                             build_char_tokenizer())
    found = ckpt.find_latest(root)
    step = ckpt.load_state(found)["step"] if found else 0
    print("ready", flush=True)
    while True:
        step += 1
        ckpt.save_checkpoint(root, step, model.save_pretrained, {"step": step, "blob": torch.randn(200_000)},
                             keep_last=2)
''')


@pytest.mark.slow
def test_kill9_during_writes_keeps_a_valid_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "ckpts"
    rng = random.Random(0)
    last_step = 0
    for _ in range(6):
        p = subprocess.Popen([sys.executable, str(script), str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        latest = ckpt.find_latest(root)
        assert latest is not None and ckpt.verify(latest)
        step = ckpt.load_state(latest)["step"]
        assert step >= last_step  # never goes back past a checkpoint that was complete
        last_step = step
    assert last_step > 0
