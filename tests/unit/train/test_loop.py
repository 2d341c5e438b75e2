"""RunLoop (rltune/train/loop.py), the outer loop every trainer shares, driven by a counting stand-in trainer:
evaluation and checkpoint cadence, the divergence stop and a signal stop (no model, no data)."""

from __future__ import annotations

import pytest

from rltune.logging import read_metrics
from rltune.train import checkpoint as ckpt
from rltune.train.loop import RunLoop, TrainingDivergedError
from rltune.watchdog import Watchdog


class Counting(RunLoop):
    """Steps log `loss/total` = step; evaluation logs `eval/accuracy` = step / 10; `skip` makes steps non-finite."""

    def __init__(self, *a, skip: bool = False, stop_at: int | None = None, **kw):
        self.skip, self.stop_at, self.evals = skip, stop_at, []
        super().__init__(*a, **kw)

    def _build(self, resume_from):
        self.watchdog = Watchdog(0, self.run_dir)
        if resume_from is not None:
            self.step = ckpt.load_state(resume_from)["step"]

    def train_step(self):
        if self.stop_at is not None and self.step + 1 == self.stop_at:
            self._stop_signal = "SIGTERM"
        return {"loss/total": float(self.step), **({"train/skipped_step": 1.0} if self.skip else {})}

    def evaluate(self):
        self.evals.append(self.step)
        return {"eval/accuracy": self.step / 10}

    def _has_eval(self):
        return True

    def _save_model(self, path):
        path.mkdir()
        (path / "weights.txt").write_text(str(self.step))

    def export(self, out):
        out.mkdir()

    def state_dict(self):
        return {"step": self.step}


@pytest.mark.parametrize("interval,evals", [(None, [0, 4]), (0, []), (2, [0, 2, 4]), (3, [0, 3, 4])])
def test_evaluation_cadence(tiny_recipe, interval, evals) -> None:
    t = Counting(tiny_recipe(run={"steps": 4, "eval_interval": interval}))
    t.fit()
    assert t.evals == evals
    assert t.best == ((0.4, 4) if evals else None)


def test_checkpoint_cadence_and_final_export(tiny_recipe) -> None:
    t = Counting(tiny_recipe(run={"steps": 5, "save_interval": 2, "keep_last": 3}))
    t.fit()
    assert sorted(p.name for p in t.ckpt_root.glob("step_*")) == ["step_000002", "step_000004", "step_000005"]
    assert (t.run_dir / "final").is_dir() and t.stopped_by is None
    assert [m["loss/total"] for m in read_metrics(t.run_dir) if "loss/total" in m] == [0, 1, 2, 3, 4]


def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resumes(tiny_recipe) -> None:
    r = tiny_recipe(run={"steps": 5})
    t = Counting(r, stop_at=2)
    t.fit()
    assert t.stopped_by == "SIGTERM" and t.step == 2 and not (t.run_dir / "final").exists()
    assert ckpt.find_latest(t.ckpt_root).name == "step_000002"
    again = Counting(r, resume=True)
    assert again.step == 2
    again.fit()
    assert again.step == 5 and (again.run_dir / "final").is_dir()


def test_too_many_skipped_steps_in_a_row_stop_the_run(tiny_recipe) -> None:
    t = Counting(tiny_recipe(run={"steps": 50}, train={"max_skipped_steps": 3}), skip=True)
    with pytest.raises(TrainingDivergedError, match="3 steps in a row"):
        t.fit()
    assert t.step == 3
