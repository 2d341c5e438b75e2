"""`sft.stop_at_accuracy`: SFT stops at the first validation check that reaches the target, on rows held back
from the SFT data (the demo's warm start: the same starting level on every machine)."""

import json

import pytest

from rltune.config.load import recipe_from_dict
from rltune.sft import SFTError, run_sft
from tests.conftest import TINY, merge


def _recipe(tmp_path, n_rows: int, **sft):
    rows = [{"prompt": f"{i}=", "answer": "7"} for i in range(n_rows)]  # one answer: learnt in a few dozen steps
    (tmp_path / "sevens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return recipe_from_dict(merge(TINY, {
        "data": {"source": str(tmp_path / "sevens.jsonl"), "task_args": {}, "answer_column": "answer"},
        "rewards": [{"use": "exact_match", "args": {"column": "answer"}}],
        "sft": {"output_dir": str(tmp_path / "sft"), "steps": 300, "lr": 3e-3, "batch_size": 16,
                "warmup_steps": 0, **sft},
    }))


def test_sft_stops_at_the_first_check_that_reaches_the_target(tmp_path, capsys):
    r = _recipe(tmp_path, 120, stop_at_accuracy=0.9, val_examples=20, eval_every=5)
    res = run_sft(r, base_dir=tmp_path)
    checks = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sft step ")]
    accs = [float(line.split("validation accuracy ")[1].split()[0]) for line in checks]
    assert res["sft/reached_target"] is True and res["sft/val_accuracy"] >= 0.9
    assert res["sft/steps"] < 300 and res["sft/steps"] % 5 == 0
    assert len(accs) == res["sft/steps"] // 5  # one check every eval_every steps, the last one stopped it
    assert accs[-1] >= 0.9 and all(a < 0.9 for a in accs[:-1])


def test_sft_without_target_runs_all_steps_and_holds_nothing_back(tmp_path):
    r = _recipe(tmp_path, 40, steps=3)
    r = r.model_copy(update={"sft": r.sft.model_copy(update={"steps": 3})})
    res = run_sft(r, base_dir=tmp_path)
    assert res["sft/steps"] == 3 and "sft/val_accuracy" not in res


def test_validation_set_larger_than_the_data_is_refused(tmp_path):
    r = _recipe(tmp_path, 20, stop_at_accuracy=0.5, val_examples=20)
    with pytest.raises(SFTError, match="sft.val_examples=20 leaves no SFT rows"):
        run_sft(r, base_dir=tmp_path)
