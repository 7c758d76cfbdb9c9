"""Plotting helpers for fields, forecasts, training curves and diagnostics.

matplotlib is imported lazily inside each function, nothing calls ``plt.show()``, and
every helper returns what it drew on (the :class:`~matplotlib.axes.Axes` for the
axes-level :func:`plot_map`, the :class:`~matplotlib.figure.Figure` otherwise), so
they work under any backend, including the non-interactive ``Agg``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "plot_map",
    "plot_panels",
    "plot_forecast_panels",
    "plot_history",
    "plot_error_vs_lead",
    "plot_calibration",
    "plot_spread_skill",
    "plot_rank_histogram",
    "plot_spectrum",
]

_LON_NAMES = ("lon", "longitude", "nav_lon", "xlon")
_LAT_NAMES = ("lat", "latitude", "nav_lat", "xlat")
_X_LIKE = ("x", "lon", "longitude", "rlon", "xc")
_Y_LIKE = ("y", "lat", "latitude", "rlat", "yc")
_DEFAULT_LEVELS = tuple(np.linspace(0.05, 0.95, 10))


# --------------------------------------------------------------------------- helpers
def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _figure_and_axes(ax: Any = None, **kw: Any) -> tuple[Any, Any]:
    """``(ax.figure, ax)``, or a new single-axes figure when ``ax`` is ``None``."""
    if ax is not None:
        return ax.figure, ax
    return _pyplot().subplots(layout="constrained", **kw)


def _label(obj: xr.DataArray | xr.Variable, name: Hashable | None = None) -> str:
    """``long_name [units]`` (falling back on the name; dimensionless "1" is not shown)."""
    attrs = obj.attrs
    text = str(attrs.get("long_name", attrs.get("standard_name", name if name is not None else "")))
    if text == "" and isinstance(obj, xr.DataArray) and obj.name is not None:
        text = str(obj.name)
    units = attrs.get("units")
    return f"{text} [{units}]" if units not in (None, "", "1") else text


def _fmt(value: Any) -> str:
    """Short text for a coordinate label (numbers, dates, durations)."""
    arr = np.asarray(value)
    scalar = arr[()] if arr.ndim == 0 else value
    if arr.dtype.kind == "M":
        return str(pd.Timestamp(scalar))
    if arr.dtype.kind == "m":
        return str(pd.Timedelta(scalar))
    if arr.dtype.kind == "f" and arr.ndim == 0:
        return f"{float(scalar):.4g}"
    return str(scalar)


def _fmt_coord(coord: xr.DataArray) -> str:
    return _fmt(coord.values)


def _default_title(da: xr.DataArray) -> str:
    parts = [str(da.name)] if da.name is not None else []
    parts += [f"{name} = {_fmt_coord(c)}" for name, c in da.coords.items() if c.ndim == 0]
    return ", ".join(parts)


def _as_dataarray(obj: Any, argname: str) -> xr.DataArray:
    if not isinstance(obj, xr.DataArray):
        raise TypeError(
            f"{argname} must be an xarray.DataArray, got {type(obj).__name__}; "
            "select a variable from a Dataset with ds[name]."
        )
    return obj


def _named(objs: Any, argname: str, default: str) -> list[tuple[str, xr.DataArray]]:
    """``DataArray``, sequence or mapping of DataArrays -> ``[(label, da), ...]``."""
    if isinstance(objs, xr.DataArray):
        items = [(str(objs.name) if objs.name is not None else default, objs)]
    elif isinstance(objs, Mapping):
        items = [(str(k), _as_dataarray(v, f"{argname}[{k!r}]")) for k, v in objs.items()]
    elif isinstance(objs, Sequence) and not isinstance(objs, str):
        arrays = [_as_dataarray(v, f"{argname}[{i}]") for i, v in enumerate(objs)]
        items = [
            (str(v.name) if v.name is not None else f"{default} {i}", v)
            for i, v in enumerate(arrays)
        ]
    else:
        raise TypeError(
            f"{argname} must be a DataArray, a sequence of DataArrays or a dict of them, "
            f"got {type(objs).__name__}."
        )
    if not items:
        raise ValueError(f"{argname} is empty; pass at least one DataArray.")
    return items


def _squeeze_to(da: xr.DataArray, ndim: int, argname: str, hint: str) -> xr.DataArray:
    squeezed = da.squeeze(drop=False)
    if squeezed.ndim != ndim:
        raise ValueError(
            f"{argname} must be {ndim}-D after dropping size-1 dims, got dims "
            f"{dict(da.sizes)}; {hint}"
        )
    return squeezed


def _color_scale(
    arrays: Sequence[np.ndarray],
    *,
    robust: bool,
    cmap: Any,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[Any, float, float]:
    """Colour map and limits shared by ``arrays``, xarray style.

    ``robust`` uses the 2nd and 98th percentiles. Without an explicit ``cmap``, data of
    both signs gets a diverging map centred on zero, other data ``viridis``.
    """
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        lo, hi = 0.0, 1.0
    elif robust:
        lo, hi = np.percentile(values, [2.0, 98.0])
    else:
        lo, hi = values.min(), values.max()
    lo = float(lo) if vmin is None else float(vmin)
    hi = float(hi) if vmax is None else float(vmax)
    if cmap is None:
        if lo < 0 < hi:
            cmap = "RdBu_r"
            if vmin is None and vmax is None:
                bound = max(-lo, hi)
                lo, hi = -bound, bound
        else:
            cmap = "viridis"
    if hi <= lo:  # constant field: give the colour map some room
        pad = abs(lo) * 0.01 or 1.0
        lo, hi = lo - pad, hi + pad
    return cmap, lo, hi


def _map_grid(da: xr.DataArray) -> tuple[np.ndarray, np.ndarray, xr.DataArray, str, str]:
    """Mesh coordinates for a 2-D field: ``(X, Y, da, xlabel, ylabel)``.

    Uses 2-D ``lon``/``lat`` coordinates when present (curvilinear grids); otherwise
    the 1-D dimension coordinates, sorted ascending (descending latitude is flipped).
    """
    for lon_name in _LON_NAMES:
        for lat_name in _LAT_NAMES:
            if lon_name in da.coords and lat_name in da.coords:
                lon, lat = da.coords[lon_name], da.coords[lat_name]
                if lon.ndim == 2 and lat.ndim == 2 and set(lon.dims) == set(da.dims):
                    lon = lon.transpose(*da.dims)
                    lat = lat.transpose(*da.dims)
                    return lon.values, lat.values, da, _label(lon, lon_name), _label(lat, lat_name)
    ydim, xdim = da.dims
    if str(ydim).lower() in _X_LIKE and str(xdim).lower() in _Y_LIKE:
        da = da.transpose(xdim, ydim)
        ydim, xdim = xdim, ydim
    axes = []
    for dim in (xdim, ydim):
        if dim in da.coords and da.coords[dim].dtype.kind in "fiuMm":
            index = da.indexes[dim]
            if not index.is_monotonic_increasing:
                da = da.sortby(dim)
            axes.append((da.coords[dim].values, _label(da.coords[dim], dim)))
        else:
            axes.append((np.arange(da.sizes[dim]), str(dim)))
    (x, xlabel), (y, ylabel) = axes
    return x, y, da, xlabel, ylabel


# --------------------------------------------------------------------------- maps
def plot_map(
    da: xr.DataArray,
    ax: Any = None,
    *,
    cmap: Any = None,
    robust: bool = True,
    title: str | None = None,
    coastlines: bool = False,
    add_colorbar: bool = True,
    **kw: Any,
):
    """Draw a 2-D field with ``pcolormesh``.

    Handles 1-D coordinates in any order (descending latitude is drawn north up),
    curvilinear grids with 2-D ``lon``/``lat`` coordinates, NaNs (left blank) and
    irregular spacing. Size-1 dimensions are dropped first.

    Parameters
    ----------
    da
        Field with two non-trivial dimensions, ``(y, x)`` by convention.
    ax
        Axes to draw on; a new figure is made when ``None``. For ``coastlines=True`` it
        must be a cartopy ``GeoAxes``.
    cmap
        Colour map; default ``RdBu_r`` (centred on 0) for data of both signs, else
        ``viridis``.
    robust
        Colour limits from the 2nd and 98th percentiles instead of min and max.
    title
        Axes title; default the name and any scalar coordinates.
    coastlines
        Draw coastlines (needs cartopy and a ``GeoAxes``).
    add_colorbar
        Add a colour bar labelled with ``long_name [units]``.
    **kw
        Passed to :meth:`matplotlib.axes.Axes.pcolormesh` (``vmin``, ``vmax``, ``norm``,
        ``transform``, ...).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from xsciml.datasets import gaussian_random_field
    >>> ax = plot_map(gaussian_random_field((16, 24))["u"])
    >>> ax.collections[0].get_array().shape
    (16, 24)
    """
    da = _squeeze_to(
        _as_dataarray(da, "da"), 2, "da", "select one map first, e.g. da.isel(time=0)."
    )
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(layout="constrained")
    if coastlines and not hasattr(ax, "coastlines"):
        raise ValueError(
            "coastlines=True needs a cartopy GeoAxes: pass "
            "ax=plt.axes(projection=cartopy.crs.PlateCarree())."
        )
    x, y, da, xlabel, ylabel = _map_grid(da)
    if hasattr(ax, "coastlines") and "transform" not in kw:
        import cartopy.crs as ccrs

        kw["transform"] = ccrs.PlateCarree()
    values = np.ma.masked_invalid(np.asarray(da.values, dtype=float))
    if "norm" not in kw:
        cmap, kw["vmin"], kw["vmax"] = _color_scale(
            [values.filled(np.nan)],
            robust=robust,
            cmap=cmap,
            vmin=kw.get("vmin"),
            vmax=kw.get("vmax"),
        )
    mesh = ax.pcolormesh(x, y, values, cmap=cmap, shading="auto", **kw)
    if coastlines:
        ax.coastlines()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_default_title(da) if title is None else title)
    if add_colorbar:
        ax.figure.colorbar(mesh, ax=ax, label=_label(da))
    return ax


def plot_panels(
    das: Sequence[xr.DataArray] | Mapping[str, xr.DataArray],
    *,
    ncols: int | None = None,
    shared_scale: bool = True,
    cmap: Any = None,
    suptitle: str | None = None,
    robust: bool = True,
    panel_size: tuple[float, float] = (3.4, 2.8),
):
    """One map per panel on a grid of axes.

    Parameters
    ----------
    das
        2-D fields; with a dict the keys are the panel titles.
    ncols
        Number of columns (default ``min(len(das), 4)``).
    shared_scale
        One colour scale and colour bar for all panels; otherwise one per panel.
    cmap
        As in :func:`plot_map`.
    robust
        As in :func:`plot_map`.
    suptitle
        Figure title.
    panel_size
        Size of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
        The unused grid cells are removed, so ``fig.axes`` holds the panels followed by
        the colour bars.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from xsciml.datasets import gaussian_random_field
    >>> u = gaussian_random_field((16, 16), n=3)["u"]
    >>> fig = plot_panels([u.isel(sample=i) for i in range(3)])
    >>> len(fig.axes)  # three panels and one colour bar
    4
    """
    items = _named(das, "das", "panel")
    items = [
        (name, _squeeze_to(da, 2, f"das[{name!r}]", "select one map per panel."))
        for name, da in items
    ]
    n = len(items)
    if ncols is None:
        ncols = min(n, 4)
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols!r}.")
    ncols = min(int(ncols), n)
    nrows = -(-n // ncols)
    plt = _pyplot()
    fig, axes = plt.subplots(
        nrows,
        ncols,
        squeeze=False,
        layout="constrained",
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
    )
    flat = list(axes.ravel())
    scale: dict[str, Any] = {}
    if shared_scale:
        cmap_s, vmin, vmax = _color_scale([da.values for _, da in items], robust=robust, cmap=cmap)
        scale = {"cmap": cmap_s, "vmin": vmin, "vmax": vmax}
    for (name, da), ax in zip(items, flat, strict=False):
        if shared_scale:
            plot_map(da, ax, title=name, add_colorbar=False, **scale)
        else:
            plot_map(da, ax, title=name, cmap=cmap, robust=robust)
    for ax in flat[n:]:
        ax.remove()
    if shared_scale:
        fig.colorbar(flat[0].collections[0], ax=flat[:n], label=_label(items[0][1]))
    if suptitle is not None:
        fig.suptitle(suptitle)
    return fig


def plot_forecast_panels(
    truth: xr.DataArray,
    forecast: xr.DataArray,
    *,
    time_dim: str = "time",
    times: Sequence[Any] | None = None,
    error: bool = True,
    max_columns: int = 4,
    cmap: Any = None,
    robust: bool = True,
    panel_size: tuple[float, float] = (3.2, 2.6),
):
    """Truth, forecast and error maps side by side at a few lead times.

    Rows are truth, forecast and (with ``error``) forecast minus truth; columns are the
    chosen times. Truth and forecast share one colour scale; the error row has its own
    diverging scale centred on zero.

    Parameters
    ----------
    truth
        True fields: ``time_dim`` and two spatial dims (size-1 dims are dropped).
    forecast
        Forecast fields with the same dims and exactly the same spatial coordinates.
    time_dim
        The time (or lead) dimension.
    times
        Labels of ``time_dim`` to show (selected exactly in both arrays); default up to
        ``max_columns`` evenly spaced times of ``forecast``.
    error
        Add the error row.
    max_columns
        Number of columns when ``times`` is ``None``.
    cmap
        As in :func:`plot_map`, for the truth and forecast rows.
    robust
        As in :func:`plot_map`, for the truth and forecast rows.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes`` holds the panels row by row, then one colour bar per scale.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from xsciml.datasets import heat
    >>> u = heat(1, 16, n_frames=6)["u"].isel(trajectory=0)
    >>> fig = plot_forecast_panels(u, u * 1.1, max_columns=3)
    >>> len(fig.axes)  # 3 rows x 3 columns + 2 colour bars
    11
    """
    truth = _as_dataarray(truth, "truth")
    forecast = _as_dataarray(forecast, "forecast")
    if set(truth.dims) != set(forecast.dims):
        raise ValueError(
            f"truth and forecast must have the same dims, got {truth.dims} and {forecast.dims}."
        )
    if time_dim not in truth.dims:
        raise ValueError(
            f"time_dim={time_dim!r} is not a dim of truth/forecast {truth.dims}; "
            "pass time_dim= naming the time or lead dimension."
        )
    others = [
        d for d in truth.dims if d != time_dim and (truth.sizes[d] > 1 or forecast.sizes[d] > 1)
    ]
    if len(others) != 2:
        raise ValueError(
            f"truth and forecast need exactly two spatial dims besides {time_dim!r}, got "
            f"{others}; select the other dims first (e.g. .isel(trajectory=0))."
        )
    forecast = forecast.transpose(*truth.dims)
    try:
        xr.align(truth, forecast, join="exact", exclude=[time_dim])
    except ValueError as err:
        raise ValueError(
            f"truth and forecast must be on the same spatial grid (dims {others}): {err}"
        ) from None

    if times is None:
        nt = forecast.sizes[time_dim]
        idx = np.unique(
            np.round(np.linspace(0, nt - 1, min(nt, max(1, int(max_columns))))).astype(int)
        )
        labels = forecast[time_dim].values[idx] if time_dim in forecast.coords else idx
    else:
        labels = list(times)
        if not labels:
            raise ValueError("times is empty; pass at least one label of time_dim or None.")
    try:
        t_sel = (
            truth.sel({time_dim: labels})
            if time_dim in truth.coords
            else truth.isel({time_dim: labels})
        )
        f_sel = (
            forecast.sel({time_dim: labels})
            if time_dim in forecast.coords
            else forecast.isel({time_dim: labels})
        )
    except KeyError as err:
        raise KeyError(
            f"times {labels!r} must be labels of {time_dim!r} present in both truth and "
            f"forecast: {err}"
        ) from None

    rows = [("truth", t_sel), ("forecast", f_sel)]
    if error:
        diff = f_sel - t_sel
        diff.attrs = {"long_name": "forecast - truth", "units": truth.attrs.get("units", "")}
        rows.append(("error", diff))
    ncols = t_sel.sizes[time_dim]
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(rows),
        ncols,
        squeeze=False,
        layout="constrained",
        figsize=(panel_size[0] * ncols, panel_size[1] * len(rows)),
    )
    field_scale = _color_scale([t_sel.values, f_sel.values], robust=robust, cmap=cmap)
    for r, (row_name, data) in enumerate(rows):
        if row_name == "error":
            _, lo, hi = _color_scale([data.values], robust=robust, cmap="RdBu_r")
            bound = max(abs(lo), abs(hi))
            scale = ("RdBu_r", -bound, bound)
        else:
            scale = field_scale
        for c in range(ncols):
            panel = data.isel({time_dim: c})
            label = _fmt_coord(panel[time_dim]) if time_dim in panel.coords else _fmt(labels[c])
            ax = plot_map(
                panel,
                axes[r, c],
                title=f"{time_dim} = {label}" if r == 0 else "",
                add_colorbar=False,
                cmap=scale[0],
                vmin=scale[1],
                vmax=scale[2],
            )
            ax.title.set_fontsize("medium")
            if c == 0:
                ax.set_ylabel(f"{row_name}\n{ax.get_ylabel()}")
            else:
                ax.set_ylabel("")
            if r < len(rows) - 1:
                ax.set_xlabel("")
    fig.colorbar(axes[0, 0].collections[0], ax=list(axes[:2].ravel()), label=_label(truth))
    if error:
        fig.colorbar(axes[2, 0].collections[0], ax=list(axes[2]), label=_label(rows[2][1]))
    return fig


# --------------------------------------------------------------------------- curves
def _steps_values(entries: Any, key: str) -> tuple[np.ndarray, np.ndarray]:
    entries = list(entries or [])
    if not entries:
        return np.empty(0), np.empty(0)
    if np.ndim(entries[0]) == 0:
        return np.arange(len(entries), dtype=float), np.asarray(entries, dtype=float)
    try:
        arr = np.asarray(entries, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"history {key!r} must be a list of (step, value) pairs or of numbers."
        ) from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"history {key!r} must be a list of (step, value) pairs, got shape {arr.shape}."
        )
    return arr[:, 0], arr[:, 1]


def plot_history(history: Any, ax: Any = None):
    """Training (and validation) loss against step.

    Parameters
    ----------
    history
        An object with ``.loss`` and ``.val_loss`` lists, or a dict with keys
        ``"loss"`` and optionally ``"val_loss"``. Entries are ``(step, value)`` pairs,
        or plain numbers (then the step is the position).
    ax
        Axes to draw on (default a new figure).

    Returns
    -------
    matplotlib.figure.Figure
        The y axis is logarithmic when every loss is positive (a negative
        log-likelihood may not be), linear otherwise.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = plot_history({"loss": [(0, 1.0), (1, 0.5)], "val_loss": [(1, 0.7)]})
    >>> [line.get_label() for line in fig.axes[0].lines]
    ['train', 'validation']
    """
    if isinstance(history, Mapping):
        if "loss" not in history:
            raise KeyError("history dict needs a 'loss' key (list of (step, value) pairs).")
        loss, val = history["loss"], history.get("val_loss")
    elif hasattr(history, "loss"):
        loss, val = history.loss, getattr(history, "val_loss", None)
    else:
        raise TypeError(
            f"history must have .loss/.val_loss attributes or be a dict with 'loss', got "
            f"{type(history).__name__}."
        )
    fig, ax = _figure_and_axes(ax)
    all_values = []
    for key, entries, label in (("loss", loss, "train"), ("val_loss", val, "validation")):
        steps, values = _steps_values(entries, key)
        if steps.size:
            ax.plot(steps, values, marker="." if steps.size < 50 else None, label=label)
            all_values.append(values)
    if all_values and np.all(
        np.concatenate(all_values)[np.isfinite(np.concatenate(all_values))] > 0
    ):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all_values:
        ax.legend()
    return fig


def _lead_axis(coord: xr.DataArray | None, n: int) -> tuple[np.ndarray, str]:
    if coord is None:
        return np.arange(n, dtype=float), ""
    values = coord.values
    if values.dtype.kind == "m":
        hours = values / np.timedelta64(1, "h")
        if np.nanmax(np.abs(hours)) >= 48:
            return hours / 24.0, "days"
        return hours, "hours"
    return values, str(coord.attrs.get("units", ""))


def plot_error_vs_lead(
    errors: xr.DataArray | Mapping[str, xr.DataArray],
    lead_dim: str = "lead",
    *,
    ax: Any = None,
):
    """Error curves against forecast lead time, one line per model.

    Parameters
    ----------
    errors
        A 1-D DataArray along ``lead_dim`` or a dict ``{label: DataArray}``.
        ``timedelta64`` leads are drawn in hours (days beyond two days).
    lead_dim
        The lead dimension.
    ax
        Axes to draw on (default a new figure).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> err = xr.DataArray([0.1, 0.2, 0.4], dims="lead", coords={"lead": [1, 2, 3]}, name="rmse")
    >>> fig = plot_error_vs_lead({"dino": err, "persistence": 2 * err})
    >>> len(fig.axes[0].lines)
    2
    """
    items = _named(errors, "errors", "error")
    fig, ax = _figure_and_axes(ax)
    unit = ""
    for name, da in items:
        if lead_dim not in da.dims:
            raise ValueError(
                f"errors[{name!r}] has no dim {lead_dim!r} (dims {da.dims}); pass lead_dim=."
            )
        da = _squeeze_to(da, 1, f"errors[{name!r}]", f"reduce every dim but {lead_dim!r} first.")
        x, unit = _lead_axis(da.coords.get(lead_dim), da.sizes[lead_dim])
        ax.plot(x, da.values, marker="o", label=name)
    ax.set_xlabel(f"{lead_dim} [{unit}]" if unit else str(lead_dim))
    ax.set_ylabel(_label(items[0][1]) or "error")
    ax.legend()
    return fig


def _central_coverage(observed: Any, mean: Any, std: Any, levels: np.ndarray) -> np.ndarray:
    """Fraction of ``observed`` inside the central Gaussian interval of each level."""
    from scipy.stats import norm

    if all(isinstance(a, xr.DataArray) for a in (observed, mean, std)):
        try:
            observed, mean, std = xr.broadcast(*xr.align(observed, mean, std, join="exact"))
        except ValueError as err:
            raise ValueError(f"observed, mean and std must share coordinates: {err}") from None
    try:
        obs, mu, sd = np.broadcast_arrays(
            *(np.asarray(getattr(a, "values", a), dtype=float) for a in (observed, mean, std))
        )
    except ValueError:
        raise ValueError("observed, mean and std must have broadcastable shapes.") from None
    valid = np.isfinite(obs) & np.isfinite(mu) & np.isfinite(sd)
    if np.any(sd[valid] <= 0):
        raise ValueError("std must be > 0 wherever it is finite.")
    if not valid.any():
        raise ValueError("observed, mean and std have no point where all three are finite.")
    z = np.abs(obs[valid] - mu[valid]) / sd[valid]
    half_width = norm.ppf(0.5 + levels / 2.0)
    return (z[None, :] <= half_width[:, None]).mean(axis=1)


def plot_calibration(
    observed: xr.DataArray | np.ndarray,
    mean: xr.DataArray | np.ndarray,
    std: xr.DataArray | np.ndarray,
    levels: Sequence[float] | np.ndarray = _DEFAULT_LEVELS,
    *,
    ax: Any = None,
    label: str = "model",
):
    """Reliability diagram of central-interval coverage for a Gaussian prediction.

    For each nominal level ``p`` the central interval is ``mean +/- z * std`` with
    ``z = Phi^-1((1 + p) / 2)``; the empirical coverage is the fraction of observed
    values inside it (points where any input is NaN are skipped). A calibrated model
    lies on the diagonal; below it, intervals are too narrow.

    Parameters
    ----------
    observed
        Observed values.
    mean
        Predicted means.
    std
        Predicted standard deviations (all three broadcastable; DataArrays must share coordinates).
    levels
        Nominal coverage levels in ``(0, 1)``; default ``np.linspace(0.05, 0.95, 10)``.
    ax
        Axes to draw on (default a new figure).
    label
        Legend label of the coverage curve.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes[0].lines`` are the diagonal then the coverage curve.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> obs = np.random.default_rng(0).normal(size=20_000)
    >>> fig = plot_calibration(obs, np.zeros_like(obs), np.ones_like(obs), levels=[0.5, 0.9])
    >>> np.round(fig.axes[0].lines[1].get_ydata(), 2)
    array([0.5, 0.9])
    """
    lv = np.asarray(levels, dtype=float).ravel()
    if lv.size == 0 or np.any(~(lv > 0) | ~(lv < 1)):
        raise ValueError(f"levels must be numbers in (0, 1), got {levels!r}.")
    coverage = _central_coverage(observed, mean, std, lv)
    fig, ax = _figure_and_axes(ax, figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="ideal")
    ax.plot(lv, coverage, marker="o", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage of central interval")
    ax.set_ylabel("observed coverage")
    ax.legend()
    return fig


def _scores_items(scores: Any, truth: Any, member_dim: str, argname: str) -> list[tuple[str, xr.Dataset]]:
    """Ensemble scores as ``[(label, Dataset)]``: from a Dataset of
    :func:`~xsciml.metrics.ensemble_scores`, a dict of them, or an ensemble and its truth."""
    from .metrics import ensemble_scores

    if isinstance(scores, xr.DataArray):
        if truth is None:
            raise TypeError(f"{argname} is a DataArray (an ensemble): pass the truth too, or pass the "
                            "Dataset of xsciml.metrics.ensemble_scores")
        label = str(scores.name) if scores.name is not None else "ensemble"
        return [(label, ensemble_scores(scores, truth, member_dim=member_dim))]
    if truth is not None:
        raise TypeError(f"truth is only used when {argname} is an ensemble DataArray, got "
                        f"{type(scores).__name__}")
    if isinstance(scores, xr.Dataset):
        items = [("ensemble", scores)]
    elif isinstance(scores, Mapping):
        items = [(str(k), v) for k, v in scores.items()]
        for k, v in items:
            if not isinstance(v, xr.Dataset):
                raise TypeError(f"{argname}[{k!r}] must be a Dataset of ensemble scores, got {type(v).__name__}")
    else:
        raise TypeError(f"{argname} must be a Dataset of ensemble scores (xsciml.metrics.ensemble_scores), "
                        f"a dict of them, or an ensemble DataArray with its truth; got {type(scores).__name__}")
    if not items:
        raise ValueError(f"{argname} is empty; pass at least one Dataset of scores.")
    return items


def plot_spread_skill(
    scores: xr.Dataset | Mapping[str, xr.Dataset] | xr.DataArray,
    truth: xr.DataArray | None = None,
    *,
    ratio: bool = False,
    member_dim: str = "member",
    lead_dim: str = "lead",
    ax: Any = None,
):
    """Ensemble spread and RMSE of the ensemble mean against lead time, or their ratio.

    Parameters
    ----------
    scores
        The Dataset of :func:`xsciml.metrics.ensemble_scores` (variables ``spread``,
        ``rmse``, ``spread_skill`` along ``lead_dim``), a dict ``{label: Dataset}``, or
        an ensemble DataArray (with ``member_dim``) scored against ``truth`` here.
    truth
        The truth, when ``scores`` is an ensemble.
    ratio
        ``False`` (default): one solid RMSE line and one dashed spread line per entry
        (a reliable ensemble has them on top of each other). ``True``: the spread–skill
        ratio per entry, with the ideal ratio 1 as a grey dashed line.
    member_dim, lead_dim
        The ensemble and lead dimensions.
    ax
        Axes to draw on (default a new figure).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from xsciml.metrics import ensemble_scores
    >>> x = np.random.default_rng(0).normal(size=(9, 3, 200))
    >>> ens = xr.DataArray(x[:8], dims=("member", "lead", "case"), coords={"lead": [1, 2, 3]})
    >>> truth = xr.DataArray(x[8], dims=("lead", "case"), coords={"lead": [1, 2, 3]})
    >>> scores = ensemble_scores(ens, truth)
    >>> len(plot_spread_skill(scores).axes[0].lines), len(plot_spread_skill(scores, ratio=True).axes[0].lines)
    (2, 2)
    """
    items = _scores_items(scores, truth, member_dim, "scores")
    fig, ax = _figure_and_axes(ax)
    unit = ""
    names = ("spread_skill",) if ratio else ("rmse", "spread")
    for label, ds in items:
        missing = [n for n in names if n not in ds.data_vars]
        if missing:
            raise ValueError(f"scores[{label!r}] has no variable(s) {missing}; pass the Dataset of "
                             "xsciml.metrics.ensemble_scores")
        for n in names:
            da = ds[n]
            if lead_dim not in da.dims:
                raise ValueError(f"scores[{label!r}][{n!r}] has no dim {lead_dim!r} (dims {da.dims}); "
                                 "pass lead_dim=.")
            da = _squeeze_to(da, 1, f"scores[{label!r}][{n!r}]", f"reduce every dim but {lead_dim!r} first.")
            x, unit = _lead_axis(da.coords.get(lead_dim), da.sizes[lead_dim])
            if ratio:
                ax.plot(x, da.values, marker="o", label=label)
            else:
                style = {"rmse": {"linestyle": "-", "marker": "o"}, "spread": {"linestyle": "--", "marker": "s"}}[n]
                color = None if n == "rmse" else ax.lines[-1].get_color()
                what = "RMSE of the mean" if n == "rmse" else "spread"
                ax.plot(x, da.values, color=color, label=f"{label}: {what}" if len(items) > 1 else what,
                        **style)
    if ratio:
        ax.axhline(1.0, color="0.6", linestyle="--", label="ideal")
        ax.set_ylabel("spread / RMSE of the ensemble mean")
    else:
        ax.set_ylabel(_label(items[0][1]["rmse"]) if "units" in items[0][1]["rmse"].attrs else "error")
    ax.set_xlabel(f"{lead_dim} [{unit}]" if unit else str(lead_dim))
    ax.legend()
    return fig


def plot_rank_histogram(
    scores: xr.Dataset | xr.DataArray,
    lead: Any = None,
    *,
    lead_dim: str = "lead",
    ax: Any = None,
):
    """Rank histogram of an ensemble: bars of the counts per rank, and the flat expectation.

    Parameters
    ----------
    scores
        The Dataset of :func:`xsciml.metrics.ensemble_scores` (its ``rank_histogram``) or
        the DataArray of :func:`xsciml.metrics.rank_histogram` (dim ``rank``).
    lead
        The lead to show (selected with ``.sel``); default the sum over all leads.
    lead_dim
        The lead dimension.
    ax
        Axes to draw on (default a new figure).

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes[0].patches`` are the ``N + 1`` bars; ``fig.axes[0].lines[0]`` is the
        flat histogram of a reliable ensemble (the mean count).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> h = xr.DataArray([30, 20, 20, 30], dims="rank", coords={"rank": [0, 1, 2, 3]})
    >>> ax = plot_rank_histogram(h).axes[0]
    >>> len(ax.patches), float(ax.lines[0].get_ydata()[0])
    (4, 25.0)
    """
    if isinstance(scores, xr.Dataset):
        if "rank_histogram" not in scores.data_vars:
            raise ValueError("scores has no variable 'rank_histogram'; pass the Dataset of "
                             "xsciml.metrics.ensemble_scores or a rank histogram DataArray")
        hist = scores["rank_histogram"]
    else:
        hist = _as_dataarray(scores, "scores")
    if "rank" not in hist.dims:
        raise ValueError(f"the rank histogram needs a 'rank' dim, got dims {hist.dims}")
    title = ""
    if lead_dim in hist.dims:
        if lead is None:
            hist = hist.sum(lead_dim)
            title = f"all {lead_dim}s"
        else:
            try:
                hist = hist.sel({lead_dim: lead})
            except KeyError:
                raise KeyError(f"lead {lead!r} is not in {lead_dim!r} "
                               f"({_fmt(hist[lead_dim].values) if lead_dim in hist.coords else ''})") from None
            title = f"{lead_dim} = {_fmt(lead)}"
    elif lead is not None:
        raise ValueError(f"lead= needs a {lead_dim!r} dim in the rank histogram, got dims {hist.dims}")
    hist = _squeeze_to(hist, 1, "the rank histogram", f"reduce every dim but 'rank' (and {lead_dim!r}) first.")
    counts = np.asarray(hist.values, dtype=float)
    ranks = np.asarray(hist["rank"].values if "rank" in hist.coords else np.arange(counts.size))
    fig, ax = _figure_and_axes(ax)
    ax.bar(ranks, counts, width=0.9, color="C0", label="truth's rank")
    ax.axhline(counts.sum() / counts.size, color="0.3", linestyle="--", label="reliable (flat)")
    ax.set_xlabel(f"rank of the truth among the {counts.size - 1} members")
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    ax.legend()
    return fig


def plot_spectrum(
    spectra: xr.DataArray | Mapping[str, xr.DataArray],
    *,
    dim: str = "wavenumber",
    ax: Any = None,
):
    """Power spectra on log-log axes, one line per entry.

    Parameters
    ----------
    spectra
        A 1-D DataArray along ``dim`` or a dict ``{label: DataArray}``. Points with a
        non-positive wavenumber (the mean mode) are left out.
    dim
        The wavenumber dimension (its coordinate gives the x values, else 1, 2, ...).
    ax
        Axes to draw on (default a new figure).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> k = np.arange(1.0, 17.0)
    >>> e = xr.DataArray(k**-3, dims="wavenumber", coords={"wavenumber": k}, name="energy")
    >>> fig = plot_spectrum({"truth": e, "model": 1.1 * e})
    >>> fig.axes[0].get_xscale(), len(fig.axes[0].lines)
    ('log', 2)
    """
    items = _named(spectra, "spectra", "spectrum")
    fig, ax = _figure_and_axes(ax)
    for name, da in items:
        if dim not in da.dims:
            raise ValueError(f"spectra[{name!r}] has no dim {dim!r} (dims {da.dims}); pass dim=.")
        da = _squeeze_to(da, 1, f"spectra[{name!r}]", f"reduce every dim but {dim!r} first.")
        k = np.asarray(
            da[dim].values if dim in da.coords else np.arange(1, da.sizes[dim] + 1), dtype=float
        )
        keep = k > 0
        ax.plot(k[keep], np.asarray(da.values, dtype=float)[keep], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="mask")
    first = items[0][1]
    ax.set_xlabel(_label(first[dim], dim) if dim in first.coords else str(dim))
    ax.set_ylabel(_label(first) or "power")
    ax.legend()
    return fig
