"""Held-out points shaped like the data's own gaps.

A model that fills gaps is validated -- its predictor chosen, its σ calibrated -- on
points held out from the observations. Random points are the right choice when the
gaps themselves are scattered points: a held-out point is then as far from the nearest
remaining observation as a gap point is from the nearest observation. Under organised
gaps (clouds, satellite swaths, a missing sector) the gap points lie much farther from
the data than random held-out points, and a model validated on random points is
validated on an easier problem than the one it is used for.

:func:`gap_shaped_holdout` measures, on a gridded dataset, how far each gap point is
from the nearest observation of its own frame (Euclidean distance in grid cells,
:func:`scipy.ndimage.distance_transform_edt`), and compares that distribution with
the distances obtained by holding out (a) random observed points and (b) disks of
observed points whose radii are drawn from the gap distances times a factor (1, 1.5,
2, 3 or 4). The candidate whose held-out distances match the gaps' best (mean absolute
difference of their deciles, on ``log1p``) is used. It is the cross-validation idea
of "adding the clouds of other images" used for satellite gap filling (Beckers,
Barth & Alvera-Azcárate 2006, *Ocean Sci.* 2, 183-199), made to reproduce the
distance-to-data distribution rather than the masks themselves, so that a frame that
is already sparse is not made sparser than any real frame.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, cast

import numpy as np

#: Radius factors tried for disk-shaped holes (0: random points).
HOLE_SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0)
#: Frames (at most) used to compare the candidates.
_SCORE_FRAMES = 48
#: Smallest share of the grid's domain that must be missing for the gaps to be mimicked.
MIN_GAP_SHARE = 0.02
#: Fewest grid cells in a frame for the gaps to have a shape.
_MIN_CELLS = 16


def _deciles(d: np.ndarray) -> np.ndarray:
    return np.quantile(np.log1p(d), np.linspace(0.1, 0.9, 9))


def _carve(obs: np.ndarray, target: int, radii: np.ndarray, rng: np.random.Generator,
           frames: np.ndarray) -> np.ndarray:
    """Hold out disks of observed cells (radius drawn from ``radii``) in random frames
    until ``target`` cells are held out; returns the held-out mask."""
    held = np.zeros_like(obs)
    n_held = 0
    spatial = obs.shape[1:]
    obs_idx = {int(k): np.flatnonzero(obs[k]) for k in frames}
    frames = np.array([k for k in frames if obs_idx[int(k)].size], dtype=int)
    if frames.size == 0:
        return held
    for _ in range(50 * target + 100):  # a bound; reached only on degenerate input
        if n_held >= target:
            break
        k = int(frames[rng.integers(frames.size)])
        centre = tuple(int(c) for c in np.unravel_index(int(obs_idx[k][rng.integers(obs_idx[k].size)]), spatial))
        r = float(radii[rng.integers(radii.size)])
        if r < 1.0:
            box = tuple(slice(c, c + 1) for c in centre)
            inside = np.ones((1,) * len(spatial), bool)
        else:
            box = tuple(slice(max(0, c - int(r)), min(n, c + int(r) + 1))
                        for c, n in zip(centre, spatial, strict=True))
            grids = np.ogrid[box]
            # a sum of (at least one) arrays: an array
            inside = cast(np.ndarray, sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= r * r)
        new = obs[k][box] & inside & ~held[k][box]
        held[k][box] |= new
        n_held += int(new.sum())
    return held


def _held_distances(obs: np.ndarray, held: np.ndarray, frames: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    out = []
    for k in frames:
        rest = obs[k] & ~held[k]
        if held[k].any() and rest.any():
            out.append(distance_transform_edt(~rest)[held[k]])
    return np.concatenate(out) if out else np.zeros(0)


def gap_shaped_holdout(valid: np.ndarray, dims: Sequence[Hashable], shape: Sequence[int],
                       space_dims: Sequence[Hashable], fraction: float, seed: int = 0
                       ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Choose held-out points that are as far from the data as the gaps are.

    Parameters
    ----------
    valid
        Flat (C-order) indices of the observed points in an array of ``shape``.
    dims, shape
        Dimensions and sizes of that array.
    space_dims
        The dimensions that span space (the rest index frames: time, members...).
    fraction
        Share of the observed points to hold out.
    seed
        Seed of the choice.

    Returns
    -------
    held, info
        ``held``: boolean mask over ``valid`` (``True``: held out), or ``None`` when
        random points should be used (no grid, too few gaps, or random points match the
        gaps best). ``info`` says which pattern was chosen and the median distances
        (grid cells) of the gap points and of the held-out points to the nearest
        remaining observation.

    Examples
    --------
    >>> import numpy as np
    >>> t, y, x = np.ogrid[:6, :40, :40]
    >>> obs = ((x + y // 2 + 3 * t) % 10) < 2   # observed stripes, shifted every frame
    >>> held, info = gap_shaped_holdout(np.flatnonzero(obs), ("t", "y", "x"), obs.shape,
    ...                                 ("y", "x"), 0.1)
    >>> info["pattern"], bool(held.mean() > 0.09)
    ('gap-shaped', True)
    """
    from scipy.ndimage import distance_transform_edt

    dims = tuple(dims)
    space_axes = [dims.index(d) for d in dims if d in set(space_dims)]
    info: dict[str, Any] = {"pattern": "random"}
    if not space_axes:
        info["reason"] = "no spatial grid"
        return None, info
    if len(valid) < 20:
        info["reason"] = f"too few observations ({len(valid)}) to measure the gaps"
        return None, info
    frame_axes = [i for i in range(len(dims)) if i not in space_axes]
    full = np.zeros(int(np.prod(shape)), bool)
    full[np.asarray(valid, dtype=np.int64)] = True
    full = full.reshape(tuple(shape))
    order = frame_axes + space_axes
    obs = np.transpose(full, order)
    spatial = obs.shape[len(frame_axes):]
    obs = obs.reshape((-1,) + spatial)
    if int(np.prod(spatial)) < _MIN_CELLS:
        info["reason"] = "too few grid cells per frame"
        return None, info
    domain = cast(np.ndarray, obs.any(0))  # obs is [frames, *spatial]: an array
    gaps = domain[None] & ~obs
    share = float(gaps.sum() / max(1, domain.sum() * obs.shape[0]))
    info["gap_share"] = round(share, 4)
    if share < MIN_GAP_SHARE:
        info["reason"] = f"{share:.1%} of the domain is missing: no gaps to mimic"
        return None, info
    rng = np.random.default_rng(seed)
    with_obs = np.flatnonzero(obs.reshape(obs.shape[0], -1).any(1) & gaps.reshape(obs.shape[0], -1).any(1))
    if with_obs.size == 0:
        info["reason"] = "no frame has both observations and gaps"
        return None, info
    score_frames = rng.permutation(with_obs)[:_SCORE_FRAMES]
    gap_d = np.concatenate([distance_transform_edt(~obs[k])[gaps[k]] for k in score_frames])
    target_q = _deciles(gap_d)
    n_score = int(obs[score_frames].sum())
    want = max(1, int(round(fraction * n_score)))
    scores = {}
    for c in HOLE_SCALES:
        held = _carve(obs, want, np.maximum(c * gap_d, 0.0) if c > 0 else np.zeros(1),
                      np.random.default_rng(seed + 1), score_frames)
        hd = _held_distances(obs, held, score_frames)
        scores[c] = float(np.abs(_deciles(hd) - target_q).mean()) if hd.size else np.inf
    best = min(scores, key=lambda c: (scores[c], c))
    info["gap_distance_median"] = round(float(np.median(gap_d)), 3)
    info["scores"] = {str(c): round(s, 4) for c, s in scores.items()}
    if best == 0.0:
        info["reason"] = "random points are as far from the data as the gaps are"
        return None, info
    all_frames = np.arange(obs.shape[0])
    held = _carve(obs, max(1, int(round(fraction * len(valid)))), best * gap_d, rng, all_frames)
    hd = _held_distances(obs, held, rng.permutation(all_frames)[:_SCORE_FRAMES])
    info.update(pattern="gap-shaped", hole_scale=best,
                held_distance_median=round(float(np.median(hd)), 3) if hd.size else None)
    # back to the order of ``valid``: transpose the mask to the array's own dim order
    back = np.argsort(order)
    held_full = np.transpose(held.reshape(tuple(np.array(shape)[order])), back).reshape(-1)
    return held_full[np.asarray(valid, dtype=np.int64)], info
