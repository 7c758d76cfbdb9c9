"""Tests of :mod:`xsciml.likelihoods`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from xsciml.likelihoods import (
    LIKELIHOOD_KINDS,
    DiagonalGaussian,
    GaussianLikelihood,
    HeteroscedasticGaussian,
    MSELikelihood,
    build_likelihood,
    kl_standard_normal,
)


@pytest.fixture(autouse=True)
def _single_thread():
    """Small networks gain nothing from intra-op threads, and on a loaded 2-core machine
    two OpenMP threads made these tests 20-40x slower (spin-waiting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_gaussian_nll_matches_scipy():
    torch.manual_seed(0)
    lik = GaussianLikelihood(2, init_std=0.5)
    with torch.no_grad():
        lik.log_std.copy_(torch.log(torch.tensor([0.5, 2.0])))
    mean, y = torch.randn(30, 2, dtype=torch.float64), torch.randn(30, 2, dtype=torch.float64)
    ref = -stats.norm.logpdf(y.numpy(), loc=mean.numpy(), scale=np.array([0.5, 2.0])).mean()
    assert lik.nll(mean, y).item() == pytest.approx(ref, rel=1e-6)
    torch.testing.assert_close(lik.mean(mean), mean)
    torch.testing.assert_close(lik.std(mean)[7], torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert lik.n_params_per_output == 1 and lik.n_params == 2


def test_heteroscedastic_nll_matches_scipy_and_std_positive():
    torch.manual_seed(0)
    lik = HeteroscedasticGaussian(3, min_std=1e-3)
    assert lik.n_params_per_output == 2 and lik.n_params == 6
    out = torch.randn(20, 6, dtype=torch.float64) * 3
    out[0, 3:] = -200.0  # raw scales far below zero still give a positive std
    y = torch.randn(20, 3, dtype=torch.float64)
    loc, scale = out[:, :3], F.softplus(out[:, 3:]) + 1e-3
    ref = -stats.norm.logpdf(y.numpy(), loc=loc.numpy(), scale=scale.numpy()).mean()
    assert lik.nll(out, y).item() == pytest.approx(ref, rel=1e-6)
    std = lik.std(out)
    assert (std > 0).all()
    torch.testing.assert_close(std[0], torch.full((3,), 1e-3, dtype=torch.float64))
    torch.testing.assert_close(lik.mean(out), loc)


def test_mse_likelihood():
    lik = MSELikelihood(2)
    out, y = torch.randn(10, 2), torch.randn(10, 2)
    torch.testing.assert_close(lik.nll(out, y), F.mse_loss(out, y))
    torch.testing.assert_close(lik.std(out), torch.ones(10, 2))
    torch.testing.assert_close(lik.mean(out), out)


@pytest.mark.parametrize("name", ["gaussian", "heteroscedastic", "mse"])
def test_nan_and_mask_are_skipped(name):
    torch.manual_seed(0)
    lik = build_likelihood(name, 2)
    out = torch.randn(8, lik.n_params, requires_grad=True)
    y = torch.randn(8, 2)
    mask = torch.rand(8, 2) > 0.3
    y_nan = torch.where(mask, y, torch.tensor(float("nan")))
    full = lik.nll(out, y, mask=mask)
    nanned = lik.nll(out, y_nan)
    torch.testing.assert_close(full, nanned)
    # equals the mean over the kept entries only
    if name == "mse":
        ref = (out - y).square()[mask].mean()
    else:
        ref = (-lik.distribution(out).log_prob(y))[mask].mean()
    torch.testing.assert_close(full, ref)
    nanned.backward()
    assert torch.isfinite(out.grad).all()
    assert (out.grad[:, :2][~mask] == 0).all()  # skipped entries give no gradient to the mean


def test_all_masked_gives_zero():
    lik = GaussianLikelihood(1)
    assert lik.nll(torch.zeros(3, 1), torch.full((3, 1), float("nan"))).item() == 0.0


def test_learned_sigma_converges_to_noise_std():
    torch.manual_seed(0)
    x = torch.rand(2000, 1) * 2 - 1
    y = 2 * x + 1 + 0.3 * torch.randn_like(x)
    model, lik = torch.nn.Linear(1, 1), GaussianLikelihood(1, init_std=1.0)
    opt = torch.optim.Adam([*model.parameters(), *lik.parameters()], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        lik.nll(model(x), y).backward()
        opt.step()
    residual_std = (y - model(x)).std().item()
    assert lik.std(model(x[:1])).item() == pytest.approx(0.3, abs=0.02)
    assert lik.std(model(x[:1])).item() == pytest.approx(residual_std, rel=0.02)


def test_heteroscedastic_learns_input_dependent_noise():
    torch.manual_seed(0)
    x = torch.rand(4000, 1) * 2 - 1
    true_std = F.softplus(1.5 * x - 0.5)
    y = x + true_std * torch.randn_like(x)
    model, lik = torch.nn.Linear(1, 2), HeteroscedasticGaussian(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        lik.nll(model(x), y).backward()
        opt.step()
    probe = torch.tensor([[-0.8], [0.0], [0.8]])
    torch.testing.assert_close(
        lik.std(model(probe)), F.softplus(1.5 * probe - 0.5), atol=0.05, rtol=0
    )


def test_fixed_std_is_not_learned_but_saved():
    lik = GaussianLikelihood(2, init_std=0.2, learn_std=False)
    assert list(lik.parameters()) == []
    assert "log_std" in lik.state_dict()
    torch.testing.assert_close(lik.std(torch.zeros(1, 2)), torch.full((1, 2), 0.2))


@pytest.mark.parametrize(
    "name, kw",
    [("gaussian", dict(init_std=0.3)), ("heteroscedastic", dict(min_std=0.01)), ("mse", {})],
)
def test_config_round_trip(name, kw):
    torch.manual_seed(0)
    lik = build_likelihood(name, 2, **kw)
    with torch.no_grad():
        for p in lik.parameters():
            p.add_(0.5)
    config = json.loads(json.dumps(lik.config()))
    clone = build_likelihood(config)
    assert type(clone) is type(lik) and clone.config() == lik.config()
    clone.load_state_dict(lik.state_dict())
    out, y = torch.randn(5, lik.n_params), torch.randn(5, 2)
    torch.testing.assert_close(clone.nll(out, y), lik.nll(out, y))
    assert build_likelihood(lik) is lik


def test_likelihood_errors():
    with pytest.raises(ValueError, match="heteroscedastic"):
        build_likelihood("poisson", 1)
    with pytest.raises(ValueError, match="n_outputs"):
        build_likelihood("gaussian")
    with pytest.raises(ValueError, match="n_outputs"):
        GaussianLikelihood(0)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        HeteroscedasticGaussian(2).nll(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="y must have shape"):
        GaussianLikelihood(2).nll(torch.zeros(3, 2), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="mask"):
        GaussianLikelihood(2).nll(torch.zeros(3, 2), torch.zeros(3, 2), mask=torch.ones(4, 2))
    assert {"gaussian", "heteroscedastic", "mse"} <= set(LIKELIHOOD_KINDS)


def test_kl_standard_normal_closed_form():
    torch.manual_seed(0)
    mu, log_std = torch.randn(6, 4), 0.5 * torch.randn(6, 4)
    closed = 0.5 * (mu**2 + torch.exp(2 * log_std) - 1 - 2 * log_std)
    torch.testing.assert_close(kl_standard_normal(mu, log_std), closed)
    q = DiagonalGaussian(mu, log_std)
    torch.testing.assert_close(q.kl_standard_normal(), closed.sum(-1))
    ref_logp = stats.norm.logpdf(np.zeros((6, 4)), mu.numpy(), np.exp(log_std.numpy())).sum(-1)
    torch.testing.assert_close(q.log_prob(torch.zeros(6, 4)), torch.from_numpy(ref_logp).float())


def test_diagonal_gaussian_rsample():
    torch.manual_seed(0)
    params = torch.tensor([[1.0, -2.0, math.log(0.5), math.log(2.0)]], requires_grad=True)
    q = DiagonalGaussian.from_params(params)
    samples = q.rsample((20000,))
    assert samples.shape == (20000, 1, 2)
    torch.testing.assert_close(samples.mean(0)[0], torch.tensor([1.0, -2.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(samples.std(0)[0], torch.tensor([0.5, 2.0]), atol=0.03, rtol=0)
    samples.mean().backward()  # reparameterised: gradients reach mu and log_std
    assert params.grad is not None and (params.grad[0, :2] != 0).all()
    with pytest.raises(ValueError, match="even"):
        DiagonalGaussian.from_params(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 4))

