"""Reading images and masks the way users actually hand them to us, and writing outputs safely.

Every reader applies the EXIF orientation, accepts grayscale, RGBA, 16-bit and CMYK files, and raises
:class:`~harmony.errors.HarmonyInputError` naming the file when it is missing or cannot be decoded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Pillow warns from 89 MP and refuses from 179 MP ("decompression bomb"); photographs of 100–200 MP are
# real work here (a 12000x12000 composite is 144 MP), so the limit is 1 GP: warning from 1 GP, refusal
# from 2 GP, still far below what a crafted file could ask for.
Image.MAX_IMAGE_PIXELS = 1_000_000_000


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, with its EXIF orientation applied.

    Args:
        path: The image file.

    Returns:
        The decoded PIL image, upright.

    Raises:
        HarmonyInputError: The file is missing or is not a decodable image.
    """
    path = Path(path)
    if not path.is_file():
        raise HarmonyInputError(path, "file not found")
    try:
        image = Image.open(path)
        # load() decodes and, for a single-frame file opened by path, closes it: no copy needed.
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise HarmonyInputError(path, f"cannot decode image ({error})") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - malformed EXIF (Pillow#8348): keep the stored orientation
        pass
    return image


def _sixteen_bit_to_uint8(array: np.ndarray) -> np.ndarray:
    # Pillow's convert("RGB") clips 16-bit values instead of scaling them (Pillow#2574).
    return np.clip(np.round(array.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass
    return image.convert("RGB")


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a decoded image of any common mode to ``H×W×3`` ``uint8`` RGB.

    RGBA keeps its colour channels (never composited onto black), grayscale is replicated, 16-bit data
    is scaled by 1/257, CMYK goes through its ICC profile to sRGB when it has one.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(image, dtype=np.int64)
        if mode == "I" and gray.max(initial=0) <= 255:
            gray8 = gray.astype(np.uint8)
        else:
            gray8 = _sixteen_bit_to_uint8(np.clip(gray, 0, 65535))
        return np.repeat(gray8[..., None], 3, axis=2)
    if mode == "F":
        gray = np.asarray(image, dtype=np.float64)
        scale = 255.0 if gray.max(initial=0) <= 1.0 else 1.0
        return np.repeat(np.clip(np.round(gray * scale), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "CMYK":
        image = _cmyk_to_rgb(image)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Keep the colour channels as stored: dropping alpha never darkens transparent pixels.
        return np.ascontiguousarray(np.asarray(image.convert("RGBA"))[..., :3])
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as upright ``H×W×3`` ``uint8`` RGB (see :func:`to_rgb_array`)."""
    image = open_image(path)
    if image.mode == "RGB" and image.info.get("bit_depth", 8) == 8:
        return np.array(image)  # writable (np.asarray's view of Pillow's bytes is read-only)
    if image.mode == "RGBA" and image.info.get("bit_depth", 8) == 8:
        return np.ascontiguousarray(np.asarray(image)[..., :3])
    png16 = _read_png16(Path(path), image)
    return png16 if png16 is not None else to_rgb_array(image)


def _read_png16(path: Path, image: Image.Image) -> np.ndarray | None:
    # Pillow opens 16-bit RGB(A) PNGs as 8-bit "RGB" after truncation; OpenCV keeps all 16 bits.
    if image.format != "PNG" or image.mode not in ("RGB", "RGBA"):
        return None
    import cv2

    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if data is None or data.dtype != np.uint16 or data.ndim != 3:
        return None
    rgb = cv2.cvtColor(data[..., :3], cv2.COLOR_BGR2RGB)
    rgb = _sixteen_bit_to_uint8(rgb)
    # EXIF orientation was applied to `image`; apply the same to the 16-bit pixels.
    if rgb.shape[:2] != (image.height, image.width):
        rgb = np.ascontiguousarray(np.rot90(rgb))
    return rgb


def to_mask_array(image: Image.Image) -> np.ndarray:
    """Convert a decoded mask image to a soft ``H×W`` ``float32`` mask in ``[0, 1]``.

    A transparent (RGBA/LA) mask uses its alpha channel when the alpha is not uniformly opaque; any
    other mask uses its luminance. 16-bit masks are scaled by 1/65535.
    """
    mode = image.mode
    if mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min(initial=1.0) < 1.0:
            return alpha
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0) <= 255 and mode == "I" else 65535.0
        return np.clip(values / scale, 0, 1).astype(np.float32)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return np.clip(values if values.max(initial=0) <= 1.0 else values / 255.0, 0, 1)
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode == "CMYK":
        image = _cmyk_to_rgb(image)
    mask = np.asarray(image.convert("L"), dtype=np.float32)
    mask /= 255.0  # in place: a 12000x12000 mask is 576 MB in float32
    return mask


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as an upright soft ``H×W`` ``float32`` mask in ``[0, 1]``."""
    return to_mask_array(open_image(path))


def binarize(mask: np.ndarray) -> np.ndarray:
    """Threshold a soft mask in ``[0, 1]`` at 0.5 (127 on 0–255 is background, 128 foreground)."""
    return (mask >= 0.5).astype(np.float32)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """An ``H×W×C`` image array as a ``C×H×W`` tensor of the same dtype, in memory of its own.

    The array is copied, so views (flipped, cropped) and read-only arrays are fine and the tensor never
    shares memory with them. Model inputs in ``[0, 1]`` are ``to_chw_tensor(image).float().div(255)``.
    """
    import torch  # here, not at the top: the torch-free ONNX path of `harmony harmonize` reads images too

    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)


def check_same_size(
    image_path: str | Path, image: np.ndarray, mask_path: str | Path, mask: np.ndarray
) -> None:
    """Raise a :class:`HarmonyInputError` naming both files when image and mask sizes differ."""
    if image.shape[:2] != mask.shape[:2]:
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
        raise HarmonyInputError(
            mask_path, f"mask is {mw}x{mh} but image {image_path} is {iw}x{ih} (width x height)"
        )


def list_images(folder: str | Path) -> list[Path]:
    """All image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HarmonyInputError(folder, "folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def usual_mode(directory: bool = False) -> int:
    """The permissions a new file (or folder) gets from ``open``/``mkdir``: 0o666 (0o777) less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``; the temporary file is removed on failure. The file
    gets the usual permissions (the umask's), not the temporary file's private 0o600.
    """
    with atomic_paths([Path(path)]) as (temporary,):
        yield temporary


@contextlib.contextmanager
def atomic_paths(paths: list[Path]) -> Iterator[list[Path]]:
    """:func:`atomic_path` for several files that belong together (an image and its LUT, …).

    Yields one temporary path per target; only when the block succeeds are they all renamed into place,
    so either every file of the result appears or none does.
    """
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(_staged(path)) for path in paths]
        yield temporaries
        for temporary, path in zip(temporaries, paths, strict=True):
            os.replace(temporary, path)


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` with the usual permissions, removed on the way out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        temporary_path.chmod(usual_mode())
        yield temporary_path
    finally:
        temporary_path.unlink(missing_ok=True)


def image_format(path: str | Path) -> str:
    """The Pillow format an output path's suffix names.

    Raises:
        HarmonyInputError: The suffix is not an image format Pillow writes.
    """
    path = Path(path)
    name = Image.registered_extensions().get(path.suffix.lower())
    if name is None or name not in Image.SAVE:
        raise HarmonyInputError(
            path, f"unknown image format {path.suffix or '(no suffix)'!r}: use .png, .jpg, .tif or .webp"
        )
    return name


def write_rgb(path: str | Path, image: np.ndarray, format: str, quality: int = 95) -> None:
    """Write an ``H×W×3`` ``uint8`` image in ``format`` (not atomically: see :func:`save_rgb`)."""
    options: dict[str, Any] = {"quality": quality} if format == "JPEG" else {}
    if format == "PNG":
        # zlib level 3 instead of Pillow's 6: on 4K photos 2.4-4x faster to write (0.5 s, not 1.2-3.2 s)
        # for files within 1-10% of the size; PNG is lossless, so the pixels are the same.
        options["compress_level"] = 3
    Image.fromarray(image).save(path, format=format, **options)


def save_rgb(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write an ``H×W×3`` ``uint8`` image atomically (format from the suffix)."""
    format = image_format(path)
    with atomic_path(path) as temporary:
        write_rgb(temporary, image, format, quality)


def save_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def save_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
