"""PPO's value model: a transformers backbone (the causal LM without its LM head) + `nn.Linear(hidden, 1)`.

trl 1.16 no longer ships `AutoModelForCausalLMWithValueHead`, so rltune has this small module. The head
starts at zero (V ≡ 0 before any update: GAE then starts as a plain Monte-Carlo return).
"""

from __future__ import annotations

import torch
from torch import nn

from rltune.config.schema import ModelConfig, TinyModelConfig
from rltune.models.policy import load_policy


class ValueModel(nn.Module):
    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
        """Values [n,T] of the states before each of the last T tokens of `input_ids` [n,P+T]: read at the
        positions that predict the response tokens (the same positions as the policy's log-probs)."""
        T = response_len
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids,
                            use_cache=False)
        hidden = out.last_hidden_state[:, -(T + 1):-1]
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


def load_value_model(model_cfg: ModelConfig, path: str | None = None, tiny: TinyModelConfig | None = None,
                     seed: int = 0) -> ValueModel:
    """A value model whose backbone is the causal LM at `path` (or built from `tiny`, or the policy's config),
    full-parameter (a LoRA policy's critic is trained in full)."""
    cfg = model_cfg.model_copy(update={"lora": None})
    if tiny is not None:
        cfg = cfg.model_copy(update={"path": None, "tiny": tiny})
    lm, _ = load_policy(cfg, path=path, seed=seed)
    backbone = lm.base_model
    if backbone is lm:
        raise ValueError(f"{type(lm).__name__} exposes no base model (backbone without the LM head) for a value model")
    return ValueModel(backbone, lm.config.hidden_size).to(next(lm.parameters()).dtype).train()
