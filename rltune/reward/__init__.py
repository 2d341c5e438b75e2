"""Rewards: the typed input, calling-convention adapters and the manager that weights them."""

from rltune.reward.adapters import RewardError, Scores, adapt
from rltune.reward.api import Reward, RewardInput
from rltune.reward.manager import RewardManager, RewardResult

__all__ = ["RewardInput", "Reward", "RewardManager", "RewardResult", "RewardError", "Scores", "adapt"]
