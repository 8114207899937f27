"""The one evaluator every method, baseline and ``harmony score`` goes through.

Per-image values are kept (not running sums) so results can be grouped after the fact: per subset,
over everything (``all``) and per foreground-ratio bucket. Aggregates are means of per-image values
(PSNR is the mean of per-image PSNRs, not the PSNR of the pooled MSE); fMSE skips empty masks.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from typing import Any, Final

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from harmony.data.types import IHARMONY4_SUBSETS
from harmony.metrics.functional import (
    PSNR_CAP_DB,
    LpipsScorer,
    LpipsUnavailableError,
    per_image_metrics,
    to_uint8_image,
)
from harmony.metrics.protocol import EvaluationProtocol, get_protocol

ALL_GROUP: Final = "all"

FOREGROUND_BUCKETS: Final = (("fg_0_5", 0.0, 0.05), ("fg_5_15", 0.05, 0.15), ("fg_15_100", 0.15, 1.0))
"""``(group, low, high)`` on the foreground ratio: ``[low, high)``, except that the last bucket also
holds ratio 1.0 (a full-image mask), which the DiffHarmony code leaves out of every bucket."""

_PER_IMAGE_VALUES: Final = ("mse", "psnr", "fmse", "ssim", "fg_ratio", "lpips")
_IHARMONY4_PREFIXES: Final = {"a": "HAdobe5k", "c": "HCOCO", "d": "Hday2night", "f": "HFlickr"}


def subset_code(subset: str) -> int:
    """A stable integer code for a subset name (CRC-32), so it can travel in a tensor state."""
    return zlib.crc32(subset.encode("utf-8"))


def infer_iharmony4_subset(name: str) -> str | None:
    """Guess the iHarmony4 subset from a file name's first letter (``a0001_1_2`` → ``HAdobe5k``).

    A fallback only: readers that know the folder a file came from should use that instead.

    Args:
        name: A file name or stem.

    Returns:
        The subset, or ``None`` when the first letter is not one of ``a``, ``c``, ``d``, ``f``.
    """
    return _IHARMONY4_PREFIXES.get(name[:1].lower())


def _group_sort_key(group: str) -> tuple[int, int, str]:
    if group in IHARMONY4_SUBSETS:
        return (0, IHARMONY4_SUBSETS.index(group), group)
    bucket_names = [bucket for bucket, _, _ in FOREGROUND_BUCKETS]
    if group == ALL_GROUP:
        return (2, 0, group)
    if group in bucket_names:
        return (3, bucket_names.index(group), group)
    return (1, 0, group)


def _mean(values: torch.Tensor) -> float:
    # An exactly rounded sum: the mean cannot depend on the order images arrived in (batching, ranks).
    return math.fsum(values.tolist()) / values.numel() if values.numel() else math.nan


class HarmonizationEvaluator(Metric):
    """Scores harmonized images under one :class:`~harmony.metrics.protocol.EvaluationProtocol`.

    Safe under DDP: every per-image value is a list state concatenated across processes, subsets
    included (as CRC-32 codes), and so are the subset names, so every process reports every group by
    name, also one only another process saw. Each image must be scored by exactly one process (the
    DataModules' evaluation loaders do not pad, see :meth:`~harmony.data.HarmonyDataModule.make_dataloader`):
    the results then equal a single process's exactly, since every statistic is a mean (an exactly
    rounded sum, independent of order) or a count of per-image values.

    Args:
        protocol: ``"iharmony4"`` (default), ``"bcmi"``, or an :class:`EvaluationProtocol`.
        paste_background: Override the protocol's background paste (``None`` keeps it).
        compute_lpips: Also compute LPIPS. If its weights are not on disk a warning
            ``LPIPS unavailable: <reason>`` is issued, :attr:`lpips_unavailable_reason` is set, and the
            results have no ``lpips`` entry.
        **kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        protocol: str | EvaluationProtocol = "iharmony4",
        paste_background: bool | None = None,
        compute_lpips: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.protocol: EvaluationProtocol = get_protocol(protocol, paste_background)
        self.lpips_unavailable_reason: str | None = None
        self._lpips: LpipsScorer | None = None
        if compute_lpips:
            try:
                self._lpips = LpipsScorer.load()
            except LpipsUnavailableError as error:
                self.lpips_unavailable_reason = str(error)
                warnings.warn(f"LPIPS unavailable: {error}", stacklevel=2)
        # Every state, subset codes and name bytes included, is float64 (both are exact in it), and so is
        # the placeholder torchmetrics gathers from a process that saw no data: nothing gets promoted to
        # float32.
        for name in (*_PER_IMAGE_VALUES, "subset_code", "subset_names"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    @property
    def computes_lpips(self) -> bool:
        """Whether LPIPS was requested and its weights could be loaded."""
        return self._lpips is not None

    def update(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        composite: torch.Tensor | None,
        subsets: Sequence[str],
    ) -> None:
        """Score a batch at the protocol size and remember the per-image values.

        Args:
            prediction: ``B×3×S×S`` harmonized images, ``uint8`` on 0–255 or floating in ``[0, 1]``
                (quantised to 8 bits first, as saving them would).
            target: ``B×3×S×S`` ground-truth images, same conventions.
            mask: ``B×1×S×S`` foreground mask (thresholded at 0.5).
            composite: ``B×3×S×S`` input composites; needed when the protocol pastes the background.
            subsets: The subset of each image.
        """
        size = self.protocol.size
        if tuple(prediction.shape[-2:]) != (size, size):
            raise ValueError(
                f"protocol {self.protocol.name!r} scores {size}×{size} images, got "
                f"{tuple(prediction.shape[-2:])}: resize with harmony.metrics.protocol first"
            )
        if len(subsets) != prediction.shape[0]:
            raise ValueError(f"{len(subsets)} subset names for a batch of {prediction.shape[0]} images")
        values = per_image_metrics(
            to_uint8_image(prediction),
            to_uint8_image(target),
            mask,
            None if composite is None else to_uint8_image(composite),
            self.protocol,
            lpips=self._lpips,
        )
        for name, value in values.items():
            getattr(self, name).append(value)
        codes = [subset_code(subset) for subset in subsets]
        self.subset_code.append(torch.tensor(codes, dtype=torch.float64, device=prediction.device))
        # The batch's subset names travel with the codes (UTF-8, each ended by a NUL, which no file or
        # folder name holds), so a process can name a subset it saw no image of.
        names = "".join(f"{subset}\0" for subset in dict.fromkeys(subsets)).encode("utf-8")
        self.subset_names.append(torch.tensor(list(names), dtype=torch.float64, device=prediction.device))

    def compute(self) -> dict[str, dict[str, float]]:
        """Aggregate per group: each subset, ``all``, then the foreground-ratio buckets.

        Returns:
            ``{group: {"n", "mse", "psnr", "fmse", "ssim", ["lpips"], "n_empty_mask", "n_psnr_capped"}}``;
            groups without images are left out, except ``all``.
        """
        names = [name for name in _PER_IMAGE_VALUES if name != "lpips" or self.computes_lpips]
        if isinstance(self.subset_code, list) and not self.subset_code:
            empty = torch.zeros(0, dtype=torch.float64)
            return {ALL_GROUP: self._summarise({name: empty for name in names})}
        values = {name: dim_zero_cat(getattr(self, name)) for name in names}
        codes = dim_zero_cat(self.subset_code).to(torch.int64)
        encoded = bytes(dim_zero_cat(self.subset_names).to(torch.uint8).tolist()).decode("utf-8")
        subset_names = {subset_code(subset): subset for subset in encoded.split("\0")[:-1]}
        selections: dict[str, torch.Tensor] = {}
        for code in codes.unique().tolist():
            selections[subset_names[code]] = codes == code
        selections[ALL_GROUP] = torch.ones_like(codes, dtype=torch.bool)
        ratio = values["fg_ratio"]
        for bucket, low, high in FOREGROUND_BUCKETS:
            selections[bucket] = (ratio >= low) & (ratio < high)
        selections[FOREGROUND_BUCKETS[-1][0]] |= ratio == 1.0
        results = {}
        for group in sorted(selections, key=_group_sort_key):
            selected = selections[group]
            if group == ALL_GROUP or bool(selected.any()):
                results[group] = self._summarise({name: value[selected] for name, value in values.items()})
        return results

    @staticmethod
    def _summarise(values: dict[str, torch.Tensor]) -> dict[str, float]:
        fmse = values["fmse"]
        has_foreground = ~torch.isnan(fmse)
        summary: dict[str, float] = {
            "n": int(values["mse"].numel()),
            "mse": _mean(values["mse"]),
            "psnr": _mean(values["psnr"]),
            "fmse": _mean(fmse[has_foreground]),
            "ssim": _mean(values["ssim"]),
        }
        if "lpips" in values:
            summary["lpips"] = _mean(values["lpips"])
        summary["n_empty_mask"] = int((~has_foreground).sum())
        summary["n_psnr_capped"] = int((values["psnr"].abs() >= PSNR_CAP_DB).sum())
        return summary


def _format_value(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_results_header(protocol: EvaluationProtocol, results: dict[str, dict[str, float]]) -> str:
    """One line naming everything that makes numbers comparable: protocol, size, paste, counts.

    Args:
        protocol: The protocol the results were computed under.
        results: The output of :meth:`HarmonizationEvaluator.compute`.

    Returns:
        E.g. ``protocol iharmony4, 256×256, background paste on: 7404 images, 0 empty masks, 0 PSNRs
        capped at ±100 dB``.
    """
    overall = results[ALL_GROUP]
    paste = "on" if protocol.paste_background else "off"
    return (
        f"protocol {protocol.name}, {protocol.size}×{protocol.size}, background paste {paste}: "
        f"{overall['n']} images, {overall['n_empty_mask']} empty masks, "
        f"{overall['n_psnr_capped']} PSNRs capped at ±{PSNR_CAP_DB:g} dB"
    )


def format_results_table(results: dict[str, dict[str, float]], title: str | None = None) -> str:
    """An aligned text table: one row per group (subsets, ``all``, buckets), one column per metric.

    Args:
        results: The output of :meth:`HarmonizationEvaluator.compute`.
        title: An optional first line.

    Returns:
        The table, without a trailing newline.
    """
    columns = [("MSE", "mse", 2), ("PSNR", "psnr", 2), ("fMSE", "fmse", 2), ("SSIM", "ssim", 4)]
    if any("lpips" in summary for summary in results.values()):
        columns.append(("LPIPS", "lpips", 4))
    rows = [["group", "n", *(label for label, _, _ in columns)]]
    for group in sorted(results, key=_group_sort_key):
        summary = results[group]
        cells = [_format_value(summary.get(key, math.nan), digits) for _, key, digits in columns]
        rows.append([group, str(summary["n"]), *cells])
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    lines = [] if title is None else [title]
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _json_number(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def results_to_json(protocol: EvaluationProtocol, results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The JSON document ``harmony score --output`` writes (NaN becomes ``null``, keeping it valid JSON).

    Args:
        protocol: The protocol the results were computed under.
        results: The output of :meth:`HarmonizationEvaluator.compute`.

    Returns:
        ``{"protocol", "image_size", "paste_background", "results": {group: {...}}}``.
    """
    return {
        "protocol": protocol.name,
        "image_size": protocol.size,
        "paste_background": protocol.paste_background,
        "results": {
            group: {key: _json_number(value) for key, value in summary.items()}
            for group, summary in sorted(results.items(), key=lambda item: _group_sort_key(item[0]))
        },
    }
