"""The diffusion policy: DDIM/flow steps against diffusers and hand values, CFG, recorded rollouts that a resumed
chain reproduces exactly, truncated gradient (K grad-enabled denoiser calls), LoRA-only training, local folders."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_helpers import make_tiny_sd, tiny_policy

from rltune.models.diffusion import cfg_combine, ddim_step, euler_step, flow_sigmas


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    for t in s.timesteps[[0, 4, 9]]:
        ref = s.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        prev = int(t) - 100
        a_prev = s.alphas_cumprod[prev] if prev >= 0 else s.final_alpha_cumprod
        assert torch.allclose(ddim_step(x, eps, s.alphas_cumprod[t], a_prev, eta, z), ref, atol=1e-5)


def test_ddim_step_hand_value():
    # ᾱ_t = 0.25, ᾱ_prev = 0.64, eta 0: x̂_0 = (x − 0.866 ε)/0.5; out = 0.8 x̂_0 + 0.6 ε
    x, eps = torch.tensor([1.0]), torch.tensor([0.5])
    x0 = (1.0 - math.sqrt(0.75) * 0.5) / 0.5
    assert ddim_step(x, eps, 0.25, 0.64).item() == pytest.approx(0.8 * x0 + 0.6 * 0.5, abs=1e-6)


def test_flow_sigma_grid_and_euler():
    s = flow_sigmas(50, 3.0)
    assert s[0] == 1 and s[-1] == 0
    # spec §3.2: index 5 -> 0.964, 25 -> 0.75, 30 -> 0.667 (u = 0.9, 0.5, 0.4; s = 3u/(1+2u))
    assert s[5].item() == pytest.approx(2.7 / 2.8, abs=1e-6)
    assert s[25].item() == pytest.approx(0.75, abs=1e-6)
    assert s[30].item() == pytest.approx(1.2 / 1.8, abs=1e-6)
    assert torch.allclose(flow_sigmas(4, 1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    x0, eps = torch.randn(3), torch.randn(3)
    x = 0.6 * x0 + 0.4 * eps                                  # σ = 0.4; exact velocity ε − x_0
    assert torch.allclose(euler_step(x, eps - x0, 0.4, 0.0), x0, atol=1e-6)


def test_cfg_combine_hand_values():
    u, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    assert cfg_combine(u, c, 1.0).tolist() == [3.0, 0.0]
    assert cfg_combine(u, c, 5.0).tolist() == [11.0, -8.0]


@pytest.mark.parametrize("kind", ["ddim", "flow"])
def test_rollout_records_chain_and_resume_reproduces_it(kind):
    pol = tiny_policy(kind, steps=4)
    ro = pol.rollout(["a", "b"], torch.Generator().manual_seed(1))
    assert ro.latents.shape == (5, 2, 3, 16, 16) and ro.images.shape == (2, 3, 16, 16)
    assert (ro.step_noise is not None) == (kind == "ddim")
    assert torch.allclose(ro.images, (ro.latents[-1] + 1) / 2)
    for start in (0, 2, 3):
        keep = torch.arange(4) >= start
        x0 = pol.resume(ro, start, keep)
        assert x0.requires_grad
        assert torch.allclose(x0, ro.latents[-1], atol=1e-5)


def test_grad_enabled_calls_equal_k_and_only_lora_gets_grad():
    pol = tiny_policy("ddim", steps=5)
    calls = []
    pol.denoiser.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    ro = pol.rollout(["a"] * 2, torch.Generator().manual_seed(0))
    assert calls == [False] * 5
    calls.clear()
    x0 = pol.resume(ro, 3, torch.arange(5) >= 3)              # K = 2
    assert sum(calls) == 2 and len(calls) == 2
    # a non-trivial reward: redness of the decoded image
    img = pol.decode(x0)
    (-(img[:, 0] - img[:, 1:].mean(1)).mean()).backward()
    grads = {n: p.grad for n, p in pol.denoiser.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())
    assert all(not p.requires_grad for n, p in pol.denoiser.named_parameters() if "lora_" not in n)


def test_gradient_checkpointing_gives_the_same_gradient():
    grads = []
    for ckpt in (True, False):
        pol = tiny_policy("flow", steps=3)
        pol.gradient_checkpointing = ckpt
        ro = pol.rollout(["a"], torch.Generator().manual_seed(0))
        pol.decode(pol.resume(ro, 0, [True] * 3)).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for _, p in pol.trainable()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_cfg_runs_one_doubled_batch_and_combines():
    pol = tiny_policy("ddim", steps=2, conditional=True, guidance=4.0)
    sizes = []
    pol.denoiser.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    cond, uncond = pol.encode_prompts(["x", "y", "z"])
    assert cond.emb.shape == uncond.emb.shape == (3, 16, 32) and not torch.equal(cond.emb[0], uncond.emb[0])
    x = torch.randn(3, 3, 16, 16)
    out = pol.model_output(x, 0, cond, uncond)
    assert sizes == [6]
    t = pol.timesteps[0].expand(3)
    c = pol.denoiser(x, t, encoder_hidden_states=cond.emb).sample
    u = pol.denoiser(x, t, encoder_hidden_states=uncond.emb).sample
    assert torch.allclose(out, u + 4.0 * (c - u), atol=1e-5)


def test_sd_layout_folder_loads_with_vae_text_encoder_and_lora(tmp_path):
    from rltune.config.schema import ModelConfig
    from rltune.models.diffusion import load_diffusion_policy

    root = make_tiny_sd(tmp_path / "sd")
    cfg = ModelConfig(kind="diffusion", path=str(root), gradient_checkpointing=True,
                      lora={"r": 2, "alpha": 2.0, "target_modules": ["to_q", "to_v"]},
                      diffusion={"num_steps": 3, "guidance_scale": 3.0})
    pol = load_diffusion_policy(cfg)
    assert pol.scheduler.config.clip_sample is False           # forced off: clipping zeroes gradients (§2.4)
    assert pol.latent_shape == (4, 8, 8)                        # UNet sample 8 × VAE factor 2 = 16 px, /2
    ro = pol.rollout(["a photo of a cat", "a dog"], torch.Generator().manual_seed(0))
    assert ro.images.shape == (2, 3, 16, 16) and ro.cond.emb.shape == (2, 16, 32) and ro.uncond is not None
    # the final step of SD's "leading" spacing goes to ᾱ_prev = ᾱ_0 (set_alpha_to_one = False)
    assert pol.alphas_prev[-1] == pol.alphas_cumprod[0]
    pol.decode(pol.resume(ro, 2, [False, False, True])).mean().backward()
    assert all("lora_" in n for n, p in pol.denoiser.named_parameters() if p.grad is not None)
    assert sum(float(p.grad.abs().sum()) for _, p in pol.trainable() if p.grad is not None) > 0


def test_sdxl_layout_folder_adds_pooled_text_and_size_ids(tmp_path):
    from rltune.config.schema import ModelConfig
    from rltune.models.diffusion import load_diffusion_policy

    root = make_tiny_sd(tmp_path / "sdxl", sdxl=True)
    cfg = ModelConfig(kind="diffusion", path=str(root), lora={"r": 2, "alpha": 2.0, "target_modules": ["to_q"]},
                      diffusion={"num_steps": 2, "guidance_scale": 2.0}, gradient_checkpointing=True)
    pol = load_diffusion_policy(cfg)
    seen = []
    pol.denoiser.register_forward_hook(lambda m, a, kw, o: seen.append(kw), with_kwargs=True)
    ro = pol.rollout(["a cat", "a dog"], torch.Generator().manual_seed(0))
    assert ro.cond.emb.shape == (2, 16, 64) and ro.cond.pooled.shape == (2, 16)     # 32 + 32 states, projection 16
    assert torch.equal(ro.uncond.emb, torch.zeros_like(ro.uncond.emb))              # empty negative prompt = zeros
    added = seen[0]["added_cond_kwargs"]
    assert added["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * 4   # CFG doubles the batch
    pol.decode(pol.resume(ro, 1, [False, True])).mean().backward()
    assert sum(float(p.grad.abs().sum()) for _, p in pol.trainable() if p.grad is not None) > 0


def test_trained_state_round_trips(tmp_path):
    from safetensors.torch import load_file

    pol = tiny_policy("ddim", steps=2)
    with torch.no_grad():
        for _, p in pol.trainable():
            p.add_(0.1)
    pol.save_pretrained(tmp_path / "m")
    fresh = tiny_policy("ddim", steps=2)
    fresh.load_trained_state(load_file(str(tmp_path / "m" / "denoiser_trained.safetensors")))
    for (n, a), (_, b) in zip(pol.trainable(), fresh.trainable()):
        assert torch.equal(a, b), n
