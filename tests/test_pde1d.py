"""Tests of the periodic 1-D spectral solvers and datasets (xsciml.pde1d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xsciml import pde1d
from xsciml.pde1d import (
    burgers,
    kdv,
    kdv_soliton,
    kuramoto_sivashinsky,
    solve_burgers,
    solve_kdv,
    solve_kuramoto_sivashinsky,
    solve_spectral,
)


def _grid(n: int, length: float) -> np.ndarray:
    return np.arange(n) * length / n


# ----------------------------------------------------------------- known solutions
def test_kdv_soliton_travels_at_its_speed():
    L, n, c, x0 = 30.0, 128, 1.5, 8.0
    x = _grid(n, L)
    u0 = kdv_soliton(x, 0.0, speed=c, x0=x0, length=L)
    t = np.array([0.0, 1.0, 2.0])
    u = solve_kdv(u0, t, length=L, dt=5e-3)
    for i, ti in enumerate(t):
        exact = kdv_soliton(x, ti, speed=c, x0=x0, length=L)
        assert np.abs(u[i] - exact).max() < 1e-5 * exact.max()
    # the peak (by parabolic fit around the maximum) moved by c * t
    j = int(np.argmax(u[-1]))
    ym, y0, yp = u[-1][j - 1], u[-1][j], u[-1][j + 1]
    peak = x[j] + 0.5 * (ym - yp) / (ym - 2 * y0 + yp) * (L / n)
    assert abs(peak - (x0 + c * 2.0)) < 0.02
    assert abs(u[-1].max() - c / 2) < 0.01 * c  # amplitude c/2 for alpha = 6, beta = 1


def test_burgers_matches_cole_hopf():
    # phi = 2 + cos(x) exp(-nu t) solves the heat equation; u = -2 nu phi_x / phi solves Burgers
    nu, n = 0.2, 64
    x = _grid(n, 2 * np.pi)

    def exact(t):
        e = np.exp(-nu * t)
        return 2 * nu * np.sin(x) * e / (2 + np.cos(x) * e)

    t = np.array([0.0, 0.5, 2.0])
    u = solve_burgers(exact(0.0), t, nu=nu, dt=1e-2)
    for i, ti in enumerate(t):
        np.testing.assert_allclose(u[i], exact(ti), atol=1e-8)


def test_burgers_large_viscosity_is_linear_heat():
    # small amplitude: the nonlinearity is negligible, each mode decays as exp(-nu k^2 t)
    nu, eps = 1.0, 1e-4
    x = _grid(64, 2 * np.pi)
    u0 = eps * (np.sin(x) + 0.5 * np.cos(3 * x))
    u = solve_burgers(u0, [0.0, 0.3], nu=nu, dt=1e-2)[-1]
    heat = eps * (np.exp(-0.3) * np.sin(x) + 0.5 * np.exp(-0.3 * 9) * np.cos(3 * x))
    assert np.abs(u - heat).max() < 1e-3 * eps


def test_ks_linear_growth_rate():
    # small amplitude mode k: u = eps exp((k^2 - nu k^4) t) cos(k x)
    L, n, eps = 8 * np.pi, 64, 1e-6
    x = _grid(n, L)
    k = 2 * np.pi * 2 / L  # unstable (k = 0.5)
    u = solve_kuramoto_sivashinsky(eps * np.cos(k * x), [0.0, 2.0], length=L, dt=0.05)[-1]
    expected = eps * np.exp((k**2 - k**4) * 2.0) * np.cos(k * x)
    np.testing.assert_allclose(u, expected, atol=1e-4 * eps)


def test_linear_operator_only_is_exact():
    n, L = 32, 2 * np.pi
    x = _grid(n, L)
    k = 2 * np.pi / L * np.arange(n // 2 + 1)
    u = solve_spectral(np.cos(2 * x), [0.0, 0.7], length=L, linear=-(k**2), nonlinear_coef=0.0, dt=0.5)
    np.testing.assert_allclose(u[-1], np.exp(-4 * 0.7) * np.cos(2 * x), atol=1e-12)


def test_etdrk4_coefficients_match_closed_forms():
    h = 0.1
    lin = torch.tensor([-20.0, -3.0, 5.0], dtype=torch.float64)
    e, e2, q, f1, f2, f3 = pde1d._etdrk4_coefficients(lin, h)
    z = (h * lin).numpy()
    np.testing.assert_allclose(e.numpy().real, np.exp(z), rtol=1e-12)
    np.testing.assert_allclose(q.numpy(), h * (np.exp(z / 2) - 1) / z, rtol=1e-10)
    np.testing.assert_allclose(f1.numpy(), h * (-4 - z + np.exp(z) * (4 - 3 * z + z**2)) / z**3, rtol=1e-8)
    np.testing.assert_allclose(f2.numpy(), h * (2 + z + np.exp(z) * (z - 2)) / z**3, rtol=1e-8)
    np.testing.assert_allclose(f3.numpy(), h * (-4 - 3 * z - z**2 + np.exp(z) * (4 - z)) / z**3, rtol=1e-8)
    # the limit at L = 0 is finite (no cancellation): q -> h / 2, f1 = f3 -> h / 6, f2 -> h / 6
    *_, q0, g1, g2, g3 = pde1d._etdrk4_coefficients(torch.zeros(1, dtype=torch.float64), h)
    np.testing.assert_allclose([q0.item(), g1.item(), g2.item(), g3.item()], [h / 2, h / 6, h / 6, h / 6],
                               rtol=1e-10)


# ----------------------------------------------------------------- conservation laws
def test_mean_is_conserved():
    rng = np.random.default_rng(0)
    x = _grid(64, 2 * np.pi)
    u0 = 0.3 + np.sin(x) + 0.3 * np.cos(2 * x + rng.uniform())
    t = np.linspace(0, 1, 5)
    for u in (solve_burgers(u0, t, nu=0.05),
              solve_kdv(u0, t, length=2 * np.pi, dt=1e-3),
              solve_kuramoto_sivashinsky(u0, t, length=2 * np.pi, dt=1e-2)):
        np.testing.assert_allclose(u.mean(-1), u0.mean(), atol=1e-12)


def test_kdv_conserves_mass_and_momentum():
    ds = kdv(2, 128, n_frames=11, t_max=2.0, dt=5e-3, seed=1, dtype="float64")
    u = ds["u"].values
    mass = u.sum(-1)
    momentum = (u**2).sum(-1)
    np.testing.assert_allclose(mass, np.broadcast_to(mass[:, :1], mass.shape), rtol=1e-10)
    np.testing.assert_allclose(momentum, np.broadcast_to(momentum[:, :1], mass.shape), rtol=1e-6)
    assert np.abs(u[:, -1] - u[:, 0]).max() > 0.1  # it did move


def test_burgers_dissipates_energy():
    u = burgers(2, 64, n_frames=6, t_max=1.0, dtype="float64")["u"].values
    energy = (u**2).sum(-1)
    assert np.all(np.diff(energy, axis=1) < 0)


# ----------------------------------------------------------------- convergence
def test_fourth_order_convergence_in_dt():
    L, n = 20.0, 64
    x = _grid(n, L)
    u0 = kdv_soliton(x, 0.0, speed=1.0, x0=5.0, length=L) + kdv_soliton(x, 0.0, speed=0.5, x0=12.0, length=L)
    t = [0.0, 1.0]
    ref = solve_kdv(u0, t, length=L, dt=1e-3)[-1]
    e1 = np.abs(solve_kdv(u0, t, length=L, dt=0.04)[-1] - ref).max()
    e2 = np.abs(solve_kdv(u0, t, length=L, dt=0.02)[-1] - ref).max()
    assert e2 < e1
    assert e1 / e2 > 10  # ~16 for a 4th-order scheme


def test_info_counts_steps_and_output_times_are_hit():
    x = _grid(32, 2 * np.pi)
    u, info = solve_burgers(np.sin(x), [0.0, 0.1, 0.25], nu=0.1, dt=0.04, return_info=True)
    # 0.1 -> 3 steps of 1/30, 0.15 -> 4 steps of 0.0375
    assert info["steps"] == 7 and info["nfe"] == 28
    assert math.isclose(info["dt"], 0.0375)
    assert u.shape == (3, 32)


def test_batch_dimensions_are_independent():
    rng = np.random.default_rng(2)
    x = _grid(32, 2 * np.pi)
    u0 = np.sin(x)[None, None] * rng.uniform(0.5, 1.5, size=(2, 3, 1))
    both = solve_burgers(u0, [0.0, 0.5], nu=0.1)
    single = solve_burgers(u0[1, 2], [0.0, 0.5], nu=0.1)
    assert both.shape == (2, 3, 2, 32)
    np.testing.assert_allclose(both[1, 2], single, atol=1e-13)


# ----------------------------------------------------------------- datasets
@pytest.mark.parametrize("gen", [burgers, kuramoto_sivashinsky, kdv])
def test_datasets_layout_and_seed(gen):
    ds = gen(3, 32, n_frames=4, t_max=0.2, seed=5)
    u = ds["u"]
    assert u.dims == ("trajectory", "time", "x") and u.shape == (3, 4, 32)
    assert u.dtype == np.float32
    np.testing.assert_allclose(ds["time"].values, np.linspace(0, 0.2, 4))
    L = float(ds.attrs["length"])
    np.testing.assert_allclose(ds["x"].values, np.arange(32) * L / 32)
    assert ds["x"].attrs["period"] == L
    assert "equation" in ds.attrs and "u_t" in ds.attrs["equation"]
    again = gen(3, 32, n_frames=4, t_max=0.2, seed=5)
    np.testing.assert_array_equal(u.values, again["u"].values)
    other = gen(3, 32, n_frames=4, t_max=0.2, seed=6)
    assert not np.allclose(u.values, other["u"].values)
    assert np.all(np.isfinite(u.values))


def test_fourier_initial_states_are_zero_mean_with_given_rms():
    ds = burgers(4, 64, n_frames=2, t_max=0.01, amplitude=0.7, dtype="float64")
    u0 = ds["u"].isel(time=0).values
    np.testing.assert_allclose(u0.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.sqrt((u0**2).mean(-1)), 0.7, rtol=1e-12)


# ----------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    x = _grid(16, 2 * np.pi)
    with pytest.raises(ValueError, match="strictly increasing"):
        solve_burgers(np.sin(x), [0.0, 0.5, 0.4])
    with pytest.raises(ValueError, match="dt must be"):
        solve_burgers(np.sin(x), [0.0, 1.0], dt=0.0)
    with pytest.raises(ValueError, match="NaN"):
        solve_burgers(np.where(x > 1, np.nan, 0.0), [0.0, 1.0])
    with pytest.raises(ValueError, match="nu must be"):
        solve_kuramoto_sivashinsky(np.sin(x), [0.0, 1.0], nu=0.0)
    with pytest.raises(ValueError, match="n_points"):
        burgers(2, 4)
    with pytest.raises(ValueError, match="speeds"):
        kdv(2, 32, speeds=(2.0, 1.0))
    with pytest.raises(ValueError, match="linear must have"):
        solve_spectral(np.sin(x), [0.0, 1.0], length=2 * np.pi, linear=np.zeros(3))
