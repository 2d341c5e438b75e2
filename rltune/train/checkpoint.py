"""Atomic, verifiable checkpoints.

Layout: `<run>/checkpoints/step_000040/{model/, state.json, state.safetensors, manifest.json}` plus `<run>/checkpoints/latest`.
A checkpoint is written into a temporary sibling folder, fsynced, then renamed into place, and `latest` is
replaced atomically after that: a `kill -9` at any moment leaves the previous checkpoint valid. The manifest
holds a sha256 per file; loading verifies it and falls back to the newest intact checkpoint. The manifest guards
against torn writes, not tampering (it lives in the same folder), so nothing here is read with pickle: see
state_io.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from rltune.train.state_io import StateFormatError, save_state
from rltune.train.state_io import load_state as _load_state

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint `step` atomically; `save_model(dir)` writes the weights (or adapter) into dir."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:06d}"
    tmp = ckpt_root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(tmp / "model")
    try:
        save_state(state, tmp)
    except StateFormatError as e:
        raise CheckpointError(str(e)) from None
    files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "created": time.time(), "files": files}, indent=1))
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it as a whole
        old = ckpt_root / f".old-step_{step:06d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write_text(ckpt_root / "latest", final.name)
    _prune(ckpt_root, keep_last)
    return final


_LEFTOVER = re.compile(r"\.(tmp|old)-step_\d{6}-\d+")


def _prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints and delete leftovers of a killed writer. Runs right after this
    writer's own temp folder was renamed into place, and the run directory's lock (rltune/train/rundir.py) keeps
    any other trainer out, so every temp folder of our exact naming that is left is a dead writer's."""
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in steps[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.is_dir() and _LEFTOVER.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)


def verify(ckpt: Path) -> bool:
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        return all(_sha256(ckpt / rel) == digest for rel, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def find_latest(ckpt_root: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies (the `latest` pointer first, then by step)."""
    candidates: list[Path] = []
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        candidates.append(ckpt_root / pointer.read_text().strip())
    candidates += sorted((p for p in ckpt_root.glob("step_*") if p.is_dir()), reverse=True)
    for c in candidates:
        if c.is_dir() and verify(c):
            return c
        if c.exists():
            log.warning("checkpoint %s fails its checksum manifest; trying an older one", c)
    return None


# Files rltune reads with a (restricted) pickle loader: a legacy state.pt and VAR model.pt (weights_only=True),
# DeepSpeed's shards (rltune/train/deepspeed_engine.py loads them with weights_only=True).
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_KNOWN_PICKLES = ("state.pt", "model/model.pt")


def refuse_unexpected_pickles(ckpt: Path) -> None:
    """CheckpointError when `ckpt` holds pickle files rltune never writes (e.g. a planted model/*.bin)."""
    odd = [str(p.relative_to(ckpt)) for p in sorted(ckpt.rglob("*"))
           if p.suffix in _PICKLE_SUFFIXES and p.is_file() and p.relative_to(ckpt).parts[0] != "deepspeed"
           and str(p.relative_to(ckpt)) not in _KNOWN_PICKLES]
    if odd:
        raise CheckpointError(
            f"--resume: {ckpt} holds pickle files that rltune does not write: {', '.join(odd[:5])}. A pickle can "
            "run code when loaded, so this checkpoint is refused; if you did not put them there, treat the run "
            "directory as tampered with."
        )


def load_state(ckpt: Path) -> dict[str, Any]:
    """The training state of `ckpt`; CheckpointError (a user error, exit 2) when it cannot be read safely."""
    try:
        return _load_state(ckpt)
    except StateFormatError as e:
        raise CheckpointError(f"--resume: {e}") from None
