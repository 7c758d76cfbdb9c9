"""Local kriging and the per-frame RBF reference (xsciml.interpolation), and their use
as the residual interpolator of fit_field."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xsciml
from xsciml.interpolation import LocalKriging, correlation, fit_kriging, frame_rbf


def _exact_gp(x, y, q, params, kernel):
    """Closed-form GP prediction (all points, numpy) with the same covariance."""
    s2, t2, s0 = (math.exp(params[k]) for k in ("log_var", "log_nugget", "log_mean_var"))
    ls = np.exp(np.asarray(params["log_lengths"]))

    def cov(a, b):
        h = np.sqrt((((a[:, None, :] - b[None, :, :]) / ls) ** 2).sum(-1))
        return s2 * correlation(torch.as_tensor(h), kernel).numpy() + s0

    K = cov(x, x) + t2 * np.eye(len(x))
    kq = cov(q, x)
    w = np.linalg.solve(K, kq.T).T
    return w @ y, s2 + s0 + t2 - (w * kq).sum(1)


def _grf(n_points, length, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n_points, 2))
    h = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)) / length
    C = correlation(torch.as_tensor(h), "matern32").numpy() + 1e-8 * np.eye(n_points)
    return x, np.linalg.cholesky(C) @ rng.standard_normal(n_points)


@pytest.mark.parametrize("kernel", ["matern12", "matern32", "matern52", "gaussian"])
def test_kriging_with_every_neighbour_is_the_exact_gp(kernel):
    rng = np.random.default_rng(0)
    x, q = rng.uniform(0, 1, (30, 2)), rng.uniform(0, 1, (7, 2))
    y = np.sin(4 * x[:, 0]) + x[:, 1]
    params = {"log_var": 0.3, "log_nugget": -4.0, "log_mean_var": -1.0, "log_lengths": [-1.2, -0.7]}
    kr = LocalKriging(x, y, [[0], [1]], kernel, params, neighbors=30)
    m, v = kr.predict(q)
    me, ve = _exact_gp(x, y, q, params, kernel)
    # equal up to the 1e-8 relative jitter on the diagonal
    np.testing.assert_allclose(m, me, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v, ve, rtol=1e-6, atol=1e-7)


def test_variance_grows_away_from_the_observations_and_is_floored_by_the_nugget():
    x = np.array([[0.0], [0.1], [0.2]])
    params = {"log_var": 0.0, "log_nugget": math.log(0.01), "log_mean_var": -9.0, "log_lengths": [math.log(0.2)]}
    kr = LocalKriging(x, np.array([1.0, 2.0, 1.5]), [[0]], "matern52", params)
    _, v = kr.predict(np.array([[0.1], [0.5], [5.0]]))
    assert 0.01 <= v[0] < v[1] < v[2]
    assert v[2] == pytest.approx(1.0 + 0.01 + math.exp(-9.0), rel=1e-6)  # the prior, far away


def test_leave_one_out_never_uses_the_point_itself():
    x = np.linspace(0, 1, 20)[:, None]
    y = np.zeros(20)
    y[7] = 100.0  # only point 7 carries signal: its own LOO prediction cannot see it
    params = {"log_var": 0.0, "log_nugget": -6.0, "log_mean_var": -9.0, "log_lengths": [math.log(0.05)]}
    kr = LocalKriging(x, y, [[0]], "matern32", params, neighbors=5)
    m, _ = kr.leave_one_out([7])
    assert abs(m[0]) < 1.0


def test_fitted_local_kriging_is_as_good_as_the_exact_gp_with_the_true_covariance():
    x, f = _grf(700, 0.15, seed=3)
    obs, held = np.arange(300), np.arange(300, 700)
    kr = fit_kriging(x[obs], f[obs], groups=[[0], [1]], kernels=("matern32", "matern52"), seed=0)
    m, v = kr.predict(x[held])
    true = {"log_var": 0.0, "log_nugget": math.log(1e-6), "log_mean_var": -12.0,
            "log_lengths": [math.log(0.15)] * 2}
    me, _ = _exact_gp(x[obs], f[obs], x[held], true, "matern32")
    rmse, rmse_exact = np.sqrt(np.mean((m - f[held]) ** 2)), np.sqrt(np.mean((me - f[held]) ** 2))
    assert rmse <= 1.05 * rmse_exact
    cover = np.mean(np.abs(m - f[held]) <= 1.645 * np.sqrt(v))
    assert 0.8 <= cover <= 0.98
    assert all(0.05 < ell < 0.5 for ell in kr.lengths)


def test_time_length_separates_independent_frames_from_correlated_ones():
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, (12, 1))
    pts, same, indep = [], [], []
    base = np.sin(6 * xs[:, 0])
    for t in range(12):
        pts.append(np.column_stack([xs, np.full(12, float(t))]))
        same.append(base + 0.01 * rng.standard_normal(12))  # the same field every frame
        indep.append(np.sin(6 * xs[:, 0] + 2.1 * t))  # a new phase every frame
    pts = np.concatenate(pts)
    k_same = fit_kriging(pts, np.concatenate(same), groups=[[0], [1]], time_column=1,
                         kernels=("matern32",))
    k_ind = fit_kriging(pts, np.concatenate(indep), groups=[[0], [1]], time_column=1,
                        kernels=("matern32",))
    assert k_same.lengths[1] > 5.0  # frames share everything: a long time length
    assert k_ind.lengths[1] < 0.5  # frames are independent: shorter than one step


def test_frame_rbf_per_frame_and_space_time():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (100, 2))
    frames = np.repeat([0.0, 1.0], 50)
    y = x[:, 0] + 10 * frames  # a different constant per frame: linear, exact for the spline
    q = np.array([[0.5, 0.5], [0.5, 0.5]])
    v, how = frame_rbf(x, y, frames, q, np.array([0.0, 1.0]))
    assert how == "per-frame"
    np.testing.assert_allclose(v, [0.5, 10.5], atol=1e-6)
    v, how = frame_rbf(x, y, np.arange(100.0), q, np.array([0.0, 1.0]))  # one point per frame
    assert how == "space-time" and np.isfinite(v).all()


def test_kriging_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 4 observations"):
        fit_kriging(np.zeros((3, 1)), np.zeros(3), groups=[[0]])
    with pytest.raises(ValueError, match="finite"):
        fit_kriging(np.array([[0.0], [1.0], [2.0], [np.nan]]), np.zeros(4), groups=[[0]])
    with pytest.raises(ValueError, match="kernel must be one of"):
        LocalKriging(np.zeros((2, 1)), np.zeros(2), [[0]], "cubic", {})
    kr = LocalKriging(np.zeros((2, 1)), np.zeros(2), [[0]], "matern32",
                      {"log_var": 0.0, "log_nugget": -3.0, "log_mean_var": -3.0, "log_lengths": [0.0]})
    with pytest.raises(ValueError, match=r"points must be \[M, 1\]"):
        kr.predict(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="frame_rbf points, values and query must be finite"):
        frame_rbf(np.array([[0.0], [np.nan]]), np.zeros(2), None, np.zeros((1, 1)), None)
    with pytest.raises(ValueError, match=r"query \[M, D\]"):
        frame_rbf(np.zeros((4, 2)), np.zeros(4), None, np.zeros((1, 3)), None)
    m, v = kr.predict(np.array([[np.nan]]))
    assert np.isnan(m).all() and np.isnan(v).all()


# --------------------------------------------------------------------------- fit_field
def _independent_frames(n_frames=4, size=24, seed=0):
    """Random fields with a new realisation every frame, 15 % of each frame observed."""
    g = xsciml.datasets.gaussian_random_field((size, size), n=n_frames, alpha=2.5, tau=6.0,
                                              seed=seed, dtype="float64")
    da = xr.DataArray(g["u"].values, dims=("time", "y", "x"),
                      coords={"time": np.arange(n_frames, dtype=float), "y": g["y"].values,
                              "x": g["x"].values}, name="u")
    rng = np.random.default_rng(seed)
    obs = rng.uniform(size=da.shape) < 0.15
    return da, obs


@pytest.fixture(scope="module")
def kriged_field():
    da, obs = _independent_frames()
    ds = da.where(obs).to_dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        field = ds.sciml.fit_field("u", space=("y", "x"), time="time", steps=150, progress=False)
    return field, da, obs


def test_fit_field_on_independent_frames_interpolates_by_kriging_and_beats_the_rbf(kriged_field):
    field, da, obs = kriged_field
    val = field.info["validation"]
    assert field.info["predictor"] in ("kriging", "field+kriging")
    assert val["nrmse"] == min(val[k] for k in ("nrmse_field", "nrmse_field+kriging", "nrmse_kriging"))
    assert val["nrmse"] < val["nrmse_rbf"]  # a fitted Matérn beats the thin-plate spline here
    held = da.where(~obs & np.isfinite(da)).to_dataset()
    score = field.score(held)
    assert score["nrmse"] < 0.6
    assert 0.8 <= score["coverage"] <= 0.98
    assert "nRMSE" in field.summary() and "RBF" in field.summary()


def test_kriged_sigma_grows_away_from_the_observations(kriged_field):
    field, da, obs = kriged_field
    pred = field.predict(da.to_dataset())
    std = pred["u_std"].values
    assert std[obs].mean() < 0.7 * std[~obs].mean()


def test_lazy_prediction_of_a_kriged_field_equals_eager(kriged_field):
    field, da, _ = kriged_field
    target = da.to_dataset().chunk({"time": 2})
    lazy = field.predict(target)
    eager = field.predict(da.to_dataset())
    np.testing.assert_allclose(lazy["u_mean"].values, eager["u_mean"].values, rtol=1e-5, atol=1e-5)


def test_fit_field_warns_when_a_per_frame_rbf_does_better():
    da, obs = _independent_frames(n_frames=3)
    ds = da.where(obs).to_dataset()
    with pytest.warns(UserWarning, match=r"validation nRMSE [0-9.]+ is above that of a per-frame "
                                         r"thin-plate RBF \([0-9.]+\)"):
        field = ds.sciml.fit_field("u", space=("y", "x"), time="time", steps=3, residual="none",
                                   progress=False)
    assert field.info["predictor"] == "field"
    assert field.info["validation"]["nrmse"] > field.info["validation"]["nrmse_rbf"]


def test_fit_field_residual_setting_is_checked():
    da, obs = _independent_frames(n_frames=2)
    with pytest.raises(ValueError, match="residual must be 'auto', 'kriging' or 'none'"):
        da.where(obs).to_dataset().sciml.fit_field("u", space=("y", "x"), residual="gp", steps=2)
