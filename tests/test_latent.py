"""Latent interpolators: codes per snapshot, gap filling, prior samples, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xsciml
from xsciml.models.latent import LatentInterpolator


def manifold(n_snap=48, n=20, seed=0):
    """Snapshots a·sin(πx) + b·cos(πy): a 2-D manifold of fields."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n)
    a, b = rng.normal(size=(2, n_snap))
    u = a[:, None, None] * np.sin(np.pi * x)[None, None, :] + b[:, None, None] * np.cos(np.pi * x)[None, :, None]
    return xr.Dataset({"u": (("time", "y", "x"), u, {"units": "m"})},
                      coords={"time": np.arange(n_snap), "y": x, "x": x})


@pytest.fixture(scope="module")
def fitted():
    ds = manifold()
    li = ds.isel(time=slice(0, 40)).sciml.fit_latent(
        "u", sample_dim="time", latent_dim=4, network_kwargs={"width": 32, "depth": 1},
        steps=150, batch_size=2048, progress=False, seed=0)
    return ds, li


def test_gap_filling_new_snapshots(fitted):
    ds, li = fitted
    test = ds.isel(time=slice(40, 48))
    keep = xsciml.datasets.sample_points(test.u, 0.2, seed=1)
    z = li.encode(test.where(keep), steps=300, progress=False)
    assert set(z.data_vars) == {"z", "z_std"} and z.z.dims == ("time", "latent")
    assert bool((z.z_std > 0).all())
    rec = li.decode(z, test)
    assert rec.dims == ("time", "y", "x") and rec.attrs["units"] == "m"
    err = (rec - test.u).where(~keep)
    nrmse = float(np.sqrt((err**2).mean()) / test.u.std())
    # a field-mean predictor has nRMSE 1; two numbers describe each snapshot
    assert nrmse < 0.2, nrmse


def test_decode_other_grid_and_prior_samples(fitted):
    ds, li = fitted
    fine = {"y": np.linspace(-1, 1, 7), "x": np.linspace(-1, 1, 9)}
    out = li.decode(li.codes.isel(time=[0, 1]), fine)
    assert out.shape == (2, 7, 9)
    s = li.sample(5, fine, seed=0)
    assert s.dims == ("sample", "y", "x") and float(s.std("sample").mean()) > 0
    xr.testing.assert_equal(s, li.sample(5, fine, seed=0))


def test_map_variant_and_save_load(tmp_path):
    ds = manifold(n_snap=12, n=12)
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=3, variational=False, network="siren",
                             network_kwargs={"width": 32, "depth": 2}, steps=100, progress=False)
    z = li.encode(ds.isel(time=[0, 1]), steps=20, progress=False)
    assert isinstance(z, xr.DataArray) and z.shape == (2, 3)
    path = li.save(tmp_path / "li.xsciml")
    li2 = xsciml.load(path)
    assert isinstance(li2, LatentInterpolator)
    xr.testing.assert_identical(li.decode(z, ds, device="cpu"), li2.decode(z, ds, device="cpu"))


def test_latent_bad_input():
    ds = manifold(n_snap=6, n=8)
    with pytest.raises(KeyError, match="sample_dim 'member'"):
        ds.sciml.fit_latent("u", sample_dim="member", steps=1, progress=False)
    with pytest.raises(ValueError, match="at least 2 snapshots"):
        ds.isel(time=[0]).sciml.fit_latent("u", sample_dim="time", steps=1, progress=False)
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=2, steps=5, progress=False,
                             network="mfn", network_kwargs={"width": 16, "depth": 1})
    bad = ds.isel(time=[0, 1]).copy(deep=True)
    bad["u"][1] = np.nan
    with pytest.raises(ValueError, match="no valid point"):
        li.encode(bad, steps=2)
    with pytest.raises(ValueError, match="shape \\[S, 2\\]"):
        li.decode(np.zeros((3, 5)), ds)


# --------------------------------------------------------------------------- basis decoder
def lowrank(n_snap=30, ny=9, nx=11, rank=3, noise=0.0, seed=0):
    """Snapshots mean + rank-``rank`` random fields (+ white noise), on a descending-y grid."""
    rng = np.random.default_rng(seed)
    y, x = np.linspace(1, -1, ny), np.linspace(-2, 2, nx)
    mean = np.cos(y)[:, None] + 0.3 * x[None]
    modes = rng.normal(size=(rank, ny, nx)) * np.array([3.0, 2.0, 1.0, 0.5, 0.25][:rank])[:, None, None]
    u = mean + np.einsum("sr,ryx->syx", rng.normal(size=(n_snap, rank)), modes)
    u = u + noise * rng.normal(size=u.shape)
    return xr.Dataset({"u": (("time", "y", "x"), u, {"units": "K"})},
                      coords={"time": np.arange(n_snap), "y": y, "x": x})


def numpy_ppca(train, k, sigma):
    """Mean, EOFs [k, P] and PPCA scales sqrt(λ - σ²) from an independent SVD."""
    mean = train.mean(0)
    _, sv, vt = np.linalg.svd(train - mean, full_matrices=False)
    lam = sv[:k] ** 2 / (len(train) - 1)
    return mean, vt[:k], np.sqrt(lam - sigma**2), lam


def test_basis_pca_init_reproduces_ppca_on_training_grid():
    ds = lowrank(noise=0.05)
    k, sigma = 3, 0.05
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=k, network_kwargs={"depth": 0},
                             noise=sigma, steps=0, val_fraction=0, progress=False)
    train = ds.u.values.reshape(len(ds.time), -1)
    mean, vt, scale, lam = numpy_ppca(train, k, sigma)
    # posterior-mean reconstruction of PPCA: mean + Σ_j v_j pc_j (λ_j - σ²) / λ_j
    expected = mean + ((train - mean) @ vt.T * (scale**2 / lam)) @ vt
    rec = li.decode(li.codes, ds).values.reshape(len(ds.time), -1)
    np.testing.assert_allclose(rec, expected, atol=2e-4 * np.abs(train).max())
    assert float(li.log_sigma.exp()[0]) * li.scaler.std[0] == pytest.approx(sigma, rel=1e-5)


@pytest.mark.parametrize("variational", [True, False])
def test_basis_encode_partial_matches_closed_form_map(variational):
    ds = lowrank(n_snap=40, noise=0.05)
    train, test = ds.isel(time=slice(0, 32)), ds.isel(time=slice(32, 40))
    k, sigma = 3, 0.1
    li = train.sciml.fit_latent("u", sample_dim="time", latent_dim=k, network_kwargs={"depth": 0},
                                noise=sigma, variational=variational, steps=0, val_fraction=0,
                                progress=False)
    keep = xsciml.datasets.sample_points(test.u, 0.15, seed=3).values.reshape(len(test.time), -1)
    z = li.encode(test.where(xr.DataArray(keep.reshape(test.u.shape), dims=test.u.dims)), progress=False)
    rec = li.decode(z, test).values.reshape(len(test.time), -1)
    # independent answer: PPCA posterior from the observed points, z ~ N(0, I), B = V sqrt(λ - σ²)
    mean, vt, scale, _ = numpy_ppca(train.u.values.reshape(len(train.time), -1), k, sigma)
    B = vt.T * scale
    y = test.u.values.reshape(len(test.time), -1)
    for s in range(len(y)):
        o = keep[s]
        prec = B[o].T @ B[o] / sigma**2 + np.eye(k)
        zs = np.linalg.solve(prec, B[o].T @ (y[s, o] - mean[o]) / sigma**2)
        np.testing.assert_allclose(rec[s], mean + B @ zs, atol=1e-3)
        if variational:  # exact posterior std (codes are defined up to sign: compare |B z| and std)
            np.testing.assert_allclose(np.sort(z.z_std.values[s]), np.sort(np.sqrt(np.diag(np.linalg.inv(prec)))),
                                       rtol=1e-3)
    assert (z.z.dims if variational else z.dims) == ("time", "latent")


def test_basis_decode_on_another_grid_is_bilinear():
    ds = lowrank()
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=3, network_kwargs={"depth": 0},
                             steps=0, progress=False)
    codes = li.codes.isel(time=[0, 5])
    on_grid = li.decode(codes, ds)
    fine = {"y": np.linspace(0.95, -0.95, 23), "x": np.linspace(-1.9, 1.9, 31)}
    out = li.decode(codes, fine)
    assert out.dims == ("time", "y", "x") and out.shape == (2, 23, 31) and out.attrs["units"] == "K"
    expected = on_grid.interp(y=fine["y"], x=fine["x"], method="linear")
    np.testing.assert_allclose(out.values, expected.values, atol=1e-4)


def test_basis_gap_filling_and_residual_training(tmp_path):
    ds = lowrank(n_snap=40, noise=0.0)
    train, test = ds.isel(time=slice(0, 32)), ds.isel(time=slice(32, 40))
    keep = xsciml.datasets.sample_points(test.u, 0.1, seed=1)
    li = train.sciml.fit_latent("u", sample_dim="time", latent_dim=3, network_kwargs={"width": 16, "depth": 1},
                                steps=30, batch_size=512, progress=False)
    assert li.history is not None and len(li.history.loss) == 30
    z = li.encode(test.where(keep), steps=20, progress=False)
    rec = li.decode(z, test)
    err = (rec - test.u).where(~keep)
    # three modes, observed at ~10 points each: the linear part recovers them (nRMSE 1 = the mean)
    assert float(np.sqrt((err**2).mean()) / test.u.std()) < 0.05
    li2 = xsciml.load(li.save(tmp_path / "basis.xsciml"))
    xr.testing.assert_identical(li2.decode(z, test, device="cpu"), li.decode(z, test, device="cpu"))


def test_basis_cv_noise_estimates_the_noise():
    sigma = 0.2
    ds = lowrank(n_snap=60, ny=15, nx=17, rank=2, noise=sigma, seed=2)
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=2, network_kwargs={"depth": 0},
                             steps=0, progress=False)
    assert li.info["noise"] == "cv"
    est = float(li.log_sigma.exp()[0]) * li.scaler.std[0]
    assert est == pytest.approx(sigma, rel=0.1)


def test_basis_bad_input():
    ds = lowrank(n_snap=6)
    with pytest.raises(ValueError, match="init='pca' needs network='basis'"):
        ds.sciml.fit_latent("u", sample_dim="time", network="mfn", init="pca", steps=0, progress=False)
    with pytest.raises(ValueError, match="noise must be"):
        ds.sciml.fit_latent("u", sample_dim="time", noise="huge", steps=0, progress=False)
    with pytest.raises(ValueError, match="positive float"):
        ds.sciml.fit_latent("u", sample_dim="time", noise=-1.0, steps=0, progress=False)
    with pytest.raises(ValueError, match="noise='cv'"):
        ds.sciml.fit_latent("u", sample_dim="time", init=None, noise="cv", steps=0, progress=False)
