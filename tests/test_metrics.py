"""Metrics against known answers: Fourier modes, Gaussian KL and CRPS, shifts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy.stats import norm

from xsciml import metrics


def field(shape=(3, 8, 12), seed=0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    return xr.DataArray(rng.normal(size=shape), dims=("time", "lat", "lon"),
                        coords={"time": np.arange(shape[0]), "lat": np.linspace(60, 50, shape[1]),
                                "lon": np.linspace(-5, 5, shape[2])})


# ------------------------------------------------------------------ point-wise
def test_rmse_bias_known_values_and_dims() -> None:
    t = field()
    p = t + 2.0
    assert float(metrics.rmse(p, t)) == pytest.approx(2.0)
    assert float(metrics.bias(p, t)) == pytest.approx(2.0)
    noise = xr.DataArray([1.0, -1.0, 3.0], dims="time", coords={"time": t.time})
    r = metrics.rmse(t + noise, t, dims=("lat", "lon"))
    np.testing.assert_allclose(r.values, [1.0, 1.0, 3.0])
    # an extra sample dim of pred is kept by default
    ens = xr.concat([t + 1.0, t - 3.0], dim="sample")
    np.testing.assert_allclose(metrics.bias(ens, t).values, [1.0, -3.0])


def test_pointwise_refuses_mismatched_coords() -> None:
    t = field()
    with pytest.raises(ValueError, match="different coordinates"):
        metrics.rmse(t.assign_coords(lat=t.lat + 0.1), t)
    with pytest.raises(KeyError, match="not a dimension"):
        metrics.rmse(t, t, dims="depth")
    with pytest.raises(TypeError, match="DataArray"):
        metrics.bias(t.values, t)


def test_crps_one_member_is_mae_and_brute_force() -> None:
    t = field()
    rng = np.random.default_rng(1)
    one = (t + rng.normal(size=t.shape)).expand_dims(sample=1)
    assert float(metrics.crps_ensemble(one, t)) == pytest.approx(float(abs(one[0] - t).mean()))
    ens = xr.DataArray(rng.normal(size=(5, 4)), dims=("sample", "x"))
    y = xr.DataArray(rng.normal(size=4), dims="x")
    e, yy = ens.values, y.values
    brute = (np.abs(e - yy).mean(0) - 0.5 * np.abs(e[:, None] - e[None]).mean((0, 1))).mean()
    assert float(metrics.crps_ensemble(ens, y)) == pytest.approx(brute)


def test_crps_of_a_large_gaussian_ensemble_matches_the_closed_form() -> None:
    rng = np.random.default_rng(2)
    sigma, y = 1.5, 0.7
    ens = xr.DataArray(rng.normal(scale=sigma, size=(4000, 1)), dims=("sample", "x"))
    z = y / sigma
    exact = sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))
    assert float(metrics.crps_ensemble(ens, xr.DataArray([y], dims="x"))) == pytest.approx(exact, abs=0.02)


def test_sample_variability() -> None:
    t = field()
    ens = xr.concat([t - 0.5, t + 0.5], dim="sample")
    assert float(metrics.sample_variability(ens)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.sample_variability(ens.isel(sample=[0]))


# ------------------------------------------------------------------ coarsening
def test_coarsen_blocks_mean_and_subsample() -> None:
    f = field((2, 8, 12))
    c = metrics.coarsen_blocks(f, 4)
    assert c.sizes == {"time": 2, "lat": 2, "lon": 3}
    np.testing.assert_allclose(c.values[1, 0, 2], f.values[1, 0:4, 8:12].mean())
    np.testing.assert_allclose(c.lat.values, f.lat.values.reshape(2, 4).mean(1))
    s = metrics.coarsen_blocks(f, {"lat": 2, "lon": 4}, how="subsample")
    np.testing.assert_array_equal(s.values, f.values[:, ::2, ::4])
    # the same operator C' as the downscaling pipeline's, for both modes
    import torch

    from xsciml.downscale.pipeline import coarsen

    for how in ("mean", "subsample"):
        np.testing.assert_allclose(metrics.coarsen_blocks(f, 4, how=how).values,
                                   coarsen(torch.as_tensor(f.values), 4, how=how).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="not a multiple"):
        metrics.coarsen_blocks(f, 5)
    with pytest.raises(ValueError, match="how"):
        metrics.coarsen_blocks(f, 2, how="max")


def test_constraint_rmse_zero_and_known_offset() -> None:
    f = field((2, 8, 12)) + 280.0
    y = metrics.coarsen_blocks(f, 4)
    assert float(metrics.constraint_rmse(f, y, 4)) < 1e-12
    off = float(metrics.constraint_rmse(f + 0.5, y, 4))
    assert off == pytest.approx(0.5 / math.sqrt(float((y**2).mean())))
    ens = xr.concat([f, f + 1.0], dim="sample")
    per = metrics.constraint_rmse(ens, y, 4, keep_dims=("sample",))
    assert per.dims == ("sample",) and float(per[0]) < 1e-12 and float(per[1]) > 1e-3
    with pytest.raises(ValueError, match="does not match"):
        metrics.constraint_rmse(f, y.isel(lat=slice(None, None, -1)), 4)
    with pytest.raises(ValueError, match="matching factor"):
        metrics.constraint_rmse(f, y, 2)


# ------------------------------------------------------------------ spectra
def test_energy_spectrum_of_single_modes_on_a_rectangular_grid() -> None:
    ny, nx = 16, 24  # N = 24: a y-mode of 2 cycles is wavenumber 3, like an x-mode of 3
    y, x = np.arange(ny)[:, None], np.arange(nx)[None, :]
    fx = xr.DataArray(2.0 * np.cos(2 * np.pi * 3 * x / nx) + 0 * y, dims=("lat", "lon"))
    fy = xr.DataArray(np.sin(2 * np.pi * 2 * y / ny) + 0 * x, dims=("lat", "lon"))
    ex, ey = metrics.energy_spectrum(fx), metrics.energy_spectrum(fy)
    assert ex.dims == ("wavenumber",) and ex.wavenumber.values[0] == 1
    assert ex.sizes["wavenumber"] == 12  # shells 1..N/2
    assert float(ex.sel(wavenumber=3)) == pytest.approx(2.0)  # A^2 / 2
    assert float(ey.sel(wavenumber=3)) == pytest.approx(0.5)
    assert float(ex.sum()) == pytest.approx(2.0) and float(ey.sum()) == pytest.approx(0.5)


def test_energy_spectrum_averages_other_dims_and_checks_nan() -> None:
    f = field((4, 8, 8))
    e = metrics.energy_spectrum(f)
    each = [metrics.energy_spectrum(f.isel(time=i)) for i in range(4)]
    np.testing.assert_allclose(e.values, np.mean([s.values for s in each], axis=0))
    kept = metrics.energy_spectrum(f, keep_dims=("time",))
    assert kept.dims == ("time", "wavenumber")
    with pytest.raises(ValueError, match="NaN"):
        metrics.energy_spectrum(f.where(f.lat < 58))


def test_melr_known_ratios_and_per_sample_average() -> None:
    t = field((4, 16, 16))
    assert metrics.melr(t, t) == 0.0
    assert metrics.melr(2 * t, t) == pytest.approx(math.log(4))
    assert metrics.melr(2 * t, t, weighted=True) == pytest.approx(math.log(4))
    ens = xr.concat([t, 2 * t], dim="sample")
    assert metrics.melr(ens, t) == pytest.approx(0.5 * math.log(4))
    # never the ensemble mean (1.5 t would give log 2.25)
    assert metrics.melr(ens, t) != pytest.approx(math.log(2.25))


def test_melr_weighted_emphasises_energetic_scales() -> None:
    ny = nx = 16
    y, x = np.mgrid[0:ny, 0:nx]
    big, small = np.cos(2 * np.pi * x / nx), 0.1 * np.cos(2 * np.pi * 5 * y / ny)
    rng = np.random.default_rng(0)
    noise = 1e-3 * rng.normal(size=(ny, nx))
    t = xr.DataArray(big + small + noise, dims=("lat", "lon"))
    p = xr.DataArray(big + 2.0 * small + noise, dims=("lat", "lon"))  # small-scale amplitude x2
    w, u = metrics.melr(p, t, weighted=True), metrics.melr(p, t)
    assert 0 < w < u


# ------------------------------------------------------------------ distributions
def test_kde_kld_matches_gaussian_closed_form() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    t = xr.DataArray(rng.normal(size=(n, 3)), dims=("time", "site"))
    p = xr.DataArray(1.0 + 1.5 * rng.normal(size=(n, 3)), dims=("time", "site"))
    exact = math.log(1.5) + (1 + 1) / (2 * 1.5**2) - 0.5  # KL(N(0,1) || N(1, 1.5^2)) = 0.350
    assert metrics.kde_kld(p, t) == pytest.approx(exact, abs=0.04)
    assert metrics.kde_kld(t, t) == pytest.approx(0.0, abs=1e-12)


def test_kde_kld_per_sample_and_masks() -> None:
    rng = np.random.default_rng(4)
    t = xr.DataArray(rng.normal(size=(400, 2)), dims=("time", "site"))
    shifted = t + 1.0
    ens = xr.concat([t, shifted], dim="sample")
    both = metrics.kde_kld(ens, t)
    assert both == pytest.approx(0.5 * metrics.kde_kld(shifted, t))
    masked = xr.concat([t, xr.full_like(t.isel(site=[0]), np.nan)], dim="site")  # all-NaN pixel
    assert metrics.kde_kld(masked + 1.0, masked) == pytest.approx(metrics.kde_kld(t + 1.0, t))
    with pytest.warns(RuntimeWarning, match="constant"):
        metrics.kde_kld(t.where(t.site == 0, 1.0), t)


def test_wasserstein1_of_shift_is_the_shift() -> None:
    rng = np.random.default_rng(5)
    t = xr.DataArray(rng.normal(size=(100, 2, 3)), dims=("time", "lat", "lon"))
    assert metrics.wasserstein1(t + 0.75, t) == pytest.approx(0.75)
    ens = xr.concat([t + 1.0, t - 3.0], dim="sample")
    assert metrics.wasserstein1(ens, t) == pytest.approx(2.0)
    with pytest.raises(KeyError, match="time"):
        metrics.wasserstein1(t.rename(time="step"), t)


def test_spectrum_and_melr_find_era5_latitude_longitude():
    from xsciml.coords import horizontal_dims
    from xsciml.metrics import energy_spectrum, melr

    rng = np.random.default_rng(1)
    f = xr.DataArray(rng.normal(size=(3, 8, 12)), dims=("time", "latitude", "longitude"),
                     coords={"latitude": np.linspace(60, 40, 8), "longitude": np.arange(12.0)})
    ref = energy_spectrum(f.rename(latitude="lat", longitude="lon"), dims=("lat", "lon"))
    np.testing.assert_allclose(energy_spectrum(f).values, ref.values)
    assert np.isclose(melr(2 * f, f), np.log(4))
    # CF attributes on other names, as to_tensors reads them
    cf = f.rename(latitude="nav_y", longitude="nav_x").assign_coords(
        nav_y=("nav_y", f.latitude.values, {"standard_name": "latitude"}),
        nav_x=("nav_x", f.longitude.values, {"units": "degrees_east"}))
    assert horizontal_dims(cf) == ("nav_y", "nav_x")
    # 2-D curvilinear lat/lon: the grid dims, in the data's order
    curv = f.rename(latitude="j", longitude="i").assign_coords(
        lat=(("j", "i"), np.zeros((8, 12))), lon=(("j", "i"), np.zeros((8, 12))))
    assert horizontal_dims(curv) == ("j", "i")
    # projected grids: CF axis, then y/x names
    xy = f.rename(latitude="northing", longitude="easting").assign_coords(
        northing=("northing", np.arange(8.0), {"axis": "Y"}),
        easting=("easting", np.arange(12.0), {"axis": "X"}))
    assert horizontal_dims(xy) == ("northing", "easting")
    assert horizontal_dims(f.rename(latitude="y", longitude="x")) == ("y", "x")
    # dims stay an argument
    np.testing.assert_allclose(energy_spectrum(xy, dims=("northing", "easting")).values, ref.values)
    with pytest.raises(KeyError, match="pass dims="):
        energy_spectrum(f.rename(latitude="a", longitude="b"))
