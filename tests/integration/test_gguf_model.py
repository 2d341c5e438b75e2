"""`model.gguf_file`: a recipe trains a model that ships as one GGUF file (weights and tokenizer), through
transformers' GGUF loader. The file is written here with the `gguf` package: a tiny llama with a character
vocabulary, its MLP matrices quantised to Q8_0, so loading has to dequantise them to model.dtype."""

import numpy as np
import pytest
import torch
import yaml

from rltune.config.load import recipe_from_dict
from tests.conftest import TINY, merge

gguf = pytest.importorskip("gguf")

HEADS, LAYERS, HIDDEN, FFN = 2, 2, 32, 64
TOKENS = ["<unk>", "<s>", "</s>", "\u2581", *"0123456789+=", *"abcdefghijklmnopqrstuvwxyz"]
GGUF_NAMES = {  # transformers' LlamaForCausalLM name -> llama.cpp's name in a GGUF file
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, rest = hf.split(".", 3)
        return f"blk.{i}.{GGUF_NAMES[rest]}"
    return GGUF_NAMES[hf]


def _rope_interleave(w: np.ndarray) -> np.ndarray:
    """llama.cpp stores q/k rows per head with the two rotary halves interleaved (row i of half h -> 2i + h);
    transformers undoes this when it loads a llama GGUF."""
    dim = w.shape[0] // HEADS // 2
    return w.reshape(HEADS, 2, dim, -1).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    """(folder, file name, the original torch weights, the values a reader must find in the file)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(TOKENS), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    sd = {k: v.detach().numpy().copy() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    d = tmp_path_factory.mktemp("gguf") / "tiny-llama"
    d.mkdir()
    w = gguf.GGUFWriter(str(d / "tiny.gguf"), "llama")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * len(TOKENS))
    w.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.NORMAL] * (len(TOKENS) - 3))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    expected = {}
    for name, arr in sd.items():
        if "q_proj" in name or "k_proj" in name:
            arr = _rope_interleave(arr)
        if "mlp." in name:  # Q8_0: what a reader gets back is the dequantised block values
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(_gguf_name(name), q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            expected[name] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(_gguf_name(name), arr)
            expected[name] = sd[name]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return d, "tiny.gguf", sd, expected


def test_transformers_reads_the_written_file_back(gguf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name, sd, expected = gguf_dir
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    got = {k: v.numpy() for k, v in m.state_dict().items()}
    assert set(got) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    assert np.abs(got["model.layers.0.mlp.up_proj.weight"] - sd["model.layers.0.mlp.up_proj.weight"]).max() > 0
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    assert tok.decode(tok("12+3=", add_special_tokens=False)["input_ids"]) == "12+3="
    assert tok.eos_token == "</s>"


def _raw(tmp_path, d, name, **over):
    return merge(merge(TINY, {"run": {"output_dir": str(tmp_path / "run"), "eval_interval": 0},
                              "model": {"tiny": None, "path": str(d), "gguf_file": name}}), over)


def test_a_recipe_trains_a_gguf_model_and_saves_safetensors(gguf_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rltune.models.policy import load_policy
    from rltune.trainer import Trainer

    d, name, sd, expected = gguf_dir
    r = recipe_from_dict(_raw(tmp_path, d, name))
    assert r.model.tokenizer == f"{d}/{name}"  # what `rltune show` prints
    half, _ = load_policy(r.model.model_copy(update={"dtype": "bfloat16"}))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    t = Trainer(r)
    assert t.tok.convert_ids_to_tokens(t.tok("7+8=", add_special_tokens=False)["input_ids"])[-4:] == list("7+8=")
    for k in ("model.layers.1.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        np.testing.assert_array_equal(dict(t.model.named_parameters())[k].detach().numpy(), expected[k])
    t.fit()
    final = t.run_dir / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer_config.json").is_file()
    assert not list(final.glob("*.gguf"))
    back = AutoModelForCausalLM.from_pretrained(final)
    trained = dict(t.model.named_parameters())
    for k, v in back.named_parameters():
        assert torch.equal(v, trained[k]), k
    assert not torch.equal(trained["model.layers.1.mlp.down_proj.weight"],
                           torch.from_numpy(expected["model.layers.1.mlp.down_proj.weight"]))  # it did train
    assert AutoTokenizer.from_pretrained(final).get_vocab() == t.tok.get_vocab()


def test_validate_checks_the_gguf_file(gguf_dir, tmp_path):
    d, name, _, _ = gguf_dir
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(_raw(tmp_path, d, name)))
    from tests.helpers.cli import run_cli as run

    assert run("validate", p).returncode == 0
    r = run("validate", p, "model.gguf_file=other.gguf")
    assert r.returncode == 2 and "other.gguf" in r.stdout and "tiny.gguf" in r.stdout, r.stdout
    r = run("validate", p, "model.path=null", "model.tiny={}")
    assert r.returncode == 2 and "model.gguf_file" in r.stdout, r.stdout
