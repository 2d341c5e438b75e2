"""Image rewards: table-driven values, differentiability, the list-returning call through RewardManager, and the
real-scorer adapters on tiny local CLIP folders (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from rltune.config.schema import RewardSpec
from rltune.reward import RewardInput, RewardManager
from rltune.reward.image import TextImageScorer, is_differentiable, preprocess, weighted_image_reward
from rltune_rewards.image_color import Brightness, ColorReward
from rltune_rewards.image_compress import JpegCompressibility, Smoothness
from rltune_rewards.image_scorer import TinyClipScorer


def _flat(rgb, n=1, size=8):
    return torch.tensor(rgb, dtype=torch.float32)[None, :, None, None].expand(n, 3, size, size).clone()


@pytest.mark.parametrize("reward, image, expected", [
    (ColorReward("red"), _flat([1, 0, 0]), 2.0),
    (ColorReward("red"), _flat([0, 1, 1]), -2.0),
    (ColorReward("red"), _flat([0.5, 0.5, 0.5]), 0.0),
    (ColorReward("blue"), _flat([0, 0, 1]), 2.0),
    (ColorReward("red"), _flat([1.5, 0, 0]), 2.0),                    # clamped: as displayed
    (ColorReward("red", clamp=False), _flat([1.5, 0, 0]), 3.0),
    (ColorReward([1.0, 0.0, 0.0]), _flat([0.75, 0, 0]), 0.5),         # raw weights on [−1,1] pixels
    (Brightness(), _flat([0.2, 0.4, 0.6]), 0.4),
    (Smoothness(), _flat([0.3, 0.3, 0.3]), 0.0),
])
def test_table(reward, image, expected):
    assert reward.score_images(image, ["p"]).item() == pytest.approx(expected, abs=1e-6)
    assert reward(RewardInput(["p"], [""], [[]], images=image)) == [pytest.approx(expected, abs=1e-6)]


def test_smoothness_and_jpeg_agree_on_order():
    g = torch.Generator().manual_seed(0)
    smooth, noisy = _flat([0.4, 0.5, 0.6], size=32), torch.rand(1, 3, 32, 32, generator=g)
    imgs = torch.cat([smooth, noisy])
    s, j = Smoothness().score_images(imgs, ["a", "b"]), JpegCompressibility().score_images(imgs, ["a", "b"])
    assert s[0] > s[1] and j[0] > j[1]
    assert not is_differentiable(JpegCompressibility()) and is_differentiable(Smoothness())


def test_differentiable_rewards_give_gradients():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    for r in (ColorReward("red"), Brightness(), Smoothness(), TinyClipScorer()):
        x.grad = None
        r.score_images(x, ["a red square", "x"]).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, type(r).__name__
    x.grad = None
    ColorReward("red").score_images(x, ["a"]).sum().backward()
    assert torch.allclose(x.grad[:, 0], torch.full_like(x.grad[:, 0], 2 / 256))   # d/dR of mean(2R−1) over 256 px


def test_tiny_clip_text_embeddings_follow_colour_words():
    s = TinyClipScorer()
    assert isinstance(s, TextImageScorer)
    t = s.embed_texts(["Red. a square", "a red thing", "Blue. a square", "a square"])
    assert torch.allclose(t[0], t[1], atol=1e-6) and not torch.allclose(t[0], t[2])
    assert torch.allclose(t.norm(dim=-1), torch.ones(4))
    red, blue = _flat([1, 0, 0], size=16), _flat([0, 0, 1], size=16)
    sc = s.score_images(torch.cat([red, blue]), ["red", "red"])
    assert sc[0] == pytest.approx(1.0, abs=1e-5) and sc[1] < 0.99   # red image vs "red" = its own embedding


def test_weighted_image_reward_skips_zero_weights():
    x = _flat([1, 0, 0])
    out = weighted_image_reward([(0.5, ColorReward("red")), (0.0, Brightness()), (2.0, Brightness())], x, ["p"])
    assert out.item() == pytest.approx(0.5 * 2.0 + 2.0 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="non-zero weight"):
        weighted_image_reward([(0.0, Brightness())], x, ["p"])


def test_reward_manager_scores_images_by_entry_point():
    mgr = RewardManager([RewardSpec(use="image_color", name="redness", args={"target": "red"}),
                         RewardSpec(use="image_brightness", weight=0.5)])
    res = mgr(RewardInput(["a", "b"], ["", ""], [[], []], images=torch.cat([_flat([1, 0, 0]), _flat([1, 1, 1])])))
    assert res.scores.tolist() == [[2.0, pytest.approx(1 / 3)], [0.0, 1.0]]
    assert res.rewards.tolist() == [pytest.approx(2 + 1 / 6), 0.5]
    with pytest.raises(Exception, match="images"):
        mgr(RewardInput(["a"], [""], [[]]))


def test_preprocess_resize_crop_normalise():
    x = torch.rand(2, 3, 20, 40, requires_grad=True)
    y = preprocess(x, 10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert y.shape == (2, 3, 10, 10)
    flat = preprocess(_flat([1.0, 0.5, 0.0], size=16), 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.allclose(flat[0, :, 3, 3], torch.tensor([1.0, 0.0, -1.0]), atol=1e-5)
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def _tiny_clip_folder(root):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": 8, "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                                  "num_hidden_layers": 1, "max_position_embeddings": 16, "bos_token_id": 0,
                                  "eos_token_id": 1, "pad_token_id": 1},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                                    "num_hidden_layers": 1, "image_size": 32, "patch_size": 8},
                     projection_dim=12)
    CLIPModel(cfg).save_pretrained(root)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3, "dog</w>": 4}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16).save_pretrained(root)
    return root


def test_clip_and_aesthetic_adapters_on_local_tiny_weights(tmp_path):
    from rltune_rewards.image_real import AestheticScorer, ClipScore, HPSv2, PickScore

    root = _tiny_clip_folder(tmp_path / "clip")
    clip = ClipScore(str(root))
    assert isinstance(clip, TextImageScorer) and PickScore is ClipScore
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    s = clip.score_images(x, ["a cat", "a dog"])
    img, txt = clip.embed_images(x), clip.embed_texts(["a cat", "a dog"])
    assert torch.allclose(s, clip.score_scale * (img * txt).sum(-1))
    assert clip.score_scale == pytest.approx(float(clip.model.logit_scale.exp()))
    s.sum().backward()
    assert x.grad.abs().sum() > 0

    dims = [(12, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    head = {f"layers.{i}.{k}": v for i, (a, b) in zip((0, 2, 4, 6, 7), dims)
            for k, v in torch.nn.Linear(a, b).state_dict().items()}
    torch.save(head, tmp_path / "head.pth")
    aes = AestheticScorer(str(root), str(tmp_path / "head.pth"))
    v = aes.score_images(x.detach(), ["", ""])
    assert v.shape == (2,) and torch.isfinite(v).all()
    assert aes(RewardInput(["", ""], ["", ""], [[], []], images=x.detach())) == pytest.approx(v.tolist())

    with pytest.raises(FileNotFoundError, match="local"):
        ClipScore(str(tmp_path / "missing"))
    with pytest.raises((ImportError, FileNotFoundError)):
        HPSv2(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("module", ["image_color", "image_compress", "image_scorer"])
def test_doctests(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"rltune_rewards.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
