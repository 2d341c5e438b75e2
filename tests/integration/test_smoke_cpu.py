"""Two GRPO steps of a tiny random-init model: finite losses, every trained parameter changed, the weight
version bumped, metrics and a checkpoint written, the exported model loads."""

import copy
import json
import math

import torch

from rltune.logging import read_metrics
from rltune.trainer import Trainer


def test_two_steps_change_every_parameter(tiny_recipe):
    r = tiny_recipe()
    t = Trainer(r)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    unchanged = [n for n, p in t.model.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged, f"parameters not updated: {unchanged}"
    rows = read_metrics(t.run_dir)
    train_rows = [m for m in rows if "loss/total" in m]
    assert [m["step"] for m in train_rows] == [1, 2]
    for m in train_rows:
        assert math.isfinite(m["loss/total"]) and math.isfinite(m["train/grad_norm"])
        for key in ("time/rollout", "time/reward", "time/advantage", "time/update", "time/sync"):
            assert m[key] > 0, key
    assert train_rows[-1]["rollout/weight_version"] == 1  # batch of step 2 was sampled after one update
    assert t.rollout.weight_version == 2
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    assert (t.run_dir / "checkpoints" / "step_000002" / "manifest.json").is_file()
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(t.run_dir / "final")
    for n, p in exported.named_parameters():
        assert torch.equal(p, dict(t.model.named_parameters())[n]), n


def test_kl_loads_reference_only_when_needed(tiny_recipe):
    assert Trainer(tiny_recipe()).ref_model is None
    t = Trainer(tiny_recipe(algo={"kl_coef": 0.1}, run={"steps": 1}))
    assert t.ref_model is not None
    ref_before = {n: p.clone() for n, p in t.ref_model.named_parameters()}
    t.fit()
    m = [x for x in read_metrics(t.run_dir) if "algo/kl" in x][-1]
    assert math.isfinite(m["algo/kl"]) and m["algo/kl"] >= 0
    assert all(torch.equal(ref_before[n], p) for n, p in t.ref_model.named_parameters())


def test_lora_trains_only_adapters(tiny_recipe):
    t = Trainer(tiny_recipe(model={"lora": {"r": 4, "alpha": 8}}, run={"steps": 2}))
    frozen = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    t.fit()
    params = dict(t.model.named_parameters())
    assert all(torch.equal(frozen[n], params[n]) for n in frozen)
    # lora_B starts at zero, so lora_A's first gradient is zero: both have moved after two steps
    assert all(not torch.equal(trained[n], params[n]) for n in trained)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(t.run_dir / "final")
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_micro_batching_does_not_change_the_update(tiny_recipe):
    """Same batch, 1 vs 4 micro-batches: identical gradients, so identical weights after a step."""
    weights = []
    for mb in (16, 4):
        t = Trainer(tiny_recipe(train={"micro_batch_size": mb, "max_grad_norm": None}, run={"steps": 1}),
                    overwrite=True)
        t.eval_rows = None
        t.fit()
        weights.append({n: p.detach().clone() for n, p in t.model.named_parameters()})
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], rtol=0, atol=2e-6)
