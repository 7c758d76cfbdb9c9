"""Reference forecasts, verification and blending (xsciml.baselines)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xsciml import baselines as bl

H = np.timedelta64(1, "h")


def _obs(n_days: int = 20, seed: int = 0, phi: float = 0.9, cftime: bool = False) -> xr.DataArray:
    """Hourly field (time, y, x): a diurnal cycle plus AR(1) anomalies of lag-1 correlation phi."""
    rng = np.random.default_rng(seed)
    n = 24 * n_days
    if cftime:
        t = xr.date_range("2000-01-01", periods=n, freq="h", calendar="noleap", use_cftime=True)
    else:
        t = pd.date_range("2000-01-01", periods=n, freq="h")
    cycle = 3.0 * np.sin(2 * np.pi * np.arange(n) / 24)[:, None, None] + np.array([[0.0, 1.0, 2.0]])
    a = np.zeros((n, 2, 3))
    for i in range(1, n):
        a[i] = phi * a[i - 1] + np.sqrt(1 - phi ** 2) * rng.normal(size=(2, 3))
    return xr.DataArray(cycle + a, dims=("time", "y", "x"),
                        coords={"time": t, "y": [0.0, 1.0], "x": [0.0, 1.0, 2.0]},
                        name="t2m", attrs={"units": "K"})


def test_persistence_layout_and_values():
    obs = _obs(3)
    inits = obs.time.values[[5, 30]]
    leads = np.array([1, 6], "timedelta64[h]")
    fc = bl.persistence(obs, inits, leads)
    assert fc.dims == ("time", "lead", "y", "x") and fc.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(fc.isel(lead=1).values, obs.isel(time=[5, 30]).values)
    np.testing.assert_array_equal(fc.valid_time.values, inits[:, None] + leads.astype("m8[ns]"))
    assert fc.attrs["units"] == "K" and fc.name == "t2m"


def test_verification_matches_obs_and_is_nan_past_the_record():
    obs = _obs(2)
    inits = obs.time.values[[10, 45]]
    fc = bl.persistence(obs, inits, np.array([1, 3], "timedelta64[h]"))
    truth = bl.verification(obs, fc)
    assert truth.dims == fc.dims
    np.testing.assert_array_equal(truth.isel(time=0, lead=1).values, obs.isel(time=13).values)
    np.testing.assert_array_equal(truth.isel(time=1, lead=0).values, obs.isel(time=46).values)
    assert truth.isel(time=1, lead=1).isnull().all()  # 45 + 3 = 48 is past the 48-h record


def test_climatology_is_the_mean_of_the_history_by_hour():
    obs = _obs(10)
    history = obs.isel(time=slice(0, 24 * 7))
    inits = obs.time.values[[24 * 8 + 3]]
    fc = bl.climatology(obs, inits, np.array([2, 26], "timedelta64[h]"), history=history)
    manual = history.isel(time=slice(5, None, 24)).mean("time")  # hour 3 + 2 = 5
    np.testing.assert_allclose(fc.isel(time=0, lead=0).values, manual.values, rtol=1e-12)
    np.testing.assert_allclose(fc.isel(time=0, lead=1).values, manual.values, rtol=1e-12)


def test_anomaly_persistence_adds_the_initial_anomaly():
    obs = _obs(10)
    history = obs.isel(time=slice(0, 24 * 7))
    i0 = 24 * 8 + 3
    leads = np.array([1, 24], "timedelta64[h]")
    fc = bl.anomaly_persistence(obs, obs.time.values[[i0]], leads, history=history)
    clim = history.groupby("time.hour").mean()
    anom0 = obs.isel(time=i0) - clim.sel(hour=3)
    for j, h in enumerate((4, 3)):
        np.testing.assert_allclose(fc.isel(time=0, lead=j).values,
                                   (clim.sel(hour=h) + anom0).values, rtol=1e-12)
    half = bl.anomaly_persistence(obs, obs.time.values[[i0]], leads, history=history, damping=0.5)
    clim_fc = bl.climatology(obs, obs.time.values[[i0]], leads, history=history)
    np.testing.assert_allclose((half - clim_fc).values, 0.5 * (fc - clim_fc).values, rtol=1e-12)


def test_anomaly_lag_correlation_of_ar1_is_phi_to_the_lag():
    obs = _obs(60, phi=0.9)
    rho = bl.anomaly_lag_correlation(obs, np.array([1, 3], "timedelta64[h]"))
    np.testing.assert_allclose(rho.values, [0.9, 0.9 ** 3], atol=0.03)
    fitted = bl.anomaly_persistence(obs, obs.time.values[[500]], np.array([1, 3], "timedelta64[h]"),
                                    damping="fit")
    manual = bl.anomaly_persistence(obs, obs.time.values[[500]], np.array([1, 3], "timedelta64[h]"),
                                    damping=rho)
    np.testing.assert_allclose(fitted.values, manual.values, rtol=1e-12)


def test_noleap_calendar_is_handled():
    obs = _obs(3, cftime=True)
    fc = bl.anomaly_persistence(obs, obs.time.values[[30]], np.array([1, 24], "timedelta64[h]"))
    truth = bl.verification(obs, fc)
    assert fc.valid_time.values[0, 1] == obs.time.values[54]
    np.testing.assert_array_equal(truth.isel(time=0, lead=1).values, obs.isel(time=54).values)
    assert np.isfinite(fc.values).all()


def test_fit_blend_recovers_the_inverse_variance_weights():
    rng = np.random.default_rng(1)
    truth = xr.DataArray(rng.normal(size=(3, 4000)), dims=("lead", "time"), coords={"lead": [1, 2, 3]})
    sd_a = xr.DataArray([1.0, 1.0, 3.0], dims="lead", coords={"lead": [1, 2, 3]})
    a = truth + sd_a * truth.copy(data=rng.normal(size=(3, 4000)))
    b = truth + 2.0 * rng.normal(size=(3, 4000))
    useless = truth * 0 + 50.0 * rng.normal(size=(3, 4000))
    w = bl.fit_blend({"a": a, "b": b, "useless": useless}, truth)
    expect_a = (1 / sd_a ** 2) / (1 / sd_a ** 2 + 1 / 4.0)  # 0.8, 0.8, 4/13
    np.testing.assert_allclose(w.sel(member="a").values, expect_a.values, atol=0.03)
    np.testing.assert_allclose(w.sum("member").values, 1.0, atol=1e-9)
    assert (w.values >= 0).all() and (w.sel(member="useless").values < 0.01).all()
    blended = bl.blend({"a": a, "b": b, "useless": useless}, w)
    rmse = lambda f: float(np.sqrt(((f - truth) ** 2).mean()))  # noqa: E731
    assert rmse(blended) < min(rmse(a), rmse(b))


def test_fit_blend_skips_nan_and_blend_keeps_layout():
    obs = _obs(6)
    inits = obs.time.values[24 * 4::6]
    leads = np.array([1, 24], "timedelta64[h]")
    hist = obs.isel(time=slice(0, 24 * 4))
    members = {"persistence": bl.persistence(obs, inits, leads),
               "climatology": bl.climatology(obs, inits, leads, history=hist)}
    truth = bl.verification(obs, members["persistence"])  # NaN past the record
    assert truth.isnull().any()
    w = bl.fit_blend(members, truth)
    assert np.isfinite(w.values).all()
    one = w.copy(data=np.array([[1.0, 1.0], [0.0, 0.0]]))
    out = bl.blend(members, one)
    xr.testing.assert_allclose(out.drop_attrs(), members["persistence"].drop_attrs())
    assert out.dims == members["persistence"].dims and "valid_time" in out.coords


def test_bad_input_is_refused_with_a_clear_message():
    obs = _obs(2)
    leads = np.array([1], "timedelta64[h]")
    with pytest.raises(KeyError, match="not in obs"):
        bl.persistence(obs, [np.datetime64("1999-01-01T00")], leads)
    with pytest.raises(ValueError, match="not sorted"):
        bl.persistence(obs.isel(time=slice(None, None, -1)), obs.time.values[:1], leads)
    with pytest.raises(ValueError, match="duplicate"):
        bl.persistence(xr.concat([obs, obs.isel(time=[0])], "time"), obs.time.values[:1], leads)
    with pytest.raises(TypeError, match="lead must be timedeltas"):
        bl.persistence(obs, obs.time.values[:1], ["soon"])
    with pytest.raises(ValueError, match="no time dimension 'date'"):
        bl.persistence(obs, obs.time.values[:1], leads, time="date")
    with pytest.raises(TypeError, match="DataArray"):
        bl.persistence(obs.to_dataset(), obs.time.values[:1], leads)
    with pytest.raises(ValueError, match="no data for hour"):  # 6 hours of history lack hour 20
        bl.climatology(obs, obs.time.values[[3]], np.array([17], "timedelta64[h]"),
                       history=obs.isel(time=slice(0, 6)))
    with pytest.raises(ValueError, match="all NaN"):
        bl.climatology(obs, obs.time.values[[3]], leads, history=obs * np.nan)
    fc = bl.persistence(obs, obs.time.values[:2], leads)
    w = bl.fit_blend({"a": fc, "b": fc + 1}, fc)
    with pytest.raises(ValueError, match="weights are for forecasts"):
        bl.blend({"a": fc, "c": fc}, w)
    with pytest.raises(ValueError, match="no point where every forecast"):
        bl.fit_blend({"a": fc, "b": fc}, fc * np.nan)
    with pytest.raises(ValueError, match="at least two"):
        bl.fit_blend({"a": fc}, fc)


def test_dask_backed_observations_stay_lazy_and_match():
    obs = _obs(10)
    lazy = obs.chunk(time=48)
    inits, leads = obs.time.values[24 * 8::6], np.array([1, 24], "timedelta64[h]")
    hist = slice(0, 24 * 7)
    for fn in (lambda o: bl.anomaly_persistence(o, inits, leads, history=o.isel(time=hist)),
               lambda o: bl.verification(o, bl.persistence(obs, inits, leads))):
        out_lazy, out = fn(lazy), fn(obs)
        assert out_lazy.chunks is not None  # nothing computed yet
        np.testing.assert_allclose(out_lazy.values, out.values, rtol=1e-12)
