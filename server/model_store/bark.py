"""Tiny Bark (text-to-audio): semantic, coarse and fine GPT-style models, an EnCodec
codec, a processor with a small BERT tokenizer, and voice presets that resolve offline.

Bark's generate() arithmetic relies on its real token offsets, so the vocabularies keep
their real sizes (semantic input 129,600 / output 10,048, coarse 12,096, fine 1,056,
8 codebooks); only the widths and depths shrink.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    BarkCoarseConfig,
    BarkConfig,
    BarkFineConfig,
    BarkModel,
    BarkProcessor,
    BarkSemanticConfig,
    BertTokenizer,
    EncodecConfig,
    GenerationConfig,
    PreTrainedConfig,
)
from transformers.models.bark.generation_configuration_bark import (
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkGenerationConfig,
    BarkSemanticGenerationConfig,
)

VOICE_PRESETS = tuple(f"v2/en_speaker_{i}" for i in range(10))
SEMANTIC_INPUT_VOCAB = 129_600
SEMANTIC_OUTPUT_VOCAB = 10_048
COARSE_VOCAB = 12_096
FINE_VOCAB = 1_056
N_CODES_TOTAL = 8
CODEBOOK_SIZE = 1024
HIDDEN = 16
PRESET_STEPS = 16  # length of each voice preset's history prompt
SEMANTIC_MAX_NEW_TOKENS = 96  # about 2 s of audio


def _tokenizer() -> BertTokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = {token: i for i, token in enumerate([*specials, *symbols])}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def _sub_model(
    config_class: Any, input_vocab: int, output_vocab: int, **extra: Any
) -> PreTrainedConfig:
    return config_class(
        block_size=1024,
        input_vocab_size=input_vocab,
        output_vocab_size=output_vocab,
        num_layers=1,
        num_heads=2,
        hidden_size=HIDDEN,
        **extra,
    )


def _write_voice_presets(target: Path, rng: np.random.Generator) -> dict[str, object]:
    folder = target / "speaker_embeddings" / "v2"
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, object] = {"repo_or_path": str(target)}
    for preset in VOICE_PRESETS:
        arrays = {
            "semantic_prompt": rng.integers(0, 10_000, size=(PRESET_STEPS,)),
            "coarse_prompt": rng.integers(0, CODEBOOK_SIZE, size=(2, PRESET_STEPS)),
            "fine_prompt": rng.integers(0, CODEBOOK_SIZE, size=(N_CODES_TOTAL, PRESET_STEPS)),
        }
        paths = {}
        for key, array in arrays.items():
            relative = f"speaker_embeddings/{preset}_{key}.npy"
            np.save(target / relative, array.astype(np.int64), allow_pickle=False)
            paths[key] = relative
        index[preset] = paths
    return index


def build_bark(target: Path, seed: int) -> None:
    torch.manual_seed(seed)
    target.mkdir(parents=True, exist_ok=True)
    config = BarkConfig(
        semantic_config=_sub_model(BarkSemanticConfig, SEMANTIC_INPUT_VOCAB, SEMANTIC_OUTPUT_VOCAB),
        coarse_acoustics_config=_sub_model(BarkCoarseConfig, COARSE_VOCAB, COARSE_VOCAB),
        fine_acoustics_config=_sub_model(
            BarkFineConfig, FINE_VOCAB, FINE_VOCAB, n_codes_total=N_CODES_TOTAL, n_codes_given=1
        ),
        codec_config=EncodecConfig(
            num_filters=4,
            hidden_size=16,
            codebook_size=CODEBOOK_SIZE,
            codebook_dim=16,
            num_residual_layers=1,
            upsampling_ratios=[8, 5, 4, 2],
            target_bandwidths=[6.0],
            sampling_rate=24_000,
        ),
    )
    model = BarkModel(config)
    generation = BarkGenerationConfig(
        # Random weights rarely say "end": cap the semantic stage to keep clips short.
        semantic_config=BarkSemanticGenerationConfig(
            max_input_semantic_length=64, max_new_tokens=SEMANTIC_MAX_NEW_TOKENS
        ).to_dict(),
        coarse_acoustics_config=BarkCoarseGenerationConfig().to_dict(),
        fine_acoustics_config=BarkFineGenerationConfig().to_dict(),
        sample_rate=24_000,
        codebook_size=CODEBOOK_SIZE,
    )
    # BarkGenerationConfig cannot validate itself for saving; BarkModel.generate reads the
    # sub-configs back as plain dicts, so a plain GenerationConfig carries them.
    model.generation_config = GenerationConfig.from_dict(generation.to_dict())
    model.save_pretrained(target)

    index = _write_voice_presets(target, np.random.default_rng(seed))
    (target / "speaker_embeddings_path.json").write_text(json.dumps(index))
    BarkProcessor(tokenizer=_tokenizer()).tokenizer.save_pretrained(target)
