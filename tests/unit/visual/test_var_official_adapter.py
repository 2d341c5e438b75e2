"""The adapter for official VAR checkpoints, against a small stand-in of the official `models` package written
for this test. The stand-in follows the API the adapter calls (FoundationVision/VAR: build_vae_var, VQVAE.quantize.
idxBl_to_var_input, VQVAE.idxBl_to_img, VAR.forward(label_B, x_BLCv_wo_first_l) with cond_drop_rate), not its
architecture; the real code and weights are not available offline, so this checks the glue only."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from rltune.models.var import OfficialVAR, load_official_var, sample_var, scale_offsets, token_logprobs

STAND_IN = '''
import torch, torch.nn as nn, torch.nn.functional as F

class _Quant(nn.Module):
    def __init__(self, V, C, pn):
        super().__init__()
        self.embedding, self.pn, self.C = nn.Embedding(V, C), pn, C

    def idxBl_to_var_input(self, gt):          # [B, L - first_l, C]: next-scale inputs from the accumulated f_hat
        B, H = gt[0].shape[0], self.pn[-1]
        f, out = torch.zeros(B, self.C, H, H), []
        for si in range(len(self.pn) - 1):
            e = self.embedding(gt[si]).transpose(1, 2).reshape(B, self.C, self.pn[si], self.pn[si])
            f = f + F.interpolate(e, size=(H, H), mode="bicubic")
            n = self.pn[si + 1]
            out.append(F.interpolate(f, size=(n, n), mode="area").reshape(B, self.C, -1).transpose(1, 2))
        return torch.cat(out, 1)

class VQVAE(nn.Module):
    def __init__(self, V, C, pn):
        super().__init__()
        self.quantize, self.Cvae, self.vocab_size, self.pn = _Quant(V, C, pn), C, V, pn
        self.to_rgb = nn.Conv2d(C, 3, 1)

    def idxBl_to_img(self, ms_idx_Bl, same_shape, last_one=False):
        B, H = ms_idx_Bl[0].shape[0], self.pn[-1]
        f = sum(F.interpolate(self.quantize.embedding(i).transpose(1, 2).reshape(B, self.Cvae, p, p), size=(H, H),
                              mode="bicubic") for i, p in zip(ms_idx_Bl, self.pn))
        return torch.tanh(self.to_rgb(F.interpolate(f, scale_factor=2)))

class VAR(nn.Module):
    def __init__(self, vae, num_classes, patch_nums, D=16):
        super().__init__()
        self.V, self.num_classes, self.patch_nums, self.cond_drop_rate = vae.vocab_size, num_classes, patch_nums, 0.1
        self.L = sum(p * p for p in patch_nums)
        d = torch.cat([torch.full((p * p,), i) for i, p in enumerate(patch_nums)])
        self.register_buffer("bias", torch.where(d[:, None] >= d[None, :], 0.0, -torch.inf))
        self.class_emb, self.word_embed = nn.Embedding(num_classes + 1, D), nn.Linear(vae.Cvae, D)
        self.pos = nn.Parameter(torch.randn(1, self.L, D) * 0.1)
        self.attn, self.head = nn.MultiheadAttention(D, 2, batch_first=True), nn.Linear(D, self.V)

    def forward(self, label_B, x_BLCv_wo_first_l):
        B = x_BLCv_wo_first_l.shape[0]
        label_B = torch.where(torch.rand(B) < self.cond_drop_rate, self.num_classes, label_B)
        x = torch.cat([self.class_emb(label_B)[:, None], self.word_embed(x_BLCv_wo_first_l)], 1) + self.pos
        return self.head(x + self.attn(x, x, x, attn_mask=self.bias)[0])

def build_vae_var(device, patch_nums=(1, 2, 4), V=4096, Cvae=32, ch=160, share_quant_resi=4, num_classes=1000,
                  depth=16, shared_aln=False, **kw):
    vae = VQVAE(V, Cvae, patch_nums)
    return vae.to(device), VAR(vae, num_classes, patch_nums).to(device)
'''


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text(textwrap.dedent(STAND_IN))
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("models", None)
    from models import build_vae_var

    torch.manual_seed(0)
    vae, var = build_vae_var("cpu", patch_nums=(1, 2, 4), num_classes=5, depth=2)
    torch.save(vae.state_dict(), tmp_path / "vae_ch160v4096z32.pth")
    torch.save(var.state_dict(), tmp_path / "var_d2.pth")
    yield tmp_path, var.state_dict()
    sys.modules.pop("models", None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_loads_the_folder_and_drives_the_official_api(folder):
    path, saved = folder
    pol = load_official_var(path, depth=2, patch_nums=(1, 2, 4), num_classes=5)
    assert isinstance(pol, OfficialVAR) and pol.scales == ((1, 1), (2, 2), (4, 4))
    assert pol.vocab_size == 4096 and pol.null_class == 5 and pol.var.cond_drop_rate == 0.0
    assert all(torch.equal(pol.var.state_dict()[k], v) for k, v in saved.items())
    assert not any(p.requires_grad for p in pol.vae.parameters())
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 4096, (3, 21), generator=g)
    cond = torch.tensor([0, 4, 2])
    logits = pol(tok, cond)
    assert logits.shape == (3, 21, 4096) and torch.equal(pol(tok, cond), logits)   # no class dropout
    moved = tok.clone()
    moved[:, 1:5] = (moved[:, 1:5] + 7) % 4096                  # scale 1 feeds only scale 2's logits
    l2 = pol(moved, cond)
    assert torch.allclose(l2[:, :5], logits[:, :5], atol=1e-6) and not torch.allclose(l2[:, 5:], logits[:, 5:])
    s = sample_var(pol, cond, cfg=3.0, cfg_schedule="linear", top_k=5, top_p=0.9, generator=g)
    assert torch.allclose(s.logprobs, token_logprobs(pol(s.tokens, cond), s.tokens), atol=1e-5)
    img = pol.decode(s.tokens)
    assert img.shape == (3, 3, 8, 8) and img.min() >= 0 and img.max() <= 1
    loss = -token_logprobs(pol(s.tokens, cond), s.tokens)[:, scale_offsets(pol.scales)[1]:].mean()
    loss.backward()
    assert pol.var.head.weight.grad is not None and pol.vae.quantize.embedding.weight.grad is None


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="var_d16.pth"):
        load_official_var(tmp_path)
