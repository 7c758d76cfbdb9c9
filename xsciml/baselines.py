r"""Reference forecasts, verification and forecast blending.

A learned forecast is only worth something against the simple forecasts a forecaster
would otherwise use. This module builds them on the layout of
:meth:`xsciml.models.dino.DINo.forecast` — dims ``(time, lead, space...)`` where ``time``
holds the initial times and a ``valid_time`` coordinate ``(time, lead)`` — so that
scores line up without reshaping:

- :func:`persistence`: the initial state, at every lead;
- :func:`climatology`: the mean of a history grouped by a calendar component of the
  valid time (hour of day by default: the diurnal cycle);
- :func:`anomaly_persistence`: climatology plus the initial anomaly, optionally damped
  by the lag correlation of the anomalies (:func:`anomaly_lag_correlation`);
- :func:`verification`: the observed field at each forecast's valid time (NaN where
  the observations end), to score any forecast of that layout;
- :func:`fit_blend` / :func:`blend`: lead-dependent convex weights of several forecasts
  fitted by least squares on a *validation* period, then applied to new forecasts. A
  learned model and anomaly persistence make different errors, so a blend is often
  better than both (the classic forecast-combination result); the weights must come
  from data the scored forecasts have not seen.

Examples
--------
>>> import numpy as np, pandas as pd, xarray as xr
>>> t = pd.date_range("2000-01-01", periods=96, freq="h")
>>> obs = xr.DataArray(np.sin(2 * np.pi * np.arange(96) / 24), dims="time", coords={"time": t})
>>> leads = np.array([1, 24], dtype="timedelta64[h]")
>>> clim = climatology(obs, t[48:50], leads, history=obs[:48])
>>> float(abs(clim - verification(obs, clim)).max()) < 1e-12  # a pure diurnal cycle
True
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from ._utils import simplex_weights

__all__ = [
    "anomaly_lag_correlation",
    "anomaly_persistence",
    "blend",
    "climatology",
    "fit_blend",
    "persistence",
    "verification",
]

_CALENDAR_GROUPS = ("hour", "dayofyear", "month", "season", "dayofweek")


def _check_obs(obs: Any, time: str, name: str = "obs") -> xr.DataArray:
    if not isinstance(obs, xr.DataArray):
        raise TypeError(f"{name} must be an xarray.DataArray, got {type(obs).__name__}; select "
                        "a variable first (ds['t2m'])")
    if time not in obs.dims:
        raise ValueError(f"{name} has no time dimension {time!r} (dims {obs.dims}); pass time=...")
    idx = obs.indexes.get(time)
    if idx is None:
        raise ValueError(f"{name} needs a {time!r} coordinate")
    if idx.has_duplicates:
        raise ValueError(f"{name} has duplicate {time!r} values; drop them first "
                         f"(e.g. obs.drop_duplicates({time!r}))")
    if not idx.is_monotonic_increasing:
        raise ValueError(f"{name}'s {time!r} is not sorted; call obs.sortby({time!r}) first")
    return obs


def _init_index(init: Any, obs: xr.DataArray, time: str) -> pd.Index:
    if isinstance(init, xr.DataArray):
        init = init.values
    values = np.atleast_1d(np.asarray(init))
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"init must be a non-empty 1-D list of {time!r} labels")
    idx = obs.indexes[time]
    pos = idx.get_indexer(values)
    if (pos < 0).any():
        missing = values[pos < 0][:3]
        raise KeyError(f"initial time(s) {list(missing)} are not in obs[{time!r}]: a reference "
                       "forecast starts from an observed state")
    return idx[pos]


def _lead_index(lead: Any) -> pd.TimedeltaIndex:
    try:
        out = pd.to_timedelta(np.atleast_1d(np.asarray(lead)))
    except (TypeError, ValueError) as err:
        raise TypeError(f"lead must be timedeltas (e.g. np.array([1, 6], 'timedelta64[h]')), "
                        f"got {lead!r}") from err
    if out.hasnans:
        raise ValueError("lead contains NaT")
    return pd.TimedeltaIndex(out, name="lead")


def _add(inits: pd.Index, leads: pd.TimedeltaIndex) -> np.ndarray:
    """Valid times ``[init, lead]``; cftime dates (non-standard calendars) included."""
    t = np.asarray(inits)
    if t.dtype == object:  # cftime: add datetime.timedelta
        return t[:, None] + np.asarray(leads.to_pytimedelta(), dtype=object)[None, :]
    return t[:, None] + leads.values[None, :]


def _layout(field: xr.DataArray, time: str, inits: pd.Index, leads: pd.TimedeltaIndex) -> xr.DataArray:
    """Label ``field (time, lead, ...)``: initial times, leads and ``valid_time``."""
    valid = _add(inits, leads)
    return field.assign_coords({time: np.asarray(inits), "lead": leads.values,
                                "valid_time": ((time, "lead"), valid)})


def _valid_times(inits: pd.Index, leads: pd.TimedeltaIndex, time: str) -> xr.DataArray:
    return xr.DataArray(_add(inits, leads), dims=(time, "lead"),
                        coords={time: np.asarray(inits), "lead": leads.values})


def verification(obs: xr.DataArray, forecast: xr.DataArray, *, time: str = "time") -> xr.DataArray:
    """The observations at every forecast's valid time, laid out like the forecast.

    Parameters
    ----------
    obs
        Observed field with a sorted ``time`` dimension.
    forecast
        A forecast with a ``valid_time`` coordinate (e.g. from
        :meth:`~xsciml.models.dino.DINo.forecast` or this module's baselines).
    time
        Name of the time dimension of ``obs`` (and of the initial times in ``forecast``).

    Returns
    -------
    DataArray with the forecast's dims and coords; NaN where the valid time is not in
    ``obs`` (past the end of the record, or a gap).

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> t = pd.date_range("2000-01-01", periods=5, freq="h")
    >>> obs = xr.DataArray(np.arange(5.0), dims="time", coords={"time": t})
    >>> fc = persistence(obs, t[[1, 3]], np.array([1, 2], "timedelta64[h]"))
    >>> verification(obs, fc).values.tolist()
    [[2.0, 3.0], [4.0, nan]]
    """
    obs = _check_obs(obs, time)
    if "valid_time" not in forecast.coords:
        raise ValueError("the forecast has no 'valid_time' coordinate; build it with "
                         "forecast.assign_coords(valid_time=init + lead)")
    vt = forecast["valid_time"]
    flat = np.asarray(vt.values).reshape(-1)
    picked = obs.reindex({time: flat})
    picked = picked.transpose(time, ...)
    arr = picked.data.reshape(*vt.shape, *picked.shape[1:])  # stays lazy for dask-backed obs
    rest = [d for d in picked.dims if d != time]
    out = xr.DataArray(arr, dims=(*vt.dims, *rest),
                       coords={**{k: v.variable for k, v in vt.coords.items()},
                               **{k: c.variable for k, c in obs.coords.items()
                                  if time not in c.dims}},
                       name=obs.name, attrs=obs.attrs)
    return out.transpose(*[d for d in forecast.dims if d in out.dims],
                         *[d for d in out.dims if d not in forecast.dims])


def persistence(obs: xr.DataArray, init: Any, lead: Any, *, time: str = "time") -> xr.DataArray:
    """Persistence: the state at the initial time, at every lead.

    Parameters
    ----------
    obs
        Observed field with a sorted ``time`` dimension containing the initial times.
    init
        Initial times (labels of ``obs[time]``).
    lead
        Lead times (timedeltas).
    time
        Name of the time dimension.

    Returns
    -------
    DataArray ``(time, lead, ...)`` (``time`` = initial times) with ``valid_time``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> t = pd.date_range("2000-01-01", periods=4, freq="h")
    >>> obs = xr.DataArray(np.arange(4.0), dims="time", coords={"time": t})
    >>> persistence(obs, t[[0, 2]], np.array([1, 3], "timedelta64[h]")).values.tolist()
    [[0.0, 0.0], [2.0, 2.0]]
    """
    obs = _check_obs(obs, time)
    inits, leads = _init_index(init, obs, time), _lead_index(lead)
    state = obs.sel({time: inits})
    out = state.expand_dims(lead=leads.values, axis=1)
    return _layout(out, time, inits, leads).rename(obs.name).assign_attrs(
        obs.attrs, xsciml_reference="persistence")


def _group_key(times: Any, by: str) -> np.ndarray:
    if by not in _CALENDAR_GROUPS:
        raise ValueError(f"by must be one of {_CALENDAR_GROUPS}, got {by!r}")
    da = xr.DataArray(np.asarray(times).reshape(-1), dims="_t")
    return np.asarray(getattr(da.dt, by).values)


def _climatology_table(history: xr.DataArray, time: str, by: str) -> xr.DataArray:
    key = _group_key(history[time].values, by)
    table = history.assign_coords(_key=(time, key)).groupby("_key").mean(time)
    if bool(table.isnull().all()):  # one small reduction, also for dask-backed history
        raise ValueError("the climatology history is all NaN")
    return table


def _climatology_at(table: xr.DataArray, times: np.ndarray, by: str, what: str) -> xr.DataArray:
    key = _group_key(times, by)
    have = set(np.asarray(table["_key"].values).tolist())
    missing = sorted({k for k in key.tolist() if k not in have})
    if missing:
        raise ValueError(f"the history has no data for {by} = {missing[:5]} needed by the {what}; "
                         "give a longer history or a coarser grouping (by=...)")
    return table.sel(_key=xr.DataArray(key, dims="_t")).drop_vars("_key")


def climatology(obs: xr.DataArray, init: Any, lead: Any, *, history: xr.DataArray | None = None,
                time: str = "time", by: str = "hour") -> xr.DataArray:
    """Climatology: the history's mean for the calendar group of each valid time.

    Parameters
    ----------
    obs
        Observed field (used for its time axis and to check the initial times).
    init
        Initial times.
    lead
        Lead times (timedeltas).
    history
        Period the climatology is computed from (default ``obs``). Pass the training
        period only, so that the reference never sees the verifying data.
    time
        Name of the time dimension.
    by
        Calendar component grouping the history: ``"hour"`` (diurnal cycle, default),
        ``"dayofyear"``, ``"month"``, ``"season"`` or ``"dayofweek"``.

    Returns
    -------
    DataArray ``(time, lead, ...)`` with ``valid_time``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> t = pd.date_range("2000-01-01", periods=48, freq="h")
    >>> obs = xr.DataArray(t.hour.values * 1.0, dims="time", coords={"time": t})
    >>> climatology(obs, t[[30]], np.array([2, 5], "timedelta64[h]")).values.tolist()
    [[8.0, 11.0]]
    """
    obs = _check_obs(obs, time)
    history = obs if history is None else _check_obs(history, time, "history")
    inits, leads = _init_index(init, obs, time), _lead_index(lead)
    return _climatology_forecast(obs, _climatology_table(history, time, by), inits, leads, time, by)


def _climatology_forecast(obs: xr.DataArray, table: xr.DataArray, inits: pd.Index,
                          leads: pd.TimedeltaIndex, time: str, by: str) -> xr.DataArray:
    """:func:`climatology` from an already grouped history ``table``."""
    vt = _valid_times(inits, leads, time)
    vals = _climatology_at(table, vt.values.reshape(-1), by, "valid times")
    arr = vals.transpose("_t", ...).data  # lazy for a dask-backed history
    rest = [d for d in vals.dims if d != "_t"]
    out = xr.DataArray(arr.reshape(*vt.shape, *arr.shape[1:]), dims=(time, "lead", *rest),
                       coords={k: c.variable for k, c in table.coords.items() if k in rest})
    return _layout(out, time, inits, leads).rename(obs.name).assign_attrs(
        obs.attrs, xsciml_reference=f"climatology by {by}")


def anomaly_lag_correlation(history: xr.DataArray, lead: Any, *, time: str = "time",
                            by: str = "hour") -> xr.DataArray:
    """Lag correlation of the anomalies from the ``by`` climatology, pooled over space.

    :math:`\\rho(h) = \\sum a_t a_{t+h} / \\sum a_t^2` over all pairs of the history ``h``
    apart (time gaps respected), which is the least-squares damping of anomaly
    persistence at lead ``h``.

    Parameters
    ----------
    history
        Period to estimate from (the training period).
    lead
        Lead times (timedeltas).
    time
        Time dimension.
    by
        Climatology grouping (see :func:`climatology`).

    Returns
    -------
    DataArray ``(lead,)``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> t = pd.date_range("2000-01-01", periods=24 * 20, freq="h")
    >>> x = np.cos(2 * np.pi * np.arange(t.size) / 24) + np.repeat(np.arange(20) % 2 * 2.0 - 1, 24)
    >>> obs = xr.DataArray(x, dims="time", coords={"time": t})
    >>> anomaly_lag_correlation(obs, np.array([24], "timedelta64[h]")).round(2).values.tolist()
    [-1.0]
    """
    history = _check_obs(history, time, "history")
    return _lag_correlation(history, _climatology_table(history, time, by), _lead_index(lead),
                            time, by)


def _lag_correlation(history: xr.DataArray, table: xr.DataArray, leads: pd.TimedeltaIndex,
                     time: str, by: str) -> xr.DataArray:
    """:func:`anomaly_lag_correlation` from an already grouped history ``table``."""
    anom = history - _climatology_at(table, history[time].values, by, "history").rename(
        _t=time).assign_coords({time: history[time]})
    out = []
    for h in leads.values:
        shifted = _add(history.indexes[time], pd.TimedeltaIndex([h]))[:, 0]
        later = anom.reindex({time: shifted}).assign_coords({time: anom[time]})
        num = float((anom * later).sum(skipna=True))
        den = float((anom ** 2).where(later.notnull()).sum(skipna=True))
        out.append(num / den if den > 0 else np.nan)
    return xr.DataArray(np.array(out), dims="lead", coords={"lead": leads.values},
                        name="anomaly_lag_correlation")


def anomaly_persistence(obs: xr.DataArray, init: Any, lead: Any, *,
                        history: xr.DataArray | None = None, time: str = "time", by: str = "hour",
                        damping: float | str | xr.DataArray = 1.0) -> xr.DataArray:
    """Climatology plus the (damped) initial anomaly.

    ``clim(valid) + ρ(lead) · (obs(init) − clim(init))``.

    Parameters
    ----------
    obs
        As in :func:`climatology`.
    init
        As in :func:`climatology`.
    lead
        As in :func:`climatology`.
    history
        As in :func:`climatology`.
    time
        As in :func:`climatology`.
    by
        As in :func:`climatology`.
    damping
        ``ρ``: 1 (default: the anomaly persists), a number, a DataArray over ``lead``, or
        ``"fit"`` to use :func:`anomaly_lag_correlation` of the history.

    Returns
    -------
    DataArray ``(time, lead, ...)`` with ``valid_time``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> t = pd.date_range("2000-01-01", periods=48, freq="h")
    >>> obs = xr.DataArray(t.hour.values + np.r_[np.zeros(47), 3.0], dims="time",
    ...                    coords={"time": t})
    >>> anomaly_persistence(obs, t[[47]], np.array([1], "timedelta64[h]"),
    ...                     history=obs[:24]).values.tolist()  # 0 h + anomaly (26 - 23)
    [[3.0]]
    """
    obs = _check_obs(obs, time)
    history = obs if history is None else _check_obs(history, time, "history")
    inits, leads = _init_index(init, obs, time), _lead_index(lead)
    table = _climatology_table(history, time, by)  # grouped once for all three uses
    clim = _climatology_forecast(obs, table, inits, leads, time, by)
    c0 = _climatology_at(table, np.asarray(inits), by, "initial times").rename(_t=time)
    anom0 = obs.sel({time: inits}) - c0.assign_coords({time: obs.sel({time: inits})[time]})
    if isinstance(damping, str):
        if damping != "fit":
            raise ValueError(f"damping must be a number, a DataArray over 'lead' or 'fit', got {damping!r}")
        rho = _lag_correlation(history, table, leads, time, by)
    elif isinstance(damping, xr.DataArray):
        if set(damping.dims) != {"lead"}:
            raise ValueError(f"a damping DataArray must have the single dim 'lead', got {damping.dims}")
        rho = damping.reindex(lead=leads.values)
        if bool(rho.isnull().any()):
            raise ValueError("the damping DataArray has no value for some of the leads")
    else:
        rho = xr.DataArray(float(damping))
    out = clim + rho * anom0.drop_vars([c for c in anom0.coords if c not in anom0.dims and c != time],
                                       errors="ignore")
    out = out.transpose(time, "lead", ...)
    return out.rename(obs.name).assign_attrs(obs.attrs, xsciml_reference=f"anomaly persistence by {by}")


def _members(members: Mapping[str, xr.DataArray] | Sequence[xr.DataArray]) -> dict[str, xr.DataArray]:
    if isinstance(members, Mapping):
        out = dict(members)
    else:
        out = {f"member{i}": m for i, m in enumerate(members)}
    if len(out) < 2:
        raise ValueError("a blend needs at least two forecasts")
    for k, m in out.items():
        if not isinstance(m, xr.DataArray):
            raise TypeError(f"forecast {k!r} must be a DataArray, got {type(m).__name__}")
    return out


def fit_blend(members: Mapping[str, xr.DataArray] | Sequence[xr.DataArray], truth: xr.DataArray, *,
              dim: Hashable = "lead") -> xr.DataArray:
    """Convex weights of several forecasts per ``dim`` (lead), least squares on a validation set.

    For each value of ``dim`` the weights ``w_k ≥ 0``, ``Σ w_k = 1`` minimise the mean
    squared error of ``Σ w_k f_k`` against ``truth`` over every other dimension and every
    point where all forecasts and the truth are finite. Fit them on forecasts of a period
    the scored forecasts have not seen (a validation split), then apply with :func:`blend`.

    Parameters
    ----------
    members
        Forecasts of the same layout: a mapping name → DataArray (or a sequence).
    truth
        The verifying observations (e.g. :func:`verification`).
    dim
        Dimension along which the weights vary (default ``"lead"``).

    Returns
    -------
    DataArray ``(member, dim)`` of weights (rows sum to one).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> truth = xr.DataArray(rng.normal(size=(2, 500)), dims=("lead", "time"))
    >>> a = truth + xr.DataArray(rng.normal(size=(2, 500)), dims=("lead", "time"))
    >>> b = truth + xr.DataArray(rng.normal(size=(2, 500)), dims=("lead", "time"))
    >>> w = fit_blend({"a": a, "b": b}, truth)
    >>> bool(abs(w.sel(member="a") - 0.5).max() < 0.1), np.allclose(w.sum("member"), 1)
    (True, True)
    """
    mem = _members(members)
    names = list(mem)
    arrays = xr.align(*mem.values(), truth, join="inner")
    for k, a in zip(names + ["truth"], arrays, strict=True):
        if dim not in a.dims:
            raise ValueError(f"{k!r} has no dimension {dim!r} (dims {a.dims})")
    arrays = xr.broadcast(*arrays)
    order = [dim, *[d for d in arrays[-1].dims if d != dim]]
    F = np.stack([np.asarray(a.transpose(*order).values, dtype=np.float64) for a in arrays[:-1]])
    Y = np.asarray(arrays[-1].transpose(*order).values, dtype=np.float64)
    K, L = F.shape[0], F.shape[1]
    F, Y = F.reshape(K, L, -1), Y.reshape(L, -1)
    weights = np.empty((K, L))
    for j in range(L):
        ok = np.isfinite(Y[j]) & np.isfinite(F[:, j]).all(0)
        if not ok.any():
            raise ValueError(f"no point where every forecast and the truth are finite at "
                             f"{dim}={arrays[-1][dim].values[j]!r}; cannot fit the blend")
        E = F[:, j, ok] - Y[j, ok]  # errors of each member
        G = E @ E.T / ok.sum()      # mean cross-products of errors
        weights[:, j] = simplex_weights(G)
    return xr.DataArray(weights, dims=("member", dim),
                        coords={"member": names, dim: arrays[-1][dim].values}, name="weight")


def blend(members: Mapping[str, xr.DataArray] | Sequence[xr.DataArray],
          weights: xr.DataArray) -> xr.DataArray:
    """Weighted sum of forecasts with the weights of :func:`fit_blend`.

    Parameters
    ----------
    members
        The forecasts, named as when the weights were fitted.
    weights
        DataArray ``(member, dim)``.

    Returns
    -------
    The blended forecast, with the coords and attrs of the first member.

    Examples
    --------
    >>> import xarray as xr
    >>> a = xr.DataArray([[1.0, 1.0]], dims=("time", "lead"), coords={"lead": [1, 2]})
    >>> b = xr.DataArray([[3.0, 3.0]], dims=("time", "lead"), coords={"lead": [1, 2]})
    >>> w = xr.DataArray([[0.5, 0.25], [0.5, 0.75]], dims=("member", "lead"),
    ...                  coords={"member": ["a", "b"], "lead": [1, 2]})
    >>> blend({"a": a, "b": b}, w).values.tolist()
    [[2.0, 2.5]]
    """
    mem = _members(members)
    if "member" not in weights.dims:
        raise ValueError(f"weights need a 'member' dimension (from fit_blend), got {weights.dims}")
    names = [str(n) for n in weights["member"].values]
    if sorted(names) != sorted(mem):
        raise ValueError(f"the weights are for forecasts {names}, got {list(mem)}")
    first = mem[names[0]]
    for d in weights.dims:
        if d != "member" and d in first.dims:
            missing = np.setdiff1d(first[d].values, weights[d].values)
            if missing.size:
                raise ValueError(f"no blend weight for {d} = {list(missing[:3])}; fit the weights "
                                 f"on the same {d} values")
    # names is not empty (weights has a member dimension): a sum of DataArrays
    out = cast(xr.DataArray, sum(weights.sel(member=n, drop=True) * mem[n] for n in names))
    out = out.transpose(*first.dims).assign_coords(
        {k: c for k, c in first.coords.items() if k not in out.coords})
    return out.rename(first.name).assign_attrs(
        first.attrs, xsciml_blend=", ".join(names))
