"""`tis` and `icepop` as modifiers: the weights/masks they hand the loss and the metrics they log (by hand)."""

from __future__ import annotations

import math

import pytest
import torch

from rltune.config.schema import ModifierSpec
from rltune.modifiers.base import LossContext, StepState
from rltune.modifiers.pipeline import ModifierPipeline

LOG_RATIO = torch.tensor([[0.0, math.log(3), math.log(0.25)], [math.log(0.4), math.log(8), 0.7]])
ROLLOUT = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -3.0, -9.0]])
OLD = ROLLOUT + LOG_RATIO
MASK = torch.tensor([[True, True, True], [True, True, False]])
STATE = StepState(step=0, seed=0)


def _ctx(old=OLD, extras=None) -> LossContext:
    return LossContext(torch.arange(2), old, old, torch.ones(2, 3), MASK, STATE, None, extras or {}, total_rows=2,
                       rollout_logprobs=ROLLOUT)


def _pipe(use: str, **args) -> ModifierPipeline:
    return ModifierPipeline.from_specs([ModifierSpec(use=use, args=args)])


def test_tis_token_weights_and_metrics() -> None:
    pipe = _pipe("tis", cap=2.0)
    tw = pipe.token_weights(_ctx())
    assert tw.mask is None
    assert torch.allclose(tw.weight, torch.tensor([[1.0, 2.0, 0.25], [0.4, 2.0, 1.0]]), atol=1e-6)
    m = pipe.on_step_end({}, STATE)
    assert m["mod/tis/truncated_frac"] == pytest.approx(2 / 5)
    assert m["mod/tis/ratio_max"] == pytest.approx(8.0) and m["mod/tis/ess"] == pytest.approx(0.4311967, rel=1e-5)


def test_tis_sequence_level() -> None:
    tw = _pipe("tis", cap=2.0, level="sequence").token_weights(_ctx())
    assert torch.allclose(tw.weight, torch.tensor([[0.75, 0.75, 0.75], [2.0, 2.0, 1.0]]), atol=1e-6)


def test_icepop_masks_the_tokens_outside_the_band() -> None:
    pipe = _pipe("icepop", low=0.5, high=5.0)
    tw = pipe.token_weights(_ctx())
    # ρ = [[1, 3, 0.25], [0.4, 8, pad]]: 0.25, 0.4 and 8 leave the loss; padding stays to the response mask.
    assert tw.mask.tolist() == [[True, True, False], [False, False, True]]
    assert torch.allclose(tw.weight, torch.tensor([[1.0, 3.0, 0.25], [0.4, 8.0, 1.0]]), atol=1e-6)
    assert pipe.on_step_end({}, STATE)["mod/icepop/masked_frac"] == pytest.approx(3 / 5)
    assert _pipe("icepop", reweight=False).token_weights(_ctx()).weight is None


def test_forced_hint_tokens_count_as_ratio_one() -> None:
    hint = torch.tensor([[False, False, True], [True, False, False]])
    tw = _pipe("icepop").token_weights(_ctx(extras={"hint_mask": hint}))
    assert tw.mask.tolist() == [[True, True, True], [True, False, True]]


def test_no_mismatch_is_a_no_op() -> None:
    ctx = _ctx(old=ROLLOUT)
    assert torch.equal(_pipe("tis").token_weights(ctx).weight, torch.ones(2, 3))
    tw = _pipe("icepop").token_weights(ctx)
    assert tw.mask.all() and torch.equal(tw.weight, torch.ones(2, 3))


@pytest.mark.parametrize("use,args", [("tis", {"cap": 0.0}), ("icepop", {"low": 1.2}), ("tis", {"level": "row"})])
def test_bad_args_are_refused(use, args) -> None:
    with pytest.raises(Exception, match="cap|low|level"):
        _pipe(use, **args)
