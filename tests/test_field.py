"""Neural fields: accuracy on known fields, likelihood outputs, save/load, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import xarray as xr

import xsciml


def smooth_ds(n=24, frames=3, seed=0, noise=0.0):
    """A smooth space-time field on (time, y, x) with a known formula."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n)
    y = np.linspace(-1, 1, n)
    t = np.arange(frames, dtype=float)
    T, Y, X = np.meshgrid(t, y, x, indexing="ij")
    u = np.sin(2 * X + 0.3 * T) * np.cos(1.5 * Y) + 0.2 * T
    u = u + noise * rng.normal(size=u.shape)
    return xr.Dataset({"u": (("time", "y", "x"), u, {"units": "K", "long_name": "temp"})},
                      coords={"time": t, "y": y, "x": x})


@pytest.fixture(scope="module")
def gappy():
    ds = smooth_ds()
    keep = xsciml.datasets.sample_points(ds.u, 0.3, seed=1)
    return ds, keep


@pytest.fixture(scope="module")
def grid_field(gappy):
    ds, keep = gappy
    return ds.where(keep).sciml.fit_field("u", space=("y", "x"), time="time", steps=400,
                                          progress=False, seed=0)


def test_grid_field_reconstructs_withheld_points(gappy, grid_field):
    ds, keep = gappy
    s = grid_field.score(ds.where(~keep))
    # a constant predictor has nRMSE ~1; the field must be far better on unseen points
    assert s["nrmse"] < 0.15, s
    assert 0.7 < s["coverage"] < 1.0, s
    assert s["n_points"] == int((~keep).sum())


@pytest.mark.parametrize("model,bar", [("mlp", 0.1), ("fourier", 0.35), ("siren", 0.45), ("mfn", 0.3)])
def test_other_models_fit(gappy, model, bar):
    ds, keep = gappy
    f = ds.where(keep).sciml.fit_field("u", space=("y", "x"), time="time", network=model,
                                       steps=300, progress=False, seed=0)
    assert f.score(ds.where(~keep))["nrmse"] < bar


def test_predict_on_finer_grid_and_points(gappy, grid_field):
    ds, _ = gappy
    fine = {"time": ds.time.values, "y": np.linspace(-1, 1, 48), "x": np.linspace(-1, 1, 48)}
    pred = grid_field.predict(fine)
    assert set(pred.data_vars) == {"u_mean", "u_std"}
    assert pred.u_mean.dims == ("time", "y", "x") and pred.u_mean.shape == (3, 48, 48)
    assert pred.u_mean.attrs["units"] == "K" and pred.u_std.attrs["units"] == "K"
    assert pred.attrs["xsciml_model"] == "NeuralField"
    assert bool((pred.u_std > 0).all())
    # matches the formula on the fine grid too
    T, Y, X = np.meshgrid(ds.time.values, fine["y"], fine["x"], indexing="ij")
    truth = np.sin(2 * X + 0.3 * T) * np.cos(1.5 * Y) + 0.2 * T
    assert np.sqrt(np.mean((pred.u_mean.values - truth) ** 2)) / truth.std() < 0.2
    # scattered points, one with a NaN coordinate: NaN out, no crash; a time past training
    pts = pd.DataFrame({"y": [0.1, np.nan, -0.5], "x": [0.2, 0.0, 0.3], "time": [0.5, 1.0, 2.5]})
    p = grid_field.predict(pts)
    assert p.u_mean.dims == ("point",) and np.isnan(p.u_mean.values[1]) and np.isfinite(p.u_mean.values[[0, 2]]).all()


def test_sample_and_log_prob_agree_with_moments(gappy, grid_field):
    ds, keep = gappy
    target = ds.isel(time=[0])
    pred = grid_field.predict(target)
    s = grid_field.sample(400, target, seed=3)
    assert s.dims == ("sample", "time", "y", "x") and s.sizes["sample"] == 400
    np.testing.assert_allclose(s.mean("sample"), pred.u_mean, atol=5 * float(pred.u_std.max()) / 20)
    np.testing.assert_allclose(s.std("sample"), pred.u_std, rtol=0.2)
    s2 = grid_field.sample(400, target, seed=3)
    xr.testing.assert_equal(s, s2)
    lp = grid_field.log_prob(ds.where(~keep).isel(time=[0]))
    ref = scipy.stats.norm.logpdf(ds.u.isel(time=[0]).values, pred.u_mean.values, pred.u_std.values)
    m = np.isfinite(lp.values)
    assert m.sum() == int((~keep).isel(time=0).sum())
    np.testing.assert_allclose(lp.values[m], ref[m], rtol=1e-4, atol=1e-4)


def test_heteroscedastic_noise_is_learned_and_calibrated():
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 4000)
    sigma = np.where(x > 0, 0.3, 0.03)
    ds = xr.Dataset({"v": ("x", np.sin(3 * x) + sigma * rng.normal(size=x.size))}, coords={"x": x})
    keep = xr.DataArray(rng.random(x.size) < 0.5, dims="x")
    f = ds.where(keep).sciml.fit_field("v", space="x", time=None, network="mlp", likelihood="heteroscedastic",
                                      network_kwargs={"width": 64, "depth": 2}, steps=1500, lr=3e-3,
                                      progress=False, seed=0)
    pred = f.predict({"x": [-0.5, 0.5]})
    lo, hi = pred.v_std.values
    assert hi / lo > 4  # noisy half recognised
    assert 0.15 < hi < 0.5 and 0.01 < lo < 0.08
    cov = f.score(ds.where(~keep))["coverage"]
    assert 0.85 <= cov <= 0.95


def test_conditional_field():
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 40)
    mu = np.array([0.0, 1.0, 2.0, 3.0])
    v = np.sin(3 * x)[None, :] + mu[:, None]
    ds = xr.Dataset({"v": (("member", "x"), v), "mu": ("member", mu)}, coords={"x": x})
    f = ds.sciml.fit_field("v", space="x", time=None, condition=["mu"], network="mlp",
                           network_kwargs={"width": 64, "depth": 3}, steps=800, lr=3e-3,
                           progress=False, seed=0)
    new = xr.Dataset({"mu": ("member", [1.5])}, coords={"x": x})
    pred = f.predict(new)
    assert pred.v_mean.dims == ("member", "x")
    np.testing.assert_allclose(pred.v_mean.values[0], np.sin(3 * x) + 1.5, atol=0.25)
    with pytest.raises(KeyError, match="mu"):
        f.predict({"x": x})
    del rng


def test_lazy_input_streams(tmp_path):
    ds = smooth_ds(n=16, frames=4)
    ds.chunk({"time": 1}).to_zarr(tmp_path / "s.zarr")
    lazy = xr.open_zarr(tmp_path / "s.zarr")
    f = lazy.sciml.fit_field("u", space=("y", "x"), time="time", steps=200, progress=False)
    assert f.score(ds)["nrmse"] < 0.3


def test_custom_module_and_bad_inputs(gappy, grid_field):
    ds, keep = gappy
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    f = ds.where(keep).sciml.fit_field("u", space=("y", "x"), time="time", network=net, steps=50, progress=False)
    assert f.predict(ds).u_mean.shape == ds.u.shape
    bad = torch.nn.Linear(3, 5)
    with pytest.raises(ValueError, match="needs \\[N, 1\\]"):
        ds.sciml.fit_field("u", space=("y", "x"), time="time", network=bad, steps=5, progress=False)
    with pytest.raises(ValueError, match="heteroscedastic.*needs \\[N, 2\\]"):
        ds.sciml.fit_field("u", space=("y", "x"), time="time", network=torch.nn.Linear(3, 1),
                           likelihood="heteroscedastic", steps=5, progress=False)
    with pytest.raises(ValueError, match="1-D"):
        grid_field.predict({"y": np.zeros((2, 2)), "x": [0.0], "time": [0.0]})
    with pytest.raises(KeyError, match="x"):
        grid_field.predict({"y": [0.0], "time": [0.0]})
    with pytest.raises(ValueError, match="unknown network kind"):
        ds.sciml.fit_field("u", space=("y", "x"), network="transformer", steps=5, progress=False)
    cal = ds.assign_coords(time=xr.date_range("2000-01-01", periods=3, calendar="360_day", use_cftime=True))
    f360 = cal.sciml.fit_field("u", space=("y", "x"), time="time", steps=20, progress=False)
    with pytest.raises(ValueError, match="calendar"):
        f360.predict({"y": [0.0], "x": [0.0], "time": pd.date_range("2000-01-01", periods=1).values})


def test_dask_target_gives_lazy_result_equal_to_eager(gappy, grid_field, tmp_path):
    ds, _ = gappy
    fine = xr.Dataset(coords={"time": ds.time.values, "y": np.linspace(-1, 1, 40), "x": np.linspace(-1, 1, 30)})
    fine["tmpl"] = xr.zeros_like(fine.time + fine.y + fine.x)
    lazy_target = fine.chunk({"time": 1, "y": 20})
    pred = grid_field.predict(lazy_target, device="cpu")
    assert pred.u_mean.chunks is not None and pred.u_mean.data.npartitions == 6
    eager = grid_field.predict(fine, device="cpu")
    xr.testing.assert_allclose(pred.compute(), eager.transpose(*pred.u_mean.dims).astype("float32"), atol=1e-6)
    assert pred.u_std.attrs["units"] == "K"
    # written lazily to zarr chunk by chunk
    pred.to_zarr(tmp_path / "p.zarr")
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "p.zarr").u_mean.values,
                               eager.u_mean.transpose(*pred.u_mean.dims).values, atol=1e-6)


def test_training_stops_once_the_held_out_loss_stops_improving():
    # pure noise: nothing to learn, so the held-out loss soon stops improving
    ds = smooth_ds(n=16, frames=2)
    ds["u"].values = np.random.default_rng(3).normal(size=ds.u.shape)
    kw = dict(space=("y", "x"), time="time", steps=600, val_every=20, residual="none", progress=False)
    field = ds.sciml.fit_field("u", **kw)
    hist = field.history
    assert field.info["steps"] < 600 and hist.stopped_early and hist.stop_reason == "early_stopping"
    # three evaluations without improvement after the best one, whose weights are kept
    checked = [step for step, _ in hist.val_loss]
    assert len(checked) - 1 - checked.index(hist.best_step) == 3
    assert ds.sciml.fit_field("u", early_stopping=None, **kw).info["steps"] == 600


def test_a_bounded_variable_is_predicted_and_sampled_within_its_range(tmp_path):
    ds = smooth_ds(n=20, frames=2)
    ds["u"] = (ds.u - 0.3).clip(min=0.0)  # a precipitation-like field: dry (0) over half the domain
    ds.u.attrs = {"standard_name": "precipitation_amount", "units": "kg m-2"}
    keep = xsciml.datasets.sample_points(ds.u, 0.3, seed=1)
    field = ds.where(keep).sciml.fit_field("u", space=("y", "x"), time="time", steps=200,
                                           progress=False, seed=0)
    free = copy.copy(field)  # the same fit without the bounds
    free.var_attrs = {"u": {"units": "kg m-2"}}
    p, q = field.predict(ds), free.predict(ds)
    assert float(q.u_mean.min()) < 0.0  # the Gaussian's mean goes below zero on the dry side
    xr.testing.assert_equal(p.u_mean.drop_attrs(), q.u_mean.clip(min=0.0).drop_attrs())
    xr.testing.assert_equal(p.u_std.drop_attrs(), q.u_std.drop_attrs())
    assert p.u_mean.attrs["xsciml_bounds"] == "clipped to at least 0 kg m-2 (precipitation_amount cannot be negative)"
    assert "xsciml_bounds" not in p.u_std.attrs
    # the clipped mean is nowhere farther from the truth, which lies in the range
    assert bool((abs(p.u_mean - ds.u) <= abs(q.u_mean - ds.u)).all())
    # draws are the clipped draws of the same Normal, eager and lazy
    draws, raw = field.sample(8, ds, seed=3), free.sample(8, ds, seed=3)
    xr.testing.assert_equal(draws.drop_attrs(), raw.clip(min=0.0).drop_attrs())
    assert float((draws == 0).mean()) > 0.2 and draws.attrs["xsciml_bounds"].startswith("clipped to at least 0")
    lazy = ds.chunk({"time": 1})
    assert float(field.sample(4, lazy, seed=0).min()) == 0.0
    xr.testing.assert_allclose(field.predict(lazy).compute(), p.astype("float32").transpose(*p.u_mean.dims),
                               atol=1e-5)
    # the score's RMSE is that of the mean predict returns
    withheld = ds.where(~keep)
    want = float(np.sqrt(((p.u_mean - ds.u).where(~keep) ** 2).mean()))
    assert float(field.score(withheld)["rmse"]) == pytest.approx(want, rel=1e-4)
    # a valid_range that cannot be read is refused before any training
    bad = ds.where(keep)
    bad.u.attrs["valid_range"] = "zero to ten"
    with pytest.raises(ValueError, match=r"valid_range.*'u'|'u'.*valid_range"):
        bad.sciml.fit_field("u", space=("y", "x"), time="time", steps=5, progress=False)
