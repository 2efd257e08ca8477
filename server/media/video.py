"""Image-to-video with Stable Video Diffusion, streamed as a fragmented H.264 MP4.

Fragmented MP4 (`frag_keyframe+empty_moov`) puts the header first and each group of
frames in its own fragment, so a player can start on the first chunks; the container
is closed properly, so the file ends with what a player needs to seek.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any, BinaryIO

import av
import numpy as np
import torch
from PIL import Image

from genserve.contract.events import Header
from genserve.contract.modalities.video import VideoParams
from genserve.server.media.run import MediaRun, diffusers_progress
from genserve.server.provenance.mp4 import set_mp4_metadata
from genserve.server.provenance.record import Record

KEYFRAME_INTERVAL_S = 1.0  # one fragment per second of video
SVD_MAX_GUIDANCE = 3.0  # StableVideoDiffusionPipeline's default max_guidance_scale


def generate_video(pipeline: Any, params: VideoParams, run: MediaRun) -> None:
    run.header(
        Header(
            mime_type="video/mp4",
            file_name=f"video-{params.seed}.mp4",
            width=params.width,
            height=params.height,
            num_frames=params.num_frames,
            fps=params.fps,
            duration_s=params.num_frames / params.fps,
        )
    )
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    with diffusers_progress(pipeline, run, "denoise"), torch.inference_mode():
        result = pipeline(
            # Checked by the server before it was queued (video_input.check_image).
            Image.open(io.BytesIO(params.image)).convert("RGB"),
            height=params.height,
            width=params.width,
            num_frames=params.num_frames,
            num_inference_steps=params.num_inference_steps,
            fps=max(1, round(params.fps)),
            motion_bucket_id=params.motion_bucket_id,
            noise_aug_strength=params.noise_aug_strength,
            decode_chunk_size=params.decode_chunk_size,
            generator=generator,
            output_type="np",
            **_single_frame_guidance(params.num_frames),
        )
    run.inference_done()
    write_mp4(result.frames[0], params.fps, run.output, run.record)
    run.finish()


def _single_frame_guidance(num_frames: int) -> dict[str, float]:
    """SVD ramps guidance from min to max over the frames and doubles the image latents
    when max > 1; with one frame the ramp is just its min (1.0), guidance switches off and
    the doubled latents no longer match (diffusers 0.42 fails with a size mismatch). One
    frame gets one guidance value: the max, as the pipeline's own defaults would give."""
    if num_frames != 1:
        return {}
    return {"min_guidance_scale": SVD_MAX_GUIDANCE, "max_guidance_scale": SVD_MAX_GUIDANCE}


def write_mp4(
    frames: np.ndarray,
    fps: float,
    output: io.RawIOBase | BinaryIO,
    record: Record | None = None,
) -> None:
    """frames: [F, H, W, 3] floats in [0, 1]. Writes a fragmented yuv420p H.264 MP4, its
    generation record in the metadata of its init segment."""
    rate = Fraction(fps).limit_denominator(1001)
    pixels = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    height, width = pixels.shape[1:3]
    container = av.open(
        output,
        mode="w",
        format="mp4",
        options={"movflags": "frag_keyframe+empty_moov+default_base_moof"},
    )
    try:
        set_mp4_metadata(container, record)
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"  # what browsers play
        stream.codec_context.gop_size = max(1, round(fps * KEYFRAME_INTERVAL_S))
        for frame_pixels in pixels:
            frame = av.VideoFrame.from_ndarray(frame_pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):  # flush the encoder
            container.mux(packet)
    finally:
        container.close()
