"""Image file checks done once at read time, and the matching decoder for the tf.data pipeline.

Readers call :func:`inspect_image` on every image so that a broken file is
skipped with a counted reason before training starts, instead of stopping it
later. The check also finds what the TensorFlow decoder alone would get wrong:

- EXIF orientation. Annotation tools show the rotated view, so boxes refer to
  it; :func:`decode_image` applies the same rotation.
- Very large JPEG photos, which are decoded at 1/2, 1/4 or 1/8 of their size so
  that their longer side stays near :data:`MAX_DECODED_SIDE` pixels.

Grayscale, palette, RGBA, CMYK and 16-bit images need nothing extra:
``tf.io.decode_image(channels=3)`` converts them to 8-bit RGB.
"""

from __future__ import annotations

import dataclasses
import warnings

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

# Formats that tf.io.decode_image reads (TensorFlow 2.21); PIL names them so.
DECODABLE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# PIL refuses larger images as decompression bombs (Image.MAX_IMAGE_PIXELS x 2).
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
MAX_DECODED_SIDE = 4096
EXIF_ORIENTATION_TAG = 0x0112


class ImageProblem(ValueError):
    """An image file that cannot be used; ``reason`` is a short, countable label."""

    def __init__(self, reason: str, path: str, detail: str):
        super().__init__(f"{reason}: {path} ({detail})")
        self.reason = reason
        self.path = path
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Size, EXIF orientation and decode ratio of an image file, as the pipeline uses them.

    Args:
        width, height: size in pixels of the view the boxes refer to, i.e. after
            the EXIF rotation.
        mode: PIL mode of the file, e.g. ``RGB``, ``L``, ``CMYK``, ``I;16``.
        orientation: EXIF orientation 1 to 8; 1 is upright.
        ratio: JPEG decode downscale, 1, 2, 4 or 8.
    """

    width: int
    height: int
    mode: str
    orientation: int = 1
    ratio: int = 1


def _decode_ratio(image_format: str, width: int, height: int) -> int:
    ratio = 1
    while image_format == "JPEG" and ratio < 8 and max(width, height) / ratio > MAX_DECODED_SIDE:
        ratio *= 2
    return ratio


def inspect_image(path: str) -> ImageInfo:
    """Open, verify and measure an image file without a full-size decode.

    NOTE: readers call this once per image, one image at a time. A JPEG takes about
    1 to 3 ms, so COCO's 118,000 training images need a few minutes.

    Raises:
        ImageProblem: the file is missing, not an image, of a format TensorFlow
            cannot decode, larger than :data:`MAX_PIXELS`, truncated or corrupt.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image_format = image.format or "unknown"
                width, height = image.size
                mode = image.mode
                orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
                if image_format not in DECODABLE_FORMATS:
                    raise ImageProblem(
                        "unsupported image format", path,
                        f"{image_format}; convert it to JPEG or PNG",
                    )

                # A JPEG in draft mode decodes at 1/8 size but still reads every
                # byte, so a truncated file fails here as it would in training.
                if image_format == "JPEG":
                    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
    except FileNotFoundError as error:
        raise ImageProblem("missing image", path, "file not found") from error
    except UnidentifiedImageError as error:
        raise ImageProblem("unreadable image", path, "not an image file") from error
    except Image.DecompressionBombError as error:
        raise ImageProblem("image too large", path, f"more than {MAX_PIXELS} pixels") from error
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageProblem):
            raise
        raise ImageProblem("unreadable image", path, f"truncated or corrupt: {error}") from error

    if orientation not in range(1, 9):
        orientation = 1
    if orientation >= 5:  # 5 to 8 turn the image by 90 degrees
        width, height = height, width
    return ImageInfo(width, height, mode, orientation, _decode_ratio(image_format, width, height))


def _orient(image, orientation):
    """Apply an EXIF orientation (1 to 8) to a decoded (H, W, 3) image."""
    branches = [
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        lambda: tf.image.transpose(image),
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(tf.image.transpose(image), 2),
        lambda: tf.image.rot90(image, 1),
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def decode_image(path, orientation=1, ratio=1):
    """Read an image file into uint8 (H, W, 3) RGB, as :func:`inspect_image` described it.

    Args:
        path: scalar string tensor.
        orientation: EXIF orientation 1 to 8 from :class:`ImageInfo`.
        ratio: JPEG downscale 1, 2, 4 or 8 from :class:`ImageInfo`; other formats ignore it.
    """
    data = tf.io.read_file(path)

    def full_size():
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    def reduced(scale):
        return lambda: tf.io.decode_jpeg(data, channels=3, ratio=scale)

    # Branch index of each ratio 0 to 8: 1 -> 0, 2 -> 1, 4 -> 2, 8 -> 3.
    branch = tf.gather([0, 0, 1, 0, 2, 0, 0, 0, 3], tf.clip_by_value(tf.cast(ratio, tf.int32), 0, 8))
    image = tf.switch_case(branch, [full_size, reduced(2), reduced(4), reduced(8)])
    image = tf.ensure_shape(image, (None, None, 3))
    return tf.ensure_shape(_orient(image, orientation), (None, None, 3))
