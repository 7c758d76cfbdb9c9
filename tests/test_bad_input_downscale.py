"""Bad input to the downscaling pipeline: units, missing coarse pixels, too few snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from xsciml.downscale.diffusion import fit_diffusion
from xsciml.downscale.ot import fit_debias
from xsciml.downscale.pipeline import coarsen, downscale, project

F = 4
KW = dict(samples=2, steps=3, progress=False, device="cpu")


def _fine(n: int, seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(16) / 16, np.arange(16) / 16, indexing="ij")
    modes = np.stack([np.sin(2 * np.pi * (a * yy + b * xx)) for a, b in [(1, 0), (0, 1), (1, 1)]])
    vals = 280.0 + np.einsum("nm,myx->nyx", rng.normal(size=(n, 3)), modes)
    return xr.DataArray(vals, dims=("time", "lat", "lon"),
                        coords={"time": np.arange(n), "lat": 50.0 + 0.25 * np.arange(16),
                                "lon": 0.25 * np.arange(16)},
                        name="t2m", attrs={"units": "K"})


@pytest.fixture(scope="module")
def prior():
    return fit_diffusion(_fine(12, 0), base_channels=4, levels=1, emb_dim=8, steps=5, progress=False,
                         device="cpu")


@pytest.fixture(scope="module")
def coarse() -> xr.DataArray:
    return _fine(2, 1).coarsen(lat=F, lon=F).mean().assign_attrs(units="K")


# ------------------------------------------------------------------ units
def test_downscale_converts_the_coarse_field_to_the_prior_units(prior, coarse):
    want = downscale(coarse, prior, **KW)
    got = downscale((coarse - 273.15).assign_attrs(units="degC"), prior, **KW)
    assert got.attrs["units"] == "K"
    np.testing.assert_allclose(got.values, want.values, atol=1e-6)
    with pytest.warns(UserWarning, match=r"coarse field 't2m' has no 'units' attribute; assuming it "
                                         r"is in 'K', the units the prior was trained in"):
        downscale(coarse.drop_attrs(), prior, **KW)
    with pytest.raises(ValueError, match=r"the prior was trained with 't2m' in 'K': coarse field 't2m' "
                                         r"is in 'kg m-2 s-1', which cannot be converted"):
        downscale(coarse.assign_attrs(units="kg m-2 s-1"), prior, **KW)


# ------------------------------------------------------------------ missing coarse pixels
def test_project_leaves_unobserved_blocks_alone():
    x = torch.arange(16.0).reshape(4, 4)
    y = torch.tensor([[0.0, float("nan")], [1.0, 2.0]])
    for how in ("mean", "subsample"):
        p = project(x, y, 2, how)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p[:2, 2:], x[:2, 2:])  # the NaN pixel's block is unchanged
        c = coarsen(p, 2, how)
        torch.testing.assert_close(c[1], y[1])
        assert float(c[0, 0]) == 0.0


@pytest.mark.parametrize("lazy", [False, True])
def test_one_nan_coarse_pixel_stays_local(prior, coarse, lazy):
    gappy = coarse.copy(data=coarse.values.copy())
    gappy[0, 1, 2] = np.nan  # 1 of the 16 coarse pixels of the first snapshot
    inp = gappy.chunk({"time": 1}) if lazy else gappy
    hi = downscale(inp, prior, **KW)
    assert (hi.chunks is not None) is lazy
    hi = hi.compute()
    nan = np.isnan(hi.values)  # (sample, time, lat, lon)
    assert nan[:, 1].sum() == 0  # the complete snapshot is untouched
    assert nan[:, 0].sum(axis=(-2, -1)).tolist() == [F * F] * KW["samples"]  # one 4x4 block each
    assert nan[:, 0, F:2 * F, 2 * F:3 * F].all()
    block = hi.coarsen(lat=F, lon=F).mean().values
    ok = np.isfinite(gappy.values)
    np.testing.assert_allclose(block[:, ok], np.broadcast_to(gappy.values[ok], (2, ok.sum())), atol=1e-9)
    full = downscale(coarse, prior, **KW)
    np.testing.assert_allclose(hi.isel(time=1).values, full.isel(time=1).values, atol=1e-6)


# ------------------------------------------------------------------ debiasing
def test_debias_warns_with_fewer_snapshots_than_grid_points():
    rng = np.random.default_rng(0)
    ref = xr.DataArray(rng.normal(size=(2, 3)), dims=("time", "site"), name="tas")
    mod = xr.DataArray(2.0 * rng.normal(size=(2, 3)) + 1.0, dims=("time", "site"), name="tas")
    with pytest.warns(UserWarning, match=r"2 model snapshot\(s\) of 'tas' for a dimension of 3 grid "
                                         r"points: the sample covariance has rank at most 1, so 2 of "
                                         r"its 3 directions come from the reg_cov shrinkage alone"):
        deb = fit_debias(mod, ref, method="gaussian", progress=False)
    assert "rank at most 1" in deb.info["warnings"][0]
    assert "1 warning(s) at fit time" in repr(deb)
    with pytest.warns(UserWarning, match=r"3 reference snapshot\(s\) of 'tas' in group '1'"):
        months = xr.DataArray(np.array(["2001-01-01", "2001-01-02", "2001-01-03"], dtype="datetime64[ns]"),
                              dims="time")
        big = xr.DataArray(rng.normal(size=(40, 3)), dims=("time", "site"), name="tas",
                           coords={"time": np.datetime64("2001-01-01", "ns")
                                   + np.arange(40) * np.timedelta64(12, "h")})
        fit_debias(big, ref.isel(time=[0, 1, 0]).assign_coords(time=months), group="time.month",
                   method="gaussian", progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deb = fit_debias(big, big + 1.0, method="gaussian", progress=False)
    assert "warnings" not in deb.info


def test_debias_units_of_new_data_precipitation_and_missing_units():
    rng = np.random.default_rng(1)
    ref = xr.DataArray(np.exp(rng.normal(size=(60, 3))), dims=("time", "site"), name="pr",
                       attrs={"units": "mm day-1"})
    mod = (1.3 * ref / 86400.0).assign_attrs(units="kg m-2 s-1")  # CMIP units, a 30 % wet bias
    deb = fit_debias(mod, ref, method="gaussian", progress=False)
    out = deb.transform(mod)
    assert out.attrs["units"] == "mm day-1"
    np.testing.assert_allclose(out.values, ref.values, atol=1e-6)
    np.testing.assert_allclose(deb.transform((mod * 86400.0).assign_attrs(units="mm day-1")).values,
                               ref.values, atol=1e-6)
    with pytest.warns(UserWarning, match=r"simulated 'pr' has no 'units' attribute; assuming "
                                         r"'kg m-2 s-1', the units of the model data"):
        np.testing.assert_allclose(deb.transform(mod.drop_attrs()).values, ref.values, atol=1e-6)
