"""Bad input and data safety: wrong settings, odd time axes and longitudes, packed
integers, non-finite values, tampered model files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xsciml  # noqa: F401
from tests.conftest import real_data


# ----------------------------------------------------------------------------- hourly time
def _hourly(n: int = 24) -> xr.Dataset:
    rng = np.random.default_rng(0)
    t = pd.date_range("2019-03-01", periods=n, freq="h")
    return xr.Dataset({"t2m": (("time", "lat", "lon"), 280 + rng.normal(size=(n, 3, 4)))},
                      coords={"time": t, "lat": np.linspace(50, 51, 3), "lon": np.linspace(0, 1, 4)})


def test_offset_table_times_strictly_increasing_for_hourly_days():
    from xsciml.models.latent_ode import Clock as _Clock
    from xsciml.models.latent_ode import OffsetTable as _OffsetTable

    values = _hourly().time.values
    clock = _Clock.fit(values, "days")
    tau = clock.elapsed(values) / clock.scale
    np.testing.assert_allclose(tau, np.arange(24.0), rtol=0, atol=1e-12)
    t_out, where = _OffsetTable(tau)(0, 24)
    assert torch.all(torch.diff(t_out) > 0)
    np.testing.assert_array_equal(t_out.numpy(), np.arange(24, dtype=np.float32))
    assert int(where[0, 23]) == 23


@pytest.mark.parametrize("units", ["days", "hours", "seconds"])
def test_fit_dynamics_on_hourly_frames(units):
    from xsciml.models.dino import fit_dynamics

    ds = _hourly()
    m = fit_dynamics(ds, "t2m", time="time", sample_dim=None, time_units=units, steps=2,
                     latent_dim=2, width=8, depth=1, dynamics_width=8, dynamics_depth=1, seed=0)
    fc = m.forecast(ds.isel(time=0), lead=pd.timedelta_range("0h", "3h", freq="h"))
    assert np.isfinite(fc.values).all() and fc.sizes["lead"] == 4


def test_fit_dynamics_on_real_hourly_era5():
    from xsciml.models.dino import fit_dynamics

    ds = xr.open_dataset(real_data("era5_t2m_uk_2019-03_hourly.nc"))
    ds = ds.isel(time=slice(0, 24), latitude=slice(0, 4), longitude=slice(0, 5)).load()
    m = fit_dynamics(ds, "t2m", time="time", sample_dim=None, steps=2, latent_dim=2, width=8,
                     depth=1, dynamics_width=8, dynamics_depth=1, seed=0)
    assert m.clock.units == "days"


# ----------------------------------------------------------------------------- packed integers
def test_unsigned_packed_integers_decode_as_xarray(tmp_path):
    from xsciml.tensors import decode_variable

    stored = np.array([[40000, 5, 65535]], dtype=np.uint16).view(np.int16)  # unsigned counts
    ds = xr.Dataset({"t": (("y", "x"), stored, {"scale_factor": 0.01, "_Unsigned": "true",
                                               "_FillValue": np.int16(-1), "units": "K"})},
                    coords={"y": [0.0], "x": [0.0, 1.0, 2.0]})
    path = tmp_path / "packed.nc"
    ds.to_netcdf(path, encoding={"t": {"dtype": "int16"}})
    raw = xr.open_dataset(path, mask_and_scale=False)
    assert raw.t.dtype == np.int16 and raw.t.attrs["_Unsigned"] == "true"
    out = decode_variable(raw.t)
    expected = xr.open_dataset(path).t  # xarray's decoding
    np.testing.assert_array_equal(out.values, expected.values)
    np.testing.assert_allclose(out.values[0, :2], [400.0, 0.05])
    assert np.isnan(out.values[0, 2]) and out.attrs["units"] == "K"
    lazy = decode_variable(xr.open_dataset(path, mask_and_scale=False, chunks={}).t)
    np.testing.assert_array_equal(lazy.values, expected.values)


def test_unsigned_packed_integers_reach_a_model_decoded():
    stored = np.array([40000, 40100, 40200, 40300], dtype=np.uint16).view(np.int16)
    da = xr.DataArray(stored, dims="x", coords={"x": np.arange(4.0)}, name="t",
                      attrs={"scale_factor": 0.01, "_Unsigned": "true"})
    data = da.to_dataset().sciml.to_tensors("t", space=("x",))
    np.testing.assert_allclose(data.to_dataarray(data.y).values, [400.0, 401.0, 402.0, 403.0])


# ----------------------------------------------------------------------------- longitudes
def _encoder(lat, lon, sphere="auto"):
    from xsciml.coords import CoordinateEncoder

    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return CoordinateEncoder(space=("lat", "lon"), sphere=sphere).fit({"lat": la, "lon": lo})


def test_regional_box_across_greenwich_in_0_360_is_regional():
    lon = np.r_[np.arange(350.0, 360.0, 2.5), np.arange(0.0, 20.1, 2.5)]  # Europe in 0..360
    enc = _encoder(np.arange(35.0, 60.0, 2.5), lon)
    assert enc.sphere is False
    # longitudes unwrapped to one continuous range: 350 -> -1, 20 -> +1, 0 in between
    x = enc.encode_space({"lat": np.full(4, 45.0), "lon": np.array([350.0, 357.5, 0.0, 20.0])})[:, 1]
    np.testing.assert_allclose(x, [-1.0, -0.5, -1 / 3, 1.0], atol=1e-12)
    assert np.all(np.diff(x) > 0)
    # the same box written in -180..180 encodes identically
    same = _encoder(np.arange(35.0, 60.0, 2.5), np.where(lon > 180, lon - 360, lon))
    np.testing.assert_allclose(same.encode_space({"lat": np.full(2, 45.0), "lon": np.array([-10.0, 0.0])}),
                               enc.encode_space({"lat": np.full(2, 45.0), "lon": np.array([350.0, 0.0])}),
                               atol=1e-12)


@pytest.mark.parametrize("lon", [np.arange(0.0, 360.0, 2.5), np.arange(-180.0, 180.0, 2.5),
                                 np.arange(128) * 360 / 128])
def test_global_grids_still_global(lon):
    assert _encoder(np.linspace(-88.0, 88.0, 12), lon).sphere is True


def test_regional_box_without_seam_unchanged():
    enc = _encoder(np.arange(35.0, 60.0, 2.5), np.arange(-10.0, 20.1, 2.5))
    assert enc.sphere is False and enc.space_min["lon"] == -10.0 and enc.space_max["lon"] == 20.0


def test_real_cmip_gaussian_grid_global_and_europe_crop_regional():
    from xsciml.coords import CoordinateEncoder

    ds = xr.open_dataset(real_data("cmip/tas_Amon_CanESM2_rcp85_r1i1p1_200701-200712.nc"))
    lat, lon = ds.lat.values, ds.lon.values
    assert _encoder(lat, lon).sphere is True
    box = ds.isel(lon=(lon >= 350) | (lon <= 20)).sel(lat=slice(35, 70))
    la, lo = xr.broadcast(box.lat, box.lon)
    enc = CoordinateEncoder(space=("lat", "lon"), sphere="auto").fit(
        {"lat": la.values, "lon": lo.values}, coord_meta={"lat": box.lat, "lon": box.lon})
    assert enc.sphere is False and -10 < enc.space_min["lon"] < 0 < enc.space_max["lon"] < 21


# ----------------------------------------------------------------------------- settings
def test_check_positive_int_one_message_style():
    from xsciml._utils import check_positive_int, check_positive_number

    assert check_positive_int(np.int32(4), "steps") == 4
    assert check_positive_int(None, "batch_size", allow_none=True) is None
    assert check_positive_int(0, "seed", minimum=0) == 0
    with pytest.raises(ValueError, match=r"^steps must be a positive integer, got 0$"):
        check_positive_int(0, "steps")
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got -1$"):
        check_positive_int(-1, "batch_size")
    for bad in (1.5, True, "abc", None):
        with pytest.raises(TypeError, match=r"^steps must be a positive integer, got "):
            check_positive_int(bad, "steps")
    with pytest.raises(ValueError, match=r"^seed must be a non-negative integer, got -1$"):
        check_positive_int(-1, "seed", minimum=0)
    assert check_positive_number(0, "lr", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r"^lr must be a positive number, got nan$"):
        check_positive_number(float("nan"), "lr")


@pytest.fixture(scope="module")
def small_field():
    from xsciml.models.field import fit_field

    rng = np.random.default_rng(0)
    ds = xr.Dataset({"u": (("y", "x"), rng.normal(size=(6, 7)))},
                    coords={"y": np.linspace(0, 1, 6), "x": np.linspace(0, 1, 7)})
    return ds, fit_field(ds, "u", space=("y", "x"), steps=3, progress=False, seed=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"steps": -5}, "steps must be a positive integer, got -5"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
])
def test_fit_field_refuses_zero_and_negative_settings(small_field, kwargs, message):
    from xsciml.models.field import fit_field

    ds, _ = small_field
    with pytest.raises(ValueError, match=message):
        fit_field(ds, "u", space=("y", "x"), progress=False, **{"steps": 2, **kwargs})


@pytest.mark.parametrize("batch_size", [0, -1])
@pytest.mark.parametrize("lazy", [False, True])
def test_predict_refuses_bad_batch_size_eager_and_lazy(small_field, batch_size, lazy):
    ds, model = small_field
    target = ds.chunk({"y": 3}) if lazy else ds
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {batch_size}"):
        out = model.predict(target, batch_size=batch_size)
        out.compute()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "steps must be a positive integer, got 0"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"n_points": -1}, "n_points must be a positive integer, got -1"),
    ({"latent_dim": 0}, "latent_dim must be a positive integer, got 0"),
])
def test_fit_dynamics_refuses_bad_settings(kwargs, message):
    from xsciml.models.dino import fit_dynamics

    with pytest.raises(ValueError, match=message):
        fit_dynamics(_hourly(6), "t2m", sample_dim=None, **{"steps": 2, **kwargs})


@pytest.mark.parametrize("fit", ["dino", "smooth"])
def test_fit_dynamics_refuses_an_unusable_valid_range_before_fitting(fit):
    """Forecasts are clipped to the training data's valid range: an unusable one fails at fit
    time, naming the variable and the attribute, not later at forecast time."""
    from xsciml.models.dynamics import fit_dynamics

    ds = _hourly(6)
    ds["t2m"].attrs["valid_range"] = [300.0, 250.0]
    with pytest.raises(ValueError, match=r"the valid range of 't2m' is empty: low 300 is above high 250"):
        fit_dynamics(ds, "t2m", sample_dim=None, method=fit, steps=2)


def test_fit_dynamics_takes_one_record_by_default_and_names_what_it_cannot_take():
    """sample_dim's default: one trajectory unless the data have a 'trajectory' dim; time out
    of order and a dim that is neither time, space nor trajectories are refused, saying what to do."""
    from xsciml.models.dynamics import fit_dynamics
    from xsciml.models.latent_ode import resolve_sample_dim

    tiny = dict(steps=2, latent_dim=2, width=8, depth=1, dynamics_width=8, dynamics_depth=1, seed=0,
                combine=False, progress=False)
    ds = _hourly(12)
    model = fit_dynamics(ds, "t2m", **tiny)  # no sample_dim: one record
    assert model.sample_dim is None and model.info["n_trajectories"] == 1
    two = xr.concat([ds, ds + 1.0], "trajectory")
    assert resolve_sample_dim(two, "auto") == "trajectory" and resolve_sample_dim(ds, "auto") is None
    assert fit_dynamics(two, "t2m", **tiny).info["n_trajectories"] == 2
    with pytest.raises(KeyError, match="sample_dim 'member' is not a dimension"):
        fit_dynamics(ds, "t2m", sample_dim="member", **tiny)
    late = xr.concat([ds, ds.isel(time=[3])], "time")  # a frame appended out of order
    with pytest.raises(ValueError, match=r"'time' must be strictly increasing: frame 12 \(2019-03-01T03.*comes "
                                         r"before frame 11 .*ds.sortby\('time'\).drop_duplicates\('time'\)"):
        fit_dynamics(late, "t2m", **tiny)
    with pytest.raises(ValueError, match=r"frame 1 .* repeats frame 0"):
        fit_dynamics(xr.concat([ds.isel(time=[0]), ds], "time"), "t2m", **tiny)
    levels = ds.expand_dims(plev=[850.0, 500.0]).transpose("time", "plev", "lat", "lon")
    with pytest.raises(ValueError, match=r"dims \('time', 'plev', 'lat', 'lon'\); the fit takes time along 'time' "
                                         r"and space along \('lat', 'lon'\); 'plev' is none of these: select one "
                                         r"value \(ds.isel\(plev=0\)\), pass sample_dim='plev'"):
        fit_dynamics(levels, "t2m", **tiny)
    assert fit_dynamics(levels, "t2m", **{**tiny, "sample_dim": "plev"}).info["n_trajectories"] == 2


def test_fit_dynamics_on_a_constant_field_forecasts_the_constant():
    from xsciml.models.dynamics import fit_dynamics

    ds = _hourly(12)
    ds["t2m"] = ds.t2m * 0 + 280.0
    with np.errstate(all="raise"):  # the frames' relative weights were 0 / 0
        model = fit_dynamics(ds, "t2m", steps=2, latent_dim=2, width=8, depth=1, dynamics_width=8,
                             dynamics_depth=1, seed=0, combine=False, progress=False)
    fc = model.forecast(ds.isel(time=-1), lead=[1, 2])
    np.testing.assert_allclose(fc.values, 280.0, atol=0.5)


# ----------------------------------------------------------------------------- conditions, weights
def test_infinite_condition_at_prediction_is_refused():
    from xsciml.models.field import fit_field

    rng = np.random.default_rng(1)
    ds = xr.Dataset({"u": (("x",), rng.normal(size=12)), "mu": (("x",), np.linspace(0, 1, 12))},
                    coords={"x": np.linspace(0, 1, 12)})
    model = fit_field(ds, "u", space=("x",), condition="mu", steps=2, progress=False, seed=0)
    target = ds[["mu"]].copy()
    target["mu"] = target["mu"].where(target.x != target.x[3], np.inf)
    with pytest.raises(ValueError, match=r"condition variable 'mu' contains 1 infinite value\(s\)"):
        model.predict(target)
    nan_target = ds[["mu"]].where(ds.x != ds.x[3])  # NaN still marks a missing condition
    out = model.predict(nan_target)
    assert np.isnan(out["u_mean"].values[3]) and np.isfinite(np.delete(out["u_mean"].values, 3)).all()


def _resave(path, *, config=None, tensors=None):
    """Rewrite a model file with an edited config/tensors and a recomputed digest."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from xsciml import io

    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(path) if tensors is None else tensors
    if config is not None:
        meta["config"] = json.dumps(config(json.loads(meta["config"])))
    meta["sha256"] = io._digest(meta["class"], meta["config"], meta.get("complex", "[]"), tensors)
    save_file(tensors, path, metadata=meta)


def test_nan_weights_refused_at_load(small_field, tmp_path):
    from safetensors.torch import load_file

    from xsciml.io import ModelFileError

    _, model = small_field
    path = model.save(tmp_path / "f.xsciml")
    tensors = load_file(path)
    name = next(k for k, v in tensors.items() if k.startswith("module.") and v.ndim == 2)
    tensors[name][0, 0] = float("nan")
    _resave(path, tensors=tensors)
    with pytest.raises(ModelFileError, match=rf"non-finite value\(s\) \(NaN/inf\) in the weight tensor '{name}'"):
        xsciml.load(path)


# ----------------------------------------------------------------------------- signed model files
def test_signed_round_trip_tampered_and_wrong_key(small_field, tmp_path):
    from xsciml.io import ModelFileError
    from xsciml.models.field import NeuralField

    ds, model = small_field
    path = model.save(tmp_path / "signed.xsciml", key="s3cret")
    back = xsciml.load(path, key="s3cret")
    np.testing.assert_array_equal(back.predict(ds)["u_mean"].values, model.predict(ds)["u_mean"].values)
    assert isinstance(NeuralField.load(path, key=b"s3cret"), NeuralField)
    assert isinstance(xsciml.load(path), NeuralField)  # without a key: the digest only
    with pytest.raises(ModelFileError, match="failed its signature check"):
        xsciml.load(path, key="wrong")
    # a deliberate edit that recomputes the digest passes the digest, not the signature
    _resave(path, config=lambda c: {**c, "variables": ["v"]})
    xsciml.io.read_metadata(path)  # still a well-formed file
    with pytest.raises(ModelFileError, match="changed after it was signed, or the key"):
        xsciml.load(path, key="s3cret")
    unsigned = model.save(tmp_path / "plain.xsciml")
    with pytest.raises(ModelFileError, match="is not signed, but a key was given"):
        xsciml.load(unsigned, key="s3cret")
    with pytest.raises(TypeError, match="key must be a non-empty str or bytes"):
        model.save(tmp_path / "x.xsciml", key=123)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: xsciml.datasets.heat(0, 8), "n_trajectories must be a positive integer, got 0"),
    (lambda: xsciml.datasets.heat(2, 8, n_frames=-1), "n_frames must be a positive integer, got -1"),
])
def test_dataset_counts_use_the_same_check(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- training domain
def _uk_box() -> xr.Dataset:
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(50.0, 59.0, 6), np.linspace(-8.0, 2.0, 6)
    t = pd.date_range("2020-01-01", periods=3, freq="D")
    t2m = 280 + rng.normal(size=(3, 6, 6))
    return xr.Dataset({"t2m": (("time", "lat", "lon"), t2m)},
                      coords={"time": t, "lat": lat, "lon": lon})


@pytest.fixture(scope="module")
def uk_field():
    from xsciml.models.field import fit_field

    ds = _uk_box()
    return ds, fit_field(ds, "t2m", steps=5, residual="none", progress=False, seed=0)


def test_predict_on_the_tropics_warns_with_fraction_and_ranges(uk_field):
    ds, field = uk_field
    target = {"lat": np.linspace(0.0, 30.0, 4), "lon": np.linspace(-8.0, 2.0, 3)}
    with pytest.warns(UserWarning, match=r"predict: 100 % of the target points lie outside the "
                      r"training range of 'lat' \(50 \.\. 59\): 0 \.\. 30; pass check_domain=False"):
        field.predict(target, time=ds.time.values[0])


def test_predict_partly_outside_in_time_warns_with_dates(uk_field):
    ds, field = uk_field
    times = pd.date_range("2020-01-02", periods=4, freq="D").values  # 2 of 4 after the period
    with pytest.warns(UserWarning, match=r"50 % of the target points lie outside the training "
                      r"range of 'time' \(2020-01-01 \.\. 2020-01-03\): 2020-01-02 \.\. 2020-01-05"):
        field.predict({"lat": ds.lat.values, "lon": ds.lon.values}, time=times)


def test_predict_latitude_beyond_90_refused(uk_field):
    ds, field = uk_field
    with pytest.raises(ValueError, match=r"latitude 'lat' of the target has values outside \[-90, 90\]"):
        field.predict({"lat": np.array([55.0, 95.0]), "lon": ds.lon.values}, time=ds.time.values[0])
    with pytest.raises(ValueError, match=r"latitude 'lat'"):  # no way round it
        field.predict({"lat": np.array([95.0]), "lon": ds.lon.values}, time=ds.time.values[0],
                      check_domain=False)


def test_predict_in_radians_warns(uk_field):
    ds, field = uk_field
    target = {"lat": np.deg2rad(ds.lat.values), "lon": np.deg2rad(ds.lon.values)}
    with pytest.warns(UserWarning, match=r"of 'lat' \(50 \.\. 59\): 0\.87\d* \.\. 1\.02\d*"):
        field.predict(target, time=ds.time.values[1])


def test_predict_on_training_grid_and_finer_grid_does_not_warn(uk_field):
    import warnings

    ds, field = uk_field
    fine = {"lat": np.linspace(50.0, 59.0, 11), "lon": np.linspace(-8.0, 2.0, 11),
            "time": ds.time.values}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        field.predict(ds)
        field.predict(fine)
        field.sample(2, ds)
        field.predict(ds.chunk({"time": 1}))  # lazy target: coordinates only


def test_check_domain_false_silences(uk_field):
    import warnings

    ds, field = uk_field
    target = {"lat": np.linspace(0.0, 30.0, 4), "lon": ds.lon.values}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        field.predict(target, time=ds.time.values[0], check_domain=False)
        field.sample(2, target, time=ds.time.values[0], check_domain=False)
    with pytest.warns(UserWarning, match=r"sample: 100 % .* of 'lat'"):
        field.sample(2, target, time=ds.time.values[0])


def test_lazy_target_outside_warns_without_computing(uk_field):
    ds, field = uk_field
    far = ds.assign_coords(lat=ds.lat - 40.0).chunk({"time": 1})
    with pytest.warns(UserWarning, match=r"100 % .* of 'lat' \(50 \.\. 59\): 10 \.\. 19"):
        out = field.predict(far)
    assert out["t2m_mean"].chunks is not None


def test_latent_decode_outside_warns():
    import warnings

    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 1.0, 5)
    ds = xr.Dataset({"u": (("time", "y", "x"), rng.normal(size=(6, 5, 5)))},
                    coords={"time": np.arange(6), "y": x, "x": x})
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=2, steps=5, progress=False,
                             seed=0, network_kwargs={"width": 8, "depth": 1})
    z = np.zeros((1, 2))
    with pytest.warns(UserWarning, match=r"decode: 50 % of the target points lie outside the "
                      r"training range of 'x' \(0 \.\. 1\)"):
        li.decode(z, {"y": x, "x": np.linspace(0.0, 3.0, 4)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        li.decode(z, {"y": x, "x": np.linspace(0.0, 1.0, 9)})
        li.decode(z, {"y": x, "x": np.linspace(0.0, 3.0, 4)}, check_domain=False)


def test_non_numeric_data_one_error_for_every_entry_point():
    """One check, one error type: a NonNumericError is a TypeError and a ValueError."""
    import numpy as np
    import xarray as xr

    from xsciml._utils import NonNumericError

    ds = xr.Dataset({"u": (("time", "x"), np.array([["a"] * 4] * 12))},
                    coords={"time": np.arange(12), "x": np.arange(4.0)})
    for call in (lambda: ds.sciml.to_tensors("u", space="x"),
                 lambda: ds.sciml.fit_autoencoder("u", sample_dim="time")):
        with pytest.raises(NonNumericError, match="variable 'u' has non-numeric dtype <U1") as info:
            call()
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
