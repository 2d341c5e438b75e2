"""rltune from Python: build a recipe as a dict, validate it into a typed `Recipe`, train, read the metrics.

    python examples/python_api.py                                   # 30 steps into runs/python-api
    python examples/python_api.py --steps 2 --output-dir /tmp/api   # what tests/integration runs

Run it from the repository root. The reward lives in this file and the recipe names it by file path, as a
YAML recipe would (`use: path/to/file.py:attr`); the file is imported again as a plugin module, so
everything that runs on import must stay under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import rltune
from rltune.config.load import recipe_from_dict


def digit_chars(completions: list[str], **kwargs) -> list[float | None]:
    """TRL-style reward: the fraction of the completion's characters that are digits (None: empty)."""
    return [sum(ch.isdigit() for ch in c) / len(c) if c else None for c in completions]


def make_recipe(steps: int, output_dir: str) -> rltune.Recipe:
    raw = {
        "run": {"name": "python-api", "steps": steps, "output_dir": output_dir, "eval_interval": 10},
        "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                           "max_position_embeddings": 32}},
        "data": {"source": "builtin:addition", "task_args": {"digits": 2}, "eval_size": 100},
        "rollout": {"prompts_per_step": 8, "samples_per_prompt": 4, "max_new_tokens": 4},
        "train": {"lr": 1e-3, "micro_batch_size": 32},
        "rewards": [
            {"use": "exact_match", "weight": 0.0},  # first reward = eval/accuracy; weight 0: logged only
            {"use": f"{Path(__file__).resolve()}:digit_chars"},
        ],
        "logging": {"console": False},
    }
    # recipe_from_dict validates like `rltune validate` does for a YAML file: a typo raises RecipeError naming
    # the key and the nearest valid one. Recipe.model_validate(raw) gives the raw pydantic error instead.
    return recipe_from_dict(raw, source="python_api.py")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--output-dir", default="runs/python-api")
    args = p.parse_args()
    recipe = make_recipe(args.steps, args.output_dir)
    print(f"{recipe.rollout.batch_size} completions per step, {recipe.micro_batches} micro-batch(es)")
    # overwrite=True starts over when the run directory exists; resume=True would continue it instead.
    last = rltune.train(recipe, overwrite=True)
    keys = ("reward/mean", "reward/digit_chars/mean", "eval/accuracy", "loss/total", "time/step")
    print(json.dumps({k: round(last[k], 4) for k in keys if k in last}))
    print(f"model: {Path(args.output_dir) / 'final'}; metrics: {Path(args.output_dir) / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
