"""FLUX-style transformer denoisers: a tiny FLUX.1-layout folder (transformer/, vae/, text_encoder/ CLIP,
text_encoder_2/ T5, tokenizer/, tokenizer_2/, scheduler/) built offline from configs, loaded through
load_diffusion_policy; packing and ids against diffusers' FluxPipeline, rollouts, AlignProp / Direct-Align gradients
into the LoRA only, gradient checkpointing, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rltune.modifiers.base import StepState
from rltune.modifiers.reward_backprop import AlignProp, DirectAlign
from rltune.models.diffusion_flux import is_flux_folder, latent_image_ids, pack_latents, unpack_latents

WORDS = ["a", "cat", "dog", "photo", "of", "red", "blue"]
LORA = {"r": 2, "alpha": 2.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                  "add_v_proj", "to_add_out", "proj_mlp", "proj_out"]}


def make_tiny_flux(root: Path, guidance_embeds: bool = True) -> Path:
    """FLUX.1 layout with tiny random-init parts: 1 double + 1 single block (2 heads × 16), a 16-channel VAE with
    factor 2 and FLUX's scaling/shift factors, CLIP (32-d pooled) and T5 (32-d states) built from configs."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerFast, T5Config, \
        T5EncoderModel

    torch.manual_seed(0)
    FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                           guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8)).save_pretrained(
        root / "transformer")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=16,
                  norm_num_groups=8, sample_size=16, scaling_factor=0.3611, shift_factor=0.1159,
                  use_quant_conv=False, use_post_quant_conv=False).save_pretrained(root / "vae")
    # CLIP tokenizer + text encoder as the tiny SD folder (diffusion_helpers.make_tiny_sd), with BPE merges that
    # spell out each word (without them multi-letter words are unknown and every prompt pools the same state)
    vocab, merges = {"<|startoftext|>": 0, "<|endoftext|>": 1}, []
    for w in WORDS:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        merges += [f"{w[:j]} {part}" for j, part in enumerate(parts[1:], 1)]
        for tok in parts + [w[:j] for j in range(1, len(w))] + [w + "</w>"]:
            vocab.setdefault(tok, len(vocab))
    tdir = root / "tokenizer"
    tdir.mkdir(parents=True)
    (tdir / "vocab.json").write_text(json.dumps(vocab))
    (tdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(str(tdir / "vocab.json"), str(tdir / "merges.txt"), model_max_length=8).save_pretrained(tdir)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                 num_hidden_layers=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    # T5: a word-level fast tokenizer (T5's <pad>=0, </s>=1, <unk>=2) over the same words
    t5_vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    wl = Tokenizer(models.WordLevel(t5_vocab, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=wl, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=6).save_pretrained(root / "tokenizer_2")
    T5EncoderModel(T5Config(vocab_size=len(t5_vocab), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).save_pretrained(
        root / "text_encoder_2")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    return root


@pytest.fixture(scope="module")
def flux_root(tmp_path_factory) -> Path:
    return make_tiny_flux(tmp_path_factory.mktemp("flux") / "FLUX.1-tiny")


def flux_policy(root: Path, steps: int = 3, lora: bool = True, ckpt: bool = True, guidance: float = 3.5,
                shift: float = 3.0):
    from rltune.config.schema import ModelConfig
    from rltune.models.diffusion import load_diffusion_policy

    cfg = ModelConfig(kind="diffusion", path=str(root), gradient_checkpointing=ckpt, lora=LORA if lora else None,
                      diffusion={"scheduler": "flow", "num_steps": steps, "guidance_scale": guidance,
                                 "flow_shift": shift, "resolution": 16})
    return load_diffusion_policy(cfg)


def _redness(images, prompts):
    x = images * 2 - 1
    return x[:, 0].mean((1, 2)) - 0.5 * (x[:, 1] + x[:, 2]).mean((1, 2))


def _ctx(pol, ro):
    from rltune.visual.diffusion_context import DiffusionLossContext

    n = len(ro)
    return DiffusionLossContext(torch.arange(n), ro, pol, _redness, (), torch.zeros(n),
                                StepState(step=0, seed=0, total_steps=1), total_rows=n)


def _seed_lora(pol, seed=0):
    """Seeded LoRA weights with B ≠ 0: PEFT starts lora_B at 0, which blocks lora_A's gradient (after one optimizer
    step B is non-zero), and draws lora_A from the global RNG (two loads would differ)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pol.trainable():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if "lora_B" in n else 0.3))


# -------------------------------------------------------------------------------------------------- tests
def test_pack_unpack_and_ids_match_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 6, 4)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 4)) and packed.shape == (2, 6, 64)
    assert torch.equal(unpack_latents(packed, 6, 4), x)
    assert torch.equal(unpack_latents(packed, 6, 4), FluxPipeline._unpack_latents(packed, 12, 8, 2))
    assert torch.equal(latent_image_ids(3, 2), FluxPipeline._prepare_latent_image_ids(1, 3, 2, "cpu", torch.float32))


def test_flux_folder_loads_and_rolls_out(flux_root):
    assert is_flux_folder(flux_root) and not is_flux_folder(flux_root / "vae")
    pol = flux_policy(flux_root)
    assert type(pol.denoiser).__name__ == "FluxTransformer2DModel" and pol.adapter is not None
    assert pol.latent_shape == (16, 8, 8) and pol.guidance_scale == 1.0      # distilled guidance: no CFG batch
    assert pol.denoiser.is_gradient_checkpointing
    assert not torch.backends.cuda.cudnn_sdp_enabled()                    # see diffusion_flux._disable_cudnn_attention
    seen = []
    pol.denoiser.register_forward_hook(lambda m, a, kw, o: seen.append((kw, o)), with_kwargs=True)
    ro = pol.rollout(["a photo of a cat", "a red dog"], torch.Generator().manual_seed(0))
    assert ro.latents.shape == (4, 2, 16, 8, 8) and ro.step_noise is None
    assert ro.images.shape == (2, 3, 16, 16) and torch.isfinite(ro.images).all()
    assert ro.cond.emb.shape == (2, 6, 32) and ro.cond.pooled.shape == (2, 32) and ro.uncond is None
    assert not torch.equal(ro.cond.pooled[0], ro.cond.pooled[1])
    kw, out = seen[0]
    assert len(seen) == 3 and kw["hidden_states"].shape == (2, 16, 64)     # (8/2)·(8/2) tokens of 4·16 channels
    assert out[0].shape == kw["hidden_states"].shape                       # velocity in the packed layout
    assert kw["img_ids"].shape == (16, 3) and kw["txt_ids"].shape == (6, 3) and not kw["txt_ids"].any()
    assert kw["guidance"].tolist() == [3.5, 3.5]
    assert [s["timestep"][0].item() for s, _ in seen] == pytest.approx(pol.sigmas[:-1].tolist())   # σ, not σ·1000
    # decode applies the VAE's scaling and shift factors
    vae = pol.vae
    ref = (vae.decode(ro.latents[-1] / vae.config.scaling_factor + vae.config.shift_factor).sample + 1) / 2
    assert torch.allclose(ro.images, ref, atol=1e-5)


def test_flux_without_guidance_embeds_uses_true_cfg(tmp_path):
    pol = flux_policy(make_tiny_flux(tmp_path / "schnell", guidance_embeds=False), steps=2, lora=False, guidance=2.0)
    seen = []
    pol.denoiser.register_forward_hook(lambda m, a, kw, o: seen.append(kw), with_kwargs=True)
    ro = pol.rollout(["a cat"], torch.Generator().manual_seed(0))
    assert pol.guidance_scale == 2.0 and ro.uncond is not None
    assert seen[0]["guidance"] is None and seen[0]["hidden_states"].shape[0] == 2       # one doubled CFG batch
    assert torch.isfinite(ro.images).all()


def test_alignprop_gradient_reaches_only_lora(flux_root):
    pol = flux_policy(flux_root, steps=3)
    _seed_lora(pol)
    ro = pol.rollout(["a cat", "a dog"], torch.Generator().manual_seed(1))
    mod = AlignProp(truncation="fixed", loss_coeff=1.0)                    # K = 1: the last step only
    loss = mod.extra_loss(_ctx(pol, ro))["loss"]
    assert loss.item() == pytest.approx(-_redness(ro.images, None).mean().item(), abs=1e-4)
    loss.backward()
    assert mod.on_step_end({}, None)["grad_steps"] == 1.0
    lora = {n: p for n, p in pol.denoiser.named_parameters() if "lora_" in n}
    # A and B of 14 linears: 8 in the double block (image + text streams), 5 in the single block, the final proj_out
    assert len(lora) == 2 * 14
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values()), \
        [n for n, p in lora.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert all(p.grad is None for n, p in pol.named_parameters() if "lora_" not in n)
    assert all(p.dtype == torch.float32 for p in lora.values())


def test_direct_align_gradient_reaches_lora(flux_root):
    pol = flux_policy(flux_root, steps=3)
    ro = pol.rollout(["a cat"], torch.Generator().manual_seed(2))
    mod = DirectAlign(srp=False, use_inversion=False, loss="neg")           # SRPO's σ grid (5, 25) of 50, shift 3
    mod.extra_loss(_ctx(pol, ro))["loss"].backward()
    m = mod.on_step_end({}, None)
    assert 0.75 <= m["sigma_lo"] < m["sigma_hi"] <= 0.97
    assert sum(float(p.grad.abs().sum()) for _, p in pol.trainable() if p.grad is not None) > 0


def test_gradient_checkpointing_gives_the_same_gradient(flux_root):
    grads = []
    for ckpt in (True, False):
        pol = flux_policy(flux_root, steps=3, ckpt=ckpt)
        assert pol.denoiser.is_gradient_checkpointing == ckpt and pol.gradient_checkpointing == ckpt
        _seed_lora(pol)
        ro = pol.rollout(["a red cat"], torch.Generator().manual_seed(0))
        _redness(pol.decode(pol.resume(ro, 1, [False, True, True])), None).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for _, p in pol.trainable()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_resume_from_a_recorded_latent_reproduces_the_rollout(flux_root):
    pol = flux_policy(flux_root, steps=4)
    ro = pol.rollout(["a photo of a dog", "blue"], torch.Generator().manual_seed(3))
    for start in (0, 2, 3):
        x0 = pol.resume(ro, start, torch.arange(4) >= start)
        assert x0.requires_grad and torch.allclose(x0, ro.latents[-1], atol=1e-5)
        assert torch.allclose(pol.decode(x0), ro.images, atol=1e-5)


def test_flux_folder_needs_flow(flux_root):
    from rltune.config.schema import ModelConfig
    from rltune.models.diffusion import load_diffusion_policy

    with pytest.raises(ValueError, match="scheduler: flow"):
        load_diffusion_policy(ModelConfig(kind="diffusion", path=str(flux_root), diffusion={"num_steps": 2}))


def test_half_precision_base_keeps_lora_in_fp32(flux_root):
    from rltune.config.schema import ModelConfig
    from rltune.models.diffusion import load_diffusion_policy

    cfg = ModelConfig(kind="diffusion", path=str(flux_root), dtype="bfloat16", gradient_checkpointing=True, lora=LORA,
                      diffusion={"scheduler": "flow", "num_steps": 2, "guidance_scale": 3.5, "resolution": 16})
    pol = load_diffusion_policy(cfg)
    assert pol.dtype == torch.bfloat16 and pol.text_encoder_2.dtype == torch.bfloat16
    assert {p.dtype for _, p in pol.trainable()} == {torch.float32}
    _seed_lora(pol)
    ro = pol.rollout(["a cat"], torch.Generator().manual_seed(0))
    assert ro.latents.dtype == torch.float32 and torch.isfinite(ro.images).all()
    _redness(pol.decode(pol.resume(ro, 1, [False, True])), None).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for _, p in pol.trainable())


@pytest.mark.parametrize("recipe", ["diffusion-tiny-alignprop.yaml", "diffusion-tiny-direct-align.yaml"])
def test_shipped_cpu_recipes_train_a_flux_folder(flux_root, tmp_path, recipe):
    """The trainer end to end (rollout, rewards, the modifier's extra_loss, AdamW, eval, save) with model.path on
    the tiny FLUX folder in place of the recipe's tiny UNet."""
    from rltune.config.load import load_recipe
    from rltune.logging import read_metrics
    from rltune.trainer import build_trainer
    from tests.conftest import ROOT

    r = load_recipe(ROOT / "recipes" / recipe, [
        f"run.output_dir={tmp_path / 'run'}", "run.threads=1", "logging.console=false", "run.steps=2",
        "run.eval_interval=1", "model.diffusion.tiny=null", f"model.path={flux_root}", "model.diffusion.scheduler=flow",
        "model.diffusion.num_steps=3", "model.diffusion.resolution=16", "model.diffusion.guidance_scale=3.5",
        "rollout.prompts_per_step=2", "train.micro_batch_size=2", "model.lora=" + json.dumps(LORA)])
    t = build_trainer(r, ROOT)
    before = {n: p.detach().clone() for n, p in t.model.denoiser.named_parameters()}
    t.fit()
    rows = read_metrics(t.run_dir)
    mod = recipe.split("-tiny-")[1].replace("-", "_")
    assert all(torch.isfinite(torch.tensor(m[f"loss/{mod}/loss"])) for m in rows if f"loss/{mod}/loss" in m)
    after = dict(t.model.denoiser.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert (t.run_dir / "final" / "denoiser_trained.safetensors").is_file()
