"""Run-directory guards: one trainer per run directory, `--overwrite` only of folders rltune made, and a resume
that refuses a changed recipe.

    <run>/.rltune-run     marker: rltune created this folder (only such a folder may be emptied by --overwrite)
    <run>/.rltune.lock    flock held by the training process for the whole run; holds its pid
    <run>/recipe.yaml     the recipe in effect now
    <run>/recipe_history.jsonl  one line per start or resume: {event, step, time, pid, changes, recipe}

flock (not a pid file) because the kernel drops the lock when its holder dies, even by `kill -9`: a crashed run
never blocks the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

MARKER = ".rltune-run"
LOCK = ".rltune.lock"
HISTORY = "recipe_history.jsonl"

# Keys a resume may change with --allow-changes: how long to run, how it is observed, and the step size (the fix
# after a divergence is a lower lr or a gradient clip, then --resume). Nothing that changes the model, the data,
# the rewards or the algorithm: those need a new run.
SAFE_CHANGES = ("run.steps", "run.log_interval", "run.eval_interval", "run.save_interval", "run.keep_last",
                "run.threads", "run.watchdog_s", "logging.", "cluster.worker_restart_timeout_s", "train.lr",
                "train.max_grad_norm", "train.max_skipped_steps")
FREE_FORM = ("args", "task_args")  # dict[str, Any] fields of the schema
_MARKER_TEXT = "created by rltune; `rltune train --overwrite` may empty this folder\n"


class RunDirError(RuntimeError):
    pass


def prepare(run_dir: Path) -> None:
    """Create the run directory (with the marker) or check that an existing path is a usable folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run.output_dir {run_dir} is a file, not a folder; set run.output_dir (or run.name) to a "
                          "folder path")
    try:
        if run_dir.is_dir():
            if not any(run_dir.iterdir()):  # an empty folder (e.g. made by a launcher script) holds nothing to lose
                (run_dir / MARKER).write_text(_MARKER_TEXT)
            return
        run_dir.mkdir(parents=True)
        (run_dir / MARKER).write_text(_MARKER_TEXT)
    except OSError as e:
        raise RunDirError(f"cannot create or write the run directory {run_dir}: {e.strerror}; set run.output_dir to "
                          "a writable folder path") from None


_HELD: dict[str, "RunLock"] = {}  # run dir -> the lock this process holds on it


class RunLock:
    """An exclusive flock on <run>/.rltune.lock; a trainer in another process gets a RunDirError with the pid.

    Within one process a new lock on the same folder takes the lock over from the earlier object (a Trainer that
    was built but never fit or released, e.g. in a notebook): fit() blocks, so one process runs one trainer."""

    def __init__(self, run_dir: Path):
        path = run_dir / LOCK
        self._key = os.path.realpath(run_dir)
        earlier = _HELD.get(self._key)
        if earlier is not None and earlier._fd is not None:
            self._fd, earlier._fd = earlier._fd, None
            _HELD[self._key] = self
            return
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"cannot write the lock file {path}: {e.strerror}; set run.output_dir to a writable "
                              "folder") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RunDirError(f"{run_dir} is in use by another rltune process (pid {holder}); wait for it or stop "
                              "it, or set another run.name / run.output_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[self._key] = self

    def release(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)  # closing drops the flock
            if _HELD is not None and _HELD.get(self._key) is self:  # None at interpreter shutdown
                del _HELD[self._key]

    def __del__(self) -> None:
        self.release()


def empty_for_overwrite(run_dir: Path) -> None:
    """--overwrite: delete the old run's files, keeping the marker and the lock this process holds."""
    if not (run_dir / MARKER).is_file():
        raise RunDirError(f"--overwrite: {run_dir} was not created by rltune (no {MARKER} marker), so it is not "
                          "deleted; point run.output_dir at a new folder, or delete the old run yourself")
    try:
        for p in run_dir.iterdir():
            if p.name in (MARKER, LOCK):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    except OSError as e:
        raise RunDirError(f"--overwrite: cannot delete {e.filename} of the old run: {e.strerror}; fix its "
                          "permissions or delete the old run yourself") from None


def recipe_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted.key: (saved, new)} for every value that differs. A schema key only one side has is skipped (a
    field added or removed between rltune versions); in free-form dicts (args, task_args) it is a change."""
    out: dict[str, tuple[Any, Any]] = {}
    _diff(saved, new, "", out, free=False)
    return out


def _diff(a: Any, b: Any, path: str, out: dict[str, tuple[Any, Any]], free: bool) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (a.keys() | b.keys()) if free else (a.keys() & b.keys())
        for k in sorted(keys, key=str):
            _diff(a.get(k), b.get(k), f"{path}{k}.", out, free=free or k in FREE_FORM)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}{i}.", out, free)
    elif a != b:
        out[path[:-1]] = (a, b)


def is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_CHANGES)


def check_resume(run_dir: Path, new: dict[str, Any], allow_changes: bool) -> dict[str, tuple[Any, Any]]:
    """Compare the recipe of a resume with <run>/recipe.yaml; raise on changes that are not allowed."""
    path = run_dir / "recipe.yaml"
    saved = yaml.safe_load(path.read_text()) if path.is_file() else _last_recorded(run_dir)
    if not saved:
        return {}  # a run from before recipe.yaml was written: nothing to compare with
    changes = recipe_changes(saved, new)
    unsafe = [k for k in changes if not is_safe(k)]
    if changes and (unsafe or not allow_changes):
        lines = "\n".join(f"  - {k}: {v[0]!r} -> {v[1]!r}" + ("" if is_safe(k) else "  (not allowed)")
                          for k, v in changes.items())
        fix = ("start a new run (another run.name or run.output_dir) for the changes marked not allowed"
               if unsafe else "pass --allow-changes to resume with them (recorded in recipe_history.jsonl)")
        raise RunDirError(f"--resume: the recipe differs from the one {run_dir} was trained with:\n{lines}\n"
                          f"Resume with the saved recipe ({path}), or {fix}. Allowed with --allow-changes: "
                          f"{', '.join(SAFE_CHANGES)}")
    return changes


def _last_recorded(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / HISTORY
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["recipe"] if lines else None


def record(run_dir: Path, event: str, step: int, recipe: dict[str, Any], changes: dict[str, tuple]) -> None:
    """Append one entry to the history (earlier entries are never rewritten)."""
    entry = {"event": event, "step": step, "time": time.time(), "pid": os.getpid(),
             "changes": {k: {"from": v[0], "to": v[1]} for k, v in changes.items()}, "recipe": recipe}
    with open(run_dir / HISTORY, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
