"""DeepSpeed ZeRO training ranks in Ray actors (real Ray, real DeepSpeed on gloo; no mocks).

Sharded equals unsharded: 2 ranks at ZeRO-1/2/3 take the same steps as the single-process engine (losses, gradient
norms, sampled rewards and final weights to float tolerance), the checkpoint loads into one process, resume is
exact, a dead rank stops the run with a clear error, and LoRA trains and syncs only the adapter.
"""

import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from rltune.logging import read_metrics  # noqa: E402
from rltune.models.policy import load_policy  # noqa: E402
from rltune.train import checkpoint as ckpt  # noqa: E402
from rltune.train.worker import TrainRankDiedError  # noqa: E402
from rltune.trainer import Trainer  # noqa: E402

KEYS = ("loss/policy", "loss/total", "train/grad_norm", "reward/mean", "algo/clip_frac", "algo/ppo_kl")
# Two optimizer steps per batch (mini-batches) on a fixed old policy (2 epochs), micro-batches smaller than a
# rank's share: the accumulation boundary, the global token counts and the old log-probs are all exercised.
OVER = {"run": {"steps": 3}, "algo": {"ppo_epochs": 2, "mini_batches": 2}, "train": {"micro_batch_size": 2}}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(make, **over):
    t = Trainer(make(**over), overwrite=True)
    t.fit()
    return t, [{k: m[k] for k in KEYS if k in m} for m in read_metrics(t.run_dir) if "loss/policy" in m]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    from rltune.config.load import recipe_from_dict
    from tests.conftest import TINY, merge

    raw = merge(merge(TINY, OVER), {"run": {"output_dir": str(tmp_path_factory.mktemp("single") / "run")}})
    t = Trainer(recipe_from_dict(raw), overwrite=True)
    t.fit()
    rows = [{k: m[k] for k in KEYS if k in m} for m in read_metrics(t.run_dir) if "loss/policy" in m]
    return {k: v.clone() for k, v in t.model.state_dict().items()}, rows


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_ranks_match_the_single_process_engine(tiny_recipe, single, stage):
    weights, rows = single
    t, sharded = _run(tiny_recipe, **OVER, cluster={"train_ranks": 2, "zero_stage": stage})
    assert len(sharded) == len(rows) == 3
    for a, b in zip(rows, sharded):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (stage, k, a[k], b[k])
    assert rows[-1]["train/grad_norm"] > 0  # the steps moved the weights
    got = t.model.state_dict()  # the driver's copy, synced from the ranks (gathered from ZeRO-3 partitions)
    for k, v in weights.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)
    # The checkpoint's model folder loads into one plain process and holds the same weights.
    last = ckpt.find_latest(t.ckpt_root)
    assert (last / "deepspeed").is_dir()
    model, _ = load_policy(t.recipe.model, path=str(last / "model"), trainable=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, weights[k], rtol=1e-4, atol=1e-5)


def test_resume_with_zero_ranks_is_exact(tiny_recipe):
    over = {**OVER, "cluster": {"train_ranks": 2, "zero_stage": 2}}
    _, full = _run(tiny_recipe, **over)
    cut = {**over, "run": {"steps": 3, "save_interval": 1}}
    t = Trainer(tiny_recipe(**cut), overwrite=True)
    t.train_step(); t.step += 1; t.save_checkpoint()  # noqa: E702 (stop after step 1, as a SIGTERM would)
    t.engine.shutdown()
    t2 = Trainer(tiny_recipe(**cut), resume=True)
    assert t2.step == 1
    t2.fit()
    resumed = [{k: m[k] for k in KEYS if k in m} for m in read_metrics(t2.run_dir) if "loss/policy" in m]
    for a, b in zip(full[1:], resumed[-2:]):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k


def test_a_dead_rank_stops_the_run_with_a_clear_error_and_the_checkpoint_intact(tiny_recipe):
    t = Trainer(tiny_recipe(run={"steps": 3}, cluster={"train_ranks": 2, "zero_stage": 2}), overwrite=True)
    t.train_step(); t.step += 1  # noqa: E702
    saved = t.save_checkpoint()
    ray.kill(t.engine.workers[1])
    with pytest.raises(TrainRankDiedError, match="--resume"):
        t.train_step()
    assert ckpt.find_latest(t.ckpt_root) == saved and ckpt.verify(saved)
    t.engine.shutdown()


def test_lora_ranks_train_and_sync_only_the_adapter(tiny_recipe, tmp_path):
    over = {"run": {"steps": 2}, "model": {"lora": {"r": 4, "alpha": 8}},
            "cluster": {"train_ranks": 2, "zero_stage": 2, "rollout_workers": 2, "placement": "colocated"}}
    t = Trainer(tiny_recipe(**over), overwrite=True)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    sent = []
    sync = t.rollout.sync
    t.rollout.sync = lambda model, version, weights_ref=None, **kw: sent.append(ray.get(weights_ref)) or sync(
        model, version, weights_ref, **kw)
    t.fit()
    after = t.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)  # the base stayed frozen on the ranks
    assert sent and all(all("lora_" in k for k in s) for s in sent)  # adapter-only sync
    assert t.rollout.weight_version == 2
    # The exported model is merged: a plain transformers folder with no adapter left.
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(t.run_dir / "final")
    assert not any("lora" in k for k in merged.state_dict())


# PPO with a critic and a KL term in the loss: the reference model and the critic live on the ranks.
PPO = {**OVER, "algo": {**OVER["algo"], "advantage": "gae", "lam": 0.95, "kl_coef": 0.1, "kl_placement": "loss"},
       "critic": {"lr": 1e-3}}
PPO_KEYS = (*KEYS, "algo/kl", "loss/value", "critic/grad_norm", "critic/values_mean")


@pytest.mark.parametrize("stage", [2, 3])
def test_reference_model_and_critic_on_the_ranks_match_one_process(tiny_recipe, stage):
    def rows_of(t):
        return [{k: m[k] for k in PPO_KEYS if k in m} for m in read_metrics(t.run_dir) if "loss/policy" in m]

    one = Trainer(tiny_recipe(**PPO), overwrite=True)
    one.fit()
    want = rows_of(one)
    t = Trainer(tiny_recipe(**PPO, cluster={"train_ranks": 2, "zero_stage": stage}), overwrite=True)
    assert t.ref_model is None and type(t.critic).__name__ == "_RankCritic"  # not in the driver: on the ranks
    t.fit()
    got = rows_of(t)
    assert len(got) == len(want) == 3 and set(PPO_KEYS) <= set(want[0])
    for a, b in zip(want, got):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (stage, k, a[k], b[k])
    assert want[-1]["algo/kl"] > 0 and want[-1]["critic/values_mean"] != 0  # both parts did something
    # The ranks' checkpoint holds the critic's shards next to the policy's.
    assert (ckpt.find_latest(t.ckpt_root) / "deepspeed" / "critic").is_dir()


def test_rank_side_modifier_metrics_reach_the_log_and_its_state_resumes(tiny_recipe):
    """extra_loss runs on the ranks: rank 0's instance reports there (not the driver's idle copy, which would say 0),
    and the ranks' instances are checkpointed, so a resumed run continues the count."""
    over = {**OVER, "cluster": {"train_ranks": 2, "zero_stage": 2},
            "modifiers": [{"use": "tests/helpers/modifiers.py:CountingLoss", "name": "count"}],
            "run": {"steps": 3, "save_interval": 1}}
    t = Trainer(tiny_recipe(**over), overwrite=True)
    t.train_step(); t.step += 1; t.save_checkpoint()  # noqa: E702 (stop after step 1)
    t.engine.shutdown()
    t2 = Trainer(tiny_recipe(**over), resume=True)
    t2.fit()
    calls = [m["mod/count/calls"] for m in read_metrics(t2.run_dir) if "mod/count/calls" in m]
    # 16 rows, 2 mini-batches × 2 epochs, each rank's half of a mini-batch (4 rows) in micro-batches of 2:
    # 2 calls per optimizer step, 8 per training step on rank 0; steps 2 and 3 continue from step 1's 8.
    assert calls == [16.0, 24.0], calls
