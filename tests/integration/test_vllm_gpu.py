"""The vLLM rollout engine on a GPU (marker `gpu`; needs `pip install 'rltune[gpu]'`): greedy completions equal
the `hf` engine's on the same fp32 model, sampled log-probs are the ones the trainer recomputes, a weight sync
changes what vLLM generates to what the new weights generate, and the tiny recipe trains with it."""

import pytest
import torch

pytestmark = pytest.mark.gpu
vllm = pytest.importorskip("vllm")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from rltune.config.schema import ModelConfig  # noqa: E402
from rltune.data.batch import PromptBatch  # noqa: E402
from rltune.models.policy import load_policy  # noqa: E402
from rltune.rollout.base import SamplingParams  # noqa: E402
from rltune.rollout.hf_engine import HFEngine  # noqa: E402
from rltune.rollout.vllm_engine import VLLMEngine, model_dir_for  # noqa: E402
from rltune.train.torch_engine import response_logprobs  # noqa: E402

CFG = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64}
PROMPTS = PromptBatch(prompts=["12+7=", "3+45=", "8+8=", "1+230="], meta={})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = load_policy(ModelConfig(tiny=CFG), seed=0)
    model = model.cuda().eval()
    folder = model_dir_for(None, ModelConfig(tiny=CFG), model, tok, tmp_path_factory.mktemp("vllm"))
    eng = VLLMEngine(folder, tok, 16, 8, seed=0, gpu_memory_utilization=0.2, dtype="float32", enforce_eager=True)
    return model, tok, eng


def test_greedy_equals_the_hf_engine(setup):
    model, tok, eng = setup
    p = SamplingParams(n=2, max_new_tokens=8, greedy=True)
    a, b = eng.generate(PROMPTS, p), HFEngine(model, tok, decode="loop").generate(PROMPTS, p)
    assert a.completions == b.completions and torch.equal(a.response_ids, b.response_ids)


def test_sampled_logprobs_are_the_trainers(setup):
    model, tok, eng = setup
    b = eng.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=8, temperature=0.9, seed=3))
    ids = torch.cat([b.prompt_ids, b.response_ids], 1).cuda()
    mask = torch.cat([b.prompt_mask, b.response_mask], 1).long().cuda()
    with torch.no_grad():
        lp, _ = response_logprobs(model, ids, mask, b.response_ids.shape[1], temperature=0.9)
    m = b.response_mask
    torch.testing.assert_close(b.rollout_logprobs[m], lp.cpu()[m], rtol=1e-3, atol=1e-3)


def test_sync_makes_vllm_generate_with_the_new_weights(setup):
    model, tok, eng = setup
    p = SamplingParams(n=1, max_new_tokens=8, greedy=True)
    before = eng.generate(PROMPTS, p).completions
    with torch.no_grad():
        for q in model.parameters():
            q.add_(torch.randn_like(q) * 0.5)
    eng.sync(model, 1)
    after = eng.generate(PROMPTS, p)
    assert after.weight_version == 1
    assert after.completions == HFEngine(model, tok, decode="loop").generate(PROMPTS, p).completions
    assert after.completions != before


def test_the_tiny_recipe_trains_with_vllm(tiny_recipe):
    from rltune.logging import read_metrics
    from rltune.trainer import Trainer

    t = Trainer(tiny_recipe(run={"steps": 3, "device": "cuda"}, rollout={"engine": "vllm", "vllm": {
        "gpu_memory_utilization": 0.2, "dtype": "float32", "enforce_eager": True}}), overwrite=True)
    t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "loss/policy" in m]
    assert len(rows) == 3 and t.rollout.weight_version == 3
    assert all(abs(m["rollout/logprob_diff"]) < 1e-2 for m in rows)  # vLLM sampled with the synced weights
