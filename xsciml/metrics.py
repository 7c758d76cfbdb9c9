r"""Skill scores for fields, ensembles and downscaled samples, on DataArrays.

Point-wise scores reduce over dimensions and return DataArrays (0-d when everything is
reduced): :func:`rmse`, :func:`bias`, :func:`crps_ensemble`, :func:`sample_variability`,
:func:`constraint_rmse`. Ensemble forecasts (a ``member`` dim): :func:`spread_skill`,
:func:`rank_histogram`, and :func:`ensemble_scores` (all of them per lead).
Distribution scores compare per-pixel distributions or spectra
and return a float: :func:`melr`, :func:`kde_kld`, :func:`wasserstein1`.
:func:`energy_spectrum` gives the radial spectrum used by :func:`melr`, and
:func:`coarsen_blocks` the coarsening operator :math:`C'` of :func:`constraint_rmse`.

Ensembles: when the prediction has a ``sample`` dim (``sample_dim``) that the truth lacks,
MELR, KDE-KLD and W1 are computed **for each sample and then averaged over samples**,
never on the ensemble mean (which is smooth by construction and would look
under-dispersed). Inputs are aligned with ``join="exact"``: different coordinates are an
error, never a silent intersection.

The downscaling scores follow Wan et al. (NeurIPS 2023, "Debias Coarsely, Sample
Conditionally").

Examples
--------
>>> import numpy as np, xarray as xr
>>> truth = xr.DataArray(np.zeros((4, 8, 8)), dims=("time", "lat", "lon"))
>>> float(rmse(truth + 2.0, truth)), float(bias(truth - 1.0, truth))
(2.0, -1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import xarray as xr

__all__ = [
    "rmse",
    "bias",
    "coarsen_blocks",
    "constraint_rmse",
    "sample_variability",
    "energy_spectrum",
    "melr",
    "kde_kld",
    "wasserstein1",
    "crps_ensemble",
    "spread_skill",
    "rank_histogram",
    "ensemble_scores",
    "as_dict",
]

_DENSITY_FLOOR = 1e-12  # densities are floored here before taking logs in kde_kld


def as_dict(scores: xr.Dataset) -> dict[str, Any]:
    """The variables of a scores Dataset (from an estimator's ``score``) as plain Python values.

    0-d variables become floats (ints for integer dtypes), others nested lists; e.g. for
    JSON or a table.

    Examples
    --------
    >>> import xarray as xr
    >>> as_dict(xr.Dataset({"rmse": 0.5, "n_points": 10}))
    {'rmse': 0.5, 'n_points': 10}
    """
    if not isinstance(scores, xr.Dataset):
        raise TypeError(f"scores must be an xarray Dataset (the result of score), got {type(scores).__name__}")
    out: dict[str, Any] = {}
    for k, v in scores.data_vars.items():
        vals = np.asarray(v.values)
        out[str(k)] = vals.item() if vals.ndim == 0 else vals.tolist()
    return out


# =========================================================================== helpers
def _check_da(obj: Any, argname: str) -> xr.DataArray:
    if not isinstance(obj, xr.DataArray):
        raise TypeError(f"{argname} must be an xarray DataArray, got {type(obj).__name__}")
    if obj.dtype.kind not in "biuf":
        raise TypeError(f"{argname} must be numeric, got dtype {obj.dtype}")
    return obj


def _align(pred: xr.DataArray, truth: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    pred, truth = _check_da(pred, "pred"), _check_da(truth, "truth")
    try:
        return xr.align(pred, truth, join="exact")
    except ValueError as err:
        raise ValueError(
            f"pred and truth have different coordinates ({err}); select or interpolate them onto "
            "the same points first."
        ) from None


def _dims(dims: str | Sequence[Hashable] | None, default: Sequence[Hashable],
          objs: Sequence[xr.DataArray], argname: str = "dims") -> list[Hashable]:
    if dims is None:
        return list(default)
    dims = [dims] if isinstance(dims, str) else list(dims)
    for d in dims:
        if not any(d in o.dims for o in objs):
            raise KeyError(f"{argname} names {d!r}, which is not a dimension of the inputs "
                           f"({sorted({str(x) for o in objs for x in o.dims})}).")
    return dims


def _shared(a: xr.DataArray, b: xr.DataArray) -> list[Hashable]:
    return [d for d in a.dims if d in b.dims]


def _check_dims(da: xr.DataArray, dims: Sequence[Hashable], argname: str) -> None:
    missing = [d for d in dims if d not in da.dims]
    if missing:
        raise KeyError(f"{argname} has no dimension(s) {missing}; its dims are {da.dims}.")


def _sample_split(pred: xr.DataArray, truth: xr.DataArray, sample_dim: str) -> list[xr.DataArray]:
    """The members of ``pred`` along ``sample_dim`` (when ``truth`` lacks it), else ``[pred]``."""
    if sample_dim in pred.dims and sample_dim not in truth.dims:
        return [pred.isel({sample_dim: i}, drop=True) for i in range(pred.sizes[sample_dim])]
    return [pred]


# =========================================================================== point-wise
def rmse(pred: xr.DataArray, truth: xr.DataArray,
         dims: str | Sequence[Hashable] | None = None) -> xr.DataArray:
    r"""Root-mean-square error :math:`\sqrt{\overline{(p - t)^2}}`.

    Parameters
    ----------
    pred : DataArray
        Prediction, broadcast against ``truth`` (e.g. with an extra ``sample`` dim).
    truth : DataArray
        Truth.
    dims : str or sequence, optional
        Dims averaged over; default all dims the two share (an extra ``sample`` dim of
        ``pred`` is kept). NaNs are skipped.

    Returns
    -------
    DataArray

    Examples
    --------
    >>> import xarray as xr
    >>> float(rmse(xr.DataArray([1.0, 3.0], dims="x"), xr.DataArray([0.0, 0.0], dims="x")))
    2.23606797749979
    """
    pred, truth = _align(pred, truth)
    dims = _dims(dims, _shared(pred, truth), (pred, truth))
    # a ufunc on a DataArray is a DataArray (__array_ufunc__); numpy's stubs say ndarray
    return cast(xr.DataArray, np.sqrt(((pred - truth) ** 2).mean(dims))).rename("rmse")


def bias(pred: xr.DataArray, truth: xr.DataArray,
         dims: str | Sequence[Hashable] | None = None) -> xr.DataArray:
    r"""Mean error :math:`\overline{p - t}` (positive: ``pred`` too large).

    Parameters and defaults as in :func:`rmse`.

    Examples
    --------
    >>> import xarray as xr
    >>> float(bias(xr.DataArray([1.0, 3.0], dims="x"), xr.DataArray([0.0, 0.0], dims="x")))
    2.0
    """
    pred, truth = _align(pred, truth)
    dims = _dims(dims, _shared(pred, truth), (pred, truth))
    return (pred - truth).mean(dims).rename("bias")


def crps_ensemble(samples: xr.DataArray, truth: xr.DataArray, sample_dim: str = "sample",
                  dims: str | Sequence[Hashable] | None = None) -> xr.DataArray:
    r"""Continuous ranked probability score of an ensemble, averaged.

    .. math::

        \mathrm{CRPS} = \frac1M\sum_i |x_i - y| - \frac1{2M^2}\sum_{i,j}|x_i - x_j|

    (the plain, not the "fair", estimator; a one-member ensemble gives the absolute
    error). The pair sum uses the sorted members,
    :math:`\sum_{i,j}|x_i - x_j| = 2\sum_k (2k - M - 1)\,x_{(k)}`.

    Parameters
    ----------
    samples : DataArray
        Ensemble with a ``sample_dim``.
    truth : DataArray
        Without ``sample_dim``.
    sample_dim : str
    dims : optional
        Dims averaged over afterwards (default all; NaNs skipped).

    Returns
    -------
    DataArray (0-d by default).

    Examples
    --------
    >>> import xarray as xr
    >>> ens = xr.DataArray([[0.0], [2.0]], dims=("sample", "x"))
    >>> float(crps_ensemble(ens, xr.DataArray([1.0], dims="x")))
    0.5
    """
    samples, truth = _align(samples, truth)
    _check_dims(samples, [sample_dim], "samples")
    if sample_dim in truth.dims:
        raise ValueError(f"truth must not have the ensemble dimension {sample_dim!r}")
    m = samples.sizes[sample_dim]
    if m < 1:
        raise ValueError("the ensemble is empty")
    skill = abs(samples - truth).mean(sample_dim, skipna=False)
    srt = xr.apply_ufunc(np.sort, samples, input_core_dims=[[sample_dim]],
                         output_core_dims=[[sample_dim]], kwargs={"axis": -1}, dask="parallelized",
                         output_dtypes=[np.float64])
    k = xr.DataArray(2.0 * np.arange(1, m + 1) - m - 1, dims=(sample_dim,))
    spread = (srt * k).sum(sample_dim, skipna=False) / m**2  # = (1/2M^2) sum_ij |x_i - x_j|
    crps = skill - spread
    dims = _dims(dims, list(crps.dims), (crps,))
    return crps.mean(dims).rename("crps")


def sample_variability(samples: xr.DataArray, sample_dim: str = "sample") -> xr.DataArray:
    r"""Mean over pixels (and times) of the standard deviation across samples.

    .. math:: \overline{\mathrm{std}_s(x_s)}

    with the population standard deviation (``ddof=0``); NaN pixels are skipped.

    Examples
    --------
    >>> import xarray as xr
    >>> float(sample_variability(xr.DataArray([[0.0, 1.0], [2.0, 3.0]], dims=("sample", "x"))))
    1.0
    """
    samples = _check_da(samples, "samples")
    _check_dims(samples, [sample_dim], "samples")
    if samples.sizes[sample_dim] < 2:
        raise ValueError(f"sample variability needs at least 2 samples along {sample_dim!r}")
    return samples.std(sample_dim, skipna=False).mean().rename("sample_variability")


# =========================================================================== ensembles
def _ensemble_inputs(ensemble: Any, truth: Any, member_dim: str, dims: str | Sequence[Hashable] | None
                     ) -> tuple[xr.DataArray, xr.DataArray, list[Hashable]]:
    """Checked, aligned ensemble and truth, and the dims to reduce (default all but
    ``member_dim`` and ``lead``); at least 2 members."""
    ensemble, truth = _check_da(ensemble, "ensemble"), _check_da(truth, "truth")
    _check_dims(ensemble, [member_dim], "ensemble")
    if member_dim in truth.dims:
        raise ValueError(f"truth must not have the ensemble dimension {member_dim!r}")
    if ensemble.sizes[member_dim] < 2:
        raise ValueError(f"an ensemble score needs at least 2 members along {member_dim!r}, got "
                         f"{ensemble.sizes[member_dim]}")
    try:
        ensemble, truth = xr.align(ensemble, truth, join="exact")
    except ValueError as err:
        raise ValueError(f"ensemble and truth have different coordinates ({err}); select or interpolate "
                         "them onto the same points first.") from None
    others = [d for d in ensemble.dims if d != member_dim]
    others += [d for d in truth.dims if d not in others]
    red = _dims(dims, [d for d in others if d != "lead"], (ensemble, truth))
    if member_dim in red:
        raise ValueError(f"dims must not hold the ensemble dimension {member_dim!r} (it is always reduced)")
    return ensemble, truth, red


def _valid_cases(ensemble: xr.DataArray, truth: xr.DataArray, member_dim: str) -> xr.DataArray:
    """Where the truth and every member are finite (the cases the ensemble scores use)."""
    return truth.notnull() & ensemble.notnull().all(member_dim)


def _spread_and_rmse(ensemble: xr.DataArray, truth: xr.DataArray, member_dim: str,
                     red: Sequence[Hashable]) -> tuple[xr.DataArray, xr.DataArray]:
    """The corrected spread :math:`\\sqrt{(N+1)/N\\,\\overline{s^2}}` and the RMSE of the mean."""
    n = ensemble.sizes[member_dim]
    valid = _valid_cases(ensemble, truth, member_dim)
    var = ensemble.var(member_dim, ddof=1).where(valid)
    err2 = ((ensemble.mean(member_dim) - truth) ** 2).where(valid)
    spread = cast(xr.DataArray, np.sqrt((n + 1) / n * var.mean(red)))
    skill = cast(xr.DataArray, np.sqrt(err2.mean(red)))
    return spread.rename("spread"), skill.rename("rmse")


def spread_skill(ensemble: xr.DataArray, truth: xr.DataArray, member_dim: str = "member",
                 dims: str | Sequence[Hashable] | None = None) -> xr.DataArray:
    r"""Spread–skill ratio: the ensemble's corrected spread over the RMSE of its mean.

    .. math::

        \mathrm{SSR} = \frac{\sqrt{\frac{N+1}{N}\,\overline{s^2}}}
                            {\sqrt{\overline{(\bar x - y)^2}}}, \qquad
        s^2 = \frac{1}{N-1}\sum_{i=1}^N (x_i - \bar x)^2,

    with the means over the cases (the points of ``dims``). For a reliable ensemble of
    ``N`` members (truth and members exchangeable draws of the same distribution) the
    expected squared error of the ensemble mean is :math:`\frac{N+1}{N}` times the
    expected unbiased ensemble variance, so the ratio is 1 (Fortin et al. 2014, "Why
    should ensemble spread match the RMSE of the ensemble mean?", J. Hydrometeor.
    15, 1708–1713); below 1 the ensemble is under-dispersed (over-confident), above 1
    over-dispersed.

    Parameters
    ----------
    ensemble : DataArray
        Ensemble with ``member_dim`` (at least 2 members).
    truth : DataArray
        Without ``member_dim``, on the same coordinates.
    member_dim : str
        The ensemble dimension.
    dims : str or sequence, optional
        Dims of the cases averaged over; default all but ``member_dim`` and ``lead``
        (one ratio per lead when there is one). Cases where the truth or any member is
        NaN are skipped.

    Returns
    -------
    DataArray (0-d, or along the dims not reduced), named ``spread_skill``.

    Examples
    --------
    Truth and members drawn from the same distribution: a ratio close to 1.

    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(10, 20_000))
    >>> ens = xr.DataArray(x[:9], dims=("member", "case"))
    >>> truth = xr.DataArray(x[9], dims="case")
    >>> round(float(spread_skill(ens, truth)), 1)
    1.0
    >>> round(float(spread_skill(0.5 * ens, truth)), 1)  # half the spread: under-dispersed
    0.5
    """
    ensemble, truth, red = _ensemble_inputs(ensemble, truth, member_dim, dims)
    spread, skill = _spread_and_rmse(ensemble, truth, member_dim, red)
    return (spread / skill).rename("spread_skill")


def _ranks(ens: np.ndarray, truth: np.ndarray, seed: int | None) -> np.ndarray:
    """The rank ``0..N`` of the truth among the members (last axis of ``ens``), ties broken
    at random; -1 where the truth or a member is NaN."""
    rng = np.random.default_rng(seed)
    below = (ens < truth[..., None]).sum(-1)
    ties = (ens == truth[..., None]).sum(-1)
    rank = below + rng.integers(0, ties + 1)  # uniform among the tied positions
    valid = np.isfinite(truth) & np.isfinite(ens).all(-1)
    return np.where(valid, rank, -1)


def rank_histogram(ensemble: xr.DataArray, truth: xr.DataArray, member_dim: str = "member",
                   dims: str | Sequence[Hashable] | None = None, seed: int | None = 0) -> xr.DataArray:
    r"""Rank histogram (Talagrand diagram): counts of the rank of the truth among the members.

    For every case the rank is the number of members below the truth, ``0 .. N``
    (``N + 1`` bins); ties between the truth and members are broken at random (a rank
    drawn uniformly among the tied positions, with ``seed``). A reliable ensemble gives
    a flat histogram (every bin :math:`1/(N+1)` of the cases); a U shape means an
    under-dispersed ensemble (the truth often outside it), a dome an over-dispersed
    one, a slope a biased one.

    Parameters
    ----------
    ensemble : DataArray
        Ensemble with ``member_dim`` (at least 2 members).
    truth : DataArray
        Without ``member_dim``, on the same coordinates.
    member_dim : str
        The ensemble dimension.
    dims : str or sequence, optional
        Dims of the cases counted together; default all but ``member_dim`` and ``lead``
        (one histogram per lead when there is one). Cases where the truth or any member
        is NaN are skipped.
    seed : int or None
        Seed of the random tie-breaking.

    Returns
    -------
    DataArray of integer counts along a new last dim ``rank`` (coordinate ``0 .. N``),
    after the dims not reduced; named ``rank_histogram``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray([[0.0, 0.0, 5.0], [1.0, 1.0, 5.0], [2.0, 2.0, 5.0]], dims=("member", "case"))
    >>> truth = xr.DataArray([-1.0, 1.5, 9.0], dims="case")
    >>> rank_histogram(ens, truth).values.tolist()
    [1, 0, 1, 1]
    """
    ensemble, truth, red = _ensemble_inputs(ensemble, truth, member_dim, dims)
    n = ensemble.sizes[member_dim]
    ensemble, truth = xr.broadcast(ensemble, truth, exclude=[member_dim])
    keep = [d for d in truth.dims if d not in red]
    t = truth.transpose(*keep, *red)
    e = ensemble.transpose(*keep, *red, member_dim)
    lead_shape = [t.sizes[d] for d in keep]
    tv = np.asarray(t.values, dtype=np.float64).reshape(*lead_shape, -1)
    ev = np.asarray(e.values, dtype=np.float64).reshape(*lead_shape, tv.shape[-1], n)
    rank = _ranks(ev, tv, seed)  # [..., cases]
    counts = (rank[..., None] == np.arange(n + 1)).sum(-2)
    coords = {k: c.variable for k, c in t.coords.items() if set(c.dims) <= set(keep)}
    return xr.DataArray(counts, dims=(*keep, "rank"), coords={**coords, "rank": np.arange(n + 1)},
                        name="rank_histogram", attrs={"long_name": "rank of the truth among the members"})


def ensemble_scores(ensemble: xr.DataArray, truth: xr.DataArray, member_dim: str = "member",
                    dims: str | Sequence[Hashable] | None = None, *,
                    deterministic: xr.DataArray | None = None, seed: int | None = 0) -> xr.Dataset:
    r"""The usual scores of an ensemble forecast against the truth, per lead.

    Generic: any forecast with an ensemble dim (``member_dim``) and, usually, a ``lead``
    dim, e.g. ``model.forecast(..., members=N)`` of the latent-dynamics forecasters.

    Parameters
    ----------
    ensemble : DataArray
        Ensemble with ``member_dim`` (at least 2 members).
    truth : DataArray
        Without ``member_dim``, on the same coordinates.
    member_dim : str
        The ensemble dimension.
    dims : str or sequence, optional
        Dims of the cases averaged over; default all but ``member_dim`` and ``lead``.
        Cases where the truth or any member is NaN are skipped by every score.
    deterministic : DataArray, optional
        A deterministic forecast on the same coordinates (without ``member_dim``), scored
        on the same cases for comparison.
    seed : int or None
        Seed of the rank histogram's tie-breaking.

    Returns
    -------
    xr.Dataset
        Over the dims not reduced (``lead``): ``rmse`` and ``mae`` of the ensemble mean;
        ``crps`` (:func:`crps_ensemble`); ``spread``
        (:math:`\sqrt{\frac{N+1}{N}\overline{s^2}}`) and ``spread_skill``
        (:func:`spread_skill`, spread / ``rmse``); ``rank_histogram`` (``..., rank``,
        :func:`rank_histogram`); with ``deterministic``, ``rmse_deterministic`` and
        ``mae_deterministic``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(9, 3, 500))
    >>> ens = xr.DataArray(x[:8], dims=("member", "lead", "case"), coords={"lead": [1, 2, 3]})
    >>> truth = xr.DataArray(x[8], dims=("lead", "case"), coords={"lead": [1, 2, 3]})
    >>> scores = ensemble_scores(ens, truth)
    >>> sorted(scores.data_vars)
    ['crps', 'mae', 'rank_histogram', 'rmse', 'spread', 'spread_skill']
    >>> scores["rank_histogram"].dims, int(scores["rank_histogram"].sum())
    (('lead', 'rank'), 1500)
    """
    ensemble, truth, red = _ensemble_inputs(ensemble, truth, member_dim, dims)
    valid = _valid_cases(ensemble, truth, member_dim)
    mean = ensemble.mean(member_dim)
    spread, skill = _spread_and_rmse(ensemble, truth, member_dim, red)
    crps = crps_ensemble(ensemble, truth, sample_dim=member_dim, dims=None if not red else red)
    out = xr.Dataset({
        "rmse": skill.assign_attrs(long_name="RMSE of the ensemble mean"),
        "mae": abs(mean - truth).where(valid).mean(red).assign_attrs(long_name="MAE of the ensemble mean"),
        "crps": crps.where(valid.any(red)).assign_attrs(long_name="CRPS of the ensemble"),
        "spread": spread.assign_attrs(long_name="ensemble spread, sqrt((N+1)/N mean variance)"),
        "spread_skill": (spread / skill).assign_attrs(long_name="spread / RMSE of the ensemble mean"),
    })
    out["rank_histogram"] = rank_histogram(ensemble, truth, member_dim, red, seed=seed)
    if deterministic is not None:
        det = _check_da(deterministic, "deterministic")
        if member_dim in det.dims:
            raise ValueError(f"deterministic must not have the ensemble dimension {member_dim!r}")
        try:
            det, _ = xr.align(det, truth, join="exact")
        except ValueError as exc:
            raise ValueError(f"deterministic and truth have different coordinates ({exc})") from None
        diff = (det - truth).where(valid)
        out["rmse_deterministic"] = cast(xr.DataArray, np.sqrt((diff**2).mean(red))).assign_attrs(
            long_name="RMSE of the deterministic forecast")
        out["mae_deterministic"] = abs(diff).mean(red).assign_attrs(long_name="MAE of the deterministic forecast")
    out.attrs = {"members": int(ensemble.sizes[member_dim]), "member_dim": str(member_dim)}
    return out


# =========================================================================== coarsening
def _factors(factor: int | Mapping[Hashable, int], dims: Sequence[Hashable]) -> dict[Hashable, int]:
    if isinstance(factor, Mapping):
        out = {d: factor.get(d, 1) for d in dims}
    else:
        out = dict.fromkeys(dims, factor)
    for d, f in out.items():
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1:
            raise ValueError(f"factor for {d!r} must be a positive integer, got {f!r}")
    return {d: int(f) for d, f in out.items()}


def coarsen_blocks(fine: xr.DataArray, factor: int | Mapping[Hashable, int], how: str = "mean",
                   dims: Sequence[Hashable] = ("lat", "lon")) -> xr.DataArray:
    r"""The coarsening operator :math:`C'`: block means or block subsampling.

    ``how="mean"`` averages each ``factor x factor`` block (a block with a NaN is NaN);
    ``how="subsample"`` keeps the first pixel of each block (``x[::factor, ::factor]``),
    with its coordinates — the same operator as :func:`xsciml.downscale.pipeline.coarsen`.
    Block-mean coordinates are the block means of the fine coordinates.

    Parameters
    ----------
    fine : DataArray
    factor : int or mapping dim -> int
        Sizes along ``dims`` must be multiples of it.
    how : {"mean", "subsample"}
    dims : sequence of str

    Returns
    -------
    DataArray on the coarse grid.

    Raises
    ------
    ValueError
        If a size is not a multiple of the factor, or ``how`` is unknown.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> f = xr.DataArray(np.arange(16.0).reshape(4, 4), dims=("lat", "lon"))
    >>> coarsen_blocks(f, 2).values
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    >>> coarsen_blocks(f, 2, how="subsample").values
    array([[ 0.,  2.],
           [ 8., 10.]])
    """
    fine = _check_da(fine, "fine")
    dims = list(dims)
    _check_dims(fine, dims, "fine")
    fac = _factors(factor, dims)
    for d, f in fac.items():
        if fine.sizes[d] % f:
            raise ValueError(
                f"fine has {fine.sizes[d]} points along {d!r}, not a multiple of the factor {f}; "
                "crop the fine grid to a multiple of the factor first."
            )
    if how == "mean":
        return fine.coarsen(fac, boundary="exact", coord_func="mean").reduce(np.mean)
    if how == "subsample":
        return fine.isel({d: slice(0, None, f) for d, f in fac.items()})
    raise ValueError(f"how must be 'mean' or 'subsample', got {how!r}")


def constraint_rmse(fine: xr.DataArray, coarse: xr.DataArray, factor: int | Mapping[Hashable, int],
                    *, coarsen: str = "mean", dims: Sequence[Hashable] = ("lat", "lon"),
                    keep_dims: Sequence[Hashable] = ()) -> xr.DataArray:
    r"""Relative constraint error :math:`\lVert C'x - y\rVert_2 / \lVert y\rVert_2`.

    How far fine fields (e.g. downscaled samples) are from reproducing the coarse
    field they were conditioned on. Coarse and coarsened fine fields are compared by
    position; their coordinates must agree within half a coarse cell.

    Parameters
    ----------
    fine : DataArray
        Fine fields, e.g. ``(sample, time, lat, lon)``.
    coarse : DataArray
        The coarse fields ``y`` (broadcast against ``fine``, e.g. without ``sample``).
    factor
        :math:`C'` = :func:`coarsen_blocks` ``(fine, factor, how=coarsen, dims=dims)``.
    coarsen
        :math:`C'` = :func:`coarsen_blocks` ``(fine, factor, how=coarsen, dims=dims)``.
    dims
        :math:`C'` = :func:`coarsen_blocks` ``(fine, factor, how=coarsen, dims=dims)``.
    keep_dims : sequence of str
        Dims not summed over (e.g. ``("sample",)`` for one score per sample).

    Returns
    -------
    DataArray (0-d by default).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> f = xr.DataArray(np.ones((4, 4)), dims=("lat", "lon"))
    >>> float(constraint_rmse(f, coarsen_blocks(f, 2), 2))
    0.0
    """
    coarse = _check_da(coarse, "coarse")
    cf = coarsen_blocks(fine, factor, how=coarsen, dims=dims)
    for d in dims:
        _check_dims(coarse, [d], "coarse")
        if coarse.sizes[d] != cf.sizes[d]:
            raise ValueError(
                f"coarse has {coarse.sizes[d]} points along {d!r}, the coarsened fine field "
                f"{cf.sizes[d]} (factor {_factors(factor, dims)[d]}); use the matching factor."
            )
        if d in coarse.coords and d in cf.coords:
            a, b = np.asarray(cf[d].values, float), np.asarray(coarse[d].values, float)
            step = np.abs(np.diff(b)).min() if b.size > 1 else np.inf
            if not np.all(np.abs(a - b) <= 0.5 * step + 1e-9):
                raise ValueError(
                    f"coordinate {d!r} of coarse does not match the coarsened fine grid (order or "
                    "position differ, e.g. ascending vs descending); align them first."
                )
    cf = cf.drop_vars([d for d in dims if d in cf.coords])
    coarse = coarse.drop_vars([d for d in dims if d in coarse.coords])
    try:
        cf, coarse = xr.align(cf, coarse, join="exact")
    except ValueError as err:
        raise ValueError(f"fine and coarse have different coordinates ({err})") from None
    diff = cf - coarse
    red = [d for d in diff.dims if d not in keep_dims]
    num = (diff**2).sum(red, skipna=True)
    den = (coarse.broadcast_like(diff) ** 2).where(diff.notnull()).sum(red, skipna=True)
    # a ufunc on a DataArray is a DataArray (__array_ufunc__); numpy's stubs say ndarray
    return cast(xr.DataArray, np.sqrt(num / den)).rename("constraint_rmse")


# =========================================================================== spectra
def _radial_index(ny: int, nx: int) -> tuple[np.ndarray, int]:
    """Shell index of each 2-D Fourier mode and the number of complete shells."""
    n = max(ny, nx)
    ky = np.fft.fftfreq(ny) * n  # cycles per n grid steps
    kx = np.fft.fftfreq(nx) * n
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    kmax = n // 2  # both Nyquists are N/2 in these units: the largest complete circle
    return np.rint(k).astype(np.int64), kmax


def _spectrum_array(a: np.ndarray, shell: np.ndarray, kmax: int) -> np.ndarray:
    """``a [..., ny, nx]`` -> shell energies ``[..., kmax]`` (shells 1..kmax)."""
    ny, nx = a.shape[-2:]
    F = np.fft.fft2(a, axes=(-2, -1)) / (ny * nx)
    e = (np.abs(F) ** 2).reshape(a.shape[:-2] + (ny * nx,))
    onehot = shell.reshape(-1, 1) == np.arange(1, kmax + 1)[None, :]  # [modes, shells]
    return e @ onehot.astype(np.float64)


def _spatial_dims(dims: Sequence[Hashable] | None, field: xr.DataArray) -> list[Hashable]:
    """``dims`` as given, else the field's latitude/longitude dims (as ``to_tensors`` finds them)."""
    if dims is not None:
        return list(dims)
    from .coords import horizontal_dims

    return list(horizontal_dims(field))


def energy_spectrum(field: xr.DataArray, dims: Sequence[Hashable] | None = None,
                    keep_dims: Sequence[Hashable] = ()) -> xr.DataArray:
    r"""Radial (isotropic) energy spectrum, averaged over the other dims.

    With :math:`\hat f = \mathrm{FFT}_2(f) / (N_y N_x)` (so that
    :math:`\sum |\hat f|^2` is the mean square of the field, Parseval), each 2-D
    wavenumber :math:`(k_y, k_x)`, in cycles per :math:`N = \max(N_y, N_x)` grid steps,
    goes to the shell :math:`k = \mathrm{round}(\sqrt{k_y^2 + k_x^2})` and

    .. math:: E(k) = \sum_{\mathrm{round}(|\mathbf k|) = k} |\hat f(\mathbf k)|^2,
              \qquad k = 1, \dots, \lfloor N / 2 \rfloor

    (shells up to the Nyquist circle; the corners beyond it and the mean,
    :math:`k = 0`, are left out). On a non-square grid the shorter dim resolves
    wavenumbers in steps of :math:`N / N_y`, so some shells get modes from one direction
    only.
    A pure mode :math:`A\cos(2\pi k_0 x / N)` has all its energy
    :math:`A^2/2` in shell :math:`k_0`. The field is treated as periodic (no window);
    grid cells are treated as square.

    Parameters
    ----------
    field : DataArray
        Must be finite (no NaN) over ``dims``.
    dims : (str, str), optional
        The two spatial dims ``(y, x)``. Default: the dims of the latitude and longitude
        coordinates, found by CF ``standard_name``/``units`` or by name (``lat``/``lon``,
        ``latitude``/``longitude``...), else those with CF ``axis`` Y/X, else ``y``/``x``
        (:func:`xsciml.coords.horizontal_dims`).
    keep_dims : sequence of str
        Dims not averaged over (e.g. ``("sample",)``).

    Returns
    -------
    DataArray with dim ``wavenumber`` (plus ``keep_dims``).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = np.arange(16)
    >>> f = xr.DataArray(np.cos(2 * np.pi * 3 * x / 16)[None, :] * np.ones((16, 1)),
    ...                  dims=("lat", "lon"))
    >>> e = energy_spectrum(f)
    >>> int(e.idxmax()), round(float(e.sel(wavenumber=3)), 6)
    (3, 0.5)
    """
    field = _check_da(field, "field")
    dims = _spatial_dims(dims, field)
    if len(dims) != 2:
        raise ValueError(f"dims must name the two spatial dims (y, x), got {dims}")
    _check_dims(field, dims, "field")
    keep = [d for d in keep_dims if d in field.dims]
    ny, nx = field.sizes[dims[0]], field.sizes[dims[1]]
    if min(ny, nx) < 2:
        raise ValueError(f"the spatial grid {ny} x {nx} is too small for a spectrum")
    shell, kmax = _radial_index(ny, nx)
    if kmax < 1:
        raise ValueError(f"the spatial grid {ny} x {nx} has no complete wavenumber shell")
    arr = field.transpose(*keep, ..., *dims)
    vals = np.asarray(arr.values, dtype=np.float64)
    if not np.isfinite(vals).all():
        raise ValueError("field has NaN or inf values; the FFT spectrum needs complete fields "
                         "(crop or fill masked areas first).")
    lead = vals.shape[: len(keep)]
    vals = vals.reshape(lead + (-1, ny, nx))
    spec = _spectrum_array(vals, shell, kmax).mean(axis=len(keep))
    n = max(ny, nx)
    coords: dict[Hashable, xr.DataArray | tuple[str, np.ndarray, dict[str, str]]] = {
        d: arr[d] for d in keep if d in arr.coords}
    coords["wavenumber"] = ("wavenumber", np.arange(1, kmax + 1),
                            {"long_name": f"radial wavenumber (cycles per {n} grid steps)"})
    return xr.DataArray(spec, dims=(*keep, "wavenumber"), coords=coords, name="energy",
                        attrs={"long_name": "radial energy spectrum"})


def melr(pred: xr.DataArray, truth: xr.DataArray, dims: Sequence[Hashable] | None = None,
         weighted: bool = False, sample_dim: str = "sample") -> float:
    r"""Mean energy log ratio of the radial spectra (Wan et al. 2023).

    .. math::

        \mathrm{MELR} = \sum_k w_k \left|\log\frac{E_{pred}(k)}{E_{truth}(k)}\right|,
        \qquad w_k = \frac1{K}\ \text{(unweighted)}\quad\text{or}\quad
        w_k = \frac{E_{truth}(k)}{\sum_{k'} E_{truth}(k')}\ \text{(weighted)},

    with :math:`E` from :func:`energy_spectrum` averaged over all non-spatial dims.
    With a ``sample_dim`` in ``pred`` (and not in ``truth``) the score is computed for
    each sample and averaged: never on the ensemble mean.

    Parameters
    ----------
    pred, truth : DataArray
        Predicted (possibly with ``sample_dim``) and true fields, complete over ``dims``.
    dims : (str, str), optional
        The two spatial dims; default: found on ``truth`` as in :func:`energy_spectrum`
        (latitude/longitude by CF attributes or name, e.g. ERA5's
        ``latitude``/``longitude``).
    weighted : bool
        Weight the shells by the truth's energy.
    sample_dim : str
        Ensemble dim of ``pred``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> f = xr.DataArray(np.random.default_rng(0).normal(size=(8, 8)), dims=("lat", "lon"))
    >>> melr(f, f), bool(np.isclose(melr(2 * f, f), np.log(4)))
    (0.0, True)
    >>> era5 = f.rename(lat="latitude", lon="longitude")
    >>> bool(np.isclose(melr(2 * era5, era5), np.log(4)))
    True
    """
    pred, truth = _check_da(pred, "pred"), _check_da(truth, "truth")
    dims = _spatial_dims(dims, truth)
    for d in dims:
        if pred.sizes.get(d) != truth.sizes.get(d):
            raise ValueError(f"pred and truth differ along {d!r}: {pred.sizes.get(d)} vs {truth.sizes.get(d)}")
    et = energy_spectrum(truth, dims)
    if not (et > 0).all():
        raise ValueError("the truth spectrum has empty shells (zero energy); MELR is undefined")
    w = et / et.sum() if weighted else xr.full_like(et, 1.0 / et.size)
    scores = []
    for member in _sample_split(pred, truth, sample_dim):
        ep = energy_spectrum(member, dims)
        with np.errstate(divide="ignore"):
            scores.append(float((w * abs(np.log(ep / et))).sum()))
    return float(np.mean(scores))


# =========================================================================== distributions
def _pixel_pairs(pred: xr.DataArray, truth: xr.DataArray, dim: str, sample_dim: str
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per member: (pred [pixels, n], truth [pixels, m]) along ``dim``, other dims stacked."""
    _check_dims(pred, [dim], "pred")
    _check_dims(truth, [dim], "truth")
    out = []
    space = [d for d in truth.dims if d != dim]
    for member in _sample_split(pred, truth, sample_dim):
        if sorted(map(str, member.dims)) != sorted(map(str, truth.dims)):
            raise ValueError(
                f"pred dims {pred.dims} and truth dims {truth.dims} differ beyond {sample_dim!r}"
            )
        try:
            m, t = xr.align(member.drop_vars(dim, errors="ignore"),
                            truth.drop_vars(dim, errors="ignore"), join="exact")
        except ValueError as err:
            raise ValueError(f"pred and truth are on different grids ({err})") from None
        mv = np.asarray(m.transpose(*space, dim).values, dtype=np.float64)
        tv = np.asarray(t.transpose(*space, dim).values, dtype=np.float64)
        out.append((mv.reshape(-1, mv.shape[-1]), tv.reshape(-1, tv.shape[-1])))
    return out


def kde_kld(pred: xr.DataArray, truth: xr.DataArray, dim: str = "time", n_points: int = 256,
            sample_dim: str = "sample") -> float:
    r"""Mean over pixels of :math:`\mathrm{KL}(p_{truth} \,\|\, p_{pred})` of KDE densities.

    For each pixel the values along ``dim`` of ``truth`` and ``pred`` get Gaussian
    kernel density estimates :math:`p, q` (:class:`scipy.stats.gaussian_kde`, Scott's
    bandwidth) evaluated on ``n_points`` equally spaced points :math:`z_i` spanning both
    samples, and

    .. math:: \mathrm{KL} = \int p \log\frac{p}{q}
              \approx \mathrm{trapezoid}_i\big(p(z_i)\log\frac{p(z_i)}{q(z_i)}\big),

    with both densities floored at 1e-12. Pixels that are NaN in either input are left
    out; pixels where a sample is constant (no density) are left out with a warning.
    With a ``sample_dim`` the score is computed per sample and averaged.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> t = xr.DataArray(rng.normal(size=(500, 2)), dims=("time", "site"))
    >>> p = xr.DataArray(rng.normal(size=(500, 2)) + 1.0, dims=("time", "site"))
    >>> 0.3 < kde_kld(p, t) < 0.7   # closed form: 0.5
    True
    """
    from scipy.integrate import trapezoid
    from scipy.stats import gaussian_kde

    pred, truth = _check_da(pred, "pred"), _check_da(truth, "truth")
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    scores = []
    skipped = 0
    for pv, tv in _pixel_pairs(pred, truth, dim, sample_dim):
        vals = []
        for p, t in zip(pv, tv, strict=True):
            p, t = p[np.isfinite(p)], t[np.isfinite(t)]
            if p.size < 2 or t.size < 2:
                continue
            if np.ptp(p) == 0 or np.ptp(t) == 0:
                skipped += 1
                continue
            z = np.linspace(min(p.min(), t.min()), max(p.max(), t.max()), int(n_points))
            dp = np.maximum(gaussian_kde(t)(z), _DENSITY_FLOOR)
            dq = np.maximum(gaussian_kde(p)(z), _DENSITY_FLOOR)
            vals.append(trapezoid(dp * np.log(dp / dq), z))
        if not vals:
            raise ValueError("no pixel has at least 2 finite, non-constant values in both inputs")
        scores.append(float(np.mean(vals)))
    if skipped:
        warnings.warn(f"kde_kld: {skipped} pixel(s) with a constant sample were left out",
                      RuntimeWarning, stacklevel=2)
    return float(np.mean(scores))


def wasserstein1(pred: xr.DataArray, truth: xr.DataArray, dim: str = "time",
                 sample_dim: str = "sample") -> float:
    r"""Mean over pixels of the 1-Wasserstein distance between the values along ``dim``.

    .. math:: W_1(p, q) = \int |F_p(z) - F_q(z)|\,dz

    per pixel (:func:`scipy.stats.wasserstein_distance`), averaged over pixels (NaN
    values are dropped per pixel; pixels without values are left out). With a
    ``sample_dim`` the score is computed per sample and averaged.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = xr.DataArray(np.random.default_rng(0).normal(size=(50, 3)), dims=("time", "site"))
    >>> round(wasserstein1(t + 0.5, t), 6)
    0.5
    """
    from scipy.stats import wasserstein_distance

    pred, truth = _check_da(pred, "pred"), _check_da(truth, "truth")
    scores = []
    for pv, tv in _pixel_pairs(pred, truth, dim, sample_dim):
        vals = []
        for p, t in zip(pv, tv, strict=True):
            p, t = p[np.isfinite(p)], t[np.isfinite(t)]
            if p.size and t.size:
                vals.append(wasserstein_distance(p, t))
        if not vals:
            raise ValueError("no pixel has finite values in both inputs")
        scores.append(float(np.mean(vals)))
    return float(np.mean(scores))
