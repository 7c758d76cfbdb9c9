"""Kernel tests of the auto-decoding solvers (xsciml.models.autodecode): pure torch, float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xsciml.models.autodecode import (
    adam_codes,
    candidate_fields,
    decode_codes,
    decoder_jacobian,
    encode_objective,
    gauss_newton_codes,
    gls_factors,
    nearest_codes,
)
from xsciml.nn import FourierNet


class LinearDecoder(nn.Module):
    """``D(alpha)(x) = Phi(x) alpha``: the features are the basis ``Phi`` itself (one channel)."""

    def forward(self, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (features * codes).sum(-1, keepdim=True)


#: Gauss-Newton steps are accepted by comparing objective values, so the minimum of a
#: quadratic is located to about sqrt(float64 eps) ~ 1.5e-8 relative, not to eps.
TIGHT = 1e-7


def _linear_problem(B: int = 3, P: int = 40, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(P, d, generator=g, dtype=torch.float64)
    y = torch.randn(B, P, 1, generator=g, dtype=torch.float64)
    return LinearDecoder(), phi, y


def _masks(B: int, P: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(B, P, 1, generator=g) < 0.6).double()
    m[0] = 1.0  # one fully observed state
    return m


def test_decoder_jacobian_of_a_linear_decoder_is_its_basis():
    dec, phi, _ = _linear_problem()
    d = phi.shape[1]
    jac = decoder_jacobian(dec, phi, torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64))
    torch.testing.assert_close(jac, phi, rtol=0, atol=1e-12)


def test_gauss_newton_equals_least_squares_for_a_linear_decoder():
    dec, phi, y = _linear_problem()
    d = phi.shape[1]
    mean, std = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    a = gauss_newton_codes(dec, phi, y, torch.ones_like(y), torch.zeros(len(y), d, dtype=torch.float64),
                           steps=3, reg=0.0, code_mean=mean, code_std=std)
    exact = torch.linalg.lstsq(phi.expand(len(y), -1, -1), y).solution[..., 0]
    torch.testing.assert_close(a, exact, rtol=0, atol=TIGHT)


def test_gauss_newton_with_masks_fits_each_state_on_its_observed_points_only():
    dec, phi, y = _linear_problem(B=4)
    d = phi.shape[1]
    mask = _masks(len(y), len(phi))
    mean, std = torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
    kw = dict(steps=3, reg=0.0, code_mean=mean, code_std=std)
    a = gauss_newton_codes(dec, phi, y, mask, torch.zeros(len(y), d, dtype=torch.float64), **kw)
    for b in range(len(y)):
        obs = mask[b, :, 0].bool()
        exact = torch.linalg.lstsq(phi[obs], y[b, obs]).solution[:, 0]
        torch.testing.assert_close(a[b], exact, rtol=0, atol=TIGHT)
    # values at unobserved points do not matter; each state is independent of the batch
    noisy = torch.where(mask.bool(), y, 1e3 * torch.randn(y.shape, dtype=torch.float64,
                                                          generator=torch.Generator().manual_seed(5)))
    a2 = gauss_newton_codes(dec, phi, noisy, mask, torch.zeros(len(y), d, dtype=torch.float64), **kw)
    torch.testing.assert_close(a2, a, rtol=0, atol=TIGHT)
    one = gauss_newton_codes(dec, phi, y[2:3], mask[2:3], torch.zeros(1, d, dtype=torch.float64), **kw)
    torch.testing.assert_close(one[0], a[2], rtol=0, atol=TIGHT)


def test_gls_gauss_newton_equals_the_weighted_normal_equations():
    """Low-rank + white GLS, masks and the Gaussian prior: the dense normal equations."""
    dec, phi, y = _linear_problem(B=3, P=30, d=4)
    P, d = phi.shape
    g = torch.Generator().manual_seed(2)
    factor = torch.randn(5, P, generator=g, dtype=torch.float64)
    floor, reg = 0.3, 0.05
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    std = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    mask = _masks(len(y), P, seed=3)
    chol = gls_factors(factor, mask.reshape(len(y), -1), floor)
    a = gauss_newton_codes(dec, phi, y, mask, mean.expand(len(y), -1).clone(), steps=4, reg=reg,
                           code_mean=mean, code_std=std, gls=factor, chol=chol)
    for b in range(len(y)):
        m = mask[b, :, 0]
        fm = factor * m  # the factor on the observed entries
        W = floor * torch.linalg.inv(floor * torch.eye(P, dtype=torch.float64) + fm.T @ fm)
        M = torch.diag(m)
        n = float(m.sum())
        A = phi.T @ M @ W @ M @ phi / n + (reg / d) * torch.diag(std ** -2)
        rhs = phi.T @ M @ W @ M @ y[b, :, 0] / n + (reg / d) * mean / std ** 2
        exact = torch.linalg.solve(A, rhs)
        torch.testing.assert_close(a[b], exact, rtol=0, atol=TIGHT)
    # the GLS objective at the solution is below the white-noise solution's
    white = gauss_newton_codes(dec, phi, y, mask, mean.expand(len(y), -1).clone(), steps=4, reg=reg,
                               code_mean=mean, code_std=std)
    kw = dict(reg=reg, code_mean=mean, code_std=std, gls=factor, chol=chol)
    assert bool((encode_objective(dec, phi, y, mask, a, **kw)
                 <= encode_objective(dec, phi, y, mask, white, **kw) + 1e-12).all())


def test_gauss_newton_recovers_the_code_of_a_nonlinear_decoder():
    torch.manual_seed(0)
    net = FourierNet(2, 2, width=16, depth=2, input_scale=4.0, code_dim=3).double()
    x = torch.rand(60, 2, dtype=torch.float64) * 2 - 1
    true = torch.randn(4, 3, dtype=torch.float64) * 0.2
    with torch.no_grad():
        y = decode_codes(net, x, true)
    mask = torch.ones_like(y)
    mask[1, ::2] = 0.0  # a sparsely observed state
    kw = dict(reg=0.0, code_mean=torch.zeros(3, dtype=torch.float64), code_std=torch.ones(3, dtype=torch.float64))
    a = gauss_newton_codes(net, x, y, mask, torch.zeros(4, 3, dtype=torch.float64), steps=25, **kw)
    torch.testing.assert_close(a, true, rtol=0, atol=1e-6)
    assert float(encode_objective(net, x, y, mask, a, **kw).detach().max()) < 1e-12
    # each step is accepted only if it does not increase the objective
    prev = encode_objective(net, x, y, mask, torch.zeros(4, 3, dtype=torch.float64), **kw)
    for steps in (1, 2, 4):
        cur = encode_objective(net, x, y, mask, gauss_newton_codes(
            net, x, y, mask, torch.zeros(4, 3, dtype=torch.float64), steps=steps, **kw), **kw)
        assert bool((cur <= prev).all())
        prev = cur


def test_gauss_newton_zero_steps_and_bad_input():
    dec, phi, y = _linear_problem()
    d = phi.shape[1]
    kw = dict(reg=0.0, code_mean=torch.zeros(d, dtype=torch.float64), code_std=torch.ones(d, dtype=torch.float64))
    a0 = torch.randn(len(y), d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(gauss_newton_codes(dec, phi, y, torch.ones_like(y), a0, steps=0, **kw), a0)
    with pytest.raises(ValueError, match="steps"):
        gauss_newton_codes(dec, phi, y, torch.ones_like(y), a0, steps=-1, **kw)
    with pytest.raises(ValueError, match="jacobian"):
        gauss_newton_codes(dec, phi, y, torch.ones_like(y), a0, steps=1, jacobian=torch.zeros(3, d), **kw)
    with pytest.raises(ValueError, match="both"):
        gauss_newton_codes(dec, phi, y, torch.ones_like(y), a0, steps=1, gls=torch.zeros(2, len(phi)), **kw)


def test_adam_codes_approaches_least_squares():
    dec, phi, y = _linear_problem(B=2, P=40, d=3)
    d = phi.shape[1]
    kw = dict(reg=0.0, code_mean=torch.zeros(d, dtype=torch.float64), code_std=torch.ones(d, dtype=torch.float64))
    a = adam_codes(dec, phi, y, torch.ones_like(y), torch.zeros(len(y), d, dtype=torch.float64), steps=400,
                   lr=0.05, **kw)
    exact = torch.linalg.lstsq(phi.expand(len(y), -1, -1), y).solution[..., 0]
    torch.testing.assert_close(a, exact, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="steps"):
        adam_codes(dec, phi, y, torch.ones_like(y), torch.zeros(len(y), d, dtype=torch.float64), steps=1.5,
                   lr=0.05, **kw)


def test_nearest_codes_picks_the_closest_candidate_on_observed_points():
    dec, phi, _ = _linear_problem(B=1, P=20, d=3)
    g = torch.Generator().manual_seed(6)
    codes = torch.randn(700, 3, generator=g, dtype=torch.float64)
    cand_codes, fields = candidate_fields(dec, phi, codes, max_points=1000)
    assert cand_codes.shape == (512, 3) and fields.shape == (512, 20)
    target = cand_codes[[7, 300]]
    with torch.no_grad():
        y = decode_codes(dec, phi, target)
    mask = torch.ones_like(y)
    mask[1, :10] = 0.0
    y[1, :10] = 1e3  # unobserved: ignored
    torch.testing.assert_close(nearest_codes((cand_codes, fields), y, mask), target)
