"""Runs the recipe's modifiers in order, checks every hook's output, times it, and names the culprit."""

from __future__ import annotations

import difflib
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from rltune import plugins
from rltune.config.schema import ModifierSpec
from rltune.data.batch import PromptBatch
from rltune.modifiers.base import (
    CAPABILITIES,
    HOOKS,
    AdvantageContext,
    GradView,
    LossContext,
    Modifier,
    PromptContext,
    RewardContext,
    StepState,
    TokenWeights,
)

_HOOK_PREFIXES = ("on_", "shape_", "token_", "extra_")


class ModifierError(RuntimeError):
    pass


def check_modifier_class(cls: type, name: str) -> None:
    """Reject a class that is not a Modifier, or defines a method that looks like a hook but is not one."""
    if not (isinstance(cls, type) and issubclass(cls, Modifier)):
        raise ModifierError(f"modifier {name!r}: {cls!r} is not a subclass of rltune.modifiers.Modifier")
    for attr, value in vars(cls).items():
        if callable(value) and attr.startswith(_HOOK_PREFIXES) and attr not in HOOKS:
            near = difflib.get_close_matches(attr, HOOKS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ModifierError(f"modifier {name!r} defines {attr!r}, which is not a hook{hint} (hooks: {HOOKS})")


class ModifierPipeline:
    def __init__(self, mods: list[tuple[str, Modifier]]):
        self.mods = mods
        self.timings: dict[str, float] = defaultdict(float)
        provided: set[str] = set(CAPABILITIES)
        for name, m in mods:
            missing = set(m.requires) - provided
            if missing:
                raise ModifierError(
                    f"modifier {name!r} requires {sorted(missing)}, which neither the trainer ({sorted(CAPABILITIES)}) "
                    "nor an earlier modifier provides; reorder the `modifiers:` list so the provider comes first"
                )
            provided |= set(m.provides)

    @classmethod
    def from_specs(cls, specs: list[ModifierSpec], base_dir: str | Path | None = None) -> "ModifierPipeline":
        mods = []
        for spec in specs:
            target = plugins.resolve(spec.use, "modifiers", base_dir)
            check_modifier_class(target, spec.key)
            plugins.bind_args(target, spec.args, spec.use)
            mods.append((spec.key, target(**spec.args)))
        return cls(mods)

    @property
    def requires(self) -> frozenset[str]:
        return frozenset().union(*(m.requires for _, m in self.mods)) if self.mods else frozenset()

    def __bool__(self) -> bool:
        return bool(self.mods)

    # -------------------------------------------------------------------------------------------- hooks
    def _call(self, name: str, mod: Modifier, hook: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return getattr(mod, hook)(*args)
        except ModifierError:
            raise
        except Exception as e:
            raise ModifierError(f"modifier {name!r} failed in {hook}: {type(e).__name__}: {e}") from e
        finally:
            self.timings[f"time/mod/{name}/{hook}"] += time.perf_counter() - t0

    def _overridden(self, hook: str):
        for name, m in self.mods:
            if getattr(type(m), hook) is not getattr(Modifier, hook):
                yield name, m

    def on_prompts(self, prompts: PromptBatch, ctx: PromptContext) -> PromptBatch:
        for name, m in self._overridden("on_prompts"):
            out = self._call(name, m, "on_prompts", prompts, ctx)
            if not isinstance(out, PromptBatch):
                raise ModifierError(f"modifier {name!r}.on_prompts must return a PromptBatch, got {type(out).__name__}")
            prompts = out
        return prompts

    def shape_rewards(self, rewards: torch.Tensor, ctx: RewardContext) -> torch.Tensor:
        for name, m in self._overridden("shape_rewards"):
            rewards = _check(self._call(name, m, "shape_rewards", rewards.clone(), ctx), rewards, name,
                             "shape_rewards", allow_nan=True)
        return rewards

    def shape_advantages(self, adv: torch.Tensor, ctx: AdvantageContext) -> torch.Tensor:
        for name, m in self._overridden("shape_advantages"):
            adv = _check(self._call(name, m, "shape_advantages", adv.clone(), ctx), adv, name, "shape_advantages")
        return adv

    def token_weights(self, ctx: LossContext) -> TokenWeights:
        weight, mask = None, None
        for name, m in self._overridden("token_weights"):
            tw = self._call(name, m, "token_weights", ctx)
            if tw is None:
                continue
            if tw.weight is not None:
                w = _check(tw.weight, ctx.advantages, name, "token_weights(weight)")
                weight = w if weight is None else weight * w
            if tw.mask is not None:
                if tw.mask.shape != ctx.response_mask.shape or tw.mask.dtype != torch.bool:
                    raise ModifierError(
                        f"modifier {name!r}.token_weights: mask must be bool {tuple(ctx.response_mask.shape)}, got "
                        f"{tw.mask.dtype} {tuple(tw.mask.shape)}"
                    )
                mask = tw.mask if mask is None else mask & tw.mask
        return TokenWeights(weight, mask)

    def extra_loss(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, m in self._overridden("extra_loss"):
            for key, val in self._call(name, m, "extra_loss", ctx).items():
                if not isinstance(val, torch.Tensor) or val.ndim != 0 or not torch.isfinite(val):
                    raise ModifierError(f"modifier {name!r}.extra_loss[{key!r}] must be a finite scalar tensor, got {val!r}")
                out[f"{name}/{key}"] = val
        return out

    def on_gradients(self, grads: GradView, state: StepState) -> None:
        for name, m in self._overridden("on_gradients"):
            self._call(name, m, "on_gradients", grads, state)

    def on_step_end(self, metrics: dict[str, float], state: StepState) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, m in self.mods:
            for k, v in (self._call(name, m, "on_step_end", dict(metrics), state) or {}).items():
                out[f"mod/{name}/{k}"] = float(v)
        out.update(self.timings)
        self.timings.clear()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {name: m.state_dict() for name, m in self.mods}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for name, m in self.mods:
            if name in sd:
                m.load_state_dict(sd[name])


def _check(out: Any, ref: torch.Tensor, name: str, hook: str, allow_nan: bool = False) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ModifierError(f"modifier {name!r}.{hook} must return a tensor, got {type(out).__name__}")
    if out.shape != ref.shape:
        raise ModifierError(f"modifier {name!r}.{hook} returned shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    if not out.is_floating_point():
        raise ModifierError(f"modifier {name!r}.{hook} returned dtype {out.dtype}, expected a float tensor")
    bad = ~torch.isfinite(out) & ~(torch.isnan(ref) if allow_nan else torch.zeros_like(ref, dtype=torch.bool))
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise ModifierError(f"modifier {name!r}.{hook} produced a non-finite value at index {i}")
    return out
