from rltune.modifiers.base import (
    AdvantageContext,
    GradView,
    LossContext,
    Modifier,
    PromptContext,
    RewardContext,
    StepState,
    TokenWeights,
)

__all__ = ["AdvantageContext", "GradView", "LossContext", "Modifier", "PromptContext", "RewardContext", "StepState", "TokenWeights"]
