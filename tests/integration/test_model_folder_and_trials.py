"""A newcomer's first run with a real model folder (issue 22) and `validate` with overrides (issue 21): the model
folder is checked before any weights load (exit 2 naming the folder and what it lacks), `show` names the tokenizer
really used, `run.eval_interval: 0` turns evaluation off, and `run.save_final` / `run.checkpoint_optimizer` keep a
trial run cheap."""

import subprocess
import sys

import pytest
import yaml

from rltune.config.load import recipe_from_dict
from rltune.logging import read_metrics
from rltune.train import checkpoint as ckpt
from rltune.trainer import Trainer
from tests.conftest import ROOT, TINY, merge
from tests.helpers.cli import run_cli as _cli


def _cli_subprocess(*args):
    return subprocess.run([sys.executable, "-m", "rltune.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model saved as save_pretrained writes it: config.json, model.safetensors, tokenizer files."""
    from rltune.config.schema import ModelConfig
    from rltune.models.policy import load_policy

    d = tmp_path_factory.mktemp("m") / "tiny-model"
    model, tok = load_policy(ModelConfig(tiny=TINY["model"]["tiny"]), seed=0)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _recipe_file(tmp_path, model: dict, **over) -> str:
    raw = merge(TINY, {"run": {"output_dir": str(tmp_path / "run")}, **over})
    raw["model"] = model
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def test_a_folder_without_config_fails_validate_and_train_cleanly(tmp_path, model_dir):
    bare = tmp_path / "weights-only"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    recipe = _recipe_file(tmp_path, {"path": str(bare)})
    for cmd in (("validate", recipe), ("train", recipe)):
        r = _cli_subprocess(*cmd)  # as a user runs it: no traceback on the terminal
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        text = r.stdout + r.stderr
        assert str(bare) in text and "no config.json" in text and "model.safetensors" in text, text
        assert "Traceback" not in text and "model_type" not in text


def test_a_folder_without_tokenizer_or_weights_is_named(tmp_path, model_dir):
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((model_dir / f).read_bytes())
    r = _cli("validate", _recipe_file(tmp_path, {"path": str(no_tok)}))
    assert r.returncode == 2 and "holds no tokenizer" in r.stdout and str(no_tok) in r.stdout, r.stdout
    (no_tok / "model.safetensors").unlink()
    r = _cli("validate", _recipe_file(tmp_path, {"path": str(no_tok), "tokenizer": str(model_dir)}))
    assert r.returncode == 2 and "no weights" in r.stdout, r.stdout
    # The same folder check, skipped on request (recipes whose models live on another machine).
    r = _cli("validate", "--no-model-check", _recipe_file(tmp_path, {"path": str(no_tok)}))
    assert r.returncode == 0, r.stdout + r.stderr


def test_validate_applies_overrides_like_train(tmp_path, model_dir):
    recipe = _recipe_file(tmp_path, TINY["model"])
    assert _cli("validate", recipe, "algo.kl_coef=0.1").returncode == 0
    r = _cli("validate", recipe, "algo.kl_coef=-1")
    assert r.returncode == 2 and "algo.kl_coef" in r.stdout and "not found" not in r.stdout, r.stdout
    # An override can point the recipe at a model folder, and the folder check sees it.
    r = _cli("validate", recipe, "model.tiny=null", f"model.path={tmp_path}/nowhere")
    assert r.returncode == 2 and "nowhere" in r.stdout and "is not a folder" in r.stdout, r.stdout
    assert _cli("validate", recipe, "model.tiny=null", f"model.path={model_dir}").returncode == 0
    # Several recipes without overrides still work; no recipe at all is a usage error.
    r = _cli("validate", recipe, recipe)
    assert r.returncode == 0 and r.stdout.count("ok") == 2, r.stdout
    assert _cli("validate", "algo.kl_coef=0.1").returncode == 2


def test_show_names_the_tokenizer_really_used(tmp_path, model_dir):
    r = _cli("show", _recipe_file(tmp_path, {"path": str(model_dir)}))
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout.split("# derived")[0])["model"]["tokenizer"] == str(model_dir)
    r = _cli("show", _recipe_file(tmp_path, TINY["model"]))
    assert yaml.safe_load(r.stdout.split("# derived")[0])["model"]["tokenizer"] == "char"
    # ... and that tokenizer is the one loaded: the folder's own (its vocabulary and special tokens).
    t = Trainer(recipe_from_dict(merge(TINY, {"run": {"output_dir": str(tmp_path / "tok-run")},
                                              "model": {"tiny": None, "path": str(model_dir)}})))
    assert t.tok.name_or_path == str(model_dir)


def _trainer(tmp_path, name, **run):
    raw = merge(TINY, {"run": {"output_dir": str(tmp_path / name), **run}})
    return Trainer(recipe_from_dict(raw))


def test_eval_interval_zero_turns_evaluation_off(tmp_path):
    t = _trainer(tmp_path, "off", eval_interval=0)
    t.fit()
    assert not [m for m in read_metrics(t.run_dir) if "eval/accuracy" in m]
    t = _trainer(tmp_path, "default")  # None: at the start and the end only
    t.fit()
    assert [m["step"] for m in read_metrics(t.run_dir) if "eval/accuracy" in m] == [0, 2]
    t = _trainer(tmp_path, "every", eval_interval=1, steps=3)
    t.fit()
    assert [m["step"] for m in read_metrics(t.run_dir) if "eval/accuracy" in m] == [0, 1, 2, 3]


def test_save_final_false_writes_no_weights(tmp_path):
    t = _trainer(tmp_path, "trial", save_final=False, eval_interval=0)
    t.fit()
    assert (t.run_dir / "metrics.jsonl").is_file()
    assert not (t.run_dir / "final").exists() and not (t.run_dir / "checkpoints").exists()


def test_checkpoint_without_optimizer_moments_is_smaller_and_resumes(tmp_path):
    full = _trainer(tmp_path, "full", eval_interval=0)
    full.fit()
    lean = _trainer(tmp_path, "lean", eval_interval=0, checkpoint_optimizer=False)
    lean.fit()
    sd_full = ckpt.load_state(full.ckpt_root / "step_000002")
    sd_lean = ckpt.load_state(lean.ckpt_root / "step_000002")
    n_params = sum(p.numel() for p in full.model.parameters())
    moments = sd_full["engine"]["optimizer"]["state"]
    assert sum(v["exp_avg"].numel() + v["exp_avg_sq"].numel() for v in moments.values()) == 2 * n_params
    assert sd_lean["engine"]["optimizer"]["state"] == {}
    assert sd_lean["engine"]["optimizer"]["param_groups"] == sd_full["engine"]["optimizer"]["param_groups"]
    size = lambda run: (run.ckpt_root / "step_000002" / "state.safetensors").stat().st_size  # noqa: E731
    assert size(lean) < size(full) - 4 * n_params  # at least one fp32 copy of the weights smaller
    # Resume with more steps: the schedule position is kept, the moments restart.
    more = Trainer(recipe_from_dict(merge(TINY, {"run": {"output_dir": str(tmp_path / "lean"), "steps": 3,
                                                         "eval_interval": 0, "checkpoint_optimizer": False}})),
                   resume=True, allow_changes=True)
    assert more.step == 2 and more.engine.optimizer.state_dict()["state"] == {}
    more.fit()
    assert more.step == 3 and (more.run_dir / "final" / "config.json").is_file()
