r"""Debias coarse model output with optimal transport between whole snapshots.

"Debias Coarsely" (Wan et al., NeurIPS 2023): every coarse snapshot (all the grid points
of one time step, flattened) is a point of :math:`\mathbb R^d`. Given *unpaired*
snapshots :math:`x_1..x_n` of a climate model and :math:`y_1..y_m` of a reference
(e.g. coarsened observations or reanalysis), :func:`fit_debias` learns a map
:math:`T` pushing the model's snapshot distribution onto the reference's, and
:meth:`Debias.transform` applies it to new model snapshots (out of sample).

Methods (``method=``):

``"gaussian"``
    Bures (linear Monge) map between the Gaussian fits of the two clouds,
    :math:`T(x) = \mu_t + A(x - \mu_s)` with
    :math:`A = \Sigma_s^{-1/2}(\Sigma_s^{1/2}\Sigma_t\Sigma_s^{1/2})^{1/2}\Sigma_s^{-1/2}`
    (:func:`ot.gaussian.bures_wasserstein_mapping`). Both covariances are shrunk towards
    a scaled identity, :math:`\Sigma \leftarrow (1-\lambda)\Sigma + \lambda\,
    \mathrm{tr}(\Sigma)/d\; I` with :math:`\lambda` = ``reg_cov``, so the map exists
    when :math:`d` approaches :math:`n`. Cheap, exact for affine biases.
``"entropic"``
    Entropic OT solved by POT's log-domain Sinkhorn (:func:`ot.sinkhorn`, dense
    :math:`n \times m` cost), extended out of sample by the *entropic map*
    (Pooladian & Niles-Weed 2021)

    .. math::

        T(x) = \sum_j \frac{b_j \exp\big((g_j - c(x, y_j))/\varepsilon\big)}
                           {\sum_k b_k \exp\big((g_k - c(x, y_k))/\varepsilon\big)}\, y_j ,
        \qquad c(x, y) = \lVert x - y\rVert^2 ,

    with :math:`g` the reference-side dual potential. On a training snapshot it equals
    the barycentric projection of the Sinkhorn plan.
``"emd"``
    Exact OT (:func:`ot.emd`, network simplex; small :math:`n`). Each training snapshot
    :math:`x_i` gets the displacement :math:`D_i = \bar y_i - x_i` to its barycentric
    image :math:`\bar y_i = \sum_j P_{ij} y_j / a_i`; a new snapshot moves by the
    kernel-weighted displacement of the training snapshots,
    :math:`T(x) = x + \sum_i \mathrm{softmax}_i(-\lVert x - x_i\rVert^2 / h)\, D_i`,
    with bandwidth :math:`h` = ``reg`` times the mean squared distance between training
    snapshots (``reg -> 0``: the nearest training snapshot's displacement).
``"scalable"`` (alias ``"sinkhorn_torch"``)
    The same entropic problem and map as ``"entropic"``, solved by a log-domain
    Sinkhorn in torch that never builds the :math:`n \times m` cost matrix
    (:func:`sinkhorn_potentials`): costs and log-sum-exps are computed block by block
    of rows, on the GPU when there is one, so memory is :math:`O((n + m)d + B m)` for
    blocks of :math:`B` rows. The map stores the reference snapshots (or a random
    subsample of ``max_support`` of them) and their potential.

Entropic methods are scale free: :math:`\varepsilon` = ``reg`` times the mean cost
:math:`\frac1{nm}\sum_{ij}\lVert x_i - y_j\rVert^2`. Inputs are standardised before OT
(``standardize``): ``"global"`` removes the pooled per-point mean and divides by one
pooled standard deviation, which changes no transport geometry (only numerics);
``"per-dim"`` divides each grid point by its own pooled standard deviation (a different
cost); ``"none"`` only centres. The maps act in standardised units and are undone exactly, so
outputs are in physical units.

Snapshots are unpaired: model and reference may have different lengths and calendars
(only the groups of ``group="time.month"`` / ``"time.season"`` are read from the
times, with a separate map per group as in xsdba). Units are converted with
:mod:`xsciml.units` (pint): the map works in the reference's units, so e.g. a model in K
or ``kg m-2 s-1`` and a reference in degC or ``mm day-1`` are fine; units of other
dimensions are refused.
Grid points that are NaN in every snapshot (a land mask) are left out of the OT and stay
NaN; the mask must be the same in both datasets.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from xsciml.downscale.ot import fit_debias
>>> rng = np.random.default_rng(0)
>>> ref = xr.DataArray(rng.normal(size=(200, 2, 3)), dims=("time", "y", "x"), name="tas")
>>> mod = 2.0 * xr.DataArray(rng.normal(size=(150, 2, 3)), dims=("time", "y", "x"), name="tas") + 5
>>> deb = fit_debias(mod, ref, method="gaussian", progress=False)
>>> out = deb.transform(mod)
>>> bool(abs(float(out.mean())) < 0.2), bool(abs(float(out.std()) - 1.0) < 0.2)
(True, True)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Hashable, Mapping
from typing import Any, cast

import numpy as np
import torch
import xarray as xr

from .._grid import Grid, as_dataset, sample_info
from .._utils import check_numeric, progress_bar, resolve_device
from ..base import Estimator, append_history, output_attrs, register_estimator
from ..training import History
from ..units import clip_to_physical_bounds
from ..units import units_of as _units_of
from ._transport import TransportMap, entropic_map, fit_emd, fit_entropic, fit_linear, fit_scalable, sinkhorn_potentials

log = logging.getLogger(__name__)

__all__ = ["fit_debias", "Debias", "sinkhorn_potentials", "entropic_map", "DEBIAS_METHODS"]

#: Values accepted by ``fit_debias(method=...)``.
DEBIAS_METHODS: tuple[str, ...] = ("gaussian", "entropic", "emd", "scalable")
_ALIASES = {"sinkhorn_torch": "scalable"}
_STANDARDIZE = ("global", "per-dim", "none")


# =========================================================================== units
def _convert(da: xr.DataArray, src: str | None, dst: str | None, what: str,
             against: str = "the reference's") -> xr.DataArray:
    """``da`` from ``src`` to ``dst`` units (see :mod:`xsciml.units`), clear error otherwise."""
    from ..units import convert

    if src is None or dst is None:
        return da
    try:
        return convert(da, src, dst, variable=da.name if da.name is not None else what)
    except ValueError as err:
        raise ValueError(f"{what} must be in units convertible to {against} ({dst!r}): {err}") from None


# =========================================================================== groups
_GROUPINGS = ("month", "season")


def _parse_group(group: str | None, sample_dim: str) -> str | None:
    if group is None:
        return None
    if not isinstance(group, str):
        raise TypeError(f"group must be None or a string such as '{sample_dim}.month', got {group!r}")
    prefix, _, prop = group.partition(".")
    if prefix != sample_dim or prop not in _GROUPINGS:
        raise ValueError(
            f"group={group!r} is not supported; use None, '{sample_dim}.month' or "
            f"'{sample_dim}.season' (the prefix is the sample dimension)."
        )
    return prop


def _group_labels(da: xr.DataArray, sample_dim: str, prop: str | None, what: str) -> np.ndarray:
    """One string label per snapshot (``"all"`` without grouping)."""
    n = int(da.sizes[sample_dim]) if sample_dim in da.dims else 1
    if prop is None:
        return np.full(n, "all", dtype=object)
    if sample_dim not in da.dims:
        raise ValueError(
            f"{what} has no {sample_dim!r} dimension, but the debiasing maps are grouped by "
            f"'{sample_dim}.{prop}': give snapshots along {sample_dim!r}."
        )
    if sample_dim not in da.coords:
        raise ValueError(
            f"{what} has no {sample_dim!r} coordinate; grouping by '{sample_dim}.{prop}' needs "
            "the snapshot times (datetime64 or cftime)."
        )
    coord = da[sample_dim]
    try:
        labels = getattr(coord.dt, prop).values
    except (TypeError, AttributeError) as err:
        raise ValueError(
            f"cannot group {what} by '{sample_dim}.{prop}': its {sample_dim!r} coordinate has "
            f"dtype {coord.dtype} ({err}); decode the times (datetime64 or cftime) first."
        ) from None
    return np.asarray([str(v) for v in np.asarray(labels).ravel()], dtype=object)


# =========================================================================== data
def _resolve_method(method: str) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {DEBIAS_METHODS}, got {method!r}")
    method = _ALIASES.get(method, method)
    if method not in DEBIAS_METHODS:
        raise ValueError(f"method must be one of {DEBIAS_METHODS} (or 'sinkhorn_torch'), got {method!r}")
    return method


def _as_variable(obj: Any, variable: str | None, argname: str) -> tuple[xr.DataArray, str]:
    if isinstance(obj, xr.DataArray):
        name = variable if variable is not None else (str(obj.name) if obj.name is not None else "values")
        return obj.rename(name), name
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"{argname} must be an xarray DataArray or Dataset, got {type(obj).__name__}")
    try:
        ds, names = as_dataset(obj, variable, argname)
    except ValueError:
        raise ValueError(
            f"{argname} has several data variables {list(obj.data_vars)}; name the one to "
            "debias with variable=..."
        ) from None
    return ds[names[0]], names[0]


def _matrix(da: xr.DataArray, grid: Grid, sample_dim: str, what: str) -> np.ndarray:
    """Snapshots ``[n, P]`` (float64), checked for inf."""
    check_numeric(da, what)
    arr = np.asarray(da.transpose(sample_dim, *grid.space_dims).values, dtype=np.float64)
    arr = arr.reshape(arr.shape[0], -1)
    if np.isinf(arr).any():
        raise ValueError(f"{what} contains {int(np.isinf(arr).sum())} infinite values; mask or fix them.")
    return arr


def _valid_points(arr: np.ndarray, grid: Grid, what: str, sample_dim: str) -> np.ndarray:
    nan = np.isnan(arr)
    masked = nan.all(0)
    partial = nan.any(0) & ~masked
    if partial.any():
        idx = np.unravel_index(int(np.flatnonzero(partial)[0]), grid.shape)
        where = dict(zip(grid.space_dims, (int(i) for i in idx), strict=True))
        raise ValueError(
            f"{what} is NaN at {int(partial.sum())} grid point(s) in only some snapshots (first at "
            f"index {where}); whole-snapshot OT needs complete snapshots. Drop those snapshots "
            f"(e.g. .dropna({sample_dim!r}, how='any')) or fill the gaps first."
        )
    if masked.all():
        raise ValueError(f"{what} is NaN everywhere; nothing to debias.")
    return ~masked


# =========================================================================== estimator
@register_estimator
class Debias(Estimator):
    """A fitted snapshot-to-snapshot debiasing map (see :func:`fit_debias`).

    Attributes
    ----------
    method : str
    variable : str
    sample_dim : str
    group : str or None
        ``"time.month"``, ``"time.season"`` or ``None``.
    groups : list of str
        Labels with a fitted map (``["all"]`` without grouping).
    units : str or None
        Units of the outputs (the reference's).
    info : dict
        Sizes, convergence and training periods.

    Examples
    --------
    >>> deb = fit_debias(model, reference, variable="tas", method="entropic")  # doctest: +SKIP
    >>> deb.transform(simulated)  # doctest: +SKIP
    """


    def __init__(self, *, method: str, variable: str, sample_dim: str, grid: Grid,
                 valid: np.ndarray, mean: np.ndarray, scale: np.ndarray, group: str | None,
                 maps: Mapping[str, TransportMap], units: str | None, model_units: str | None,
                 params: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> None:
        self.method = method
        self.variable = variable
        self.sample_dim = sample_dim
        self.grid = grid
        self.valid = np.asarray(valid, dtype=bool).reshape(-1)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.group = group
        self.maps = dict(maps)
        self.history = History()  # closed-form OT maps: no training loop, an empty record
        self.units = units
        self.model_units = model_units
        self.params = dict(params)
        self.info = dict(info or {})

    @property
    def groups(self) -> list[str]:
        """Group labels that have a map."""
        return list(self.maps)

    # ------------------------------------------------------------------ arrays
    def transform_array(self, x: np.ndarray, codes: Any = 0, *, device: Any = "cpu",
                        batch_size: int | None = None) -> np.ndarray:
        """Map snapshots given as an array ``[..., *space]`` (already in the output units).

        Parameters
        ----------
        x : ndarray ``[..., *space]``
            Snapshots on the training grid (space dims in the training order).
        codes : int or int array broadcastable to ``x.shape[:-len(space)]``
            Index into :attr:`groups` of each snapshot's map.
        device
            Where the maps run.
        batch_size
            Block size of the maps.

        Returns
        -------
        ndarray like ``x`` (float), NaN at the masked grid points.
        """
        k = len(self.grid.space_dims)
        x = np.asarray(x)
        if x.shape[x.ndim - k:] != tuple(self.grid.shape):
            raise ValueError(f"x must be [..., {', '.join(map(str, self.grid.shape))}], got {x.shape}")
        lead = x.shape[:x.ndim - k]
        flat = np.asarray(x, dtype=np.float64).reshape(-1, self.grid.n_points)
        codes = np.broadcast_to(np.asarray(codes), lead).reshape(-1)
        out = np.full(flat.shape, np.nan, dtype=np.float64)
        if flat.shape[0] == 0:
            return out.reshape(x.shape).astype(_out_dtype(x.dtype))
        vals = flat[:, self.valid]
        bad = ~np.isfinite(vals)
        if bad.any():
            raise ValueError(
                f"{int(bad.any(1).sum())} snapshot(s) of {self.variable!r} have NaN or inf at grid "
                "points that were valid in the training data; only complete snapshots can be mapped."
            )
        extra = np.isfinite(flat[:, ~self.valid])
        if extra.any():
            raise ValueError(
                f"{int(extra.any(1).sum())} snapshot(s) of {self.variable!r} have values at grid points "
                "that were NaN (masked) in every training snapshot; mask them (NaN) first."
            )
        dev = resolve_device(device)
        z = (vals - self.mean) / self.scale
        res = np.empty_like(z)
        labels = self.groups
        for c in np.unique(codes):
            rows = np.flatnonzero(codes == c)
            zt = torch.from_numpy(z[rows]).to(dev)
            res[rows] = self.maps[labels[int(c)]].apply(zt, batch_size).double().cpu().numpy()
        out[:, self.valid] = res * self.scale + self.mean
        return out.reshape(x.shape).astype(_out_dtype(x.dtype), copy=False)

    # ------------------------------------------------------------------ labeled
    def transform(self, simulated: xr.DataArray | xr.Dataset, *, device: Any = "auto",
                  batch_size: int | None = None) -> xr.DataArray | xr.Dataset:
        """Debias new model snapshots.

        Parameters
        ----------
        simulated : DataArray or Dataset
            Snapshots on the training grid (same space dims and coordinates, any order;
            any other dims, e.g. ``time`` or ``member``, are looped over). With grouped
            maps it needs the ``sample_dim`` times. Units are converted to the
            reference's (:mod:`xsciml.units`); a missing ``units`` attr is taken to be
            the training model's, with a warning. Dask input gives a lazy result, one task per chunk of the
            non-space dims (space must be one chunk).
        device : str or torch.device
            ``"auto"``: the GPU when there is one (per Dask worker).
        batch_size : int, optional
            Snapshots per block of the kernel maps.

        Returns
        -------
        DataArray or Dataset
            Same type, dims, coordinates and attrs as the input, with the debiased
            variable (in the reference's units) and provenance attrs added; a Dataset's
            other variables are kept unchanged.

        Raises
        ------
        KeyError
            If the variable is missing, or a snapshot's group has no fitted map.
        ValueError
            Another grid, incompatible units, incomplete snapshots, space split into
            several dask chunks.

        Examples
        --------
        >>> deb.transform(simulated)  # doctest: +SKIP
        """
        from ..parallel import apply_model, check_core_chunks

        is_da = isinstance(simulated, xr.DataArray)
        if is_da:
            ds = simulated.to_dataset(name=self.variable)
        elif isinstance(simulated, xr.Dataset):
            if self.variable not in simulated.data_vars:
                raise KeyError(
                    f"simulated has no variable {self.variable!r} (the map was fitted on it); data "
                    f"variables: {list(simulated.data_vars)}"
                )
            ds = simulated
        else:
            raise TypeError(f"simulated must be an xarray DataArray or Dataset, got {type(simulated).__name__}")
        (da,) = self.grid.check(ds)
        da = check_core_chunks(da, self.grid.space_dims, argname="simulated",
                               why="debiasing maps whole snapshots")
        src = _units_of(da)
        if src is None and self.units is not None:
            warnings.warn(
                f"simulated {self.variable!r} has no 'units' attribute; assuming "
                f"{self.model_units or self.units!r}, the units of the model data the map was "
                "fitted on. Set attrs['units'] to have it checked and converted.",
                UserWarning, stacklevel=2)
            src = self.model_units
        if self.units is not None and src is not None:
            da = _convert(da, src, self.units, f"simulated {self.variable!r}")
        codes = self._codes(da)
        args = [da]
        core: list[list[Hashable]] = [list(self.grid.space_dims)]
        kwargs: dict[str, Any] = {"batch_size": batch_size}
        if codes is None:
            kwargs["codes"] = 0
        else:
            if da.chunks is not None:
                codes = codes.chunk({self.sample_dim: da.chunksizes[self.sample_dim]})
            args.append(codes)
            core.append([])
        # one output core dims entry: one DataArray
        out = cast(xr.DataArray, apply_model(_transform_kernel, self, *args, input_core_dims=core,
                                             output_core_dims=[list(self.grid.space_dims)],
                                             output_dtypes=[_out_dtype(da.dtype)], device=device,
                                             kwargs=kwargs))
        orig = simulated if is_da else simulated[self.variable]
        out = out.transpose(*orig.dims).assign_coords(orig.coords)
        action = f"transform: {self.variable} debiased ({self.method} map)"
        attrs = output_attrs(orig.attrs, name=self.variable)
        if self.units is not None:
            attrs["units"] = self.units
        attrs.update(self._provenance(action, orig.attrs))
        out.attrs = attrs
        # a map between distributions can move a dry cell below zero: a non-negative or
        # fractional standard_name (in the output's units) keeps its range
        out = clip_to_physical_bounds(out, attrs)
        out.encoding = {k: v for k, v in orig.encoding.items()
                        if k not in ("scale_factor", "add_offset", "_FillValue", "dtype", "missing_value")}
        if is_da:
            return out.rename(simulated.name)
        res = simulated.assign({self.variable: out})
        res.attrs = {**simulated.attrs, "history": append_history(
            simulated.attrs.get("history"), f"{type(self).__name__}.{action}")}
        return res

    def __repr__(self) -> str:
        text = super().__repr__()
        notes = self.info.get("warnings") or []
        return text + (f"  [{len(notes)} warning(s) at fit time: see .info['warnings']]" if notes else "")

    def _codes(self, da: xr.DataArray) -> xr.DataArray | None:
        prop = _parse_group(self.group, self.sample_dim)
        if prop is None:
            return None
        labels = _group_labels(da, self.sample_dim, prop, "simulated")
        index = {lab: i for i, lab in enumerate(self.groups)}
        missing = sorted(set(labels) - set(index))
        if missing:
            raise KeyError(
                f"simulated data have snapshots in group(s) {missing} of {self.group!r}, which have no "
                f"fitted map (fitted: {self.groups}); fit with training data covering them."
            )
        return xr.DataArray(np.array([index[lab] for lab in labels], dtype=np.int64),
                            dims=(self.sample_dim,))

    # ------------------------------------------------------------------ state
    def _get_config(self) -> dict[str, Any]:
        gcfg, _ = self.grid.to_state()
        return {"method": self.method, "variable": self.variable, "sample_dim": self.sample_dim,
                "group": self.group, "units": self.units, "model_units": self.model_units,
                "params": self.params, "grid": gcfg, "info": self.info,
                "maps": [{"label": lab, "kind": mp.kind, "eps": mp.eps, "residual": mp.residual,
                          "info": mp.info} for lab, mp in self.maps.items()]}

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        _, tensors = self.grid.to_state()
        tensors.update(valid=torch.from_numpy(self.valid.astype(np.uint8)),
                       mean=torch.from_numpy(self.mean), scale=torch.from_numpy(self.scale))
        for i, mp in enumerate(self.maps.values()):
            tensors.update({f"map{i}.{k}": v for k, v in mp.tensors.items()})
        return tensors

    @classmethod
    def _from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Debias:
        maps = {}
        for i, entry in enumerate(config["maps"]):
            prefix = f"map{i}."
            t = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            maps[entry["label"]] = TransportMap(entry["kind"], t, eps=float(entry["eps"]),
                                        residual=bool(entry["residual"]), info=dict(entry["info"]))
        return cls(method=config["method"], variable=config["variable"],
                   sample_dim=config["sample_dim"], grid=Grid.from_state(config["grid"], tensors),
                   valid=tensors["valid"].cpu().numpy().astype(bool),
                   mean=tensors["mean"].cpu().numpy(), scale=tensors["scale"].cpu().numpy(),
                   group=config["group"], maps=maps, units=config["units"],
                   model_units=config["model_units"], params=config["params"], info=config["info"])

    def _provenance_extra(self) -> dict[str, Any]:
        extra = {"xsciml_debias_method": self.method}
        if self.group:
            extra["xsciml_debias_group"] = self.group
        for k in ("model_period", "reference_period"):
            if k in self.info:
                extra[f"xsciml_{k}"] = self.info[k]
        return extra


def _out_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _transform_kernel(model: Debias, x: np.ndarray, *rest: np.ndarray, device: torch.device,
                      codes: Any = None, batch_size: int | None = None) -> np.ndarray:
    """Dask task body (module level, so tasks reference it by name)."""
    if rest:
        codes = rest[0]
    return model.transform_array(x, codes, device=device, batch_size=batch_size)


# =========================================================================== public fit
def fit_debias(simulated: xr.DataArray | xr.Dataset, reference: xr.DataArray | xr.Dataset, *,  # noqa: C901 - one flat pass of argument checks and fitting steps
               variable: str | None = None, method: str = "gaussian", sample_dim: str = "time",
               group: str | None = None, reg: float = 0.05, reg_cov: float = 1e-3,
               max_iter: int | None = None, tol: float | None = None, batch_size: int | None = None,
               max_support: int | None = None, standardize: str = "global",
               device: Any = "auto", seed: int | None = 0, progress: bool | None = None,
               ) -> Debias:
    r"""Learn an OT map from simulated snapshots to reference snapshots (unpaired).

    See :mod:`xsciml.downscale.ot` for the methods and formulas.

    Parameters
    ----------
    simulated : DataArray or Dataset
        Model-output snapshots along ``sample_dim`` (the historical run: xsdba's ``hist``);
        every other dim is space (flattened). Dask-backed
        input is loaded (the fit needs all snapshots).
    reference : DataArray or Dataset
        Reference snapshots, with the same space dims, sizes and coordinates as ``simulated``;
        lengths, calendars and time spans may differ.
    variable : str, optional
        Variable to debias (needed for a Dataset with several variables).
    method : {"gaussian", "entropic", "emd", "scalable"}
        ``"sinkhorn_torch"`` is an alias of ``"scalable"``.
    sample_dim : str
        Dimension indexing snapshots.
    group : str, optional
        ``"time.month"`` or ``"time.season"``: one map per group (groups present in
        both datasets; a warning lists the others).
    reg : float
        Entropic methods: :math:`\varepsilon` relative to the mean cost. ``"emd"``: the
        out-of-sample kernel bandwidth relative to the mean squared distance between
        simulated snapshots.
    reg_cov : float
        ``"gaussian"``: covariance shrinkage :math:`\lambda \in [0, 1)`.
    max_iter : int, optional
        Sinkhorn iterations (default 1000) or network-simplex iterations for ``"emd"``
        (default 1,000,000).
    tol : float, optional
        Sinkhorn stopping threshold: POT's ``stopThr`` for ``"entropic"`` (default
        1e-9), the L1 source-marginal violation for ``"scalable"`` (default 1e-4, which
        moves the map by about 1e-5 of its displacement; float32 arithmetic bottoms out
        near 1e-6).
    batch_size : int, optional
        ``"scalable"``: rows per block of the streamed cost (memory ``batch_size x m``).
    max_support : int, optional
        ``"scalable"``: keep at most this many (random) reference snapshots as the
        support of the map; default all.
    standardize : {"global", "per-dim", "none"}
        Standardisation before OT (see the module docs).
    device : str or torch.device
        ``"scalable"``: where Sinkhorn runs (``"auto"``: the GPU when there is one).
    seed : int, optional
        Seed of the support subsample.
    progress : bool, optional
        Progress bars (default: the ``XSCIML_PROGRESS`` environment variable).

    Returns
    -------
    Debias

    Raises
    ------
    KeyError
        Missing variable or ``sample_dim``.
    ValueError
        Different grids or masks, incompatible units, NaN gaps or inf, too few snapshots,
        bad options.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(1)
    >>> ref = xr.DataArray(rng.normal(size=(60, 3)), dims=("time", "site"),
    ...                    attrs={"units": "degC"})
    >>> mod = xr.DataArray(rng.normal(size=(80, 3)) + 274.15, dims=("time", "site"),
    ...                    attrs={"units": "K"})
    >>> deb = fit_debias(mod, ref, method="entropic", progress=False)
    >>> out = deb.transform(mod)
    >>> out.attrs["units"], bool(abs(float(out.mean())) < 0.3)
    ('degC', True)
    """
    method = _resolve_method(method)
    if not isinstance(sample_dim, str):
        raise TypeError(f"sample_dim must be a string, got {sample_dim!r}")
    prop = _parse_group(group, sample_dim)
    if standardize not in _STANDARDIZE:
        raise ValueError(f"standardize must be one of {_STANDARDIZE}, got {standardize!r}")
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a positive number, got {reg!r}")
    if not (isinstance(reg_cov, (int, float)) and 0 <= reg_cov < 1):
        raise ValueError(f"reg_cov must be in [0, 1), got {reg_cov!r}")
    if max_iter is None:
        max_iter = 1_000_000 if method == "emd" else 1000
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if tol is None:
        tol = 1e-4 if method == "scalable" else 1e-9
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if max_support is not None and (isinstance(max_support, bool) or not isinstance(max_support, (int, np.integer))
                                    or max_support < 2):
        raise ValueError(f"max_support must be None or an integer >= 2, got {max_support!r}")
    rng = np.random.default_rng(seed)

    mod_da, name = _as_variable(simulated, variable, "simulated")
    ref_var = variable
    if ref_var is None and isinstance(reference, xr.Dataset) and name in reference.data_vars:
        ref_var = name
    ref_da, _ = _as_variable(reference, ref_var, "reference")
    ref_da = ref_da.rename(name)
    for what, da in (("simulated", mod_da), ("reference", ref_da)):
        if sample_dim not in da.dims:
            raise KeyError(
                f"{what} variable {name!r} has no dimension {sample_dim!r} (dims {da.dims}); pass "
                "sample_dim= the dimension indexing snapshots."
            )
    from ..tensors import decode_variable

    mod_da, ref_da = decode_variable(mod_da), decode_variable(ref_da)
    mod_ds, ref_ds = mod_da.to_dataset(), ref_da.to_dataset()
    grid = Grid.from_data(mod_ds, [name], sample_dim)
    if set(ref_da.dims) - {sample_dim} != set(grid.space_dims):
        raise ValueError(
            f"simulated and reference {name!r} have different space dims: {grid.space_dims} vs "
            f"{tuple(d for d in ref_da.dims if d != sample_dim)}; regrid one onto the other first."
        )
    (ref_da,) = grid.check(ref_ds)

    # units: the map works in the reference's units
    mu, ru = _units_of(mod_da), _units_of(ref_da)
    if (mu is None) != (ru is None):
        raise ValueError(
            f"only the {'simulated' if ru is None else 'reference'} {name!r} has a 'units' attribute "
            f"({mu if ru is None else ru!r}); set attrs['units'] on both so units can be checked."
        )
    mod_da = _convert(mod_da, mu, ru, f"simulated {name!r}")

    X_all = _matrix(mod_da, grid, sample_dim, f"simulated {name!r}")
    Y_all = _matrix(ref_da, grid, sample_dim, f"reference {name!r}")
    vm = _valid_points(X_all, grid, f"simulated {name!r}", sample_dim)
    vr = _valid_points(Y_all, grid, f"reference {name!r}", sample_dim)
    if not np.array_equal(vm, vr):
        raise ValueError(
            f"simulated and reference {name!r} have different NaN masks ({int((vm != vr).sum())} grid "
            "points valid in one only); apply the same mask to both."
        )
    X_all, Y_all = X_all[:, vm], Y_all[:, vm]
    lab_m = _group_labels(mod_da, sample_dim, prop, "simulated")
    lab_r = _group_labels(ref_da, sample_dim, prop, "reference")

    pooled = np.concatenate([X_all, Y_all])
    mean = pooled.mean(0)  # centring is a translation of both clouds: it changes no map
    if standardize == "none":
        scale = np.ones(pooled.shape[1])
    else:
        sd = pooled.std(0)
        if standardize == "global":
            scale = np.full_like(mean, math.sqrt(float((sd**2).mean())))
        else:
            scale = sd.copy()
        scale[~(scale > 0)] = 1.0
    Xs, Ys = (X_all - mean) / scale, (Y_all - mean) / scale

    order = _group_order(prop)
    common = [g for g in order if g in set(lab_m) and g in set(lab_r)]
    dropped = sorted((set(lab_m) | set(lab_r)) - set(common))
    if not common:
        raise ValueError(f"simulated and reference share no {group!r} group; nothing to fit.")
    if dropped:
        warnings.warn(f"groups {dropped} of {group!r} are not in both simulated and reference; "
                      "they get no map.", UserWarning, stacklevel=2)
    maps: dict[str, TransportMap] = {}
    sizes: dict[str, list[int]] = {}
    notes: list[str] = []
    for lab in progress_bar(common, desc="debias groups", progress=progress if len(common) > 1 else False):
        X, Y = Xs[lab_m == lab], Ys[lab_r == lab]
        if len(X) < 2 or len(Y) < 2:
            raise ValueError(
                f"group {lab!r}: {len(X)} simulated and {len(Y)} reference snapshot(s); at least 2 each "
                "are needed."
            )
        if method == "gaussian":
            note = _undersampled(lab, len(X), len(Y), X.shape[1], name)
            if note:
                notes.append(note)
                warnings.warn(note, UserWarning, stacklevel=2)
            mp = fit_linear(X, Y, float(reg_cov))
        elif method == "entropic":
            mp = fit_entropic(X, Y, float(reg), int(max_iter), float(tol))
        elif method == "emd":
            mp = fit_emd(X, Y, float(reg), int(max_iter))
        else:
            mp = fit_scalable(X, Y, float(reg), int(max_iter), float(tol), batch_size,
                               max_support, device, rng, progress)
        maps[lab] = mp
        sizes[lab] = [int(len(X)), int(len(Y))]

    info: dict[str, Any] = {"n_model": int(len(X_all)), "n_reference": int(len(Y_all)),
                            "n_points": int(vm.sum()), "group_sizes": sizes}
    if notes:
        info["warnings"] = notes
    for key, ds in (("model_period", mod_ds), ("reference_period", ref_ds)):
        _, si = sample_info(ds, sample_dim)
        if "training_period" in si:
            info[key] = si["training_period"]
    params = {"reg": float(reg), "reg_cov": float(reg_cov), "max_iter": int(max_iter),
              "tol": float(tol), "standardize": standardize, "max_support": max_support,
              "seed": seed}
    log.info("fit_debias[%s]: %s: %d simulated and %d reference snapshots, %d grid points, %d "
             "group(s)%s", method, name, info["n_model"], info["n_reference"], info["n_points"],
             len(maps), f"; {len(notes)} warning(s)" if notes else "")
    return Debias(method=method, variable=name, sample_dim=sample_dim, grid=grid, valid=vm,
                  mean=mean, scale=scale, group=group, maps=maps, units=ru, model_units=mu,
                  params=params, info=info)


def _undersampled(label: str, n_model: int, n_ref: int, d: int, name: str) -> str | None:
    """A warning when a sample covariance of the Gaussian map is singular (n - 1 < d)."""
    n = min(n_model, n_ref)
    if n - 1 >= d:
        return None
    which = "model" if n_model <= n_ref else "reference"
    where = "" if label == "all" else f" in group {label!r}"
    return (
        f"{n} {which} snapshot(s) of {name!r}{where} for a dimension of {d} grid points: the "
        f"sample covariance has rank at most {n - 1}, so {d - n + 1} of its {d} directions come "
        "from the reg_cov shrinkage alone and the map's spread is unreliable. Use more "
        "snapshots than grid points (or fewer grid points, e.g. a coarser grid or a region)."
    )


def _group_order(prop: str | None) -> list[str]:
    if prop is None:
        return ["all"]
    if prop == "month":
        return [str(i) for i in range(1, 13)]
    return ["DJF", "MAM", "JJA", "SON"]
