"""Training trajectories of the latent-dynamics models: one preparer for every model.

:func:`prepare_trajectories` checks the data, the time and sample dimensions, cuts at
``train_until`` and resolves the space coordinates (through
:func:`xsciml.tensors.default_space`); the :class:`Trajectories` it returns builds the
``[S, T, P, C]`` value arrays and the per-point coordinates the models train on.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..._grid import as_dataset
from ...tensors import decode_variable, default_space, space_dims, space_values
from ...units import physical_bounds

__all__ = ["Trajectories", "prepare_trajectories", "resolve_sample_dim"]


# =========================================================================== training data
@dataclass
class Trajectories:
    """Training trajectories ``(sample, time, space...)`` of a latent-dynamics model.

    Built by :func:`prepare_trajectories`; the models check the space coordinates their
    way, then call :meth:`check_dims` and build their arrays with :meth:`coordinates`
    and :meth:`values`.

    Attributes
    ----------
    ds
        The data, cut at ``train_until``; a single trajectory has a length-1
        ``"_trajectory"`` dimension.
    variables
        The modelled variables.
    time, time_dim
        The time coordinate and its dimension.
    sample_dim
        The dimension indexing trajectories (``"_trajectory"`` for a single one).
    space
        The space coordinates.
    """

    ds: xr.Dataset
    variables: list[str]
    time: str
    time_dim: Hashable
    sample_dim: Hashable
    space: list[str] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        """Number of trajectories ``S``."""
        return int(self.ds.sizes[self.sample_dim])

    @property
    def n_frames(self) -> int:
        """Number of frames per trajectory ``T``."""
        return int(self.ds.sizes[self.time_dim])

    def check_dims(self) -> list[Hashable]:
        """The space dims (:func:`~xsciml.tensors.space_dims`, in the variables' order), once
        every variable is checked to have exactly ``(sample, time, space...)``."""
        sdims = space_dims(self.ds, self.space, self.ds[self.variables[0]].dims)
        want = {self.sample_dim, self.time_dim, *sdims}
        for v in self.variables:
            dims = self.ds[v].dims
            if set(dims) == want:
                continue
            one = self.sample_dim == "_trajectory"  # sample_dim=None: the dim this class added
            shown = tuple(d for d in dims if d != "_trajectory") if one else dims
            extra = [d for d in dims if d not in want]
            missing = [d for d in want if d not in dims and d != "_trajectory"]
            parts = [f"variable {v!r} has dims {shown}; the fit takes "
                     + ("" if one else f"the trajectories along {self.sample_dim!r}, ")
                     + f"time along {self.time_dim!r} and space along {tuple(sdims)}"]
            if len(extra) == 1:
                parts.append(f"{extra[0]!r} is none of these: select one value (ds.isel({extra[0]}=0)), pass "
                             f"sample_dim={extra[0]!r} to make each value a trajectory of its own, or name it "
                             "in space=")
            elif extra:
                parts.append(f"{extra} are none of these: select one value of each, or stack them into one "
                             f"dimension (ds.stack(sample={extra})) and pass sample_dim='sample'")
            if missing:
                parts.append(f"it lacks {missing}")
            raise ValueError("; ".join(parts))
        return sdims

    def coordinates(self, dims: Sequence[Hashable]) -> dict[str, np.ndarray]:
        """Raw values of each space coordinate at every point of the ``dims`` grid (C order)."""
        return space_values(self.ds, self.space, dims)

    def values(self, dims: Sequence[Hashable], points: np.ndarray | None = None) -> np.ndarray:
        """The variables as one float64 array ``[S, T, P, C]`` (CF-decoded, NaN kept).

        Points are the ``dims`` grid flattened in C order, or the flat indices ``points``
        of it.
        """
        S, T = self.n_samples, self.n_frames
        P = int(np.prod([self.ds.sizes[d] for d in dims], dtype=np.int64))
        cols = []
        for v in self.variables:
            a = np.asarray(decode_variable(self.ds[v]).transpose(self.sample_dim, self.time_dim, *dims).values,
                           dtype=np.float64).reshape(S, T, P)
            cols.append(a if points is None else a[..., points])
        return np.stack(cols, -1)

    def coord_units(self) -> dict[str, str]:
        """The ``units`` attribute of each space coordinate that has one."""
        return {n: str(self.ds[n].attrs["units"]) for n in self.space if "units" in self.ds[n].attrs}

    def var_attrs(self) -> dict[str, dict]:
        """The attributes of each variable."""
        return {v: dict(self.ds[v].attrs) for v in self.variables}


def resolve_sample_dim(obj: Any, sample_dim: Hashable | None) -> Hashable | None:
    """The trajectories' dimension a fit's ``sample_dim`` names: ``"auto"`` (the default of
    the dynamics fits) is ``"trajectory"`` where the data have that dimension and ``None``
    (one trajectory, as most records are) otherwise; any other value is returned as given.

    Examples
    --------
    >>> import xarray as xr
    >>> resolve_sample_dim(xr.Dataset({"u": (("time", "x"), [[0.0, 1.0]])}), "auto") is None
    True
    >>> resolve_sample_dim(xr.Dataset({"u": (("trajectory", "time"), [[0.0, 1.0]])}), "auto")
    'trajectory'
    """
    if isinstance(sample_dim, str) and sample_dim == "auto":
        return "trajectory" if "trajectory" in getattr(obj, "dims", ()) else None
    return sample_dim


def _check_increasing(t: xr.DataArray) -> None:
    """Refuse a time coordinate that is not strictly increasing, naming the first frame
    out of order (frames are cut by time label and forecast forward in time)."""
    index = t.to_index()
    if index.is_monotonic_increasing and index.is_unique:
        return
    values = np.asarray(t.values)
    bad = next(i for i in range(1, len(values)) if not values[i] > values[i - 1])
    raise ValueError(f"the time coordinate {t.name!r} must be strictly increasing: frame {bad} ({values[bad]}) "
                     f"{'repeats' if values[bad] == values[bad - 1] else 'comes before'} frame {bad - 1} "
                     f"({values[bad - 1]}); sort it and drop duplicates first "
                     f"(ds.sortby({t.name!r}).drop_duplicates({t.name!r}))")


def prepare_trajectories(obj: Any, variables: Any, *, time: str, sample_dim: Hashable | None,
                         train_until: Any = None, space: str | Sequence[str] | None = None,
                         latlon: bool = True) -> Trajectories:
    """Training trajectories of a latent-dynamics model, checked and cut at ``train_until``.

    Parameters
    ----------
    obj
        Trajectories (Dataset or DataArray).
    variables
        Variable(s) to model (default the only data variable).
    time
        Time coordinate (1-D along a dimension of the first variable).
    sample_dim
        Dimension indexing trajectories, or ``None`` for a single trajectory (which gets a
        length-1 ``"_trajectory"`` dimension); ``"auto"``: :func:`resolve_sample_dim`.
    train_until
        Last time label kept (default all).
    space
        Space coordinate names; default :func:`xsciml.tensors.default_space` over the
        first variable's dims other than time and sample.
    latlon
        Let the default space be CF latitude/longitude when present (``False``: the
        dimension coordinates only, in the variables' order).

    Returns
    -------
    Trajectories

    Examples
    --------
    >>> import xsciml
    >>> ds = xsciml.datasets.heat(2, 8, n_frames=3, seed=0)
    >>> traj = prepare_trajectories(ds, "u", time="time", sample_dim="trajectory")
    >>> traj.space, traj.values(traj.check_dims()).shape
    (['y', 'x'], (2, 3, 64, 1))
    """
    ds, variables = as_dataset(obj, variables, "training data")
    if time not in ds.coords:
        raise KeyError(f"time coordinate {time!r} not found; coordinates are {list(ds.coords)}")
    if ds[time].ndim != 1 or ds[time].dims[0] not in ds[variables[0]].dims:
        raise ValueError(f"time coordinate {time!r} must be 1-D along a dimension of {variables[0]!r}")
    tdim = ds[time].dims[0]
    sample_dim = resolve_sample_dim(ds, sample_dim)
    for v in variables:  # forecasts are clipped to these bounds: unusable attrs fail here, not there
        physical_bounds(ds[v].attrs, variable=v)
    if sample_dim is None:
        sample_eff: Hashable = "_trajectory"
        ds = ds.expand_dims(sample_eff)
    else:
        if sample_dim not in ds.dims:
            raise KeyError(f"sample_dim {sample_dim!r} is not a dimension; dims are {tuple(ds.dims)} "
                           "(pass sample_dim=None, or leave the default 'auto', for a single trajectory)")
        sample_eff = sample_dim
    _check_increasing(ds[time])
    if train_until is not None:
        ds = ds.sel({tdim: slice(None, train_until)})
    T = int(ds.sizes[tdim])
    if T < 2:
        raise ValueError(f"need at least 2 time steps to learn dynamics, got {T} along {tdim!r}"
                         + (f" up to train_until={train_until!r}" if train_until is not None else ""))
    if space is None:
        dims = [d for d in ds[variables[0]].dims if d not in (tdim, sample_eff)]
        space = default_space(ds, dims, None, latlon=latlon)
    space = [space] if isinstance(space, str) else list(space)
    return Trajectories(ds, variables, time, tdim, sample_eff, space)
