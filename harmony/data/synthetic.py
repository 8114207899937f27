"""Synthetic harmonization data in the iHarmony4 layout, made from photos bundled with Python packages.

Tests, demos and the offline quickstart need data that downloads nothing. :func:`generate_synthetic_harmony`
crops many *real* images from the colour photographs shipped inside the scikit-image, scikit-learn and
matplotlib wheels, cuts one foreground per real image and makes two *composites* per foreground the
ways iHarmony4's subsets were made (Cong et al. 2020, Sec. 3), with the operations of
:mod:`harmony.data.composites`:

- **color_transfer** (HCOCO, HFlickr): the real foreground recoloured towards the pixels of an object-like
  region of *another* photo of the same split, by one of the four transfers of
  :mod:`~harmony.data.composites.color_transfer` (parametric / non-parametric × correlated / decorrelated).
- **retouch** (HAdobe5k): the real image is one global retouch of the photo (or the photo as shot), the
  composite's foreground another (:func:`~harmony.data.composites.random_retouch`).
- **illumination** (Hday2night): the real image is the photo under one light (day, overcast, dusk, night),
  the composite's foreground under another (:func:`~harmony.data.composites.random_illumination`).

Foregrounds are mostly regions grown from the photo's own segmentation
(:func:`~harmony.data.composites.segment_mask`: edge-following, one solid piece), otherwise silhouettes and
smooth shapes; their share of the image follows iHarmony4's (mostly under 15 %). Some composites also get a
mild low-frequency shading field. Each composite's strength is a target fMSE drawn around the family's
:data:`STRENGTH_MEDIANS`, close to the Composite's fMSE per subset on iHarmony4's test split; each change
is scaled onto its target (amplified at most 1.6×, so a weak edit may stay below it). The background of
every composite is bit-identical to its real image.

Layout (PNG everywhere, so there is no compression noise)::

    <root>/manifest.json                       # version, arguments; photo, family, fMSE of each sample
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
from PIL import Image
from scipy import ndimage
from skimage import color, data, filters
from tqdm import tqdm

from harmony.data.composites import (
    COLOR_TRANSFERS,
    random_illumination,
    random_retouch,
    random_shading,
    segment_mask,
)
from harmony.data.io import usual_mode
from harmony.errors import HarmonyInputError

GENERATOR_VERSION: Final = 3
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
        "coffee",
        "china",
        "grace_hopper",
    ),
    "val": ("flower", "retina"),
    "test": ("chelsea", "immunohistochemistry"),
}
"""The fixed assignment of bundled colour photos to splits; no photo is in two splits.

The two stereo motorcycle views show one scene, so they share a split; ``data.cat`` is ``data.chelsea``.
``china`` and ``flower`` ship with scikit-learn, ``grace_hopper`` with matplotlib.
"""


def _sklearn_photo(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")


def _matplotlib_photo(name: str) -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data(name) as file:
        return np.asarray(Image.open(file).convert("RGB"))


_PHOTO_LOADERS: Final[dict[str, Callable[[], np.ndarray]]] = {
    "astronaut": data.astronaut,
    "rocket": data.rocket,
    "motorcycle_left": lambda: data.stereo_motorcycle()[0],
    "motorcycle_right": lambda: data.stereo_motorcycle()[1],
    "hubble_deep_field": data.hubble_deep_field,
    "colorwheel": data.colorwheel,
    "coffee": data.coffee,
    "china": lambda: _sklearn_photo("china"),
    "flower": lambda: _sklearn_photo("flower"),
    "grace_hopper": lambda: _matplotlib_photo("grace_hopper.jpg"),
    "retina": data.retina,
    "chelsea": data.chelsea,
    "immunohistochemistry": data.immunohistochemistry,
}

_SEGMENT_PROBABILITY: Final = 0.7
_SHAPE_KINDS: Final = ("ellipse", "polygon", "blob", "horse", "cameraman", "logo", "coins")
_SHAPE_PROBABILITIES: Final = (0.18, 0.18, 0.24, 0.12, 0.12, 0.08, 0.08)
_CANVAS: Final = 256

FAMILIES: Final = ("color_transfer", "retouch", "illumination")
"""How a composite's foreground is changed, after iHarmony4's HCOCO/HFlickr, HAdobe5k and Hday2night."""
_FAMILY_PROBABILITIES: Final = (0.4, 0.3, 0.3)

STRENGTH_MEDIANS: Final[dict[str, float]] = {
    "color_transfer": 700.0,
    "retouch": 1300.0,
    "illumination": 900.0,
}
"""Median of the target foreground MSE of each family (log-normal, σ = 0.9, within ``FMSE_RANGE``).

With σ = 0.9 the means are 1.5× these (about 1050, 1950 and 1350), close to the Composite's fMSE on
iHarmony4's test split: HCOCO 997 (and HFlickr 1574), HAdobe5k 2052, Hday2night 1410.
"""
_STRENGTH_SIGMA: Final = 0.9
FMSE_RANGE: Final = (60.0, 8000.0)
"""Every composite's foreground MSE against its real image (0–255 scale) lies in this range."""
_PERTURBATION_TRIES: Final = 8
_MAX_AMPLIFICATION: Final = 1.6
_SHADING_PROBABILITY: Final = 0.3
_UNCHANGED_REAL_PROBABILITY: Final = 0.3


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
    staging.chmod(usual_mode(directory=True))
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
    scene = _random_real(_photo(photo), args["image_size"], rng)
    family = FAMILIES[rng.choice(len(FAMILIES), p=_FAMILY_PROBABILITIES)]
    # HAdobe5k and Hday2night reals are themselves one rendition of the scene among several.
    real_edit = None
    if family == "retouch" and rng.random() >= _UNCHANGED_REAL_PROBABILITY:
        real_edit = random_retouch(rng)
    elif family == "illumination":
        real_edit = random_illumination(rng)
    real = scene if real_edit is None else _edited(scene, real_edit)
    mask = _random_mask(scene, rng)
    mask_name = f"{real_name}_1"
    _write_png(folders["real_images"] / f"{real_name}.png", real[..., ::-1])
    _write_png(folders["masks"] / f"{mask_name}.png", mask.astype(np.uint8) * 255)
    manifest["reals"][real_name] = {"split": split, "photo": photo, "family": family}
    others = [other for other in photos if other != photo]
    names = []
    for number in range(1, count + 1):
        composite, record = _perturbed(scene, real, mask, family, others, rng)
        name = f"{mask_name}_{number}"
        _write_png(folders["composite_images"] / f"{name}.png", composite[..., ::-1])
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


def _random_mask(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = scene.shape[0]
    min_pixels = max(16, round(0.004 * size * size))
    target = max(_foreground_ratio(rng) * size * size, 1.5 * min_pixels)
    if rng.random() < _SEGMENT_PROBABILITY:
        # An object-like region of the photo itself; when none of about the right size grows, a shape.
        for _ in range(3):
            mask = segment_mask(scene, target / (size * size), rng)
            if mask is not None and mask.sum() >= min_pixels:
                return mask
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
        return ndimage.binary_fill_holes(_largest_component(mask))
    raise RuntimeError("could not draw a non-empty foreground mask")


def _foreground_ratio(rng: np.random.Generator) -> float:
    # iHarmony4 foregrounds: mostly small (Hday2night's often under 2 %), some large, a few up to ~60 %.
    draw = rng.random()
    if draw < 0.6:
        return math.exp(rng.uniform(math.log(0.008), math.log(0.15)))
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


def _edited(image: np.ndarray, edit: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    pixels = edit(image.reshape(-1, 3).astype(np.float32) / 255.0)
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(image.shape)


def _perturbed(
    scene: np.ndarray,
    real: np.ndarray,
    mask: np.ndarray,
    family: str,
    reference_photos: list[str],
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A composite of ``real`` whose foreground is another rendition of it, and its manifest record.

    color_transfer: the real foreground recoloured with one of the four iHarmony4 transfers towards an
    object of another photo. retouch / illumination: the foreground of the scene under another retouch or
    light than the real image's. The change is then scaled so that its fMSE meets a target drawn around
    the family's iHarmony4-like strength (shrunk freely, amplified at most 1.6×).
    """
    original = real[mask].astype(np.float32)
    low, high = FMSE_RANGE
    target = float(np.clip(rng.lognormal(math.log(STRENGTH_MEDIANS[family]), _STRENGTH_SIGMA), low, high))
    best: tuple[np.ndarray, dict[str, Any], float] | None = None
    for _ in range(_PERTURBATION_TRIES):
        record: dict[str, Any] = {"family": family}
        if family == "color_transfer":
            method = list(COLOR_TRANSFERS)[int(rng.integers(len(COLOR_TRANSFERS)))]
            reference = reference_photos[int(rng.integers(len(reference_photos)))]
            pixels = COLOR_TRANSFERS[method](original / 255.0, _reference_object(reference, rng), rng)
            record.update(method=method, reference_photo=reference)
        else:
            edit = random_retouch(rng) if family == "retouch" else random_illumination(rng)
            pixels = edit(scene[mask].astype(np.float32) / 255.0)
        if rng.random() < _SHADING_PROBABILITY:
            pixels = random_shading(pixels, mask, rng)
            record["shading"] = True
        changed = np.clip(pixels * 255.0, 0.0, 255.0)
        fmse = float(np.mean((changed - original) ** 2))
        if fmse > 0:
            # fMSE scales with the square of the change: scale it onto the target, amplifying at most
            # _MAX_AMPLIFICATION times (a stronger version of the same edit), so every family keeps its
            # own character while its strengths follow the target distribution.
            scale = min(math.sqrt(target / fmse), _MAX_AMPLIFICATION)
            changed = np.clip(original + scale * (changed - original), 0.0, 255.0)
        foreground = np.round(changed).astype(np.uint8)
        fmse = float(np.mean((foreground.astype(np.float32) - original) ** 2))
        if best is None or fmse > best[2]:
            best = (foreground, record, fmse)
        if fmse >= low:
            break
    foreground, record, fmse = best
    composite = real.copy()
    composite[mask] = foreground
    return composite, {**record, "fmse": round(fmse, 2), "target_fmse": round(target, 2)}


def _reference_object(name: str, rng: np.random.Generator) -> np.ndarray:
    """The pixels of an object-like region of another photo: the statistics a foreground is given."""
    crop = _random_real(_photo(name), 128, rng)
    region = segment_mask(crop, rng.uniform(0.05, 0.3), rng)
    if region is None:
        region = np.ones(crop.shape[:2], dtype=bool)
    return crop[region].astype(np.float32) / 255.0
