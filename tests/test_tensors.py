"""Coordinate-based tensors and gridded fields: round trips, layouts, files, bad input."""

from __future__ import annotations

import cftime
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xsciml  # noqa: F401  (registers .sciml)
from xsciml.coords import CoordinateEncoder, time_to_float
from xsciml.tensors import decode_variable, target_points, to_fields

from .conftest import real_data


def assert_roundtrip(ds: xr.Dataset, data, variables) -> None:
    """to_tensors → to_dataset gives the originals at valid points and NaN elsewhere."""
    back = data.to_dataset(data.y)
    joint = np.logical_and.reduce([np.isfinite(ds[v].values) for v in variables])
    for v in variables:
        orig = ds[v]
        got = back[v].transpose(*orig.dims)
        valid = joint
        np.testing.assert_array_equal(got.values[valid], orig.values[valid])
        assert np.isnan(got.values[~valid]).all()
        assert got.attrs == orig.attrs
        for c in orig.coords:
            np.testing.assert_array_equal(got[c].values, orig[c].values)


# --------------------------------------------------------------------------- layouts
def test_regular_grid_descending_lat_two_variables(grid_ds):
    data = grid_ds.sciml.to_tensors(["sst", "sss"], space=("lat", "lon"), time="time", dtype=torch.float64)
    n_valid = int((np.isfinite(grid_ds.sst) & np.isfinite(grid_ds.sss)).sum())
    assert data.y.shape == (n_valid, 2) and data.x.shape == (n_valid, 2) and data.t.shape == (n_valid,)
    assert data.x.min() >= -1 and data.x.max() <= 1 and data.t.min() == -1 and data.t.max() == 1
    # the first point (time 0, lat 50 = northernmost, lon -5) is encoded as lat=+1
    assert data.features[0, 0] == 1.0
    assert_roundtrip(grid_ds, data, ["sst", "sss"])
    # raw coordinates of each point agree with the grid
    raw = data.raw_coords
    i = 7
    sel = grid_ds.sst.sel(time=raw["time"][i], lat=raw["lat"][i], lon=raw["lon"][i])
    assert float(sel) == float(data.y[i, 0])


def test_float32_data_roundtrip_exact_in_default_dtype(grid_ds):
    ds = grid_ds.astype("float32")
    data = ds.sciml.to_tensors("sst")
    assert data.y.dtype == torch.float32
    assert_roundtrip(ds, data, ["sst"])


def test_curvilinear_coordinates():
    rng = np.random.default_rng(1)
    ny, nx = 6, 7
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lat = 40 + 0.5 * yy + 0.1 * xx
    lon = -20 + 0.6 * xx - 0.05 * yy
    v = rng.normal(size=(3, ny, nx))
    v[:, 0, 0] = np.nan
    ds = xr.Dataset({"h": (("time", "y", "x"), v)},
                    coords={"lat": (("y", "x"), lat), "lon": (("y", "x"), lon),
                            "time": pd.date_range("2000-01-01", periods=3)})
    data = ds.sciml.to_tensors("h", space=("lat", "lon"), dtype=torch.float64)
    assert data.encoder.space == ("lat", "lon")
    raw = data.raw_coords
    # each point carries the 2-D coordinate of its own cell
    t, j, i = np.unravel_index(data.layout.valid, v.shape)
    np.testing.assert_array_equal(raw["lat"], lat[j, i])
    np.testing.assert_array_equal(raw["lon"], lon[j, i])
    assert_roundtrip(ds, data, ["h"])


def test_scattered_observations_with_repeated_times():
    rng = np.random.default_rng(2)
    n = 50
    times = np.sort(rng.choice(pd.date_range("2001-01-01", periods=10, freq="6h").values, n))
    ds = xr.Dataset({"ud": ("obs", rng.normal(size=n)), "lon": ("obs", rng.uniform(27, 42, n)),
                     "lat": ("obs", rng.uniform(41, 47, n))},
                    coords={"obs": times, "time": ("obs", times)})
    ds["ud"][3] = np.nan
    data = ds.sciml.to_tensors("ud", space=("lat", "lon"), time="time", dtype=torch.float64)
    assert len(data) == n - 1
    np.testing.assert_array_equal(data.raw_coords["lon"], np.delete(ds.lon.values, 3))
    back = data.to_dataarray(data.y)
    assert back.dims == ("obs",) and "lon" in back.coords
    np.testing.assert_array_equal(back.values[np.arange(n) != 3], np.delete(ds.ud.values, 3))


@pytest.mark.parametrize("calendar,ylen", [("noleap", 365), ("360_day", 360)])
def test_cftime_calendars(calendar, ylen):
    times = xr.date_range("2001-01-01", periods=5, freq="D", calendar=calendar, use_cftime=True)
    ds = xr.Dataset({"v": (("time", "x"), np.arange(15.0).reshape(5, 3))},
                    coords={"time": times, "x": [0.0, 1.0, 2.0]})
    data = ds.sciml.to_tensors("v", space="x", time="time", time_features=("doy",), dtype=torch.float64)
    assert data.encoder.calendar == calendar
    # float time: days since 1970-01-01 in the data's own calendar
    expected0 = 31 * ylen if calendar == "noleap" else 31 * 360
    assert time_to_float(times.values)[0] == pytest.approx(expected0)
    # day-of-year phase uses the calendar's year length
    i = 3  # 4th point: 2001-01-02 (x=0)
    sin_doy = data.features[i, data.feature_names.index("sin_doy")]
    assert float(sin_doy) == pytest.approx(np.sin(2 * np.pi * 1 / ylen))
    assert_roundtrip(ds, data, ["v"])
    # a standard-calendar target is refused with a hint
    with pytest.raises(ValueError, match="convert_calendar"):
        data.target({"x": [0.5], "time": pd.date_range("2001-01-01", periods=1).values})


def test_int16_packed_variable_arrives_decoded(tmp_path):
    phys = np.array([[271.5, 280.25], [np.nan, 300.0]])
    ds = xr.Dataset({"t": (("y", "x"), phys)}, coords={"y": [0.0, 1.0], "x": [0.0, 1.0]})
    enc = {"t": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -32767}}
    path = tmp_path / "packed.nc"
    ds.to_netcdf(path, encoding=enc)
    raw = xr.open_dataset(path, mask_and_scale=False)
    assert raw.t.dtype == np.int16
    data = raw.sciml.to_tensors("t", space=("y", "x"), time=None, dtype=torch.float64)
    np.testing.assert_allclose(data.y[:, 0].numpy(), [271.5, 280.25, 300.0], atol=0.006)
    assert len(data) == 3  # the fill value is a gap, not a number
    decoded = decode_variable(raw.t)
    assert "scale_factor" not in decoded.attrs and decoded.dtype.kind == "f"


# --------------------------------------------------------------------------- property test
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6)),
    order=st.permutations([0, 1, 2]),
    mask_frac=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_roundtrip_property(shape, order, mask_frac, seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=shape)
    v[rng.random(shape) < mask_frac] = np.nan
    if not np.isfinite(v).any():
        v.flat[0] = 1.0
    ds = xr.Dataset({"v": (("time", "lat", "lon"), v)},
                    coords={"time": pd.date_range("2000", periods=shape[0], freq="D"),
                            "lat": np.linspace(60, 30, shape[1]), "lon": np.linspace(0, 20, shape[2])})
    dims = [("time", "lat", "lon")[i] for i in order]
    ds = ds.transpose(*dims)
    data = ds.sciml.to_tensors("v", space=("lat", "lon"), time="time", dtype=torch.float64)
    assert len(data) == int(np.isfinite(v).sum())
    assert_roundtrip(ds, data, ["v"])
    # samples [S, N, Dy] get a leading sample dim
    s = torch.stack([data.y, 2 * data.y])
    back = data.to_dataarray(s)
    assert back.dims == ("sample",) + tuple(dims)
    np.testing.assert_array_equal(back.isel(sample=1).values, 2 * ds.v.values)


# --------------------------------------------------------------------------- encodings
def test_sphere_embedding_closes_the_seam():
    lon = np.arange(0, 360, 10.0)
    ds = xr.Dataset({"v": (("lat", "lon"), np.ones((3, lon.size)))},
                    coords={"lat": [-60.0, 0.0, 60.0], "lon": lon})
    data = ds.sciml.to_tensors("v", time=None, dtype=torch.float64)
    assert data.encoder.sphere is True and data.x.shape[1] == 3
    np.testing.assert_allclose(torch.linalg.norm(data.x, dim=1).numpy(), 1.0)
    tp = data.target({"lat": [0.0, 0.0], "lon": [359.999, -0.001]}, time=None)
    a, b = tp.features[0], tp.features[3] if len(tp.features) > 3 else tp.features[1]
    assert torch.allclose(tp.features[0], tp.features[1], atol=1e-4)
    del a, b


def test_affine_longitude_accepts_other_convention():
    ds = xr.Dataset({"v": (("lat", "lon"), np.ones((2, 3)))},
                    coords={"lat": [50.0, 51.0], "lon": [-10.0, -5.0, 0.0]})
    data = ds.sciml.to_tensors("v", time=None)
    assert data.encoder.sphere is False
    tp = data.target({"lat": [50.0], "lon": [355.0]})  # 355°E == -5°E
    assert float(tp.features[0, 1]) == pytest.approx(0.0, abs=1e-6)


def test_hour_feature_and_encoder_state_roundtrip(grid_ds):
    data = grid_ds.sciml.to_tensors("sst", time_features=("hour",), dtype=torch.float64)
    j = data.feature_names.index("sin_hour")
    hours = pd.DatetimeIndex(data.raw_coords["time"]).hour.to_numpy()
    np.testing.assert_allclose(data.features[:, j].numpy(), np.sin(2 * np.pi * hours / 24), atol=1e-12)
    enc2 = CoordinateEncoder.from_dict(data.encoder.to_dict())
    tp1 = target_points(data.encoder, grid_ds, dtype=torch.float64)
    tp2 = target_points(enc2, grid_ds, dtype=torch.float64)
    assert torch.equal(tp1.features, tp2.features)


def test_numeric_period_features():
    ds = xr.Dataset({"v": (("t", "x"), np.ones((4, 2)))}, coords={"t": [0.0, 6.0, 12.0, 18.0], "x": [0.0, 1.0]})
    data = ds.sciml.to_tensors("v", space="x", time="t", time_features={"cycle": 24.0}, dtype=torch.float64)
    j = data.feature_names.index("cos_cycle")
    np.testing.assert_allclose(data.features[::2, j].numpy(), np.cos(2 * np.pi * np.array([0, 6, 12, 18]) / 24),
                               atol=1e-12)


# --------------------------------------------------------------------------- targets
def test_targets_grid_points_and_dataset(grid_ds):
    data = grid_ds.sciml.to_tensors("sst", dtype=torch.float64)
    fine = {"time": grid_ds.time.values[:2], "lat": np.linspace(50, 40, 9), "lon": np.linspace(-10, 2.5, 11)}
    tp = data.target(fine)
    assert tp.features.shape == (2 * 9 * 11, 3)
    da = tp.to_dataarray(tp.features[:, 0], name="lat_enc")
    assert da.dims == ("time", "lat", "lon") and da.shape == (2, 9, 11)
    np.testing.assert_allclose(da.isel(time=0, lon=0).values, np.linspace(1, -1, 9))
    # scattered points with NaN coordinate → NaN out
    pts = pd.DataFrame({"lat": [45.0, np.nan, 41.0], "lon": [0.0, 1.0, -3.0],
                        "time": grid_ds.time.values[[0, 1, 3]]})
    tp = data.target(pts)
    assert len(tp) == 2
    out = tp.to_dataarray(np.array([1.0, 2.0]))
    assert out.dims == ("point",)
    np.testing.assert_array_equal(out.values, [1.0, np.nan, 2.0])
    # time passed separately, static target
    tp = data.target({"lat": [45.0], "lon": [0.0]}, time=grid_ds.time.values[:3])
    assert tp.to_dataarray(tp.features[:, 2]).sizes["time"] == 3
    # the original grid as a target matches the training encoding at valid points
    tp = data.target(grid_ds)
    full = tp.to_dataarray(tp.features[:, 0])
    assert full.shape == grid_ds.sst.shape


def test_target_bad_input(grid_ds):
    data = grid_ds.sciml.to_tensors("sst")
    with pytest.raises(ValueError, match="1-D"):
        data.target({"lat": np.zeros((2, 2)), "lon": [0.0], "time": grid_ds.time.values})
    with pytest.raises(KeyError, match="lon"):
        data.target({"lat": [1.0], "time": grid_ds.time.values})
    with pytest.raises(ValueError, match="time"):
        data.target({"lat": [1.0], "lon": [1.0]})


# --------------------------------------------------------------------------- gridded fields
def test_to_fields_roundtrip_mask_and_samples(grid_ds):
    g = grid_ds.sciml.to_fields(["sst", "sss"], sample_dim="time", dtype=torch.float64)
    assert g.values.shape == (4, 2, 5, 6) and g.mask.dtype == torch.bool
    np.testing.assert_array_equal(g.mask[:, 0].numpy(), np.isfinite(grid_ds.sst.values))
    back = g.to_dataset(g.values)
    xr.testing.assert_identical(back.sst, grid_ds.sst.transpose("time", "lat", "lon"))
    # descending latitude is kept in the file's order
    assert back.lat.values[0] == 50.0
    ens = torch.stack([g.values, g.values + 1])
    out = g.to_dataarray(ens, "sss", leading_dim="member")
    assert out.dims == ("member", "time", "lat", "lon")
    np.testing.assert_allclose(out.isel(member=1).values, grid_ds.sss.values + 1)
    new = g.to_dataarray(g.values[:2], sample_coords=False, masked=False)
    assert new.dims == ("sample", "lat", "lon")


def test_to_fields_unstructured_and_stacked_sample_dims():
    v = np.arange(2 * 3 * 5, dtype=float).reshape(2, 3, 5)
    da = xr.DataArray(v, dims=("trajectory", "time", "node"), name="u",
                      coords={"time": [0.0, 1.0, 2.0]})
    g = to_fields(da, sample_dim=("trajectory", "time"), dtype=torch.float64)
    assert g.values.shape == (6, 1, 5)
    back = g.to_dataarray(g.values)
    xr.testing.assert_equal(back, da)


def test_to_fields_bad_input(grid_ds):
    with pytest.raises(KeyError, match="sample_dim 'member'"):
        grid_ds.sciml.to_fields("sst", sample_dim="member")
    with pytest.raises(ValueError, match="space dimensions"):
        grid_ds.expand_dims(level=2).sciml.to_fields("sst", sample_dim="time")
    with pytest.raises(ValueError, match="all-NaN"):
        (grid_ds * np.nan).sciml.to_fields("sst")


# --------------------------------------------------------------------------- files and dask
@pytest.mark.parametrize("fmt", ["netcdf", "zarr"])
def test_lazy_files_equal_eager(grid_ds, tmp_path, fmt):
    path = tmp_path / f"data.{'nc' if fmt == 'netcdf' else 'zarr'}"
    if fmt == "netcdf":
        grid_ds.to_netcdf(path, engine="netcdf4")
        lazy = xr.open_dataset(path, chunks={"time": 1, "lat": 3})
    else:
        grid_ds.chunk({"time": 1, "lat": 3}).to_zarr(path)
        lazy = xr.open_zarr(path)
    assert lazy.sst.chunks is not None
    eager = grid_ds.sciml.to_tensors("sst", dtype=torch.float64)
    data = lazy.sciml.to_tensors("sst", dtype=torch.float64)
    assert data.is_lazy and data._features is None  # nothing loaded yet
    assert data.n_valid == len(eager)
    assert data.scaler.mean == pytest.approx(eager.scaler.mean) and data.scaler.std == pytest.approx(eager.scaler.std)
    # streamed batches hold exactly the eager points (as sets of rows)
    feats, ys = zip(*data.batches(7, shuffle=True, seed=3), strict=True)
    assert all(len(y) == 7 for y in ys[:-1])
    got = torch.cat([torch.cat(feats), torch.cat(ys)], 1).numpy()
    ref = torch.cat([eager.features, eager.y], 1).numpy()
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(key(got), key(ref))
    # two epochs with the same seed give the same order, another seed another order
    y1 = torch.cat([b[1] for b in data.batches(7, seed=3)])
    y2 = torch.cat([b[1] for b in data.batches(7, seed=4)])
    assert torch.equal(y1, torch.cat(ys)) and not torch.equal(y1, y2)
    # materialising the lazy data gives the eager tensors
    assert torch.equal(data.features, eager.features) and torch.equal(data.y, eager.y)


def test_streaming_under_distributed_cluster(grid_ds, tmp_path, dask_client):
    path = tmp_path / "d.zarr"
    grid_ds.chunk({"time": 2}).to_zarr(path)
    data = xr.open_zarr(path).sciml.to_tensors("sst", dtype=torch.float64)
    ys = torch.cat([y for _, y in data.batches(16, shuffle=False)])
    eager = grid_ds.sciml.to_tensors("sst", dtype=torch.float64)
    assert torch.equal(ys, eager.y)


# --------------------------------------------------------------------------- bad input
def test_bad_input_errors(grid_ds):
    with pytest.raises(KeyError, match="'chl'.*available"):
        grid_ds.sciml.to_tensors("chl")
    with pytest.raises(KeyError, match="coordinate 'depth'"):
        grid_ds.sciml.to_tensors("sst", space=("lat", "depth"))
    s = grid_ds.assign(name=(("time", "lat", "lon"), np.full(grid_ds.sst.shape, "a")))
    with pytest.raises(ValueError, match="'name' has non-numeric dtype"):
        s.sciml.to_tensors("name")
    with pytest.raises(ValueError, match="'sst' is all-NaN"):
        (grid_ds * np.nan).sciml.to_tensors("sst")
    bad = grid_ds.copy(deep=True)
    bad["sst"][0, 2, 2] = np.inf
    with pytest.raises(ValueError, match="'sst' contains 1 infinite"):
        bad.sciml.to_tensors("sst")
    dup = grid_ds.assign_coords(time=grid_ds.time.values[[0, 1, 1, 3]])
    with pytest.raises(ValueError, match="duplicate.*drop_duplicates"):
        dup.sciml.to_tensors("sst")
    uns = grid_ds.isel(time=[1, 0, 2, 3])
    with pytest.raises(ValueError, match="not sorted.*sortby"):
        uns.sciml.to_tensors("sst")
    with pytest.raises(ValueError, match="different dimensions"):
        grid_ds.assign(b=grid_ds.sst.isel(time=0)).sciml.to_tensors(["sst", "b"])
    with pytest.raises(ValueError, match="not a time axis"):
        grid_ds.assign_coords(time=["a", "b", "c", "d"]).sciml.to_tensors("sst")
    with pytest.raises(ValueError, match="outside \\[-90, 90\\]"):
        grid_ds.assign_coords(lat=grid_ds.lat + 100).sciml.to_tensors("sst")


def test_condition_variables(grid_ds):
    ds = grid_ds.assign(depth=(("lat", "lon"), np.arange(30.0).reshape(5, 6)))
    data = ds.sciml.to_tensors("sst", condition=["depth"], dtype=torch.float64)
    assert data.feature_names[-1] == "depth" and data.c.shape == (len(data), 1)
    raw = data.raw_coords
    k = 11
    depth = ds.depth.sel(lat=raw["lat"][k], lon=raw["lon"][k]).item()
    # standardised over the training points (depth broadcast in time, where sst exists)
    at_points = ds.depth.broadcast_like(ds.sst).where(np.isfinite(ds.sst))
    expected = (depth - at_points.mean().item()) / at_points.std().item()
    assert float(data.c[k, 0]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="both as variables and as condition"):
        ds.sciml.to_tensors("sst", condition="sst")


def test_dataarray_accessor(grid_ds):
    data = grid_ds.sst.sciml.to_tensors()
    assert data.variables == ["sst"] and len(data) == int(np.isfinite(grid_ds.sst).sum())


# --------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_era5_descending_lat():
    ds = xr.open_dataset(real_data("era5_t2m_uk_2019-03_hourly.nc"), chunks={"time": 96})
    ds = ds.isel(time=slice(0, 192))
    data = ds.sciml.to_tensors("t2m", space=("latitude", "longitude"), time="time",
                               time_features=("hour",))
    assert ds.latitude.values[0] > ds.latitude.values[-1]
    assert data.is_lazy
    n = sum(len(y) for _, y in data.batches(50_000))
    assert n == 192 * 33 * 49
    eager = ds.load().sciml.to_tensors("t2m", space=("latitude", "longitude"), time="time")
    assert_roundtrip(ds, eager, ["t2m"])


@pytest.mark.realdata
def test_real_nrcan_gappy():
    ds = xr.open_dataset(real_data("NRCAN_SECan_1981-2010.nc")).isel(time=slice(0, 3))
    data = ds.sciml.to_tensors("tg_mean", space=("lat", "lon"), time="time")
    frac = 1 - len(data) / ds.tg_mean.size
    assert 0.3 < frac < 0.4  # ~35 % ocean mask dropped
    assert_roundtrip(ds, data, ["tg_mean"])


@pytest.mark.realdata
def test_real_drifters_scattered():
    ds = xr.open_dataset(real_data("aoml_drifters_pyinterp.nc"))
    data = ds.sciml.to_tensors(["ud", "vd"], space=("lat", "lon"), time="time", dtype=torch.float64)
    assert data.y.shape[1] == 2 and data.layout.dims == ("obs",)
    assert_roundtrip(ds, data, ["ud", "vd"])


@pytest.mark.realdata
def test_real_canesm2_noleap():
    ds = xr.open_dataset(real_data("sdba/CanESM2_1950-2100.nc"), use_cftime=True).isel(time=slice(0, 800))
    data = ds.sciml.to_tensors("tasmax", space=("lat", "lon"), time="time", time_features=("doy",))
    assert data.encoder.calendar == "noleap"
    assert isinstance(ds.time.values[0], cftime.datetime)
    assert_roundtrip(ds, data, ["tasmax"])


def test_unnamed_dataarray_takes_the_requested_name_and_several_variables_need_naming():
    da = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("y", "x"),
                      coords={"y": [0.0, 1.0], "x": [0.0, 1.0, 2.0]})
    data = xsciml.to_tensors(da, "u", space=("y", "x"), time=None)
    assert data.variables == ["u"] and len(data) == 6
    ds = xr.Dataset({"u": da, "v": da})
    with pytest.raises(ValueError, match=r"several data variables, \['u', 'v'\]: name the one"):
        xsciml.to_tensors(ds, space=("y", "x"), time=None)
