"""EDM diffusion prior: schedule, preconditioning, samplers on known targets, fitting,
labels, bad input and save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from xsciml.downscale.diffusion import (
    DiffusionPrior,
    EDMDenoiser,
    RowNoise,
    default_fit_settings,
    edm_loss,
    fit_diffusion,
    karras_sigmas,
    row_seeds,
    sample_euler_maruyama,
    sample_heun,
)


def _fields(n: int = 48, h: int = 8, w: int = 12, seed: int = 0) -> xr.DataArray:
    """Snapshots ``a * pattern + 280`` (one random amplitude each), descending latitude."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    pattern = np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)
    amp = rng.normal(size=(n, 1, 1))
    lat = 58.0 - 0.25 * np.arange(h)
    lon = -10.0 + 0.25 * np.arange(w)
    time = np.datetime64("2019-03-01T00", "ns") + np.arange(n) * np.timedelta64(1, "h")
    return xr.DataArray(280.0 + amp * pattern, dims=("time", "latitude", "longitude"),
                        coords={"time": time, "latitude": ("latitude", lat, {"units": "degrees_north"}),
                                "longitude": lon},
                        name="t2m", attrs={"units": "K", "long_name": "2 metre temperature"})


@pytest.fixture(scope="module")
def prior() -> DiffusionPrior:
    return fit_diffusion(_fields(), "t2m", base_channels=8, levels=2, emb_dim=16, steps=150,
                         lr=3e-3, ema=0.9, progress=False, device="cpu")


# ----------------------------------------------------------------- schedule and samplers
def test_karras_sigmas_schedule():
    s = karras_sigmas(6, 0.01, 50.0, rho=7.0)
    assert s.shape == (7,)
    assert float(s[0]) == pytest.approx(50.0) and float(s[5]) == pytest.approx(0.01)
    assert float(s[6]) == 0.0
    assert bool((s[:-1] > s[1:]).all())
    # rho = 1 is a linear ramp
    lin = karras_sigmas(5, 1.0, 5.0, rho=1.0)
    np.testing.assert_allclose(lin[:-1].numpy(), [5.0, 4.0, 3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(4, 2.0, 1.0)
    with pytest.raises(ValueError, match="positive integer"):
        karras_sigmas(0, 0.1, 1.0)


def test_preconditioning_known_values():
    net = EDMDenoiser((8, 8), sigma_data=0.5, base_channels=4, levels=1, emb_dim=8)
    sigma = torch.tensor([1e-4, 0.5, 100.0])
    c_skip, c_out, c_in, c_noise = net.preconditioning(sigma)
    np.testing.assert_allclose(c_skip.numpy(), 0.25 / (sigma.numpy() ** 2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out.numpy(), sigma.numpy() * 0.5 / np.sqrt(sigma.numpy() ** 2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_in.numpy(), 1 / np.sqrt(sigma.numpy() ** 2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_noise.numpy(), np.log(sigma.numpy()) / 4, rtol=1e-6)
    # with the network's output layer zeroed, D(x, sigma) = c_skip x exactly
    torch.nn.init.zeros_(net.unet.outc.weight)
    torch.nn.init.zeros_(net.unet.outc.bias)
    x = torch.randn(3, 1, 8, 8)
    out = net(x, sigma)
    torch.testing.assert_close(out, c_skip.reshape(-1, 1, 1, 1) * x)


def test_edm_loss_weighting_gives_unit_loss_for_zero_network():
    # F = 0: D = c_skip (z + s n); λ E|D - z|^2 = 1 for data of variance σ_d² (EDM's
    # weighting makes the loss of the trivial denoiser 1 at every σ)
    torch.manual_seed(0)
    net = EDMDenoiser((8, 8), sigma_data=1.0, base_channels=4, levels=1, emb_dim=8)
    torch.nn.init.zeros_(net.unet.outc.weight)
    torch.nn.init.zeros_(net.unet.outc.bias)
    z = torch.randn(4096, 1, 8, 8)
    assert float(edm_loss(net, z, -1.2, 1.2).detach()) == pytest.approx(1.0, abs=0.03)


def _gaussian_denoiser(var: torch.Tensor):
    """Exact denoiser of N(0, diag(var)) data: D(x, s) = var / (var + s^2) x."""
    return lambda x, s: var / (var + s.to(x.dtype) ** 2) * x


@pytest.mark.parametrize("sampler,steps", [("heun", 40), ("heun_churn", 40), ("em", 120)])
def test_samplers_recover_a_gaussian(sampler, steps):
    var = torch.tensor([0.25, 1.0, 4.0]).reshape(1, 1, 1, 3)
    d = _gaussian_denoiser(var)
    n = 1200
    noise = RowNoise(range(n))
    sigmas = karras_sigmas(steps, 0.002, 80.0)
    x0 = noise.randn((n, 1, 1, 3)) * float(sigmas[0])
    if sampler == "em":
        out = sample_euler_maruyama(d, x0, sigmas, noise)
    else:
        out = sample_heun(d, x0, sigmas, noise, churn=5.0 if sampler == "heun_churn" else 0.0)
    std = out.reshape(n, 3).std(dim=0)
    np.testing.assert_allclose(std.numpy(), [0.5, 1.0, 2.0], rtol=0.06)
    assert float(out.mean().abs()) < 0.1


def test_row_noise_does_not_depend_on_the_batch():
    both = RowNoise([3, 4])
    alone = RowNoise([4])
    for _ in range(3):  # successive draws stay aligned
        a, b = both.randn((2, 5)), alone.randn((1, 5))
        torch.testing.assert_close(a[1:], b)
    seeds = row_seeds(7, np.array([0, 1, 2]), 4)
    assert len(np.unique(seeds)) == 12
    np.testing.assert_array_equal(seeds[2], row_seeds(7, np.array([2]), 4)[0])
    assert not np.array_equal(seeds, row_seeds(8, np.array([0, 1, 2]), 4))


# ----------------------------------------------------------------- fitting and sampling
def test_fit_and_sample_labels(prior):
    da = _fields()
    assert prior.variable == "t2m" and prior.units == "K"
    assert prior.space_dims == ("latitude", "longitude") and prior.shape == (8, 12)
    np.testing.assert_allclose(prior.mean, da.mean("time").values)
    assert prior.scale == pytest.approx(float(np.sqrt(((da - da.mean("time")) ** 2).mean())))
    assert prior.sigma_data == pytest.approx(1.0, rel=1e-3)
    assert "2019-03-01" in prior.info["training_period"]
    s = prior.sample(6, steps=8, progress=False)
    assert s.dims == ("sample", "latitude", "longitude") and s.shape == (6, 8, 12)
    np.testing.assert_array_equal(s["latitude"].values, da["latitude"].values)  # still descending
    assert s["latitude"].attrs["units"] == "degrees_north"
    assert s.name == "t2m" and s.attrs["units"] == "K" and s.attrs["xsciml_model"] == "DiffusionPrior"
    assert np.isfinite(s.values).all()
    assert float(s.std("sample").mean()) > 0  # different samples


def test_training_learns_the_pattern(prior):
    # the data are amplitude x one fixed pattern: after 150 steps, samples must follow it
    da = _fields()
    anom = (da - da.mean("time")).values.reshape(len(da.time), -1)
    pattern = np.linalg.svd(anom, full_matrices=False)[2][0]
    s = prior.sample(16, steps=12, progress=False)
    sa = (s - da.mean("time")).values.reshape(16, -1)
    explained = (sa @ pattern) ** 2 / (sa**2).sum(axis=1)
    assert np.median(explained) > 0.8
    assert prior.history.loss[-1] < prior.history.loss[0]


def test_sample_is_seeded_and_sampler_option(prior):
    a = prior.sample(3, steps=6, seed=1, progress=False)
    b = prior.sample(3, steps=6, seed=1, batch_size=1, progress=False)
    c = prior.sample(3, steps=6, seed=2, progress=False)
    np.testing.assert_allclose(a.values, b.values, atol=1e-4)
    assert not np.allclose(a.values, c.values)
    em = prior.sample(2, steps=10, sampler="euler_maruyama", progress=False)
    assert em.shape == (2, 8, 12) and np.isfinite(em.values).all()
    with pytest.raises(ValueError, match="sampler must be one of"):
        prior.sample(2, sampler="ddim")
    with pytest.raises(ValueError, match="positive integer"):
        prior.sample(0)


def test_ema_weights_are_the_averaged_ones():
    da = _fields(n=16)
    kw = dict(base_channels=4, levels=2, emb_dim=8, steps=20, progress=False, device="cpu", seed=3)
    last = fit_diffusion(da, ema=0.0, **kw)
    avg = fit_diffusion(da, ema=0.5, **kw)
    # same run (same seed), different weights kept
    assert last.history.loss == avg.history.loss
    pairs = zip(last.net.state_dict().values(), avg.net.state_dict().values(), strict=True)
    diffs = [float((a - b).abs().max()) for a, b in pairs]
    assert max(diffs) > 0


# ----------------------------------------------------------------- defaults scaled to the data
def test_default_fit_settings_scale_with_the_data_and_the_device():
    big = default_fit_settings(16, (120, 240), "cpu")
    # 2**18 // 28800 = 9 frames fit the pixel cap -> batch 8; 1e8 / (8 * 28800) = 434 -> 430 steps
    assert (big["batch_size"], big["steps"]) == (8, 430)
    assert big["ema"] == pytest.approx(1 - 10 / 430)
    small = default_fit_settings(552, (32, 48), "cpu")
    assert (small["batch_size"], small["steps"], small["ema"]) == (32, 2000, 0.995)
    assert default_fit_settings(8, (64, 128), "cpu")["steps"] == 1530
    # the GPU budget keeps the full number of steps on all three
    for n, shape in ((16, (120, 240)), (552, (32, 48)), (8, (64, 128))):
        assert default_fit_settings(n, shape, torch.device("cuda"))["steps"] == 2000
    assert default_fit_settings(16, (120, 240), "cuda")["batch_size"] == 16
    # bounds: a huge grid keeps 200 steps and batch 4, a tiny one at most 2000
    huge = default_fit_settings(100, (720, 1440), "cpu")
    assert (huge["batch_size"], huge["steps"]) == (4, 200)
    assert default_fit_settings(3, (4, 4), "cpu")["batch_size"] == 3
    # what the caller gives is kept; only the rest is derived
    given = default_fit_settings(16, (120, 240), "cpu", batch_size=2, steps=7)
    assert (given["batch_size"], given["steps"], given["ema"]) == (2, 7, 0.0)
    assert default_fit_settings(16, (120, 240), "cpu", batch_size=2)["steps"] == 1740


def test_default_fit_uses_the_rule_and_time_limit_stops_it():
    da = _fields(n=16)
    with pytest.warns(UserWarning, match="time limit"):
        p = fit_diffusion(da, base_channels=4, levels=2, emb_dim=8, progress=False, device="cpu",
                          time_limit=1e-6)
    rule = default_fit_settings(16, (8, 12), "cpu")
    assert p.info["steps_asked"] == rule["steps"] == 2000 and p.info["batch_size"] == 16
    assert p.info["ema"] == pytest.approx(0.995)
    assert p.info["stop_reason"] == "time_limit" and p.info["steps"] == p.history.steps < 2000
    assert "pixel-steps" in p.info["defaults"]
    # the prior is usable
    assert np.isfinite(p.sample(1, steps=3, progress=False).values).all()


def test_check_fields_are_kept_and_saved(prior, tmp_path):
    import xsciml

    da = _fields()
    assert prior.check_fields.shape == (4, 8, 12)
    np.testing.assert_allclose(prior.check_fields, da.values[[0, 16, 31, 47]], rtol=1e-6)
    assert prior.info["check_frames"][0].startswith("2019-03-01T00")
    back = xsciml.load(prior.save(tmp_path / "p.xsciml"))
    np.testing.assert_array_equal(back.check_fields, prior.check_fields)


# ----------------------------------------------------------------- bad input
def test_bad_input_is_refused():
    da = _fields(n=8)
    gappy = da.copy()
    gappy[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_diffusion(gappy, steps=1, progress=False)
    with pytest.raises(KeyError, match="sample_dim"):
        fit_diffusion(da, sample_dim="member", steps=1, progress=False)
    with pytest.raises(ValueError, match="two space dims"):
        fit_diffusion(da.isel(latitude=0), steps=1, progress=False)
    with pytest.raises(ValueError, match="too small"):
        fit_diffusion(da, levels=5, steps=1, progress=False)
    with pytest.raises(ValueError, match="ema"):
        fit_diffusion(da, ema=1.0, steps=1, progress=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        fit_diffusion(da, steps=0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fit_diffusion(da, batch_size=True, steps=1, progress=False)
    with pytest.raises(KeyError, match="not found"):
        fit_diffusion(da.to_dataset(), "tas", steps=1, progress=False)
    with pytest.raises(ValueError, match="constant"):
        fit_diffusion(da * 0 + 1, steps=1, progress=False)


def test_unet_too_deep_message_is_clear():
    with pytest.raises(ValueError, match="2-D field shape"):
        EDMDenoiser((8,), 1.0)
    assert math.isfinite(EDMDenoiser((8, 8), 1.0, base_channels=4, levels=2, emb_dim=8)(
        torch.zeros(1, 1, 8, 8), 1.0).sum().item())
