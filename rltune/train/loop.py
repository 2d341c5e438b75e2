"""`RunLoop`: the outer loop every trainer shares (text LMs in rltune/trainer.py, diffusion and VAR policies in
rltune/visual/), so that the run-directory rules, signals, evaluation cadence, divergence stop and checkpoints
behave alike whatever the policy.

    fit():  eval at step 0 -> [train_step -> divergence check -> eval -> log -> checkpoint] until run.steps or a
            signal -> checkpoint -> export to run_dir/final (complete run) or a "stopped" message (signal)

A trainer subclasses it and builds itself in `_build(resume_from)` (RunLoop.__init__ opens and locks the run
directory first, and releases the lock if the build fails), calls `_claim_run_dir` once its inputs are loaded
(only then does --overwrite delete the old run), creates `self.watchdog` last, and provides the hooks:
`train_step`, `evaluate`, `_has_eval`, `_save_model` (checkpoint weights), `export` (the final folder); optionally
`_watched_eval` and `_shutdown`. The step itself stays in each trainer, read top to bottom.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rltune.config.load import dump_recipe
from rltune.config.schema import Recipe
from rltune.logging import MetricLogger
from rltune.reward import RewardError
from rltune.train import checkpoint as ckpt
from rltune.train import rundir
from rltune.train.rundir import RunDirError  # noqa: F401 - re-exported (trainer, cli, visual trainers)
from rltune.watchdog import Watchdog


class TrainingDivergedError(RuntimeError):
    pass


class RunLoop:
    recipe: Recipe
    base_dir: Path
    run_dir: Path
    ckpt_root: Path
    step: int
    best: tuple[float, int] | None  # (best eval/accuracy, its step)
    watchdog: Watchdog
    logger: MetricLogger | None

    # The TrainingDivergedError text: what went non-finite, and what to try (each trainer has its own knobs).
    NONFINITE = "loss or gradient"
    DIVERGED_ADVICE = "Lower train.lr, set train.max_grad_norm, or check rewards/modifiers for inf"

    def __init__(self, recipe: Recipe, base_dir: str | Path = ".", resume: bool = False, overwrite: bool = False,
                 allow_changes: bool = False):
        resume_from = self._open_run(recipe, base_dir, resume, overwrite, allow_changes)
        try:
            if resume_from is not None:  # before anything reads it: a planted pickle must never be loaded
                ckpt.refuse_unexpected_pickles(resume_from)
            self._build(resume_from)
            self._claim_run_dir()
        except BaseException:
            self.release()
            raise

    # ------------------------------------------------------------------------------------------- hooks
    def _build(self, resume_from: Path | None) -> None:
        """Load the policy, rewards, modifiers and data (and the state of `resume_from`, when resuming)."""
        raise NotImplementedError

    def train_step(self) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics; `eval/accuracy` ranks the run's best step."""
        raise NotImplementedError

    def _has_eval(self) -> bool:
        raise NotImplementedError

    def _save_model(self, path: Path) -> None:
        """Write the weights a checkpoint resumes from into `path`."""
        raise NotImplementedError

    def export(self, out: Path) -> None:
        """Write the finished run's model to `out` (run_dir/final)."""
        raise NotImplementedError

    def _watched_eval(self) -> dict[str, float]:
        """evaluate() as fit() calls it; a trainer may run it under a watchdog phase (the text trainer does)."""
        return self.evaluate()

    def _shutdown(self) -> None:
        """Release what outlives the run (rollout workers, training ranks); after the logger and watchdog close."""

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train until run.steps or SIGINT/SIGTERM; returns the last step's metrics."""
        try:
            return self._fit()
        except RewardError as e:  # the user's reward failed: say what is left on disk and how to go on
            found = ckpt.find_latest(self.ckpt_root)
            left = (f"the last checkpoint is {found} (`--resume` continues from it once the reward is fixed)" if found
                    else "no checkpoint was written yet (run.save_interval: k writes one every k steps)")
            raise RewardError(f"{e}\nThe run stopped after {self.step} completed steps; {left}.") from e
        finally:
            self.release()

    def _fit(self) -> dict[str, Any]:
        r = self.recipe
        self.logger = MetricLogger(r.logging, self.run_dir, r.run.steps, r.model_dump(mode="json"), self.step,
                                   r.run.name)
        # recipe.yaml is the recipe in effect; recipe_history.jsonl keeps every start and resume (and its changes)
        ckpt.atomic_write_text(self.run_dir / "recipe.yaml", dump_recipe(r))
        rundir.record(self.run_dir, "resume" if self._resumed else "start", self.step, r.model_dump(mode="json"),
                      self._recipe_changes)
        last: dict[str, Any] = {}
        with self._signals():
            if self.step == 0 and self._eval_due():
                last = self._watched_eval()
                self.logger.log(0, last)
            while self.step < r.run.steps and self._stop_signal is None:
                last = self.train_step()
                self.step += 1
                self._check_diverged(last)
                if self._eval_due():
                    last |= self._watched_eval()
                    self._track_best(last)
                self.logger.log(self.step, last, samples=self._last_samples)
                if self.step % r.run.log_interval == 0 or self.step == r.run.steps:
                    self.logger.progress(self.step, last)
                if r.run.save_interval and self.step % r.run.save_interval == 0:
                    self.save_checkpoint()
            if self._stop_signal is not None:
                path = self.save_checkpoint()
                self.logger.print(f"[yellow]{self._stop_signal}: stopped after step {self.step}; saved {path}[/]",
                                  always=True)
            elif r.run.save_final:
                self.save_checkpoint()
                self.export(self.run_dir / "final")
        self.logger.close()
        self.watchdog.close()
        self._shutdown()
        return last

    @property
    def stopped_by(self) -> str | None:
        """The signal that stopped fit() early (a checkpoint was written), or None after a complete run."""
        return self._stop_signal

    def _eval_due(self) -> bool:
        """At step 0, every run.eval_interval steps and at the last step; never with run.eval_interval=0."""
        k, s = self.recipe.run.eval_interval, self.step
        if k == 0 or not self._has_eval():
            return False
        return s == 0 or s == self.recipe.run.steps or (k is not None and s % k == 0)

    def _check_diverged(self, metrics: dict[str, Any]) -> None:
        """Skipped steps (non-finite loss/grads) are counted; too many in a row stop the run. The last
        checkpoint on disk was written before the trouble, so it is left as it is."""
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if metrics.get("train/skipped_step") else 0
        limit = self.recipe.train.max_skipped_steps
        if self._skipped_in_a_row >= limit:
            self.logger.log(self.step, metrics)
            self.logger.close()
            self.watchdog.close()
            last = ckpt.find_latest(self.ckpt_root)
            raise TrainingDivergedError(
                f"{limit} steps in a row had a non-finite {self.NONFINITE} (last at step {self.step}); weights were "
                f"not updated by them. Last good checkpoint: {last or 'none'}. {self.DIVERGED_ADVICE}; then "
                "`--resume --allow-changes`."
            )

    def _track_best(self, metrics: dict[str, Any]) -> None:
        acc = metrics.get("eval/accuracy")
        if acc is not None and (self.best is None or acc > self.best[0]):
            self.best = (acc, self.step)

    @contextlib.contextmanager
    def _phase(self, timers: dict[str, float], key: str):
        """Time a phase (metric `key`) and let the watchdog know which phase is running."""
        with self.watchdog.watch(key), _timer(timers, key):
            yield

    # --------------------------------------------------------------------------------- run directory
    def _open_run(self, recipe: Recipe, base_dir: str | Path, resume: bool, overwrite: bool,
                  allow_changes: bool = False) -> Path | None:
        """The run directory (created and locked; an existing run is refused unless resume / overwrite, a resume
        with a changed recipe unless the changes are allowed), threads, seeds and the loop's counters. Returns
        the checkpoint to resume from, if any."""
        self.recipe, self.base_dir = recipe, Path(base_dir)
        r = recipe
        self.run_dir = Path(r.run.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self._lock: rundir.RunLock | None = None
        self._overwrite_pending = False
        self._resumed = resume
        self._recipe_changes: dict[str, tuple[Any, Any]] = {}
        if resume and not self.run_dir.is_dir():  # a typo in run.name: do not leave an empty folder behind
            raise RunDirError(f"--resume: no valid checkpoint under {self.ckpt_root} (there is no run directory "
                              f"{self.run_dir}); check run.name / run.output_dir, or start without --resume")
        rundir.prepare(self.run_dir)
        self._lock = rundir.RunLock(self.run_dir)
        try:
            resume_from = self._prepare_run_dir(resume, overwrite, allow_changes)
        except BaseException:
            self.release()
            raise
        if r.run.threads:
            torch.set_num_threads(r.run.threads)
        seed_everything(r.run.seed)
        self.step = 0  # _load_state sets step and best when resuming
        self.best = None
        self._stop_signal: str | None = None
        self._skipped_in_a_row = 0
        self._last_samples: list[dict[str, Any]] = []
        self.logger = None
        return resume_from

    def _prepare_run_dir(self, resume: bool, overwrite: bool, allow_changes: bool) -> Path | None:
        has_run = (self.run_dir / "metrics.jsonl").exists() or self.ckpt_root.exists()
        if resume and overwrite:
            raise RunDirError("--resume continues the run and --overwrite deletes it: pass one of them")
        if resume:
            found = ckpt.find_latest(self.ckpt_root)
            if found is None:
                raise RunDirError(f"--resume: no valid checkpoint under {self.ckpt_root}; start without --resume")
            self._recipe_changes = rundir.check_resume(self.run_dir, self.recipe.model_dump(mode="json"),
                                                       allow_changes)
            return found
        if has_run and not overwrite:
            raise RunDirError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or --overwrite to start over "
                "(or change run.name / run.output_dir)"
            )
        if has_run and not (self.run_dir / rundir.MARKER).is_file():
            rundir.empty_for_overwrite(self.run_dir)  # raises now, before anything loads: not rltune's folder
        self._overwrite_pending = has_run
        return None

    def _claim_run_dir(self) -> None:
        """--overwrite deletes the old run here, after the trainer loaded what the recipe names (a typo in
        data.source must not cost the old run). Idempotent."""
        if self._overwrite_pending:
            rundir.empty_for_overwrite(self.run_dir)
            self._overwrite_pending = False

    def release(self) -> None:
        """Give up the run directory's lock (fit() does it when it returns or raises)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def save_checkpoint(self) -> Path:
        with self.watchdog.watch("checkpoint"):
            state = self.state_dict()
            if not self.recipe.run.checkpoint_optimizer:
                state = _without_optimizer_moments(state)
            return ckpt.save_checkpoint(self.ckpt_root, self.step, self._save_model, state,
                                        self.recipe.run.keep_last)

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM finish the current step, then a checkpoint is written and fit() returns."""
        def handler(signum, _frame):
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name

        prev = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in prev:
                signal.signal(s, handler)
        except ValueError:  # not the main thread (e.g. inside a Ray actor): no handlers
            prev = {}
        try:
            yield
        finally:
            for s, h in prev.items():
                signal.signal(s, h)


def _without_optimizer_moments(state: Any) -> Any:
    """run.checkpoint_optimizer=false: every torch optimizer state_dict in `state` keeps its param_groups (lr,
    schedule position) and drops its per-parameter state (AdamW's exp_avg/exp_avg_sq, 2× the weights); loading
    such a state dict restarts the moments."""
    if isinstance(state, dict):
        if "state" in state and "param_groups" in state:
            return {**state, "state": {}}
        return {k: _without_optimizer_moments(v) for k, v in state.items()}
    return state


def rng_state() -> dict[str, Any]:
    """The CPU generators a checkpoint carries so a resumed run draws what the uninterrupted run drew."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def finite_or_none(x: torch.Tensor) -> float | None:
    """A reward for the run report's samples: JSON has no NaN/inf."""
    v = float(x)
    return v if math.isfinite(v) else None


@contextlib.contextmanager
def _timer(timers: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timers[key] += time.perf_counter() - t0
