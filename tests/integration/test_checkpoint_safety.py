"""A tampered checkpoint cannot run code on `--resume`.

The checksum manifest lives next to the files it covers, so whoever can write the run directory can also
recompute it: safety has to come from the formats. Here an attacker plants a pickle whose __reduce__ writes a
marker file, recomputes the manifest, and `rltune train --resume` must refuse (exit 2, no traceback) without
running it.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rltune.train import checkpoint as ckpt
from rltune.train.state_io import load_state, save_state
from tests.conftest import ROOT, TINY, merge


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_manifest(folder: Path) -> None:
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    manifest["files"] = {str(p.relative_to(folder)): ckpt._sha256(p) for p in sorted(folder.rglob("*"))
                         if p.is_file() and p.name != ckpt.MANIFEST}
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.verify(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(merge(TINY, {"run": {"steps": 1, "output_dir": str(tmp / "run")}})))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "train", str(recipe)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return recipe, tmp / "run" / "checkpoints" / "step_000001", env


def _resume(recipe: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rltune.cli", "train", str(recipe), "--resume"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("planted", ["state.pt", "model/pytorch_model.bin"])
def test_resume_refuses_a_planted_pickle(trained, tmp_path, planted):
    recipe, step, env = trained
    marker = tmp_path / "pwned"
    saved = {p: p.read_bytes() for p in step.rglob("*") if p.is_file()}
    try:
        if planted == "state.pt":  # the format older rltune wrote, still read (safely) for old runs
            (step / "state.json").unlink()
            (step / "state.safetensors").unlink()
        else:  # transformers would prefer safetensors, so the attacker removes them
            (step / "model" / "model.safetensors").unlink()
        with open(step / planted, "wb") as f:
            pickle.dump({"step": _Payload(marker)}, f)
        _rewrite_manifest(step)
        r = _resume(recipe, env)
        assert not marker.exists(), "the pickle payload ran"
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and "error:" in r.stderr
    finally:
        for p in step.rglob("*"):
            if p.is_file() and p not in saved:
                p.unlink()
        for p, data in saved.items():
            p.write_bytes(data)
    # the untouched checkpoint still resumes
    ok = _resume(recipe, env)
    assert ok.returncode == 0, ok.stderr


def test_state_round_trips_exactly(tmp_path):
    import random

    import numpy as np

    state = {"step": 3, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                "torch": torch.get_rng_state()},
             "optimizer": {"state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.ones(2, 3)[:, 1]}},
                           "param_groups": [{"betas": (0.9, 0.999), "params": [0], "lr": 1e-3}]},
             "best": (0.5, 2), "np": np.float32(0.25), "__tuple__": "a key that looks like a tag"}
    save_state(state, tmp_path)
    back = load_state(tmp_path)
    assert back["rng"]["python"] == state["rng"]["python"]
    np.testing.assert_array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert back["rng"]["numpy"][1].dtype == np.uint32 and back["rng"]["numpy"][0] == "MT19937"
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    assert list(back["optimizer"]["state"]) == [0]  # int keys stay ints (optimizer.load_state_dict needs them)
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], torch.ones(2))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["best"] == (0.5, 2) and back["np"] == np.float32(0.25) and type(back["np"]) is np.float32
    assert back["__tuple__"] == "a key that looks like a tag"


def test_state_refuses_objects_it_cannot_store(tmp_path):
    from rltune.train.state_io import StateFormatError

    with pytest.raises(StateFormatError, match=r"state.modifiers.mine: a object cannot be stored safely"):
        save_state({"modifiers": {"mine": object()}}, tmp_path)


def test_a_legacy_state_pt_still_loads_safely(tmp_path):
    """Checkpoints from before the JSON + safetensors format hold torch.save(state): tensors, plain values and
    numpy's RNG state. They resume (read with weights_only=True); only a pickle that holds more is refused."""
    import random

    import numpy as np

    state = {"step": 7, "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                "torch": torch.get_rng_state()}, "best": (0.25, 3)}
    torch.save(state, tmp_path / "state.pt")
    back = ckpt.load_state(tmp_path)
    assert back["step"] == 7 and back["best"] == (0.25, 3)
    np.testing.assert_array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    with open(tmp_path / "state.pt", "wb") as f:
        pickle.dump({"step": _Payload(tmp_path / "pwned")}, f)
    with pytest.raises(ckpt.CheckpointError, match="a pickle can run code"):
        ckpt.load_state(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_deepspeed_loads_allow_only_its_own_types(tmp_path):
    """DeepSpeed itself reads its shards with weights_only=False; the engine swaps in a weights_only=True load
    that allows the few DeepSpeed types a ZeRO shard holds."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from rltune.train.deepspeed_engine import _WeightsOnlyLoads

    loads = _WeightsOnlyLoads(object())
    shard = {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "fp32": torch.ones(4)}
    torch.save(shard, tmp_path / "optim_states.pt")
    back = loads.load(str(tmp_path / "optim_states.pt"))
    assert back["zero_stage"] == ZeroStageEnum.gradients and back["loss_scaler"].cur_scale == 1.0
    assert back["param_slice_mappings"][0]["w"].numel == 4 and torch.equal(back["fp32"], torch.ones(4))
    with open(tmp_path / "optim_states.pt", "wb") as f:
        pickle.dump({"zero_stage": _Payload(tmp_path / "pwned")}, f)
    with pytest.raises(pickle.UnpicklingError):
        loads.load(str(tmp_path / "optim_states.pt"))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_resume_refuses_a_planted_deepspeed_shard(tiny_recipe, tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("ray")
    from rltune.trainer import Trainer

    over = {"run": {"steps": 1}, "cluster": {"train_ranks": 2, "zero_stage": 2}, "train": {"micro_batch_size": 2}}
    t = Trainer(tiny_recipe(**over), overwrite=True)
    t.fit()
    t.engine.shutdown()
    step = ckpt.find_latest(t.ckpt_root)
    shard = next((step / "deepspeed").rglob("*optim_states.pt"))
    marker = tmp_path / "pwned"
    with open(shard, "wb") as f:
        pickle.dump({"optimizer_state_dict": _Payload(marker)}, f)
    _rewrite_manifest(step)
    import ray

    try:
        with pytest.raises(ckpt.CheckpointError, match="DeepSpeed shard") as e:
            Trainer(tiny_recipe(**over), resume=True)
    finally:
        ray.shutdown()  # the refused trainer's ranks hold the local Ray's CPUs
    assert not marker.exists() and "Traceback" not in str(e.value)
