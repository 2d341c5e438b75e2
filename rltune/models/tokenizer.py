"""A character-level tokenizer built offline (no hub access): one token per printable ASCII character.

Vocab: <pad>=0 <bos>=1 <eos>=2 <unk>=3, then the 95 printable ASCII characters (99 ids). No post-processor,
so encoding "12+34=" gives exactly 6 ids; decoding concatenates without spaces.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# A minimal chat template so that `data.chat_template: true` works with the char tokenizer too.
CHAR_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] | upper }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)


def build_char_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    chars = [c for c in string.printable if c.isprintable()]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=model_max_length,
    )
    tok.chat_template = CHAR_CHAT_TEMPLATE
    return tok
