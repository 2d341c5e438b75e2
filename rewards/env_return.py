"""Environment return: the episode's return that a multi-turn rollout (`env:` in the recipe) put in the batch.

The multi-turn engine (rltune/rollout/multiturn.py) writes meta["env_return"] per row (the last step's reward
or the sum over turns, 0 for an episode that hung or raised), so recipes keep an ordinary `rewards:` list and
the return reaches the advantage through the normal reward path.
"""

from __future__ import annotations

from rltune.reward import RewardError, RewardInput
from rltune.reward.adapters import Scores


class EnvReturn:
    """meta["env_return"] as the reward. Metrics (reward/env_return/...): turns (mean model turns),
    end_<reason> (fraction of episodes that ended for each reason: done, max_turns, max_total_tokens,
    timeout, error).

    >>> from rltune.reward import RewardInput
    >>> inp = RewardInput(prompts=["p", "p"], completions=["a", "b"], completion_ids=[[], []],
    ...                   meta={"env_return": [1.0, 0.0], "env_turns": [2, 4], "env_end": ["done", "timeout"]})
    >>> out = EnvReturn()(inp)
    >>> list(out), out.metrics["turns"], out.metrics["end_timeout"]
    ([1.0, 0.0], 3.0, 0.5)
    """

    def __call__(self, inp: RewardInput) -> list[float | None]:
        if "env_return" not in inp.meta:
            raise RewardError("env_return needs meta['env_return'], written by multi-turn rollouts: add an `env:` "
                              "section to the recipe (docs/agents.md)")
        values = [float(v) for v in inp.meta["env_return"]]
        metrics: dict[str, float] = {}
        n = max(1, len(values))
        if "env_turns" in inp.meta:
            metrics["turns"] = sum(inp.meta["env_turns"]) / n
        ends = inp.meta.get("env_end", [])
        for reason in ("done", "max_turns", "max_total_tokens", "timeout", "error"):
            if ends:
                metrics[f"end_{reason}"] = sum(e == reason for e in ends) / n
        return Scores(values, metrics=metrics)
