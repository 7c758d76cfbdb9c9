"""Reference forecasts of a calendar training period and their combination with a learned forecast."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xsciml
from xsciml._utils import simplex_weights
from xsciml.models.dynamics import fit_dynamics
from xsciml.models.latent_ode.references import (
    MEMBERS,
    References,
    choose_harmonics,
    harmonic_basis,
    year_length_days,
)

TINY = dict(latent_dim=4, width=8, depth=2, dynamics_width=8, dynamics_depth=2, n_points=16, steps=3,
            window=4, residual_rank=0, progress=False)
HOUR = 3600.0


def _hourly(n_days: int = 6, seed: int = 0, phi: float = 0.9, calendar: str | None = None) -> xr.Dataset:
    """A 3 x 4 grid, hourly: mean + diurnal cycle + AR(1) anomalies shared by the grid."""
    rng = np.random.default_rng(seed)
    n = 24 * n_days
    if calendar is None:
        t = pd.date_range("2001-03-01", periods=n, freq="h")
    else:
        t = xr.date_range("2001-03-01", periods=n, freq="h", calendar=calendar, use_cftime=True)
    hour = np.arange(n) % 24
    anom = np.zeros(n)
    for i in range(1, n):
        anom[i] = phi * anom[i - 1] + rng.normal(scale=0.5)
    base = 280 + 4 * np.cos(2 * np.pi * (hour - 14) / 24)
    y, x = np.arange(3.0), np.arange(4.0)
    vals = (base + anom)[:, None, None] + 0.3 * y[None, :, None] + 0.1 * x[None, None, :]
    vals = vals + rng.normal(scale=0.05, size=vals.shape)
    return xr.Dataset({"t2m": (("time", "y", "x"), vals, {"units": "K"})},
                      coords={"time": t, "y": y, "x": x})


@pytest.fixture(scope="module")
def combined():
    ds = _hourly()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the climatology's "no annual cycle" note
        model = fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours", **TINY)
    return ds, model


# ----------------------------------------------------------------------------- the references
def test_year_length_follows_the_calendar():
    assert year_length_days("360_day") == 360.0
    assert year_length_days("noleap") == 365.0
    assert year_length_days("proleptic_gregorian") == pytest.approx(365.2425)


def test_harmonics_follow_what_the_period_resolves():
    hourly = np.arange(24 * 6) * HOUR
    assert choose_harmonics(hourly, "standard")[:2] == (2, 0)
    d, a, notes = choose_harmonics(np.arange(300) * 86400.0, "noleap")
    assert (d, a) == (0, 0) and "no annual cycle" in notes[0] and "300 days" in notes[0]
    assert choose_harmonics(np.arange(400) * 86400.0, "noleap")[:2] == (0, 3)
    # a day of hourly data: too short for a diurnal cycle, and it says so
    d, _, notes = choose_harmonics(np.arange(24) * HOUR, "standard")
    assert d == 0 and any("diurnal" in n for n in notes)


def test_climatology_recovers_a_known_diurnal_cycle_and_mean():
    ds = _hourly(n_days=10, phi=0.0)
    refs = References.fit(ds, ["t2m"], time="time", sample_dim=None, sdims=["y", "x"], space=["y", "x"])
    t = np.array([14.0, 2.0]) * HOUR  # 1970-01-01 at the warmest and coldest hour
    clim = refs.climatology_values(t)[:, 0, 0]  # point y=0, x=0
    assert clim[0] - clim[1] == pytest.approx(8.0, abs=0.3)
    assert 0.5 * (clim[0] + clim[1]) == pytest.approx(280.0, abs=0.3)


def test_damping_is_the_lag_correlation_of_ar1_anomalies():
    ds = _hourly(n_days=60, phi=0.9, seed=1)
    refs = References.fit(ds, ["t2m"], time="time", sample_dim=None, sdims=["y", "x"], space=["y", "x"])
    assert refs.damping(np.array([HOUR]))[0] == pytest.approx(0.9, abs=0.05)
    assert refs.damping(np.array([3 * HOUR]))[0] == pytest.approx(0.9 ** 3, abs=0.08)
    assert refs.damping(np.array([0.0]))[0] == 1.0


def test_persistence_error_level_is_known_for_a_trend_and_refers_validation_to_it():
    # a linear trend of 0.5 K/h at every point: persistence misses by 0.5 K per hour of lead
    n = 48
    t = pd.date_range("2001-03-01", periods=n, freq="h")
    vals = np.broadcast_to((0.5 * np.arange(n))[:, None, None], (n, 2, 2)).copy()
    ds = xr.Dataset({"v": (("time", "y", "x"), vals)}, coords={"time": t, "y": [0.0, 1.0], "x": [0.0, 1.0]})
    refs = References.fit(ds, ["v"], time="time", sample_dim=None, sdims=["y", "x"], space=["y", "x"])
    sd = float(np.std(vals))
    np.testing.assert_allclose(refs.persistence_ms[:3], (0.5 * np.arange(1, 4) / sd) ** 2, rtol=1e-9)
    # a validation period with half persistence's whole-period error at 2 h: level 2
    at2 = float(refs.persistence_ms[1])
    assert refs._error_level(2 * HOUR, at2 / 2) == pytest.approx(2.0)
    assert refs._error_level(2 * HOUR, at2 / 100) == 4.0  # bounded to 1/4 .. 4
    assert refs._error_level(2 * HOUR, 0.0) == 1.0  # nothing to refer to


def test_ensemble_error_level_scales_the_calibrated_validation_error():
    ds = _hourly(n_days=6, seed=3)
    refs = References.fit(ds, ["t2m"], time="time", sample_dim=None, sdims=["y", "x"], space=["y", "x"])
    vals = ds.t2m.values.reshape(ds.sizes["time"], -1, 1)
    t = xsciml.coords.time_to_float(ds.time.values, "seconds")
    rng = np.random.default_rng(0)
    forecasts = []
    for s in range(100, 130, 2):  # the "validation period": the learned model = truth + noise
        idx = np.array([s + 1, s + 3])
        truth = vals[idx][None]
        forecasts.append((vals[s][None], t[[s]], t[idx] - t[s], truth + rng.normal(scale=0.3, size=truth.shape),
                          truth))
    grid = References.lead_bins(3 * HOUR, HOUR)
    flat = References.from_state(refs.to_config(), refs.tensors())
    flat.persistence_ms = np.zeros(0)  # no whole-period error: level 1
    refs.fit_weights(forecasts, grid)
    flat.fit_weights(forecasts, grid)
    level = np.asarray(refs.validation["error_level"])
    assert flat.validation["error_level"] == [1.0] * level.size and not np.allclose(level, 1.0)
    np.testing.assert_allclose(refs.error_ms, flat.error_ms * level, rtol=1e-12)
    np.testing.assert_array_equal(refs.weights, flat.weights)  # the level touches the spread only


def test_harmonic_basis_uses_the_calendar_year():
    year = 360 * 86400.0
    b = harmonic_basis(np.array([0.0, year]), "360_day", 0, 1)
    np.testing.assert_allclose(b[0], b[1], atol=1e-12)  # one 360-day year later: the same phase


# ----------------------------------------------------------------------------- the combination
def test_fit_dynamics_builds_references_and_weights_for_calendar_axes(combined):
    _, model = combined
    refs = model.references
    assert refs is not None and refs.weights is not None
    w = refs.weights
    assert w.shape == (len(MEMBERS), refs.lead_grid.size)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-9)
    assert (w >= -1e-12).all()
    # convex weights fitted on the validation period: the combination is at least as good
    # as every member there
    v = refs.validation["rmse"]
    for j in range(refs.lead_grid.size):
        assert v["combined"][j] <= min(v[n][j] for n in MEMBERS) * (1 + 1e-6)
    assert model.info["references"]["n_frames_validation"] == 36  # a quarter of 144 frames
    # the weights come from a first fit before the validation period; the model that
    # forecasts is refitted on all 144 frames
    assert model.module.codes.shape[1] == 144 and model.info["references"]["validation_model_steps"] == 3
    text = model.summary()
    assert "combination weights" in text and "anomaly persistence" in text


def test_time_limit_covers_both_fits_of_a_combined_model(monkeypatch):
    # the validation fit and the refit share one budget: the first gets half of it, the
    # second what is left after it and the references' validation forecasts (made 0.2 s
    # long here; each step 20 ms long so the budget, not the steps, stops the fits)
    import re
    import time

    from xsciml.models import dynamics

    fit_refs = dynamics._fit_references

    def slow(*args, **kwargs):
        time.sleep(0.2)
        return fit_refs(*args, **kwargs)

    monkeypatch.setattr(dynamics, "_fit_references", slow)
    ds = _hourly()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours",
                             **{**TINY, "steps": 100_000}, callbacks=[lambda state: time.sleep(0.02)],
                             time_limit=0.8)
    first, second = model.validation_model.history, model.history
    assert first.stop_reason == second.stop_reason == "time_limit"
    assert first.steps >= 1 and second.steps >= 1
    assert first.wall_time <= 0.4 + 0.1
    assert first.wall_time + second.wall_time <= 0.8 + 0.1
    limits = [str(w.message) for w in caught if "time limit of" in str(w.message)]
    assert len(limits) == 2
    assert ("the time limit of 0.4 s (the validation fit's half of time_limit=0.8 s, which both fits share) "
            "was reached") in limits[0]
    assert "(what the refit had left of time_limit=0.8 s, which both fits share) was reached" in limits[1]
    refit_budget = float(re.search(r"time limit of ([0-9.e-]+) s", limits[1]).group(1))
    assert refit_budget <= 0.8 - first.wall_time - 0.2 + 0.01


def test_weights_are_fitted_with_the_references_that_forecast(monkeypatch):
    # the validation forecasts use the whole training period's references, not those of
    # the shorter period before the split
    fitted_on = []
    original = References.fit_weights

    def recording(self, forecasts, grid):
        fitted_on.append(self)
        return original(self, forecasts, grid)

    monkeypatch.setattr(References, "fit_weights", recording)
    ds = _hourly()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours", **TINY)
    assert len(fitted_on) == 1 and fitted_on[0] is model.references
    whole = References.fit(ds, ["t2m"], time="time", sample_dim=None, sdims=["y", "x"], space=["y", "x"])
    np.testing.assert_allclose(model.references.coef, whole.coef)


def test_forecast_combines_by_default_and_combine_false_is_the_model(combined):
    ds, model = combined
    init = ds.isel(time=[100, 110])
    lead = np.array([1, 6], "timedelta64[h]")
    fc = model.forecast(init, lead=lead)
    alone = model.forecast(init, lead=lead, combine=False)
    assert fc.dims == alone.dims == ("time", "lead", "y", "x")
    assert "xsciml_combined" in fc.attrs and "xsciml_combined" not in alone.attrs
    # by hand: the weights of these leads applied to the four forecasts, the learned one
    # being the mean of the model's and the validation model's (fitted before the split)
    held = model.validation_model
    assert held is not None and held.module.codes.shape[1] == 144 - 36
    learned = 0.5 * (alone.values + held.forecast(init, lead=lead, combine=False).values)
    assert not np.allclose(learned, alone.values)
    refs = model.references
    sec = np.array([1.0, 6.0]) * HOUR
    w = refs.lead_weights(sec)
    x0 = init.t2m.values.reshape(2, -1, 1)
    t0 = xsciml.coords.time_to_float(init.time.values, "seconds")
    parts = refs.members(x0, t0, sec)
    by_hand = (w[0][None, :, None] * learned.reshape(2, 2, -1)
               + sum(w[k][None, :, None] * parts[n][..., 0] for k, n in enumerate(MEMBERS) if k))
    np.testing.assert_allclose(fc.values.reshape(2, 2, -1), by_hand, rtol=1e-6)
    # lead 0 is the initial state
    f0 = model.forecast(init, lead=np.array([0], "timedelta64[h]"))
    np.testing.assert_allclose(f0.isel(lead=0).values, init.t2m.values, rtol=1e-6)


def test_saved_model_keeps_the_references(combined, tmp_path):
    ds, model = combined
    path = model.save(tmp_path / "m.xsciml")
    back = xsciml.load(path)
    init = ds.isel(time=[120])
    lead = np.array([2, 12], "timedelta64[h]")
    xr.testing.assert_allclose(back.forecast(init, lead=lead), model.forecast(init, lead=lead))
    np.testing.assert_array_equal(back.references.weights, model.references.weights)
    # the validation model travels with it
    xr.testing.assert_allclose(back.validation_model.forecast(init, lead=lead, combine=False),
                               model.validation_model.forecast(init, lead=lead, combine=False))
    assert back.summary().splitlines()[2:] == model.summary().splitlines()[2:]


def test_cftime_calendars_get_references():
    ds = _hourly(calendar="360_day")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours", **TINY)
    assert model.references is not None and model.references.calendar == "360_day"
    fc = model.forecast(ds.isel(time=[130]), lead=np.array([3], "timedelta64[h]"))
    assert np.isfinite(fc.values).all()


def test_numeric_time_axes_keep_the_learned_model_alone():
    ds = xsciml.datasets.heat(2, 8, n_frames=10, seed=0)
    model = fit_dynamics(ds, "u", space=("y", "x"), **TINY)
    assert model.references is None
    fc = model.forecast(ds.isel(trajectory=[0], time=0), lead=[0.0, 0.5])
    assert "xsciml_combined" not in fc.attrs
    with pytest.raises(ValueError, match="calendar time axis"):
        fit_dynamics(ds, "u", space=("y", "x"), combine=True, **TINY)
    with pytest.raises(ValueError, match="combine=True: the model has no reference forecasts"):
        model.forecast(ds.isel(trajectory=[0], time=0), lead=[0.5], combine=True)


# ----------------------------------------------------------------------------- bad input
def test_a_short_training_period_says_what_was_left_out():
    ds = _hourly().isel(time=slice(0, 6))
    with pytest.warns(UserWarning, match=r"6 frames: too short for a validation split.*persistence, "
                                         r"climatology, anomaly persistence\) are left out"):
        model = fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours", **TINY)
    assert model.references is None
    with pytest.raises(ValueError, match="combine=True: the training period has 6 frames"):
        fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours", combine=True, **TINY)


@pytest.mark.parametrize("bad, err, match", [
    (dict(val_fraction=0.7), ValueError, "val_fraction must be a number in"),
    (dict(val_fraction="0.2"), ValueError, "val_fraction must be a number in"),
    (dict(combine="yes"), TypeError, "combine must be None, True or False"),
])
def test_bad_combination_settings_are_refused(bad, err, match):
    with pytest.raises(err, match=match):
        fit_dynamics(_hourly(n_days=1), "t2m", space=("y", "x"), sample_dim=None, **TINY, **bad)


def test_forecasts_the_references_cannot_serve_say_why(combined):
    ds, model = combined
    init = ds.isel(time=[100])
    lead = np.array([3], "timedelta64[h]")
    other = {"y": np.array([0.5, 1.5]), "x": np.array([0.5, 2.5])}
    with pytest.warns(UserWarning, match="target grid of its own cannot be combined"):
        fc = model.forecast(init, lead=lead, target=other)
    xr.testing.assert_identical(fc, model.forecast(init, lead=lead, target=other, combine=False))
    with pytest.raises(ValueError, match="combine=True: the initial state has no time coordinate"):
        model.forecast(init.drop_vars("time"), lead=lead, combine=True)
    with pytest.raises(ValueError, match="not on the training grid"):
        model.forecast(init.assign_coords(x=init.x + 0.5), lead=lead, combine=True)
    with pytest.raises(TypeError, match="combine must be None, True or False"):
        model.forecast(init, lead=lead, combine="auto")
    with pytest.warns(UserWarning, match="beyond the longest validated lead"):
        model.forecast(init, lead=np.array([24 * 20], "timedelta64[h]"))


# ----------------------------------------------------------------------------- ensembles
def test_combined_ensembles_carry_the_validation_error_spread(combined):
    ds, model = combined
    init = ds.isel(time=[100, 105, 110])
    lead = np.array([1, 6, 12], "timedelta64[h]")
    ens = model.forecast(init, lead=lead, members=16, seed=3)
    det = model.forecast(init, lead=lead)
    assert ens.dims == ("member", "time", "lead", "y", "x") and ens.sizes["member"] == 16
    xr.testing.assert_identical(ens, model.forecast(init, lead=lead, members=16, seed=3))
    # the spread matches the validation error of the combination at each lead
    refs = model.references
    sec = np.array([1.0, 6.0, 12.0]) * HOUR
    target = np.sqrt(refs.lead_error_ms(sec)) * refs.scale[0]
    spread = np.sqrt(ens.var("member", ddof=1).mean(("time", "y", "x"))).values
    np.testing.assert_allclose(spread, target, rtol=0.35)
    # the members scatter around the deterministic combination
    gap = float(np.abs(ens.mean("member") - det).mean())
    assert gap < 0.5 * float(spread.mean())


def test_forecasts_of_a_bounded_variable_stay_in_its_range(combined):
    # the training data's valid range (or a CF fraction / non-negative standard name) bounds
    # every forecast: the ensemble is the unbounded one clipped, member by member
    import copy

    ds, model = combined
    init = ds.isel(time=[100, 105, 110])
    lead = np.array([1, 6, 12], "timedelta64[h]")
    free = model.forecast(init, lead=lead, members=8, seed=3)
    top = float(free.quantile(0.7))
    bounded = copy.copy(model)
    bounded.var_attrs = {"t2m": {**model.var_attrs["t2m"], "valid_max": top}}
    ens = bounded.forecast(init, lead=lead, members=8, seed=3)
    assert float(free.max()) > top  # the test would not tell anything otherwise
    np.testing.assert_array_equal(ens.values, np.minimum(free.values, top))
    assert ens.attrs["xsciml_bounds"] == f"clipped to at most {top:g} K (its valid range)"
    alone = bounded.forecast(init, lead=lead, combine=False)
    assert float(alone.max()) <= top and "xsciml_bounds" in alone.attrs
    assert "xsciml_bounds" not in model.forecast(init, lead=lead).attrs  # no bounds: unchanged


def test_a_saved_model_keeps_its_valid_range(combined, tmp_path):
    # numeric attrs such as valid_range travel as numbers, so a loaded model clips the same
    import copy

    ds, model = combined
    init = ds.isel(time=[100, 110])
    lead = np.array([1, 6], "timedelta64[h]")
    free = model.forecast(init, lead=lead, members=4, seed=1)
    low, high = np.quantile(free.values, [0.2, 0.8])
    bounded = copy.copy(model)
    bounded.var_attrs = {"t2m": {**model.var_attrs["t2m"], "valid_range": np.array([low, high], "float32")}}
    back = xsciml.load(bounded.save(tmp_path / "bounded.xsciml"))
    assert back.var_attrs["t2m"]["valid_range"] == pytest.approx([low, high], rel=1e-6)
    ens = back.forecast(init, lead=lead, members=4, seed=1)
    xr.testing.assert_allclose(ens, bounded.forecast(init, lead=lead, members=4, seed=1))
    assert float(ens.min()) >= np.float32(low) and float(ens.max()) <= np.float32(high)


def test_points_never_observed_in_training_are_not_forecast():
    # a masked point (land under an ocean variable) is NaN in every combined forecast, even
    # where the learned decoder gives it a value; the other points are unchanged
    ds = _hourly()
    ds["t2m"][:, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours", **TINY)
    init = ds.isel(time=[100, 110])
    lead = np.array([1, 6], "timedelta64[h]")
    alone = model.forecast(init, lead=lead, combine=False)
    assert np.isfinite(alone[..., 0, 0]).all()  # the decoder has a value there
    for fc in (model.forecast(init, lead=lead), model.forecast(init, lead=lead, members=4)):
        assert np.isnan(fc[..., 0, 0]).all()
        assert np.isfinite(fc[..., 1:, :]).all() and np.isfinite(fc[..., 0, 1:]).all()


def test_dask_backed_initial_states_combine_lazily_and_match(combined):
    ds, model = combined
    init = ds.isel(time=[100, 104, 108, 112])
    lead = np.array([1, 6], "timedelta64[h]")
    lazy = model.forecast(init.chunk({"time": 2}), lead=lead)
    assert lazy.chunks is not None and "xsciml_combined" in lazy.attrs
    np.testing.assert_allclose(lazy.compute().values, model.forecast(init, lead=lead).values, rtol=1e-5)


def _daily(n_days: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    t = xr.date_range("2095-01-01", periods=n_days, freq="D", calendar="noleap", use_cftime=True)
    season = 10 * np.sin(2 * np.pi * (np.arange(n_days) - 100) / 365)
    vals = 280 + season[:, None, None] + rng.normal(scale=1.0, size=(n_days, 2, 3))
    return xr.Dataset({"tas": (("time", "y", "x"), vals)}, coords={"time": t, "y": [0.0, 1.0], "x": [0.0, 1.0, 2.0]})


def test_the_mean_of_a_part_of_a_seasonal_cycle_stays_out_of_the_combination():
    kw = dict(time="time", sample_dim=None, sdims=["y", "x"], space=["y", "x"])
    short = References.fit(_daily(40), ["tas"], **kw)
    assert short.excluded == []  # a few weeks: the mean is the recent climatology
    long = References.fit(_daily(300), ["tas"], **kw)
    assert long.excluded == ["climatology", "anomaly persistence"]
    assert any("300 days, more than a season and less than a year" in n for n in long.notes)
    # even where the climatology fits the validation period best, it gets no weight
    rng = np.random.default_rng(1)
    t = xsciml.coords.time_to_float(_daily(300).time.values, "seconds")
    leads = np.array([1.0, 2.0]) * 86400
    forecasts = []
    for s in range(240, 290, 5):
        x0 = rng.normal(size=(1, 6, 1)) + 280
        clim = long.members(x0, t[[s]], leads)["climatology"]
        truth = clim + 0.01 * rng.normal(size=clim.shape)
        model = truth + rng.normal(size=clim.shape)
        forecasts.append((x0, t[[s]], leads, model, truth))
    long.fit_weights(forecasts, References.lead_bins(2 * 86400, 86400))
    k = MEMBERS.index("climatology")
    np.testing.assert_array_equal(long.weights[k], 0.0)
    np.testing.assert_array_equal(long.weights[MEMBERS.index("anomaly persistence")], 0.0)
    np.testing.assert_allclose(long.weights.sum(0), 1.0)


def test_initial_states_in_other_units_are_converted_before_combining(combined):
    ds, model = combined
    init = ds.isel(time=[100])
    lead = np.array([1, 6], "timedelta64[h]")
    celsius = init.assign(t2m=(init.t2m - 273.15).assign_attrs(units="degC"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        np.testing.assert_allclose(model.forecast(celsius, lead=lead).values,
                                   model.forecast(init, lead=lead).values, rtol=1e-5)


def test_forecast_docstrings_show_the_shared_combine_text():
    from xsciml.models.dino import DINo
    from xsciml.models.smooth import SmoothDynamics

    for cls in (DINo, SmoothDynamics):
        doc = cls.forecast.__doc__
        assert "{forecast_combine}" not in doc and "``False`` for the learned model alone" in doc


def test_model_error_draws_have_the_calibrated_variance_when_starts_lack_a_lead():
    # 8 validation error fields per bin; at the second bin only 4 starts reached that lead:
    # the draws' variance must still be the calibrated MSE, not that times 4 / 8
    ds = _hourly(n_days=3, seed=1)
    refs = References.fit(ds, ["t2m"], time="time", sample_dim=None, sdims=["y", "x"], space=["y", "x"])
    rng = np.random.default_rng(0)
    P = ds.sizes["y"] * ds.sizes["x"]
    errors = rng.normal(size=(2, 8, P, 1))
    errors[1] *= 2.0
    errors[1, 4:] = np.nan  # these starts have no frame at the longer lead
    refs.lead_grid = np.array([1.0, 4.0]) * HOUR
    refs.weights = np.tile(np.array([[0.5], [0.5], [0.0], [0.0]]), (1, 2))
    refs.errors = errors.astype(np.float32)
    refs.error_ms = np.array([1.0, 3.0])  # the calibrated MSE (standardised) per bin
    lead = np.array([1.0, 4.0]) * HOUR
    ens = np.zeros((64, 50, 2, P, 1))  # no spread of its own: the draws are all of it
    noise = refs._model_error(ens, lead, seed=0) / refs.scale
    np.testing.assert_allclose((noise ** 2).mean((0, 1, 3, 4)), refs.error_ms, rtol=0.05)


# ----------------------------------------------------------------------------- recent observations
def _window_refs() -> References:
    """References whose calibrated MSE is 1 at every lead, validated from starts 0 .. 9 h up to 10 h."""
    refs = References.fit(_hourly(n_days=3, seed=2), ["t2m"], time="time", sample_dim=None, sdims=["y", "x"],
                          space=["y", "x"])
    refs.lead_grid = np.array([1.0, 4.0]) * HOUR
    refs.error_ms = np.array([1.0, 1.0])
    refs.validation_t0 = np.arange(10.0) * HOUR
    refs.validation.update(end=10 * HOUR, span=10 * HOUR)
    return refs


def test_recent_error_ms_is_the_mean_of_the_forecasts_verified_in_the_window():
    refs = _window_refs()
    s = np.arange(9.0, 31.0) * HOUR  # 9 h is in the training period: never used
    errors = np.tile([5.0, 9.0], (s.size, 1))
    errors[0] = 100.0
    errors[s == 25 * HOUR, 0] = np.nan  # not verified
    lead = np.array([1.0, 4.0]) * HOUR
    t0 = np.array([12.0, 20.0, 40.0, 60.0]) * HOUR
    ms, used = refs.recent_error_ms(errors, s, t0, lead, choose=False)
    # 20 h, window 10-20 h: recent starts 11-19 h (lead 1 h; 11-16 h at 4 h) and the validation
    # start verified at 10 h, at the calibrated MSE 1
    # 12 h: one recent forecast at 1 h among nine validation ones; none yet at 4 h
    # 40 h, window 30-40 h: the recent forecasts from 29 and 30 h alone at 1 h, 26-30 h at 4 h
    # 60 h: nothing verified in the window: the calibrated MSE
    want = np.array([[(9 + 5) / 10, 1.0], [(1 + 9 * 5) / 10, (1 + 6 * 9) / 7], [5.0, 9.0], [1.0, 1.0]])
    np.testing.assert_allclose(ms, want)
    np.testing.assert_array_equal(used, [[1, 0], [9, 6], [2, 5], [0, 0]])
    # without the validation period's times (a model saved before them) nothing changes
    refs.validation_t0 = np.zeros(0)
    np.testing.assert_allclose(refs.recent_error_ms(errors, s, t0, lead)[0], 1.0)


def test_recent_error_ms_chooses_a_short_window_after_a_change_of_the_error_level():
    refs = _window_refs()
    lead = np.array([1.0]) * HOUR
    s = np.arange(10.0, 60.0, 0.25) * HOUR
    t0 = np.array([59.0]) * HOUR
    # the error level quadruples at 40 h: the quarter window (2.5 h) follows it, the full one lags
    errors = np.where(s + lead[0] <= 40 * HOUR, 1.0, 4.0)[:, None]
    ms, used = refs.recent_error_ms(errors, s, t0, lead)
    np.testing.assert_allclose(ms, 4.0)
    np.testing.assert_array_equal(used, 11)  # verified at 56.5 .. 59 h
    # at 44 h the full window (34-44 h) still mixes both levels; the record already favours the quarter
    assert refs.recent_error_ms(errors, s, t0 - 15 * HOUR, lead, choose=False)[0][0, 0] < 3.0
    np.testing.assert_allclose(refs.recent_error_ms(errors, s, t0 - 15 * HOUR, lead)[0], 4.0)
    # a steady but noisy level: the full window, the least noisy, predicts best
    steady = np.random.default_rng(0).chisquare(1, s.size)[:, None]
    np.testing.assert_array_equal(refs.recent_error_ms(steady, s, t0, lead)[1], 41)


@pytest.fixture(scope="module")
def recent_case():
    """Fitted on 6 of 8 days; after them the observations carry extra noise (std 3 K)."""
    ds = _hourly(n_days=8)
    rng = np.random.default_rng(1)
    later = (ds.time > np.datetime64("2001-03-06T23:00")).values[:, None, None]
    noisy = ds.copy(deep=True)
    noisy["t2m"] = ds.t2m + later * rng.normal(scale=3.0, size=ds.t2m.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = fit_dynamics(ds, "t2m", space=("y", "x"), sample_dim=None, time_units="hours",
                             train_until="2001-03-06T23:00", **TINY)
    return noisy, model


def test_recent_observations_calibrate_the_spread_on_verified_forecasts(recent_case):
    noisy, model = recent_case
    init = noisy.isel(time=[150, 190])  # 7 h and 47 h after the training period
    lead = np.array([1, 12], "timedelta64[h]")
    base = model.forecast(init, lead=lead, members=16, seed=3)
    ens = model.forecast(init, lead=lead, members=16, seed=3, recent=noisy)
    assert "updated for each initial time" in ens.attrs["xsciml_combined"]
    assert "updated" not in base.attrs["xsciml_combined"]
    # at 150 h no forecast at 12 h has verified yet: the validation weights and calibration, the
    # same draws (up to the initial-condition spread, averaged over the initial times, it allows for)
    xr.testing.assert_allclose(ens.isel(time=0, lead=1).drop_attrs(), base.isel(time=0, lead=1).drop_attrs(),
                               rtol=1e-5)
    # at 190 h the window (the validation period's 36 h) holds recent forecasts only: the spread
    # is their RMS error (here with the validation weights, close to the updated ones)
    states = noisy.isel(time=slice(153, 190))  # verified at 1 h within 154 .. 190 h
    fc = model.forecast(states, lead=np.array([1], "timedelta64[h]")).isel(lead=0)  # no recent=
    truth = noisy.t2m.isel(time=slice(154, 191)).assign_coords(time=states.time)
    rms = float(np.sqrt(((fc - truth) ** 2).mean()))
    spread = float(np.sqrt(ens.isel(time=1, lead=0).var("member", ddof=1).mean()))
    base_spread = float(np.sqrt(base.isel(time=1, lead=0).var("member", ddof=1).mean()))
    assert spread == pytest.approx(rms, rel=0.3)
    assert spread > 2 * base_spread
    # frames after an initial time never enter its calibration
    spoilt = noisy.copy(deep=True)
    spoilt["t2m"] = noisy.t2m.where(noisy.time <= noisy.time[190], 1e4)
    xr.testing.assert_identical(model.forecast(init, lead=lead, members=16, seed=3, recent=spoilt), ens)
    # the deterministic forecast takes the updated weights too: the ensemble's centre
    det = model.forecast(init, lead=lead, recent=noisy)
    assert "updated for each initial time" in det.attrs["xsciml_combined"]
    xr.testing.assert_identical(model.forecast(init, lead=lead, recent=spoilt), det)
    assert float(np.abs(ens.mean("member") - det).mean()) < 0.5 * spread
    xr.testing.assert_identical(det.isel(time=0, lead=1).drop_attrs(),
                                model.forecast(init, lead=lead).isel(time=0, lead=1).drop_attrs())


def test_recent_update_refits_the_weights_with_the_verified_forecasts():
    refs = _window_refs()
    G_val = np.diag([1.0, 2.0, 4.0, 8.0])  # the validation errors: the learned member best
    refs.validation_gram = np.stack([G_val, G_val])
    refs.weights = np.tile(simplex_weights(G_val)[:, None], (1, 2))
    lead = np.array([1.0, 4.0]) * HOUR
    s = np.arange(11.0, 21.0) * HOUR
    recent = np.diag([40.0, 2.0, 1.0, 8.0])  # recently the learned member is worst, climatology best
    grams = np.broadcast_to(recent, (s.size, 2, 4, 4)).copy()
    counts = np.full((s.size, 2), 10.0)
    t0 = np.array([11.5, 25.0, 80.0]) * HOUR
    w, ms, used = refs.recent_update(grams, counts, s, t0, lead)
    # nothing verified yet (11.5 h) or in the window (80 h): the stored weights and MSE
    np.testing.assert_allclose(w[0], refs.lead_weights(lead), atol=1e-12)
    np.testing.assert_allclose(w[2], refs.lead_weights(lead), atol=1e-12)
    np.testing.assert_allclose(ms[[0, 2]], 1.0)
    # at 25 h: validation plus the recent forecasts verified in 15 .. 25 h (from 14 .. 20 h at
    # 1 h, all ten at 4 h)
    for k, n_recent in enumerate([7, 10]):
        G = G_val + n_recent * recent
        np.testing.assert_allclose(w[1, :, k], simplex_weights(G), atol=1e-6)
        assert w[1, 2, k] > w[1, 0, k]  # climatology now above the learned member
        e = float(w[1, :, k] @ recent @ w[1, :, k]) / 10.0  # each recent forecast's MSE
        # validation starts verified in 15 .. 25 h: none (they verify up to 10 h)
        assert ms[1, k] == pytest.approx(e)
    # the spread's window is chosen (here a shorter one: the recent forecasts, all alike, predict
    # one another better than the validation ones do); it lies within the weights' window
    assert np.all(used[1] > 0) and np.all(used[1] <= [7, 10])
    # a member left out of the combination stays out
    refs.excluded = ["climatology"]
    w2 = refs.recent_update(grams, counts, s, t0, lead)[0]
    assert np.all(w2[1, 2] == 0.0) and np.allclose(w2[1].sum(0), 1.0)


def test_validation_cross_products_give_the_stored_weights(combined):
    refs = combined[1].references
    allowed = np.array([n not in refs.excluded for n in MEMBERS])
    for j in range(refs.lead_grid.size):
        w = np.zeros(len(MEMBERS))
        w[allowed] = simplex_weights(refs.validation_gram[j][np.ix_(allowed, allowed)])
        np.testing.assert_allclose(w, refs.weights[:, j], atol=1e-4)


def test_saved_model_calibrates_on_recent_observations_the_same(recent_case, tmp_path):
    noisy, model = recent_case
    back = xsciml.load(model.save(tmp_path / "m.xsciml"))
    init = noisy.isel(time=[180])
    lead = np.array([3], "timedelta64[h]")
    xr.testing.assert_identical(back.forecast(init, lead=lead, members=4, recent=noisy),
                                model.forecast(init, lead=lead, members=4, recent=noisy))


@pytest.mark.parametrize("change, kw, err, match", [
    ("none", {"members": 4, "combine": False}, ValueError, "combine=False is the learned model alone"),
    ("training", {"members": 4}, ValueError, "no frame after the training period"),
    ("sample", {"members": 4}, ValueError, r"extra dimension\(s\) \['sample'\]"),
    ("grid", {"members": 4}, ValueError, "not on the training grid"),
    ("notime", {"members": 4}, ValueError, "need the time dimension 'time'"),
    ("inf", {}, ValueError, r"recent observations of \['t2m'\] hold infinite values"),
])
def test_recent_observations_that_cannot_calibrate_are_refused(recent_case, change, kw, err, match):
    noisy, model = recent_case
    recent = {"none": noisy, "training": noisy.isel(time=slice(0, 144)),
              "sample": noisy.expand_dims(sample=2),
              "grid": noisy.assign_coords(x=noisy.x + 0.5),
              "notime": noisy.isel(time=170),
              "inf": noisy.where(noisy.time != noisy.time[160], np.inf)}[change]
    with pytest.raises(err, match=match):
        model.forecast(noisy.isel(time=[180]), lead=np.array([3], "timedelta64[h]"), recent=recent, **kw)


def test_recent_observations_that_stop_before_the_window_say_so(recent_case):
    noisy, model = recent_case
    # up to 152 h: forecasts verify before 150 h, none in the 36 h before 191 h
    with pytest.warns(UserWarning, match="verify no forecast in the 1.5 days before 1 of 2 initial"):
        model.forecast(noisy.isel(time=[150, 191]), lead=np.array([1], "timedelta64[h]"), members=4,
                       recent=noisy.isel(time=slice(0, 153)))
    with pytest.raises(ValueError, match="no frame after the training period .* verifies in the 1.5 days"):
        model.forecast(noisy.isel(time=[191]), lead=np.array([1], "timedelta64[h]"), members=4,
                       recent=noisy.isel(time=slice(0, 153)))
