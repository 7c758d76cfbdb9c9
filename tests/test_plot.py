"""Tests for the plotting helpers in :mod:`xsciml.plot` (Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from xsciml import plot as xplot  # noqa: E402
from xsciml.datasets import gaussian_random_field, heat  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _saved(fig: Figure, tmp_path, name: str = "fig.png") -> None:
    path = tmp_path / name
    fig.savefig(path)
    assert path.stat().st_size > 1000


def _mesh_values(ax) -> np.ndarray:
    arr = ax.collections[0].get_array()
    return np.ma.filled(np.ma.asarray(arr, dtype=float), np.nan)


def _field(ny: int = 6, nx: int = 9, seed: int = 0) -> xr.DataArray:
    return gaussian_random_field((ny, nx), seed=seed, dtype="float64")["u"].isel(sample=0)


# --------------------------------------------------------------------------- maps


def test_plot_map_image_equals_values(tmp_path):
    da = _field()
    ax = xplot.plot_map(da, title="field")
    assert len(ax.figure.axes) == 2  # map and colour bar
    np.testing.assert_array_equal(_mesh_values(ax), da.values)
    assert ax.get_title() == "field"
    assert ax.get_xlabel() == "x"
    # robust limits are the 2nd / 98th percentiles, made symmetric for a signed field
    lo, hi = np.percentile(da.values, [2, 98])
    assert ax.collections[0].get_clim() == pytest.approx((-max(-lo, hi), max(-lo, hi)))
    _saved(ax.figure, tmp_path)


def test_plot_map_descending_latitude_and_nan():
    lat = np.array([30.0, 10.0, -10.0])
    lon = np.array([0.0, 90.0, 180.0, 270.0])
    values = np.arange(12.0).reshape(3, 4)
    values[1, 2] = np.nan
    da = xr.DataArray(
        values,
        dims=("lat", "lon"),
        coords={"lat": lat, "lon": lon},
        name="tas",
        attrs={"units": "K"},
    )
    ax = xplot.plot_map(da, robust=False, cmap="magma")
    np.testing.assert_array_equal(_mesh_values(ax), values[::-1])  # drawn north up
    assert ax.get_ylim()[0] < ax.get_ylim()[1]
    assert ax.collections[0].get_clim() == (0.0, 11.0)
    assert ax.collections[0].get_cmap().name == "magma"
    assert ax.get_title() == "tas"


def test_plot_map_transposed_dims_and_size_one_dim():
    da = _field(5, 7).transpose("x", "y").expand_dims(time=[0])
    ax = xplot.plot_map(da)
    np.testing.assert_array_equal(_mesh_values(ax), da.isel(time=0).transpose("y", "x").values)
    assert "time = 0" in ax.get_title()


def test_plot_map_curvilinear_coords():
    j, i = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    lon = 10.0 + 2.0 * i + 0.5 * j
    lat = 40.0 + 1.5 * j + 0.2 * i
    da = xr.DataArray(
        np.sin(i + j), dims=("j", "i"), coords={"lon": (("j", "i"), lon), "lat": (("j", "i"), lat)}
    )
    ax = xplot.plot_map(da)
    np.testing.assert_array_equal(_mesh_values(ax), da.values)
    x0, x1 = ax.get_xlim()
    assert x0 <= lon.min() and x1 >= lon.max()  # drawn in lon/lat, not in index space
    assert ax.get_xlabel() == "lon" and ax.get_ylabel() == "lat"


def test_plot_map_rejects_3d_and_non_dataarray():
    da = heat(1, 8, n_frames=3)["u"].isel(trajectory=0)
    with pytest.raises(ValueError, match="2-D"):
        xplot.plot_map(da)
    with pytest.raises(TypeError, match="DataArray"):
        xplot.plot_map(da.to_dataset())
    with pytest.raises(ValueError, match="cartopy"):
        xplot.plot_map(da.isel(time=0), coastlines=True)


def test_plot_panels_shared_and_separate_scales(tmp_path):
    fields = {f"s{i}": _field(seed=i) * (i + 1) for i in range(3)}
    fig = xplot.plot_panels(fields, ncols=2, suptitle="three")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # 3 panels (4th grid cell removed) + 1 colour bar
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == ["s0", "s1", "s2"]
    clims = {ax.collections[0].get_clim() for ax in fig.axes[:3]}
    assert len(clims) == 1  # shared scale
    for ax, da in zip(fig.axes[:3], fields.values(), strict=True):
        np.testing.assert_array_equal(_mesh_values(ax), da.values)
    _saved(fig, tmp_path)

    fig2 = xplot.plot_panels(list(fields.values()), shared_scale=False)
    assert len(fig2.axes) == 6  # one colour bar per panel
    panels = [ax for ax in fig2.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 3
    assert len({ax.collections[0].get_clim() for ax in panels}) == 3


def test_plot_panels_bad_input():
    with pytest.raises(ValueError, match="empty"):
        xplot.plot_panels([])
    with pytest.raises(TypeError, match="DataArray"):
        xplot.plot_panels([np.zeros((3, 3))])


# --------------------------------------------------------------------------- forecasts


def _truth_forecast():
    truth = heat(1, 8, n_frames=6, dtype="float64", seed=1)["u"].isel(trajectory=0)
    forecast = truth + 0.01 * np.arange(6.0)[:, None, None]
    return truth, forecast


def test_plot_forecast_panels_rows_and_values(tmp_path):
    truth, forecast = _truth_forecast()
    times = truth["time"].values[[0, 2, 5]]
    fig = xplot.plot_forecast_panels(truth, forecast, times=times)
    assert len(fig.axes) == 3 * 3 + 2  # truth/forecast/error x 3 times + 2 colour bars
    for c, t in enumerate(times):
        ax_t, ax_f, ax_e = fig.axes[c], fig.axes[3 + c], fig.axes[6 + c]
        np.testing.assert_allclose(_mesh_values(ax_t), truth.sel(time=t).values)
        np.testing.assert_allclose(_mesh_values(ax_f), forecast.sel(time=t).values)
        np.testing.assert_allclose(_mesh_values(ax_e), (forecast - truth).sel(time=t).values)
    assert fig.axes[0].get_title() == "time = 0"
    assert fig.axes[2].get_title() == "time = 1.25"
    _saved(fig, tmp_path)


def test_plot_forecast_panels_default_times_without_error():
    truth, forecast = _truth_forecast()
    fig = xplot.plot_forecast_panels(truth, forecast, error=False, max_columns=3)
    assert len(fig.axes) == 2 * 3 + 1
    # first and last frames are among the default columns
    np.testing.assert_allclose(_mesh_values(fig.axes[0]), truth.isel(time=0).values)
    np.testing.assert_allclose(_mesh_values(fig.axes[2]), truth.isel(time=-1).values)


def test_plot_forecast_panels_datetime_axis():
    truth = heat(1, 8, n_frames=4, time_units="6h")["u"].isel(trajectory=0)
    fig = xplot.plot_forecast_panels(truth, truth * 0.9, max_columns=2)
    assert fig.axes[0].get_title() == "time = 2000-01-01 00:00:00"


def test_plot_forecast_panels_bad_input():
    truth, forecast = _truth_forecast()
    with pytest.raises(ValueError, match="same dims"):
        xplot.plot_forecast_panels(truth, forecast.rename(x="lon"))
    with pytest.raises(ValueError, match="time_dim"):
        xplot.plot_forecast_panels(truth, forecast, time_dim="lead")
    with pytest.raises(ValueError, match="spatial grid"):
        xplot.plot_forecast_panels(truth, forecast.assign_coords(x=forecast.x + 1))
    with pytest.raises(KeyError, match="times"):
        xplot.plot_forecast_panels(truth, forecast, times=[99.0])
    with pytest.raises(ValueError, match="two spatial dims"):
        xplot.plot_forecast_panels(truth.isel(x=0), forecast.isel(x=0))


# --------------------------------------------------------------------------- curves


class _History:
    def __init__(self, loss, val_loss):
        self.loss = loss
        self.val_loss = val_loss


def test_plot_history_object_and_dict(tmp_path):
    loss = [(i, 1.0 / (i + 1)) for i in range(10)]
    val = [(i, 1.5 / (i + 1)) for i in range(0, 10, 3)]
    fig = xplot.plot_history(_History(loss, val))
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.lines) == 2
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [s for s, _ in loss])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [v for _, v in loss])
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [v for _, v in val])
    assert ax.get_yscale() == "log"
    _saved(fig, tmp_path)

    fig2 = xplot.plot_history({"loss": [-1.0, -2.0, -2.5]})  # a negative NLL, no validation
    ax2 = fig2.axes[0]
    assert len(ax2.lines) == 1 and ax2.get_yscale() == "linear"
    np.testing.assert_array_equal(ax2.lines[0].get_xdata(), [0, 1, 2])


def test_plot_history_bad_input():
    with pytest.raises(TypeError, match="history"):
        xplot.plot_history([1, 2, 3])
    with pytest.raises(KeyError, match="loss"):
        xplot.plot_history({"val_loss": []})


def test_plot_error_vs_lead_timedelta_hours(tmp_path):
    lead = pd.timedelta_range("0h", "18h", freq="6h")
    err = xr.DataArray([0.1, 0.3, 0.4, 0.7], dims="lead", coords={"lead": lead}, name="rmse")
    fig = xplot.plot_error_vs_lead({"model": err, "persistence": 2 * err})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["model", "persistence"]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 6, 12, 18])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), 2 * err.values)
    assert ax.get_xlabel() == "lead [hours]"
    _saved(fig, tmp_path)
    with pytest.raises(ValueError, match="lead"):
        xplot.plot_error_vs_lead(err.rename(lead="step"))
    with pytest.raises(ValueError, match="1-D"):
        xplot.plot_error_vs_lead(err.expand_dims(model=["a", "b"]))


def test_plot_calibration_known_coverage(tmp_path):
    obs = np.array([0.0, 0.5, 1.0, 2.0])  # |z| = 0, 0.5, 1, 2 with std 1
    levels = np.array([0.3, 0.7, 0.9, 0.99])  # half-widths 0.385, 1.036, 1.645, 2.576
    fig = xplot.plot_calibration(obs, np.zeros(4), np.ones(4), levels=levels)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [0, 1])  # the diagonal
    np.testing.assert_allclose(ax.lines[1].get_xdata(), levels)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.25, 0.75, 0.75, 1.0])
    _saved(fig, tmp_path)


def test_plot_calibration_calibrated_and_overconfident_dataarrays():
    rng = np.random.default_rng(0)
    obs = xr.DataArray(rng.normal(size=(40, 50)), dims=("time", "x"))
    mean = xr.zeros_like(obs)
    std = xr.ones_like(obs)
    levels = np.linspace(0.1, 0.9, 5)
    calibrated = xplot.plot_calibration(obs, mean, std, levels=levels).axes[0].lines[1].get_ydata()
    np.testing.assert_allclose(calibrated, levels, atol=0.03)
    narrow = (
        xplot.plot_calibration(obs, mean, 0.5 * std, levels=levels).axes[0].lines[1].get_ydata()
    )
    assert np.all(narrow < levels)
    with pytest.raises(ValueError, match="std"):
        xplot.plot_calibration(obs, mean, -std)
    with pytest.raises(ValueError, match="levels"):
        xplot.plot_calibration(obs, mean, std, levels=[0.5, 1.0])


def test_plot_spectrum_loglog_skips_mean_mode(tmp_path):
    k = np.arange(0.0, 9.0)
    power = np.r_[5.0, k[1:] ** -3.0]
    spec = xr.DataArray(power, dims="wavenumber", coords={"wavenumber": k}, name="energy")
    fig = xplot.plot_spectrum({"truth": spec, "model": 2 * spec})
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert len(ax.lines) == 2
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), k[1:])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), power[1:])
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), 2 * power[1:])
    _saved(fig, tmp_path)
    with pytest.raises(ValueError, match="wavenumber"):
        xplot.plot_spectrum(spec.rename(wavenumber="k"))
