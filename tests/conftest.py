import copy
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY = {
    "run": {"name": "t", "seed": 0, "steps": 2, "threads": 1},
    "model": {"tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                       "max_position_embeddings": 32}},
    "data": {"source": "builtin:addition", "task_args": {"digits": 1, "n_train": 64, "n_test": 16},
             "shuffle": True},
    "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 4},
    "train": {"lr": 1e-3, "micro_batch_size": 8},
    "rewards": [{"use": "tests/helpers/rewards.py:char_code"}],
    "logging": {"console": False},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@pytest.fixture
def tiny_recipe(tmp_path, monkeypatch):
    """Build a tiny-model Recipe whose run directory lives in tmp_path: tiny_recipe(**section_overrides)."""
    from rltune.config.load import recipe_from_dict

    monkeypatch.chdir(ROOT)

    def make(**over):
        raw = merge(TINY, {"run": {"output_dir": str(tmp_path / "run")}})
        raw = merge(raw, over)
        return recipe_from_dict(raw)

    return make
