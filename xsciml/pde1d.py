r"""Periodic 1-D PDEs of advection-dominated dynamics, and their spectral solvers.

Three equations on a periodic interval :math:`[0, L)`, written as
:math:`u_t = \mathcal L u + \mathcal N(u)` with a diagonal (in Fourier space) linear part
and a quadratic nonlinearity:

========================  ==================================================  ==========================
equation                  PDE                                                 :math:`\hat{\mathcal L}(k)`
========================  ==================================================  ==========================
viscous Burgers           :math:`u_t + u u_x = \nu u_{xx}`                    :math:`-\nu k^2`
Kuramoto–Sivashinsky      :math:`u_t + u u_x + u_{xx} + \nu u_{xxxx} = 0`     :math:`k^2 - \nu k^4`
Korteweg–de Vries         :math:`u_t + \alpha u u_x + \beta u_{xxx} = 0`      :math:`i \beta k^3`
========================  ==================================================  ==========================

(:math:`k = 2\pi m / L`). All three conserve the mean of :math:`u`; KdV also conserves
:math:`\int u^2`. The solvers are pseudo-spectral (``torch.fft``, float64, any batch
shape, CPU or GPU): the nonlinear term :math:`-\tfrac{c}{2}\partial_x(u^2)` is computed
in physical space with the 2/3 rule (modes above :math:`N/3` of the product are
dropped), and time stepping is the exponential time-differencing Runge–Kutta scheme
ETDRK4 of Cox & Matthews (2002) with the φ-function coefficients evaluated by contour
integrals, as in Kassam & Trefethen (2005, *SIAM J. Sci. Comput.* 26:1214): the stiff
linear part is integrated exactly, so the step is limited only by the nonlinear term.

Dataset generators (:func:`burgers`, :func:`kuramoto_sivashinsky`, :func:`kdv`) return
``xr.Dataset`` with variable ``u`` over ``(trajectory, time, x)`` and attrs describing the
PDE, its parameters and the solver settings.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import numpy as np
import torch
import xarray as xr

__all__ = [
    "burgers",
    "kdv",
    "kdv_soliton",
    "kuramoto_sivashinsky",
    "solve_burgers",
    "solve_kdv",
    "solve_kuramoto_sivashinsky",
    "solve_spectral",
]


# =========================================================================== solver core
def _wavenumbers(n: int, length: float, device: torch.device) -> torch.Tensor:
    """Angular wavenumbers of ``rfft`` of ``n`` samples on a period ``length``."""
    return 2.0 * math.pi / length * torch.arange(n // 2 + 1, dtype=torch.float64, device=device)


def _etdrk4_coefficients(lin: torch.Tensor, h: float, n_contour: int = 64):
    r"""ETDRK4 coefficients for the diagonal linear operator ``lin`` and step ``h``.

    The φ-functions are means over a circle of radius 1 around each :math:`h L_k` in the
    complex plane (Kassam & Trefethen 2005), which avoids the cancellation of the closed
    forms near :math:`hL = 0`. A full circle is used so that complex :math:`L` (KdV) is
    handled too.
    """
    hl = (h * lin).to(torch.complex128)
    j = torch.arange(1, n_contour + 1, dtype=torch.float64, device=lin.device)
    r = torch.exp(2j * math.pi * (j - 0.5) / n_contour)
    lr = hl[:, None] + r[None, :]
    e_lr = torch.exp(lr)
    q = h * ((torch.exp(lr / 2) - 1.0) / lr).mean(1)
    f1 = h * ((-4.0 - lr + e_lr * (4.0 - 3.0 * lr + lr**2)) / lr**3).mean(1)
    f2 = h * ((2.0 + lr + e_lr * (lr - 2.0)) / lr**3).mean(1)
    f3 = h * ((-4.0 - 3.0 * lr - lr**2 + e_lr * (4.0 - lr)) / lr**3).mean(1)
    if not torch.is_complex(lin):  # real operator: the coefficients are real
        q, f1, f2, f3 = q.real, f1.real, f2.real, f3.real
    return torch.exp(hl), torch.exp(hl / 2), q, f1, f2, f3


@overload
def solve_spectral(u0: Any, t: Any, *, length: float, linear: torch.Tensor | np.ndarray,
                   nonlinear_coef: float = ..., dt: float = ..., dealias: bool = ...,
                   device: str | torch.device = ..., return_info: Literal[False] = ...) -> np.ndarray: ...
@overload
def solve_spectral(u0: Any, t: Any, *, length: float, linear: torch.Tensor | np.ndarray,
                   nonlinear_coef: float = ..., dt: float = ..., dealias: bool = ...,
                   device: str | torch.device = ..., return_info: Literal[True]
                   ) -> tuple[np.ndarray, dict[str, Any]]: ...
@overload
def solve_spectral(u0: Any, t: Any, *, length: float, linear: torch.Tensor | np.ndarray,
                   nonlinear_coef: float = ..., dt: float = ..., dealias: bool = ...,
                   device: str | torch.device = ..., return_info: bool = ...
                   ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]: ...
def solve_spectral(
    u0: Any,
    t: Any,
    *,
    length: float,
    linear: torch.Tensor | np.ndarray,
    nonlinear_coef: float = 1.0,
    dt: float = 1e-3,
    dealias: bool = True,
    device: str | torch.device = "cpu",
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    r"""Solve :math:`\hat u_t = \hat{\mathcal L}\hat u - \tfrac{c}{2} i k \widehat{u^2}` by ETDRK4.

    The generic periodic solver behind :func:`solve_burgers`, :func:`solve_kdv` and
    :func:`solve_kuramoto_sivashinsky`.

    Parameters
    ----------
    u0
        Initial states ``[..., n]`` (NumPy array or tensor), on the grid
        ``x_i = i L / n``.
    t
        Output times, increasing, ``t[0]`` the time of ``u0``.
    length
        Period :math:`L`.
    linear
        :math:`\hat{\mathcal L}(k)` on the ``rfft`` wavenumbers ``2 pi m / L``,
        ``m = 0..n//2`` (real or complex).
    nonlinear_coef
        :math:`c` in the nonlinear term :math:`-c\,u u_x`.
    dt
        Largest time step; each output interval is split into equal steps no longer
        than ``dt`` so that the solver lands on every output time exactly.
    dealias
        Apply the 2/3 rule to the nonlinear term.
    device
        Torch device of the computation.
    return_info
        Also return ``{"steps", "nfe", "dt"}`` (time steps, evaluations of the
        nonlinear term — 4 per ETDRK4 step — and the largest step used).

    Returns
    -------
    ndarray ``[..., len(t), n]`` (float64), and the info dict with ``return_info``.

    Examples
    --------
    >>> n, L = 32, 2 * np.pi
    >>> x = np.arange(n) * L / n
    >>> k = 2 * np.pi / L * np.arange(n // 2 + 1)
    >>> u = solve_spectral(np.sin(x), [0.0, 1.0], length=L, linear=-k**2, nonlinear_coef=0.0)
    >>> bool(np.allclose(u[-1], np.exp(-1.0) * np.sin(x)))
    True
    """
    dev = torch.device(device)
    u = torch.as_tensor(np.asarray(u0) if not torch.is_tensor(u0) else u0, dtype=torch.float64,
                        device=dev)
    if u.ndim < 1 or u.shape[-1] < 4:
        raise ValueError(f"u0 must have a last (space) dimension of at least 4 points, got shape "
                         f"{tuple(u.shape)}")
    if not torch.isfinite(u).all():
        raise ValueError("u0 contains NaN or infinite values")
    tt = np.asarray(t, dtype=np.float64)
    if tt.ndim != 1 or tt.size == 0 or np.any(np.diff(tt) <= 0) or not np.all(np.isfinite(tt)):
        raise ValueError("t must be a non-empty, strictly increasing 1-D sequence of finite times")
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if not (length > 0 and math.isfinite(length)):
        raise ValueError(f"length must be a positive number, got {length!r}")
    n = int(u.shape[-1])
    k = _wavenumbers(n, length, dev)
    lin = torch.as_tensor(linear, device=dev)
    lin = lin.to(torch.complex128 if torch.is_complex(lin) else torch.float64)
    if lin.shape != k.shape:
        raise ValueError(f"linear must have n // 2 + 1 = {k.numel()} entries, got {tuple(lin.shape)}")
    # derivative of the nonlinear flux; the Nyquist mode of an odd derivative is zero
    g = -0.5 * nonlinear_coef * 1j * k
    if n % 2 == 0:
        g[-1] = 0.0
    if dealias:
        g = torch.where(torch.arange(k.numel(), device=dev) <= n // 3, g, torch.zeros_like(g))

    def nl(v: torch.Tensor) -> torch.Tensor:
        phys = torch.fft.irfft(v, n=n)
        return g * torch.fft.rfft(phys * phys)

    v = torch.fft.rfft(u)
    out = torch.empty(*u.shape[:-1], tt.size, n, dtype=torch.float64, device=dev)
    out[..., 0, :] = u
    cache: dict[float, tuple] = {}
    steps, h_max = 0, 0.0
    for i in range(1, tt.size):
        span = tt[i] - tt[i - 1]
        m = max(1, int(math.ceil(span / dt - 1e-9)))
        h = span / m
        key = round(h, 15)
        if key not in cache:
            cache[key] = _etdrk4_coefficients(lin, h)
        e, e2, q, f1, f2, f3 = cache[key]
        for _ in range(m):
            nv = nl(v)
            a = e2 * v + q * nv
            na = nl(a)
            b = e2 * v + q * na
            nb = nl(b)
            c = e2 * a + q * (2.0 * nb - nv)
            nc = nl(c)
            v = e * v + nv * f1 + 2.0 * (na + nb) * f2 + nc * f3
        steps += m
        h_max = max(h_max, h)
        out[..., i, :] = torch.fft.irfft(v, n=n)
    res = out.cpu().numpy()
    if not np.all(np.isfinite(res)):
        raise FloatingPointError(f"the spectral solution blew up (dt={dt}); use a smaller dt or "
                                 "more grid points")
    if return_info:
        return res, {"steps": steps, "nfe": 4 * steps, "dt": h_max}
    return res


def _lin_burgers(n: int, length: float, nu: float) -> torch.Tensor:
    return -nu * _wavenumbers(n, length, torch.device("cpu")) ** 2


def _lin_ks(n: int, length: float, nu: float) -> torch.Tensor:
    k = _wavenumbers(n, length, torch.device("cpu"))
    return k**2 - nu * k**4


def _lin_kdv(n: int, length: float, beta: float) -> torch.Tensor:
    return 1j * beta * _wavenumbers(n, length, torch.device("cpu")).to(torch.complex128) ** 3


@overload
def solve_burgers(u0: Any, t: Any, *, length: float = ..., nu: float = ..., dt: float = ...,
                  device: str | torch.device = ..., return_info: Literal[False] = ...) -> np.ndarray: ...
@overload
def solve_burgers(u0: Any, t: Any, *, length: float = ..., nu: float = ..., dt: float = ...,
                  device: str | torch.device = ..., return_info: Literal[True]
                  ) -> tuple[np.ndarray, dict[str, Any]]: ...
@overload
def solve_burgers(u0: Any, t: Any, *, length: float = ..., nu: float = ..., dt: float = ...,
                  device: str | torch.device = ..., return_info: bool = ...
                  ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]: ...
def solve_burgers(u0: Any, t: Any, *, length: float = 2 * math.pi, nu: float = 0.05,
                  dt: float = 1e-3, device: str | torch.device = "cpu",
                  return_info: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    r"""Viscous Burgers :math:`u_t + u u_x = \nu u_{xx}`, periodic (see :func:`solve_spectral`).

    Examples
    --------
    >>> x = np.arange(64) * 2 * np.pi / 64
    >>> u = solve_burgers(np.sin(x), [0.0, 0.5], nu=0.1)
    >>> u.shape, bool(abs(u[-1].mean()) < 1e-12)
    ((2, 64), True)
    """
    if not nu >= 0:
        raise ValueError(f"nu must be >= 0, got {nu!r}")
    n = np.shape(u0)[-1]
    return solve_spectral(u0, t, length=length, linear=_lin_burgers(n, length, nu), dt=dt,
                          device=device, return_info=return_info)


@overload
def solve_kuramoto_sivashinsky(u0: Any, t: Any, *, length: float = ..., nu: float = ..., dt: float = ...,
                               device: str | torch.device = ..., return_info: Literal[False] = ...
                               ) -> np.ndarray: ...
@overload
def solve_kuramoto_sivashinsky(u0: Any, t: Any, *, length: float = ..., nu: float = ..., dt: float = ...,
                               device: str | torch.device = ..., return_info: Literal[True]
                               ) -> tuple[np.ndarray, dict[str, Any]]: ...
@overload
def solve_kuramoto_sivashinsky(u0: Any, t: Any, *, length: float = ..., nu: float = ..., dt: float = ...,
                               device: str | torch.device = ..., return_info: bool = ...
                               ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]: ...
def solve_kuramoto_sivashinsky(u0: Any, t: Any, *, length: float = 32 * math.pi, nu: float = 1.0,
                               dt: float = 0.05, device: str | torch.device = "cpu",
                               return_info: bool = False
                               ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    r"""Kuramoto–Sivashinsky :math:`u_t + u u_x + u_{xx} + \nu u_{xxxx} = 0`, periodic.

    See :func:`solve_spectral`.

    Examples
    --------
    >>> x = np.arange(64) * 8 * np.pi / 64
    >>> u = solve_kuramoto_sivashinsky(np.cos(x / 4), [0.0, 1.0], length=8 * np.pi)
    >>> u.shape
    (2, 64)
    """
    if not nu > 0:
        raise ValueError(f"nu must be > 0, got {nu!r}")
    n = np.shape(u0)[-1]
    return solve_spectral(u0, t, length=length, linear=_lin_ks(n, length, nu), dt=dt,
                          device=device, return_info=return_info)


@overload
def solve_kdv(u0: Any, t: Any, *, length: float = ..., alpha: float = ..., beta: float = ...,
              dt: float = ..., device: str | torch.device = ..., return_info: Literal[False] = ...
              ) -> np.ndarray: ...
@overload
def solve_kdv(u0: Any, t: Any, *, length: float = ..., alpha: float = ..., beta: float = ...,
              dt: float = ..., device: str | torch.device = ..., return_info: Literal[True]
              ) -> tuple[np.ndarray, dict[str, Any]]: ...
@overload
def solve_kdv(u0: Any, t: Any, *, length: float = ..., alpha: float = ..., beta: float = ...,
              dt: float = ..., device: str | torch.device = ..., return_info: bool = ...
              ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]: ...
def solve_kdv(u0: Any, t: Any, *, length: float = 20.0, alpha: float = 6.0, beta: float = 1.0,
              dt: float = 1e-3, device: str | torch.device = "cpu",
              return_info: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    r"""Korteweg–de Vries :math:`u_t + \alpha u u_x + \beta u_{xxx} = 0`, periodic.

    See :func:`solve_spectral`; :func:`kdv_soliton` is an exact solution.

    Examples
    --------
    >>> x = np.arange(128) * 20 / 128
    >>> u0 = kdv_soliton(x, 0.0, speed=1.0, x0=10.0, length=20.0)
    >>> u = solve_kdv(u0, [0.0, 1.0], length=20.0)
    >>> bool(np.abs(u[-1] - kdv_soliton(x, 1.0, speed=1.0, x0=10.0, length=20.0)).max() < 1e-3)
    True
    """
    if beta == 0:
        raise ValueError("beta must be non-zero (without dispersion use solve_burgers with nu=0)")
    n = np.shape(u0)[-1]
    return solve_spectral(u0, t, length=length, linear=_lin_kdv(n, length, beta),
                          nonlinear_coef=alpha, dt=dt, device=device, return_info=return_info)


def kdv_soliton(x: Any, t: float, *, speed: float, x0: float = 0.0, length: float | None = None,
                alpha: float = 6.0, beta: float = 1.0) -> np.ndarray:
    r"""The KdV soliton :math:`u = \frac{3c}{\alpha}\,\mathrm{sech}^2\!\big(\tfrac12\sqrt{c/\beta}\,(x - x_0 - ct)\big)`.

    With ``length`` the soliton is wrapped on the periodic domain (nearest images summed:
    exact up to its exponentially small tails).

    Examples
    --------
    >>> float(kdv_soliton(np.array([3.0]), 1.0, speed=2.0, x0=1.0)[0])  # peak c/2 for alpha=6
    1.0
    """  # noqa: E501
    if not (speed > 0 and beta > 0):
        raise ValueError("the soliton needs speed > 0 and beta > 0")
    x = np.asarray(x, dtype=np.float64)
    centre = x0 + speed * t
    amp, width = 3.0 * speed / alpha, 0.5 * math.sqrt(speed / beta)
    if length is None:
        return amp / np.cosh(width * (x - centre)) ** 2
    d = np.mod(x - centre + 0.5 * length, length) - 0.5 * length
    return sum(amp / np.cosh(width * (d + s * length)) ** 2 for s in (-1, 0, 1))


# =========================================================================== datasets
def _check_common(n_trajectories: int, n_points: int, n_frames: int, t_max: float, dt: float) -> None:
    for name, v, lo in (("n_trajectories", n_trajectories, 1), ("n_points", n_points, 8),
                        ("n_frames", n_frames, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not (t_max > 0 and dt > 0):
        raise ValueError(f"t_max and dt must be positive, got t_max={t_max!r}, dt={dt!r}")


def _fourier_ic(rng: np.random.Generator, n_traj: int, x: np.ndarray, length: float,
                modes: int, amplitude: float) -> np.ndarray:
    """Random smooth periodic states: modes 1..``modes`` with amplitudes ~ 1/m, RMS ``amplitude``."""
    m = np.arange(1, modes + 1)
    a = rng.normal(size=(n_traj, modes)) / m
    b = rng.normal(size=(n_traj, modes)) / m
    ph = 2 * np.pi * m[None, :, None] * x[None, None, :] / length
    u = (a[..., None] * np.cos(ph) + b[..., None] * np.sin(ph)).sum(1)
    rms = np.sqrt((u**2).mean(-1, keepdims=True))
    return amplitude * u / rms


def _to_dataset(u: np.ndarray, times: np.ndarray, x: np.ndarray, *, title: str, equation: str,
                params: dict[str, Any], dtype: Any, long_name: str) -> xr.Dataset:
    coords = {
        "trajectory": np.arange(u.shape[0]),
        "time": xr.Variable("time", times, attrs={"units": "1", "long_name": "time", "axis": "T"}),
        "x": xr.Variable("x", x, attrs={"units": "1", "long_name": "position (periodic)",
                                        "period": float(params["length"])}),
    }
    da = xr.DataArray(u.astype(dtype), dims=("trajectory", "time", "x"), coords=coords,
                      attrs={"units": "1", "long_name": long_name, "description": equation})
    attrs: dict[str, str | int | float] = {"title": title, "equation": equation,
             "source": "xsciml.pde1d (pseudo-spectral, ETDRK4, 2/3 dealiasing)"}
    attrs.update({k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in params.items()})
    return xr.Dataset({"u": da}, attrs=attrs)


def _times(n_frames: int, t_max: float) -> np.ndarray:
    return np.linspace(0.0, float(t_max), int(n_frames))


def burgers(n_trajectories: int = 8, n_points: int = 128, *, n_frames: int = 41,
            t_max: float = 2.0, dt: float = 1e-3, nu: float = 0.05, length: float = 2 * math.pi,
            modes: int = 3, amplitude: float = 1.0, seed: int | None = 0,
            dtype: Any = "float32") -> xr.Dataset:
    r"""Trajectories of the periodic viscous Burgers equation :math:`u_t + u u_x = \nu u_{xx}`.

    Initial states are random smooth Fourier series (modes ``1..modes``, amplitudes
    :math:`\propto 1/m`, zero mean, RMS ``amplitude``); fronts steepen into viscous
    shocks of width :math:`\sim \nu / \Delta u` and travel.

    Parameters
    ----------
    n_trajectories
        Number of initial states.
    n_points
        Number of grid points on ``[0, length)``.
    n_frames
        Number of frames, stored at ``linspace(0, t_max, n_frames)``.
    t_max
        Time of the last frame.
    dt
        Solver step (ETDRK4, :func:`solve_burgers`).
    nu
        Viscosity (hyperviscosity for Kuramoto–Sivashinsky).
    length
        Period of the domain.
    modes
        Initial states.
    amplitude
        Initial states.
    seed
        Initial states.
    dtype
        dtype of ``u``.

    Returns
    -------
    Dataset with ``u`` over ``(trajectory, time, x)``.

    Examples
    --------
    >>> ds = burgers(2, 32, n_frames=3, t_max=0.1)
    >>> ds["u"].dims, ds["u"].shape
    (('trajectory', 'time', 'x'), (2, 3, 32))
    """
    _check_common(n_trajectories, n_points, n_frames, t_max, dt)
    rng = np.random.default_rng(seed)
    x = np.arange(n_points) * length / n_points
    u0 = _fourier_ic(rng, n_trajectories, x, length, modes, amplitude)
    times = _times(n_frames, t_max)
    u = solve_burgers(u0, times, length=length, nu=nu, dt=dt)
    eq = f"u_t + u u_x = nu u_xx, nu = {nu:g}, periodic on [0, {length:g})"
    return _to_dataset(u, times, x, title="1-D viscous Burgers", equation=eq,
                       params={"nu": float(nu), "length": float(length), "dt": float(dt),
                               "modes": int(modes), "amplitude": float(amplitude),
                               "seed": -1 if seed is None else int(seed)},
                       dtype=dtype, long_name="velocity")


def kuramoto_sivashinsky(n_trajectories: int = 8, n_points: int = 128, *, n_frames: int = 41,
                         t_max: float = 20.0, dt: float = 0.01, nu: float = 1.0,
                         length: float = 8 * math.pi, modes: int = 3, amplitude: float = 1.0,
                         spinup: float = 0.0, seed: int | None = 0,
                         dtype: Any = "float32") -> xr.Dataset:
    r"""Trajectories of the periodic Kuramoto–Sivashinsky equation.

    :math:`u_t + u u_x + u_{xx} + \nu u_{xxxx} = 0` on ``[0, length)``: the modes with
    :math:`k^2 < 1/\nu` grow, the nonlinearity moves energy to short waves where
    hyperdiffusion removes it. Small domains (the default :math:`8\pi`, three unstable
    modes) give travelling/cellular patterns after a transient; :math:`L \gtrsim 22`
    becomes chaotic.

    Parameters
    ----------
    n_trajectories
        As in :func:`burgers`.
    n_points
        As in :func:`burgers`.
    n_frames
        As in :func:`burgers`.
    t_max
        As in :func:`burgers`.
    dt
        As in :func:`burgers`.
    nu
        Viscosity (hyperviscosity for Kuramoto–Sivashinsky).
    length
        Period of the domain.
    modes
        Random smooth initial states (see :func:`burgers`).
    amplitude
        Random smooth initial states (see :func:`burgers`).
    spinup
        Time integrated (and discarded) before the first stored frame.
    seed
        Seed of the random initial states.
    dtype
        dtype of ``u``.

    Examples
    --------
    >>> ds = kuramoto_sivashinsky(2, 32, n_frames=3, t_max=1.0)
    >>> ds["u"].shape, ds.attrs["title"]
    ((2, 3, 32), '1-D Kuramoto-Sivashinsky')
    """
    _check_common(n_trajectories, n_points, n_frames, t_max, dt)
    if spinup < 0:
        raise ValueError(f"spinup must be >= 0, got {spinup!r}")
    rng = np.random.default_rng(seed)
    x = np.arange(n_points) * length / n_points
    u0 = _fourier_ic(rng, n_trajectories, x, length, modes, amplitude)
    if spinup > 0:
        u0 = solve_kuramoto_sivashinsky(u0, [0.0, spinup], length=length, nu=nu, dt=dt)[..., -1, :]
    times = _times(n_frames, t_max)
    u = solve_kuramoto_sivashinsky(u0, times, length=length, nu=nu, dt=dt)
    eq = f"u_t + u u_x + u_xx + nu u_xxxx = 0, nu = {nu:g}, periodic on [0, {length:g})"
    return _to_dataset(u, times, x, title="1-D Kuramoto-Sivashinsky", equation=eq,
                       params={"nu": float(nu), "length": float(length), "dt": float(dt),
                               "modes": int(modes), "amplitude": float(amplitude),
                               "spinup": float(spinup), "seed": -1 if seed is None else int(seed)},
                       dtype=dtype, long_name="u")


def kdv(n_trajectories: int = 8, n_points: int = 128, *, n_frames: int = 41, t_max: float = 4.0,
        dt: float = 1e-3, alpha: float = 6.0, beta: float = 1.0, length: float = 20.0,
        n_solitons: int = 2, speeds: tuple[float, float] = (0.5, 2.0), seed: int | None = 0,
        dtype: Any = "float32") -> xr.Dataset:
    r"""Trajectories of the periodic Korteweg–de Vries equation :math:`u_t + \alpha u u_x + \beta u_{xxx} = 0`.

    Initial states are sums of ``n_solitons`` solitons (:func:`kdv_soliton`) with random
    speeds in ``speeds`` and random positions: smooth, and advection-dominated — the
    solitons travel at their speeds, and faster ones overtake slower ones with a phase
    shift (an elastic, nonlinear interaction).

    Parameters
    ----------
    n_trajectories
        As in :func:`burgers`.
    n_points
        As in :func:`burgers`.
    n_frames
        As in :func:`burgers`.
    t_max
        As in :func:`burgers`.
    dt
        As in :func:`burgers`.
    alpha
        Coefficient of the nonlinear term.
    beta
        Coefficient of the dispersive term.
    length
        Period of the domain.
    n_solitons
        Initial states.
    speeds
        Initial states.
    seed
        Seed of the random initial states.
    dtype
        dtype of ``u``.

    Examples
    --------
    >>> ds = kdv(2, 64, n_frames=3, t_max=0.1)
    >>> ds["u"].shape, ds.attrs["alpha"]
    ((2, 3, 64), 6.0)
    """
    _check_common(n_trajectories, n_points, n_frames, t_max, dt)
    from ._utils import check_positive_int

    check_positive_int(n_solitons, "n_solitons")
    lo, hi = (float(s) for s in speeds)
    if not 0 < lo <= hi:
        raise ValueError(f"speeds must be (low, high) with 0 < low <= high, got {speeds!r}")
    rng = np.random.default_rng(seed)
    x = np.arange(n_points) * length / n_points
    c = rng.uniform(lo, hi, size=(n_trajectories, n_solitons))
    x0 = rng.uniform(0, length, size=(n_trajectories, n_solitons))
    u0 = np.zeros((n_trajectories, n_points))
    for i in range(n_trajectories):
        for j in range(n_solitons):
            u0[i] += kdv_soliton(x, 0.0, speed=c[i, j], x0=x0[i, j], length=length,
                                 alpha=alpha, beta=beta)
    times = _times(n_frames, t_max)
    u = solve_kdv(u0, times, length=length, alpha=alpha, beta=beta, dt=dt)
    eq = (f"u_t + alpha u u_x + beta u_xxx = 0, alpha = {alpha:g}, beta = {beta:g}, "
          f"periodic on [0, {length:g})")
    return _to_dataset(u, times, x, title="1-D Korteweg-de Vries", equation=eq,
                       params={"alpha": float(alpha), "beta": float(beta), "length": float(length),
                               "dt": float(dt), "n_solitons": int(n_solitons),
                               "speeds": f"{lo:g}..{hi:g}",
                               "seed": -1 if seed is None else int(seed)},
                       dtype=dtype, long_name="u")

