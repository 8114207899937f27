"""Object-like foreground masks cut from a photo's own segmentation.

iHarmony4's foregrounds are annotated objects: their outlines follow the edges of the photo, and what is
inside them differs from the background. :func:`segment_mask` imitates that without annotations: it
over-segments the photo with Felzenszwalb & Huttenlocher's graph-based method (scikit-image), then grows
a region from a random segment by repeatedly adding the adjacent segment closest in mean colour, until
the region covers the wanted share of the image. Holes are filled and only the largest connected part is
kept, so the mask is one solid object-like region.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb


def _adjacency(labels: np.ndarray, count: int) -> list[set[int]]:
    neighbours: list[set[int]] = [set() for _ in range(count)]
    for first, second in (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
    ):
        differ = first != second
        for a, b in zip(first[differ].tolist(), second[differ].tolist(), strict=True):
            neighbours[a].add(b)
            neighbours[b].add(a)
    return neighbours


def segment_mask(image: np.ndarray, target_ratio: float, rng: np.random.Generator) -> np.ndarray | None:
    """A connected, hole-free region of roughly ``target_ratio`` of the image that follows its edges.

    Args:
        image: ``H×W×3`` ``uint8`` RGB photo.
        target_ratio: Wanted foreground share of the image, in ``(0, 1)``.
        rng: Draws the segmentation scale and the seed segment.

    Returns:
        An ``H×W`` boolean mask, or ``None`` when no region within a factor 1.6 of the wanted size could be
        grown (the caller draws another shape).
    """
    height, width = image.shape[:2]
    area = height * width
    target = target_ratio * area
    labels = felzenszwalb(
        image, scale=float(rng.uniform(80, 400)), sigma=0.8, min_size=max(8, int(0.002 * area))
    )
    count = int(labels.max()) + 1
    sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
    colours = np.stack(
        [np.bincount(labels.ravel(), image[..., c].ravel(), minlength=count) for c in range(3)], axis=1
    ) / np.maximum(sizes[:, None], 1)
    neighbours = _adjacency(labels, count)
    # Seeds smaller than the target, so a region can grow to it.
    seeds = np.flatnonzero(sizes <= 1.2 * target)
    if seeds.size == 0:
        return None
    region = {int(rng.choice(seeds))}
    covered = sizes[next(iter(region))]
    frontier = set(neighbours[next(iter(region))])
    while covered < target * rng.uniform(0.85, 1.15) and frontier:
        mean = (colours[list(region)] * sizes[list(region), None]).sum(axis=0) / covered
        candidates = sorted(frontier)
        distance = np.linalg.norm(colours[candidates] - mean, axis=1)
        # Mostly the most similar neighbour, sometimes another, so regions are not all colour-flat.
        choice = candidates[int(np.argmin(distance + rng.exponential(15.0, len(candidates))))]
        region.add(choice)
        covered += sizes[choice]
        frontier |= neighbours[choice]
        frontier -= region
    mask = ndimage.binary_opening(np.isin(labels, list(region)), iterations=1)
    component, found = ndimage.label(mask)
    if found == 0:
        return None
    mask = ndimage.binary_fill_holes(component == 1 + int(np.argmax(np.bincount(component.ravel())[1:])))
    if not target / 1.6 <= mask.sum() <= target * 1.6:
        return None
    return mask
