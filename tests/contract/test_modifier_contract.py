"""The modifier contract, checked for EVERY installed `rltune.modifiers` entry point: modifiers are the one
extension mechanism, and hooks get typed contexts, return new tensors and never mutate their inputs.

Built with default args on a small hand-made batch (with the VAR token layout in its extras, and a tiny diffusion
policy's context for the diffusion-only ones), each overridden hook must keep shapes, leave its inputs untouched,
act (change what it is for: no hook may pass by doing nothing), be deterministic for the same (seed, step) (and
differ across steps where it draws noise), and `state_dict` must round-trip. The pipeline must reject misspelled hooks and name the modifier and the hook that
returned a wrong shape or a NaN.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rltune import plugins
from rltune.families import supported_families
from rltune.data.batch import PromptBatch, RolloutBatch
from rltune.modifiers.base import (
    AdvantageContext,
    LossContext,
    Modifier,
    PromptContext,
    RewardContext,
    StepState,
    TokenWeights,
)
from rltune.modifiers.pipeline import ModifierError, ModifierPipeline, check_modifier_class

B, G, T = 2, 4, 6
N = B * G
ENTRY_POINTS = plugins.installed("modifiers")
# Hooks that draw from StepState.generator: their output must change with the step.
RANDOM_HOOKS = {"redit": {"shape_rewards"}, "adhint": {"on_prompts"}}
TENSOR_HOOKS = ("shape_rewards", "shape_advantages", "token_weights", "extra_loss")


def _batch() -> RolloutBatch:
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([6, 3, 5, 4, 2, 6, 5, 1])
    hint_len = torch.tensor([0, 0, 2, 1, 0, 0, 1, 0])
    pos = torch.arange(T)
    mask = pos[None] < lens[:, None]
    ids = torch.where(mask, torch.randint(4, 20, (N, T), generator=g), 0)
    return RolloutBatch(
        prompt_ids=torch.randint(4, 20, (N, 3), generator=g), prompt_mask=torch.ones(N, 3, dtype=torch.bool),
        response_ids=ids, response_mask=mask, response_len=lens,
        rollout_logprobs=torch.where(mask & ~(pos[None] < hint_len[:, None]), -torch.rand(N, T, generator=g), 0.0),
        group_id=torch.arange(B).repeat_interleave(G), truncated=torch.zeros(N, dtype=torch.bool),
        prompts=["1+2="] * G + ["3+4="] * G, completions=["3"] * N,
        meta={"answer": ["3"] * G + ["7"] * G, "solution": ["3"] * G + ["7"] * G},
        extras={"hint_mask": pos[None] < hint_len[:, None], "is_hint": hint_len > 0, **_var_layout()},
    )


def _var_layout() -> dict[str, torch.Tensor]:
    """The VAR trainer's extras for T = 6 = 1 + 1 + 4 tokens (scales 1×1, 1×1, 2×2) of an 8×8 image, a box on its
    top-left quadrant, and K = 2 completions per prefix (VMR's prefix step)."""
    scales = torch.tensor([[1, 1], [1, 1], [2, 2]])
    return {"scale_idx": torch.tensor([0, 1, 2, 2, 2, 2]).expand(N, T).clone(),
            "scale_hw": scales.expand(N, -1, -1).clone(), "image_hw": torch.tensor([8, 8]).expand(N, 2).clone(),
            "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]).expand(N, 1, 4).clone(),
            "prefix_id": torch.arange(N) // 2}


BATCH = _batch()
RAW = torch.tensor([1.0, 0, 1, 1, 0, 0, 0, 0])        # one mixed group, one flat group
ENTROPY = torch.rand(N, T, generator=torch.Generator().manual_seed(1)) * 2
OLD = BATCH.rollout_logprobs - 0.01


def _state(step: int = 3) -> StepState:
    return StepState(step=step, seed=11, total_steps=10)


def _probe(prompts: PromptBatch, n: int, keep: bool = False) -> torch.Tensor:
    return torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])[: len(prompts), :n]


def _prompts() -> PromptBatch:
    sol = ["2+4=6, 1+3=4, so 46", "6+7=13 carry 1, 5+1=6, so 63"]   # long enough for non-empty hints
    return PromptBatch(prompts=["12+34=", "56+7="], meta={"prompt": ["12+34=", "56+7="], "answer": ["46", "63"],
                                                         "solution": sol})


def _adv() -> torch.Tensor:
    from rltune.algo import group_norm

    return group_norm(RAW, BATCH.group_id, BATCH.response_mask)


def _diffusion_ctx(name: str, st: StepState):
    """A DiffusionLossContext on a random-init tiny policy (flow for direct_align, stochastic DDIM otherwise)."""
    import sys

    from rltune.visual.diffusion_context import DiffusionLossContext
    from rltune_rewards.image_scorer import TinyClipScorer

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "unit" / "visual"))
    from diffusion_helpers import tiny_policy

    if name not in _POLICIES:
        _POLICIES[name] = tiny_policy("flow" if name == "direct_align" else "ddim", steps=3, eta=1.0)
    pol = _POLICIES[name]
    ro = pol.rollout(["a red square", "a blue square"], torch.Generator().manual_seed(st.step))
    adv = torch.tensor([[1.0, 0.5, -1.0], [-1.0, 0.25, 1.0]])
    return DiffusionLossContext(torch.arange(2), ro, pol, lambda im, p: im[:, 0].mean((1, 2)), (TinyClipScorer(),),
                                torch.zeros(2), st, total_rows=2, advantages=adv)


_POLICIES: dict = {}


def _args(hook: str, step: int = 3, name: str = ""):
    """Fresh inputs for `hook` (the tensors are re-made each time, so a mutation cannot leak between calls)."""
    st = _state(step)
    if name and supported_families(plugins.resolve(name, "modifiers")) == ["diffusion"]:
        if hook == "shape_advantages":   # the diffusion step's context: prompts, raw rewards, group ids
            from rltune.visual.diffusion_context import DiffusionAdvantageContext

            return (torch.zeros(N, 3), DiffusionAdvantageContext(BATCH.prompts, RAW.clone(), BATCH.group_id.clone(),
                                                                  st))
        assert hook == "extra_loss", hook
        return (_diffusion_ctx(name, st),)
    if hook == "on_prompts":
        return (_prompts(), PromptContext(st, _probe, samples_per_prompt=G))
    if hook == "shape_rewards":
        return (RAW.clone(), RewardContext(BATCH, RAW.clone(), RAW[:, None].clone(), st))
    if hook == "shape_advantages":
        return (_adv(), AdvantageContext(BATCH, RAW.clone(), RAW.clone(), BATCH.response_mask.clone(),
                                         BATCH.group_id.clone(), st, OLD.clone(), ENTROPY.clone(),
                                         {k: v.clone() for k, v in BATCH.extras.items()}))
    if hook in ("token_weights", "extra_loss"):
        lp = OLD.clone().requires_grad_(True)
        return (LossContext(torch.arange(N), lp, OLD.clone(), _adv(), BATCH.response_mask.clone(), st,
                            ENTROPY.clone(), {k: v.clone() for k, v in BATCH.extras.items()}, total_rows=N,
                            rollout_logprobs=BATCH.rollout_logprobs.clone()),)
    raise AssertionError(hook)


def _snapshot(x):
    """A deep copy of every tensor reachable from a hook's inputs (contexts are dataclasses)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_snapshot(v) for v in x)
    if isinstance(x, dict):
        return {k: _snapshot(v) for k, v in x.items()}
    if hasattr(x, "__dataclass_fields__"):
        return {f: _snapshot(getattr(x, f)) for f in x.__dataclass_fields__}
    return copy.copy(x) if isinstance(x, (str, int, float, bool, type(None))) else id(x)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and bool(
            torch.equal(torch.nan_to_num(a, nan=1234.5), torch.nan_to_num(b, nan=1234.5)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, TokenWeights):
        return _same(a.weight, b.weight) and _same(a.mask, b.mask)
    if isinstance(a, PromptBatch):
        return a.prompts == b.prompts and a.hints == b.hints and _same(a.meta, b.meta)
    return a == b


def _overridden(cls: type) -> list[str]:
    hooks = ("on_prompts", *TENSOR_HOOKS)
    return [h for h in hooks if getattr(cls, h) is not getattr(Modifier, h)]


def _build(name: str) -> Modifier:
    cls = plugins.resolve(name, "modifiers")
    check_modifier_class(cls, name)
    plugins.bind_args(cls, {}, name)
    return cls()


def _check_output(hook: str, out, args) -> None:
    if hook == "on_prompts":
        assert isinstance(out, PromptBatch) and len(out) == len(args[0])
        if out.hints is not None:
            assert len(out.hints) == len(out) and all(len(h) == G for h in out.hints)
    elif hook in ("shape_rewards", "shape_advantages"):
        assert out.shape == args[0].shape and out.is_floating_point()
    elif hook == "token_weights":
        if out is not None:
            ref = args[0].response_mask
            assert out.weight is None or (out.weight.shape == ref.shape and torch.isfinite(out.weight).all())
            assert out.mask is None or (out.mask.shape == ref.shape and out.mask.dtype == torch.bool)
    elif hook == "extra_loss":
        assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())


def _acts(hook: str, out, args) -> bool:
    """The hook changed what it is for (a modifier that returns its input unchanged would pass vacuously)."""
    if hook == "on_prompts":
        return out.hints is not None or out.plan is not None or out.meta.keys() != args[0].meta.keys()
    if hook in ("shape_rewards", "shape_advantages"):
        return not _same(out, args[0])
    if hook == "token_weights":
        return out is not None and (out.weight is not None or out.mask is not None)
    return bool(out) and all(v.requires_grad for v in out.values())


# ------------------------------------------------------------------------------------ every entry point
def test_builtins_are_installed() -> None:
    assert {"redit", "empg", "adhint"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_hooks_keep_shapes_and_do_not_mutate(name: str) -> None:
    mod = _build(name)
    hooks = _overridden(type(mod))
    assert hooks, f"{name} overrides no hook"
    ModifierPipeline([(name, mod)])                      # `requires` is satisfiable by the trainer
    for hook in hooks:
        args = _args(hook, name=name)
        before = _snapshot(args)
        out = getattr(mod, hook)(*args)
        _check_output(hook, out, args)
        assert _same(_snapshot(args), before), f"{name}.{hook} mutated its inputs"
    mod.on_step_end({}, _state())


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_hook_acts(name: str) -> None:
    """At step 0 (VMR's prefix stage) every overridden hook changes its output; none is a silent no-op."""
    mod = _build(name)
    for hook in _overridden(type(mod)):
        args = _args(hook, step=0, name=name)
        assert _acts(hook, getattr(mod, hook)(*args), args), f"{name}.{hook} did nothing"


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_deterministic_per_step(name: str) -> None:
    cls = type(_build(name))
    for hook in _overridden(cls):
        a = getattr(_build(name), hook)(*_args(hook, step=3, name=name))
        b = getattr(_build(name), hook)(*_args(hook, step=3, name=name))
        assert _same(a, b), f"{name}.{hook} is not deterministic for the same (seed, step)"
        if hook in RANDOM_HOOKS.get(name, ()):
            c = getattr(_build(name), hook)(*_args(hook, step=4, name=name))
            assert not _same(a, c), f"{name}.{hook} draws the same noise at different steps"


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_state_dict_round_trips(name: str, tmp_path) -> None:
    from rltune.train.state_io import load_state, save_state

    mod = _build(name)
    for hook in _overridden(type(mod)):
        getattr(mod, hook)(*_args(hook, name=name))
    mod.on_step_end({}, _state())
    save_state({"mod": mod.state_dict()}, tmp_path)     # what a checkpoint does (JSON + safetensors)
    fresh = _build(name)
    fresh.load_state_dict(load_state(tmp_path)["mod"])
    assert _same(fresh.state_dict(), mod.state_dict())


# --------------------------------------------------------------------------------------- the pipeline
def test_misspelled_hook_is_rejected() -> None:
    class Typo(Modifier):
        def shape_advantage(self, adv, ctx):
            return adv

    with pytest.raises(ModifierError, match="shape_advantage.*did you mean 'shape_advantages'"):
        check_modifier_class(Typo, "typo")


class _WrongShape(Modifier):
    def shape_advantages(self, adv, ctx):
        return adv[:, :-1]


class _Nan(Modifier):
    def shape_rewards(self, rewards, ctx):
        return rewards * float("nan")


class _BadWeight(Modifier):
    def token_weights(self, ctx):
        return TokenWeights(weight=torch.full_like(ctx.advantages, float("nan")))


@pytest.mark.parametrize("cls, hook", [(_WrongShape, "shape_advantages"), (_Nan, "shape_rewards"),
                                       (_BadWeight, "token_weights")])
def test_pipeline_names_the_culprit(cls, hook) -> None:
    pipe = ModifierPipeline([("redit", _build("redit")), ("culprit", cls())])
    with pytest.raises(ModifierError) as e:
        getattr(pipe, hook)(*_args(hook))
    assert "'culprit'" in str(e.value) and hook in str(e.value)
