"""Langevin (ULA) and MALA on a correlated 2-D Gaussian with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from xsciml.samplers import langevin, mala

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
PREC = torch.linalg.inv(SIGMA)


def log_prob(x: torch.Tensor) -> torch.Tensor:
    d = x - MU
    return -0.5 * torch.einsum("ni,ij,nj->n", d, PREC, d)


def score(x: torch.Tensor) -> torch.Tensor:
    return -(x - MU) @ PREC


def exact_samples(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T


def cov(x: torch.Tensor) -> torch.Tensor:
    return torch.cov(x.T)


def ula_stationary_cov(h: float) -> torch.Tensor:
    # x' = x - h P (x - mu) + sqrt(2h) xi  =>  C = (P - h P^2 / 2)^-1
    return torch.linalg.inv(PREC - 0.5 * h * PREC @ PREC)


def test_ula_matches_its_exact_stationary_law() -> None:
    h = 0.2
    s = langevin(log_prob, MU.repeat(8000, 1), step=h, n_steps=120, burn_in=119,
                 generator=0, progress=False)
    x = s[-1]
    target = ula_stationary_cov(h)
    assert torch.allclose(x.mean(0), MU, atol=0.04)
    assert torch.allclose(cov(x), target, atol=0.06)
    # the O(h) bias is real (and the test could tell the two apart)
    assert (target - SIGMA).abs().max() > 0.15


def test_score_and_log_density_give_the_same_chain() -> None:
    x0 = exact_samples(16, 1)
    a = langevin(score, x0, step=0.05, n_steps=20, generator=3, progress=False)
    b = langevin(log_prob, x0, step=0.05, n_steps=20, generator=3, progress=False)
    assert a.shape == (20, 16, 2)
    assert torch.allclose(a, b, atol=1e-12)


def test_mala_leaves_the_target_exactly_invariant() -> None:
    h = 0.2  # large enough that ULA is visibly biased
    x0 = exact_samples(8000, 2)
    s, acc = mala(log_prob, x0, step=h, n_steps=30, generator=4, progress=False)
    assert 0.0 < acc < 1.0
    x = s[-1]
    assert torch.allclose(x.mean(0), MU, atol=0.04)
    assert torch.allclose(cov(x), SIGMA, atol=0.06)
    # the same number of unadjusted steps drifts towards the biased law
    u = langevin(log_prob, x0, step=h, n_steps=30, generator=4, progress=False)[-1]
    assert (cov(u) - SIGMA).abs().max() > 0.12


def test_mala_acceptance_falls_with_the_step() -> None:
    x0 = exact_samples(500, 5)
    _, small = mala(log_prob, x0, step=0.01, n_steps=20, generator=0, progress=False)
    _, large = mala(log_prob, x0, step=0.5, n_steps=20, generator=0, progress=False)
    assert 0.9 < small <= 1.0
    assert 0.0 < large < small


def test_mala_mixture_weights() -> None:
    # 1-D mixture 0.3 N(-2, 0.5^2) + 0.7 N(2, 0.5^2), event shape (1,)
    def lp(x: torch.Tensor) -> torch.Tensor:
        z = x[:, 0]
        return torch.logsumexp(torch.stack([math.log(0.3) - 2 * (z + 2) ** 2,
                                            math.log(0.7) - 2 * (z - 2) ** 2]), 0)

    gen = torch.Generator().manual_seed(0)
    comp = torch.rand(4000, generator=gen) < 0.7
    x0 = (torch.where(comp, 2.0, -2.0) + 0.5 * torch.randn(4000, generator=gen))[:, None].double()
    s, _ = mala(lp, x0, step=0.1, n_steps=20, generator=1, progress=False)
    frac = float((s[-1, :, 0] > 0).double().mean())
    assert abs(frac - 0.7) < 0.03


def test_thin_burn_in_and_devices() -> None:
    s = langevin(score, torch.zeros(3, 2, dtype=torch.float64), step=0.1, n_steps=10, thin=3,
                 burn_in=1, generator=torch.Generator().manual_seed(0), progress=False)
    assert s.shape == (3, 3, 2)  # steps 4, 7, 10
    assert s.dtype == torch.float64


def test_bad_input() -> None:
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="step"):
        langevin(score, x0, step=0.0, n_steps=5)
    with pytest.raises(ValueError, match="burn_in"):
        langevin(score, x0, step=0.1, n_steps=5, burn_in=5)
    with pytest.raises(ValueError, match="one value per chain"):
        mala(lambda x: x.sum(), x0, step=0.1, n_steps=2)
    with pytest.raises(ValueError, match="kind="):
        langevin(lambda x: -x, torch.zeros(4), step=0.1, n_steps=2)
    with pytest.raises(ValueError, match="returned shape"):
        langevin(lambda x: x[:, :1], x0, step=0.1, n_steps=2)
    with pytest.raises(TypeError, match="generator"):
        langevin(score, x0, step=0.1, n_steps=2, generator="seed")
    # explicit kind works for scalar states
    s = langevin(lambda x: -x, torch.zeros(4), step=0.1, n_steps=2, kind="score", progress=False)
    assert s.shape == (2, 4)
