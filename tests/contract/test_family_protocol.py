"""Text and VAR are two PolicyFamily adapters of one Trainer step (rltune/train/family.py, rltune/trainer.py): each
family built from a tiny recipe implements the protocol, its trainer runs Trainer.train_step itself (no step of its
own), and its engine's forward is the family's forward (the rows the update reads give the scoring's log-probs)."""

from __future__ import annotations

import pytest
import torch
import yaml

from rltune.config.load import recipe_from_dict
from rltune.train.family import PolicyFamily
from rltune.trainer import Trainer, build_trainer
from tests.conftest import ROOT, TINY, merge

MEMBERS = ("check_prompts", "start", "response_budget", "reward_input", "on_rewards", "update_rows", "forward",
           "step_metrics", "describe", "evaluate", "save_model", "export", "manifest", "model", "ref_model",
           "tokenizer", "eval_rows", "engine", "rollout", "critic")


def _trainer(kind: str, tmp_path):
    run = {"steps": 1, "eval_interval": 0, "output_dir": str(tmp_path / kind), "threads": 1}
    if kind == "causal_lm":
        raw = merge(TINY, {"run": run})
    else:
        raw = merge(yaml.safe_load((ROOT / "recipes/var-tiny.yaml").read_text()), {"run": run})
    return build_trainer(recipe_from_dict(raw), base_dir=ROOT)


@pytest.mark.parametrize("kind", ["causal_lm", "var"])
def test_family_implements_the_protocol_and_runs_the_one_step(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    t = _trainer(kind, tmp_path)
    f = t.family
    assert isinstance(f, PolicyFamily) and all(hasattr(f, m) for m in MEMBERS)
    assert f.manifest.family == kind and type(t).train_step is Trainer.train_step
    batch = t.rollout.generate(t.loader.next(2), t._sampling())
    ids, mask = f.update_rows(batch)
    T = batch.response_ids.shape[1]
    old, ent, _ = t.engine.score(ids, mask, T, 1.0, True, False)
    with torch.no_grad():
        lp, ent2 = t.engine.forward(ids, mask, T, 1.0, entropy=True)
    assert old.shape == (len(batch), T)
    torch.testing.assert_close(lp.cpu() * batch.response_mask, old * batch.response_mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent2.cpu() * batch.response_mask, ent * batch.response_mask, atol=1e-5, rtol=0)
    m = t.fit()
    assert m["train/optimizer_steps"] == 1.0
