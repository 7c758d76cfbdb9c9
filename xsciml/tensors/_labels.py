"""Variables and coordinates of labeled data: CF decoding, checks, the space and time coordinates."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .._utils import check_numeric
from ..coords import time_kind
from ..parallel import is_dask_backed

if TYPE_CHECKING:
    pass



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


def get_variable(ds: xr.Dataset, name: Hashable, role: str = "variable") -> xr.DataArray:
    if name not in ds.variables:
        kind = "data variables" if role == "variable" else "variables and coordinates"
        avail = list(ds.data_vars) if role == "variable" else list(ds.variables)
        raise KeyError(f"{role} {name!r} not found in the Dataset; available {kind}: {avail}")
    return ds[name]


def check_data_numeric(da: xr.DataArray, name: Hashable, role: str) -> None:
    hint = " (decode times with xr.decode_cf or pass it as the time coordinate)" if da.dtype.kind == "M" else ""
    check_numeric(da, f"{role} {name!r}", "; only numbers can become tensors" + hint)


def check_time_axis(ds: xr.Dataset, time: str, space: Sequence[str]) -> None:
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
        from ..coords import time_to_float

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


def gather_coord(ds: xr.Dataset, name: Hashable, dims: Sequence[Hashable], shape, flat_idx,
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


def resolve_space_time(ds: xr.Dataset, space: str | Sequence[str] | None, time: str | None,
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
    from ..coords import is_latitude, is_longitude

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
        out[n] = gather_coord(coords, n, dims, shape, flat).astype(np.float64)
    return out


def default_time(ds: xr.Dataset, dims: Sequence[Hashable]) -> str | None:
    for name in ("time", "t"):
        if name in ds.coords and set(ds[name].dims) <= set(dims):
            return name
    return None


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
