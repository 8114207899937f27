"""``harmony build-rpharmony``: an RPHarmony-style data set from any folder of photos with object masks.

``harmony build-rpharmony --images photos/ --masks masks/ --output data/MyRPHarmony`` makes, for every
photo, ``--candidates`` composites by Random Poisson Blending (R2R, Zhang et al. 2025) with other photos
of the folder as references, scores them with a quality filter and keeps the best ``--keep``. Masks are
matched to photos by file stem (``--mask-suffix _mask`` for ``<stem>_mask.png``). The output is the
RPHarmony layout, ``OUT/<subset>/{composite_images,masks,real_images}`` with iHarmony4 names
(``<id>_1_<k>.jpg``, ``<id>_1.png``, ``<id>.jpg``) and ``IHD_train.txt``/``IHD_test.txt`` at the root,
split by photo (``--test-fraction``), so ``RPHarmonyDataModule`` and ``harmony check-data --dataset
rpharmony`` read it as they read the released RPHarmony; lines of other subsets already listed there are
kept, so R-DUTS and R-ADE20K can be built into one root. The default filter,
:class:`ForegroundChangeFilter`, needs no weights; ``--filter AestheticFilter --filter-args
'{"clip_model": "path/to/clip", "head": "head.safetensors"}'`` uses a local CLIP aesthetic predictor
like the paper, and ``--filter my.module.MyFilter`` any class with a ``score`` method (see
:class:`CompositeFilter`). The same seed gives the same files. An interrupted build resumes where it
stopped: a photo whose outputs all exist is skipped, and every file is written under a temporary name and
renamed. ``OUT/build.json`` records the settings and counts; resuming with other settings is refused.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from harmony import __version__
from harmony.commands.arguments import ToolArgumentParser
from harmony.data.io import atomic_path, binarize, check_same_size, read_mask, read_rgb, save_json, save_rgb
from harmony.data.records import list_iharmony4, list_matched_folders
from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    import torch

# torch (the AestheticFilter) and harmony.data.composites (OpenCV, scikit-image, SciPy: the blending) are
# imported where they are used, so that --help and a bad argument answer at once.

MANIFEST = "build.json"
MASK_INDEX = 1
"""Each photo has one mask, so every name carries mask index 1."""

SPLITS = ("train", "test")


class CompositeFilter(Protocol):
    """Scores a candidate composite; the builder keeps the candidates with the highest scores.

    Any class with this method works with ``--filter module.Class``; it is built with the
    ``--filter-args`` JSON object as keyword arguments. A NaN score ranks last.
    """

    def score(self, composite: np.ndarray, mask: np.ndarray, real: np.ndarray) -> float:
        """Rate one candidate (higher is better).

        Args:
            composite: The candidate, ``H×W×3`` ``uint8``.
            mask: Its ``H×W`` ``float32`` mask, 1 on the foreground and 0 elsewhere.
            real: The real photo it was made from, ``H×W×3`` ``uint8``.
        """


class ForegroundChangeFilter:
    """The default filter: the foreground should change visibly, not absurdly, and without clipping.

    A useful training composite differs from its real image about as much as real disharmonies do. The
    score is ``−(band_distance + clip_weight · clipped)``, at most 0:

    - ``band_distance`` is 0 when the foreground's fMSE between candidate and real image (squared error
      over ``3·N_fg``, 0–255 scale, as the evaluator defines it, at full resolution) lies in
      ``[low, high]``, and otherwise the distance in log scale, ``|ln((fMSE + 1) / (edge + 1))|``, to the
      nearer edge.
    - ``clipped`` is the share of foreground pixels that have a channel at 0 or 255 in the candidate but
      not in the real image: a blend that saturates has lost the detail a model should restore.

    Candidates inside the band without clipping tie, and the builder then keeps the earliest made: the
    band tells plausible from implausible changes, not which plausible one is better. The defaults are
    this toolkit's judgement, not measured: they bracket the fMSE 1376 of iHarmony4's unharmonized test
    composites (R2R's Table 1), from a change of about 12 levels RMS (150), which is hard to see, to
    about 55 levels (3000); tune them with ``--filter-args '{"low": …, "high": …}'``.

    Args:
        low: Lower edge of the fMSE band.
        high: Upper edge of the fMSE band.
        clip_weight: Penalty for a foreground that is clipped throughout.
    """

    def __init__(self, low: float = 150.0, high: float = 3000.0, clip_weight: float = 5.0) -> None:
        if not 0 <= low <= high:
            raise HarmonyInputError(None, f"ForegroundChangeFilter needs 0 <= low <= high, got {low}, {high}")
        self.low = low
        self.high = high
        self.clip_weight = clip_weight

    def score(self, composite: np.ndarray, mask: np.ndarray, real: np.ndarray) -> float:
        """Score one candidate (see the class)."""
        inside = mask >= 0.5
        candidate = composite[inside].astype(np.float64)
        truth = real[inside].astype(np.float64)
        fmse = float(np.mean((candidate - truth) ** 2))
        if fmse < self.low:
            band_distance = math.log((self.low + 1) / (fmse + 1))
        elif fmse > self.high:
            band_distance = math.log((fmse + 1) / (self.high + 1))
        else:
            band_distance = 0.0
        extreme = (candidate == 0) | (candidate == 255)
        clipped = float(np.mean(np.any(extreme & (candidate != truth), axis=1)))
        return -(band_distance + self.clip_weight * clipped)


# OpenAI CLIP's input normalisation, which every released CLIP image processor uses.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class AestheticFilter:
    """A CLIP aesthetic predictor, loaded only from local files: the automatic half of the paper's filter.

    R2R scored its candidates with Kitada's (2022) aesthetic predictor and then removed poor ones by hand;
    the paper gives neither the predictor's variant nor a threshold. This filter is the simplest
    predictor of that kind: a linear head on the L2-normalised image embedding of a transformers
    ``CLIPModel`` (the form of LAION's linear aesthetic predictors; MLP heads are not supported). The
    image is resized so that its shorter side is the model's input size (bicubic), centre-cropped and
    normalised as CLIP's image processor does. It rates the composite's aesthetics, not its realism or
    disharmony, and does not replace the manual pass. Nothing is downloaded.

    Args:
        clip_model: A local folder holding a transformers ``CLIPModel`` (``config.json`` and weights).
        head: A ``.safetensors`` or ``.pt`` file with the head: one tensor named ``…weight`` of shape
            ``1×D`` (``D`` = the model's projection size) and one named ``…bias`` of shape ``1``.
        device: The torch device to run on.
    """

    def __init__(self, clip_model: str | Path, head: str | Path, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel

        clip_model, head = Path(clip_model), Path(head)
        if not (clip_model / "config.json").is_file():
            raise HarmonyInputError(clip_model, "CLIP model folder with config.json not found (local only)")
        if not head.is_file():
            raise HarmonyInputError(head, "aesthetic head file not found")
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(clip_model, local_files_only=True).to(self.device).eval()
        self.weight, self.bias = self._load_head(head, self.model.config.projection_dim)
        self.input_size = self.model.config.vision_config.image_size

    def _load_head(self, path: Path, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        from safetensors.torch import load_file

        try:
            if path.suffix == ".safetensors":
                tensors = load_file(path)
            else:
                tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch and safetensors raise unrelated types for a bad file
            raise HarmonyInputError(path, f"cannot read the aesthetic head ({error})") from None
        if not isinstance(tensors, dict):
            raise HarmonyInputError(path, "the aesthetic head file must hold a dict of tensors")
        weights = [t for k, t in tensors.items() if k.endswith("weight")]
        biases = [t for k, t in tensors.items() if k.endswith("bias")]
        if (
            len(weights) != 1
            or len(biases) != 1
            or tuple(weights[0].shape) != (1, dim)
            or biases[0].numel() != 1
        ):
            raise HarmonyInputError(
                path, f"expected one 1x{dim} '…weight' and one '…bias' tensor (a linear head)"
            )
        return weights[0].float().to(self.device), biases[0].float().reshape(1).to(self.device)

    def score(self, composite: np.ndarray, mask: np.ndarray, real: np.ndarray) -> float:
        """The predicted aesthetic rating of ``composite`` (``mask`` and ``real`` are not used)."""
        import torch

        image = Image.fromarray(composite)
        scale = self.input_size / min(image.size)
        width, height = (
            max(self.input_size, round(image.width * scale)),
            max(self.input_size, round(image.height * scale)),
        )
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - self.input_size) // 2, (height - self.input_size) // 2
        image = image.crop((left, top, left + self.input_size, top + self.input_size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(_CLIP_MEAN)[:, None, None], torch.tensor(_CLIP_STD)[:, None, None]
        pixels = ((pixels - mean) / std)[None].to(self.device)
        with torch.no_grad():
            # Through the vision tower and projection directly: get_image_features' return type
            # differs between transformers 4 and 5.
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            embedding = self.model.visual_projection(pooled)
            embedding = embedding / embedding.norm(dim=-1, keepdim=True)
            return float((embedding @ self.weight.T + self.bias)[0, 0])


BUILTIN_FILTERS = {cls.__name__: cls for cls in (ForegroundChangeFilter, AestheticFilter)}


def load_filter(class_path: str, filter_args: dict[str, Any] | None = None) -> tuple[CompositeFilter, str]:
    """Build a filter from its class path (or a built-in's bare name) and keyword arguments.

    Args:
        class_path: ``module.Class``, or ``ForegroundChangeFilter`` / ``AestheticFilter``.
        filter_args: Keyword arguments of the class.

    Returns:
        The filter and its full class path.

    Raises:
        HarmonyInputError: The class cannot be imported, does not take these arguments or has no
            ``score`` method.
    """
    if "." in class_path:
        module_name, _, class_name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError as error:
            raise HarmonyInputError(
                None, f"--filter {class_path}: cannot import {module_name} ({error})"
            ) from None
    else:
        cls = BUILTIN_FILTERS.get(class_path)
    if not inspect.isclass(cls) or not callable(getattr(cls, "score", None)):
        raise HarmonyInputError(None, f"--filter {class_path}: not a class with a score() method")
    kwargs = dict(filter_args or {})
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as error:
        raise HarmonyInputError(None, f"--filter-args do not fit {class_path}: {error}") from None
    return cls(**kwargs), f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class Photo:
    """One input photo and its mask.

    Args:
        id: The photo's id in the output names (its file stem).
        image: The photo file.
        mask: Its mask file.
    """

    id: str
    image: Path
    mask: Path


def list_photos(images: Path, masks: Path, mask_suffix: str = "") -> list[Photo]:
    """The photos of ``images`` with their masks ``<stem><mask_suffix>.*`` in ``masks``, sorted by id."""
    records = list_matched_folders(images, masks, None, "photos", mask_suffix)
    photos: dict[str, Photo] = {}
    for record in records:
        if record.name in photos:
            raise HarmonyInputError(record.composite, f"two photos share the stem {record.name!r}")
        photos[record.name] = Photo(record.name, record.composite, record.mask)
    if len(photos) < 2:
        raise HarmonyInputError(images, "at least two photos are needed (each one's reference is another)")
    return [photos[key] for key in sorted(photos)]


def split_photos(ids: list[str], test_fraction: float, seed: int) -> set[str]:
    """The ids of the test photos: a seeded draw of ``round(test_fraction · n)``, at least one if > 0."""
    count = round(test_fraction * len(ids))
    if test_fraction > 0:
        count = min(max(count, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[:count]}


def composite_name(photo_id: str, rank: int) -> str:
    """The iHarmony4 name of a photo's ``rank``-th kept composite (from 1)."""
    return f"{photo_id}_{MASK_INDEX}_{rank}.jpg"


def photo_outputs(subset_dir: Path, photo_id: str, keep: int) -> list[Path]:
    """Every file a finished photo has: its composites, mask and real image."""
    return [
        *(subset_dir / "composite_images" / composite_name(photo_id, k) for k in range(1, keep + 1)),
        subset_dir / "masks" / f"{photo_id}_{MASK_INDEX}.png",
        subset_dir / "real_images" / f"{photo_id}.jpg",
    ]


def photo_rng(seed: int, photo_id: str) -> np.random.Generator:
    """A photo's own random stream, so it does not depend on which photos were built before it."""
    return np.random.default_rng([seed, zlib.crc32(photo_id.encode())])


def build_photo(
    photo: Photo,
    others: list[Photo],
    subset_dir: Path,
    rng: np.random.Generator,
    quality_filter: CompositeFilter,
    candidates: int,
    keep: int,
    alpha: float,
) -> None:
    """Make ``candidates`` composites of one photo, keep the ``keep`` best and write every output."""
    from harmony.data.composites.poisson_blending import random_poisson_blending

    real = read_rgb(photo.image)
    soft_mask = read_mask(photo.mask)
    check_same_size(photo.image, real, photo.mask, soft_mask)
    mask = binarize(soft_mask)
    if not mask.any():
        raise HarmonyInputError(photo.mask, "empty mask (no pixel >= 0.5)")
    # References are drawn without replacement while there are enough other photos.
    order = rng.permutation(len(others))
    scored = []
    for index in range(candidates):
        reference = read_rgb(others[order[index % len(others)]].image)
        composite = random_poisson_blending(real, mask, reference, rng, alpha)
        score = float(quality_filter.score(composite, mask, real))
        scored.append((-math.inf if math.isnan(score) else score, index, composite))
    # Highest score first; ties keep the order the candidates were made in.
    scored.sort(key=lambda item: (-item[0], item[1]))
    outputs = photo_outputs(subset_dir, photo.id, keep)
    for path, (_, _, composite) in zip(outputs[:keep], scored[:keep], strict=True):
        save_rgb(path, composite)
    with atomic_path(outputs[keep]) as temporary:
        Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(temporary, format="PNG")
    save_rgb(outputs[keep + 1], real)


def _listed_elsewhere(root: Path, split: str, subset: str) -> list[str]:
    """Lines of other subsets in the list the readers currently see for ``split`` (kept on rewrite)."""
    try:
        records = list_iharmony4(root, split)
    except HarmonyInputError:
        # No list yet is normal; a combined list that exists but cannot be read must not be dropped.
        if any((root / name).is_file() for name in (f"IHD_{split}.txt", f"{split}.txt", f"{split}.jsonl")):
            raise
        return []
    return [r.composite.relative_to(root).as_posix() for r in records if r.subset != subset]


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"tool": "harmony build-rpharmony", "harmony_version": __version__, "subsets": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise HarmonyInputError(path, f"not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("subsets"), dict):
        raise HarmonyInputError(path, "not a harmony build-rpharmony manifest (no 'subsets')")
    return manifest


def build_rpharmony(
    images: str | Path,
    masks: str | Path,
    output: str | Path,
    subset: str = "R-DUTS",
    candidates: int = 4,
    keep: int = 1,
    test_fraction: float = 0.1,
    seed: int = 0,
    alpha: float | None = None,
    filter_class: str = "ForegroundChangeFilter",
    filter_args: dict[str, Any] | None = None,
    mask_suffix: str = "",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build (or resume building) one RPHarmony-layout subset; see the module docstring.

    Args:
        images: Folder of photos.
        masks: Folder of their masks, named ``<photo stem><mask_suffix>.<ext>``.
        output: The data set root; the subset goes to ``output/subset``.
        subset: The subset's folder name.
        candidates: Composites made per photo.
        keep: Composites kept per photo (the best by the filter), at most ``candidates``.
        test_fraction: Share of photos in the test split, in ``[0, 1)``.
        seed: Seeds the split and every photo's blending positions and references.
        alpha: Strength of the Poisson blend (see
            :func:`~harmony.data.composites.poisson_blending.random_poisson_blending`); ``None``: its
            ``DEFAULT_ALPHA``.
        filter_class: The filter's class path or a built-in's name (see :func:`load_filter`).
        filter_args: Keyword arguments of the filter.
        mask_suffix: Text between a photo's stem and its mask's extension.
        show_progress: Show a progress bar on stderr.

    Returns:
        The subset's manifest entry (settings and counts), also written to ``output/build.json``.

    Raises:
        HarmonyInputError: Bad settings or input files, or ``output`` holds this subset built with other
            settings or not by this command.
    """
    if candidates < 1 or not 1 <= keep <= candidates:
        raise HarmonyInputError(
            None, f"need candidates >= 1 and 1 <= keep <= candidates, got {candidates}, {keep}"
        )
    if not 0 <= test_fraction < 1:
        raise HarmonyInputError(None, f"test fraction must lie in [0, 1), got {test_fraction}")
    if alpha is None:
        from harmony.data.composites.poisson_blending import DEFAULT_ALPHA

        alpha = DEFAULT_ALPHA
    if not 0 <= alpha <= 1:
        raise HarmonyInputError(None, f"alpha must lie in [0, 1], got {alpha}")
    if Path(subset).name != subset or subset.startswith("."):
        raise HarmonyInputError(None, f"bad subset name {subset!r} (a plain folder name is needed)")
    try:
        # As the manifest will hold them, so that a resumed build compares like with like.
        filter_args = json.loads(json.dumps(filter_args or {}))
    except (TypeError, ValueError) as error:
        raise HarmonyInputError(None, f"filter arguments must be JSON values ({error})") from None
    images, masks, root = Path(images), Path(masks), Path(output)
    photos = list_photos(images, masks, mask_suffix)
    quality_filter, filter_path = load_filter(filter_class, filter_args)
    ids = [photo.id for photo in photos]
    settings = {
        "seed": seed,
        "alpha": alpha,
        "candidates": candidates,
        "keep": keep,
        "filter": filter_path,
        "filter_args": filter_args,
        # The photo set decides every photo's references, so a resumed build must see the same one.
        "photo_ids_crc32": zlib.crc32("\n".join(ids).encode()),
    }
    manifest_path = root / MANIFEST
    manifest = _read_manifest(manifest_path)
    subset_dir = root / subset
    previous = manifest["subsets"].get(subset)
    if previous is None and subset_dir.is_dir() and any(subset_dir.iterdir()):
        raise HarmonyInputError(
            subset_dir, f"exists but {manifest_path} does not record building it; choose another --output"
        )
    if previous is not None and previous.get("settings") != settings:
        changed = ", ".join(
            f"{key} {previous.get('settings', {}).get(key)!r} -> {value!r}"
            for key, value in settings.items()
            if previous.get("settings", {}).get(key) != value
        )
        raise HarmonyInputError(
            manifest_path, f"{subset} was built with other settings ({changed}); use a new --output"
        )
    entry: dict[str, Any] = {
        "status": "building",
        "settings": settings,
        "test_fraction": test_fraction,
        "images": str(images),
        "masks": str(masks),
        "mask_suffix": mask_suffix,
    }
    manifest["harmony_version"] = __version__
    manifest["subsets"][subset] = entry
    save_json(manifest_path, manifest)

    built = 0
    for photo in tqdm(
        photos, desc=f"build {subset}", unit="photo", file=sys.stderr, disable=not show_progress
    ):
        if all(path.is_file() for path in photo_outputs(subset_dir, photo.id, keep)):
            continue
        others = [other for other in photos if other.id != photo.id]
        build_photo(
            photo, others, subset_dir, photo_rng(seed, photo.id), quality_filter, candidates, keep, alpha
        )
        built += 1

    test_ids = split_photos(ids, test_fraction, seed)
    for split in SPLITS:
        ours = [
            f"{subset}/composite_images/{composite_name(photo_id, k)}"
            for photo_id in ids
            if (photo_id in test_ids) == (split == "test")
            for k in range(1, keep + 1)
        ]
        lines = sorted(_listed_elsewhere(root, split, subset) + ours)
        list_path = root / f"IHD_{split}.txt"
        if lines:
            with atomic_path(list_path) as temporary:
                temporary.write_text("\n".join(lines) + "\n")
        else:
            list_path.unlink(missing_ok=True)
    entry["status"] = "complete"
    entry["counts"] = {
        "photos": len(ids),
        "train_photos": len(ids) - len(test_ids),
        "test_photos": len(test_ids),
        "train_composites": (len(ids) - len(test_ids)) * keep,
        "test_composites": len(test_ids) * keep,
        "candidates_per_photo": candidates,
    }
    save_json(manifest_path, manifest)
    print(f"{subset}: {len(ids)} photos ({built} built now, {len(ids) - built} already done) -> {subset_dir}")
    return entry


def main(argv: list[str] | None = None) -> int:
    """Build an RPHarmony-layout data set; returns the exit status."""
    parser = ToolArgumentParser(prog="harmony build-rpharmony", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of photos")
    parser.add_argument("--masks", type=Path, required=True, help="folder of their object masks")
    parser.add_argument("--mask-suffix", default="", help="mask names are <photo stem><suffix>.<ext>")
    parser.add_argument("--output", type=Path, required=True, help="the data set root to write")
    parser.add_argument("--subset", default="R-DUTS", help="subset folder name (R-DUTS, R-ADE20K, yours)")
    parser.add_argument("--candidates", type=int, default=4, help="composites made per photo")
    parser.add_argument("--keep", type=int, default=1, help="best composites kept per photo")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of photos in the test split")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, references and positions")
    # No default here: build_rpharmony() takes poisson_blending.DEFAULT_ALPHA, which the parser cannot
    # import without OpenCV.
    parser.add_argument("--alpha", type=float, help="strength of the Poisson blend")
    parser.add_argument(
        "--filter", default="ForegroundChangeFilter", help="quality filter: module.Class or a built-in name"
    )
    parser.add_argument("--filter-args", default="{}", help="JSON object of the filter's keyword arguments")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        filter_args = json.loads(args.filter_args)
    except json.JSONDecodeError as error:
        raise HarmonyInputError(None, f"--filter-args is not valid JSON ({error})") from None
    if not isinstance(filter_args, dict):
        raise HarmonyInputError(None, "--filter-args must be a JSON object")
    build_rpharmony(
        args.images,
        args.masks,
        args.output,
        subset=args.subset,
        candidates=args.candidates,
        keep=args.keep,
        test_fraction=args.test_fraction,
        seed=args.seed,
        alpha=args.alpha,
        filter_class=args.filter,
        filter_args=filter_args,
        mask_suffix=args.mask_suffix,
        show_progress=not args.no_progress,
    )
    return 0
