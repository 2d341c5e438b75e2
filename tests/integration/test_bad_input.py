"""Bad input, one row each: the error names the problem, the place and the fix, and nothing is written over.

The table is the issue's list (malformed YAML, unknown keys, wrong types/ranges, inconsistent settings, missing
files, missing/empty columns, long prompts, rewards that raise/hang/return NaN or the wrong length/type,
modifiers that return a wrong shape or NaN, unknown plugins, a run directory holding another run)."""

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from rltune.config.load import RecipeError, load_recipe, recipe_from_dict
from rltune.trainer import Trainer
from tests.conftest import ROOT, TINY, merge

REWARDS = textwrap.dedent('''
    import math, time
    def raises(completions, **kw):
        return [1.0 / 0 if len(c) > 1 else 0.0 for c in completions]
    def hangs(completions, **kw):
        time.sleep(30)
    def nan(completions, **kw):
        return [math.nan] * len(completions)
    def short(completions, **kw):
        return [0.0] * (len(completions) - 1)
    def text(completions, **kw):
        return ["good"] * len(completions)
''')
MODIFIERS = textwrap.dedent('''
    import torch
    from rltune.modifiers import Modifier
    class WrongShape(Modifier):
        def shape_advantages(self, adv, ctx):
            return adv[:, :1]
    class MakesNaN(Modifier):
        def shape_rewards(self, rewards, ctx):
            return rewards * float("nan")
''')


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "bad_rewards.py").write_text(REWARDS)
    (tmp_path / "bad_mods.py").write_text(MODIFIERS)
    (tmp_path / "nocols.jsonl").write_text(json.dumps({"question": "1+1=", "answer": "2"}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "9" * 300 + "=", "answer": "1"}) + "\n")
    return tmp_path


def _case_recipe(p, tmp_path):
    return {
        "reward_raises": {"rewards": [{"use": f"{p}/bad_rewards.py:raises", "name": "acc"}]},
        "reward_hangs": {"rewards": [{"use": f"{p}/bad_rewards.py:hangs", "timeout_s": 0.5}]},
        "reward_nan": {"rewards": [{"use": f"{p}/bad_rewards.py:nan"}]},
        "reward_short": {"rewards": [{"use": f"{p}/bad_rewards.py:short"}]},
        "reward_type": {"rewards": [{"use": f"{p}/bad_rewards.py:text"}]},
        "mod_shape": {"modifiers": [{"use": f"{p}/bad_mods.py:WrongShape"}]},
        "mod_nan": {"modifiers": [{"use": f"{p}/bad_mods.py:MakesNaN"}]},
        "unknown_reward": {"rewards": [{"use": "exact_mach"}]},
        "unknown_modifier": {"modifiers": [{"use": "redditt"}]},
        "bad_reward_args": {"rewards": [{"use": "exact_match", "args": {"colum": "answer"}}]},
        "missing_data_file": {"data": {"source": f"{p}/nope.jsonl"}},
        "missing_columns": {"data": {"source": f"{p}/nocols.jsonl"}},
        "empty_dataset": {"data": {"source": f"{p}/empty.jsonl"}},
        "long_prompt": {"data": {"source": f"{p}/long.jsonl", "max_prompt_tokens": 64}},
        "unknown_task": {"data": {"source": "builtin:subtraction"}},
        "bad_task_args": {"data": {"task_args": {"digitz": 2}}},
        "missing_model": {"model": {"tiny": None, "path": f"{p}/no-model"}},
        "missing_sft": {"sft": {"output_dir": f"{p}/no-sft"}},
    }


EXPECTED = {
    "reward_raises": ["reward 'acc' raised ZeroDivisionError on sample", "prompt", "completion"],
    "reward_hangs": ["hangs", "0.5"],
    "reward_nan": ["nan", "sample 0"],
    "reward_short": ["returned 15 values for 16 completions"],
    "reward_type": ["text", "str"],
    "mod_shape": ["modifier 'wrongshape'", "shape_advantages", "shape"],
    "mod_nan": ["modifier 'makesnan'", "shape_rewards", "non-finite"],
    "unknown_reward": ["exact_mach", "exact_match"],
    "unknown_modifier": ["redditt", "redit"],
    "bad_reward_args": ["colum", "column"],
    "missing_data_file": ["data file not found", "nope.jsonl"],
    "missing_columns": ["no column(s) ['prompt']", "question", "data.prompt_column"],
    "empty_dataset": ["empty"],
    "long_prompt": ["tokens > data.max_prompt_tokens=64", "raise data.max_prompt_tokens"],
    "unknown_task": ["subtraction", "available: ['addition', "],
    "bad_task_args": ["digitz", "valid"],
    "missing_model": ["is not a folder", "no-model"],
    "missing_sft": ["rltune sft", "no-sft"],
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_input_is_named(case, plugin_dir, tiny_recipe, tmp_path):
    over = _case_recipe(plugin_dir, tmp_path)[case]
    with pytest.raises(Exception) as e:
        Trainer(tiny_recipe(**over)).fit()
    msg = str(e.value)
    for piece in EXPECTED[case]:
        assert piece.lower() in msg.lower(), (case, piece, msg)
    assert "Traceback" not in msg


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("run: {name: [x\n", ["malformed YAML at line"]),
        ("- just\n- a list\n", ["a recipe is a mapping"]),
        (yaml.safe_dump(merge(TINY, {"rollout": {"temperature": -1}})), ["rollout.temperature", "greater than 0"]),
        (yaml.safe_dump(merge(TINY, {"algo": {"clip_hihg": 0.3}})), ["did you mean 'clip_high'"]),
        (yaml.safe_dump(merge(TINY, {"train": {"micro_batch_size": 3}})), ["must divide the rollout batch"]),
    ],
)
def test_bad_recipe_files(tmp_path, text, pieces):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    for piece in pieces:
        assert piece in str(e.value)


def test_existing_run_is_not_overwritten(tiny_recipe):
    r = tiny_recipe(run={"steps": 1})
    t = Trainer(r)
    t.fit()
    before = (t.run_dir / "metrics.jsonl").read_text()
    with pytest.raises(Exception, match="already holds a run"):
        Trainer(r)
    assert (t.run_dir / "metrics.jsonl").read_text() == before


def test_tokenizer_without_pad_token_is_fixed(caplog, tmp_path):
    from rltune.config.schema import ModelConfig
    from rltune.models.policy import load_tokenizer
    from rltune.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tok")
    fixed = load_tokenizer(ModelConfig(tiny={}, tokenizer=str(tmp_path / "tok")))
    assert fixed.pad_token == fixed.eos_token
    assert "no pad token" in caplog.text


def test_cli_exits_nonzero_with_a_clean_message(plugin_dir, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(merge(TINY, {"run": {"output_dir": str(tmp_path / "run")},
                                             "data": {"source": f"{plugin_dir}/nocols.jsonl"}})))
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "train", str(p)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "DataError" in r.stderr and "no column(s)" in r.stderr and "Traceback" not in r.stderr


def test_nonfinite_steps_are_skipped_then_stop(tiny_recipe, tmp_path, monkeypatch):
    """A loss that turns inf: the step is skipped (weights untouched); max_skipped_steps in a row stop the run."""
    import torch

    import rltune.algo as algo
    from rltune.trainer import TrainingDivergedError

    t = Trainer(tiny_recipe(run={"steps": 6, "save_interval": 1}, train={"max_skipped_steps": 2}))
    real = algo.aggregate
    calls = {"n": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        return out * float("inf") if t.step >= 2 else out

    monkeypatch.setattr(algo, "aggregate", poisoned)
    with pytest.raises(TrainingDivergedError, match="2 steps in a row") as e:
        snapshot = {}

        orig_train_step = t.train_step

        def spy():
            if t.step == 2:
                snapshot.update({n: p.detach().clone() for n, p in t.model.named_parameters()})
            return orig_train_step()

        t.train_step = spy
        t.fit()
    # the checkpoint it names is intact and holds the weights from before the non-finite steps
    from rltune.train import checkpoint as ckpt

    named = ckpt.find_latest(t.ckpt_root)
    assert named is not None and named.name in str(e.value)
    assert all(torch.equal(snapshot[n], p) for n, p in t.model.named_parameters())
    rows = [json.loads(x) for x in (t.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("train/skipped_step") for r in rows if r["step"] in (3, 4)] == [1.0, 1.0]
