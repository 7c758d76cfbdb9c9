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
        "u", sample_dim="time", latent_dim=4, model="mfn",
        model_kwargs={"width": 32, "depth": 2, "input_scale": 4.0},
        steps=800, batch_size=4096, progress=False, seed=0)
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
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=3, variational=False, model="siren",
                             model_kwargs={"width": 32, "depth": 2}, steps=100, progress=False)
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
                             model_kwargs={"width": 16, "depth": 1})
    bad = ds.isel(time=[0, 1]).copy(deep=True)
    bad["u"][1] = np.nan
    with pytest.raises(ValueError, match="no valid point"):
        li.encode(bad, steps=2)
    with pytest.raises(ValueError, match="shape \\[S, 2\\]"):
        li.decode(np.zeros((3, 5)), ds)
