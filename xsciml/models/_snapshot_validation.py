"""Validation of latent models on held-out snapshots observed at a few fractions of
their points, with PCA-MAP on the same points as the reference.

Shared by :func:`xsciml.fit_latent` and :func:`xsciml.fit_autoencoder` (``network="pca"``):
the last contiguous block of snapshots is held out (neighbouring snapshots are
correlated, so a random pick would leak), each held-out snapshot is observed at random
10 % and 2 % of its points, reconstructed, and scored (nRMSE) on the others.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import xarray as xr

from .._utils import check_numeric
from ..eofs import RankSelection

__all__ = ["SnapshotValidation", "snapshot_matrix", "rank_cap", "MIN_SNAPSHOTS", "MAX_SNAPSHOTS",
           "validation_lines", "warn_if_worse"]

#: fewest snapshots for which the latent models hold some out for validation
MIN_SNAPSHOTS = 10
#: most held-out snapshots, and most points of each, scored in validation
MAX_SNAPSHOTS = 32
MAX_POINTS = 20000
#: fewest points with a value in every snapshot for validation
MIN_POINTS = 10


def rank_cap(n_train: int, n_points: int) -> int:
    """Largest rank the latent models choose: ``n_train - 1``, at most 256, and fewer on
    large grids (about 2**25 basis values)."""
    return max(1, min(n_train - 1, 256, max(8, 2**25 // max(n_points, 1))))


def snapshot_matrix(ds: xr.Dataset, names: list[str], sample_dim: Hashable, dims: list[Hashable]) -> np.ndarray:
    """``[S, C * P]``: the variables' values per snapshot, one block of points per variable."""
    n = int(ds.sizes[sample_dim])
    for v in names:
        check_numeric(ds[v], f"variable {v!r}")
    return np.concatenate([np.asarray(ds[v].transpose(sample_dim, *dims).values, dtype=np.float64).reshape(n, -1)
                           for v in names], axis=1)


class SnapshotValidation:
    """Held-out snapshots observed at a few fractions of their points, scored on the rest.

    The points are those with a value in every training and held-out snapshot (at most
    ``MAX_POINTS``, a seeded random subset), in units of each variable's
    training std; the same masks serve the model and the PCA-MAP reference.
    """

    def __init__(self, fit_part: xr.Dataset, held: xr.Dataset, names: list[str], sample_dim: Hashable,
                 seed: int = 0) -> None:
        from ..eofs import VALIDATION_FRACTIONS, validation_masks

        self.names, self.sample_dim, self.held = names, sample_dim, held
        self.dims = [d for d in fit_part[names[0]].dims if d != sample_dim]
        train = snapshot_matrix(fit_part, names, sample_dim, self.dims)
        truth = snapshot_matrix(held, names, sample_dim, self.dims)
        self.n_points_total = train.shape[1]
        P = self.n_points_total // len(names)
        cols = np.flatnonzero(np.isfinite(train).all(0) & np.isfinite(truth).all(0))
        if cols.size > MAX_POINTS:
            cols = np.sort(np.random.default_rng(seed).choice(cols, MAX_POINTS, replace=False))
        self.cols = cols
        self.n_points = int(cols.size)
        scale = np.array([np.nanstd(train[:, j * P:(j + 1) * P]) for j in range(len(names))])
        scale[~(scale > 0)] = 1.0
        self.col_scale = scale[cols // P]
        self.train = train[:, cols] / self.col_scale
        self.truth = truth[:, cols] / self.col_scale
        self.fractions = VALIDATION_FRACTIONS
        self.masks = [validation_masks(len(truth), cols.size, f, seed=seed + j)
                      for j, f in enumerate(self.fractions)] if self.usable else []

    @property
    def usable(self) -> bool:
        return self.n_points >= MIN_POINTS and len(self.train) >= 2

    def select(self, max_rank: int) -> RankSelection:
        from ..eofs import select_rank

        return select_rank(self.train, self.truth, max_rank=max_rank, fractions=self.fractions, masks=self.masks)

    def score(self, reconstruct: Callable[[xr.Dataset], xr.Dataset | xr.DataArray]) -> list[float]:
        """nRMSE of ``reconstruct(partial)`` on the unobserved validation points, one per
        fraction (``partial``: the held-out snapshots, NaN where not observed)."""
        out = []
        for m in self.masks:
            full = np.zeros((len(self.truth), self.n_points_total), bool)
            full[:, self.cols] = m
            partial = self.held.copy()
            P = self.n_points_total // len(self.names)
            for j, v in enumerate(self.names):
                da = self.held[v].transpose(self.sample_dim, *self.dims)
                keep = xr.DataArray(full[:, j * P:(j + 1) * P].reshape(da.shape), dims=da.dims)
                partial[v] = da.where(keep)
            rec = reconstruct(partial)
            rec_ds = rec if isinstance(rec, xr.Dataset) else rec.to_dataset(name=self.names[0])
            pred = snapshot_matrix(rec_ds, self.names, self.sample_dim, self.dims)[:, self.cols] / self.col_scale
            w = ~m
            err = pred[w] - self.truth[w]
            out.append(float(np.sqrt(np.mean(err**2)) / max(float(self.truth[w].std()), 1e-300)))
        return out


def validation_lines(val: dict | None, latent_dim: int) -> list[str]:
    """The validation table of a latent model's ``summary()``, one string per line."""
    val = val or {}
    if "nrmse" not in val:
        return [f"validation: {val.get('status', 'none')}"]
    head = "".join(f"{f:>8.0%}" for f in val["fractions"])
    lines = [f"validation ({val['n_snapshots']} held-out snapshots, {val['n_points']} points){head}"]
    rows = [(f"model (kept: {val['kept']})" if "kept" in val else "model", val["nrmse"])]
    if "nrmse_trained" in val:
        rows += [("  trained decoder", val["nrmse_trained"]), ("  PCA start", val["nrmse_pca_start"])]
    rows.append((f"reference: PCA-MAP (rank {val['pca_map_rank']})", val["nrmse_pca_map"]))
    width = max(len(r[0]) for r in rows) + 2
    lines += [f"  {name:<{width}s}" + "".join(f"{v:>8.4f}" for v in vals) for name, vals in rows]
    lines.append(f"latent_dim: {latent_dim}" + (" (chosen by validation)" if val.get("latent_dim_chosen") else ""))
    return lines


def reference_entries(selection: RankSelection) -> dict:
    """The PCA-MAP reference of ``info["validation"]``: its rank chosen by validation and
    its nRMSE per fraction, and the probabilistic-PCA score of every candidate rank."""
    rank, scores = selection.best_reference()
    return {"reference": "PCA-MAP", "nrmse_pca_map": scores, "pca_map_rank": rank,
            "rank_scores": {str(r): [round(x, 5) for x in v] for r, v in selection.scores.items()}}


#: relative margin by which PCA-MAP must beat a model before a warning (the reference's
#: rank is chosen on the same points, so it wins near-ties by chance)
WARN_MARGIN = 0.01


def warn_if_worse(val: dict, who: str, stacklevel: int = 3) -> None:
    """Warn, naming both numbers, at each fraction where PCA-MAP beat the model by more
    than :data:`WARN_MARGIN`."""
    import warnings

    r = val["pca_map_rank"]
    for frac, mine, ref in zip(val["fractions"], val["nrmse"], val["nrmse_pca_map"], strict=True):
        if mine > ref * (1 + WARN_MARGIN):
            warnings.warn(
                f"{who}: the model's validation nRMSE {mine:.4f} is above that of PCA-MAP at its "
                f"validated rank {r} ({ref:.4f}) on the same {val['n_snapshots']} held-out snapshots observed at "
                f"{frac:.0%} of their points; a PCA with that rank may serve these data better",
                UserWarning, stacklevel=stacklevel)
