"""Validation points shaped like the data's gaps (xsciml._holdout, CoordinateData.split_indices)."""

import warnings

import numpy as np
import pytest
import xarray as xr
from scipy.ndimage import distance_transform_edt

import xsciml  # noqa: F401  (registers the .sciml accessor)
from xsciml._holdout import gap_shaped_holdout
from xsciml.tensors import to_tensors


def _stripes(n_frames=6, ny=40, nx=40, width=2, period=10):
    """Observed diagonal stripes, shifted every frame: wide organised gaps between them."""
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    return np.stack([((ii + jj // 2 + 3 * k) % period) < width for k in range(n_frames)])


def _held_distance(obs, held_mask):
    """Distance (cells) of each held-out point to the nearest remaining observation."""
    held = np.zeros(obs.size, bool)
    held[np.flatnonzero(obs)[held_mask]] = True
    held = held.reshape(obs.shape)
    return np.concatenate([distance_transform_edt(~(obs[k] & ~held[k]))[held[k]]
                           for k in range(obs.shape[0]) if held[k].any()])


def test_random_gaps_keep_random_validation_points():
    obs = np.random.default_rng(0).uniform(size=(8, 30, 30)) < 0.1
    held, info = gap_shaped_holdout(np.flatnonzero(obs), ("t", "y", "x"), obs.shape, ("y", "x"), 0.1)
    assert held is None
    assert info["pattern"] == "random" and "random points are as far" in info["reason"]
    assert float(info["scores"]["0.0"]) < min(float(v) for k, v in info["scores"].items() if k != "0.0")


def test_organised_gaps_get_holes_as_far_from_the_data_as_the_gaps():
    obs = _stripes()
    valid = np.flatnonzero(obs)
    held, info = gap_shaped_holdout(valid, ("t", "y", "x"), obs.shape, ("y", "x"), 0.1, seed=3)
    assert info["pattern"] == "gap-shaped" and info["hole_scale"] > 0
    assert held.shape == valid.shape and 0.09 <= held.mean() <= 0.15
    d_held = _held_distance(obs, held)
    d_gap = np.concatenate([distance_transform_edt(~obs[k])[~obs[k]] for k in range(obs.shape[0])])
    # random held-out points would sit next to another observation of the same stripe
    assert np.median(d_held) > 1.2
    assert 0.6 < np.median(d_held) / np.median(d_gap) < 1.6


def test_holes_follow_the_dimension_order_of_the_array():
    obs = _stripes()
    moved = np.ascontiguousarray(np.moveaxis(obs, 0, -1))  # (y, x, t)
    held_a, _ = gap_shaped_holdout(np.flatnonzero(obs), ("t", "y", "x"), obs.shape, ("y", "x"), 0.1, seed=1)
    held_b, _ = gap_shaped_holdout(np.flatnonzero(moved), ("y", "x", "t"), moved.shape, ("y", "x"), 0.1,
                                   seed=1)
    # the same points are held out, whatever the storage order
    full_a = np.zeros(obs.size, bool)
    full_a[np.flatnonzero(obs)[held_a]] = True
    full_b = np.zeros(moved.size, bool)
    full_b[np.flatnonzero(moved)[held_b]] = True
    np.testing.assert_array_equal(np.moveaxis(full_a.reshape(obs.shape), 0, -1), full_b.reshape(moved.shape))


@pytest.mark.parametrize("obs, reason", [
    (np.ones((3, 10, 10), bool), "no gaps to mimic"),
    (np.ones((3, 3, 3), bool), "too few grid cells"),
    (np.eye(10, dtype=bool)[None], "too few observations (10)"),
])
def test_nothing_to_mimic_falls_back_to_random_points(obs, reason):
    held, info = gap_shaped_holdout(np.flatnonzero(obs), ("t", "y", "x"), obs.shape, ("y", "x"), 0.1)
    assert held is None and reason in info["reason"]


def _striped_dataset():
    obs = _stripes()
    t, ny, nx = obs.shape
    y, x = np.linspace(0, 1, ny), np.linspace(0, 1, nx)
    truth = (np.sin(4 * x)[None, None, :] + np.cos(3 * y)[None, :, None]
             + 0.2 * np.arange(t)[:, None, None])
    da = xr.DataArray(truth, dims=("time", "y", "x"),
                      coords={"time": np.arange(t, dtype=float), "y": y, "x": x}, name="u")
    return da, obs


def test_split_indices_auto_partitions_the_points():
    da, obs = _striped_dataset()
    data = to_tensors(da.where(obs).to_dataset(), "u", space=("y", "x"), time="time")
    ti, vi = data.split_indices(0.1, seed=0, pattern="auto")
    assert data.split_info["pattern"] == "gap-shaped"
    both = np.concatenate([ti.numpy(), vi.numpy()])
    np.testing.assert_array_equal(np.sort(both), np.arange(len(data)))
    ti_r, vi_r = data.split_indices(0.1, seed=0)
    assert data.split_info == {"pattern": "random"} and len(vi_r) == round(0.1 * len(data))
    with pytest.raises(ValueError, match="pattern must be 'random' or 'auto', got 'blocks'"):
        data.split_indices(0.1, pattern="blocks")


def test_scattered_points_are_held_out_at_random():
    n = 200
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"u": ("obs", rng.normal(size=n))},
                    coords={"lon": ("obs", rng.uniform(0, 10, n)), "lat": ("obs", rng.uniform(0, 10, n)),
                            "time": ("obs", np.sort(rng.uniform(0, 5, n)))})
    data = to_tensors(ds, "u", space=("lat", "lon"), time="time")
    data.split_indices(0.1, pattern="auto")
    assert data.split_info["pattern"] == "random" and "scattered" in data.split_info["reason"]


def test_fit_field_validates_on_gap_shaped_points_and_says_so():
    da, obs = _striped_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        field = da.where(obs).to_dataset().sciml.fit_field("u", space=("y", "x"), time="time", steps=30,
                                                           residual="none", progress=False)
    hold = field.info["validation"]["holdout"]
    assert hold["pattern"] == "gap-shaped" and hold["held_distance_median"] > 1
    assert "gap-shaped holes" in field.summary()
    with pytest.raises(ValueError, match="pattern must be 'random' or 'auto'"):
        da.where(obs).to_dataset().sciml.fit_field("u", space=("y", "x"), time="time", steps=2,
                                                   val_pattern="blobs", progress=False)


def test_too_few_held_out_points_keep_the_field_alone_and_say_so():
    rng = np.random.default_rng(0)
    values = np.full((4, 10, 10), np.nan)
    for frame in values:  # 8 observations a frame: 3 held out of 32
        frame.flat[rng.choice(100, 8, replace=False)] = rng.normal(size=8)
    ds = xr.Dataset({"u": (("time", "lat", "lon"), values)},
                    coords={"time": np.arange(4.0), "lat": np.linspace(40, 50, 10), "lon": np.linspace(0, 10, 10)})
    with pytest.warns(UserWarning, match="only 3 of 32 observations were held out"):
        field = ds.sciml.fit_field("u", space=("lat", "lon"), time="time", steps=20, progress=False)
    assert field.info["predictor"] == "field"
    assert "3 held-out points are too few to choose a predictor" in field.summary()
    assert "nrmse_rbf" not in field.info["validation"]
