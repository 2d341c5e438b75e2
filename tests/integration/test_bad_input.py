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


# ------------------------------------------------------------------------------------------------------------
# Issue 20 (hardening): each test names the case of the issue it covers. CLI cases assert exit code 2 and the
# message, and that no traceback reaches the user.
from typer.testing import CliRunner  # noqa: E402

from rltune.cli import app  # noqa: E402
from rltune.train import checkpoint as ckpt  # noqa: E402
from rltune.train import rundir  # noqa: E402


def _cli(*args):
    """(exit code, output with whitespace collapsed: rich wraps long lines at the console width)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    out = " ".join(res.output.split())
    assert "Traceback" not in res.output, res.output
    if res.exit_code not in (0, 2):  # an unexpected exception: show it
        raise AssertionError(f"exit {res.exit_code}: {res.output}\n{res.exception!r}")
    return res.exit_code, out


def _write(tmp_path, over=None, name="r.yaml", run="run"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(merge(TINY, merge({"run": {"output_dir": str(tmp_path / run), "steps": 1}},
                                                 over or {}))))
    return p


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name rewards by paths relative to the repository


# --- Data loss and corruption: "--overwrite deletes the run directory before the recipe's inputs are checked"
def test_overwrite_keeps_the_old_run_when_the_recipe_has_a_typo(tmp_path, at_root):
    recipe = _write(tmp_path)
    assert _cli("train", recipe)[0] == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    typo = _write(tmp_path, {"data": {"source": str(tmp_path / "trian.jsonl")}}, name="typo.yaml")
    code, out = _cli("train", typo, "--overwrite")
    assert code == 2 and "data file not found" in out and "trian.jsonl" in out
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # old run intact
    assert (tmp_path / "run" / "checkpoints").is_dir()
    # a good recipe does start over (and the new run is a new run: one step logged, not two)
    assert _cli("train", recipe, "--overwrite")[0] == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(1) == 1


# --- Data loss: "--overwrite deletes any folder that holds a metrics.jsonl" (a folder of the user's)
def test_overwrite_refuses_a_folder_rltune_did_not_create(tmp_path, at_root):
    mine = tmp_path / "my_results"
    mine.mkdir()
    (mine / "metrics.jsonl").write_text('{"step": 1}\n')
    (mine / "thesis.tex").write_text("precious")
    code, out = _cli("train", _write(tmp_path, run="my_results"), "--overwrite")
    assert code == 2 and "not created by rltune" in out and "run.output_dir" in out
    assert (mine / "thesis.tex").read_text() == "precious" and (mine / "metrics.jsonl").is_file()
    assert not (mine / rundir.MARKER).exists()


# --- Data loss: "two `rltune train` on one run dir at once ... there is no lock"
def test_second_trainer_on_a_run_dir_exits_2_naming_the_holder(tmp_path, at_root):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from rltune.train.rundir import RunLock; "
         "RunLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)", str(run)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        recipe = _write(tmp_path)
        code, out = _cli("train", recipe)
        assert code == 2 and f"in use by another rltune process (pid {holder.pid})" in out
        code, out = _cli("train", recipe, "--overwrite")
        assert code == 2 and f"pid {holder.pid}" in out
    finally:
        holder.kill()  # SIGKILL: the kernel drops a dead holder's flock
        holder.wait()
    assert _cli("train", recipe)[0] == 0  # the crashed holder left no stale lock behind
    assert (run / rundir.LOCK).read_text().strip() != str(holder.pid)


# --- Data loss: "`_prune` matches temp dirs by a pid substring"
def test_prune_removes_leftovers_by_exact_name_not_pid_substring(tmp_path):
    import os

    root = tmp_path / "checkpoints"
    root.mkdir()
    # the old rule kept any temp folder whose name contained this pid as a substring (here: pid followed by 7)
    leftover = root / f".tmp-step_000001-{os.getpid()}7"
    old_swap = root / ".old-step_000002-12"
    notes = root / ".tmp-step_notes"  # not our naming: left alone
    for d in (leftover, old_swap, notes):
        d.mkdir()
    ckpt.save_checkpoint(root, 3, lambda p: p.mkdir(), {"x": 1}, keep_last=2)
    assert not leftover.exists() and not old_swap.exists() and notes.is_dir()
    assert (root / "step_000003").is_dir()


# --- Data loss: "`--resume` with a changed recipe is accepted silently, and recipe.yaml is overwritten"
def test_resume_refuses_a_changed_model_size_and_lists_it(tmp_path, at_root):
    assert _cli("train", _write(tmp_path))[0] == 0
    saved = (tmp_path / "run" / "recipe.yaml").read_text()
    bigger = _write(tmp_path, {"model": {"tiny": {"hidden_size": 64}}, "data": {"task_args": {"digits": 2}}},
                    name="bigger.yaml")
    code, out = _cli("train", bigger, "--resume", "--allow-changes")
    assert code == 2 and "model.tiny.hidden_size: 32 -> 64 (not allowed)" in out
    assert "data.task_args.digits: 1 -> 2 (not allowed)" in out and "start a new run" in out
    assert (tmp_path / "run" / "recipe.yaml").read_text() == saved


# --- Data loss: resume with a safe change: refused without --allow-changes, then recorded as a new history entry
def test_resume_allow_changes_records_history(tmp_path, at_root):
    assert _cli("train", _write(tmp_path))[0] == 0
    longer = _write(tmp_path, {"run": {"steps": 2}}, name="longer.yaml")
    code, out = _cli("train", longer, "--resume")
    assert code == 2 and "run.steps: 1 -> 2" in out and "--allow-changes" in out
    assert _cli("train", longer, "--resume", "--allow-changes")[0] == 0
    hist = [json.loads(x) for x in (tmp_path / "run" / rundir.HISTORY).read_text().splitlines()]
    assert [(h["event"], h["step"]) for h in hist] == [("start", 0), ("resume", 1)]
    assert hist[0]["recipe"]["run"]["steps"] == 1  # the earlier record is kept as it was
    assert hist[1]["changes"] == {"run.steps": {"from": 1, "to": 2}}
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["run"]["steps"] == 2


# --- Silent misconfiguration: "duplicate keys in a recipe (a second `train:` block) silently replace the first"
def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(yaml.safe_dump(TINY, sort_keys=False) + "train:\n  lr: 0.1\n")
    first = next(i for i, line in enumerate(p.read_text().splitlines(), 1) if line.startswith("train:"))
    last = len(p.read_text().splitlines()) - 1
    code, out = _cli("validate", p)
    assert code == 2 and f"duplicate key 'train' at lines {first} and {last}" in out
    nested = tmp_path / "nested.yaml"
    nested.write_text("run:\n  steps: 1\n  steps: 2\n")
    with pytest.raises(RecipeError, match="duplicate key 'steps' at lines 2 and 3"):
        load_recipe(nested)


# --- Silent misconfiguration: "samples_per_prompt=1 with a group-relative advantage trains with zero gradient"
@pytest.mark.parametrize("adv", ["group_norm", "group_mean", "rloo", "reinforce_pp_baseline"])
def test_group_of_one_with_group_relative_advantage_fails_validate(tmp_path, adv):
    code, out = _cli("validate", _write(tmp_path, {"rollout": {"samples_per_prompt": 1}, "algo": {"advantage": adv},
                                                   "train": {"micro_batch_size": 4}}))
    assert code == 2 and f"algo.advantage={adv}" in out and "samples_per_prompt >= 2" in out
    # reinforce_pp whitens over the batch, not the group: a group of one is legitimate there
    ok = _write(tmp_path, {"rollout": {"samples_per_prompt": 1}, "algo": {"advantage": "reinforce_pp"},
                           "train": {"micro_batch_size": 4}}, name="ok.yaml")
    assert _cli("validate", ok)[0] == 0


# --- Silent misconfiguration: "`train.lr=inf` passes the schema and crashes" (non-finite numbers anywhere)
@pytest.mark.parametrize("override, key", [("train.lr=inf", "train.lr"), ("algo.clip_high=.nan", "algo.clip_high"),
                                           ("rewards.0.weight=-.inf", "rewards.0.weight"),
                                           ("algo.entropy_coef=nan", "algo.entropy_coef")])
def test_non_finite_numbers_fail(tmp_path, override, key):
    for cmd in ("show", "train"):
        code, out = _cli(cmd, _write(tmp_path), override)
        assert code == 2 and key in out and "finite" in out, out


# --- Silent misconfiguration: "`max_new_tokens` beyond the model's positions is accepted"
def test_max_new_tokens_beyond_positions_fails_validate(tmp_path):
    code, out = _cli("validate", _write(tmp_path, {"rollout": {"max_new_tokens": 32}}))  # tiny: 32 positions
    assert code == 2 and "rollout.max_new_tokens=32" in out and "32 positions" in out
    model = tmp_path / "model"  # a model.path folder: only its config.json is read at validate
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 16}))
    code, out = _cli("validate", _write(tmp_path, {"model": {"tiny": None, "path": str(model)},
                                                   "rollout": {"max_new_tokens": 20}}, name="p.yaml"))
    assert code == 2 and "16 positions" in out


def test_prompt_plus_max_new_tokens_beyond_positions_fails_before_training(tmp_path, at_root):
    """Same case at `train`: the longest prompt is only known once the data is tokenized."""
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "1" * 30 + "=", "answer": "1"}) + "\n")
    code, out = _cli("train", _write(tmp_path, {"data": {"source": str(data)}}))
    assert code == 2 and "longest prompt (31 tokens) + rollout.max_new_tokens=4" in out and "32 positions" in out
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --- Silent misconfiguration: "`model.path` is silently ignored when an `sft:` section exists"
def test_model_path_with_sft_must_say_which_wins(tmp_path):
    over = {"model": {"tiny": None, "path": str(tmp_path / "base")}, "sft": {"output_dir": str(tmp_path / "sft")}}
    code, out = _cli("validate", _write(tmp_path, over))
    assert code == 2 and "model.start: sft" in out and "model.start: model" in out
    for start, from_sft in (("sft", True), ("model", False)):
        r = recipe_from_dict(merge(TINY, merge(over, {"model": {"start": start}})))
        assert r.starts_from_sft is from_sft
    assert recipe_from_dict(merge(TINY, {"sft": {"output_dir": "x"}})).starts_from_sft  # tiny + sft: as before


# --- Silent misconfiguration: "the default `timeout_s` is none, so a hanging reward hangs the run"
def test_reward_timeout_has_a_stated_default():
    from rltune.config.schema import RewardSpec

    assert RewardSpec(use="exact_match").timeout_s == 60.0
    assert "| `timeout_s` | float (> 0) \\| null | `60.0` |" in (ROOT / "docs" / "recipe-reference.md").read_text()
    assert "60 s" in (ROOT / "docs" / "rewards.md").read_text()


EXITS = textwrap.dedent('''
    import os, sys
    def hard_exit(completions, **kw):
        os._exit(3)
    def soft_exit(completions, **kw):
        sys.exit(4)
    def huge(completions, **kw):
        return [1e300] * len(completions)
''')


# --- Silent misconfiguration: "a reward calling `os._exit` ends the run with no message and no checkpoint"
@pytest.mark.parametrize("fn, call, timeout", [("hard_exit", "os._exit(3)", None), ("hard_exit", "os._exit(3)", 5),
                                               ("soft_exit", "sys.exit(4)", None)])
def test_reward_that_exits_the_process_is_named(tmp_path, fn, call, timeout):
    (tmp_path / "exits.py").write_text(EXITS)
    over = {"rewards": [{"use": f"{tmp_path}/exits.py:{fn}", "name": "quitter", "timeout_s": timeout}],
            "run": {"steps": 2, "save_interval": 1}}
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "train", str(_write(tmp_path, over))], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    err = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stderr  # the trainer survived: exit 3/4 would be the reward's
    assert f"reward 'quitter' called {call}" in err and "Traceback" not in err
    # it fails in the step-0 evaluation: nothing saved yet; the message says so and how to keep checkpoints
    assert "The run stopped after 0 completed steps; no checkpoint was written yet (run.save_interval" in err


# --- Silent misconfiguration: "a reward returning 1e300 becomes inf in float32 after the finiteness check"
def test_reward_finite_in_float64_but_inf_in_float32_is_named(tmp_path):
    from rltune.reward import RewardError, RewardInput, RewardManager
    from rltune.config.schema import RewardSpec

    (tmp_path / "exits.py").write_text(EXITS)
    mgr = RewardManager([RewardSpec(use=f"{tmp_path}/exits.py:huge", name="big")])
    inp = RewardInput(prompts=["1+1="] * 2, completions=["2", "3"], completion_ids=[[1], [2]], meta={})
    with pytest.raises(RewardError, match=r"reward 'big' returned 1e\+300 at sample 0 .* inf in float32"):
        mgr(inp)
    # the weighted sum: two finite float32 values whose sum overflows
    (tmp_path / "sum.py").write_text("def a(completions, **kw):\n    return [3e38] * len(completions)\n")
    mgr = RewardManager([RewardSpec(use=f"{tmp_path}/sum.py:a", name="a"),
                         RewardSpec(use=f"{tmp_path}/sum.py:a", name="b")])
    with pytest.raises(RewardError, match=r"weighted sum of rewards \['a', 'b'\].*overflows float32"):
        mgr(inp)


# --- Raw tracebacks: "a recipe with invalid UTF-8" (every command that reads a recipe)
@pytest.mark.parametrize("cmd", [["train"], ["validate"], ["show"], ["sft"], ["eval", "--checkpoint", "x"]])
def test_invalid_utf8_recipe_exits_2(tmp_path, cmd):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(yaml.safe_dump(TINY).encode() + b"# caf\xe9\n")
    code, out = _cli(*cmd, p)
    assert code == 2 and "not UTF-8 text" in out and "save the recipe as UTF-8" in out


# --- Raw tracebacks: "an override value that is bad YAML or carries a `!!python` tag"
@pytest.mark.parametrize("cmd", [["train"], ["show"], ["sft"], ["eval", "--checkpoint", "x"]])
def test_bad_override_values_exit_2_and_run_nothing(tmp_path, cmd):
    marker = tmp_path / "pwned"
    p = _write(tmp_path)
    code, out = _cli(*cmd, p, "algo.kl_coef=[0.1")
    assert code == 2 and "override 'algo.kl_coef=[0.1'" in out and "malformed YAML" in out
    code, out = _cli(*cmd, p, f"run.name=!!python/object/apply:os.system ['touch {marker}']")
    assert code == 2 and "tags that build Python objects are not allowed" in out
    assert not marker.exists()
    # the key side, as a careless user types it: a value treated as a section, a list index past the end
    code, out = _cli(*cmd, p, "run.steps.x=1")
    assert code == 2 and "run.steps is a value (1), not a section" in out
    code, out = _cli(*cmd, p, "rewards.3.use=exact_match")
    assert code == 2 and "index 3 is past the end of a list of 1" in out
    code, out = _cli(*cmd, p, "run..steps=3")
    assert code == 2 and "the key must be dotted names" in out


# --- Raw tracebacks: "`run.output_dir` that is a file or cannot be created"
def test_output_dir_that_is_a_file_or_cannot_be_created(tmp_path, at_root):
    import os

    f = tmp_path / "afile"
    f.write_text("x")
    code, out = _cli("train", _write(tmp_path, run="afile"))
    assert code == 2 and "is a file, not a folder" in out and f.read_text() == "x"
    code, out = _cli("train", _write(tmp_path, run="afile/sub"))
    assert code == 2 and "cannot create or write the run directory" in out and "run.output_dir" in out
    code, out = _cli("sft", _write(tmp_path, {"sft": {"output_dir": str(f)}}))  # the same for `rltune sft`
    assert code == 2 and "sft.output_dir" in out and "is a file, not a folder" in out and f.read_text() == "x"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        code, out = _cli("train", _write(tmp_path, run="ro"))
        assert code == 2 and "Permission denied" in out and "run.output_dir" in out


# --- Raw tracebacks: "`rltune validate` exits 1 for a bad recipe where train/show exit 2"
def test_validate_exits_2_like_train_and_show(tmp_path):
    p = _write(tmp_path, {"algo": {"kl_coeff": 0.1}})
    for cmd in ("validate", "show", "train"):
        code, out = _cli(cmd, p)
        assert code == 2 and "did you mean 'kl_coef'" in out, cmd


# --- Raw tracebacks: "jsonl lines that are not objects give a vague datasets error"
@pytest.mark.parametrize("line, what", [('["1+1=", "2"]', "a JSON list, not an object"),
                                        ('"1+1="', "a JSON str, not an object"),
                                        ('{"prompt": "1+1=", ', "not valid JSON")])
def test_jsonl_line_that_is_not_an_object(tmp_path, at_root, line, what):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n\n" + line + "\n")
    code, out = _cli("train", _write(tmp_path, {"data": {"source": str(data)}}))
    assert code == 2 and f"{data}, line 3: {what}" in out and "one JSON object" in out


# --- Raw tracebacks (every user error in `eval`): a --checkpoint that is not a model folder
def test_eval_checkpoint_that_is_not_a_model_folder(tmp_path, at_root):
    recipe = _write(tmp_path)
    code, out = _cli("eval", recipe, "--checkpoint", tmp_path / "nope")
    assert code == 2 and "not a model folder (no config.json)" in out
    assert not (tmp_path / "nope").exists()  # nothing created at the user's path
    assert _cli("train", recipe)[0] == 0
    final = tmp_path / "run" / "final"
    before = sorted(p.name for p in final.iterdir())
    code, out = _cli("eval", recipe, "--checkpoint", final)
    assert code == 0 and "eval/accuracy" in out
    assert sorted(p.name for p in final.iterdir()) == before  # the scratch run lives outside the model folder


# --- Data loss (careless user): --resume and --overwrite together; an empty folder of the user's is fine to use
def test_resume_and_overwrite_together_are_refused(tmp_path, at_root):
    recipe = _write(tmp_path)
    code, out = _cli("train", recipe, "--resume")  # nothing to resume: no folder is left behind either
    assert code == 2 and "there is no run directory" in out and not (tmp_path / "run").exists()
    assert _cli("train", recipe)[0] == 0
    code, out = _cli("train", recipe, "--resume", "--overwrite")
    assert code == 2 and "pass one of them" in out
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_empty_user_folder_becomes_a_run_dir_and_can_be_overwritten(tmp_path, at_root):
    (tmp_path / "run").mkdir()  # e.g. made by a job script
    recipe = _write(tmp_path)
    assert _cli("train", recipe)[0] == 0 and (tmp_path / "run" / rundir.MARKER).is_file()
    assert _cli("train", recipe, "--overwrite")[0] == 0


# --- Data loss: the resume check still holds when recipe.yaml was deleted (the history's last entry is used)
def test_resume_check_falls_back_to_the_history(tmp_path, at_root):
    assert _cli("train", _write(tmp_path))[0] == 0
    (tmp_path / "run" / "recipe.yaml").unlink()
    code, out = _cli("train", _write(tmp_path, {"train": {"micro_batch_size": 4}}, name="b.yaml"), "--resume")
    assert code == 2 and "train.micro_batch_size: 8 -> 4 (not allowed)" in out


def test_reward_that_exits_mid_run_leaves_a_named_checkpoint_to_resume(tmp_path):
    """Same case after some steps: the run stops naming the reward and the checkpoint `--resume` starts from."""
    (tmp_path / "late.py").write_text(textwrap.dedent('''
        import os
        def late_exit(inp):
            if inp.step >= 1:
                os._exit(3)
            return [0.5] * len(inp.completions)
    '''))
    over = {"rewards": [{"use": f"{tmp_path}/late.py:late_exit", "name": "late"}],
            "run": {"steps": 3, "save_interval": 1}}
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "train", str(_write(tmp_path, over))], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and "reward 'late' called os._exit(3)" in err, r.stderr
    assert "stopped after 1 completed steps; the last checkpoint is" in err and "step_000001" in err
    assert ckpt.find_latest(tmp_path / "run" / "checkpoints").name == "step_000001"
