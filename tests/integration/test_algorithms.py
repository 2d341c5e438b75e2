"""Every policy-gradient algorithm, one recipe key away, on the tiny random-init model (CPU)."""

import math

import pytest
import torch

from rltune.algo import dispatch
from rltune.logging import read_metrics
from rltune.trainer import Trainer
from rltune.train.torch_engine import TorchEngine
from tests.conftest import merge

GSPO = {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean", "mini_batches": 2}
ALGOS = {
    "grpo": {},
    "drgrpo": {"algo": {"advantage": "group_mean", "loss_agg": "seq-mean-token-sum-norm"}},
    "rloo": {"algo": {"advantage": "rloo"}},
    "reinforce_pp": {"algo": {"advantage": "reinforce_pp", "gamma": 0.99, "kl_coef": 0.05, "kl_placement": "reward",
                              "kl_estimator": "k1"}},
    "reinforce_pp_baseline": {"algo": {"advantage": "reinforce_pp_baseline"}},
    "ppo": {"algo": {"advantage": "gae", "lam": 0.95, "ppo_epochs": 2, "mini_batches": 2}, "critic": {"lr": 1e-3}},
    "dapo": {"algo": {"clip_high": 0.28, "dynamic_sampling": {"enabled": True, "max_rounds": 4}}},
    "gspo": {"algo": GSPO},
    "kl_loss_adaptive": {"algo": {"kl_coef": 0.1, "kl_estimator": "k3+", "kl_controller": "adaptive",
                                  "kl_target": 0.01, "kl_horizon": 100}},
}


def _weights(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _trainer(tiny_recipe, over, **kw):
    t = Trainer(tiny_recipe(**over), **kw)
    t.eval_rows = None  # the held-out eval is not what these tests check
    return t


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_two_steps_finite_and_every_parameter_moves(tiny_recipe, name):
    t = _trainer(tiny_recipe, ALGOS[name])
    before = _weights(t.model)
    critic_before = _weights(t.critic.model) if t.critic is not None else None
    t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "loss/total" in m]
    assert [m["step"] for m in rows] == [1, 2]
    for m in rows:
        assert math.isfinite(m["loss/total"]) and math.isfinite(m["train/grad_norm"])
        assert m["train/optimizer_steps"] == t.recipe.algo.updates_per_step
    moved = _weights(t.model)
    assert [n for n in before if torch.equal(before[n], moved[n])] == []
    if critic_before is not None:  # PPO: the value loss is logged and the critic learns too
        assert all(math.isfinite(m["loss/value"]) and m["loss/value"] >= 0 for m in rows)
        assert "critic/explained_var" in rows[-1]
        critic_after = _weights(t.critic.model)
        assert [n for n in critic_before if torch.equal(critic_before[n], critic_after[n])] == []
    if t.recipe.algo.dynamic_sampling.enabled:
        assert rows[0]["rollout/dynamic_rounds"] >= 1 and 0 < rows[0]["rollout/kept_group_frac"] <= 1


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_micro_batching_does_not_change_the_update(tiny_recipe, name):
    """Same batch, 1 vs 4 micro-batches per optimizer step: identical weights (policy and critic)."""
    out = []
    mb_sizes = (8, 2) if ALGOS[name].get("algo", {}).get("mini_batches", 1) == 2 else (16, 4)
    for mb in mb_sizes:
        over = merge(ALGOS[name], {"train": {"micro_batch_size": mb, "max_grad_norm": None}, "run": {"steps": 1}})
        if "critic" in over:
            over["critic"]["max_grad_norm"] = None
        t = _trainer(tiny_recipe, over, overwrite=True)
        t.fit()
        out.append((_weights(t.model), _weights(t.critic.model) if t.critic is not None else {}))
    # The shared-prompt forward runs each micro-batch's distinct prompts together, so rounding differs with the
    # micro-batch size at the 1e-6 level (lr is 1e-3: a real accumulation error would be ~1e-3).
    for a, b in zip(out[0], out[1]):
        for n in a:
            torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-5, msg=n)


def test_epochs_and_mini_batches(tiny_recipe, monkeypatch):
    """ppo_epochs=2 × mini_batches=2: 4 optimizer steps per rollout; the old log-probs are recomputed before the
    first update, so the first mini-batch's ratio is exactly 1 and later ones move off it."""
    diffs = []
    inner = dispatch.POLICY_LOSSES["ppo_clip"]

    def spy(lp, old, *args):
        diffs.append((lp.detach() - old).abs().max().item())
        return inner(lp, old, *args)

    monkeypatch.setitem(dispatch.POLICY_LOSSES, "ppo_clip", spy)
    t = _trainer(tiny_recipe, {"algo": {"ppo_epochs": 2, "mini_batches": 2}, "train": {"micro_batch_size": 8},
                               "run": {"steps": 1}})
    steps = []
    step = t.engine.step
    monkeypatch.setattr(t.engine, "step", lambda: steps.append(1) or step())
    m = t.train_step()
    assert len(steps) == 4 and m["train/optimizer_steps"] == 4
    assert len(diffs) == 4 and diffs[0] == 0.0
    assert all(d > 0 for d in diffs[1:]), diffs


def _capture_updates(monkeypatch):
    """Per step: the update's inputs (advantages, loss mask) and the step's batch."""
    seen = []
    from rltune.train.text_family import TextFamily

    update, metrics = TorchEngine.update, TextFamily.step_metrics

    def spy_update(self, x, *args):
        seen.append({"advantages": x.advantages.clone(), "loss_mask": x.loss_mask.clone()})
        return update(self, x, *args)

    def spy_metrics(self, batch, *args):
        seen[-1]["batch"] = batch
        return metrics(self, batch, *args)

    monkeypatch.setattr(TorchEngine, "update", spy_update)
    monkeypatch.setattr(TextFamily, "step_metrics", spy_metrics)
    return seen


def test_kl_in_reward_changes_the_advantages(tiny_recipe, monkeypatch):
    """Step 0 has KL 0 (ref = policy), so both runs take the same first update; at step 1 they sample the same
    batch, and the KL penalty in the reward changes its advantages by r − β·Σ_t kl_t."""
    seen = _capture_updates(monkeypatch)
    for algo_over in ({}, {"kl_coef": 0.5, "kl_placement": "reward", "kl_estimator": "k1"}):
        _trainer(tiny_recipe, {"algo": algo_over}, overwrite=True).fit()
    plain, kl = seen[1], seen[3]
    assert plain["batch"].completions == kl["batch"].completions
    torch.testing.assert_close(seen[0]["advantages"], seen[2]["advantages"])
    assert not torch.allclose(plain["advantages"], kl["advantages"])


def test_mask_truncated_removes_truncated_completions_from_the_loss(tiny_recipe, monkeypatch):
    seen = _capture_updates(monkeypatch)
    _trainer(tiny_recipe, {"algo": {"mask_truncated": True}, "run": {"steps": 1}}).fit()
    b, loss_mask = seen[0]["batch"], seen[0]["loss_mask"]
    assert b.truncated.any()  # a random-init model rarely stops within 4 tokens
    assert not loss_mask[b.truncated].any()
    assert torch.equal(loss_mask[~b.truncated], b.response_mask[~b.truncated])


@pytest.mark.parametrize("target, direction", [(10.0, -1), (1e-6, +1)])
def test_adaptive_kl_coef_moves_toward_target(tiny_recipe, target, direction):
    t = _trainer(tiny_recipe, {"algo": {"kl_coef": 0.1, "kl_controller": "adaptive", "kl_target": target,
                                        "kl_horizon": 64}, "run": {"steps": 3}})
    t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "algo/kl_coef" in m]
    coefs = [m["algo/kl_coef"] for m in rows] + [t.kl_ctl.coef]  # logged before each step's update, then final
    if direction < 0:  # KL far below target: β shrinks every step
        assert all(b < a for a, b in zip(coefs, coefs[1:])), coefs
    else:  # KL above a tiny target once the policy has moved off the reference (step 0 has KL 0)
        assert rows[1]["algo/kl_rollout"] > 0 and coefs[-1] > coefs[-2], coefs


def test_ppo_critic_warmup_then_resume_restores_critic_and_kl_state(tiny_recipe):
    over = merge(ALGOS["ppo"], {"critic": {"warmup_steps": 1}, "run": {"steps": 1},
                                "algo": {"kl_coef": 0.1, "kl_controller": "adaptive", "kl_target": 5.0}})
    t = _trainer(tiny_recipe, over)
    policy, critic = _weights(t.model), _weights(t.critic.model)
    t.fit()
    assert all(torch.equal(policy[n], p) for n, p in t.model.named_parameters())  # warmup: critic only
    assert not all(torch.equal(critic[n], p) for n, p in t.critic.model.named_parameters())
    row = [m for m in read_metrics(t.run_dir) if "loss/value" in m][0]
    assert "loss/policy" not in row and math.isfinite(row["loss/value"])
    resumed = Trainer(tiny_recipe(**merge(over, {"run": {"steps": 2}})), resume=True, allow_changes=True)
    assert resumed.kl_ctl.coef == t.kl_ctl.coef != 0.1
    for n, p in resumed.critic.model.named_parameters():
        assert torch.equal(p, dict(t.critic.model.named_parameters())[n]), n


def test_ppo_numbers_unchanged_by_the_family_refactor(tiny_recipe):
    """3 PPO steps (GAE, critic, 2 epochs × 2 mini-batches) on the tiny model, pinned to the numbers of the text
    trainer before the policy and critic updates shared one optimizer loop and the step became the families'
    (torch 2.x, CPU, one thread): parameter sums of policy and critic and each step's losses."""
    t = _trainer(tiny_recipe, merge(ALGOS["ppo"], {"run": {"steps": 3}}))
    t.fit()
    total = lambda m: float(sum(p.detach().double().sum() for p in m.parameters()))  # noqa: E731
    assert total(t.model) == pytest.approx(156.38199588812859, abs=1e-5)
    assert total(t.critic.model) == pytest.approx(157.56512894667685, abs=1e-5)
    rows = [m for m in read_metrics(t.run_dir) if "loss/policy" in m]
    assert [m["loss/policy"] for m in rows] == pytest.approx(
        [-0.04112211335450411, -0.025883959606289864, -0.024521388113498688], abs=1e-6)
    assert [m["loss/value"] for m in rows] == pytest.approx(
        [0.163204837590456, 0.12262868508696556, 0.07994498685002327], abs=1e-6)
