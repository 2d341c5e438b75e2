"""Token batches for forward-equivalence tests: G rows per prompt, prompts left-padded by different amounts,
some responses right-padded after an early EOS."""

import torch

TINY_CFG = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}


def padded_batch(tok, B: int, G: int, P: int = 6, T: int = 5, seed: int = 0, eos_every: int = 2,
                 pad_ids: bool = False):
    """(input_ids [B·G, P+T], attention_mask, T). Every `eos_every`-th row stops two tokens early; with `pad_ids`
    the masked positions also hold the pad id."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(5, 90, (B, P), generator=g)
    pm = torch.ones(B, P, dtype=torch.long)
    for i in range(B):  # left padding of different lengths
        prompts[i, : i % 3] = tok.pad_token_id
        pm[i, : i % 3] = 0
    ids = torch.cat([prompts.repeat_interleave(G, 0), torch.randint(5, 90, (B * G, T), generator=g)], 1)
    mask = torch.cat([pm.repeat_interleave(G, 0), torch.ones(B * G, T, dtype=torch.long)], 1)
    mask[::eos_every, -2:] = 0  # right padding after an early EOS
    if pad_ids:
        ids[mask == 0] = tok.pad_token_id
    return ids, mask, T
