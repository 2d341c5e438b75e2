"""rewards/bright_window.py: the detector-style mask source of the VAR evidence row (hand-built images)."""

from __future__ import annotations

import pytest
import torch

from rltune.reward import RewardError, RewardInput
from rltune_rewards.bright_window import BrightWindow, brightest_window


def test_finds_the_brightest_window_not_a_box_from_the_prompt():
    img = torch.zeros(2, 3, 8, 8)
    img[0, :, 5:8, 0:3] = 1.0            # bright 3x3 in the bottom-left corner
    img[1, 0, 0:3, 4:7] = 0.9            # one channel only: mean over channels 0.3
    mask, best = brightest_window(img, 3)
    assert mask[0].nonzero().tolist() == [[y, x] for y in range(5, 8) for x in range(3)]
    assert mask[1].nonzero().tolist() == [[y, x] for y in range(3) for x in range(4, 7)]
    assert best.tolist() == pytest.approx([1.0, 0.3])
    out = BrightWindow(size=3)(RewardInput(prompts=["class 0", "class 1"], completions=["", ""],
                                           completion_ids=[[], []], meta={"region": [[0, 0, 3, 3]] * 2}, images=img))
    assert list(out) == pytest.approx([1.0, 0.3])
    assert torch.equal(torch.stack(out.extras["saliency"]), mask)     # [H,W] per image, what var_mask reads


def test_window_larger_than_the_image_is_refused():
    with pytest.raises(RewardError, match="size=9 must be in 1..8"):
        brightest_window(torch.zeros(1, 3, 8, 8), 9)
