"""Gridded snapshot fields (:class:`GridData`) and :func:`to_fields`."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    pass
from ._labels import check_data_numeric, decode_variable, get_variable, prepare_variables
from ._points import Scaler


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
        from .._utils import to_numpy

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
        da = decode_variable(get_variable(ds, v))
        check_data_numeric(da, v, "variable")
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
