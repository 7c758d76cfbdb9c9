"""DINo forecasting: latent ODE + INR decoder, any grid, past the training horizon."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xsciml
from xsciml.models.autodecode import (
    decode_codes,
    gls_factors,
    gls_quadratic,
    residual_covariance_factor,
)
from xsciml.models.dino import DINo, DINoModule
from xsciml.models.dynamics import fit_dynamics, forecast
from xsciml.models.latent_ode import LatentDynamics, integrate_latent
from xsciml.models.latent_ode import dynamics_loss as _dynamics_loss
from xsciml.nn import FourierNet

# smooth initial states (alpha=4, tau=3): a small model learns them in seconds
HEAT = dict(n_frames=10, alpha=4.0, tau=3.0)
TINY = dict(latent_dim=16, width=32, depth=2, dynamics_width=64, dynamics_depth=2,
            n_points=64, lr=1e-2, code_lr=1e-2, dynamics_lr=1e-2, progress=False)


def rel_mse(pred: xr.DataArray, truth: xr.DataArray) -> float:
    den = ((truth - truth.mean(("y", "x"))) ** 2).sum()
    return float(((pred - truth) ** 2).sum() / den)


@pytest.fixture(scope="module")
def heat_data():
    train = xsciml.datasets.heat(16, 16, seed=0, **HEAT)
    test = xsciml.datasets.heat(4, 16, seed=1, **HEAT)
    return train, test


@pytest.fixture(scope="module")
def fitted(heat_data):
    train, _ = heat_data
    model = fit_dynamics(train.isel(time=slice(0, 5)), "u", space=("y", "x"), steps=200,
                         loss="relative", seed=0, **TINY)
    return model


# ----------------------------------------------------------------------------- torch parts
def test_decode_codes_matches_the_network():
    torch.manual_seed(0)
    net = FourierNet(2, 2, width=16, depth=3, input_scale=8.0, code_dim=5)
    x, a = torch.rand(11, 2) * 2 - 1, torch.randn(3, 4, 5)
    ref = net(x.expand(3, 4, 11, 2), a[..., None, :].expand(3, 4, 11, 5))
    torch.testing.assert_close(decode_codes(net, x, a), ref, atol=1e-5, rtol=1e-5)


class _Linear(torch.nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self, t, z):
        return z @ self.a.T


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_integrate_latent_linear_ode_known_answer(method):
    a = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]])  # decaying rotation: exp(a t) in closed form
    z0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([0.0, 0.3, 1.0, 2.5])
    z = integrate_latent(_Linear(a), z0, t, method=method, step=0.01, rtol=1e-7, atol=1e-9)
    for k, tk in enumerate(t.tolist()):
        exact = z0 @ torch.linalg.matrix_exp(a * tk).T
        torch.testing.assert_close(z[k], exact, atol=1e-5, rtol=1e-5)


def test_fixed_step_solution_does_not_depend_on_output_times():
    torch.manual_seed(0)
    f = LatentDynamics(4, width=16, depth=2)
    with torch.no_grad():
        for p in f.parameters():
            p.normal_(0, 0.3)
    z0 = torch.randn(3, 4)
    coarse = torch.tensor([0.0, 1.0, 3.0])
    dense = torch.linspace(0.0, 3.0, 25)
    zc = integrate_latent(f, z0, coarse, step=0.5)
    zd = integrate_latent(f, z0, dense, step=0.5)
    torch.testing.assert_close(zc, zd[[0, 8, 24]], atol=1e-6, rtol=1e-6)
    # ... and the step matters (the solver does not just step on the output grid)
    assert not torch.allclose(zc, integrate_latent(f, z0, coarse, step=1.0), atol=1e-6)


def test_vectorised_teacher_forcing_equals_the_sequential_loop():
    """One batched solve == DINo's loop of one odeint call per step, restarting from
    the true code with the teacher-forcing draws."""
    torch.manual_seed(1)
    B, w, d = 3, 6, 4
    dyn = LatentDynamics(d, width=16, depth=2)
    with torch.no_grad():
        for p in dyn.parameters():
            p.normal_(0, 0.3)
    m = DINoModule(FourierNet(2, 1, width=8, depth=1, code_dim=d), dyn, B, w)
    m.teacher_forcing = 0.5
    z = torch.randn(B, w, d)
    u = torch.rand(B, w)
    tau = np.arange(w, dtype=float)
    delta = tau[None, :] - tau[:, None]
    uniq, inv = np.unique(np.where(delta >= 0, delta, 0.0), return_inverse=True)
    ode = {"method": "rk4", "step": 0.25, "rtol": 1e-3, "atol": 1e-5, "adjoint": False}
    loss = _dynamics_loss(m, z, u, torch.tensor(uniq, dtype=torch.float32),
                          torch.as_tensor(inv.reshape(w, w)), ode)
    preds = torch.empty(B, w - 1, d)
    for b in range(B):
        state = z[b, 0]
        for j in range(1, w):
            if j > 1 and u[b, j] < m.teacher_forcing:
                state = z[b, j - 1]
            state = integrate_latent(dyn, state[None], torch.tensor([0.0, 1.0]), step=0.25)[-1, 0]
            preds[b, j - 1] = state
    torch.testing.assert_close(loss, (preds - z[:, 1:]).pow(2).mean(), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- learning
def test_forecasts_past_the_horizon_better_than_persistence_and_zero(fitted, heat_data):
    _, test = heat_data
    u = test["u"]
    fc = fitted.forecast(test.isel(time=0), lead=u["time"].values, encode_steps=100)
    fc = fc.drop_vars("valid_time").rename(lead="time").assign_coords(time=u["time"])
    out = slice(5, None)  # past the 5 training frames
    model = rel_mse(fc.isel(time=out), u.isel(time=out))
    persistence = rel_mse(u.isel(time=0).broadcast_like(u).isel(time=out), u.isel(time=out))
    assert model < 0.6, model  # predicting zero scores exactly 1
    assert model < 0.2 * persistence, (model, persistence)
    # the score table agrees with the direct computation
    ev = fitted.score(test, n_frames_train=5, encode_steps=100)
    np.testing.assert_allclose(float(ev["rel_mse"].sel(horizon="Out-t", grid="all")), model, rtol=1e-4)


def test_forecast_structure_coords_and_attrs(fitted, heat_data):
    _, test = heat_data
    init = test.isel(time=0)
    fc = forecast(init, fitted, lead=[0.0, 0.25, 1.0], encode_steps=20)
    assert fc.dims == ("trajectory", "lead", "y", "x")
    assert fc.shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(fc["lead"], [0.0, 0.25, 1.0])
    np.testing.assert_allclose(fc["valid_time"], float(init["time"]) + np.array([0.0, 0.25, 1.0]))
    np.testing.assert_array_equal(fc["x"], test["x"])
    assert fc.attrs["long_name"] == test["u"].attrs["long_name"]
    assert fc.attrs["xsciml_model"] == "DINo"
    assert fc.name == "u"
    # the accessor forwards to the same functions
    acc = init.sciml.forecast(fitted, lead=[0.0, 0.25, 1.0], encode_steps=20)
    xr.testing.assert_identical(acc, fc)


def test_forecast_on_coarser_grid_and_subsampled_initial_state(fitted, heat_data):
    _, test = heat_data
    init = test.isel(time=0)
    lead = np.array([0.0, 1.0, 2.0])
    full = fitted.forecast(init, lead=lead, encode_steps=100)
    # decoding is pointwise: a coarser target gives the full forecast at its points
    coarse = {"y": test["y"].values[::2], "x": test["x"].values[::2]}
    fc = fitted.forecast(init, lead=lead, target=coarse, encode_steps=100)
    assert fc.shape == (4, 3, 8, 8)
    np.testing.assert_allclose(fc.values, full.isel(y=slice(None, None, 2), x=slice(None, None, 2)).values,
                               rtol=1e-5, atol=1e-6)
    # an initial state seen on 25 % of the points still forecasts the whole grid
    keep = xsciml.datasets.sample_points(init, 0.25, seed=0, dims=("y", "x"))
    sparse = fitted.forecast(init.where(keep), lead=lead, encode_steps=100)
    truth = test["u"].sel(time=lead)
    err_full = rel_mse(full.drop_vars("valid_time").rename(lead="time"), truth.rename(time="time"))
    err_sparse = rel_mse(sparse.drop_vars("valid_time").rename(lead="time"), truth)
    assert np.isfinite(sparse).all()
    assert err_sparse < max(3 * err_full, 0.3), (err_sparse, err_full)


def test_scattered_initial_points(fitted, heat_data):
    _, test = heat_data
    rng = np.random.default_rng(0)
    init = test.isel(time=0).stack(point=("y", "x")).reset_index("point")
    pick = rng.choice(init.sizes["point"], 100, replace=False)
    scattered = init.isel(point=pick)
    fc = fitted.forecast(scattered, lead=[0.5], encode_steps=50)
    assert fc.dims == ("trajectory", "lead", "point") and fc.shape == (4, 1, 100)
    grid = fitted.forecast(scattered, lead=[0.5], encode_steps=50, target=test[["x", "y"]])
    assert grid.dims == ("trajectory", "lead", "y", "x")
    # the same codes decode the same values at the scattered points
    at_pts = grid.stack(point=("y", "x")).isel(point=pick).values
    np.testing.assert_allclose(at_pts, fc.values, rtol=1e-5, atol=1e-6)


def test_denser_leads_do_not_change_shared_leads(fitted, heat_data):
    _, test = heat_data
    init = test.isel(time=0, trajectory=[0, 1])
    a = fitted.forecast(init, lead=[0.0, 1.0, 2.5], encode_steps=30)
    b = fitted.forecast(init, lead=np.arange(0.0, 2.5001, 0.125), encode_steps=30)
    np.testing.assert_allclose(a.values, b.sel(lead=[0.0, 1.0, 2.5]).values, rtol=1e-5, atol=1e-6)
    assert fitted.ode["method"] == "rk4" and fitted.last_nfe > 0


# ----------------------------------------------------------------------------- time axes
def test_irregular_datetime_time_axis_and_train_until():
    ds = xsciml.datasets.heat(6, 12, seed=0, n_frames=12, alpha=4.0, tau=3.0, time_units="1D")
    ds = ds.isel(time=[0, 1, 2, 4, 5, 7, 8, 11])  # irregular spacing
    model = ds.sciml.fit_dynamics("u", sample_dim="trajectory", train_until="2000-01-01T12",
                                  steps=20, seed=0, **TINY)
    assert model.info["n_frames_train"] == 3
    assert model.clock.kind == "datetime64" and model.clock.scale == pytest.approx(0.25)  # days
    init = ds.isel(time=4)
    lead = pd.to_timedelta(["0h", "6h", "30h", "3D"])
    fc = model.forecast(init, lead=lead, encode_steps=10)
    expected = np.datetime64("2000-01-02T06") + lead.to_numpy()
    np.testing.assert_array_equal(fc["valid_time"].values, expected)
    assert fc["lead"].dtype.kind == "m"
    # float leads are in the model's time units (days)
    fc_days = model.forecast(init, lead=[0.0, 0.25, 1.25, 3.0], encode_steps=10)
    np.testing.assert_allclose(fc_days.values, fc.values, rtol=1e-5, atol=1e-6)


def test_cftime_time_axis():
    cftime = pytest.importorskip("cftime")
    ds = xsciml.datasets.heat(4, 12, seed=0, n_frames=4, alpha=4.0, tau=3.0)
    times = [cftime.Datetime360Day(2000, 1, 1 + k) for k in range(4)]
    ds = ds.assign_coords(time=times)
    model = fit_dynamics(ds, "u", steps=5, seed=0, **TINY)
    assert model.clock.calendar == "360_day"
    fc = model.forecast(ds.isel(time=1), lead=[pd.Timedelta("0D"), pd.Timedelta("2D")], encode_steps=5)
    assert list(fc["valid_time"].values) == [times[1], times[3]]


# ----------------------------------------------------------------------------- evaluation
def test_score_table_shape_and_identities(fitted, heat_data):
    _, test = heat_data
    ev = fitted.score(test, encode_steps=50)
    assert ev["mse"].dims == ("horizon", "grid")
    assert list(ev["horizon"].values) == ["In-t", "Out-t"]
    assert list(ev["grid"].values) == ["In-s", "Out-s", "all"]
    # trained on the full grid: every test point is In-s, Out-s is empty
    assert np.isnan(ev["mse"].sel(grid="Out-s")).all()
    np.testing.assert_allclose(ev["mse"].sel(grid="In-s"), ev["mse"].sel(grid="all"))
    assert ev.attrs["n_frames_train"] == 5
    # with half the points observed, "all" is the count-weighted mean of In-s and Out-s
    obs = xsciml.datasets.sample_points(test, 0.5, seed=3, dims=("y", "x"))
    ev2 = fitted.score(test, observed=obs, encode_steps=50)
    n_in = float(obs.sum())
    n_out = obs.size - n_in
    mix = (ev2["mse"].sel(grid="In-s") * n_in + ev2["mse"].sel(grid="Out-s") * n_out) / obs.size
    np.testing.assert_allclose(mix, ev2["mse"].sel(grid="all"), rtol=1e-6)
    assert (ev2["rel_mse"] > 0).all()


def test_training_on_a_subgrid_defines_in_s():
    ds = xsciml.datasets.heat(4, 12, seed=0, n_frames=4, alpha=4.0, tau=3.0)
    keep = xsciml.datasets.sample_points(ds, 0.5, seed=1, dims=("y", "x"))
    model = fit_dynamics(ds.where(keep), "u", steps=5, seed=0, **TINY)
    np.testing.assert_array_equal(model.observed_mask(ds).values, keep.values)
    ev = model.score(ds, encode_steps=5)
    assert np.isfinite(ev["mse"].sel(horizon="In-t")).all()
    assert ev.attrs["observed_fraction"] == pytest.approx(0.5, abs=0.01)


# ----------------------------------------------------------------------------- persistence
def test_save_load_same_forecast_in_a_fresh_process(fitted, tmp_path):
    path = fitted.save(tmp_path / "dino.xsciml")
    init = xsciml.datasets.heat(2, 16, seed=5, **HEAT).isel(time=0)
    here = fitted.forecast(init, lead=[0.0, 0.75, 2.0], encode_steps=40, device="cpu").values
    script = textwrap.dedent(f"""
        import json, numpy as np, torch, xsciml
        torch.set_num_threads(1)
        model = xsciml.load({str(path)!r})
        init = xsciml.datasets.heat(2, 16, seed=5, n_frames=10, alpha=4.0, tau=3.0).isel(time=0)
        fc = init.sciml.forecast(model, lead=[0.0, 0.75, 2.0], encode_steps=40, device="cpu")
        print(json.dumps({{"type": type(model).__name__, "values": fc.values.tolist()}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={"XSCIML_PROGRESS": "0", "PATH": "", "OMP_NUM_THREADS": "1"})
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["type"] == "DINo"
    np.testing.assert_allclose(np.asarray(out["values"]), here, rtol=1e-5, atol=1e-6)
    loaded = DINo.load(path)
    assert loaded.latent_dim == fitted.latent_dim and loaded.ode == fitted.ode
    torch.testing.assert_close(loaded.module.code_std, fitted.module.code_std)


def test_dask_initial_state_gives_a_lazy_equal_forecast(fitted, heat_data):
    pytest.importorskip("dask")
    _, test = heat_data
    init = test.isel(time=0)
    eager = fitted.forecast(init, lead=[0.0, 1.0], encode_steps=20)
    lazy = fitted.forecast(init.chunk({"trajectory": 2}), lead=[0.0, 1.0], encode_steps=20)
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, eager.values, rtol=1e-4,
                               atol=1e-4 * float(np.abs(eager.values).max()))
    with pytest.raises(ValueError, match="rechunk"):
        fitted.forecast(init.chunk({"x": 8}), lead=[0.0], encode_steps=1)


def test_two_variables_decoded_together_and_other_solvers():
    ds = xsciml.datasets.heat(4, 12, seed=0, n_frames=4, alpha=4.0, tau=3.0)
    ds["v"] = -2.0 * ds["u"]
    ds["v"].attrs = {"units": "K"}
    model = fit_dynamics(ds, ["u", "v"], steps=5, solver="dopri5", adjoint=True, seed=0, **TINY)
    fc = model.forecast(ds.isel(time=0), lead=[0.0, 0.5], encode_steps=5)
    assert isinstance(fc, xr.Dataset) and set(fc.data_vars) == {"u", "v"}
    assert fc["v"].attrs["units"] == "K"
    assert model.module.decoder.out_features == 2
    assert all(np.isfinite(model.history.loss))


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors(fitted, heat_data):
    train, test = heat_data
    init = test.isel(time=0)
    with pytest.raises(KeyError, match="lacks variable"):
        fitted.forecast(init.rename(u="w"), lead=[0.0])
    with pytest.raises(KeyError, match="trained on"):
        fitted.forecast(init["u"].rename("temperature"), lead=[0.0])
    with pytest.raises(TypeError, match="numbers or timedeltas"):
        fitted.forecast(init, lead="6h")
    with pytest.raises(TypeError, match="numbers or timedeltas"):
        fitted.forecast(init, lead=["a", "b"])
    with pytest.raises(TypeError, match="numeric"):
        fitted.forecast(init, lead=pd.to_timedelta(["6h"]))
    with pytest.raises(ValueError, match=">= 0"):
        fitted.forecast(init, lead=[-1.0])
    km = init.assign_coords(x=init["x"] * 1000.0, y=init["y"] * 1000.0)
    with pytest.raises(ValueError, match="units"):
        fitted.forecast(km, lead=[0.0])
    tagged = init.assign_coords(x=init["x"].assign_attrs(units="km"))
    fitted.coord_units["x"] = "m"
    try:
        with pytest.raises(ValueError, match="'km'"):
            fitted.forecast(tagged, lead=[0.0])
        # a target in other units: as a Dataset, and as a dict of coordinates
        in_m = init.assign_coords(x=init["x"].assign_attrs(units="m"))
        ok = fitted.forecast(in_m, lead=[0.0], target={"x": in_m["x"], "y": in_m["y"].values})
        assert ok.sizes["x"] == in_m.sizes["x"] and np.isfinite(ok.values).all()
        with pytest.raises(ValueError, match="target is in 'km'"):
            fitted.forecast(in_m, lead=[0.0], target=tagged)
        with pytest.raises(ValueError, match="target is in 'km'"):
            fitted.forecast(in_m, lead=[0.0], target={"x": tagged["x"], "y": tagged["y"].values})
    finally:
        fitted.coord_units.pop("x")
    with pytest.raises(TypeError, match="fitted dynamics model"):
        forecast(init, object(), lead=[0.0])
    with pytest.raises(ValueError, match="at least 2 time steps"):
        fit_dynamics(train.isel(time=[0]), "u", steps=1, progress=False)
    with pytest.raises(ValueError, match="at least 2 time steps"):
        fit_dynamics(train, "u", train_until=0.1, steps=1, progress=False)
    with pytest.raises(KeyError, match="sample_dim"):
        fit_dynamics(train, "u", sample_dim="member", steps=1, progress=False)
    with pytest.raises(ValueError, match="solver"):
        fit_dynamics(train, "u", solver="leapfrog", steps=1, progress=False)
    with pytest.raises(ValueError, match="'dino' or 'smooth'"):
        fit_dynamics(train, "u", method="koopman", steps=1, progress=False)
    with pytest.raises(TypeError, match="unexpected"):
        fit_dynamics(train, "u", steps=1, progress=False, modes=3)
    with pytest.warns(FutureWarning, match="solver='euler'"):
        m = fit_dynamics(train, "u", method="euler", steps=1, **TINY)
    assert m.ode["method"] == "euler"
    with pytest.raises(KeyError, match="not found"):
        fit_dynamics(train, "temperature", steps=1, progress=False)


def test_single_long_series_with_windows_and_start_dates():
    ds = xsciml.datasets.heat(1, 12, seed=0, n_frames=12, alpha=4.0, tau=3.0, time_units="6h")
    series = ds.isel(trajectory=0)  # one long trajectory, no sample dimension
    model = fit_dynamics(series, "u", sample_dim=None, window=4, steps=10, seed=0, combine=False, **TINY)
    assert model.module.codes.shape[:2] == (1, 12)  # combine=False: every frame trains the model
    starts = series.isel(time=[5, 6, 7])  # every frame is an initial state (start dates)
    fc = model.forecast(starts, lead=pd.to_timedelta(["0h", "12h"]), encode_steps=5)
    assert fc.dims == ("time", "lead", "y", "x")
    expected = series["time"].values[5:8, None] + pd.to_timedelta(["0h", "12h"]).to_numpy()[None]
    np.testing.assert_array_equal(fc["valid_time"].transpose("time", "lead").values, expected)
    with pytest.raises(ValueError, match="window"):
        fit_dynamics(series, "u", sample_dim=None, window=20, steps=1, progress=False)


def test_encode_nearest_start_and_independent_states(fitted, heat_data):
    train, _ = heat_data
    frames = train.isel(time=[1, 3], trajectory=[2, 5])
    # without optimisation, "nearest" starts every state from its own training code
    z0 = fitted.encode(frames, steps=0, init="nearest")
    assert z0.dims == ("trajectory", "time", "latent")
    expected = fitted.codes.isel(trajectory=[2, 5], time=[1, 3]).values
    np.testing.assert_allclose(z0.values, expected, rtol=1e-6)
    mean = fitted.encode(frames, steps=0, init="mean").values
    np.testing.assert_allclose(mean, np.broadcast_to(fitted.module.code_mean.cpu().numpy(), mean.shape))
    # states are encoded independently: alone or together, the same codes
    # (to float rounding, which batched BLAS calls round differently)
    tol = 1e-3 * float(fitted.codes.std())
    for opt in ("gauss-newton", "adam"):
        both = fitted.encode(frames, steps=20, optimizer=opt)
        one = fitted.encode(frames.isel(trajectory=[1]), steps=20, optimizer=opt)
        np.testing.assert_allclose(one.values, both.isel(trajectory=[1]).values, rtol=0, atol=tol)
    with pytest.raises(ValueError, match="init"):
        fitted.encode(frames, steps=1, init="random")
    with pytest.raises(ValueError, match="reg"):
        fitted.encode(frames, steps=1, reg=-1.0)


def test_codes_outside_the_batch_do_not_move(monkeypatch):
    import xsciml.training as training

    ds = xsciml.datasets.heat(6, 12, seed=0, n_frames=6, alpha=4.0, tau=3.0)
    seen = []
    fit = training.fit

    def fit_with_spy(*args, **kwargs):  # record the codes after every step
        spy = lambda state: seen.append(state.model.codes.detach().clone())  # noqa: E731
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), spy]
        return fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", fit_with_spy)
    fit_dynamics(ds, "u", batch_size=2, window=3, steps=6, seed=0, **TINY)
    assert len(seen) == 6
    for before, after in zip(seen[:-1], seen[1:], strict=True):
        moved = (after - before).abs().amax(-1) > 0
        assert 0 < int(moved.sum()) <= 6  # at most 2 trajectories x 3 frames per step


# ----------------------------------------------------------------------------- forcing
def test_forcing_phases_rotate_exactly_with_the_codes():
    f = LatentDynamics(3, width=8, depth=1, periods=[24.0, 6.0])
    t0 = np.array([5.0, 17.5, 1e5 + 3.0])  # absolute times, one far from the origin
    z0 = torch.cat([torch.zeros(3, 3), f.phases(t0)], -1)
    z = integrate_latent(f, z0, torch.tensor([0.0, 7.0, 30.0]), method="rk4", step=0.05)
    for k, lead in enumerate([0.0, 7.0, 30.0]):
        np.testing.assert_allclose(z[k, :, 3:].detach().numpy(), f.phases(t0 + lead).numpy(), atol=1e-4)
    assert f.config()["periods"] == [24.0, 6.0]
    with pytest.raises(ValueError, match="positive"):
        LatentDynamics(3, periods=[0.0])


def _diurnal_series(n_days: int = 6) -> xr.Dataset:
    """A field whose pattern follows the hour of day, plus a slow decay (hourly)."""
    t = pd.date_range("2001-01-01", periods=24 * n_days, freq="h")
    y, x = np.linspace(-1, 1, 8), np.linspace(-1, 1, 10)
    hours = np.arange(len(t))
    phase = 2 * np.pi * hours / 24
    u = (np.sin(phase)[:, None, None] * np.cos(2 * x)[None, None, :] * np.ones((1, 8, 1))
         + np.cos(phase)[:, None, None] * np.sin(2 * y)[None, :, None] * np.ones((1, 1, 10)))
    return xr.Dataset({"u": (("time", "y", "x"), u.astype("float32"), {"units": "K"})},
                      coords={"time": t, "y": y, "x": x})


def test_forced_dynamics_fit_forecast_lazy_and_save(tmp_path):
    ds = _diurnal_series()
    train = ds.sel(time=slice(None, "2001-01-05T23"))
    model = fit_dynamics(train, "u", sample_dim=None, window=8, steps=40, periods=["1D"],
                         time_units="hours", seed=0, **TINY)
    assert model.forcing_periods == pytest.approx([24.0])
    starts = ds.sel(time=["2001-01-06T00", "2001-01-06T05", "2001-01-06T13"])
    lead = pd.to_timedelta(["0h", "3h", "10h"])
    fc = model.forecast(starts, lead=lead, encode_steps=20, device="cpu")
    assert fc.dims == ("time", "lead", "y", "x") and np.isfinite(fc.values).all()
    # the phase enters: the same code started at another hour evolves differently
    shifted = starts.assign_coords(time=starts.time + np.timedelta64(6, "h"))
    fc_shift = model.forecast(shifted, lead=lead, encode_steps=20, device="cpu")
    np.testing.assert_allclose(fc.isel(lead=0).values, fc_shift.isel(lead=0).values, atol=1e-5)
    assert float(abs(fc.isel(lead=2) - fc_shift.isel(lead=2).values).max()) > 1e-4
    lazy = model.forecast(starts.chunk({"time": 2}), lead=lead, encode_steps=20, device="cpu")
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, fc.values, rtol=1e-4, atol=1e-5)
    again = xsciml.load(model.save(tmp_path / "forced.xsciml"))
    np.testing.assert_allclose(again.forecast(starts, lead=lead, encode_steps=20, device="cpu").values,
                               fc.values, atol=1e-5)
    with pytest.raises(ValueError, match="time coordinate"):
        model.forecast(starts.drop_vars("time"), lead=lead, encode_steps=1)
    with pytest.raises(ValueError, match="periods must be positive"):
        fit_dynamics(train, "u", sample_dim=None, steps=1, periods=["0h"], time_units="hours", **TINY)
    with pytest.raises(ValueError, match="periods"):
        fit_dynamics(train, "u", sample_dim=None, steps=1, periods=["-1D"], time_units="hours", **TINY)


def test_persisted_residual_is_exact_at_lead_zero_and_added_at_every_lead(fitted, heat_data):
    _, test = heat_data
    init = test.isel(time=0)
    lead = [0.0, 0.5, 1.0]
    plain = fitted.forecast(init, lead=lead, encode_steps=20, device="cpu")
    keep = xsciml.datasets.sample_points(init.u, 0.5, seed=3)
    sparse = init.where(keep)
    res = fitted.forecast(sparse, lead=lead, encode_steps=20, device="cpu", residual="persist")
    base = fitted.forecast(sparse, lead=lead, encode_steps=20, device="cpu")
    # lead 0 reproduces the observed points exactly; unobserved points get no residual
    np.testing.assert_allclose(res.isel(lead=0).values[keep.values], init.u.values[keep.values], atol=1e-5)
    for k in range(len(lead)):
        np.testing.assert_allclose(res.isel(lead=k).values[~keep.values],
                                   base.isel(lead=k).values[~keep.values], atol=1e-6)
    # the same residual at every lead
    diff = (res - base).values
    np.testing.assert_allclose(diff[:, 2], diff[:, 0], atol=1e-5)
    assert res.attrs["xsciml_residual"] == "persist" and res.dims == plain.dims
    lazy = fitted.forecast(sparse.chunk({"trajectory": 2}), lead=lead, encode_steps=20, device="cpu",
                           residual="persist")
    np.testing.assert_allclose(lazy.compute().values, res.values, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="target=None"):
        fitted.forecast(init, lead=lead, target=init, residual="persist")
    with pytest.raises(ValueError, match="residual"):
        fitted.forecast(init, lead=lead, residual="climatology")


# ----------------------------------------------------------------------------- GLS encoding
def test_gls_quadratic_equals_the_dense_formula():
    rng = np.random.default_rng(0)
    k, n, a = 4, 12, 0.3
    F = torch.as_tensor(rng.normal(size=(k, n)), dtype=torch.float64)
    masks = np.array([[1] * n, [1, 0] * (n // 2), [1] * n, [0, 0, 1] * (n // 3)], dtype=float)
    e = torch.as_tensor(rng.normal(size=(4, n)) * masks)
    got = gls_quadratic(e, F, gls_factors(F, torch.as_tensor(masks), a)).numpy()
    for i, m in enumerate(masks.astype(bool)):
        Fo = F.numpy()[:, m]
        K = a * np.eye(m.sum()) + Fo.T @ Fo
        eo = e.numpy()[i, m]
        np.testing.assert_allclose(got[i], a * eo @ np.linalg.solve(K, eo), rtol=1e-10)
    # no correlation: the plain sum of squares
    zero = torch.zeros(k, n, dtype=torch.float64)
    np.testing.assert_allclose(gls_quadratic(e, zero, gls_factors(zero, torch.as_tensor(masks), a)).numpy(),
                               (e**2).sum(1).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="floor"):
        gls_factors(F, torch.as_tensor(masks), 0.0)
    with pytest.raises(ValueError, match="mask"):
        gls_factors(F, torch.ones(2, n + 1, dtype=torch.float64), a)
    with pytest.raises(ValueError, match="do not match"):
        gls_quadratic(e[:, :-1], F, gls_factors(F, torch.as_tensor(masks), a))
    with pytest.raises(ValueError, match="NaN or inf"):
        residual_covariance_factor(torch.full((2, 3, 1), float("nan")), torch.ones(2, 3, 1))


def test_residual_covariance_factor_is_the_frame_normalised_sample_covariance():
    rng = np.random.default_rng(1)
    r = torch.as_tensor(rng.normal(size=(6, 10, 2)))
    r[2] *= 100.0  # a large-amplitude frame weighs as much as the others
    m = torch.ones_like(r)
    F, v = residual_covariance_factor(r, m, rank=6)
    E = (r / r.pow(2).mean(1, keepdim=True).sqrt()).reshape(6, -1).numpy()
    np.testing.assert_allclose((F.T @ F).numpy(), E.T @ E / 6, rtol=1e-4, atol=1e-5)
    assert v == pytest.approx(1.0)
    F3, _ = residual_covariance_factor(r, m, rank=3)
    assert F3.shape == (3, 20)
    # masked entries are ignored by the normalisation
    m2 = m.clone()
    m2[:, :5] = 0
    F2, v2 = residual_covariance_factor(r * m2, m2, rank=6)
    assert float(F2[:, :10].abs().max()) < 1e-6 and v2 == pytest.approx(1.0)


def test_gls_encoding_on_training_points_only(fitted, heat_data, tmp_path):
    _, test = heat_data
    F = fitted.residual_factor
    assert F is not None and F.shape[1] == 16 * 16 and 1 <= F.shape[0] <= 128
    assert torch.isfinite(F).all() and fitted.residual_var == pytest.approx(1.0, rel=1e-4)
    path = tmp_path / "gls.xsciml"
    fitted.save(path)
    back = xsciml.load(path)
    torch.testing.assert_close(back.residual_factor, F)
    init = test.isel(time=0)
    sparse = init.where(xsciml.datasets.sample_points(init, 0.2, seed=3, dims=("y", "x")))
    auto = fitted.encode(sparse, steps=30)
    corr = fitted.encode(sparse, steps=30, noise="correlated")
    white = fitted.encode(sparse, steps=30, noise="white")
    np.testing.assert_array_equal(auto.values, corr.values)
    assert np.abs(corr.values - white.values).max() > 1e-4
    np.testing.assert_allclose(back.encode(sparse, steps=30).values, auto.values, rtol=1e-6, atol=1e-7)
    # the covariance follows the points, not their order: a reversed grid gives the same codes
    flipped = fitted.encode(sparse.isel(x=slice(None, None, -1), y=slice(None, None, -1)), steps=30,
                            noise="correlated")
    np.testing.assert_allclose(flipped.values, corr.values, rtol=0,
                               atol=1e-3 * float(fitted.codes.std()))
    # shrinkage 1 is white noise
    np.testing.assert_allclose(fitted.encode(sparse, steps=30, noise="correlated", shrinkage=1.0).values,
                               white.values, rtol=1e-5, atol=1e-6)
    # points off the training grid: auto falls back to white noise, correlated refuses
    off = init.assign_coords(x=init["x"] + 0.5 * float(init["x"][1] - init["x"][0]))
    np.testing.assert_array_equal(fitted.encode(off, steps=5).values,
                                  fitted.encode(off, steps=5, noise="white").values)
    with pytest.raises(ValueError, match="not training points"):
        fitted.encode(off, steps=5, noise="correlated")
    with pytest.raises(ValueError, match="noise"):
        fitted.encode(sparse, steps=1, noise="gls")
    with pytest.raises(ValueError, match="shrinkage"):
        fitted.encode(sparse, steps=1, noise="correlated", shrinkage=0.0)
    # the forecast and score forward the option
    fc_w = fitted.forecast(sparse, lead=[1.0], encode_steps=30, encode_noise="white")
    fc_c = fitted.forecast(sparse, lead=[1.0], encode_steps=30, encode_noise="correlated")
    assert np.abs(fc_w.values - fc_c.values).max() > 1e-5


def test_model_without_residual_covariance(heat_data):
    train, test = heat_data
    model = fit_dynamics(train.isel(time=slice(0, 3)), "u", space=("y", "x"), steps=3,
                         residual_rank=0, seed=0, **TINY)
    assert model.residual_factor is None
    init = test.isel(time=0)
    np.testing.assert_array_equal(model.encode(init, steps=3).values,
                                  model.encode(init, steps=3, noise="white").values)
    with pytest.raises(ValueError, match="no residual covariance"):
        model.encode(init, steps=1, noise="correlated")
    with pytest.raises(ValueError, match="residual_rank"):
        fit_dynamics(train.isel(time=slice(0, 3)), "u", space=("y", "x"), steps=1, residual_rank=-1, **TINY)
    with pytest.raises(ValueError, match="grad_clip"):
        fit_dynamics(train.isel(time=slice(0, 3)), "u", space=("y", "x"), steps=1, grad_clip=0.0, **TINY)


def test_fixed_step_end_that_rounds_onto_the_last_time_in_float32():
    # t = 0 .. 0.9 in float32 (0.89999998): the step grid's end, 0.9, rounds onto t[-1]
    t = torch.linspace(0, 0.9, 19)
    lin = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, 0.0], [0.0, -2.0]]))

    class F(torch.nn.Module):
        def forward(self, s, z):
            return lin(z)

    z = integrate_latent(F(), torch.ones(1, 2), t, method="rk4", step=0.05)
    expected = torch.exp(-t[:, None] * torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(z[:, 0], expected, rtol=1e-5, atol=1e-6)


def test_same_seed_same_model_whatever_the_global_generator(heat_data):
    train, _ = heat_data
    data = train.isel(time=slice(0, 3))
    torch.manual_seed(123)
    a = fit_dynamics(data, "u", space=("y", "x"), steps=2, seed=5, **TINY)
    torch.manual_seed(456)
    b = fit_dynamics(data, "u", space=("y", "x"), steps=2, seed=5, **TINY)
    for (k, va), vb in zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


def test_rollout_weight_adds_a_decoded_rollout_loss_that_training_reduces(heat_data):
    train, _ = heat_data
    data = train.isel(time=slice(0, 5))
    model = fit_dynamics(data, "u", space=("y", "x"), steps=80, seed=0, rollout_weight=1.0, **TINY)
    roll = np.asarray(model.history.logs["rollout"])
    assert roll.shape == (80,) and np.isfinite(roll).all()
    assert roll[-10:].mean() < 0.5 * roll[:10].mean()
    plain = fit_dynamics(data, "u", space=("y", "x"), steps=2, seed=0, **TINY)
    assert "rollout" not in plain.history.logs
    with pytest.raises(ValueError, match="rollout_weight"):
        fit_dynamics(data, "u", space=("y", "x"), steps=2, rollout_weight=-1.0, **TINY)


@pytest.mark.parametrize("noise", ["white", "correlated"])
def test_gauss_newton_encoding_reaches_the_adam_optimum(fitted, heat_data, noise):
    _, test = heat_data
    init = test.isel(time=0)
    # a different random 30 % of the points in every state: one normal matrix per mask
    rng = np.random.default_rng(4)
    keep = xr.DataArray(rng.random((init.sizes["trajectory"], 16, 16)) < 0.3,
                        dims=("trajectory", "y", "x"))
    sparse = init.where(keep)
    gn = fitted.encode(sparse, noise=noise)  # the default: 5 Gauss-Newton steps
    adam = fitted.encode(sparse, noise=noise, optimizer="adam", steps=1500, lr=0.02)
    spread = float(fitted.codes.std())
    assert np.abs(gn.values - adam.values).max() < 0.02 * spread
    far = fitted.encode(sparse, noise=noise, optimizer="adam", steps=3, lr=0.02)
    assert np.abs(far.values - adam.values).max() > 0.1 * spread  # the check can fail
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fitted.encode(sparse, optimizer="lbfgs")


def test_gauss_newton_steps_never_increase_the_objective():
    from torch import nn

    from xsciml.models.autodecode import encode_objective, gauss_newton_codes
    from xsciml.nn import FourierNet

    class Cosine(nn.Module):  # u = cos(3 a.x + b): flat in the code at the linearisation point 0,
        # so the shared Jacobian is ~0 and undamped steps from a0 = 0.3 would explode
        def forward(self, f, z):
            return torch.cos(3.0 * (z[..., :2] * f).sum(-1, keepdim=True) + z[..., 2:3])

    torch.manual_seed(0)
    x = torch.rand(120, 2) * 2 - 1
    zero, one = torch.zeros(3), torch.ones(3)
    for net, scale, start, converges in (
            (Cosine(), 0.7, 0.3, False),
            (FourierNet(2, 1, width=16, depth=3, input_scale=6.0, code_dim=3), 3.0, 0.0, True)):
        with torch.no_grad():
            y = decode_codes(net, x, torch.randn(4, 3) * scale)
        mask = (torch.rand(4, 120, 1) < 0.7).float()
        y = y * mask

        def objective(a, net=net, y=y, mask=mask):
            return encode_objective(net, x, y, mask, a, reg=1e-4, code_mean=zero, code_std=one).detach()

        a0 = torch.full((4, 3), start)
        prev = objective(a0)
        for k in (1, 2, 4, 8, 16):
            a = gauss_newton_codes(net, x, y, mask, a0, steps=k, reg=1e-4, code_mean=zero, code_std=one)
            f = objective(a)
            assert (f <= prev + 1e-7).all(), (type(net).__name__, k)
            prev = f
        if converges:
            assert (prev < 0.5 * objective(a0)).all()


def test_gauss_newton_codes_refuses_bad_input():
    from xsciml.models.autodecode import encode_objective, gauss_newton_codes
    from xsciml.nn import FourierNet

    net = FourierNet(2, 1, width=8, depth=2, input_scale=4.0, code_dim=3)
    x, y = torch.rand(10, 2), torch.zeros(2, 10, 1)
    kw = dict(steps=2, reg=0.0, code_mean=torch.zeros(3), code_std=torch.ones(3))
    with pytest.raises(ValueError, match="y and mask"):
        gauss_newton_codes(net, x, y, torch.ones(2, 10), torch.zeros(2, 3), **kw)
    with pytest.raises(ValueError, match="codes must be"):
        gauss_newton_codes(net, x, y, torch.ones_like(y), torch.zeros(3, 3), **kw)
    with pytest.raises(ValueError, match="NaN or inf"):
        gauss_newton_codes(net, x, y * np.nan, torch.ones_like(y), torch.zeros(2, 3), **kw)
    with pytest.raises(ValueError, match="both the factor"):
        gauss_newton_codes(net, x, y, torch.ones_like(y), torch.zeros(2, 3), gls=torch.zeros(1, 10), **kw)
    with pytest.raises(ValueError, match="steps"):
        gauss_newton_codes(net, x, y, torch.ones_like(y), torch.zeros(2, 3), **{**kw, "steps": -1})
    with pytest.raises(ValueError, match="features must be"):
        gauss_newton_codes(net, x[:7], y, torch.ones_like(y), torch.zeros(2, 3), **kw)
    with pytest.raises(ValueError, match="code_mean and code_std"):
        gauss_newton_codes(net, x, y, torch.ones_like(y), torch.zeros(2, 3), **{**kw, "code_std": torch.ones(4)})
    with pytest.raises(ValueError, match="jacobian must be"):
        gauss_newton_codes(net, x, y, torch.ones_like(y), torch.zeros(2, 3), jacobian=torch.zeros(10, 2), **kw)
    # the public objective checks its input the same way
    obj_kw = dict(reg=0.0, code_mean=torch.zeros(3), code_std=torch.ones(3))
    with pytest.raises(ValueError, match="codes must be"):
        encode_objective(net, x, y, torch.ones_like(y), torch.zeros(3, 3), **obj_kw)
    with pytest.raises(ValueError, match="NaN or inf"):
        encode_objective(net, x, y * np.inf, torch.ones_like(y), torch.zeros(2, 3), **obj_kw)


def test_encoding_in_chunks_computes_the_jacobian_once(fitted, heat_data, monkeypatch):
    import xsciml.models.dino as dino_mod

    _, test = heat_data
    init = test.isel(time=0)
    whole = fitted.encode(init)
    calls = []
    real = dino_mod.decoder_jacobian
    monkeypatch.setattr(dino_mod, "decoder_jacobian", lambda *a, **k: calls.append(1) or real(*a, **k))
    chunked = fitted.encode(init, max_points=256)  # one 16 x 16 state per chunk
    assert init.sizes["trajectory"] > 1 and len(calls) == 1
    np.testing.assert_allclose(chunked.values, whole.values, rtol=0, atol=1e-3 * float(fitted.codes.std()))
    # a Jacobian passed in is the one computed inside
    dec = fitted.module.decoder  # on the device of the last encode (a GPU where one is visible)
    f = (torch.rand(30, 2) * 2 - 1).to(fitted.module.code_mean.device)
    with torch.no_grad():
        y = decode_codes(dec, f, fitted.module.code_mean[None] + 0.1 * fitted.module.code_std[None])
    kw = dict(steps=3, reg=0.01, code_mean=fitted.module.code_mean, code_std=fitted.module.code_std)
    a0 = fitted.module.code_mean.detach()[None].clone()
    jac = real(dec, f, fitted.module.code_mean, fitted.module.code_std)
    np.testing.assert_array_equal(
        dino_mod.gauss_newton_codes(dec, f, y, torch.ones_like(y), a0, jacobian=jac, **kw).cpu().numpy(),
        dino_mod.gauss_newton_codes(dec, f, y, torch.ones_like(y), a0, **kw).cpu().numpy())


def test_decoder_jacobian_matches_the_analytic_derivative_and_refuses_bad_input():
    from torch import nn

    from xsciml.models.autodecode import decoder_jacobian

    class Sine(nn.Module):  # u(x; a) = sin(a . x) + a_2^2: du/da_i = x_i cos(a . x) (+ 2 a_2)
        def forward(self, f, z):
            return torch.sin((z[..., :2] * f).sum(-1, keepdim=True)) + z[..., 2:3] ** 2

    torch.manual_seed(0)
    x = torch.rand(25, 2) * 2 - 1
    mu, sd = torch.tensor([0.4, -0.7, 0.3]), torch.tensor([0.5, 2.0, 1.0])
    jac = decoder_jacobian(Sine(), x, mu, sd)
    c = torch.cos(x @ mu[:2]).double()
    exact = torch.stack([x[:, 0].double() * c, x[:, 1].double() * c,
                         torch.full((25,), 2 * 0.3, dtype=torch.float64)], -1)
    assert jac.dtype == torch.float64 and jac.shape == (25, 3)
    np.testing.assert_allclose(jac.numpy(), exact.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="features must be"):
        decoder_jacobian(Sine(), x[None], mu, sd)
    with pytest.raises(ValueError, match="same number of entries"):
        decoder_jacobian(Sine(), x, mu, sd[:2])
    with pytest.raises(ValueError, match="> 0"):
        decoder_jacobian(Sine(), x, mu, torch.tensor([0.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        decoder_jacobian(Sine(), x, torch.tensor([0.4, np.nan, 0.3]), sd)


# ----------------------------------------------------------------------------- default plan
def test_default_plan_follows_the_data():
    from xsciml.models.dino import STEP_VALUES, _training_plan

    auto = dict(steps=None, batch_size=None, window=None, n_points=None)
    # 40 trajectories x 10 frames of 32 x 32: every frame in every step, 2**14 // 400 points
    assert _training_plan(40, 10, 1024, **auto) == {"steps": 2000, "batch_size": 40, "window": 10,
                                                      "n_points": 40}
    # one hourly series of 552 frames: windows of 16 frames, 32 of them per step (what
    # 2**14 values at 32 points allow), steps grown so that every code is fitted as often
    plan = _training_plan(1, 552, 1617, **auto)
    assert plan == {"steps": 2157, "batch_size": 32, "window": 16, "n_points": 32}
    assert plan["steps"] == int(np.ceil(2000 * 552 / (32 * 16)))
    # a short series on a large grid: 2 windows cover its 24 frames, at 512 points each
    assert _training_plan(1, 24, 10512, **auto) == {"steps": 2000, "batch_size": 2, "window": 16,
                                                      "n_points": 512}
    # a small grid: all its points, whatever the budget
    assert _training_plan(3, 5, 20, **auto)["n_points"] == 20
    # a huge data set: a bounded step and at most 6000 steps
    big = _training_plan(1000, 100, 4096, **auto)
    assert big["batch_size"] * big["window"] * big["n_points"] <= STEP_VALUES and big["steps"] == 6000
    # given values are kept, and the rest follows from them
    assert _training_plan(40, 10, 1024, steps=7, batch_size=4, window=5, n_points=None) == {
        "steps": 7, "batch_size": 4, "window": 5, "n_points": 2**14 // 20}
    assert _training_plan(40, 10, 1024, steps=None, batch_size=None, window=None, n_points=128)[
        "batch_size"] == 2**14 // (10 * 128)
    # batch_size at most the distinct windows (2 trajectories x 2 starts), n_points at most P
    assert _training_plan(2, 10, 64, steps=None, batch_size=50, window=9, n_points=2000) == {
        "steps": 2000, "batch_size": 4, "window": 9, "n_points": 64}
    with pytest.raises(ValueError, match=r"window must be an integer in \[2, 10\]"):
        _training_plan(4, 10, 64, steps=None, batch_size=None, window=11, n_points=None)


def test_default_fit_of_a_long_series_rolls_out_bounded_windows():
    ds = xsciml.datasets.heat(1, 8, seed=0, n_frames=40, alpha=4.0, tau=3.0)
    series = ds.isel(trajectory=0)
    tiny = {k: v for k, v in TINY.items() if k != "n_points"}
    model = xsciml.models.dino.fit_dino(series, "u", sample_dim=None, steps=3, seed=0, **tiny)
    # 16-frame windows, 3 of them cover the 40 frames; all 64 points of the 8 x 8 grid
    assert model.info["plan"] == {"steps": 3, "batch_size": 3, "window": 16, "n_points": 64}
    assert model.info["steps"] == 3


def test_batched_windows_match_one_window_at_a_time():
    from xsciml.models.latent_ode import OffsetTable

    tau = np.array([0.0, 0.5, 1.5, 2.0, 3.5, 4.0])  # irregular: windows have other offsets
    table = OffsetTable(tau)
    t_out, where = table.windows([0, 2, 1], 3)
    assert where.shape == (3, 3, 3)
    for b, j0 in enumerate([0, 2, 1]):
        t1, w1 = table(j0, 3)
        np.testing.assert_array_equal(t_out[where[b]].numpy(), t1[w1].numpy())
    torch.manual_seed(0)
    f = LatentDynamics(2, width=8, depth=1, periods=[2.0])
    holder = torch.nn.Module()
    holder.dynamics, holder.teacher_forcing = f, 0.5
    z = torch.randn(3, 3, 2)
    u = torch.rand(3, 3)
    phase = f.phases(tau[np.array([[0, 1, 2], [2, 3, 4], [1, 2, 3]])])
    ode = {"method": "rk4", "step": 0.25}
    both = _dynamics_loss(holder, z, u, t_out, where, ode, phase)
    one = [_dynamics_loss(holder, z[[b]], u[[b]], *table(j0, 3), ode, phase[b])
           for b, j0 in enumerate([0, 2, 1])]
    assert float(both.detach()) == pytest.approx(float(torch.stack(one).detach().mean()), rel=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        table.windows([4], 3)
