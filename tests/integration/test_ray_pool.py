"""Ray rollout workers (real Ray, local): same completions as the in-process engine for the same shards and
seeds, new weights after a sync, a training run with workers, and a killed worker that costs no step."""

import dataclasses

import pytest
import torch

ray = pytest.importorskip("ray")

from rltune.config.schema import ModelConfig  # noqa: E402
from rltune.data.batch import PromptBatch  # noqa: E402
from rltune.logging import read_metrics  # noqa: E402
from rltune.models.policy import load_policy  # noqa: E402
from rltune.rollout.base import SamplingParams  # noqa: E402
from rltune.rollout.hf_engine import HFEngine  # noqa: E402
from rltune.rollout.pool import RolloutPool, _shard  # noqa: E402
from rltune.trainer import Trainer  # noqa: E402

CFG = ModelConfig(tiny={"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64})
PROMPTS = PromptBatch(prompts=[f"{a}+{a + 1}=" for a in range(6)], meta={"answer": [str(2 * a + 1) for a in range(6)]})


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(local_ray):
    model, tok = load_policy(CFG, seed=0)
    p = RolloutPool(CFG, None, 2, seed=0, max_prompt_tokens=64, pad_id=tok.pad_token_id)
    yield p
    p.shutdown()


def test_pool_matches_in_process_engine(pool):
    model, tok = load_policy(CFG, seed=0)
    local = HFEngine(model, tok)
    params = SamplingParams(n=3, max_new_tokens=5, seed=11)
    got = pool.generate(PROMPTS, params)
    want = [local.generate(s, dataclasses.replace(params, seed=11 + k)) for k, s in enumerate(_shard(PROMPTS, 2))]
    assert got.completions == [c for w in want for c in w.completions]
    rows = 0
    for w in want:
        n, t = w.response_ids.shape
        assert torch.equal(got.response_ids[rows:rows + n, :t], w.response_ids)
        torch.testing.assert_close(got.rollout_logprobs[rows:rows + n, :t], w.rollout_logprobs)
        rows += n
    assert got.group_id.tolist() == [g for g in range(6) for _ in range(3)]


def test_sync_makes_workers_generate_with_new_weights(pool):
    model, tok = load_policy(CFG, seed=0)
    greedy = SamplingParams(n=1, max_new_tokens=5, greedy=True)
    before = pool.generate(PROMPTS, greedy).completions
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    pool.sync(model, version=7)
    after = pool.generate(PROMPTS, greedy)
    assert pool.versions() == [7, 7] and after.weight_version == 7
    assert after.completions == HFEngine(model, tok).generate(PROMPTS, greedy).completions
    assert after.completions != before


def test_training_with_ray_workers(local_ray, tiny_recipe):
    t = Trainer(tiny_recipe(run={"steps": 2}, cluster={"rollout_workers": 2}))
    workers = t.rollout
    t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "loss/total" in m]
    assert [m["rollout/weight_version"] for m in rows] == [0, 1]
    assert all(m["time/sync"] > 0 for m in rows)
    assert workers.weight_version == 2


def _eventually(fn, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_killed_worker_is_restarted_and_the_step_retried(pool):
    victim = pool.workers[0]
    pid = ray.get(victim.pid.remote())
    ray.kill(victim, no_restart=False)
    params = SamplingParams(n=2, max_new_tokens=4, seed=3)
    for _ in range(2):  # whenever the kill lands (during or between calls), no rows and no weights are lost
        out = pool.generate(PROMPTS, params)
        assert len(out) == 12 and out.weight_version == pool.weight_version
    assert _eventually(lambda: ray.get(victim.pid.remote())) != pid
    assert pool.generate(PROMPTS, params).completions == out.completions  # restarted worker has the same weights
