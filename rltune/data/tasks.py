"""Built-in synthetic tasks with verifiable answers, for CPU demos and tests (no downloads).

`addition`: "{a}+{b}=" -> "{a+b}", N-digit operands. The held-out test split is a fixed set of distinct
problems drawn with its own seed; training problems never contain a test problem. ADHint needs reference
solutions: for addition the reference is the answer itself, so `solution` = `answer`.
"""

from __future__ import annotations

import random
from typing import Callable

from rltune.data.chain import chain_rows
from rltune.envs.calculator import calculator_rows
from rltune.envs.guess_number import guess_number_rows
from rltune.visual.var_data import var_toy

Rows = list[dict]


def _pair(rng: random.Random, digits: int) -> tuple[int, int]:
    hi = 10**digits - 1
    return rng.randint(0, hi), rng.randint(0, hi)


def addition_test(digits: int = 3, n_test: int = 500, test_seed: int = 1234) -> list[tuple[int, int]]:
    rng, seen, out = random.Random(test_seed), set(), []
    while len(out) < n_test:
        p = _pair(rng, digits)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def addition_train(digits: int, n: int, seed: int, n_test: int = 500, test_seed: int = 1234) -> list[tuple[int, int]]:
    held_out = set(addition_test(digits, n_test, test_seed))
    rng, out = random.Random(seed), []
    while len(out) < n:
        p = _pair(rng, digits)
        if p not in held_out:
            out.append(p)
    return out


def _rows(pairs: list[tuple[int, int]]) -> Rows:
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b), "solution": str(a + b)} for a, b in pairs]


def addition(split: str, digits: int = 3, n_train: int = 6400, train_seed: int = 142, n_test: int = 500,
             test_seed: int = 1234) -> Rows:
    if split == "test":
        return _rows(addition_test(digits, n_test, test_seed))
    return _rows(addition_train(digits, n_train, train_seed, n_test, test_seed))


# Agent tasks: rows for the multi-turn environments of rltune/envs (recipes/agent-*-tiny.yaml).
TASKS: dict[str, Callable[..., Rows]] = {"addition": addition, "guess_number": guess_number_rows,
                                         "calculator": calculator_rows, "chain": chain_rows}
TASKS["var_toy"] = var_toy  # the VAR demo's class-conditional prompts (rltune/visual/var_data.py)


# Image prompts for diffusion policies (no answers: recipes set data.answer_column: null). `animals` is the
# simple-animals list of DDPO/AlignProp's aesthetic runs; `shapes` suits the 16×16 tiny denoiser. The test split
# holds every 4th prompt, the train split the others.
IMAGE_PROMPTS = {
    "animals": ["cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow", "goat",
                "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle", "ant", "butterfly", "fish",
                "shark", "whale", "dolphin", "squirrel", "mouse", "rat", "snake", "turtle", "frog", "chicken", "duck",
                "goose", "bee", "pig", "turkey", "fly", "llama", "camel", "bat", "gorilla", "hedgehog", "kangaroo"],
    "shapes": ["a square", "a small square", "a large square", "a square on a plain background", "a flat picture",
               "a tile", "a block", "a patch of colour"],
}


def image_prompts(split: str, set: str = "shapes", template: str = "{}") -> Rows:
    if set not in IMAGE_PROMPTS:
        raise ValueError(f"image_prompts set must be one of {sorted(IMAGE_PROMPTS)}, got {set!r}")
    items = IMAGE_PROMPTS[set]
    keep = [p for i, p in enumerate(items) if (i % 4 == 3) == (split == "test")]
    return [{"prompt": template.format(p)} for p in keep]


TASKS["image_prompts"] = image_prompts
