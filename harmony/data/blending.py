"""DiffHarmony++'s blending ratio (Sec. 4.1): how many generated composites join the training data.

The inverse harmonization model (``harmony generate-composites``) writes K candidate composites for each
(real image, mask) pair. With N1 pairs and N2 composites in the original training data and a blending
ratio γ, each pair gets ⌈γ·N2/N1⌉ of its candidates, drawn at random without replacement.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn

from harmony.data.records import TripletRecord
from harmony.errors import HarmonyInputError

PairKey = tuple[str, str]
"""A (real image, mask) pair: its subset and its mask's stem (``a0001_1``)."""


def pair_key(record: TripletRecord) -> PairKey:
    """The (subset, mask stem) pair a composite was made from."""
    return record.subset, record.mask.stem


def check_blending_options(ratio: float, seed: int) -> None:
    """Refuse a blending ratio that is negative or not finite, and a negative seed.

    Raises:
        HarmonyInputError: Naming the option (``blending_ratio`` or ``blending_seed``).
    """
    if not (math.isfinite(ratio) and ratio >= 0):
        raise HarmonyInputError(None, f"blending_ratio must be a finite number >= 0, got {ratio}")
    if seed < 0:
        raise HarmonyInputError(None, f"blending_seed must be >= 0, got {seed}")


def candidates_per_pair(ratio: float, num_pairs: int, num_composites: int) -> int:
    """⌈γ·N2/N1⌉, the number of generated composites each pair gets."""
    # Rounded first so that float noise (2.2 · 25 / 1 = 55.00000000000001) does not add a whole sample.
    return math.ceil(round(ratio * num_composites / num_pairs, 9))


def blend_generated(
    original: list[TripletRecord],
    generated: list[TripletRecord],
    ratio: float = 1.0,
    seed: int = 0,
    source: str | Path | None = None,
) -> list[TripletRecord]:
    """The original training records plus ⌈γ·N2/N1⌉ generated candidates for each of their pairs.

    Pairs are keyed by :func:`pair_key`; generated candidates of pairs that are not in ``original`` (a
    photo held out for validation, another subset) are never picked. Each pair's draw uses a generator
    seeded by ``seed`` and the pair's key, over its candidates sorted by name, so a pair's selection
    depends neither on the order of ``generated`` nor on which other pairs are present. A pair with fewer
    candidates than it needs gets all of them, and one warning counts such pairs.

    Args:
        original: The original training records (N2 composites of N1 pairs).
        generated: The candidate composites, e.g. ``list_iharmony4(generated_root, "train")``.
        ratio: The blending ratio γ; 0 adds nothing.
        seed: Seed of the random selection.
        source: Where ``generated`` was read from, named in errors and warnings.

    Returns:
        ``original`` followed by the selected candidates (pair by pair, in the order the pairs first occur
        in ``original``; within a pair by name).

    Raises:
        HarmonyInputError: A negative ``ratio`` or ``seed``, or no candidate matching any original pair.
    """
    check_blending_options(ratio, seed)
    pairs = list(dict.fromkeys(pair_key(record) for record in original))
    if ratio == 0 or not pairs:
        return list(original)
    needed = candidates_per_pair(ratio, len(pairs), len(original))
    by_pair: dict[PairKey, dict[str, TripletRecord]] = defaultdict(dict)
    for record in generated:
        # Keyed by name, so a candidate listed twice is still drawn at most once.
        by_pair[pair_key(record)][record.name] = record
    if not any(key in by_pair for key in pairs):
        raise HarmonyInputError(
            source, "no generated composite matches a (subset, mask) pair of the original training data"
        )
    added: list[TripletRecord] = []
    short = missing = 0
    for key in pairs:
        pool = by_pair.get(key, {})
        candidates = [pool[name] for name in sorted(pool)]
        if len(candidates) < needed:
            short += 1
            missing += not candidates
            added += candidates
            continue
        rng = np.random.default_rng([seed, zlib.crc32("/".join(key).encode())])
        chosen = rng.choice(len(candidates), size=needed, replace=False)
        added += [candidates[index] for index in sorted(chosen)]
    if short:
        where = f" in {source}" if source is not None else ""
        rank_zero_warn(
            f"blending: {short} of {len(pairs)} (real image, mask) pairs have fewer than {needed} generated "
            f"composites{where} and get all they have ({missing} of them have none)"
        )
    return list(original) + added
