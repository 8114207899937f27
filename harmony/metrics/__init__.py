"""The one evaluator: protocols, per-image metrics and their aggregation per subset and bucket."""

from harmony.metrics.evaluator import (
    ALL_GROUP,
    FOREGROUND_BUCKETS,
    HarmonizationEvaluator,
    format_results_header,
    format_results_table,
    infer_iharmony4_subset,
    results_to_json,
)
from harmony.metrics.functional import (
    PSNR_CAP_DB,
    LpipsScorer,
    LpipsUnavailableError,
    per_image_metrics,
    psnr_db,
    structural_similarity,
    to_uint8_image,
)
from harmony.metrics.protocol import PROTOCOLS, EvaluationProtocol, get_protocol, resize_image, resize_mask

__all__ = [
    "ALL_GROUP",
    "FOREGROUND_BUCKETS",
    "PROTOCOLS",
    "PSNR_CAP_DB",
    "EvaluationProtocol",
    "HarmonizationEvaluator",
    "LpipsScorer",
    "LpipsUnavailableError",
    "format_results_header",
    "format_results_table",
    "get_protocol",
    "infer_iharmony4_subset",
    "per_image_metrics",
    "psnr_db",
    "resize_image",
    "resize_mask",
    "results_to_json",
    "structural_similarity",
    "to_uint8_image",
]
