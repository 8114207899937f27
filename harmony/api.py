"""The Python API: ``model = harmony.load(...)``, then ``model(composite, mask)``.

::

    import harmony

    model = harmony.load("checkpoints/quickstart.ckpt")   # or a .onnx file, or "ReinhardLabTransfer"
    harmonized = model("composite.jpg", "mask.png")       # writes composite_harmonized.png, returns its path
    array = model(composite_array, mask_array)            # H×W×3 uint8 in, the same out
    pil_image = model(Image.open("composite.png"))        # the composite's alpha as the mask
    paths = model("composites/", "masks/", output="out/")  # a folder, in batches

Any resolution; the background (mask 0) comes back bit for bit. The model runs where it runs fastest
(:func:`load_runner`): a parametric checkpoint through ONNX Runtime on a CPU, exported once and cached,
any other model with PyTorch. This module imports neither torch nor Lightning until a model needs them.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from harmony.errors import HarmonyInputError

Runtime = Literal["auto", "onnx", "torch"]
RUNTIMES: tuple[str, ...] = ("auto", "onnx", "torch")


def cache_dir() -> Path:
    """Where harmony caches what it derives (``$HARMONY_CACHE``, else ``$XDG_CACHE_HOME/harmony``)."""
    if os.environ.get("HARMONY_CACHE"):
        return Path(os.environ["HARMONY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "harmony"


def cached_onnx_path(checkpoint: Path) -> Path:
    """Where the ONNX export of ``checkpoint`` is cached.

    The key is the checkpoint's path, size and modification time and harmony's version, so a rewritten
    checkpoint or a new harmony exports again.
    """
    import harmony

    stat = checkpoint.stat()
    identity = f"{checkpoint.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{harmony.__version__}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return cache_dir() / "onnx" / f"{checkpoint.stem}-{key}.onnx"


def _note(message: str) -> None:
    print(f"harmony: note: {message}", file=sys.stderr)


def _torch_device(device: str) -> Any:
    from harmony.commands.harmonize import resolve_device

    return resolve_device(device)


def _training_free(method: str, device: str) -> Any:
    import harmony.methods
    from harmony.methods.base import HarmonizationModule

    cls = getattr(harmony.methods, method, None) if method in harmony.methods.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, HarmonizationModule)):
        raise HarmonyInputError(None, f"unknown method '{method}' (see harmony.methods)")
    try:
        model = cls()
    except TypeError:
        raise HarmonyInputError(None, f"{method} needs trained weights: pass a checkpoint instead") from None
    return model.to(_torch_device(device)).eval()


def _export_to_cache(model: Any, checkpoint: Path, device: str) -> Any:
    """``model``'s networks exported to the cache and loaded with ONNX Runtime, or ``model`` if that fails."""
    from harmony.data.io import atomic_path
    from harmony.methods.semi_supervised_parametric.onnx_export import export_onnx
    from harmony.methods.semi_supervised_parametric.onnx_runtime import OnnxParametricHarmonizer

    target = cached_onnx_path(checkpoint)
    started = time.perf_counter()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            export_onnx(model, temporary)
    except Exception as error:  # noqa: BLE001 - the export is an optimisation: fall back to PyTorch
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _note(f"running with PyTorch: could not export {checkpoint} to ONNX ({first})")
        return model
    _note(
        f"exported the networks to ONNX once ({time.perf_counter() - started:.1f} s, cached in {target}); "
        "later runs start without torch"
    )
    return OnnxParametricHarmonizer(target, device)


def load_runner(
    checkpoint: str | Path | None = None,
    method: str | None = None,
    device: str = "auto",
    runtime: str = "auto",
) -> Any:
    """The object that harmonizes: a ``HarmonizationModule`` (PyTorch) or an ``OnnxParametricHarmonizer``.

    Args:
        checkpoint: A checkpoint written by ``harmony fit`` or ``harmony import-weights`` (``.ckpt``), or
            an export of a parametric one (``.onnx``).
        method: Or a training-free method by class name (``Composite``, ``ReinhardLabTransfer``…).
        device: ``auto``, ``cpu`` or ``cuda``.
        runtime: ``auto``: a parametric checkpoint runs through ONNX Runtime unless ``device`` is ``cuda``
            (exported on first use and cached, see :func:`cached_onnx_path`; later loads import no torch),
            everything else through PyTorch; ``onnx`` or ``torch`` insist.

    Raises:
        HarmonyInputError: The checkpoint or method is unknown or unreadable, or the runtime cannot run it.
    """
    if runtime not in RUNTIMES:
        raise HarmonyInputError(None, f"unknown runtime '{runtime}' (choose from {', '.join(RUNTIMES)})")
    if method is not None:
        if runtime == "onnx":
            raise HarmonyInputError(None, f"{method} has no ONNX export: use --runtime torch or auto")
        return _training_free(method, device)
    if checkpoint is None:
        raise HarmonyInputError(None, "give a checkpoint or a method")
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        if runtime == "torch":
            raise HarmonyInputError(checkpoint, "is an ONNX export: it runs with --runtime onnx or auto")
        from harmony.methods.semi_supervised_parametric.onnx_runtime import OnnxParametricHarmonizer

        return OnnxParametricHarmonizer(checkpoint, device)
    if not checkpoint.is_file():
        raise HarmonyInputError(checkpoint, "checkpoint not found")
    use_onnx = runtime == "onnx" or (runtime == "auto" and device != "cuda")
    if use_onnx and cached_onnx_path(checkpoint).is_file():
        from harmony.methods.semi_supervised_parametric.onnx_runtime import OnnxParametricHarmonizer

        return OnnxParametricHarmonizer(cached_onnx_path(checkpoint), device)
    from harmony.commands.checkpoints import load_checkpoint_model
    from harmony.methods.base import HarmonizationModule
    from harmony.methods.semi_supervised_parametric import SemiSupervisedParametric

    target = "cpu" if use_onnx else device
    model = load_checkpoint_model(checkpoint, HarmonizationModule, "a harmony method", _torch_device(target))
    if not isinstance(model, SemiSupervisedParametric):
        if runtime == "onnx":
            raise HarmonyInputError(
                checkpoint, f"only parametric models export to ONNX, not {type(model).__name__}"
            )
        return model if target == device else model.to(_torch_device(device))
    if not use_onnx:
        return model
    return _export_to_cache(model, checkpoint, device)


def resolve_source(source: str | Path) -> tuple[Path | None, str | None]:
    """``(checkpoint, method)`` for :func:`load`'s ``source``.

    A file, a training-free method, or a name ``X`` with ``checkpoints/X.ckpt`` (or ``.onnx``) in the
    working folder.
    """
    import harmony.methods

    text = str(source)
    if Path(text).is_file():
        return Path(text), None
    if text in harmony.methods.__all__:
        return None, text
    for suffix in (".ckpt", ".onnx"):
        named = Path("checkpoints") / f"{text}{suffix}"
        if named.is_file():
            return named, None
    raise HarmonyInputError(
        source,
        "no such checkpoint file, training-free method (e.g. ReinhardLabTransfer) or checkpoints/<name>.ckpt",
    )


def _is_pathlike(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _alpha_mask(image: Image.Image, origin: Any) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min(initial=1.0) < 1.0:
            return alpha
    raise HarmonyInputError(origin, "no mask given and the image has no transparency to use as the mask")


def _as_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != shape:
        raise HarmonyInputError(
            None, f"the mask is {array.shape[1]}×{array.shape[0]}, the composite {shape[1]}×{shape[0]}"
        )
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / 255.0
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def _as_composite(composite: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """An in-memory composite as ``H×W×3`` ``uint8`` and its alpha mask (if it has transparency)."""
    if isinstance(composite, Image.Image):
        alpha = _alpha_mask(composite, "the image") if composite.mode in ("RGBA", "LA", "PA") else None
        return np.asarray(composite.convert("RGB")), alpha
    array = np.asarray(composite)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise HarmonyInputError(None, f"a composite array is H×W×3 (or ×4 with alpha), not {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise HarmonyInputError(None, f"a composite array is uint8 or float in [0, 1], not {array.dtype}")
    if array.shape[2] == 4:
        alpha = array[..., 3].astype(np.float32) / 255.0
        return np.ascontiguousarray(array[..., :3]), alpha if alpha.min() < 1.0 else None
    return np.ascontiguousarray(array), None


class Harmonizer:
    """A loaded harmonization model, called like a function: ``model(composite, mask)``.

    Made by :func:`load`. Inputs may be file paths (a file, or a folder of them), PIL images or NumPy
    arrays (``H×W×3`` ``uint8``, or floats in ``[0, 1]``), or lists of those; what comes back is of the
    same kind. Without a mask the composite's alpha channel is the mask.

    Args:
        runner: The model (from :func:`load_runner`).
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    @property
    def name(self) -> str:
        """The model's class name."""
        return type(self.runner).__name__

    @property
    def is_parametric(self) -> bool:
        """Whether the model predicts curves and a shading map (then :meth:`adjustments` works)."""
        return hasattr(self.runner, "estimate_adjustments") and self.runner.output_postprocess is None

    def __repr__(self) -> str:
        return f"Harmonizer({self.name})"

    def adjustments(self, composite: Any, mask: Any = None) -> Any:
        """A parametric model's curves and shading map for one composite (``ParametricAdjustments``).

        ``.curves`` is ``3×K`` (write a ``.cube`` with
        :func:`harmony.methods.semi_supervised_parametric.any_resolution.curves_to_cube`), ``.gain_at(H, W)``
        the shading multiplier.
        """
        if not self.is_parametric:
            raise HarmonyInputError(None, f"{self.name} has no curves or shading map")
        return self.runner.estimate_adjustments(*self._read(composite, mask))

    def _read(self, composite: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
        if _is_pathlike(composite):
            from harmony.commands.harmonize import read_inputs

            return read_inputs(Path(composite), None if mask is None else Path(mask))
        image, alpha = _as_composite(composite)
        if mask is None:
            if alpha is None:
                raise HarmonyInputError(None, "no mask given and the composite has no transparency to use")
            return image, alpha
        if _is_pathlike(mask):
            from harmony.data.io import read_mask

            mask = read_mask(Path(mask))
        return image, _as_mask(mask, image.shape[:2])

    def harmonize_arrays(
        self, images: list[tuple[np.ndarray, np.ndarray]], batch_size: int = 8
    ) -> list[np.ndarray]:
        """Harmonize ``(composite, mask)`` array pairs; parametric networks run ``batch_size`` at a time."""
        if not self.is_parametric:
            runner = self.runner
            return [
                runner.postprocess_image(runner.harmonize_image(image, mask), image, mask)
                for image, mask in images
            ]
        outputs = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            adjustments = self.runner.estimate_batch(chunk)
            outputs += [
                self.runner.apply_adjustments(image, mask, found)
                for (image, mask), found in zip(chunk, adjustments, strict=True)
            ]
        return outputs

    def __call__(
        self, composite: Any, mask: Any = None, output: str | Path | None = None, batch_size: int = 8
    ) -> Any:
        """Harmonize one composite, a folder of them or a list; the result is of the input's kind.

        Args:
            composite: A file path, a folder path, a PIL image, an array, or a list of those.
            mask: Its mask of the same kind (a folder of masks matched by stem for a folder), or ``None``
                for the composite's alpha channel.
            output: For paths: the output file (default ``<stem>_harmonized.png`` beside the composite) or
                folder (default ``<folder>_harmonized``). Ignored for in-memory images.
            batch_size: Images per network run (parametric models).

        Returns:
            The output path (a file), the list of output paths (a folder), a PIL image, an array of the
            input's dtype, or a list of those.
        """
        if isinstance(composite, (list, tuple)):
            masks = [None] * len(composite) if mask is None else list(mask)
            if len(masks) != len(composite):
                raise HarmonyInputError(None, f"{len(composite)} composites but {len(masks)} masks")
            if all(_is_pathlike(item) for item in composite):
                return [
                    self(item, item_mask, batch_size=batch_size)
                    for item, item_mask in zip(composite, masks, strict=True)
                ]
            pairs = [self._read(item, item_mask) for item, item_mask in zip(composite, masks, strict=True)]
            outputs = self.harmonize_arrays(pairs, batch_size)
            return [self._like(item, result) for item, result in zip(composite, outputs, strict=True)]
        if _is_pathlike(composite):
            return self._harmonize_path(Path(composite), mask, output, batch_size)
        (result,) = self.harmonize_arrays([self._read(composite, mask)], batch_size)
        return self._like(composite, result)

    @staticmethod
    def _like(original: Any, result: np.ndarray) -> Any:
        if isinstance(original, Image.Image):
            return Image.fromarray(result)
        if np.issubdtype(np.asarray(original).dtype, np.floating):
            return result.astype(np.float32) / 255.0
        return result

    def _harmonize_path(self, composite: Path, mask: Any, output: str | Path | None, batch_size: int) -> Any:
        from harmony.commands.harmonize import Job, plan_folder_jobs, write_job

        if composite.is_dir():
            folder = (
                Path(output) if output is not None else composite.with_name(f"{composite.name}_harmonized")
            )
            if folder.resolve() == composite.resolve():
                raise HarmonyInputError(folder, "would overwrite the composites")
            jobs = plan_folder_jobs(composite, None if mask is None else Path(mask), folder)
        else:
            target = (
                Path(output)
                if output is not None
                else composite.with_name(f"{composite.stem}_harmonized.png")
            )
            jobs = [Job(composite, None if mask is None else Path(mask), target)]
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            results = self.harmonize_arrays(
                [self._read(job.composite, job.mask) for job in chunk], batch_size
            )
            for job, result in zip(chunk, results, strict=True):
                write_job(job, result)
        return [job.output for job in jobs] if composite.is_dir() else jobs[0].output


def load(source: str | Path, device: str = "auto", runtime: str = "auto") -> Harmonizer:
    """Load a harmonization model for use from Python.

    Args:
        source: A checkpoint (``harmony fit`` / ``harmony import-weights``), an ONNX export, a
            training-free method's class name (``ReinhardLabTransfer``), or a name ``X`` for
            ``checkpoints/X.ckpt``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        runtime: ``auto`` (the fastest: ONNX Runtime for parametric models on a CPU), ``onnx`` or ``torch``.

    Returns:
        A :class:`Harmonizer`: ``model(composite, mask)``.
    """
    checkpoint, method = resolve_source(source)
    return Harmonizer(load_runner(checkpoint, method, device, runtime))
