"""A byte-level CLIP tokenizer built locally: the hub's tiny tokenizers are out of reach.

Every byte is a token (no merges), which is all a random-weight text encoder needs.
"""

from __future__ import annotations

from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77  # CLIP's context; without it the tokenizer never truncates


def tiny_clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int) -> CLIPTextConfig:
    """A two-layer CLIP text encoder's config over the tokenizer above."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        projection_dim=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


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
