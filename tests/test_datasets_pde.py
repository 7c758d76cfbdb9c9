"""Wave and Navier-Stokes datasets: exact solutions, conservation laws, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xsciml.datasets import navier_stokes, navier_stokes_solve, wave


def _grad2(u: np.ndarray, length: float) -> np.ndarray:
    """|grad u|^2 integrated over the periodic box (spectrally), per leading index."""
    n = u.shape[-1]
    k = 2 * np.pi * np.fft.fftfreq(n, d=length / n)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    uh = np.fft.fft2(u) / n**2
    return (np.abs(uh) ** 2 * (kx**2 + ky**2)).sum((-2, -1)) * length**2


def test_wave_energy_is_conserved_and_v_is_du_dt():
    c = 0.7
    ds = wave(3, 32, speed=c, dt=0.002, n_frames=101, seed=4, dtype="float64")
    u, v = ds["u"].values, ds["v"].values
    assert np.abs(v[:, 0]).max() == 0.0  # starts at rest
    energy = 0.5 * ((v**2).mean((-2, -1)) * 4.0 + c**2 * _grad2(u, 2.0))
    np.testing.assert_allclose(energy, energy[:, :1].repeat(energy.shape[1], 1), rtol=1e-10)
    assert energy.std() > 0  # three different initial states
    dudt = (u[:, 2:] - u[:, :-2]) / (2 * 0.002)  # centred differences, O(dt^2)
    scale = np.abs(v).max()
    assert np.abs(dudt - v[:, 1:-1]).max() < 1e-3 * scale


def test_wave_single_mode_is_a_standing_wave():
    ds = wave(1, 16, speed=1.0, dt=0.5, n_frames=3, seed=0, dtype="float64")
    assert ds["u"].dims == ("trajectory", "time", "y", "x")
    assert ds.attrs["speed"] == 1.0
    # same seed, same data; other seed, other data
    np.testing.assert_array_equal(ds["u"], wave(1, 16, speed=1.0, dt=0.5, n_frames=3, seed=0,
                                                 dtype="float64")["u"])
    assert not np.allclose(ds["u"], wave(1, 16, speed=1.0, dt=0.5, n_frames=3, seed=1)["u"])


def test_navier_stokes_taylor_green_decays_exactly():
    """cos(kx) cos(ky) vorticity is a steady Euler flow: NS only damps it, by exp(-2 nu k^2 t)."""
    n, nu = 32, 0.01
    x = np.arange(n) / n
    y, xx = np.meshgrid(x, x, indexing="ij")
    k = 2 * np.pi
    w0 = np.cos(k * xx) * np.cos(k * y)
    w = navier_stokes_solve(w0, [0.0, 0.5, 2.0], viscosity=nu, step=1e-2)
    for j, t in enumerate([0.0, 0.5, 2.0]):
        # Crank-Nicolson is second order: 2e-6 relative error after 200 steps of 1e-2
        np.testing.assert_allclose(w[j], w0 * np.exp(-2 * nu * k**2 * t), atol=1e-5)


def test_navier_stokes_converges_in_the_step_and_keeps_zero_mean():
    rng = np.random.default_rng(0)
    n = 32
    w0 = np.fft.irfft2(np.fft.rfft2(rng.normal(size=(2, n, n))) * (np.fft.rfftfreq(n) < 0.1)
                       * (np.abs(np.fft.fftfreq(n))[:, None] < 0.1), s=(n, n)) * 20
    a = navier_stokes_solve(w0, [0.5], viscosity=1e-3, step=4e-3)
    b = navier_stokes_solve(w0, [0.5], viscosity=1e-3, step=2e-3)
    c = navier_stokes_solve(w0, [0.5], viscosity=1e-3, step=1e-3)
    assert np.abs(a - w0[:, None]).max() > 0.05 * np.abs(w0).max()  # the flow moved
    e1, e2 = np.abs(a - c).max(), np.abs(b - c).max()
    assert e2 < e1 / 3  # second order in time: halving the step cuts the error ~4x
    np.testing.assert_allclose(c.mean((-2, -1)), 0.0, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_navier_stokes_solver_on_the_gpu_matches_the_cpu():
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 32, 32))
    forcing = np.sin(2 * np.pi * np.arange(32) / 32)[None, :] * np.ones((32, 1))
    cpu = navier_stokes_solve(w0, [0.0, 0.3, 0.6], viscosity=1e-2, forcing=forcing, step=1e-2)
    gpu = navier_stokes_solve(w0, [0.0, 0.3, 0.6], viscosity=1e-2, forcing=forcing, step=1e-2, device="cuda")
    assert isinstance(gpu, np.ndarray) and gpu.shape == cpu.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(gpu, cpu, atol=1e-10)


def test_navier_stokes_dataset_setting_and_errors():
    ds = navier_stokes(2, 16, n_frames=3, dt=0.5, resolution=32, step=5e-3, seed=1)
    w = ds["vorticity"]
    assert w.dims == ("trajectory", "time", "y", "x") and w.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(ds["time"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(ds["x"], np.arange(16) / 16)
    assert ds.attrs["viscosity"] == 1e-3 and ds.attrs["resolution"] == 32
    assert np.isfinite(w).all() and float(abs(w).max()) > 0
    again = navier_stokes(2, 16, n_frames=3, dt=0.5, resolution=32, step=5e-3, seed=1)
    np.testing.assert_array_equal(w, again["vorticity"])
    with pytest.raises(ValueError, match="multiple"):
        navier_stokes(1, 16, resolution=24)
    with pytest.raises(ValueError, match="square"):
        navier_stokes_solve(np.zeros((4, 8)), [1.0])
    with pytest.raises(ValueError, match="increasing"):
        navier_stokes_solve(np.zeros((8, 8)), [1.0, 0.5])
    with pytest.raises(ValueError, match="forcing contains NaN"):
        navier_stokes_solve(np.zeros((8, 8)), [1.0], forcing=np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="device='tpu' is not understood"):
        navier_stokes_solve(np.zeros((8, 8)), [1.0], device="tpu")
