"""Stable Diffusion's denoising loop, taken apart so requests can share the UNet.

`StableDiffusionPipeline.__call__` runs one request's loop start to end. Here each request
is a `Denoising`: its prompt embeddings, its own scheduler (schedulers keep per-call
state), its latents drawn from its own generator, and how far it has got. `step` runs
one UNet pass over the rows of every request given (uncond and cond rows under
guidance) with a timestep per row, then moves each request on by its own scheduler;
`decode` turns one request's latents into its picture. Each operation is the pipeline's
own, in its order, so a request alone gives the pipeline's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from genserve.contract.modalities.image import ImageParams

# What requests must share to be rows of one UNet pass: the latents' size, and whether
# guidance doubles their rows. Guidance scale and step count may differ: both are per row.
BatchKey = tuple[int, int, bool]


@dataclass
class Denoising:
    params: ImageParams
    generator: torch.Generator
    scheduler: Any  # a fresh copy of the pipeline's scheduler: set_timesteps is per request
    timesteps: torch.Tensor
    embeds: torch.Tensor  # [rows, tokens, dim]: (uncond, cond) under guidance, else cond
    latents: torch.Tensor  # [1, channels, height / 8, width / 8]
    guided: bool
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    index: int = 0  # timesteps done
    reported: int = 0  # progress steps reported

    @property
    def rows(self) -> int:
        return 2 if self.guided else 1

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    def progress_after_step(self) -> int | None:
        """The progress step the pipeline reports after the timestep just run, if any: its
        own rule, under which a second-order scheduler reports every other timestep."""
        i = self.index - 1
        order = getattr(self.scheduler, "order", 1)
        warmup = len(self.timesteps) - self.params.num_inference_steps * order
        if i == len(self.timesteps) - 1 or (i + 1 > warmup and (i + 1) % order == 0):
            self.reported += 1
            return self.reported
        return None


class Denoiser:
    """The parts of one loaded StableDiffusionPipeline that the batched loop drives."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._unet = pipeline.unet
        if self._unet.config.time_cond_proj_dim is not None:
            raise ValueError("guidance-embedding UNets (LCM) are not batched here")

    def key(self, params: ImageParams) -> BatchKey:
        return (params.width, params.height, self._guided(params))

    def _guided(self, params: ImageParams) -> bool:
        return params.guidance_scale > 1  # the pipeline's do_classifier_free_guidance

    def start(self, params: ImageParams) -> Denoising:
        """Steps 3 to 6 of the pipeline's call: prompts, timesteps, latents."""
        pipe = self._pipeline
        device = pipe._execution_device
        guided = self._guided(params)
        cond, uncond = pipe.encode_prompt(
            params.prompt, device, 1, guided, params.negative_prompt or None
        )
        embeds = torch.cat([uncond, cond]) if guided else cond
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(params.num_inference_steps, device=device)
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        shape = (
            1,
            self._unet.config.in_channels,
            params.height // pipe.vae_scale_factor,
            params.width // pipe.vae_scale_factor,
        )
        noise = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype)
        return Denoising(
            params=params,
            generator=generator,
            scheduler=scheduler,
            timesteps=scheduler.timesteps,
            embeds=embeds,
            latents=noise * scheduler.init_noise_sigma,
            guided=guided,
            step_kwargs=pipe.prepare_extra_step_kwargs(generator, 0.0),
        )

    def step(self, batch: list[Denoising]) -> None:
        """One UNet pass over every request's rows; each request takes its next timestep."""
        inputs, timesteps = [], []
        for d in batch:
            t = d.timesteps[d.index]
            rows = torch.cat([d.latents] * 2) if d.guided else d.latents
            inputs.append(d.scheduler.scale_model_input(rows, t))
            timesteps.append(t.reshape(1).expand(d.rows))
        noise = self._unet(
            torch.cat(inputs),
            torch.cat(timesteps),
            encoder_hidden_states=torch.cat([d.embeds for d in batch]),
            return_dict=False,
        )[0]
        for d, pred in zip(batch, noise.split([d.rows for d in batch]), strict=True):
            if d.guided:
                uncond, cond = pred.chunk(2)
                pred = uncond + d.params.guidance_scale * (cond - uncond)
            t = d.timesteps[d.index]
            d.latents = d.scheduler.step(pred, t, d.latents, **d.step_kwargs, return_dict=False)[0]
            d.index += 1

    def decode(self, d: Denoising) -> Image.Image:
        """The pipeline's VAE decode and post-processing, for one request."""
        vae = self._pipeline.vae
        pixels = vae.decode(
            d.latents / vae.config.scaling_factor, return_dict=False, generator=d.generator
        )[0]
        images = self._pipeline.image_processor.postprocess(
            pixels, output_type="pil", do_denormalize=[True]
        )
        image: Image.Image = images[0]
        return image
