from rltune.modifiers.base import (
    AdvantageContext,
    GradView,
    LossContext,
    Modifier,
    RewardContext,
    StepState,
    TokenWeights,
)

__all__ = ["AdvantageContext", "GradView", "LossContext", "Modifier", "RewardContext", "StepState", "TokenWeights"]
