"""Tiny Shap-E (text-to-3D): prior, CLIP text encoder and an STF renderer that can mesh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
from diffusers.pipelines.shap_e import ShapERenderer
from transformers import CLIPTextModelWithProjection

from genserve.server.model_store.clip_tokenizer import build_clip_tokenizer, tiny_clip_text_config
from genserve.server.model_store.marching_cubes_table import marching_cubes_table

TEXT_HIDDEN = 32
TIME_INPUT_DIM = 32
RENDERER_DIM = 8
# Pushes the random signed-distance field positive over part of the volume, so that a
# surface (and so a mesh) exists where real weights would have drawn the object.
SDF_BIAS = 0.5
SDF_CHANNEL = 0  # MLPNeRSTFModel's output channel for the signed distance


def build_shap_e(target: Path, seed: int) -> None:
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=16,
        embedding_dim=TIME_INPUT_DIM,
        num_embeddings=32,
        embedding_proj_dim=TEXT_HIDDEN,
        time_embed_dim=TIME_INPUT_DIM * 4,
        num_layers=1,
        clip_embed_dim=TIME_INPUT_DIM * 2,
        additional_embeddings=0,
        time_embed_act_fn="gelu",
        norm_in_type="layer",
        encoder_hid_proj_type=None,
        added_emb_type=None,
    )
    text_encoder = CLIPTextModelWithProjection(tiny_clip_text_config(tokenizer, TEXT_HIDDEN))
    renderer = ShapERenderer(
        param_shapes=(
            (RENDERER_DIM, 93),
            (RENDERER_DIM, 8),
            (RENDERER_DIM, 8),
            (RENDERER_DIM, 8),
        ),
        d_latent=TIME_INPUT_DIM,
        d_hidden=RENDERER_DIM,
        n_output=12,
        background=(0.1, 0.1, 0.1),
    )
    cases, masks = marching_cubes_table()
    renderer.mesh_decoder.cases.copy_(cases)
    renderer.mesh_decoder.masks.copy_(masks)
    with torch.no_grad():
        renderer.mlp.mlp[-1].bias[SDF_CHANNEL] += SDF_BIAS
    scheduler = HeunDiscreteScheduler(
        beta_schedule="exp",
        num_train_timesteps=1024,
        prediction_type="sample",
        use_karras_sigmas=True,
        clip_sample=True,
        clip_sample_range=1.0,
    )
    pipeline: Any = ShapEPipeline(
        prior=prior,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        shap_e_renderer=renderer,
        scheduler=scheduler,
    )
    pipeline.save_pretrained(target)
