"""Labeled data to torch tensors and back.

Two representations serve every model in xsciml:

* **coordinate-based data** ``D = {(x_n, t_n), y_n}`` (:class:`CoordinateData`, from
  :func:`to_tensors`): one row per *valid* observation — NaN / masked points are dropped,
  never filled — for neural fields and other coordinate networks. Works for regular grids
  (any coordinate order, descending latitude included), 2-D curvilinear coordinates,
  scattered observations along one dimension, and static or time-varying fields.
* **gridded fields** ``[S, C, H, W]`` or ``[S, C, N]`` (:class:`GridData`, from
  :func:`to_fields`) with a validity mask, for models that see a whole snapshot at once.

Both remember everything needed to put predictions back onto labeled coordinates
(:meth:`CoordinateData.to_dataset`, :meth:`GridData.to_dataarray`), and
:func:`target_points` does the same for *new* coordinates (another grid, a dict of
1-D coordinates, scattered points).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import xarray as xr

from ._utils import check_numeric, check_positive_int
from .coords import CoordinateEncoder, time_kind
from .parallel import is_dask_backed

if TYPE_CHECKING:
    import torch

__all__ = [
    "CoordinateData",
    "GridData",
    "PointLayout",
    "TargetPoints",
    "Scaler",
    "to_tensors",
    "to_fields",
    "target_points",
    "check_target_domain",
    "decode_variable",
    "default_space",
    "space_dims",
    "space_values",
]

TIME_ATTRS = ("units", "long_name", "standard_name", "calendar")


# =========================================================================== helpers
def decode_variable(da: xr.DataArray) -> xr.DataArray:
    """Apply CF packing (``scale_factor``/``add_offset``/``_FillValue``) still in ``attrs``.

    xarray decodes packed variables on open; this catches arrays opened with
    ``mask_and_scale=False`` (or built by hand) so integers such as int16 never reach a
    model as raw counts. The decoding is xarray's own (:func:`xarray.decode_cf`: masks,
    ``_Unsigned``, scale and offset, with its dtype rules). Already-decoded variables are
    returned unchanged.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> raw = xr.DataArray(np.array([0, 100, -32767], dtype="int16"), dims="x",
    ...                    attrs={"scale_factor": 0.01, "add_offset": 273.15, "_FillValue": -32767})
    >>> decode_variable(raw).values.round(2)  # decoded by xarray's CF coders
    array([273.15, 274.15,    nan])
    """
    attrs = dict(da.attrs)
    packed = any(k in attrs for k in ("scale_factor", "add_offset", "_Unsigned"))
    fills = [attrs.get(k) for k in ("_FillValue", "missing_value") if k in attrs]
    if not packed and not (fills and np.issubdtype(da.dtype, np.number)):
        return da
    # xarray's own CF decoding (mask, _Unsigned, scale/offset), applied to this variable
    # alone: the coordinates are left as they are
    name = "__xsciml_decode__"
    one = xr.Dataset({name: da.variable.copy(deep=False)})
    decoded = xr.decode_cf(one, concat_characters=False, mask_and_scale=True, decode_times=False,
                           decode_coords=False, decode_timedelta=False).variables[name]
    for k in ("valid_range", "valid_min", "valid_max"):
        decoded.attrs.pop(k, None)
    if not is_dask_backed(da):
        decoded = decoded.load()
    out = xr.DataArray(decoded, coords=da.coords, name=da.name)
    out.encoding = {**da.encoding, **decoded.encoding}
    return out


def _get_variable(ds: xr.Dataset, name: Hashable, role: str = "variable") -> xr.DataArray:
    if name not in ds.variables:
        kind = "data variables" if role == "variable" else "variables and coordinates"
        avail = list(ds.data_vars) if role == "variable" else list(ds.variables)
        raise KeyError(f"{role} {name!r} not found in the Dataset; available {kind}: {avail}")
    return ds[name]


def _check_numeric(da: xr.DataArray, name: Hashable, role: str) -> None:
    hint = " (decode times with xr.decode_cf or pass it as the time coordinate)" if da.dtype.kind == "M" else ""
    check_numeric(da, f"{role} {name!r}", "; only numbers can become tensors" + hint)


def _check_time_axis(ds: xr.Dataset, time: str, space: Sequence[str]) -> None:
    """A time coordinate that is its own dimension must be unique and increasing."""
    tc = ds[time]
    if tc.ndim != 1:
        return
    tdim = tc.dims[0]
    shares = any(tdim in ds[s].dims for s in space if s in ds.variables)
    if shares:  # scattered observations: repeated times at different places are fine
        return
    values = tc.values
    kind = time_kind(values)
    if kind == "cftime":
        from .coords import time_to_float

        values = time_to_float(values)
    elif kind == "datetime64":
        values = values.astype("datetime64[ns]").astype(np.int64)
    if values.size > 1:
        d = np.diff(values)
        if np.any(d == 0):
            dup = np.asarray(tc.values)[1:][d == 0][:3]
            raise ValueError(
                f"time coordinate {time!r} has duplicate values (e.g. {list(dup)}); remove them, "
                f"e.g. ds = ds.drop_duplicates({tdim!r})"
            )
        if np.any(d < 0):
            raise ValueError(
                f"time coordinate {time!r} is not sorted increasingly; sort first: "
                f"ds = ds.sortby({time!r})"
            )


# =========================================================================== scaler
@dataclass
class Scaler:
    """Per-column standardisation ``(y - mean) / std`` with a JSON-friendly state.

    Examples
    --------
    >>> import numpy as np
    >>> s = Scaler.fit(np.array([[1.0], [3.0]]))
    >>> s.transform(np.array([[3.0]]))
    array([[1.]])
    """

    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, y: np.ndarray) -> Scaler:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return cls.from_moments(np.nanmean(y, 0), np.nanstd(y, 0))

    @classmethod
    def from_moments(cls, mean, std) -> Scaler:
        std = np.where(np.asarray(std) > 0, std, 1.0)
        return cls([float(m) for m in np.atleast_1d(mean)], [float(s) for s in np.atleast_1d(std)])

    def transform(self, y):
        return (y - self._as(y, self.mean)) / self._as(y, self.std)

    def inverse(self, z):
        return z * self._as(z, self.std) + self._as(z, self.mean)

    def inverse_std(self, s):
        """Scale a standard deviation back to physical units."""
        return s * self._as(s, self.std)

    @staticmethod
    def _as(ref, values):
        try:
            import torch

            if isinstance(ref, torch.Tensor):
                return torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
        except ImportError:  # pragma: no cover
            pass
        return np.asarray(values, dtype=np.result_type(ref, np.float32))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scaler:
        return cls(list(d["mean"]), list(d["std"]))


def _block_stats(*blocks: Any) -> np.ndarray:
    """Per variable ``[count, mean, M2, n_inf, n_finite]`` of one block (jointly valid points)."""
    arrays = [np.asarray(b) for b in blocks]
    valid = None
    out = np.zeros((len(arrays), 5))
    for i, b in enumerate(arrays):
        fin = np.isfinite(b)
        out[i, 3] = np.count_nonzero(np.isinf(b))
        out[i, 4] = np.count_nonzero(fin)
        valid = fin if valid is None else np.logical_and(valid, fin, out=valid)
    for i, b in enumerate(arrays):
        vals = b[valid].astype(np.float64)
        n = vals.size
        if n:
            mean = vals.mean()
            vals -= mean
            out[i, :3] = (n, mean, float(np.dot(vals, vals)))
    return out


def _combine_stats(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Chan et al.'s pairwise combination of block counts, means and M2."""
    total = np.array(parts[0], dtype=np.float64)
    for p in parts[1:]:
        n_a, n_b = total[:, 0], p[:, 0]
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = p[:, 1] - total[:, 1]
            mean = np.where(n > 0, total[:, 1] + delta * n_b / np.where(n > 0, n, 1), 0.0)
            m2 = total[:, 2] + p[:, 2] + np.where(n > 0, delta**2 * n_a * n_b / np.where(n > 0, n, 1), 0.0)
        total[:, 0], total[:, 1], total[:, 2] = n, mean, m2
        total[:, 3:] += p[:, 3:]
    return total


# =========================================================================== layout
@dataclass
class PointLayout:
    """How flat points map onto a labeled array: dims, shape, coordinates, valid points.

    ``valid`` holds the flat (C-order) indices of the points that exist; every other
    position of the full array is NaN when predictions go back to labeled data.
    """

    dims: tuple[Hashable, ...]
    shape: tuple[int, ...]
    coords: xr.Dataset
    valid: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_points(self) -> int:
        return self.size if self.valid is None else int(self.valid.size)

    def unflatten(
        self,
        values: Any,
        name: Hashable | None = None,
        attrs: Mapping[str, Any] | None = None,
        leading_dims: Sequence[Hashable] = (),
        leading_coords: Mapping[Hashable, Any] | None = None,
    ) -> xr.DataArray:
        """Scatter ``values[..., N]`` back into a labeled DataArray (NaN where invalid)."""
        from ._utils import to_numpy

        values = to_numpy(values)
        lead = values.shape[:-1]
        if values.shape[-1] != self.n_points:
            raise ValueError(
                f"got {values.shape[-1]} values per field but the layout has {self.n_points} points"
            )
        if len(lead) != len(leading_dims):
            raise ValueError(f"values have leading shape {lead} but leading_dims={tuple(leading_dims)}")
        dtype = np.result_type(values.dtype, np.float32)
        if self.valid is None:
            full = values.astype(dtype, copy=False).reshape(lead + self.shape)
        else:
            full = np.full(lead + (self.size,), np.nan, dtype=dtype)
            full[..., self.valid] = values
            full = full.reshape(lead + self.shape)
        coords = {k: v.variable for k, v in self.coords.coords.items()}
        for k, v in (leading_coords or {}).items():
            coords[k] = v
        return xr.DataArray(full, dims=tuple(leading_dims) + tuple(self.dims), coords=coords,
                            name=name, attrs=dict(attrs or {}))

    def mask(self) -> xr.DataArray:
        """Boolean DataArray, True at valid points."""
        m = np.zeros(self.size, dtype=bool)
        m[self.valid if self.valid is not None else slice(None)] = True
        return self.unflatten(m.astype(np.float32)).astype(bool).rename("valid")


def _gather_coord(ds: xr.Dataset, name: Hashable, dims: Sequence[Hashable], shape, flat_idx,
                  offsets=None) -> np.ndarray:
    """Values of coordinate ``name`` at flat positions of the broadcast (dims, shape) array."""
    c = ds[name]
    extra = [d for d in c.dims if d not in dims]
    if extra:
        raise ValueError(
            f"coordinate {name!r} has dimension(s) {extra} that the data does not have "
            f"(data dims: {tuple(dims)})"
        )
    values = np.asarray(c.values)
    if c.ndim == 0:
        return np.broadcast_to(values, flat_idx.shape).copy()
    multi = np.unravel_index(flat_idx, shape)
    pos = {d: multi[i] + (offsets[i] if offsets is not None else 0) for i, d in enumerate(dims)}
    return values[tuple(pos[d] for d in c.dims)]


# =========================================================================== points
class _PointSet:
    """Shared part of training data and prediction targets: coordinates → features."""

    encoder: CoordinateEncoder
    _features: Any

    if TYPE_CHECKING:  # an attribute of TargetPoints, a computed property of CoordinateData
        @property
        def layout(self) -> PointLayout: ...

    @property
    def features(self):
        """Encoded network inputs ``[N, F]`` (see :attr:`feature_names`)."""
        return self._features

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.feature_names

    @property
    def x(self):
        """Encoded space coordinates ``[N, Ds]`` (affine ``[-1, 1]`` or unit sphere)."""
        return self.features[:, self.encoder.feature_slices["space"]]

    @property
    def t(self):
        """Encoded time ``[N]`` in ``[-1, 1]`` over the training period (``None`` if static)."""
        if self.encoder.time is None:
            return None
        return self.features[:, self.encoder.feature_slices["time"]][:, 0]

    def __len__(self) -> int:
        return self.layout.n_points


@dataclass
class TargetPoints(_PointSet):
    """Coordinates where a model is evaluated, and how to label its outputs.

    Built by :func:`target_points` (or ``CoordinateData.target``). ``features`` are the
    encoded inputs of the *finite* points; :meth:`to_dataarray` puts predictions back
    onto the target's labeled coordinates, NaN where a coordinate was NaN.
    """

    encoder: CoordinateEncoder
    layout: PointLayout
    _features: Any = None
    dtype: Any = None

    def to_dataarray(self, values, name=None, attrs=None, leading_dims=(), leading_coords=None):
        """Predictions ``[..., N]`` → DataArray on the target coordinates."""
        return self.layout.unflatten(values, name, attrs, leading_dims, leading_coords)


def _resolve_space_time(ds: xr.Dataset, space: str | Sequence[str] | None, time: str | None,
                        role: str = "coordinate") -> tuple[tuple[str, ...], str | None]:
    space = (space,) if isinstance(space, str) else tuple(space or ())
    for name in list(space) + ([time] if time is not None else []):
        if name not in ds.variables:
            raise KeyError(
                f"coordinate {name!r} not found; available coordinates: {list(ds.coords)}"
                + (f", data variables: {list(ds.data_vars)}" if ds.data_vars else "")
            )
    return space, time


def default_space(ds: xr.Dataset, dims: Sequence[Hashable], time: str | None, *,
                  latlon: bool = True) -> tuple[str, ...]:
    """Guess the space coordinates of data over ``dims``.

    CF latitude/longitude (1-D or 2-D) when present, else the dimension coordinates of
    ``dims`` that are not along ``time``.

    Parameters
    ----------
    ds
        The Dataset holding the coordinates.
    dims
        Dimensions of the data (those of its variables).
    time
        Time coordinate (its dimensions are not space), or ``None``: then finding no
        space coordinate is an error.
    latlon
        Look for CF latitude/longitude coordinates first (``False``: dimension
        coordinates only, in the order of ``dims``).

    Returns
    -------
    tuple of str

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset(coords={"time": [0.0, 1.0], "y": [0.0, 1.0], "x": [0.0, 1.0, 2.0]})
    >>> default_space(ds, ("time", "y", "x"), "time")
    ('y', 'x')
    """
    from .coords import is_latitude, is_longitude

    if latlon:
        lat = [n for n, c in ds.coords.items()
               if is_latitude(str(n), c) and set(c.dims) <= set(dims) and c.ndim > 0]
        lon = [n for n, c in ds.coords.items()
               if is_longitude(str(n), c) and set(c.dims) <= set(dims) and c.ndim > 0]
        if lat and lon:
            return (str(lat[0]), str(lon[0]))
    tdims = set(ds[time].dims) if time is not None else set()
    out = tuple(str(d) for d in dims if d not in tdims and d in ds.coords)
    if not out and time is None:
        raise ValueError(f"cannot guess the space coordinates of dims {tuple(dims)}; pass space=(...)")
    return out


def space_dims(ds: xr.Dataset, space: Sequence[str], order: Sequence[Hashable] = ()) -> list[Hashable]:
    """The dimensions the space coordinates ``space`` of ``ds`` vary along.

    Those in ``order`` (e.g. a variable's dims) come first, in that order; the others
    follow in the order the coordinates name them.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset(coords={"lat": (("y", "x"), np.zeros((2, 3))), "lon": (("y", "x"), np.zeros((2, 3)))})
    >>> space_dims(ds, ["lat", "lon"], ("time", "x", "y"))
    ['x', 'y']
    """
    dims: list[Hashable] = []
    for n in space:
        for d in ds[n].dims:
            if d not in dims:
                dims.append(d)
    return [d for d in order if d in dims] + [d for d in dims if d not in order]


def space_values(ds: xr.Dataset, space: Sequence[str], dims: Sequence[Hashable]) -> dict[str, np.ndarray]:
    """Values (float64, CF-decoded) of each space coordinate at every point of the ``dims`` grid.

    Points are flattened in C order over ``dims`` (e.g. from :func:`space_dims`); a
    coordinate along fewer dims is broadcast.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset(coords={"y": [0.0, 1.0], "x": [10.0, 20.0, 30.0]})
    >>> space_values(ds, ["y", "x"], ["y", "x"])["x"].tolist()
    [10.0, 20.0, 30.0, 10.0, 20.0, 30.0]
    """
    shape = tuple(int(ds.sizes[d]) for d in dims)
    flat = np.arange(int(np.prod(shape, dtype=np.int64)))
    out = {}
    for n in space:
        c = decode_variable(ds[n])
        check_numeric(c, f"space coordinate {n!r}")
        coords = xr.Dataset(coords={n: c.variable})
        out[n] = _gather_coord(coords, n, dims, shape, flat).astype(np.float64)
    return out


def _default_time(ds: xr.Dataset, dims: Sequence[Hashable]) -> str | None:
    for name in ("time", "t"):
        if name in ds.coords and set(ds[name].dims) <= set(dims):
            return name
    return None


# =========================================================================== training data
class CoordinateData(_PointSet):
    """Coordinate-based tensors ``x [N, Ds]``, ``t [N]``, ``y [N, Dy]`` of valid points.

    Build with :func:`to_tensors` / ``ds.sciml.to_tensors``. For in-memory data the
    tensors are built at once; for dask-backed data nothing is loaded until asked:
    :meth:`batches` streams minibatches chunk by chunk (peak memory O(chunk)), while
    touching :attr:`features`/:attr:`y` materialises every valid point.

    Attributes
    ----------
    variables : list of str
        The predicted variables (columns of ``y``).
    encoder : CoordinateEncoder
        The fitted coordinate encoding (saved with models).
    scaler : Scaler
        Mean/std of each variable over valid points (models train on standardised ``y``).
    layout : PointLayout
        Dims, shape, coordinates and valid-point indices of the source data.
    """

    def __init__(self, ds: xr.Dataset, variables: list[str], encoder: CoordinateEncoder,
                 condition: list[str], dtype, attrs: dict[str, dict]):
        import torch

        self._ds = ds
        self.variables = variables
        self.condition = condition
        self.encoder = encoder
        self.dtype = dtype if dtype is not None else torch.float32
        self.var_attrs = attrs
        first = ds[variables[0]]
        self.dims = tuple(first.dims)
        self.shape = tuple(first.shape)
        self.is_lazy = any(is_dask_backed(ds[v]) for v in variables + condition)
        self._features = None
        self._y: torch.Tensor | None = None
        self._valid: np.ndarray | None = None
        #: How the last :meth:`split_indices` chose its held-out points.
        self.split_info: dict[str, Any] = {"pattern": "random"}
        self.scaler: Scaler
        self.condition_scaler: Scaler | None = None
        coord_names = [n for n in list(encoder.space) + ([encoder.time] if encoder.time else [])]
        keep = {}
        for k, c in ds.coords.items():
            if set(c.dims) <= set(self.dims):
                keep[k] = c.variable
        for n in coord_names:  # coordinates stored as data variables (e.g. drifter lon/lat)
            keep.setdefault(n, ds[n].variable)
        self._coords = xr.Dataset(coords=keep)
        self._fit_statistics()
        if not self.is_lazy:
            self._materialise()

    # -- statistics (one pass, dask-aware) ------------------------------------------
    def _fit_statistics(self) -> None:
        """Moments, infinities and counts of every variable in one pass over the blocks.

        Each block gives ``(count, mean, M2, n_inf, n_finite)`` per variable at jointly
        valid points (one fused task per block, so at most a few blocks' temporaries are
        alive); blocks are combined with Chan's parallel formula.
        """
        import dask

        names = self.variables + self.condition
        arrays = [self._ds[v].transpose(*self.dims).data for v in names]
        if any(is_dask_backed(self._ds[v]) for v in names):
            import dask.array as dsa

            ref = next(a for a in arrays if hasattr(a, "numblocks"))
            arrays = [a if hasattr(a, "numblocks") else dsa.from_array(np.asarray(a), chunks=ref.chunks)
                      for a in arrays]
            arrays = list(dsa.core.unify_chunks(*[x for a in arrays for x in (a, tuple(range(a.ndim)))])[1])
            tasks = [dask.delayed(_block_stats)(*[a.blocks[idx] for a in arrays])
                     for idx in np.ndindex(*arrays[0].numblocks)]
            parts = dask.compute(*tasks)
        else:
            parts = [_block_stats(*arrays)]
        stats = _combine_stats(parts)
        means: list[float] = []
        stds: list[float] = []
        cmeans: list[float] = []
        cstds: list[float] = []
        for i, v in enumerate(names):
            n, mean, m2, n_inf, n_fin = stats[i]
            role = "variable" if v in self.variables else "condition variable"
            if n_inf > 0:
                raise ValueError(
                    f"{role} {v!r} contains {int(n_inf)} infinite value(s); if they mark missing "
                    f"data, replace them first: ds[{v!r}] = ds[{v!r}].where(np.isfinite(ds[{v!r}]))"
                )
            if n_fin == 0:
                raise ValueError(f"{role} {v!r} is all-NaN: there is no observation to learn from")
            if n == 0:
                raise ValueError(
                    f"{role} {v!r} has no point where all requested variables are valid together"
                )
            (means if v in self.variables else cmeans).append(mean)
            (stds if v in self.variables else cstds).append(math.sqrt(max(m2 / n, 0.0)))
        self._n_valid = int(stats[0][0])
        self.scaler = Scaler.from_moments(means, stds)
        if self.condition:
            self.condition_scaler = Scaler.from_moments(cmeans, cstds)

    # -- materialising --------------------------------------------------------------
    def _np_dtype(self):
        import torch

        return torch.empty((), dtype=self.dtype).numpy().dtype

    def _points_of_block(self, block: xr.Dataset | dict, offsets, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(flat indices within the block, features, y) for one block, in the tensor dtype.

        ``block`` is a Dataset or a dict of raw arrays (already in ``self.dims`` order).
        Intermediates are freed as soon as possible: streaming memory is a few times the
        chunk size, not tens of times.
        """
        dt = self._np_dtype()
        names = self.variables + self.condition
        vals = []
        valid: np.ndarray | None = None
        for v in names:
            a = block[v] if isinstance(block, dict) else np.asarray(block[v].transpose(*self.dims).values)
            a = np.asarray(a).reshape(-1)
            vals.append(a)
            fin = np.isfinite(a)
            valid = fin if valid is None else np.logical_and(valid, fin, out=valid)
        assert valid is not None  # names holds at least one variable
        flat = np.flatnonzero(valid)
        del valid
        feats, ok = self._features_at(flat, shape, offsets, dt)
        if not ok.all():
            flat, feats = flat[ok], feats[ok]
        nv = len(self.variables)
        y = np.empty((flat.size, nv), dtype=dt)
        for i in range(nv):
            y[:, i] = vals[i][flat]
        if self.condition:
            c = np.stack([vals[nv + i][flat] for i in range(len(self.condition))], -1)
            assert self.condition_scaler is not None  # fitted with the condition variables
            feats = np.concatenate([feats, self.condition_scaler.transform(c).astype(dt)], axis=-1)
        return flat, feats, y

    def _features_at(self, flat, shape, offsets, dtype=np.float64):
        enc = self.encoder
        space = {n: _gather_coord(self._coords, n, self.dims, shape, flat, offsets).astype(np.float64)
                 for n in enc.space}
        time = None
        ok = np.ones(flat.shape, dtype=bool)
        for n in enc.space:
            ok &= np.isfinite(space[n])
        if enc.time is not None:
            time = _gather_coord(self._coords, enc.time, self.dims, shape, flat, offsets)
            if time_kind(time) == "datetime64":
                ok &= ~np.isnat(time)
            elif time_kind(time) == "numeric":
                ok &= np.isfinite(time)
        return enc.transform(space, time).astype(dtype, copy=False), ok

    def _materialise(self) -> None:
        import torch

        flat, feats, y = self._points_of_block(self._ds, None, self.shape)
        self._valid = flat
        self._features = torch.from_numpy(feats)
        self._y = torch.from_numpy(y)

    def load(self) -> CoordinateData:
        """Materialise all valid points of lazy (dask-backed) data in memory."""
        if self._features is None:
            self._materialise()
        return self

    @property
    def features(self):
        """Encoded inputs ``[N, F]``: space, time, cyclical time, then condition columns."""
        if self._features is None:
            self._materialise()
        return self._features

    @property
    def y(self):
        """Observed values ``[N, Dy]`` in physical units, one column per variable."""
        if self._y is None:
            self._materialise()
        return self._y

    @property
    def c(self):
        """Standardised condition variables ``[N, Dc]`` (``None`` without ``condition``)."""
        if not self.condition:
            return None
        return self.features[:, self.encoder.n_features:]

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.feature_names + list(self.condition)

    @property
    def layout(self) -> PointLayout:
        if self._valid is None:
            self._materialise()
        return PointLayout(self.dims, self.shape, self._coords, self._valid)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        n = "lazy" if self._features is None else f"N={len(self)}"
        return (f"<CoordinateData {n} variables={self.variables} space={self.encoder.space} "
                f"time={self.encoder.time!r} features={self.feature_names}>")

    @property
    def raw_coords(self) -> dict[str, np.ndarray]:
        """Raw (unencoded) coordinate values of each valid point."""
        flat = self.layout.valid
        out = {n: _gather_coord(self._coords, n, self.dims, self.shape, flat) for n in self.encoder.space}
        if self.encoder.time:
            out[self.encoder.time] = _gather_coord(self._coords, self.encoder.time, self.dims, self.shape, flat)
        return out

    # -- minibatches ---------------------------------------------------------------
    def _blocks(self) -> list[tuple[slice, ...]]:
        arr = self._ds[self.variables[0]].transpose(*self.dims)
        chunks = arr.chunks
        if chunks is None:
            return [tuple(slice(0, s) for s in self.shape)]
        starts = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]
        import itertools

        return [tuple(slice(int(st[i]), int(st[i + 1])) for st, i in zip(starts, idx, strict=True))
                for idx in itertools.product(*[range(len(c)) for c in chunks])]

    def batches(self, batch_size: int = 4096, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False, prefetch: bool = True) -> Iterator[tuple[Any, Any]]:
        """Iterate over ``(features, y)`` minibatches.

        In-memory data is permuted as a whole. Dask-backed data is streamed: chunks are
        visited in a random order (``shuffle``), each is loaded, its valid points are
        shuffled and cut into batches (leftovers carried into the next chunk), and the
        next chunk is loaded in a background thread meanwhile. Peak memory is about two
        chunks, whatever the dataset size.

        Parameters
        ----------
        batch_size
            Points per batch.
        shuffle
            Random order (chunks and points); ``False`` gives the storage order.
        seed
            Seed of the order, so an epoch is reproducible.
        drop_last
            Drop a final batch smaller than ``batch_size``.
        prefetch
            Load the next chunk in a background thread while the current one is used.

        Examples
        --------
        >>> import xsciml.datasets as xd  # doctest: +SKIP
        >>> data = ds.sciml.to_tensors("u", space=("y", "x"), time="time")  # doctest: +SKIP
        >>> for features, y in data.batches(1024, seed=0):  # doctest: +SKIP
        ...     pass
        """
        import torch

        batch_size = check_positive_int(batch_size, "batch_size")
        rng = np.random.default_rng(seed)
        if self._features is not None and not self.is_lazy:
            n = len(self)
            order = rng.permutation(n) if shuffle else np.arange(n)
            order_t = torch.as_tensor(order)
            stop = n - (n % batch_size) if drop_last else n
            assert self._y is not None  # materialised together with _features
            for i in range(0, stop, batch_size):
                idx = order_t[i:i + batch_size]
                yield self._features[idx], self._y[idx]
            return
        yield from self._stream(batch_size, shuffle, rng, drop_last, prefetch)

    def _read_block(self, sl) -> dict[str, np.ndarray]:
        """Raw values of one block (the I/O part, run in the prefetch thread)."""
        block = self._ds[self.variables + self.condition].isel(dict(zip(self.dims, sl, strict=True)))
        return {v: np.asarray(block[v].transpose(*self.dims).values) for v in self.variables + self.condition}

    def _stream(self, batch_size, shuffle, rng, drop_last, prefetch):
        import torch

        blocks = self._blocks()
        order = rng.permutation(len(blocks)) if shuffle else np.arange(len(blocks))
        pool = None
        if prefetch and len(blocks) > 1:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=1)
        try:
            pending = None
            carry_f = carry_y = None
            for k, b in enumerate(order):
                sl = blocks[b]
                raw = pending.result() if pending is not None else self._read_block(sl)
                pending = None
                if pool is not None and k + 1 < len(order):
                    pending = pool.submit(self._read_block, blocks[order[k + 1]])
                shape = tuple(x.stop - x.start for x in sl)
                _, feats, y = self._points_of_block(raw, [x.start for x in sl], shape)
                del raw
                n = len(y)
                perm = rng.permutation(n) if shuffle else None
                start = 0
                if carry_y is not None and len(carry_y):  # complete the carried partial batch
                    need = batch_size - len(carry_y)
                    take = perm[:need] if perm is not None else np.arange(min(need, n))
                    carry_f = np.concatenate([carry_f, feats[take]])
                    carry_y = np.concatenate([carry_y, y[take]])
                    start = len(take)
                    if len(carry_y) == batch_size:
                        yield torch.from_numpy(carry_f), torch.from_numpy(carry_y)
                        carry_f = carry_y = None
                    else:
                        continue
                n_full = start + ((n - start) // batch_size) * batch_size
                for i in range(start, n_full, batch_size):
                    if perm is not None:
                        idx = perm[i:i + batch_size]
                        yield torch.from_numpy(feats[idx]), torch.from_numpy(y[idx])
                    else:
                        yield (torch.from_numpy(feats[i:i + batch_size].copy()),
                               torch.from_numpy(y[i:i + batch_size].copy()))
                rest = perm[n_full:] if perm is not None else np.arange(n_full, n)
                carry_f, carry_y = feats[rest], y[rest]
                del feats, y
            if carry_y is not None and len(carry_y) and not drop_last:
                yield torch.from_numpy(carry_f), torch.from_numpy(carry_y)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def n_batches(self, batch_size: int) -> int:
        """Number of batches per epoch (computed from the valid-point count)."""
        return math.ceil(self.n_valid / batch_size)

    @property
    def n_valid(self) -> int:
        """Number of valid points (for lazy data, counted in the statistics pass before
        points with NaN coordinates — rare — are dropped)."""
        if self._y is not None:
            return int(self._y.shape[0])
        return self._n_valid

    # -- splitting -------------------------------------------------------------------
    def split(self, fraction: float = 0.1, seed: int = 0) -> tuple[tuple, tuple]:
        """Random ``(features, y)`` train/validation split of the valid points."""
        ti, vi = self.split_indices(fraction, seed)
        return (self.features[ti], self.y[ti]), (self.features[vi], self.y[vi])

    def split_indices(self, fraction: float = 0.1, seed: int = 0, pattern: str = "random"):
        """Indices ``(train, validation)`` of a train/validation split of the valid points.

        Parameters
        ----------
        fraction
            Share of the points held out for validation.
        seed
            Seed of the split.
        pattern
            ``"random"``: random points (the split of :meth:`split`). ``"auto"``: on
            gridded data whose gaps are organised (clouds, swaths), disks of points
            that lie as far from the remaining observations as the gap points lie
            from the observations (:func:`xsciml._holdout.gap_shaped_holdout`);
            random points otherwise. The choice is in :attr:`split_info`.
        """
        import torch

        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        if pattern not in ("random", "auto"):
            raise ValueError(f"pattern must be 'random' or 'auto', got {pattern!r}")
        self.split_info = {"pattern": "random"}
        if pattern == "auto":
            from ._holdout import gap_shaped_holdout

            space_dims = {d for n in self.encoder.space for d in self._coords[n].dims}
            if self.encoder.time is not None and set(self._coords[self.encoder.time].dims) & space_dims:
                self.split_info["reason"] = "scattered points (time varies along the spatial dims)"
            else:
                valid = cast(np.ndarray, self.layout.valid)  # CoordinateData lists its valid points
                held, self.split_info = gap_shaped_holdout(
                    valid, self.dims, self.shape, sorted(space_dims, key=str), fraction, seed)
                if held is not None:
                    return torch.from_numpy(np.flatnonzero(~held)), torch.from_numpy(np.flatnonzero(held))
        n = len(self)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        n_val = max(1, int(round(fraction * n)))
        return perm[n_val:], perm[:n_val]

    # -- back to labeled data ---------------------------------------------------------
    def to_dataarray(self, values, variable: str | None = None, name: str | None = None,
                     sample_dim: str = "sample") -> xr.DataArray:
        """One column of predictions back onto the original coordinates.

        Parameters
        ----------
        values
            ``[N]``, ``[N, Dy]`` or ``[S, N, Dy]`` (samples) tensor or array.
        variable
            Which variable's column (and attrs) to use; default the first.
        name
            Name of the result (default the variable's).
        sample_dim
            Name of the leading dimension for ``[S, N, Dy]`` input.
        """
        variable = variable or self.variables[0]
        if variable not in self.variables:
            raise KeyError(f"variable {variable!r} is not one of {self.variables}")
        from ._utils import to_numpy

        v = to_numpy(values)
        j = self.variables.index(variable)
        if v.ndim >= 2 and v.shape[-1] == len(self.variables) and v.shape[-2] == len(self):
            v = v[..., j]
        elif v.ndim == 1 or (v.ndim == 2 and v.shape[-1] == len(self)):
            pass
        else:
            raise ValueError(
                f"values of shape {v.shape} do not match N={len(self)} points and "
                f"Dy={len(self.variables)} variables"
            )
        lead = (sample_dim,) if v.ndim == 2 else ()
        return self.layout.unflatten(v, name or variable, self.var_attrs.get(variable, {}), lead)

    def to_dataset(self, values, suffix: str = "", sample_dim: str = "sample") -> xr.Dataset:
        """All columns ``[N, Dy]`` (or ``[S, N, Dy]``) back to a Dataset of the variables."""
        return xr.Dataset({f"{v}{suffix}": self.to_dataarray(values, v, f"{v}{suffix}", sample_dim)
                           for v in self.variables})

    def target(self, target: Any = None, time: Any = None) -> TargetPoints:
        """Encode new coordinates with this data's encoder (see :func:`target_points`)."""
        return target_points(self.encoder, self if target is None else target, time=time,
                             dtype=self.dtype, condition=self.condition,
                             condition_scaler=self.condition_scaler)


# =========================================================================== builders
def prepare_variables(obj: xr.Dataset | xr.DataArray, variables, argname: str = "obj"
             ) -> tuple[xr.Dataset, list[str]]:
    """A Dataset and the list of variable names to use (the only one when not named)."""
    if isinstance(obj, xr.DataArray):
        # an unnamed DataArray takes the one name it is asked for, else "values"
        name = obj.name if obj.name is not None else (variables if isinstance(variables, str) else "values")
        obj = obj.to_dataset(name=name)
        if variables is None:
            variables = [name]
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"{argname} must be an xarray Dataset or DataArray, got {type(obj).__name__}")
    if variables is None:
        if len(obj.data_vars) != 1:
            raise ValueError(
                f"{argname} has several data variables, {list(obj.data_vars)}: name the one(s) to "
                "use, e.g. 'sst' or ['u', 'v']"
            )
        variables = list(obj.data_vars)
    variables = [variables] if isinstance(variables, str) else [str(v) for v in variables]
    if not variables:
        raise ValueError("variables is empty; name at least one variable")
    return obj, variables


def to_tensors(  # noqa: C901 - one branch per input layout, kept together
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    space: str | Sequence[str] | None = None,
    time: str | None = "auto",
    condition: str | Sequence[str] = (),
    sphere: bool | str = "auto",
    time_units: str = "days",
    time_origin: str = "1970-01-01",
    time_features: Any = (),
    encoder: CoordinateEncoder | None = None,
    dtype: Any = None,
) -> CoordinateData:
    """Coordinate-based tensors ``{(x_n, t_n), y_n}`` of every valid observation.

    Every variable (and condition variable) is decoded (CF packing), broadcast against
    its coordinates, and flattened; points where any of them is NaN — or where a
    coordinate is NaN — are dropped, never filled. Works for regular grids (any dim
    order, descending latitude), 2-D curvilinear coordinates (``lat(y, x)``), and
    scattered observations (``obs`` with ``lon(obs)``, ``lat(obs)``, ``time(obs)``;
    coordinates may also be data variables).

    Parameters
    ----------
    obj
        Dataset (or DataArray) — in memory or dask-backed.
    variables
        Variable name(s) to predict; several give ``y`` columns ``Dy > 1``.
    space
        Space coordinate names, e.g. ``("lat", "lon")``. Default: CF latitude/longitude
        when present, otherwise the dimension coordinates other than time.
    time
        Time coordinate name, ``None`` for a static field, ``"auto"`` for ``"time"`` when
        present. Datetime64 and cftime (any CF calendar) become float ``time_units since
        time_origin`` in the data's calendar; a time *dimension* must be unique and sorted.
    condition
        Extra variables given to the network as inputs (conditional fields ``f(x, t, μ)``),
        standardised; appended after the coordinate features.
    sphere
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    time_units
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    time_origin
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    time_features
        Coordinate encoding, see :class:`~xsciml.coords.CoordinateEncoder`.
    encoder
        A fitted encoder to reuse (e.g. a model's) instead of fitting a new one.
    dtype
        torch dtype of the tensors (default ``torch.float32``).

    Returns
    -------
    CoordinateData
        ``.x [N, Ds]``, ``.t [N]``, ``.y [N, Dy]``, ``.features [N, F]``, ``.batches()``,
        and ``.to_dataset(pred)`` to go back to labeled data.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"sst": (("lat", "lon"), [[1.0, np.nan], [3.0, 4.0]])},
    ...                 coords={"lat": [10.0, 0.0], "lon": [0.0, 1.0]})
    >>> data = to_tensors(ds, "sst", time=None)
    >>> data.y.squeeze(-1).tolist(), tuple(data.x.shape)
    ([1.0, 3.0, 4.0], (3, 2))
    >>> data.to_dataarray(data.y).values.tolist()
    [[1.0, nan], [3.0, 4.0]]
    """
    ds, variables = prepare_variables(obj, variables)
    condition = [condition] if isinstance(condition, str) else list(condition)
    for v in variables:
        _get_variable(ds, v)
    for c in condition:
        _get_variable(ds, c, "condition variable")
    dup = set(variables) & set(condition)
    if dup:
        raise ValueError(f"{sorted(dup)} given both as variables and as condition")
    decoded = {v: decode_variable(ds[v]) for v in variables + condition}
    for v, da in decoded.items():
        _check_numeric(da, v, "variable" if v in variables else "condition variable")
    dims = decoded[variables[0]].dims
    for v in variables[1:]:
        if set(decoded[v].dims) != set(dims):
            raise ValueError(
                f"variables {variables[0]!r} {tuple(dims)} and {v!r} {decoded[v].dims} have different "
                "dimensions; predict them separately or broadcast them first"
            )
    for c in condition:
        extra = set(decoded[c].dims) - set(dims)
        if extra:
            raise ValueError(
                f"condition variable {c!r} has dimension(s) {sorted(map(str, extra))} that "
                f"{variables[0]!r} {tuple(dims)} does not have"
            )
    ds = ds.assign({v: da.transpose(*[d for d in dims if d in da.dims]) for v, da in decoded.items()})
    for c in condition:
        ds[c] = ds[c].broadcast_like(ds[variables[0]]).transpose(*dims)
    ds[variables[0]] = ds[variables[0]].transpose(*dims)
    for v in variables[1:]:
        ds[v] = ds[v].transpose(*dims)

    if encoder is not None:
        space, time = encoder.space, encoder.time
        _resolve_space_time(ds, space, time)
    else:
        if time == "auto":
            time = _default_time(ds, dims)
        if space is None:
            space = default_space(ds, dims, time)
        space, time = _resolve_space_time(ds, space, time)
    for name in list(space) + ([time] if time else []):
        coord = ds[name]
        extra_dims = [d for d in coord.dims if d not in dims]
        if extra_dims:
            raise ValueError(
                f"coordinate {name!r} has dimension(s) {extra_dims} that variable {variables[0]!r} "
                f"{tuple(dims)} does not have; select or broadcast first"
            )
        if name in space:
            coord = decode_variable(coord)
            check_numeric(coord, f"space coordinate {name!r}")
            ds = ds.assign_coords({name: coord}) if name in ds.coords else ds.assign({name: coord})
    for name in list(space) + ([time] if time else []):
        if is_dask_backed(ds[name]):
            computed = {name: ds[name].compute()}
            ds = ds.assign_coords(computed) if name in ds.coords else ds.assign(computed)
    if time is not None:
        time_kind(ds[time].values)  # clear error for non-time dtypes
        _check_time_axis(ds, time, space)
    if encoder is None:
        encoder = CoordinateEncoder(space=space, time=time, sphere=sphere, time_units=time_units,
                                    time_origin=time_origin, time_features=time_features)
        encoder.fit({n: ds[n].values for n in space},
                    ds[time].values if time else None,
                    coord_meta={n: ds[n] for n in space})
    attrs = {v: dict(ds[v].attrs) for v in variables}
    return CoordinateData(ds, variables, encoder, condition, dtype, attrs)


def check_target_domain(encoder: CoordinateEncoder, target: Any, *, time: Any = None,
                        where: str = "predict") -> dict[str, float]:
    """Warn when a target's coordinates lie outside the model's training range.

    Reads only the target's coordinates (a dask-backed target's data are not
    computed) and hands them to :func:`xsciml.coords.warn_outside`: one
    ``UserWarning`` per coordinate (and time) with values outside the training range,
    naming the coordinate, the fraction outside and both ranges. A latitude beyond
    ±90° is refused (``ValueError``). Targets given as encoded points
    (:class:`CoordinateData`, :class:`TargetPoints`) are not checked.

    Parameters
    ----------
    encoder
        The model's fitted encoder.
    target
        As for :func:`target_points`.
    time
        Time value(s) used when the target has no time coordinate.
    where
        The calling method's name, starting the message.

    Returns
    -------
    dict
        ``{name: fraction outside}`` for each coordinate found.

    Examples
    --------
    >>> import numpy as np, warnings
    >>> from xsciml.coords import CoordinateEncoder
    >>> enc = CoordinateEncoder(space=("x",)).fit({"x": np.arange(0.0, 10.0)})
    >>> check_target_domain(enc, {"x": np.linspace(0.0, 9.0, 19)})
    {'x': 0.0}
    """
    import pandas as pd

    from .coords import warn_outside

    if isinstance(target, (CoordinateData, TargetPoints)):
        return {}
    names = list(encoder.space) + ([encoder.time] if encoder.time else [])
    raw: dict[str, Any] = {}
    if isinstance(target, pd.DataFrame):
        raw = {n: target[n].to_numpy() for n in names if n in target.columns}
    elif isinstance(target, (xr.Dataset, xr.DataArray)):
        for n in names:
            if n in target.coords or (isinstance(target, xr.Dataset) and n in target.variables):
                raw[n] = decode_variable(target[n]).values
    elif isinstance(target, Mapping):
        for n in names:
            if n in target:
                v = target[n]
                raw[n] = decode_variable(v).values if isinstance(v, xr.DataArray) else np.asarray(v)
    else:
        return {}
    tvals = raw.pop(encoder.time, None) if encoder.time else None
    if encoder.time and tvals is None and time is not None:
        tvals = np.atleast_1d(np.asarray(time))
    space = {}
    for n, v in raw.items():
        if np.asarray(v).dtype.kind not in "biuf":
            return {}  # target_points gives the clear error
        space[n] = v
    return warn_outside(encoder, space, tvals, where=where)


def target_points(encoder: CoordinateEncoder, target: Any, *, time: Any = None,  # noqa: C901 - one branch per target layout, kept together
                  dtype: Any = None, condition: Sequence[str] = (),
                  condition_scaler: Scaler | None = None) -> TargetPoints:
    """Encode new coordinates for prediction, remembering how to label the outputs.

    Parameters
    ----------
    encoder
        A fitted :class:`~xsciml.coords.CoordinateEncoder` (a model's).
    target
        * a Dataset/DataArray: its coordinates with the encoder's names (any grid:
          regular, curvilinear, scattered);
        * a dict of 1-D arrays ``{name: values}``: a new regular grid, one dimension per
          key (e.g. a 4× finer grid);
        * a :class:`pandas.DataFrame` with one column per coordinate: scattered points
          along a ``point`` dimension;
        * a :class:`CoordinateData`: its valid points.
    time
        Time value(s) to use when the target has no time coordinate: a scalar or a 1-D
        array (added as a new ``time`` dimension).
    dtype
        torch dtype of the features (default float32).
    condition
        Condition variables the model takes as inputs: the target Dataset must hold them
        (broadcast against its coordinates); points where one is NaN are NaN in the output;
        an infinite condition value is refused (``ValueError``).
    condition_scaler
        Standardises the condition variables before they are appended to the features.

    Examples
    --------
    >>> import numpy as np
    >>> from xsciml.coords import CoordinateEncoder
    >>> enc = CoordinateEncoder(space=("x",)).fit({"x": np.array([0.0, 1.0])})
    >>> tp = target_points(enc, {"x": np.linspace(0, 1, 5)})
    >>> tuple(tp.features.shape), tp.to_dataarray(tp.features[:, 0]).dims
    ((5, 1), ('x',))
    """
    import pandas as pd
    import torch

    dtype = dtype if dtype is not None else torch.float32
    names = list(encoder.space) + ([encoder.time] if encoder.time else [])
    condition = [condition] if isinstance(condition, str) else list(condition)
    if isinstance(target, CoordinateData):
        if list(target.condition) != condition:
            raise ValueError(f"target data has condition {target.condition}, the model needs {condition}")
        return TargetPoints(encoder, target.layout, target.features.to(dtype), dtype)
    if isinstance(target, pd.DataFrame):
        target = xr.Dataset.from_dataframe(target.reset_index(drop=True).rename_axis("point"))
        target = target.set_coords([n for n in target.data_vars])
    elif isinstance(target, Mapping) and not isinstance(target, (xr.Dataset, xr.DataArray)):
        coords = {}
        for k, v in target.items():
            arr = np.asarray(v.values if isinstance(v, xr.DataArray) else v)
            if arr.ndim != 1:
                raise ValueError(
                    f"target coordinate {k!r} has {arr.ndim} dimensions; a dict target takes 1-D "
                    "arrays (one grid axis each). For scattered points pass a pandas DataFrame or "
                    "a Dataset whose coordinates share one dimension"
                )
            coords[k] = xr.Variable((k,), arr, attrs=getattr(v, "attrs", {}))
        target = xr.Dataset(coords=coords)
    if isinstance(target, xr.DataArray):
        target = target.coords.to_dataset()
    if not isinstance(target, xr.Dataset):
        raise TypeError(
            "target must be a Dataset/DataArray, a dict of 1-D coordinates or a pandas DataFrame, "
            f"got {type(target).__name__}"
        )
    if encoder.time and encoder.time not in target.variables:
        if time is None:
            raise ValueError(
                f"the model needs time coordinate {encoder.time!r}: add it to the target or pass time=..."
            )
        tv = np.atleast_1d(np.asarray(time))
        target = target.expand_dims({encoder.time: tv})
        target = target.assign_coords({encoder.time: (encoder.time, tv)})
    missing = [n for n in names if n not in target.variables]
    if missing:
        raise KeyError(
            f"target lacks coordinate(s) {missing}; the model was fitted on space={encoder.space}, "
            f"time={encoder.time!r}; target has {list(target.variables)}"
        )
    missing_c = [c for c in condition if c not in target.variables]
    if missing_c:
        raise KeyError(
            f"the model is conditioned on {condition} but the target lacks {missing_c}; pass a "
            "Dataset holding them on the target coordinates"
        )
    dims: list[Hashable] = []
    for d in target.dims:  # keep the target's dim order
        if any(d in target[n].dims for n in names + condition):
            dims.append(d)
    sizes = tuple(int(target.sizes[d]) for d in dims)
    keep = {k: c.variable for k, c in target.coords.items() if set(c.dims) <= set(dims)}
    for n in names:
        keep.setdefault(n, target[n].variable)
    cds = xr.Dataset(coords=keep)
    for n in names:
        if is_dask_backed(cds[n]):
            cds = cds.assign_coords({n: cds[n].compute()})
    size = int(np.prod(sizes, dtype=np.int64))
    flat = np.arange(size)
    space = {}
    ok = np.ones(size, dtype=bool)
    for n in encoder.space:
        vals = decode_variable(cds[n])
        check_numeric(vals, f"target coordinate {n!r}")
        cds = cds.assign_coords({n: vals})
        space[n] = _gather_coord(cds, n, dims, sizes, flat).astype(np.float64)
        ok &= np.isfinite(space[n])
    tvals = None
    if encoder.time:
        tvals = _gather_coord(cds, encoder.time, dims, sizes, flat)
        k = time_kind(tvals)
        if k == "datetime64":
            ok &= ~np.isnat(tvals)
        elif k == "numeric":
            ok &= np.isfinite(tvals.astype(float))
    cvals = []
    for c in condition:
        cda = decode_variable(target[c])
        _check_numeric(cda, c, "condition variable")
        cds_c = xr.Dataset(coords={c: cda.variable})
        cv = _gather_coord(cds_c, c, dims, sizes, flat).astype(np.float64)
        n_inf = int(np.count_nonzero(np.isinf(cv)))
        if n_inf:  # as in training: NaN marks a missing condition, inf is an error
            raise ValueError(
                f"condition variable {c!r} contains {n_inf} infinite value(s) at the prediction "
                f"points; if they mark missing data, replace them first: "
                f"target[{c!r}] = target[{c!r}].where(np.isfinite(target[{c!r}]))"
            )
        ok &= np.isfinite(cv)
        cvals.append(cv)
    idx = np.flatnonzero(ok)
    feats = encoder.transform({n: v[idx] for n, v in space.items()},
                              tvals[idx] if tvals is not None else None)
    if condition:
        if condition_scaler is None:
            raise ValueError("condition_scaler is needed with condition variables")
        cstack = np.stack([cv[idx] for cv in cvals], axis=-1)
        feats = np.concatenate([feats, condition_scaler.transform(cstack)], axis=-1)
    layout = PointLayout(tuple(dims), sizes, cds, None if ok.all() else idx)
    return TargetPoints(encoder, layout, torch.as_tensor(feats, dtype=dtype), dtype)


# =========================================================================== gridded fields
@dataclass
class GridData:
    """Gridded snapshots ``values [S, C, H, W]`` (or ``[S, C, N]``) with a validity mask.

    ``values`` has NaNs replaced by ``fill_value``; ``mask`` is True where a value exists.
    Built by :func:`to_fields`; :meth:`to_dataarray`/:meth:`to_dataset` put model
    outputs back on the snapshots' coordinates.
    """

    values: Any
    mask: Any
    variables: list[str]
    sample_dims: tuple[Hashable, ...]
    sample_shape: tuple[int, ...]
    space_dims: tuple[Hashable, ...]
    coords: xr.Dataset
    var_attrs: dict[str, dict] = field(default_factory=dict)
    scaler: Scaler | None = None

    @property
    def n_samples(self) -> int:
        return int(self.values.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[2:])

    def to_dataarray(self, values, variable: str | None = None, name: str | None = None,
                     leading_dim: str = "sample", masked: bool = True,
                     sample_coords: bool = True) -> xr.DataArray:
        """Model output ``[S, C, *space]`` (or ``[S, *space]`` for one channel, or a leading
        ensemble dim ``[n, S, C, *space]``) → DataArray on the original coordinates.

        ``masked=True`` puts NaN where the input had no data (land, gaps).
        ``sample_coords=False`` allows any number of snapshots (e.g. generated ones),
        labelled by a plain ``sample`` index instead of the input's sample coordinates.
        """
        from ._utils import to_numpy

        variable = variable or self.variables[0]
        if variable not in self.variables:
            raise KeyError(f"variable {variable!r} is not one of {self.variables}")
        j = self.variables.index(variable)
        v = to_numpy(values)
        nsp = len(self.space_dims)
        if v.shape[-nsp:] != self.spatial_shape:
            raise ValueError(f"values of shape {v.shape} do not end in the grid shape {self.spatial_shape}")
        if v.ndim == nsp + 1:  # [S, *space]
            v = v[:, None]
        if v.ndim == nsp + 2:
            v = v[:, j]
            lead: tuple = ()
        elif v.ndim == nsp + 3:
            v = v[:, :, j]
            lead = (leading_dim,)
        else:
            raise ValueError(f"values of shape {v.shape} are not [S, C, *space] or [n, S, C, *space]")
        if masked:
            m = to_numpy(self.mask)[:, j]
            if sample_coords or v.shape[len(lead)] == m.shape[0]:
                v = np.where(m, v, np.nan) if not lead else np.where(m[None], v, np.nan)
        coords = {k: c.variable for k, c in self.coords.coords.items()
                  if set(c.dims) <= set(self.space_dims) or sample_coords}
        S = v.shape[len(lead)]
        if sample_coords:
            if S != self.n_samples:
                raise ValueError(f"got {S} snapshots but the data has {self.n_samples}; "
                                 "use sample_coords=False for new snapshots")
            v = v.reshape(v.shape[:len(lead)] + self.sample_shape + v.shape[len(lead) + 1:])
            dims = lead + tuple(self.sample_dims) + tuple(self.space_dims)
        else:
            dims = lead + ("sample",) + tuple(self.space_dims)
        return xr.DataArray(v, dims=dims, coords=coords, name=name or variable,
                            attrs=self.var_attrs.get(variable, {}))

    def to_dataset(self, values, **kw) -> xr.Dataset:
        """All channels back to a Dataset (see :meth:`to_dataarray`)."""
        return xr.Dataset({v: self.to_dataarray(values, v, **kw) for v in self.variables})


def to_fields(
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    sample_dim: Hashable | Sequence[Hashable] = "time",
    fill_value: float = 0.0,
    dtype: Any = None,
) -> GridData:
    """Whole snapshots as ``[S, C, H, W]`` (2 space dims) or ``[S, C, N]`` (1 space dim).

    Channels ``C`` are the variables; every dimension other than ``sample_dim`` is a
    space dimension, kept in the variable's order (a descending latitude stays
    descending). Several sample dims (e.g. ``("trajectory", "time")``) are stacked.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.arange(12.0).reshape(3, 2, 2), dims=("time", "y", "x"), name="u")
    >>> g = to_fields(da, sample_dim="time")
    >>> tuple(g.values.shape), bool(g.mask.all())
    ((3, 1, 2, 2), True)
    >>> bool((g.to_dataarray(g.values) == da).all())
    True
    """
    import torch

    ds, variables = prepare_variables(obj, variables)
    sample_dims = ((sample_dim,) if isinstance(sample_dim, (str,)) or not isinstance(sample_dim, Sequence)
                   else tuple(sample_dim))
    das = []
    for v in variables:
        da = decode_variable(_get_variable(ds, v))
        _check_numeric(da, v, "variable")
        das.append(da)
    dims = das[0].dims
    for sd in sample_dims:
        if sd not in dims:
            raise KeyError(f"sample_dim {sd!r} is not a dimension of {variables[0]!r}; its dims are {dims}")
    for v, da in zip(variables, das, strict=True):
        if set(da.dims) != set(dims):
            raise ValueError(f"variables {variables[0]!r} {dims} and {v!r} {da.dims} are on different grids")
        for d in dims:
            if da.sizes[d] != das[0].sizes[d]:
                raise ValueError(f"variables {variables[0]!r} and {v!r} differ in size along {d!r}")
    space_dims = tuple(d for d in dims if d not in sample_dims)
    if len(space_dims) not in (1, 2):
        raise ValueError(
            f"to_fields needs 1 or 2 space dimensions, got {space_dims}; stack or select the others "
            "(e.g. .isel(level=0) or .stack(point=...))"
        )
    arrs = [np.asarray(da.transpose(*sample_dims, *space_dims).values, dtype=np.float64) for da in das]
    for v, a in zip(variables, arrs, strict=True):
        if np.isinf(a).any():
            raise ValueError(f"variable {v!r} contains infinite values; replace them with NaN first")
        if not np.isfinite(a).any():
            raise ValueError(f"variable {v!r} is all-NaN")
    sample_shape = arrs[0].shape[:len(sample_dims)]
    S = int(np.prod(sample_shape))
    stacked = np.stack([a.reshape((S,) + a.shape[len(sample_dims):]) for a in arrs], axis=1)
    mask = np.isfinite(stacked)
    scaler = Scaler.from_moments([np.nanmean(a) for a in arrs], [np.nanstd(a) for a in arrs])
    vals = np.where(mask, stacked, fill_value)
    dt = dtype if dtype is not None else torch.float32
    keep = {k: c.variable for k, c in ds.coords.items() if set(c.dims) <= set(dims)}
    return GridData(torch.as_tensor(vals, dtype=dt), torch.as_tensor(mask), variables, sample_dims,
                    tuple(sample_shape), space_dims, xr.Dataset(coords=keep),
                    {v: dict(ds[v].attrs) for v in variables}, scaler)
