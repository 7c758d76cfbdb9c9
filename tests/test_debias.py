"""OT debiasing: known maps, agreement with POT, groups, units, masks, dask, save/load."""

from __future__ import annotations

import numpy as np
import ot
import pandas as pd
import pytest
import torch
import xarray as xr

from xsciml.downscale.ot import Debias, entropic_map, fit_debias, sinkhorn_potentials

from .conftest import real_data

LAT = np.array([52.0, 51.0, 50.0])
LON = np.array([-2.0, -1.0, 0.0, 1.0])


def snapshots(n: int, seed: int, start: str = "2001-01-01", units: str | None = "K",
              calendar: str | None = None) -> xr.DataArray:
    """Correlated (time, lat, lon) snapshots around 280 K with a seasonal cycle."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(12, 12)) / 3 + np.eye(12)
    vals = rng.normal(size=(n, 12)) @ mix
    if calendar is None:
        time = pd.date_range(start, periods=n, freq="D")
    else:
        time = xr.date_range(start, periods=n, freq="D", calendar=calendar, use_cftime=True)
    doy = np.asarray(xr.DataArray(time, dims="t").dt.dayofyear)
    season = 8.0 * np.cos(2 * np.pi * (doy - 200) / 365.0)
    da = xr.DataArray(280.0 + season[:, None, None] + vals.reshape(n, 3, 4),
                      dims=("time", "lat", "lon"), coords={"time": time, "lat": LAT, "lon": LON},
                      name="tas")
    if units:
        da.attrs["units"] = units
    return da


# ------------------------------------------------------------------ known maps
def test_gaussian_map_inverts_an_affine_bias_exactly() -> None:
    c = snapshots(300, 0)
    mean = c.mean("time")
    biased = 0.8 * (c - mean) + mean + 1.5  # the model bias
    biased.attrs = c.attrs
    deb = fit_debias(biased, c, variable="tas", method="gaussian", progress=False)
    out = deb.transform(biased)
    np.testing.assert_allclose(out.values, c.values, atol=1e-8)
    assert isinstance(deb, Debias) and deb.groups == ["all"]
    via_accessor = biased.sciml.fit_debias(reference=c, variable="tas", method="gaussian",
                                           progress=False)
    np.testing.assert_allclose(via_accessor.transform(biased).values, c.values, atol=1e-8)


def test_a_non_negative_variable_stays_non_negative() -> None:
    rng = np.random.default_rng(1)
    ref = snapshots(200, 0).copy(data=np.exp(rng.normal(size=(200, 3, 4))))  # wet and dry days
    ref.attrs = {"units": "mm d-1", "standard_name": "precipitation_amount"}
    model = np.sqrt(ref).assign_attrs(ref.attrs)  # too little skew: not an affine bias
    deb = fit_debias(model, ref, method="gaussian", progress=False)
    raw = deb.transform(model.assign_attrs(standard_name="x"))  # no bound known: the bare map
    assert float(raw.min()) < 0.0  # the Gaussian map sends the driest days below zero
    out = deb.transform(model)
    np.testing.assert_array_equal(out.values, np.maximum(raw.values, 0.0))
    assert out.attrs["xsciml_bounds"] == "clipped to at least 0 mm d-1 (precipitation_amount cannot be negative)"


def test_units_are_converted_and_refused() -> None:
    c = snapshots(200, 1)
    model = (c - 273.15).assign_attrs(units="degC")
    deb = fit_debias(model, c, method="gaussian", progress=False)
    out = deb.transform(model)
    assert out.attrs["units"] == "K"
    np.testing.assert_allclose(out.values, c.values, atol=1e-8)
    # new data in Fahrenheit are converted too
    fahr = (model * 9 / 5 + 32).assign_attrs(units="degF")
    np.testing.assert_allclose(deb.transform(fahr).values, c.values, atol=1e-8)
    with pytest.raises(ValueError, match=r"simulated 'tas' must be in units convertible to the "
                       r"reference's \('K'\).*'mm/day', which cannot be converted to 'K'"):
        fit_debias(model.assign_attrs(units="mm/day"), c, progress=False)
    with pytest.raises(ValueError, match="units"):
        fit_debias(model.assign_attrs(units=None).drop_attrs(), c, progress=False)
    with pytest.raises(ValueError, match="'m', which cannot be converted to 'K'"):
        deb.transform(model.assign_attrs(units="m"))


def test_entropic_map_is_the_barycentric_projection_of_pot_sinkhorn() -> None:
    model, ref = snapshots(80, 2) + 1.0, 0.7 * snapshots(90, 3) + 0.3 * 280
    ref.attrs = model.attrs = {"units": "K"}
    deb = fit_debias(model, ref, method="entropic", reg=0.1, standardize="none", progress=False)
    X = model.values.reshape(80, -1)
    Y = ref.values.reshape(90, -1)
    M = ot.dist(X, Y)
    P = ot.sinkhorn(np.full(80, 1 / 80), np.full(90, 1 / 90), M, 0.1 * M.mean(),
                    method="sinkhorn_log", stopThr=1e-12, numItermax=5000)
    bary = (P @ Y) * 80
    np.testing.assert_allclose(deb.transform(model).values.reshape(80, -1), bary, atol=1e-4)


def test_scalable_agrees_with_pot_entropic_out_of_sample() -> None:
    model, ref = snapshots(150, 4) + 2.0, snapshots(120, 5)
    new = snapshots(20, 6, start="2005-01-01") + 2.0
    a = fit_debias(model, ref, method="entropic", progress=False).transform(new)
    b = fit_debias(model, ref, method="scalable", device="cpu", batch_size=7, progress=False).transform(new)
    shift = float(abs(a - new).mean())
    assert shift > 1.0  # the map does move the snapshots
    assert float(abs(a - b).max()) < 1e-3 * shift * 10
    assert fit_debias(model, ref, method="sinkhorn_torch", progress=False).method == "scalable"


def test_emd_maps_training_snapshots_onto_a_permutation_of_the_reference() -> None:
    model, ref = snapshots(30, 7) + 3.0, snapshots(30, 8)
    deb = fit_debias(model, ref, method="emd", reg=1e-4, progress=False)
    out = deb.transform(model).values.reshape(30, -1)
    Y = ref.values.reshape(30, -1)
    d = ((out[:, None, :] - Y[None]) ** 2).sum(-1)
    assert np.allclose(d.min(1), 0.0, atol=1e-6)
    assert sorted(d.argmin(1)) == list(range(30))  # each reference snapshot used once
    # out of sample: a point moves by a weighted average of the training displacements
    new = snapshots(5, 9, start="2005-01-01") + 3.0
    moved = deb.transform(new) - new
    assert float(moved.mean()) == pytest.approx(-3.0, abs=1.0)


# ------------------------------------------------------------------ blocked Sinkhorn
def test_sinkhorn_potentials_marginals_and_blocking() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(25, 3)) * 1.5 + 1.0
    eps = 0.5
    f, g, info = sinkhorn_potentials(x, y, eps, tol=1e-6, device="cpu", progress=False)
    assert info["converged"] and info["n_iter"] > 1
    C = ot.dist(x, y)
    P = np.exp((f.numpy()[:, None] + g.numpy()[None] - C) / eps) / (40 * 25)
    np.testing.assert_allclose(P.sum(1), 1 / 40, rtol=1e-4)
    np.testing.assert_allclose(P.sum(0), 1 / 25, rtol=1e-4)
    f2, g2, _ = sinkhorn_potentials(x, y, eps, tol=1e-6, batch_size=3, device="cpu", progress=False)
    np.testing.assert_allclose(g2.numpy(), g.numpy(), atol=1e-4)


def test_sinkhorn_warm_start_and_relaxation_do_not_change_the_solution() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(250, 4)) * 0.7 + 0.5
    eps = 0.05 * float(ot.dist(x, y).mean())
    _, g_cold, cold = sinkhorn_potentials(x, y, eps, tol=1e-6, warm_start=None, device="cpu",
                                          progress=False)
    _, g_warm, warm = sinkhorn_potentials(x, y, eps, tol=1e-6, warm_start=60, device="cpu",
                                          progress=False)
    assert cold["warm_start_iter"] == 0 and warm["warm_start_iter"] > 0
    assert warm["omega"] > 1.0  # over-relaxed
    assert warm["n_iter"] < cold["n_iter"]
    gc, gw = g_cold.numpy(), g_warm.numpy()
    np.testing.assert_allclose(gw - gw.mean(), gc - gc.mean(), atol=1e-4 * eps)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # POT's reference
def test_sinkhorn_underflowing_columns_are_recomputed_in_the_log_domain() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2))
    y = np.concatenate([rng.normal(size=(19, 2)), [[30.0, 30.0]]])  # far outlier
    eps = 0.05
    f, g, info = sinkhorn_potentials(x, y, eps, tol=1e-5, max_iter=5000, device="cpu", progress=False)
    assert torch.isfinite(g).all()
    M = ot.dist(x, y)
    _, log = ot.sinkhorn(np.full(30, 1 / 30), np.full(20, 1 / 20), M, eps, method="sinkhorn_log",
                         log=True, stopThr=1e-10, numItermax=20000)
    gp = eps * (log["log_v"] + np.log(20))
    # potentials are defined up to a constant
    np.testing.assert_allclose(g.numpy() - g.numpy().mean(), gp - gp.mean(), atol=2e-2)
    T = entropic_map(torch.tensor(x), torch.tensor(y), g / eps, eps).numpy()
    assert T[:, 0].max() > 1.0  # the outlier receives mass


# ------------------------------------------------------------------ groups and calendars
def test_seasonal_groups_with_different_calendars() -> None:
    ref = snapshots(730, 10)  # standard calendar
    model = snapshots(730, 11, calendar="noleap")
    offset = {"DJF": 2.0, "MAM": -1.0, "JJA": 0.5, "SON": 3.0}
    season = model.time.dt.season
    model = model + xr.DataArray([offset[str(s)] for s in season.values], dims="time",
                                 coords={"time": model.time})
    model.attrs = {"units": "K"}
    deb = fit_debias(model, ref, method="gaussian", group="time.season", progress=False)
    assert deb.groups == ["DJF", "MAM", "JJA", "SON"]
    out = deb.transform(model)
    for s in offset:
        got = float(out.where(out.time.dt.season == s).mean())
        want = float(ref.where(ref.time.dt.season == s).mean())
        assert got == pytest.approx(want, abs=1e-8)
    # a month with no map
    with pytest.warns(UserWarning, match="no map"):
        monthly = fit_debias(model.sel(time=model.time.dt.month <= 6), ref, method="gaussian",
                             group="time.month", progress=False)
    assert monthly.groups == [str(m) for m in range(1, 7)]
    with pytest.raises(KeyError, match="no fitted map"):
        monthly.transform(model)
    with pytest.raises(ValueError, match="time.season"):
        fit_debias(model, ref, group="time.week", progress=False)


# ------------------------------------------------------------------ masks and bad input
def test_nan_mask_is_kept_and_checked() -> None:
    model, ref = snapshots(100, 12) + 1.0, snapshots(100, 13)
    land = xr.DataArray(np.ones((3, 4), bool), dims=("lat", "lon"), coords={"lat": LAT, "lon": LON})
    land[0, :2] = False
    mm, rm = model.where(land), ref.where(land)
    deb = fit_debias(mm, rm, method="gaussian", progress=False)
    out = deb.transform(mm)
    assert out.isnull().sum() == mm.isnull().sum()
    assert bool(out.isel(lat=0, lon=0).isnull().all())
    with pytest.raises(ValueError, match="different NaN masks"):
        fit_debias(mm, ref, progress=False)
    gappy = mm.copy()
    gappy[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="only some snapshots"):
        fit_debias(gappy, rm, progress=False)
    with pytest.raises(ValueError, match="valid in the training"):
        deb.transform(gappy)
    with pytest.raises(ValueError, match="masked"):
        deb.transform(model)
    with pytest.raises(ValueError, match="NaN everywhere"):
        fit_debias(mm * np.nan, rm, progress=False)
    bad = model.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        fit_debias(bad, ref, progress=False)


def test_bad_input_is_refused_clearly() -> None:
    model, ref = snapshots(50, 14), snapshots(50, 15)
    ds = xr.Dataset({"tas": model, "pr": model * 0})
    with pytest.raises(ValueError, match="variable="):
        fit_debias(ds, ref, progress=False)
    with pytest.raises(KeyError, match="tasmax"):
        fit_debias(ds, ref, variable="tasmax", progress=False)
    with pytest.raises(KeyError, match="no dimension 'member'"):
        fit_debias(model, ref, sample_dim="member", progress=False)
    with pytest.raises(ValueError, match="different grid"):
        fit_debias(model, ref.assign_coords(lat=LAT + 0.5), progress=False)
    with pytest.raises(ValueError, match="method"):
        fit_debias(model, ref, method="sinkhorn", progress=False)
    with pytest.raises(ValueError, match="reg"):
        fit_debias(model, ref, method="entropic", reg=0.0, progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        fit_debias(model.isel(time=[0]), ref, progress=False)
    deb = fit_debias(ds, ref, variable="tas", progress=False)
    with pytest.raises(KeyError, match="no variable 'tas'"):
        deb.transform(ds[["pr"]])
    with pytest.raises(ValueError, match="different grid"):
        deb.transform(model.isel(lon=slice(0, 3)))


# ------------------------------------------------------------------ labeled output, dask, io
def test_transform_keeps_type_dims_coords_attrs() -> None:
    model, ref = snapshots(60, 16) + 1.0, snapshots(60, 17)
    model.attrs["long_name"] = "near-surface air temperature"
    deb = fit_debias(model, ref, method="gaussian", progress=False)
    swapped = model.transpose("lat", "lon", "time")
    out = deb.transform(swapped)
    assert out.dims == swapped.dims and out.name == "tas"
    assert out.attrs["long_name"] == "near-surface air temperature"
    assert out.attrs["xsciml_debias_method"] == "gaussian"
    xr.testing.assert_allclose(out.transpose("time", "lat", "lon").drop_attrs(),
                               deb.transform(model).drop_attrs())
    ds = xr.Dataset({"tas": model, "orog": model.isel(time=0, drop=True)})
    dout = deb.transform(ds)
    assert set(dout.data_vars) == {"tas", "orog"}
    xr.testing.assert_identical(dout["orog"], ds["orog"])
    # extra loop dims (ensemble members) are mapped snapshot by snapshot
    members = xr.concat([model, model + 0.0], dim="member")
    mout = deb.transform(members)
    np.testing.assert_allclose(mout.isel(member=1).values, deb.transform(model).values)


@pytest.mark.parametrize("method", ["gaussian", "scalable"])
def test_dask_is_lazy_and_equal_to_eager(method: str, dask_client) -> None:
    model, ref = snapshots(120, 18) + 1.0, snapshots(100, 19)
    deb = fit_debias(model, ref, method=method, group="time.season", device="cpu", progress=False)
    lazy = deb.transform(model.chunk({"time": 40}))
    assert lazy.chunks is not None and lazy.data.numblocks == (3, 1, 1)
    np.testing.assert_allclose(lazy.compute().values, deb.transform(model).values, atol=1e-12)
    with pytest.raises(ValueError, match="one chunk"):
        deb.transform(model.chunk({"time": 40, "lat": 1}))


def test_real_sdba_tasmax_monthly(tmp_path) -> None:
    coder = xr.coders.CFDatetimeCoder(use_cftime=True)
    with xr.open_dataset(real_data("sdba/CanESM2_1950-2100.nc"), decode_times=coder) as ds:
        model = ds.tasmax.sel(time=slice("1991", "2000")).load()  # noleap, K
    with xr.open_dataset(real_data("sdba/ahccd_1950-2013.nc"), decode_times=coder) as ds:
        ref = ds.tasmax.sel(time=slice("1991", "2000")).load()  # degC, (location, time), gaps
    with pytest.raises(ValueError, match="dropna"):
        fit_debias(model, ref, group="time.month", progress=False)
    ref = ref.dropna("time", how="any").convert_calendar("standard")
    deb = fit_debias(model, ref, method="gaussian", group="time.month", progress=False)
    out = deb.transform(model)
    assert out.attrs["units"] == "degC" and out.dims == model.dims
    got = out.groupby("time.month").mean().transpose("month", "location").values
    want = ref.groupby("time.month").mean().transpose("month", "location").values
    np.testing.assert_allclose(got, want, atol=1e-3)
    raw = (model - 273.15).groupby("time.month").mean().transpose("month", "location").values
    assert np.abs(raw - want).max() > 1.0  # there was a bias to remove
