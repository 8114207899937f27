"""The one evaluator: protocols, per-image metrics and their aggregation per subset and bucket.

Names load on first use (:mod:`harmony.lazy`): :mod:`harmony.metrics.protocol` (NumPy and Pillow) imports
without torch, so the commands that only need its protocols start fast.
"""

from harmony.lazy import attach

_EVALUATOR = ".evaluator"
_FUNCTIONAL = ".functional"
_PROTOCOL = ".protocol"

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "ALL_GROUP": _EVALUATOR,
        "FOREGROUND_BUCKETS": _EVALUATOR,
        "HarmonizationEvaluator": _EVALUATOR,
        "format_results_header": _EVALUATOR,
        "format_results_table": _EVALUATOR,
        "infer_iharmony4_subset": _EVALUATOR,
        "results_to_json": _EVALUATOR,
        "PSNR_CAP_DB": _FUNCTIONAL,
        "LpipsScorer": _FUNCTIONAL,
        "LpipsUnavailableError": _FUNCTIONAL,
        "per_image_metrics": _FUNCTIONAL,
        "psnr_db": _FUNCTIONAL,
        "structural_similarity": _FUNCTIONAL,
        "to_uint8_image": _FUNCTIONAL,
        "PROTOCOLS": _PROTOCOL,
        "EvaluationProtocol": _PROTOCOL,
        "get_protocol": _PROTOCOL,
        "resize_image": _PROTOCOL,
        "resize_mask": _PROTOCOL,
    },
)
