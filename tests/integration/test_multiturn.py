"""Multi-turn rollouts through the real trainer on a tiny model: observation tokens get no gradient, the
recorded sampling log-probs match the trainer's at model tokens, EMPG segments by turns, and a Ray-style worker
builds its own env from the spec."""

import math

import pytest
import torch

from rltune.data.batch import PromptBatch
from rltune.logging import read_metrics
from rltune.modifiers.base import AdvantageContext, StepState
from rltune.modifiers.empg import EMPG
from rltune.rollout.base import SamplingParams
from rltune.trainer import Trainer

TASK = {"low": 1, "high": 8, "max_turns": 3, "n_train": 64}
GUESS = {
    "data": {"source": "builtin:guess_number", "shuffle": True},
    "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                       "max_position_embeddings": 64}},
    "env": {"use": "guess_number", "args": {"low": 1, "high": 8}, "max_turns": 3, "max_tokens_per_turn": 3,
            "max_total_tokens": 30},
}


def guess_recipe(tiny_recipe, **over):
    """tiny_recipe merges dicts, so the addition task_args are replaced here."""
    r = tiny_recipe(**{**GUESS, **over})
    return r.model_copy(update={"data": r.data.model_copy(update={"task_args": TASK})})


def test_observation_tokens_get_no_gradient(tiny_recipe):
    # char_code varies across any two completions, so every row has a non-zero advantage on its model tokens.
    tr = Trainer(guess_recipe(tiny_recipe))
    captured = []
    forward = tr.engine.forward

    def spy(*a, **kw):
        lp, ent = forward(*a, **kw)
        lp.retain_grad()
        captured.append(lp)
        return lp, ent

    tr.engine.forward = spy
    batches = []
    generate = tr.rollout.generate
    tr.rollout.generate = lambda *a, **kw: batches.append(generate(*a, **kw)) or batches[-1]
    metrics = tr.train_step()
    (b,) = batches
    grad = torch.cat([lp.grad for lp in captured])          # d loss / d logprob [N,T], rows in batch order
    obs = (b.extras["step_idx"] < 0) & (torch.arange(b.response_ids.shape[1])[None] < b.response_len[:, None])
    assert obs.any() and b.response_mask.any()
    assert torch.all(grad[obs] == 0)                        # observations: exactly no gradient
    assert torch.all(grad[~b.response_mask] == 0)
    assert (grad[b.response_mask] != 0).float().mean() > 0.9  # model tokens: gradient
    assert math.isfinite(metrics["loss/policy"])
    # the sampling log-probs recorded at model tokens are the trainer's own (same positions, same model)
    assert metrics["rollout/logprob_diff"] < 1e-4


def test_train_with_empg_on_turns_and_env_return(tiny_recipe):
    r = guess_recipe(tiny_recipe, run={"steps": 2, "eval_interval": 1},
                    data={**GUESS["data"], "eval_size": 8},
                    rewards=[{"use": "env_return"}, {"use": "tests/helpers/rewards.py:char_code", "weight": 0.1}],
                    modifiers=[{"use": "empg"}])   # the default (segment: auto) is per turn on a multi-turn env
    tr = Trainer(r)
    tr.fit()
    rows = read_metrics(tr.run_dir)
    last = rows[-1]
    assert last["step"] == 2 and math.isfinite(last["loss/policy"])
    # EMPG's steps are the episode's model turns: its mean step count is the mean number of turns
    assert last["mod/empg/steps_per_response"] == pytest.approx(last["reward/env_return/turns"])
    assert last["mod/empg/steps_per_response"] > 1.0
    assert sum(last[f"reward/env_return/end_{k}"] for k in ("done", "max_turns", "max_total_tokens")) \
        == pytest.approx(1.0)
    assert "eval/accuracy" in last and 0.0 <= last["eval/accuracy"] <= 1.0


def test_empg_turn_segments_are_the_rollout_turns(tiny_recipe):
    tr = Trainer(guess_recipe(tiny_recipe))
    b = tr.rollout.generate(tr.loader.next(4), SamplingParams(n=4, max_new_tokens=3, seed=0))
    mask = b.response_mask
    ctx = AdvantageContext(b, torch.zeros(len(b)), torch.zeros(len(b)), mask, b.group_id, StepState(0, 0, 1),
                           None, None, dict(b.extras))
    ids = EMPG(segment="turn").step_ids(ctx)
    assert torch.equal(ids, torch.where(mask, b.extras["step_idx"], -1))
    assert torch.equal(EMPG().step_ids(ctx), ids)          # the default: per turn
    turns = torch.tensor(b.meta["env_turns"])
    assert torch.equal(ids.max(1).values + 1, turns)  # every turn has tokens: steps 0..turns-1


def test_rollout_worker_builds_its_own_env():
    """The Ray actor body, in-process: the worker gets the env spec as a dict and wraps its engine."""
    from rltune.config.schema import EnvSpec, ModelConfig
    from rltune.rollout.pool import RolloutWorker

    cfg = ModelConfig(**{"tiny": GUESS["model"]["tiny"]})
    w = RolloutWorker(cfg.model_dump(mode="json"), None, 0, 64, 1,
                      EnvSpec(**GUESS["env"]).model_dump(mode="json"))
    pb = PromptBatch(prompts=["guess 1-8:"] * 2, meta={"secret": [3, 5]})
    b = w.generate(pb, SamplingParams(n=2, seed=1))
    assert b.extras["step_idx"].shape == b.response_ids.shape and len(b.meta["env_return"]) == 4
    assert w.load_weights({k: v.clone() for k, v in w.engine.model.state_dict().items()}, 7)[0] == 7
    assert w.weight_version() == 7 and w.engine.inner.weight_version == 7


@pytest.mark.slow
def test_ray_pool_runs_episodes_in_workers():
    """Real Ray: each worker builds its envs from the spec it was given (nothing env-related is pickled)."""
    ray = pytest.importorskip("ray")
    from rltune.config.schema import EnvSpec, ModelConfig
    from rltune.rollout.pool import RolloutPool

    cfg = ModelConfig(**{"tiny": GUESS["model"]["tiny"]})
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        pool = RolloutPool(cfg, None, 2, seed=0, max_prompt_tokens=64, pad_id=0, env=EnvSpec(**GUESS["env"]))
        pb = PromptBatch(prompts=["guess 1-8:"] * 4, meta={"secret": [1, 3, 5, 7]})
        b = pool.generate(pb, SamplingParams(n=2, seed=3))
        assert len(b) == 8 and b.meta["secret"] == [1, 1, 3, 3, 5, 5, 7, 7]
        assert set(b.meta["env_end"]) <= {"done", "max_turns", "max_total_tokens"}
        steps = torch.where(b.response_mask, b.extras["step_idx"], -1)
        assert torch.equal(steps.max(1).values + 1, torch.tensor(b.meta["env_turns"]))
        pool.shutdown()
    finally:
        ray.shutdown()
