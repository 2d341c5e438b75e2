"""The vLLM engine's parts that run without a GPU: its output padding, the recipe checks and the errors a
CPU machine gets. The engine itself is exercised by tests/integration/test_vllm_gpu.py (marker `gpu`)."""

import importlib.util

import pytest
import torch

from rltune.rollout.vllm_engine import pad_generations

EOS, PAD = 2, 0


def test_pad_generations_pads_and_keeps_eos():
    toks, lps = pad_generations([[5, 6, EOS], [7], [8, 9, 10]], [[-0.1, -0.2, -0.3], [-0.4], [-1, -2, -3]],
                                [True, True, False], EOS, PAD)
    # row 1 stopped on EOS that the engine left out: appended with log-prob 0; row 2 hit the length limit
    assert toks.tolist() == [[5, 6, EOS], [7, EOS, PAD], [8, 9, 10]]
    torch.testing.assert_close(lps, torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.0, 0.0], [-1.0, -2.0, -3.0]]))


def test_pad_generations_of_empty_rows():
    toks, lps = pad_generations([[], [EOS]], [[], [-0.5]], [True, True], EOS, PAD)
    assert toks.tolist() == [[EOS], [EOS]] and lps.tolist() == [[0.0], [-0.5]]


@pytest.mark.parametrize("over, words", [
    ({"model": {"lora": {"r": 4}}}, ["rollout.engine=vllm", "LoRA", "rollout.engine=hf"]),
])
def test_recipe_refuses_what_the_vllm_engine_does_not_take(tiny_recipe, over, words):
    with pytest.raises(Exception) as e:
        tiny_recipe(rollout={"engine": "vllm"}, **over)
    assert all(w in str(e.value) for w in words)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None and torch.cuda.is_available(),
                    reason="vLLM and a GPU are here: the engine would start")
def test_without_vllm_or_a_gpu_the_trainer_says_what_to_do(tiny_recipe):
    from rltune.rollout.vllm_engine import EngineUnavailableError
    from rltune.trainer import Trainer

    with pytest.raises(EngineUnavailableError, match=r"rltune\[gpu\]|CUDA GPU"):
        Trainer(tiny_recipe(rollout={"engine": "vllm"}), overwrite=True)
