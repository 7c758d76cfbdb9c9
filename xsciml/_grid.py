"""The fixed grid of gridded-snapshot estimators, and its labelled (de)serialisation.

Shared by :mod:`xsciml.models.amortized` (PCA, autoencoders) and :mod:`xsciml.downscale`
(the OT debiaser and the diffusion prior): :class:`Grid` records a model's variables,
space dims, sizes, coordinates and attrs at fit time, checks new snapshots against it
with clear errors, and stores its coordinates as JSON + tensors (no pickling);
:func:`as_dataset` and :func:`sample_info` normalise the input and describe the
snapshots a model was fitted on. Private to the package.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from .tensors import decode_variable

__all__ = ["Grid", "as_dataset", "json_attrs", "json_value", "sample_info", "variable_from_state",
           "variable_state"]


def json_value(v: Any) -> Any:
    """``v`` as a JSON value: numbers, strings and numeric/str lists as they are, else ``str(v)``."""
    if isinstance(v, (str, bool, int, float)) or v is None:
        return v
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return v.item()
    if isinstance(v, (list, tuple, np.ndarray)) and np.asarray(v).dtype.kind in "biufU":
        return np.asarray(v).tolist()
    return str(v)


def json_attrs(attrs: Mapping[Any, Any]) -> dict[str, Any]:
    """An attrs dict with string keys and JSON values (:func:`json_value`)."""
    return {str(k): json_value(v) for k, v in attrs.items()}


def variable_state(var: xr.Variable, key: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """A coordinate as (JSON entry, tensors); ``None`` for values we cannot store."""
    from .coords import time_calendar, time_kind, time_to_float

    vals = np.asarray(var.values)
    entry: dict[str, Any] = {"dims": [str(d) for d in var.dims], "attrs": json_attrs(var.attrs)}
    tensors: dict[str, torch.Tensor] = {}
    if vals.dtype.kind in "biuf":
        entry.update(kind="numeric", dtype=str(vals.dtype))
        store = vals.astype(np.int64) if vals.dtype.kind == "u" else vals
        tensors[key] = torch.from_numpy(np.ascontiguousarray(store).copy())
    elif vals.dtype.kind in "mM":
        entry.update(kind="datetime", dtype=str(vals.dtype))
        tensors[key] = torch.from_numpy(vals.view(np.int64).copy())
    elif vals.dtype.kind == "U":
        entry.update(kind="str", values=vals.tolist())
    elif vals.dtype.kind == "O" and vals.size and time_kind(vals) == "cftime":
        entry.update(kind="cftime", calendar=time_calendar(vals))
        tensors[key] = torch.from_numpy(time_to_float(vals, "days", "1970-01-01"))
    else:
        return None
    return entry, tensors


def variable_from_state(entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                         key: str) -> xr.Variable:
    """The coordinate stored by :func:`variable_state` under ``key``."""
    from .coords import float_to_time

    kind = entry["kind"]
    if kind == "str":
        vals = np.asarray(entry["values"])
    else:
        raw = tensors[key].cpu().numpy()
        if kind == "numeric":
            vals = raw.astype(entry["dtype"])
        elif kind == "datetime":
            vals = raw.astype(np.int64).view(entry["dtype"])
        else:  # cftime
            vals = float_to_time(raw, "days", "1970-01-01", entry["calendar"])
    return xr.Variable(tuple(entry["dims"]), vals, attrs=dict(entry["attrs"]))


def as_dataset(obj: Any, variables: Any, argname: str = "obj") -> tuple[xr.Dataset, list[str]]:
    """``obj`` (Dataset or DataArray) as a Dataset and the chosen variables, all present."""
    from .tensors import prepare_variables

    obj, variables = prepare_variables(obj, variables, argname)
    missing = [v for v in variables if v not in obj.data_vars]
    if missing:
        raise KeyError(f"variable(s) {missing} not found; available data variables: {list(obj.data_vars)}")
    return obj, variables


@dataclass
class Grid:
    """The training grid: variables, space dims and sizes, coordinates, attrs."""

    variables: list[str]
    space_dims: tuple[str, ...]
    shape: tuple[int, ...]
    coords: dict[str, xr.Variable]
    var_attrs: dict[str, dict[str, Any]]

    @property
    def n_points(self) -> int:
        return math.prod(self.shape)

    @property
    def n_features(self) -> int:
        return len(self.variables) * self.n_points

    @classmethod
    def from_data(cls, ds: xr.Dataset, variables: list[str], sample_dim: Hashable) -> Grid:
        first = ds[variables[0]]
        if sample_dim not in first.dims:
            raise KeyError(
                f"sample_dim {sample_dim!r} is not a dimension of {variables[0]!r}; its dims are "
                f"{first.dims}. Pass the dimension that indexes snapshots (time steps, members...)"
            )
        space = tuple(str(d) for d in first.dims if d != sample_dim)
        if not space:
            raise ValueError(f"{variables[0]!r} has no dimension besides sample_dim {sample_dim!r}")
        for v in variables[1:]:
            da = ds[v]
            if set(da.dims) != set(first.dims) or any(da.sizes[d] != first.sizes[d] for d in first.dims):
                raise ValueError(
                    f"variables {variables[0]!r} {dict(first.sizes)} and {v!r} {dict(da.sizes)} are on "
                    "different grids; model them separately or regrid first"
                )
        coords = {str(k): c.variable for k, c in ds.coords.items()
                  if c.ndim > 0 and set(c.dims) <= set(space)}
        for k, c in list(coords.items()):
            if c.chunks is not None:
                coords[k] = c.compute()
        return cls(list(variables), space, tuple(int(first.sizes[d]) for d in space), coords,
                   {v: json_attrs(ds[v].attrs) for v in variables})

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        entries, tensors = {}, {}
        for name, var in self.coords.items():
            state = variable_state(var, f"grid.{name}")
            if state is not None:
                entries[name] = state[0]
                tensors.update(state[1])
        cfg = {"variables": self.variables, "space_dims": list(self.space_dims),
               "shape": list(self.shape), "coords": entries, "var_attrs": self.var_attrs}
        return cfg, tensors

    @classmethod
    def from_state(cls, cfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Grid:
        coords = {name: variable_from_state(e, tensors, f"grid.{name}")
                  for name, e in cfg["coords"].items()}
        return cls(list(cfg["variables"]), tuple(cfg["space_dims"]), tuple(cfg["shape"]), coords,
                   {k: dict(v) for k, v in cfg["var_attrs"].items()})

    def dataset(self, valid: np.ndarray | None = None) -> xr.Dataset:
        """Coordinates of the grid, with ``<var>_valid`` masks when ``valid [C, *space]`` given."""
        out = xr.Dataset(coords=dict(self.coords))
        if valid is not None:
            for j, v in enumerate(self.variables):
                out[f"{v}_valid"] = (self.space_dims, np.asarray(valid[j], dtype=bool))
        return out

    def check(self, ds: xr.Dataset) -> list[xr.DataArray]:
        """Each variable of ``ds`` decoded and transposed to ``(..., *space_dims)``; clear
        errors for missing variables or snapshots on another grid."""
        missing = [v for v in self.variables if v not in ds.data_vars]
        if missing:
            raise KeyError(f"the data lack {missing}; the model was fitted on {self.variables}")
        out = []
        for v in self.variables:
            da = decode_variable(ds[v])
            if da.dtype.kind not in "biuf":
                raise TypeError(f"variable {v!r} has non-numeric dtype {da.dtype}")
            lacking = [d for d in self.space_dims if d not in da.dims]
            if lacking:
                raise ValueError(
                    f"snapshots of {v!r} with dims {da.dims} are on a different grid: the model's "
                    f"space dims are {self.space_dims} (sizes {self.shape}); {lacking} missing"
                )
            for d, n in zip(self.space_dims, self.shape, strict=True):
                if da.sizes[d] != n:
                    raise ValueError(
                        f"snapshots of {v!r} are on a different grid: {d!r} has {da.sizes[d]} points, "
                        f"the model's grid has {n}; interpolate first, e.g. "
                        "obj.interp_like(model.grid_coords) or obj.reindex_like(model.grid_coords)"
                    )
            for name, ref in self.coords.items():
                if name not in da.coords or set(da[name].dims) != set(ref.dims):
                    continue
                new = da[name].transpose(*ref.dims).values
                old = ref.values
                same = (np.allclose(new, old, rtol=1e-6, atol=1e-9, equal_nan=True)
                        if old.dtype.kind in "biuf" and new.dtype.kind in "biuf"
                        else np.array_equal(new, old))
                if not same:
                    raise ValueError(
                        f"snapshots of {v!r} are on a different grid: coordinate {name!r} differs from "
                        "the training grid's (values or order, e.g. ascending vs descending); use "
                        "obj.reindex_like(model.grid_coords) or obj.interp_like(model.grid_coords)"
                    )
            out.append(da.transpose(..., *self.space_dims))
        return out


def sample_info(ds: xr.Dataset, sample_dim: str) -> tuple[xr.Variable | None, dict[str, Any]]:
    """The snapshots' coordinate (computed) and ``{"n_samples", "training_period"?}``."""
    info: dict[str, Any] = {"n_samples": int(ds.sizes[sample_dim])}
    if sample_dim not in ds.coords:
        return None, info
    coord = ds[sample_dim].variable
    if coord.chunks is not None:
        coord = coord.compute()
    vals = coord.values
    if vals.size and vals.dtype.kind in "MO":  # datetime64 or cftime snapshots
        info["training_period"] = f"{vals.min()} .. {vals.max()}"
    return coord, info
