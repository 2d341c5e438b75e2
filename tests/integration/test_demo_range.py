"""The README's demo (recipes/addition-tiny.yaml: SFT to the validation target, then GRPO) ends with a held-out
gain inside the range the README states (bench/demo_stability.py measured it over seeds and thread counts)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("demo_stability", ROOT / "bench/demo_stability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_demo_gain_is_inside_the_readme_range(tmp_path):
    bench = _bench()
    lo, hi, _ = bench.stated_range()
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", WANDB_MODE="disabled")
    ov = [f"run.output_dir={tmp_path}/run", f"sft.output_dir={tmp_path}/sft"]
    for cmd in (["sft", "recipes/addition-tiny.yaml", *ov], ["train", "recipes/addition-tiny.yaml", *ov]):
        res = subprocess.run([sys.executable, "-m", "rltune.cli", *cmd], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=1800)
        assert res.returncode == 0, res.stderr[-3000:]
    before, after = bench.gain_of(tmp_path / "run")
    assert lo <= after - before <= hi, (before, after, lo, hi)
    readme = (ROOT / "README.md").read_text()
    assert f"{lo:+.2f}" in readme and f"{hi:+.2f}" in readme  # the README states the range this test checks
