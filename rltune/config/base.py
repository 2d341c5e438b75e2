"""The base of every recipe section: frozen, strict, finite."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `nan` is a typo, not a setting; refuse it at load (every float field).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
