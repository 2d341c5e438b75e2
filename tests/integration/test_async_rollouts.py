"""Async rollouts with Ray rollout workers (real Ray, local): `rollout.max_staleness`.

- k = 0 through the rollout queue equals the plain synchronous path exactly (5 steps, every metric but timings);
- k = 1: no trained row lags the trainer by more than one version, rows of every step after the first lag by
  exactly one (so the bound is met, not vacuous), and a run stopped by SIGTERM after step 2 resumes exactly: the
  rollout in flight at the checkpoint is saved and trained on after the resume.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from rltune.logging import read_metrics  # noqa: E402
from rltune.trainer import Trainer  # noqa: E402
from tests.conftest import merge  # noqa: E402
from tests.helpers.stopping import StopAfter  # noqa: E402

WORKERS = {"cluster": {"rollout_workers": 2}}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rows(run_dir):
    return [{k: v for k, v in m.items() if k != "time" and not k.startswith(("time/", "perf/", "rollout/overlap"))}
            for m in read_metrics(run_dir) if "loss/total" in m]


def test_staleness_zero_equals_the_synchronous_path(local_ray, tiny_recipe, tmp_path) -> None:
    over = merge(WORKERS, {"run": {"steps": 5}, "rollout": {"max_staleness": 0}})
    queued = Trainer(tiny_recipe(**merge(over, {"run": {"output_dir": str(tmp_path / "queued")}})))
    assert queued.ahead is not None
    queued.fit()
    plain = Trainer(tiny_recipe(**merge(over, {"run": {"output_dir": str(tmp_path / "plain")}})))
    plain.ahead = None  # the plain path: sample_groups -> pool.generate, blocking sync
    plain.fit()
    a, b = _rows(tmp_path / "queued"), _rows(tmp_path / "plain")
    assert len(a) == 5 and all(m["rollout/staleness_max"] == 0 for m in a)
    assert [{k: v for k, v in m.items() if not k.startswith("rollout/staleness")} for m in a] == b


def test_staleness_one_bounds_the_lag_and_resumes_exactly(local_ray, tiny_recipe, tmp_path) -> None:
    over = merge(WORKERS, {"run": {"steps": 4, "eval_interval": 2}, "rollout": {"max_staleness": 1}})
    Trainer(tiny_recipe(**merge(over, {"run": {"output_dir": str(tmp_path / "whole")}}))).fit()
    whole = _rows(tmp_path / "whole")
    assert [m["rollout/staleness_max"] for m in whole] == [0, 1, 1, 1]
    assert [m["rollout/staleness_mean"] for m in whole] == [0, 1, 1, 1]
    assert [m["rollout/weight_version"] for m in whole] == [0, 0, 1, 2]

    parts = tiny_recipe(**merge(over, {"run": {"output_dir": str(tmp_path / "parts")}}))
    StopAfter(parts, stop_at=2).fit()
    ckpt = tmp_path / "parts" / "checkpoints" / "step_000002" / "inflight"
    assert (ckpt / "inflight.safetensors").is_file()  # step 3's rollout, sampled by version 1, saved
    Trainer(parts, resume=True).fit()
    assert _rows(tmp_path / "parts") == whole


def test_refusals(tiny_recipe) -> None:
    with pytest.raises(ValueError, match="needs Ray rollout workers"):
        tiny_recipe(rollout={"max_staleness": 1})
    with pytest.raises(ValueError, match="dynamic_sampling"):
        tiny_recipe(**merge(WORKERS, {"rollout": {"max_staleness": 1},
                                      "algo": {"dynamic_sampling": {"enabled": True}}}))
