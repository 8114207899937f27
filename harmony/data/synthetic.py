"""Synthetic harmonization data in the iHarmony4 layout, made from photos bundled with scikit-image.

Tests, demos and learning checks need data that downloads nothing. :func:`generate_synthetic_harmony`
crops many *real* images from the colour photographs shipped inside the scikit-image wheel, draws one
foreground mask per real image, and makes two *composites* per mask by changing the foreground's
appearance the way iHarmony4 composites were made: mostly global per-channel colour transforms (Reinhard
colour transfer in Lab, tone curves, colour adjustments, white balance) plus an optional mild
low-frequency shading field (the edits of :mod:`harmony.data.composites.appearance`). The background
of every composite is bit-identical to its real image.

Layout (PNG everywhere, so there is no compression noise)::

    <root>/manifest.json                       # generator version, arguments, source photo of each real
    <root>/IHD_train.txt, IHD_val.txt, IHD_test.txt
    <root>/HSynthetic/real_images/s0001.png
    <root>/HSynthetic/masks/s0001_1.png        # 0/255, single channel
    <root>/HSynthetic/composite_images/s0001_1_1.png, s0001_1_2.png

List files hold one path per line relative to ``root``, e.g. ``HSynthetic/composite_images/s0001_1_2.png``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
from scipy import ndimage
from skimage import color, data, filters
from tqdm import tqdm

from harmony.data.composites import (
    random_color_adjustment,
    random_reinhard_transfer,
    random_shading,
    random_tone_curves,
    random_white_balance,
)
from harmony.errors import HarmonyInputError

GENERATOR_VERSION: Final = 2
"""Bump whenever the generated files change, so cached trees are regenerated."""

SUBSET: Final = "HSynthetic"
"""The subset folder inside the generated root."""

SPLITS: Final = ("train", "val", "test")

PHOTO_SPLITS: Final[dict[str, tuple[str, ...]]] = {
    "train": (
        "astronaut",
        "rocket",
        "motorcycle_left",
        "motorcycle_right",
        "hubble_deep_field",
        "colorwheel",
    ),
    "val": ("coffee", "retina"),
    "test": ("chelsea", "immunohistochemistry"),
}
"""The fixed assignment of bundled scikit-image colour photos to splits; no photo is in two splits.

The two stereo motorcycle views show one scene, so they share a split; ``data.cat`` is ``data.chelsea``.
"""

_PHOTO_LOADERS: Final[dict[str, Callable[[], np.ndarray]]] = {
    "astronaut": data.astronaut,
    "rocket": data.rocket,
    "motorcycle_left": lambda: data.stereo_motorcycle()[0],
    "motorcycle_right": lambda: data.stereo_motorcycle()[1],
    "hubble_deep_field": data.hubble_deep_field,
    "colorwheel": data.colorwheel,
    "coffee": data.coffee,
    "retina": data.retina,
    "chelsea": data.chelsea,
    "immunohistochemistry": data.immunohistochemistry,
}

_SHAPE_KINDS: Final = ("ellipse", "polygon", "blob", "horse", "cameraman", "logo", "coins")
_SHAPE_PROBABILITIES: Final = (0.18, 0.18, 0.24, 0.12, 0.12, 0.08, 0.08)
_CANVAS: Final = 256

_PERTURBATIONS: Final = ("reinhard", "curves", "color", "white_balance")
_OP_PROBABILITIES: Final = (0.35, 0.25, 0.25, 0.15)
_SECONDARY_PROBABILITY: Final = 0.4
_SHADING_PROBABILITY: Final = 0.5
_FMSE_FLOOR: Final = 100.0
_FMSE_CAP: Final = 5000.0
_PERTURBATION_TRIES: Final = 8

_GLOBAL_OPS: Final[dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]] = {
    "curves": random_tone_curves,
    "color": random_color_adjustment,
    "white_balance": random_white_balance,
}


def generate_synthetic_harmony(
    root: str | Path,
    seed: int = 0,
    num_train: int = 480,
    num_val: int = 48,
    num_test: int = 96,
    image_size: int = 256,
    show_progress: bool = True,
) -> Path:
    """Write (or reuse) a deterministic synthetic harmonization dataset in the iHarmony4 layout.

    The same ``seed`` and arguments always give byte-identical files. When ``root/manifest.json``
    already records this generator version and these arguments and every listed file exists, nothing
    is written. Otherwise the tree is generated in a temporary sibling folder and renamed into place,
    so ``root`` never holds a half-written tree.

    Args:
        root: The dataset root to create; it is treated as an iHarmony4 root with one subset,
            ``HSynthetic``. An existing folder is replaced only if it holds nothing but a synthetic tree.
        seed: The random seed (a non-negative integer).
        num_train: Number of training composites (two composites per real image and mask).
        num_val: Number of validation composites.
        num_test: Number of test composites.
        image_size: Side of the square images, in pixels (at least 32).
        show_progress: Show a progress bar on stderr.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        HarmonyInputError: An argument is out of range, or ``root`` exists and holds something else.
    """
    root = Path(root)
    args = _checked_args(seed, num_train, num_val, num_test, image_size)
    if _is_cached(root, args):
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_tree(staging, args, show_progress)
        _swap_into_place(staging, root, args)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _checked_args(seed: int, num_train: int, num_val: int, num_test: int, image_size: int) -> dict[str, int]:
    args = {
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "image_size": image_size,
    }
    for name, value in args.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise HarmonyInputError(None, f"{name} must be a non-negative integer, got {value!r}")
    if image_size < 32:
        raise HarmonyInputError(None, f"image_size must be at least 32, got {image_size}")
    return {name: int(value) for name, value in args.items()}


def _is_cached(root: Path, args: dict[str, int]) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if (
        not isinstance(manifest, dict)
        or manifest.get("version") != GENERATOR_VERSION
        or manifest.get("args") != args
    ):
        return False
    subset = root / SUBSET
    expected = [root / f"IHD_{split}.txt" for split in SPLITS]
    expected += [subset / "real_images" / f"{name}.png" for name in manifest.get("reals", {})]
    for name in manifest.get("composites", {}):
        expected += [
            subset / "composite_images" / f"{name}.png",
            subset / "masks" / f"{name.rsplit('_', 1)[0]}.png",
        ]
    return all(path.is_file() for path in expected)


def _check_replaceable(root: Path) -> None:
    ours = {SUBSET, "manifest.json", *(f"IHD_{split}.txt" for split in SPLITS)}
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise HarmonyInputError(root, "exists and is not a folder; refusing to replace it")
    if root.is_dir() and not {child.name for child in root.iterdir()} <= ours:
        raise HarmonyInputError(
            root, "exists and holds more than a synthetic dataset; refusing to replace it"
        )


def _swap_into_place(staging: Path, root: Path, args: dict[str, int]) -> None:
    trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    try:
        if root.exists():
            os.replace(root, trash / root.name)
        try:
            os.replace(staging, root)
        except OSError:
            # Another process (e.g. a second DDP rank) finished the same tree first.
            if not _is_cached(root, args):
                raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _write_tree(staging: Path, args: dict[str, int], show_progress: bool) -> None:
    folders = {kind: staging / SUBSET / kind for kind in ("real_images", "masks", "composite_images")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "args": args,
        "subset": SUBSET,
        "photo_splits": {split: list(photos) for split, photos in PHOTO_SPLITS.items()},
        "reals": {},
        "composites": {},
    }
    counts = {split: args[f"num_{split}"] for split in SPLITS}
    # Two composites per real image; an odd count leaves the split's last real with one.
    jobs = [
        (split, k, min(2, counts[split] - 2 * k)) for split in SPLITS for k in range((counts[split] + 1) // 2)
    ]
    lists: dict[str, list[str]] = {split: [] for split in SPLITS}
    progress = tqdm(
        jobs, desc=f"Generating {SUBSET}", unit="image", file=sys.stderr, disable=not show_progress
    )
    for index, (split, k, count) in enumerate(progress, start=1):
        for name in _write_example(folders, manifest, args, index, split, k, count):
            lists[split].append(f"{SUBSET}/composite_images/{name}.png")
    for split, lines in lists.items():
        (staging / f"IHD_{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _write_example(
    folders: dict[str, Path],
    manifest: dict[str, Any],
    args: dict[str, int],
    index: int,
    split: str,
    k: int,
    count: int,
) -> list[str]:
    # One generator per (split, image): a split's files never depend on the other splits' sizes.
    rng = np.random.default_rng([args["seed"], SPLITS.index(split), k])
    photos = PHOTO_SPLITS[split]
    real_name, photo = f"s{index:04d}", photos[k % len(photos)]
    real = _random_real(_photo(photo), args["image_size"], rng)
    mask = _random_mask(args["image_size"], rng)
    mask_name = f"{real_name}_1"
    _write_png(folders["real_images"] / f"{real_name}.png", real[..., ::-1])
    _write_png(folders["masks"] / f"{mask_name}.png", mask.astype(np.uint8) * 255)
    manifest["reals"][real_name] = {"split": split, "photo": photo}
    first = _draw_op(rng)
    primaries = [first, _draw_op(rng, exclude=(first,))]
    names = []
    for number in range(1, count + 1):
        # Reinhard colours come from another photo of the same split, so splits stay disjoint.
        others = [other for other in photos if other != photo]
        reference = others[int(rng.integers(len(others)))]
        composite, ops, fmse = _perturbed(real, mask, rng, primaries[number - 1], reference)
        name = f"{mask_name}_{number}"
        _write_png(folders["composite_images"] / f"{name}.png", composite[..., ::-1])
        record: dict[str, Any] = {"ops": ops, "fmse": round(fmse, 2)}
        if "reinhard" in ops:
            record["reference_photo"] = reference
        manifest["composites"][name] = record
        names.append(name)
    return names


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"{path}: cannot write PNG")


@functools.cache
def _photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(_PHOTO_LOADERS[name]()[..., :3])


def _random_real(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    height, width = photo.shape[:2]
    for _ in range(10):
        side = rng.uniform(0.35, 1.0) * min(height, width)
        # A slightly non-square crop squeezed to a square varies the aspect a little, like real resizes.
        aspect = math.exp(rng.uniform(-0.15, 0.15))
        crop_h = min(height, round(side / math.sqrt(aspect)))
        crop_w = min(width, round(side * math.sqrt(aspect)))
        top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
        crop = photo[top : top + crop_h, left : left + crop_w]
        # Skip nearly flat crops (the black border of retina, empty sky of hubble_deep_field).
        if crop.std() > 20:
            break
    interpolation = cv2.INTER_AREA if min(crop_h, crop_w) > size else cv2.INTER_CUBIC
    real = cv2.resize(crop, (size, size), interpolation=interpolation)
    if rng.random() < 0.5:
        real = real[:, ::-1]
    return np.ascontiguousarray(real)


def _random_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    min_pixels = max(16, round(0.004 * size * size))
    target = max(_foreground_ratio(rng) * size * size, 1.5 * min_pixels)
    for _ in range(1000):
        kind = _SHAPE_KINDS[rng.choice(len(_SHAPE_KINDS), p=_SHAPE_PROBABILITIES)]
        shape = _crop_to_content(_shape(kind, rng))
        height, width = shape.shape
        scale = min(math.sqrt(target / shape.sum()), size / height, size / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(shape.astype(np.uint8) * 255, (new_w, new_h), interpolation=interpolation) >= 128
        if resized.sum() < min_pixels:
            continue
        top, left = rng.integers(0, size - new_h + 1), rng.integers(0, size - new_w + 1)
        mask = np.zeros((size, size), dtype=bool)
        mask[top : top + new_h, left : left + new_w] = resized
        return mask
    raise RuntimeError("could not draw a non-empty foreground mask")


def _foreground_ratio(rng: np.random.Generator) -> float:
    # iHarmony4 foregrounds: mostly small (1-15 % of the image), some large, a few up to ~60 %.
    draw = rng.random()
    if draw < 0.6:
        return math.exp(rng.uniform(math.log(0.01), math.log(0.15)))
    if draw < 0.9:
        return rng.uniform(0.15, 0.35)
    return rng.uniform(0.35, 0.6)


def _crop_to_content(shape: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(shape.any(axis=1)), np.flatnonzero(shape.any(axis=0))
    return shape[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    center = _CANVAS // 2
    radius = 0.43 * _CANVAS
    canvas = np.zeros((_CANVAS, _CANVAS), dtype=np.uint8)
    if kind == "ellipse":
        axes = (round(radius), max(4, round(radius * rng.uniform(0.25, 1.0))))
        cv2.ellipse(canvas, (center, center), axes, rng.uniform(0, 180), 0, 360, 255, -1)
        return canvas > 0
    if kind == "polygon":
        count = int(rng.integers(3, 11))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = radius * rng.uniform(0.35, 1.0, count)
        points = np.stack([center + radii * np.cos(angles), center + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 255)
        return canvas > 0
    if kind == "blob":
        return _blob(rng)
    return _silhouette(kind, rng)


def _blob(rng: np.random.Generator) -> np.ndarray:
    noise = cv2.resize(
        rng.normal(size=(6, 6)).astype(np.float32), (_CANVAS, _CANVAS), interpolation=cv2.INTER_CUBIC
    )
    axis = np.linspace(-1, 1, _CANVAS, dtype=np.float32)
    # A radial bump keeps the blob centred and non-empty; the smooth noise makes its outline irregular.
    field = 0.8 * noise + 1.0 - 2.0 * (axis[None, :] ** 2 + axis[:, None] ** 2)
    # The quantile guard keeps at least a tenth of the canvas when the noise swamps the bump.
    inside = field > min(0.0, float(np.quantile(field, 0.9)))
    return ndimage.binary_fill_holes(_largest_component(inside))


def _silhouette(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "coins":
        labels, centroids = _coin_labels()
        # A small group of neighbouring coins, like a cluster of objects pasted together.
        first = int(rng.integers(len(centroids)))
        nearest = np.argsort(np.linalg.norm(centroids - centroids[first], axis=1))[: int(rng.integers(1, 5))]
        shape = np.isin(labels, nearest + 1)
    else:
        shape = _silhouettes()[kind]
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    if kind == "logo":
        shape = np.rot90(shape, int(rng.integers(4)))
    return shape


@functools.cache
def _silhouettes() -> dict[str, np.ndarray]:
    horse = ~data.horse()
    dark = ndimage.binary_opening(data.camera() < 45, iterations=2)
    cameraman = ndimage.binary_fill_holes(ndimage.binary_closing(_largest_component(dark), iterations=3))
    hsv = color.rgb2hsv(data.logo()[..., :3])
    green = (hsv[..., 0] > 0.15) & (hsv[..., 0] < 0.4) & (hsv[..., 1] > 0.3)
    logo = ndimage.binary_fill_holes(_largest_component(ndimage.binary_opening(green, iterations=2)))
    return {
        name: _crop_to_content(shape)
        for name, shape in (("horse", horse), ("cameraman", cameraman), ("logo", logo))
    }


@functools.cache
def _coin_labels() -> tuple[np.ndarray, np.ndarray]:
    coins = data.coins()
    filled = ndimage.binary_fill_holes(
        ndimage.binary_opening(coins > filters.threshold_otsu(coins), iterations=2)
    )
    labels, count = ndimage.label(filled)
    sizes = np.bincount(labels.ravel())
    keep = [index for index in range(1, count + 1) if sizes[index] >= 400]
    relabelled = np.zeros_like(labels)
    for new, old in enumerate(keep, start=1):
        relabelled[labels == old] = new
    centroids = np.array(ndimage.center_of_mass(filled, relabelled, range(1, len(keep) + 1)))
    return relabelled, centroids


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(mask)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _draw_op(rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> str:
    weights = np.array(
        [0.0 if op in exclude else p for op, p in zip(_PERTURBATIONS, _OP_PROBABILITIES, strict=True)]
    )
    return _PERTURBATIONS[rng.choice(len(_PERTURBATIONS), p=weights / weights.sum())]


def _perturbed(
    real: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    primary: str,
    reference_photo: str,
) -> tuple[np.ndarray, list[str], float]:
    original = real[mask].astype(np.float32)
    best: tuple[np.ndarray, list[str], float] | None = None
    for _ in range(_PERTURBATION_TRIES):
        ops = [primary]
        if rng.random() < _SECONDARY_PROBABILITY:
            ops.append(_draw_op(rng, exclude=(primary,)))
            rng.shuffle(ops)
        pixels = original / 255.0
        for op in ops:
            pixels = (
                random_reinhard_transfer(pixels, _reference_pixels(reference_photo, rng), rng)
                if op == "reinhard"
                else _GLOBAL_OPS[op](pixels, rng)
            )
        if rng.random() < _SHADING_PROBABILITY:
            pixels = random_shading(pixels, mask, rng)
            ops.append("shading")
        changed = np.clip(pixels * 255.0, 0.0, 255.0)
        fmse = float(np.mean((changed - original) ** 2))
        if fmse > _FMSE_CAP:
            # Pull implausibly strong changes back towards the real pixels; fMSE scales with the square.
            changed = original + math.sqrt(_FMSE_CAP * rng.uniform(0.5, 1.0) / fmse) * (changed - original)
        foreground = np.round(changed).astype(np.uint8)
        fmse = float(np.mean((foreground.astype(np.float32) - original) ** 2))
        if best is None or fmse > best[2]:
            best = (foreground, ops, fmse)
        if fmse >= _FMSE_FLOOR:
            break
    foreground, ops, fmse = best
    composite = real.copy()
    composite[mask] = foreground
    return composite, ops, fmse


def _reference_pixels(name: str, rng: np.random.Generator) -> np.ndarray:
    photo = _photo(name)
    height, width = photo.shape[:2]
    side = max(8, round(rng.uniform(0.15, 0.5) * min(height, width)))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    step = max(1, side // 64)
    region = photo[top : top + side : step, left : left + side : step]
    return region.reshape(-1, 3).astype(np.float32) / 255.0
