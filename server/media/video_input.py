"""The video request's hook: the conditioning image checked before the request is queued.

Pillow reads the size from the header before any pixel is unpacked, so a decompression
bomb costs nothing; the image is then decoded once, so a truncated file is refused here
rather than failing in the pipeline.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from genserve.contract.limits import VideoBounds
from genserve.contract.modalities.video import VideoParams
from genserve.contract.spec import InvalidField

ACCEPTED_IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


def check_image(params: VideoParams, limits: VideoBounds) -> VideoParams:
    data = params.image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_IMAGE_FORMATS:
                raise InvalidField("image", f"must be PNG, JPEG or WebP, got {image.format}")
            pixels = image.width * image.height
            if pixels > limits.max_image_pixels:
                raise InvalidField(
                    "image",
                    f"{image.width}x{image.height} = {pixels} pixels exceed the limit of "
                    f"{limits.max_image_pixels}",
                )
            image.load()
    except InvalidField:
        raise  # a refusal of ours (a ValueError), not a decoding failure
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidField(
            "image", f"its pixels exceed the limit of {limits.max_image_pixels}"
        ) from None
    except UnidentifiedImageError:
        raise InvalidField("image", "is not a readable PNG, JPEG or WebP image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidField("image", f"could not be decoded ({type(exc).__name__})") from None
    return params
