"""`rltune eval`: greedy held-out accuracy of a saved text model, with only what evaluation needs (the model, a
transformers.generate rollout engine, the rewards and the held-out rows): no optimizer, no reference model, no
Ray, no run directory."""

from __future__ import annotations

from pathlib import Path

from rltune.config.load import RecipeError
from rltune.config.schema import Recipe

__all__ = ["evaluate_model"]


def evaluate_model(recipe: Recipe, path: str | Path, base_dir: str | Path = ".") -> dict[str, float]:
    """The recipe's held-out evaluation (greedy, as during training) of the model folder `path` (a run's final/,
    an SFT output, a merged export)."""
    from rltune.models.policy import load_policy, resolve_device
    from rltune.reward import RewardManager
    from rltune.rollout.base import SamplingParams
    from rltune.rollout.hf_engine import HFEngine
    from rltune.train.shared import greedy_eval, text_eval_rows

    r = recipe
    if r.model.kind != "causal_lm":
        raise RecipeError(f"rltune eval scores text models; a model.kind: {r.model.kind} run evaluates during "
                          "training (run.eval_interval) and its report shows the curve")
    folder = r.model.model_copy(update={"path": str(path), "tiny": None, "lora": None, "gguf_file": None})
    model, tok = load_policy(folder, path=str(path), seed=r.run.seed, trainable=False)
    model.to(resolve_device(r.run.device)).eval()
    rows = text_eval_rows(r.data, tok, base_dir)
    if rows is None:
        raise RecipeError("the recipe has no held-out rows: set data.eval_source (and data.eval_split)")
    rollout = HFEngine(model, tok, r.data.max_prompt_tokens, decode=r.rollout.decode)
    if r.env is not None:  # multi-turn agent episodes, as in training (docs/agents.md)
        from rltune.rollout.multiturn import MultiTurnEngine

        rollout = MultiTurnEngine(rollout, r.env, base_dir=base_dir)
    ro = r.rollout
    sampling = SamplingParams(n=1, max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p,
                              top_k=ro.top_k, greedy=True)
    return greedy_eval(rollout, RewardManager(r.rewards, base_dir=base_dir), rows, sampling, r.rewards, step=0)
