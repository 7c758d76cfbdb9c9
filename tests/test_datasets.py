"""Tests for the built-in generators in :mod:`xsciml.datasets`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xsciml.datasets import (
    _grf_eigenvalues,
    default_dataset,
    gaussian_random_field,
    heat,
    heat_solve,
    sample_points,
    subsample,
)

# --------------------------------------------------------------------------- GRF


@pytest.mark.parametrize(
    ("shape", "dims"), [(24, ("sample", "x")), ((12, 20), ("sample", "y", "x"))]
)
def test_grf_shape_dims_coords(shape, dims):
    ds = gaussian_random_field(shape, n=3, domain=(0.0, 4.0), seed=1)
    u = ds["u"]
    assert u.dims == dims
    assert u.dtype == np.float32
    assert u.shape == (3, *np.atleast_1d(shape))
    x = ds["x"].values
    nx = u.sizes["x"]
    np.testing.assert_allclose(x, np.arange(nx) * 4.0 / nx)  # right end point excluded
    assert ds["x"].attrs["axis"] == "X"
    assert ds.attrs["alpha"] == 2.0 and ds.attrs["tau"] == 3.0
    d = len(dims) - 1
    assert ds.attrs["sigma"] == pytest.approx(3.0 ** (0.5 * (4.0 - d)))


def test_grf_per_dim_domain_and_dtype():
    ds = gaussian_random_field((8, 10), domain=((0.0, 1.0), (-2.0, 2.0)), dtype="float64", name="z")
    assert ds["z"].dtype == np.float64
    np.testing.assert_allclose(ds["y"].values, np.arange(8) / 8)
    np.testing.assert_allclose(ds["x"].values, -2.0 + np.arange(10) * 0.4)


@pytest.mark.parametrize("shape", [64, (16, 24)])
def test_grf_zero_spatial_mean(shape):
    u = gaussian_random_field(shape, n=5, dtype="float64", seed=2)["u"]
    space = [d for d in u.dims if d != "sample"]
    mean = u.mean(space)
    assert float(u.std()) > 0.01
    np.testing.assert_allclose(mean.values, 0.0, atol=1e-12)


def test_grf_reproducible_and_seed_dependent():
    a = gaussian_random_field((16, 16), n=2, seed=7)
    b = gaussian_random_field((16, 16), n=2, seed=7)
    c = gaussian_random_field((16, 16), n=2, seed=8)
    xr.testing.assert_identical(a, b)
    assert not np.allclose(a["u"].values, c["u"].values)
    # different samples within one call are different too
    assert not np.allclose(a["u"].values[0], a["u"].values[1])


def _empirical_power(u: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean over samples of |forward-normalised DFT|^2."""
    return (np.abs(np.fft.fftn(u, axes=axes, norm="forward")) ** 2).mean(axis=0)


def test_grf_1d_power_spectrum_slope_and_level():
    alpha, tau, length, n = 2.0, 1.0, 2 * np.pi, 256
    u = gaussian_random_field(
        n, n=400, alpha=alpha, tau=tau, domain=(0.0, length), dtype="float64", seed=0
    )["u"].values
    power = _empirical_power(u, (1,))
    k = np.abs(np.fft.fftfreq(n, d=1.0 / n))  # integer wavenumbers; kappa = k on a 2 pi box
    band = (k >= 8) & (k <= 100)
    slope = np.polyfit(np.log(k[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-2 * alpha, abs=0.1)
    # the level too: E|u_hat_k|^2 = lambda_k / L (resolution independent)
    lam = _grf_eigenvalues((n,), [length], alpha, tau, tau ** (0.5 * (2 * alpha - 1)))
    ratio = power[1:] / (lam[1:] / length)
    assert ratio.mean() == pytest.approx(1.0, abs=0.03)
    assert power[0] < 1e-25  # mean mode removed


def test_grf_2d_power_spectrum_slope():
    alpha, tau, n = 2.5, 1.0, 64
    u = gaussian_random_field(
        (n, n), n=40, alpha=alpha, tau=tau, domain=(0.0, 2 * np.pi), dtype="float64", seed=3
    )["u"].values
    power = _empirical_power(u, (1, 2))
    f = np.fft.fftfreq(n, d=1.0 / n)
    kmag = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    band = (kmag >= 6) & (kmag <= 30)
    slope = np.polyfit(np.log(kmag[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-2 * alpha, abs=0.15)


def test_grf_mode_variance_independent_of_resolution():
    # the same low Fourier mode has the same variance on a coarse and a fine grid
    def mode_power(size):
        u = gaussian_random_field((size, size), n=300, dtype="float64", seed=size)["u"].values
        return _empirical_power(u, (1, 2))[1, 2]

    coarse, fine = mode_power(8), mode_power(32)
    assert fine == pytest.approx(coarse, rel=0.25)
    lam = _grf_eigenvalues((8, 8), [2.0, 2.0], 2.0, 3.0, 3.0)[1, 2] / 4.0
    assert coarse == pytest.approx(lam, rel=0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (4, 4, 4)}, "shape"),
        ({"shape": 1}, "shape"),
        ({"shape": 8, "n": 0}, "n"),
        ({"shape": 8, "alpha": -1.0}, "alpha"),
        ({"shape": 8, "domain": (1.0, 0.0)}, "domain"),
        ({"shape": (8, 8), "domain": ((0, 1), (0, 1), (0, 1))}, "domain"),
    ],
)
def test_grf_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_random_field(**kwargs)


# --------------------------------------------------------------------------- heat


def test_heat_solve_single_mode_exact():
    ny, nx, ly, lx, d = 12, 16, 1.5, 2.0, 0.3
    y = np.arange(ny) * ly / ny
    x = np.arange(nx) * lx / nx
    u0 = np.cos(2 * np.pi * 2 * x / lx)[None, :] * np.sin(2 * np.pi * 3 * y / ly)[:, None]
    times = np.array([0.0, 0.01, 0.1, 1.0])
    u = heat_solve(u0, times, d, (ly, lx))
    assert u.shape == (4, ny, nx) and u.dtype == np.float64
    rate = d * ((2 * np.pi * 2 / lx) ** 2 + (2 * np.pi * 3 / ly) ** 2)
    expected = np.exp(-rate * times)[:, None, None] * u0
    np.testing.assert_allclose(u, expected, rtol=0, atol=1e-10)


def test_heat_solve_leading_dims_and_mean_conserved():
    rng = np.random.default_rng(0)
    u0 = rng.normal(size=(2, 3, 8, 8)) + 5.0
    u = heat_solve(u0, [0.0, 0.5], 0.2, 2.0)
    assert u.shape == (2, 3, 2, 8, 8)
    np.testing.assert_allclose(u[..., 0, :, :], u0, atol=1e-12)  # t = 0 is the identity
    np.testing.assert_allclose(
        u.mean((-2, -1)), np.repeat(u0.mean((-2, -1))[..., None], 2, -1), atol=1e-12
    )


def _laplacian_6th_order(u: np.ndarray, h: float) -> np.ndarray:
    weights = (1 / 90, -3 / 20, 3 / 2, -49 / 18, 3 / 2, -3 / 20, 1 / 90)
    out = np.zeros_like(u)
    for axis in (-2, -1):
        for shift, w in zip(range(3, -4, -1), weights, strict=True):
            out += w * np.roll(u, shift, axis=axis)
    return out / h**2


def test_heat_matches_explicit_finite_differences():
    d, dt_frame, n = 0.1, 0.25, 32
    ds = heat(2, n, diffusivity=d, dt=dt_frame, n_frames=3, dtype="float64", seed=4)
    u = ds["u"].values[:, 0]
    h = 2.0 / n
    steps_per_frame = 100  # explicit RK4, well inside its stability limit

    def rhs(v):
        return d * _laplacian_6th_order(v, h)

    dt = dt_frame / steps_per_frame
    for frame in (1, 2):
        for _ in range(steps_per_frame):
            k1 = rhs(u)
            k2 = rhs(u + dt / 2 * k1)
            k3 = rhs(u + dt / 2 * k2)
            k4 = rhs(u + dt * k3)
            u = u + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        exact = ds["u"].values[:, frame]
        rel = np.abs(u - exact).max() / np.abs(exact).max()
        assert rel < 1e-4


def test_heat_energy_decays_monotonically():
    u = heat(3, 16, n_frames=10, dtype="float64", seed=5)["u"]
    energy = (u**2).sum(("y", "x")).values  # (trajectory, time)
    assert np.all(np.diff(energy, axis=1) < 0)
    assert np.all(energy[:, -1] < 0.5 * energy[:, 0])


def test_heat_dims_coords_attrs():
    ds = heat(2, (8, 12), n_frames=4, dt=0.5, seed=0)
    u = ds["u"]
    assert u.dims == ("trajectory", "time", "y", "x")
    assert u.shape == (2, 4, 8, 12)
    assert u.dtype == np.float32
    np.testing.assert_allclose(ds["time"].values, [0.0, 0.5, 1.0, 1.5])
    assert ds["time"].attrs["units"] == "1"
    assert (ds["x"].attrs["units"], ds["x"].attrs["axis"]) == ("1", "X")
    assert (ds["y"].attrs["units"], ds["y"].attrs["axis"]) == ("1", "Y")
    np.testing.assert_allclose(ds["x"].values, -1.0 + np.arange(12) * 2.0 / 12)
    for key in ("units", "long_name", "description"):
        assert key in u.attrs
    assert "0.1" in u.attrs["description"]
    assert ds.attrs["diffusivity"] == 0.1


def test_heat_default_matches_tutorial_setting():
    ds = heat(1)
    assert dict(ds.sizes) == {"trajectory": 1, "time": 20, "y": 64, "x": 64}
    assert ds["time"].values[-1] == pytest.approx(19 * 0.25)
    assert (ds.attrs["alpha"], ds.attrs["tau"], ds.attrs["diffusivity"]) == (2.5, 7.0, 0.1)
    assert float(ds["x"].min()) == -1.0 and float(ds["x"].max()) < 1.0


def test_heat_initial_state_is_the_grf():
    # the t = 0 frame is the GRF with the same parameters and seed
    u0 = heat(3, 16, n_frames=2, dtype="float64", seed=11)["u"].isel(time=0)
    g = gaussian_random_field((16, 16), n=3, alpha=2.5, tau=7.0, dtype="float64", seed=11)["u"]
    np.testing.assert_allclose(u0.values, g.values, atol=1e-12)


def test_heat_datetime_axis_and_netcdf_roundtrip(tmp_path):
    ds = heat(1, 8, n_frames=5, time_units="6h", start="2010-03-01")
    t = ds.indexes["time"]
    assert ds["time"].dtype.kind == "M"
    assert t.is_monotonic_increasing
    assert t[0] == pd.Timestamp("2010-03-01")
    assert (np.diff(t.values) == np.timedelta64(90, "m")).all()  # dt = 0.25 x 6 h
    path = tmp_path / "heat.nc"
    ds.to_netcdf(path)
    with xr.open_dataset(path) as back:
        xr.testing.assert_allclose(back.load(), ds)
        assert back["time"].dtype.kind == "M"


def test_heat_bad_input():
    with pytest.raises(ValueError, match="time_units"):
        heat(1, 8, n_frames=2, time_units="soon")
    with pytest.raises(ValueError, match="diffusivity"):
        heat(1, 8, diffusivity=-1.0)
    with pytest.raises(ValueError, match="times"):
        heat_solve(np.zeros((4, 4)), [-1.0], 0.1, 1.0)
    with pytest.raises(ValueError, match="u0"):
        heat_solve(np.zeros(4), [0.0], 0.1, 1.0)


# --------------------------------------------------------------------------- defaults


def test_default_datasets():
    ds = default_dataset()
    assert dict(ds.sizes) == {"trajectory": 4, "time": 20, "y": 32, "x": 32}
    g = default_dataset("grf2d")
    assert g["u"].dims == ("sample", "y", "x") and g.sizes["sample"] == 16
    xr.testing.assert_identical(default_dataset("heat"), ds)
    with pytest.raises(ValueError, match="kind"):
        default_dataset("wave")


# --------------------------------------------------------------------------- masks


def test_sample_points_count_dims_coords():
    ds = heat(2, 10, n_frames=3)
    mask = sample_points(ds, 0.3, seed=0, dims=("y", "x"))
    assert mask.dtype == bool and mask.dims == ("y", "x")
    assert int(mask.sum()) == 30
    xr.testing.assert_identical(mask["x"], ds["x"])
    xr.testing.assert_identical(sample_points(ds, 0.3, seed=0, dims=("y", "x")), mask)
    assert not mask.equals(sample_points(ds, 0.3, seed=1, dims=("y", "x")))
    full = sample_points(ds["u"], 0.5, seed=0)
    assert full.dims == ds["u"].dims and int(full.sum()) == ds["u"].size // 2


def test_subsample_shares_gaps_across_time():
    da = heat(1, 8, n_frames=4)["u"]
    gappy = subsample(da, 0.25, seed=3, dims=("y", "x"))
    valid = gappy.notnull()
    assert int(valid.isel(trajectory=0, time=0).sum()) == 16
    assert (valid == valid.isel(time=0)).all()  # same points at every time
    xr.testing.assert_equal(gappy.where(valid, 0.0), da.where(valid, 0.0))


def test_sample_points_bad_input():
    da = heat(1, 8, n_frames=2)["u"]
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            sample_points(da, fraction)
    with pytest.raises(KeyError, match="lat"):
        sample_points(da, 0.5, dims=("lat",))
    with pytest.raises(TypeError, match="obj"):
        sample_points(np.zeros((3, 3)), 0.5)


def test_grf_covariance_is_the_samples_covariance_by_offset():
    from xsciml.datasets import grf_covariance

    C = grf_covariance((16, 12), alpha=2.5, tau=4.0, domain=((0.0, 2.0), (-1.0, 1.5)))
    u = gaussian_random_field((16, 12), n=4000, alpha=2.5, tau=4.0, domain=((0.0, 2.0), (-1.0, 1.5)),
                              seed=3, dtype="float64")["u"].values
    # empirical covariance of u(x) with u(x + (dy, dx)), averaged over x (stationary)
    for dy, dx in ((0, 0), (1, 0), (0, 2), (3, 5)):
        emp = np.mean(u * np.roll(u, (-dy, -dx), axis=(1, 2)))
        assert emp == pytest.approx(C[dy, dx], rel=0.05, abs=0.02 * C[0, 0])
    assert abs(C.sum()) < 1e-9 * C[0, 0] * C.size  # the mean mode is removed
    with pytest.raises(ValueError, match="tau must be a positive"):
        grf_covariance(8, tau=-1.0)
