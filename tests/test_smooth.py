"""Tests of the smooth latent dynamics estimator (xsciml.models.smooth)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xsciml
from xsciml.models.latent_ode import LatentDynamics
from xsciml.models.smooth import (
    FourierAnsatz,
    HyperMLP,
    SmoothDynamics,
    SmoothModule,
    SnapshotEncoder,
    _autoencoder_loss,
    fit_smooth_dynamics,
)

L = 2.0  # period of the toy data


def travelling_waves(n_traj: int = 6, n: int = 32, n_frames: int = 9, dt: float = 0.125,
                     seed: int = 0) -> xr.Dataset:
    """u = A tanh(2 cos(2 pi (x - c t) / L)): pure advection, exactly in the Fourier ansatz."""
    rng = np.random.default_rng(seed)
    x = np.arange(n) * L / n
    t = np.arange(n_frames) * dt
    amp = rng.uniform(0.5, 1.5, n_traj)
    shift = rng.uniform(0, L, n_traj)
    c = 0.5
    phase = 2 * np.pi * (x[None, None, :] - shift[:, None, None] - c * t[None, :, None]) / L
    u = amp[:, None, None] * np.tanh(2 * np.cos(phase))
    return xr.Dataset({"u": (("trajectory", "time", "x"), u.astype(np.float32), {"units": "m/s"})},
                      coords={"trajectory": np.arange(n_traj), "time": t,
                              "x": ("x", x, {"units": "m"})})


@pytest.fixture(scope="module")
def waves() -> xr.Dataset:
    return travelling_waves()


@pytest.fixture(scope="module")
def model(waves) -> SmoothDynamics:
    torch.set_num_threads(1)
    return fit_smooth_dynamics(waves, "u", modes=2, waves=2, steps=200, dynamics_steps=100,
                               encoder_width=8, dynamics_width=32, dynamics_depth=2,
                               lr=5e-3, dynamics_lr=5e-3, device="cpu", progress=False)


# ----------------------------------------------------------------- decoders
def test_fourier_ansatz_known_answer_and_translation():
    dec = FourierAnsatz(1, 1, modes=2, waves=1)
    nk = dec.n_k  # 2: k = 1, 2
    # theta = [b, a, d, cr (nk), ci (nk)]: u = 0.3 + 1.5 tanh(0.2 + 2 cos(phi_1))
    theta = torch.tensor([0.3, 1.5, 0.2, 2.0, 0.0, 0.0, 0.0])
    assert dec.latent_dim == theta.numel() == 1 + 1 + 1 + 2 * nk
    x = np.linspace(0, L, 17)[:-1]
    feats = dec.features(torch.as_tensor(x[:, None], dtype=torch.float32), torch.tensor([L]))
    out = dec(theta, feats)[:, 0].numpy()
    np.testing.assert_allclose(out, 0.3 + 1.5 * np.tanh(0.2 + 2 * np.cos(2 * np.pi * x / L)), atol=1e-5)
    # translating by s multiplies c_k by exp(-2 i pi k s / L)
    g = torch.Generator().manual_seed(0)
    th = torch.randn(dec.latent_dim, generator=g)
    s = 0.37
    c = torch.complex(th[3:3 + nk], th[3 + nk:])
    c = c * torch.exp(-2j * math.pi * torch.arange(1, nk + 1) * s / L)
    shifted = torch.cat([th[:3], c.real, c.imag])
    feats_s = dec.features(torch.as_tensor((x - s)[:, None], dtype=torch.float32), torch.tensor([L]))
    torch.testing.assert_close(dec(shifted, feats), dec(th, feats_s), atol=1e-5, rtol=1e-5)


def test_fourier_ansatz_2d_is_periodic_and_batched():
    dec = FourierAnsatz(2, 2, modes=2, waves=3)
    assert dec.n_k == 12  # half of the 5 x 5 integer square minus the origin
    pts = torch.rand(20, 2)
    per = torch.tensor([1.0, 3.0])
    theta = torch.randn(4, 5, dec.latent_dim)
    a = dec(theta, dec.features(pts, per))
    b = dec(theta, dec.features(pts + per * torch.tensor([2.0, -1.0]), per))
    assert a.shape == (4, 5, 20, 2)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a[2, 3], dec(theta[2, 3], dec.features(pts, per)))


def test_hyper_mlp_is_periodic_batched_and_theta_moves_weights():
    torch.manual_seed(0)
    dec = HyperMLP(1, 1, latent_dim=3, width=8, depth=2, n_freq=3)
    x = torch.rand(15, 1)
    per = torch.tensor([L])
    f = dec.features(x, per)
    theta = torch.randn(6, 3)
    out = dec(theta, f)
    torch.testing.assert_close(out, dec(theta, dec.features(x + L, per)), atol=1e-5, rtol=1e-5)
    for i in range(6):
        torch.testing.assert_close(out[i], dec(theta[i], f))
    assert not torch.allclose(out[0], out[1])
    # theta = 0 evaluates the base network W0
    h = f
    w = dec.base.detach()
    pos = 0
    for li, (o, i) in enumerate(dec.shapes):
        W = w[pos:pos + o * i].reshape(o, i)
        pos += o * i
        h = h @ W.T + w[pos:pos + o]
        pos += o
        if li < len(dec.shapes) - 1:
            h = torch.sin(h)
    torch.testing.assert_close(dec(torch.zeros(3), f), h)


def test_snapshot_encoder_shapes():
    assert SnapshotEncoder(2, 7, (64,), width=4)(torch.randn(3, 2, 64)).shape == (3, 7)
    assert SnapshotEncoder(1, 5, (16, 12), width=4)(torch.randn(2, 1, 16, 12)).shape == (2, 5)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        SnapshotEncoder(1, 5, (4, 4, 4))


# ----------------------------------------------------------------- fitted model
def test_fit_learns_reconstruction_and_forecast(model, waves):
    assert isinstance(model, SmoothDynamics)
    assert model.latent_dim == 1 + 2 + 2 + 2 * 2 * 2
    assert model.info["final_reconstruction_loss"] < 0.05  # standardised units (variance 1)
    test = travelling_waves(2, seed=1)
    rec = model.decode(model.encode(test), test)
    rel = float(np.sqrt(((rec - test.u) ** 2).sum() / (test.u**2).sum()))
    assert rel < 0.25
    fc = model.forecast(test.isel(time=0), lead=test["time"].values)
    err = float(np.sqrt(((fc.values - test.u.values) ** 2).sum() / (test.u.values**2).sum()))
    persistence = float(np.sqrt(((test.u.values - test.u.values[:, :1]) ** 2).sum() / (test.u.values**2).sum()))
    assert err < 0.6 * persistence  # it moves the waves, not just holds them


def test_forecast_layout_attrs_and_nfe(model, waves):
    init = waves.isel(time=0)
    fc = model.forecast(init, lead=[0.0, 0.25, 0.5])
    assert fc.dims == ("trajectory", "lead", "x")
    assert fc.shape == (waves.sizes["trajectory"], 3, waves.sizes["x"])
    np.testing.assert_allclose(fc["lead"].values, [0.0, 0.25, 0.5])
    np.testing.assert_allclose(fc["valid_time"].values, init["time"].values + np.array([0.0, 0.25, 0.5]))
    np.testing.assert_array_equal(fc["x"].values, waves["x"].values)
    assert fc.attrs["units"] == "m/s"
    assert fc.attrs["xsciml_model"] == "SmoothDynamics"
    assert model.nfe is not None and model.nfe > 0
    assert int(fc.attrs["xsciml_ode_nfe"]) == model.nfe
    # lead 0 is the decoded encoding
    rec = model.decode(model.encode(init), init)
    np.testing.assert_allclose(fc.isel(lead=0).values, rec.values, atol=1e-5)
    # looser tolerances: fewer function evaluations
    model.forecast(init, lead=[0.0, 1.0], rtol=1e-6, atol=1e-7)
    tight = model.nfe
    model.forecast(init, lead=[0.0, 1.0], rtol=1e-2, atol=1e-2)
    assert model.nfe <= tight
    rk4 = model.forecast(init, lead=[0.0, 0.5], solver="rk4")
    dp = model.forecast(init, lead=[0.0, 0.5], rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(rk4.values, dp.values, atol=2e-2)


def test_decode_on_finer_grid_and_points(model, waves):
    theta = model.encode(waves.isel(trajectory=0, time=0))
    coarse = model.decode(theta, waves)
    fine_x = np.arange(64) * L / 64
    fine = model.decode(theta, {"x": fine_x})
    np.testing.assert_allclose(fine.values[::2], coarse.values, atol=1e-5)
    pts = model.decode(theta, pd.DataFrame({"x": [0.0, L / 32 * 3]}))
    np.testing.assert_allclose(pts.values, coarse.values[[0, 3]], atol=1e-5)


def test_initial_state_on_another_grid_is_interpolated(model):
    fine = travelling_waves(2, n=64, seed=3)
    coarse = travelling_waves(2, n=32, seed=3)
    a = model.encode(fine.isel(time=0)).values
    b = model.encode(coarse.isel(time=0)).values
    scale = np.abs(b).mean()
    assert np.abs(a - b).mean() < 0.1 * scale
    fc = model.forecast(fine.isel(time=0), lead=[0.0, 0.5])
    assert fc.sizes["x"] == 64  # decoded on the initial state's own grid


def test_nan_initial_state_needs_refinement(model, waves):
    init = waves.isel(time=0).copy(deep=True)
    init["u"][:, :4] = np.nan
    with pytest.raises(ValueError, match="encode_steps > 0"):
        model.forecast(init, lead=[0.0])
    full = model.encode(waves.isel(time=0)).values
    refined = model.encode(init, steps=30, lr=1e-2)
    assert np.all(np.isfinite(refined.values))
    assert np.abs(refined.values - full).mean() < 0.2 * np.abs(full).mean()


def test_refinement_reduces_misfit(model, waves):
    init = waves.isel(time=0)
    err0 = float(((model.decode(model.encode(init), init) - init.u) ** 2).mean())
    err1 = float(((model.decode(model.encode(init, steps=50, reg=0.0), init) - init.u) ** 2).mean())
    assert err1 < err0


def test_timedelta_leads_and_datetime_axis():
    ds = travelling_waves(4, n=16, n_frames=5)
    ds = ds.assign_coords(time=pd.date_range("2001-01-01", periods=5, freq="3h"))
    m = fit_smooth_dynamics(ds, "u", modes=1, waves=1, steps=3, encoder_width=4, dynamics_width=8,
                            dynamics_depth=1, time_units="hours", device="cpu", progress=False)
    lead = pd.timedelta_range("0h", "6h", freq="3h")
    fc = m.forecast(ds.isel(time=0), lead=lead)
    assert fc["lead"].dtype.kind == "m"
    assert fc["valid_time"].values[-1] == np.datetime64("2001-01-01T06:00")
    with pytest.raises(TypeError, match="numbers or timedeltas"):
        m.forecast(ds.isel(time=0), lead="6h")


def test_score_table_matches_manual_errors(model):
    test = travelling_waves(2, seed=4)
    table = model.score(test, n_frames_train=5)
    assert table["mse"].dims == ("horizon", "grid")
    assert list(table["horizon"].values) == ["In-t", "Out-t"]
    fc = model.forecast(test.isel(time=0), lead=test["time"].values)
    err = (fc.values - test.u.values) ** 2
    np.testing.assert_allclose(float(table["mse"].sel(horizon="In-t", grid="all")), err[:, :5].mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(float(table["mse"].sel(horizon="Out-t", grid="In-s")), err[:, 5:].mean(),
                               rtol=1e-4)
    assert np.isnan(float(table["mse"].sel(horizon="In-t", grid="Out-s")))  # every point is In-s


def test_dask_initial_state_gives_lazy_identical_forecast(model, waves):
    # fixed-step solver: an adaptive one shares its steps across the states of a batch,
    # so per-chunk solves agree only to within its tolerance
    init = waves.isel(time=0)
    eager = model.forecast(init, lead=[0.0, 0.5], solver="rk4")
    lazy = model.forecast(init.chunk({"trajectory": 2}), lead=[0.0, 0.5], solver="rk4")
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute().values, eager.values, atol=1e-5)
    # the lazy result records the smooth model's options, not DINo's encoder
    assert lazy.attrs["xsciml_ode_solver"] == eager.attrs["xsciml_ode_solver"] == "rk4"
    assert lazy.attrs["xsciml_encode_steps"] == eager.attrs["xsciml_encode_steps"] == "0"
    assert "xsciml_encode_optimizer" not in lazy.attrs


def test_mlp_decoder_on_2d_heat():
    ds = xsciml.datasets.heat(3, 16, n_frames=4, seed=0)
    m = fit_smooth_dynamics(ds, "u", network="mlp", latent_dim=6, width=8, n_freq=2, steps=20,
                            dynamics_steps=5, encoder_width=4, dynamics_width=16, dynamics_depth=1,
                            device="cpu", progress=False)
    assert m.latent_dim == 6
    np.testing.assert_allclose(m.periods, [2.0, 2.0])  # 16 cells of 1/8 on [-1, 1)
    fc = m.forecast(ds.isel(time=0), lead=[0.0, 0.5])
    assert fc.dims == ("trajectory", "lead", "y", "x") and fc.shape == (3, 2, 16, 16)
    assert np.all(np.isfinite(fc.values))


def test_consistency_makes_the_encoder_consistent():
    ds = travelling_waves(6, n=32, n_frames=6)

    def inconsistency(gamma: float) -> float:
        m = fit_smooth_dynamics(ds, "u", modes=2, waves=2, steps=150, dynamics_steps=1, consistency=gamma,
                                encoder_width=8, dynamics_width=8, dynamics_depth=1, lr=5e-3,
                                device="cpu", progress=False)
        theta = m.encode(ds)
        again = m.encode(m.decode(theta, ds).to_dataset(name="u"))
        return float(((again - theta) ** 2).mean() / (theta**2).mean())

    assert inconsistency(10.0) < inconsistency(0.0)


def test_fourier_ansatz_matches_its_formula_with_several_channels():
    dec = FourierAnsatz(1, 2, modes=3, waves=2)
    C, J, nk = 2, 2, dec.n_k
    theta = torch.randn(4, dec.latent_dim, generator=torch.Generator().manual_seed(1))
    x = torch.linspace(0, L, 13)[:-1, None]
    out = dec(theta, dec.features(x, torch.tensor([L])))
    b, a, d, cr, ci = theta.split([C, J * C, J, J * nk, J * nk], -1)
    phase = 2 * math.pi * x * torch.arange(1, nk + 1) / L  # [P, nk]
    c = torch.complex(cr.reshape(4, J, nk), ci.reshape(4, J, nk))
    inner = (c[:, :, None, :] * torch.exp(1j * phase)).sum(-1).real  # Re sum_k c_k e^{i phi_k}
    ref = torch.einsum("njp,njc->npc", torch.tanh(d[..., None] + inner), a.reshape(4, J, C)) + b[:, None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _tiny_module(grid: int = 16) -> SmoothModule:
    torch.manual_seed(0)
    dec = FourierAnsatz(1, 1, modes=2, waves=2)
    return SmoothModule(SnapshotEncoder(1, dec.latent_dim, (grid,), width=4), dec,
                        LatentDynamics(dec.latent_dim, width=4, depth=1))


def test_consistency_target_fixed_vs_free_gradient():
    """'free' adds d/dθ of gamma ||Λ(Ψ(θ)) - θ||² / s through θ = Λ(u); 'fixed' holds θ constant."""
    m = _tiny_module()
    u = torch.randn(5, 1, 16, generator=torch.Generator().manual_seed(2))
    feats = m.decoder.features(torch.arange(16.0)[:, None] / 16 * L, torch.tensor([L]))
    gamma, grads, outs = 3.0, {}, {}
    for target in ("fixed", "free"):
        seen = []

        def keep(mod, inp, out, seen=seen) -> None:
            out.retain_grad()
            seen.append(out)

        hook = m.encoder.register_forward_hook(keep)
        loss, logs = _autoencoder_loss(m, u, feats, consistency=gamma, consistency_target=target)
        hook.remove()
        loss.backward()
        grads[target], outs[target] = seen[0].grad.clone(), (loss.item(), logs["consistency"])
        theta, theta2 = seen[0].detach(), seen[1].detach()
    assert outs["fixed"] == pytest.approx(outs["free"])  # same value, different gradient
    scale = theta.pow(2).mean()
    expected = -2 * gamma * (theta2 - theta) / (theta.numel() * scale)
    torch.testing.assert_close(grads["free"] - grads["fixed"], expected, atol=1e-7, rtol=1e-4)
    assert float(expected.abs().max()) > 0


def test_smoothness_term_is_the_scaled_second_difference():
    dec = FourierAnsatz(1, 1, modes=1, waves=1)
    d = dec.latent_dim
    g = torch.Generator().manual_seed(3)
    a, v, w = torch.randn(2, d, generator=g), torch.randn(2, d, generator=g), torch.randn(2, d, generator=g)
    feats = dec.features(torch.linspace(0, L, 9)[:-1, None], torch.tensor([L]))
    u = torch.zeros(6, 1, 8)

    def loss_for(theta):
        m = type("M", (), {"encoder": staticmethod(lambda _u: theta), "decoder": dec})()
        return _autoencoder_loss(m, u, feats, smoothness=1.0)[1]["roughness"]

    line = torch.stack([a, a + v, a + 2 * v], 1).reshape(6, d)  # linear in time: no roughness
    assert loss_for(line) == pytest.approx(0.0, abs=1e-10)
    curved = torch.stack([a, a + v, a + 2 * v + w], 1).reshape(6, d)
    var = curved.var(0, unbiased=False)
    assert loss_for(curved) == pytest.approx(float((w.pow(2) / var).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="triplets"):
        _autoencoder_loss(type("M", (), {"encoder": staticmethod(lambda _u: line[:5]), "decoder": dec})(),
                          u[:5], feats, smoothness=1.0)


def test_same_seed_same_model(waves):
    """The modules' initial weights come from ``seed`` too, not from torch's global state."""
    kw = dict(modes=2, waves=2, steps=5, dynamics_steps=3, encoder_width=4, dynamics_width=8,
              dynamics_depth=1, device="cpu", progress=False)
    init = waves.isel(time=0)
    torch.manual_seed(123)
    a = fit_smooth_dynamics(waves, "u", seed=7, **kw).forecast(init, lead=[0.5], device="cpu")
    torch.manual_seed(456)
    b = fit_smooth_dynamics(waves, "u", seed=7, **kw).forecast(init, lead=[0.5], device="cpu")
    c = fit_smooth_dynamics(waves, "u", seed=8, **kw).forecast(init, lead=[0.5], device="cpu")
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values)


def test_smoothness_option_fits_and_is_recorded(waves):
    m = fit_smooth_dynamics(waves, "u", modes=2, waves=2, steps=20, dynamics_steps=2, smoothness=1.0,
                            consistency=1.0, consistency_target="free", encoder_width=8,
                            dynamics_width=8, dynamics_depth=1, device="cpu", progress=False)
    assert m.info["smoothness"] == 1.0 and m.info["consistency_target"] == "free"
    assert np.isfinite(m.history.stage("autoencoder").logs["roughness"]).all()
    fc = m.forecast(waves.isel(time=0), lead=[0.0, 0.25], device="cpu", progress=False)
    assert np.isfinite(fc.values).all()


# ----------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(waves):
    kw = {"steps": 1, "dynamics_steps": 1, "progress": False, "device": "cpu"}
    bad = waves.copy(deep=True)
    bad["u"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_smooth_dynamics(bad, "u", **kw)
    irregular = waves.assign_coords(x=np.r_[0.0, np.cumsum(np.linspace(0.05, 0.08, 31))])
    with pytest.raises(ValueError, match="uniform spacing"):
        fit_smooth_dynamics(irregular, "u", **kw)
    with pytest.raises(ValueError, match="network must be"):
        fit_smooth_dynamics(waves, "u", network="siren", **kw)
    with pytest.raises(ValueError, match="consistency"):
        fit_smooth_dynamics(waves, "u", consistency=-1.0, **kw)
    with pytest.raises(ValueError, match="consistency_target"):
        fit_smooth_dynamics(waves, "u", consistency_target="detached", **kw)
    with pytest.raises(ValueError, match="smoothness"):
        fit_smooth_dynamics(waves, "u", smoothness=float("nan"), **kw)
    with pytest.raises(ValueError, match="train_solver"):
        fit_smooth_dynamics(waves, "u", train_solver="dopri5", **kw)
    with pytest.raises(KeyError, match="not found"):
        fit_smooth_dynamics(waves, "v", **kw)
    with pytest.raises(ValueError, match="period"):
        fit_smooth_dynamics(waves, "u", period=1.0, **kw)


def test_forecast_bad_input(model, waves):
    with pytest.raises(ValueError, match="solver"):
        model.forecast(waves.isel(time=0), lead=[0.0], solver="leapfrog")
    with pytest.raises(TypeError, match="encode_noise"):  # a DINo option the smooth model lacks
        model.forecast(waves.isel(time=0), lead=[0.0], encode_noise="sample")
    with pytest.raises(KeyError, match="lacks variable"):
        model.forecast(waves.rename(u="v").isel(time=0), lead=[0.0])
    with pytest.raises(ValueError, match=">= 0"):
        model.forecast(waves.isel(time=0), lead=[-1.0])
    pts = waves.isel(time=0).rename(x="p").assign_coords(x=("p", waves["x"].values))
    with pytest.raises(ValueError, match="gridded"):
        model.forecast(pts.drop_vars("p", errors="ignore"), lead=[0.0])


def test_fit_dynamics_method_smooth_and_generic_forecast(waves):
    from xsciml.models import fit_dynamics, forecast

    m = fit_dynamics(waves, "u", method="smooth", modes=2, waves=2, steps=5, dynamics_steps=5,
                     encoder_width=8, dynamics_width=16, dynamics_depth=1, device="cpu",
                     progress=False, solver="rk4")
    assert isinstance(m, SmoothDynamics)
    init = waves.isel(time=0)
    fc = forecast(init, m, lead=[0.0, 0.5], device="cpu", progress=False)
    direct = m.forecast(init, lead=[0.0, 0.5], device="cpu", progress=False)
    np.testing.assert_allclose(fc.values, direct.values)
    assert init.sciml.forecast(m, lead=[0.5]).sizes["lead"] == 1
    # options reach the model's own forecast; one it does not take is an error, not dropped
    with pytest.raises(TypeError, match="residual"):
        forecast(init, m, lead=[0.5], residual="persist")


def test_fit_dynamics_method_smooth_forwards_shared_options_and_refuses_dinos(waves):
    from xsciml.models import fit_dynamics

    kw = dict(method="smooth", modes=2, waves=2, steps=2, dynamics_steps=2, encoder_width=8,
              device="cpu", progress=False)
    m = fit_dynamics(waves, "u", dynamics_width=12, dynamics_depth=1, **kw)
    widths = {p.shape[0] for n, p in m.module.named_parameters() if n.startswith("dynamics") and p.ndim == 2}
    assert 12 in widths  # reached the smooth model (it used to be dropped)
    with pytest.raises(TypeError, match=r"does not take input_scale, n_points \(options of method='dino'\)"):
        fit_dynamics(waves, "u", n_points=64, input_scale=2.0, **kw)
