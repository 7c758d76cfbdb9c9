"""Point sets: the scaler, the flat-point layout of a labeled array, prediction targets."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .._utils import check_numeric
from ..coords import CoordinateEncoder, time_kind
from ..parallel import is_dask_backed

if TYPE_CHECKING:
    pass
from ._labels import check_data_numeric, decode_variable, gather_coord


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


def block_stats(*blocks: Any) -> np.ndarray:
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


def combine_stats(parts: Sequence[np.ndarray]) -> np.ndarray:
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
        from .._utils import to_numpy

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


# =========================================================================== points
class PointSet:
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
class TargetPoints(PointSet):
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

    from ..coords import warn_outside
    from ._coordinate_data import CoordinateData  # it builds targets too: imported at call time

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

    from ._coordinate_data import CoordinateData  # it builds targets too: imported at call time

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
        space[n] = gather_coord(cds, n, dims, sizes, flat).astype(np.float64)
        ok &= np.isfinite(space[n])
    tvals = None
    if encoder.time:
        tvals = gather_coord(cds, encoder.time, dims, sizes, flat)
        k = time_kind(tvals)
        if k == "datetime64":
            ok &= ~np.isnat(tvals)
        elif k == "numeric":
            ok &= np.isfinite(tvals.astype(float))
    cvals = []
    for c in condition:
        cda = decode_variable(target[c])
        check_data_numeric(cda, c, "condition variable")
        cds_c = xr.Dataset(coords={c: cda.variable})
        cv = gather_coord(cds_c, c, dims, sizes, flat).astype(np.float64)
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
