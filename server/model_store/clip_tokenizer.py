"""A byte-level CLIP tokenizer built locally: the hub's tiny tokenizers are out of reach.

Every byte is a token (no merges), which is all a random-weight text encoder needs.
"""

from __future__ import annotations

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77  # CLIP's context; without it the tokenizer never truncates


def build_clip_tokenizer() -> CLIPTokenizer:
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [BOS, EOS, *symbols, *(s + "</w>" for s in symbols)]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        model_max_length=MODEL_MAX_LENGTH,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )
