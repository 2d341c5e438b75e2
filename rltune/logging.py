"""Metric sinks: a rich progress line on the console, `metrics.jsonl` in the run directory, TensorBoard, wandb."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rltune.config.schema import LoggingConfig

console = Console(stderr=True)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricLogger:
    def __init__(self, cfg: LoggingConfig, run_dir: Path, total_steps: int, recipe_dump: dict, start_step: int = 0,
                 run_name: str = "rltune"):
        self.cfg, self.run_dir = cfg, run_dir
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        if cfg.jsonl:
            _truncate_after(self.path, start_step)
            _truncate_after(self.samples_path, start_step)
        self._tb = _tensorboard_writer(run_dir / "tensorboard", start_step) if cfg.tensorboard else None
        self._wandb = None
        if cfg.wandb.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=cfg.wandb.project, entity=cfg.wandb.entity, name=run_name, mode=cfg.wandb.mode,
                dir=str(run_dir), config=recipe_dump, resume="allow",
            )
        self._progress = None
        if cfg.console:
            self._progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=console, transient=False,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")
            self._progress.start()

    def log(self, step: int, metrics: dict[str, Any], samples: list[dict[str, Any]] | None = None) -> None:
        rec = {"step": step, "time": round(time.time(), 3), **{k: _clean(v) for k, v in metrics.items()}}
        if self.cfg.jsonl:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if samples:
                with open(self.samples_path, "a") as f:
                    f.write(json.dumps({"step": step, "samples": samples}) + "\n")
        if self._tb is not None:  # the jsonl record's scalars, under the same names
            for k, v in rec.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, global_step=step, walltime=rec["time"])
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def progress(self, step: int, metrics: dict[str, Any]) -> None:
        if self._progress is None:
            return
        parts = []
        for key, label in (("reward/mean", "reward"), ("eval/accuracy", "acc"), ("time/step", "s/step")):
            if key in metrics and metrics[key] is not None:
                parts.append(f"{label} {metrics[key]:.3f}")
        self._progress.update(self._task, completed=step, info="  ".join(parts))

    def print(self, msg: str, always: bool = False) -> None:
        if self._progress is not None:
            self._progress.console.print(msg)
        elif self.cfg.console or always:
            console.print(msg)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _tensorboard_writer(log_dir: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from rltune.config.load import RecipeError

        raise RecipeError("logging.tensorboard=true needs the `tensorboard` package: pip install tensorboard "
                          "(or set logging.tensorboard=false)") from None
    # On resume, TensorBoard hides the records after the checkpoint's step that the interrupted run wrote.
    return SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)


def _truncate_after(path: Path, step: int) -> None:
    """On resume, drop records the interrupted run wrote after its last checkpoint (they are re-done)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a torn last line from a killed process
    if step == 0:
        keep = []
    path.write_text("".join(k + "\n" for k in keep))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
