"""Checkpoints (rltune/train/checkpoint.py) without a trainer: atomic layout, the manifest, the fallback to an
intact checkpoint, pruning, the state round trip and the refusal of pickles rltune never writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rltune.train import checkpoint as ckpt

STATE = {"step": 3, "loader": {"epoch": 1, "pos": (4, 5)}, "rng": {"numpy": np.arange(3, dtype=np.uint32)},
         "engine": {"optimizer": {"state": {0: {"exp_avg": torch.ones(2, 2)}}, "param_groups": [{"lr": 0.1}]}},
         "inflight": [4]}


def _save(root, step, keep_last=2, state=None):
    def model(path):
        path.mkdir()
        (path / "weights.txt").write_text(f"step {step}")
    return ckpt.save_checkpoint(root, step, model, state or dict(STATE, step=step), keep_last)


def test_layout_pointer_and_state_round_trip(tmp_path) -> None:
    path = _save(tmp_path, 3)
    assert path == tmp_path / "step_000003" and (tmp_path / "latest").read_text() == "step_000003"
    assert ckpt.verify(path) and {p.name for p in path.iterdir()} >= {"model", "manifest.json"}
    sd = ckpt.load_state(path)
    assert sd["step"] == 3 and sd["loader"] == {"epoch": 1, "pos": (4, 5)} and sd["inflight"] == [4]
    assert isinstance(sd["rng"]["numpy"], np.ndarray) and sd["rng"]["numpy"].tolist() == [0, 1, 2]
    assert torch.equal(sd["engine"]["optimizer"]["state"][0]["exp_avg"], torch.ones(2, 2))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path) -> None:
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    (newest / "model" / "weights.txt").write_text("flipped")
    assert not ckpt.verify(newest)
    assert ckpt.find_latest(tmp_path) == tmp_path / "step_000001"


def test_pruning_keeps_the_newest_and_removes_dead_writers_leftovers_only(tmp_path) -> None:
    for s in (1, 2, 3):
        _save(tmp_path, s, keep_last=2)
    (tmp_path / ".tmp-step_000009-123").mkdir()        # a killed writer's temp folder: removed
    (tmp_path / "my-notes-123").mkdir()                # the user's folder with a pid-like suffix: kept
    _save(tmp_path, 4, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "my-notes-123", "step_000003", "step_000004"]


def test_resaving_a_step_replaces_it_as_a_whole(tmp_path) -> None:
    _save(tmp_path, 5)
    path = _save(tmp_path, 5, state=dict(STATE, step=5, loader={"epoch": 2, "pos": (0, 0)}))
    assert ckpt.load_state(path)["loader"]["epoch"] == 2 and ckpt.verify(path)


def test_pickles_rltune_never_writes_are_refused(tmp_path) -> None:
    path = _save(tmp_path, 1)
    ckpt.refuse_unexpected_pickles(path)  # a clean checkpoint passes
    (path / "model" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ckpt.CheckpointError, match="pytorch_model.bin"):
        ckpt.refuse_unexpected_pickles(path)
