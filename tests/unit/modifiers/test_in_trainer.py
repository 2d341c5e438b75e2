"""ReDit, EMPG and ADHint together in two real GRPO steps of a tiny random-init model (CPU, a few seconds)."""

from __future__ import annotations

import math

from rltune.config.load import recipe_from_dict
from rltune.logging import read_metrics
from rltune.trainer import Trainer

REWARD = '''
def first_digit(inp):
    """1.0 when the completion starts with the answer's first digit (dense enough for a random model)."""
    return [float(bool(c) and c[0] == a[0]) for c, a in zip(inp.completions, inp.meta["answer"])]
'''


def test_three_modifiers_in_two_grpo_steps(tmp_path) -> None:
    (tmp_path / "rew.py").write_text(REWARD)
    recipe = recipe_from_dict({
        "run": {"name": "mods", "seed": 0, "steps": 2, "threads": 1, "output_dir": str(tmp_path / "run")},
        "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                           "max_position_embeddings": 32}},
        "data": {"source": "builtin:addition", "task_args": {"digits": 1, "n_train": 64, "n_test": 8},
                 "eval_size": 4},
        "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 4},
        "train": {"lr": 1e-3, "micro_batch_size": 8},
        "rewards": [{"use": "rew.py:first_digit"}],
        # w_min 0.6 so that even easy prompts of 2-digit answers get a one-character hint.
        # EMPG needs steps: a single-turn answer split after each "1" (validate refuses one-step responses)
        "modifiers": [{"use": "redit"}, {"use": "empg", "args": {"segment": "delimiter", "delimiter": "1"}},
                      {"use": "adhint", "args": {"w_min": 0.6, "skip_if_diff_le": -1}}],
        "logging": {"console": False},
    })
    Trainer(recipe, base_dir=tmp_path).fit()
    rows = [m for m in read_metrics(tmp_path / "run") if "time/step" in m]
    assert len(rows) == 2
    for m in rows:
        for key in ("mod/redit/sigma", "mod/redit/noise_std", "mod/redit/flat_group_frac",
                    "mod/empg/step_entropy_mean", "mod/empg/g_max", "mod/empg/shift",
                    "mod/adhint/diff_prior_mean", "mod/adhint/hint_frac", "mod/adhint/boosted_frac",
                    "mod/adhint/cgm_weight_mean", "mod/adhint/masked_hint_frac",
                    "time/mod/redit/shape_rewards", "time/mod/empg/shape_advantages",
                    "time/mod/adhint/on_prompts", "time/mod/adhint/shape_advantages",
                    "time/mod/adhint/token_weights"):
            assert key in m, (key, sorted(k for k in m if "mod/" in k))
            assert math.isfinite(m[key]), (key, m[key])
        assert m["mod/redit/sigma"] == 0.05 and m["mod/adhint/hint_frac"] > 0
