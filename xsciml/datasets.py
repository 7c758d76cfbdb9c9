"""Built-in synthetic datasets, returned as :class:`xarray.Dataset`.

Every generator is deterministic given ``seed`` (a :func:`numpy.random.default_rng`
seed), computes in float64 and returns float32 data variables unless ``dtype`` says
otherwise. Nothing here reads a file, so these are the embedded default data of the
demo and of the tests.

Conventions
-----------
Periodic grids have ``size`` cells on ``[lo, hi)``; coordinate ``i`` sits at
``lo + i * (hi - lo) / size`` (the right end point is excluded because it is the same
point as the left one). For 2-D grids, shapes and per-dimension domains are given in
``(y, x)`` order, matching the dimension order ``(..., "y", "x")``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "gaussian_random_field",
    "grf_covariance",
    "heat",
    "heat_solve",
    "default_dataset",
    "sample_points",
    "subsample",
]

_SPACE_DIMS = {1: ("x",), 2: ("y", "x")}


# --------------------------------------------------------------------------- helpers
def _parse_shape(shape: int | Sequence[int], name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        out = tuple(int(s) for s in shape)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(
            f"{name} must be an int or a tuple of 1 or 2 ints, got {shape!r}."
        ) from None
    if len(out) not in (1, 2):
        raise ValueError(f"{name} must have 1 or 2 entries (1-D or 2-D grid), got {shape!r}.")
    if any(s < 2 for s in out):
        raise ValueError(f"{name} entries must be >= 2 grid cells, got {shape!r}.")
    return out


def _parse_domain(domain: Any, ndim: int) -> tuple[tuple[float, float], ...]:
    """``(lo, hi)`` for every dimension, or one ``(lo, hi)`` per dimension (y, x order)."""
    msg = (
        f"domain must be (lo, hi) or a tuple of {ndim} (lo, hi) pairs in (y, x) order, "
        f"with lo < hi; got {domain!r}."
    )
    try:
        arr = np.asarray(domain, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(msg) from None
    if arr.shape == (2,):
        arr = np.broadcast_to(arr, (ndim, 2))
    if arr.shape != (ndim, 2) or not np.all(np.isfinite(arr)) or np.any(arr[:, 1] <= arr[:, 0]):
        raise ValueError(msg)
    return tuple((float(lo), float(hi)) for lo, hi in arr)


def _cell_coords(
    bounds: tuple[tuple[float, float], ...], shape: tuple[int, ...]
) -> list[np.ndarray]:
    return [lo + np.arange(n) * (hi - lo) / n for (lo, hi), n in zip(bounds, shape, strict=True)]


def _squared_wavenumber(
    shape: tuple[int, ...], lengths: Sequence[float] | np.ndarray, rfft: bool = False
) -> np.ndarray:
    """``|2 pi k / L|^2`` on the FFT grid (last axis halved when ``rfft``)."""
    axes = []
    for i, (n, length) in enumerate(zip(shape, lengths, strict=True)):
        last = i == len(shape) - 1
        freq = (
            np.fft.rfftfreq(n, d=length / n) if (rfft and last) else np.fft.fftfreq(n, d=length / n)
        )
        axes.append((2.0 * np.pi * freq) ** 2)
    grids = np.meshgrid(*axes, indexing="ij")
    return np.sum(grids, axis=0)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def _grf_eigenvalues(
    shape: tuple[int, ...], lengths: Sequence[float], alpha: float, tau: float, sigma: float
) -> np.ndarray:
    """Eigenvalues ``sigma^2 (|kappa|^2 + tau^2)^(-alpha)`` with the mean mode set to 0."""
    lam = sigma**2 * (_squared_wavenumber(shape, lengths) + tau**2) ** (-alpha)
    lam[(0,) * len(shape)] = 0.0
    return lam


def _default_sigma(alpha: float, tau: float, d: int) -> float:
    """The amplitude ``tau^(alpha - d / 2)`` of the GRFs when none is given (DINo's)."""
    return float(tau ** (0.5 * (2.0 * alpha - d)))


def _sample_grf(
    shape: tuple[int, ...],
    n: int,
    lengths: Sequence[float],
    alpha: float,
    tau: float,
    sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n`` float64 GRF samples of ``shape`` (see :func:`gaussian_random_field`)."""
    lam = _grf_eigenvalues(shape, lengths, alpha, tau, sigma)
    scale = np.sqrt(lam / np.prod(lengths))
    coeff = rng.standard_normal((n, *shape)) + 1j * rng.standard_normal((n, *shape))
    axes = tuple(range(-len(shape), 0))
    # norm="forward" puts no 1/N on the inverse transform: u(x_j) = sum_k c_k exp(i kappa.x_j),
    # the truncated Fourier series evaluated on the grid, whatever the resolution.
    return np.fft.ifftn(coeff * scale, axes=axes, norm="forward").real


def _check_counts(n_trajectories: int, n_frames: int) -> None:
    from ._utils import check_positive_int

    check_positive_int(n_trajectories, "n_trajectories")
    check_positive_int(n_frames, "n_frames")


def _grf_initial_states(n_trajectories: int, size: Any, domain: Any, alpha: float, tau: float,
                        seed: int | None, equation: str):
    """``(shape, bounds, lengths, sigma, u0)``: 2-D GRF initial states of a periodic PDE.

    ``sigma = tau^(alpha - 1)`` (``tau^(0.5 (2 alpha - d))`` with d = 2), as in DINo.
    """
    shp = _parse_shape((size, size) if np.ndim(size) == 0 else size, name="size")
    if len(shp) != 2:
        raise ValueError(f"size must be an int or (ny, nx) for the 2-D {equation} equation, got {size!r}.")
    bounds = _parse_domain(domain, 2)
    lengths = [hi - lo for lo, hi in bounds]
    sigma = _default_sigma(alpha, tau, 2)
    rng = np.random.default_rng(seed)
    u0 = _sample_grf(shp, int(n_trajectories), lengths, alpha, tau, sigma, rng)
    return shp, bounds, lengths, sigma, u0


def _space_coords(bounds, shape, units: str = "1") -> dict[str, xr.Variable]:
    dims = _SPACE_DIMS[len(shape)]
    coords = {}
    for dim, values, (lo, hi) in zip(dims, _cell_coords(bounds, shape), bounds, strict=True):
        coords[dim] = xr.Variable(
            dim,
            values,
            attrs={
                "units": units,
                "axis": dim.upper(),
                "long_name": dim,
                "comment": f"periodic on [{lo:g}, {hi:g}), cell positions lo + i * (hi - lo) / n",
            },
        )
    return coords


# --------------------------------------------------------------------------- GRF
def gaussian_random_field(
    shape: int | tuple[int] | tuple[int, int],
    n: int = 1,
    *,
    alpha: float = 2.0,
    tau: float = 3.0,
    sigma: float | None = None,
    domain: tuple[float, float] | tuple[tuple[float, float], ...] = (-1.0, 1.0),
    seed: int | None = 0,
    name: str = "u",
    dtype: Any = "float32",
) -> xr.Dataset:
    r"""Periodic Gaussian random fields on a 1-D or 2-D grid (spectral sampler).

    The field is centred Gaussian with covariance operator
    :math:`C = \sigma^2 (-\Delta + \tau^2 I)^{-\alpha}` on the periodic box
    (the sampler of the FNO / DINo heat-equation data). With
    :math:`\kappa_k = 2\pi k / L` the Laplacian eigen-wavenumbers of the box and
    :math:`\lambda_k = \sigma^2 (|\kappa_k|^2 + \tau^2)^{-\alpha}` (and
    :math:`\lambda_0 = 0`, so every sample has zero spatial mean), a sample is

    .. math:: u(x) = \mathrm{Re} \sum_k \sqrt{\lambda_k / |D|}\,(a_k + i b_k)\,
              e^{i \kappa_k \cdot (x - x_0)},\qquad a_k, b_k \sim N(0, 1),

    with :math:`|D|` the box volume. This is the Karhunen-Loeve expansion of ``C`` in
    the :math:`L^2`-orthonormal Fourier basis: the covariance is exactly
    :math:`\sum_k \lambda_k \cos(\kappa_k\cdot(x-y)) / |D|`. It is evaluated with an
    inverse FFT with ``norm="forward"`` (no ``1/N`` factor), so each Fourier mode has the
    same distribution at every resolution: a finer grid only adds higher modes. In
    particular the forward-normalised DFT of a sample, ``fftn(u, norm="forward")``,
    has :math:`E|\hat u_k|^2 = \lambda_k / |D|`. (The FNO code uses the same
    eigenvalues with an extra factor :math:`\sqrt{2}` and a unit box.)

    Parameters
    ----------
    shape
        Grid size: ``nx`` (1-D) or ``(ny, nx)`` (2-D).
    n
        Number of independent samples.
    alpha
        Smoothness exponent of the covariance operator. Samples are continuous
        functions in the grid-refinement limit when ``alpha > d / 2``.
    tau
        Inverse length scale of the covariance operator.
    sigma
        Amplitude; defaults to ``tau ** (0.5 * (2 * alpha - d))``.
    domain
        ``(lo, hi)`` for every dimension, or one pair per dimension in ``(y, x)`` order.
    seed
        Seed for :func:`numpy.random.default_rng`.
    name
        Name of the data variable.
    dtype
        dtype of the data variable (coordinates stay float64).

    Returns
    -------
    xarray.Dataset
        Variable ``name`` with dims ``("sample", "x")`` or ``("sample", "y", "x")``.

    Examples
    --------
    >>> ds = gaussian_random_field((32, 32), n=4, alpha=2.5, tau=7.0, seed=1)
    >>> ds["u"].dims
    ('sample', 'y', 'x')
    >>> bool(abs(ds["u"].mean(("y", "x"))).max() < 1e-6)
    True
    """
    shp = _parse_shape(shape)
    d = len(shp)
    if int(n) < 1:
        raise ValueError(f"n (number of samples) must be >= 1, got {n!r}.")
    _check_positive(alpha=alpha, tau=tau)
    if sigma is None:
        sigma = _default_sigma(alpha, tau, d)
    _check_positive(sigma=sigma)
    bounds = _parse_domain(domain, d)
    lengths = [hi - lo for lo, hi in bounds]
    rng = np.random.default_rng(seed)
    u = _sample_grf(shp, int(n), lengths, alpha, tau, sigma, rng)

    dims = ("sample", *_SPACE_DIMS[d])
    coords = {"sample": np.arange(int(n)), **_space_coords(bounds, shp)}
    da = xr.DataArray(
        u.astype(dtype),
        dims=dims,
        coords=coords,
        attrs={
            "units": "1",
            "long_name": "Gaussian random field",
            "covariance": "sigma^2 (-Laplacian + tau^2 I)^(-alpha), periodic, mean mode removed",
        },
    )
    return xr.Dataset(
        {name: da},
        attrs={
            "title": f"{d}-D periodic Gaussian random field",
            "source": "xsciml.datasets.gaussian_random_field (spectral sampler)",
            "alpha": float(alpha),
            "tau": float(tau),
            "sigma": float(sigma),
            "seed": -1 if seed is None else int(seed),
            "domain": np.asarray(bounds, dtype=float).ravel(),
        },
    )


def grf_covariance(
    shape: int | tuple[int] | tuple[int, int],
    *,
    alpha: float = 2.0,
    tau: float = 3.0,
    sigma: float | None = None,
    domain: tuple[float, float] | tuple[tuple[float, float], ...] = (-1.0, 1.0),
) -> np.ndarray:
    r"""The covariance of :func:`gaussian_random_field` (and of the initial states of
    :func:`heat`) between grid points, by their offset.

    The fields are stationary and periodic, so the covariance of the values at two grid
    points depends only on their offset :math:`j` (in cells, modulo the grid):
    :math:`C_j = \sum_k \lambda_k \cos(\kappa_k \cdot x_j) / |D|`, with the eigenvalues
    :math:`\lambda_k` of :func:`gaussian_random_field` (the same ``alpha``, ``tau``,
    ``sigma`` and ``domain``). It gives, for example, the exact kriging (optimal
    interpolation) of a sample from some of its points.

    Parameters
    ----------
    shape, alpha, tau, sigma, domain
        As for :func:`gaussian_random_field`.

    Returns
    -------
    numpy.ndarray
        float64 array of ``shape``: ``C[j]`` is the covariance of ``u(x)`` and
        ``u(x + j h)`` (``h`` the cell size), whatever ``x``.

    Examples
    --------
    >>> C = grf_covariance((32, 32), alpha=2.5, tau=7.0)
    >>> u = gaussian_random_field((32, 32), n=2000, alpha=2.5, tau=7.0, seed=0, dtype="float64")["u"]
    >>> bool(abs(float(u.var("sample").mean()) / C[0, 0] - 1) < 0.05)  # the variance at a point
    True
    """
    shp = _parse_shape(shape)
    d = len(shp)
    _check_positive(alpha=alpha, tau=tau)
    sigma = _default_sigma(alpha, tau, d) if sigma is None else sigma
    _check_positive(sigma=sigma)
    lengths = [hi - lo for lo, hi in _parse_domain(domain, d)]
    lam = _grf_eigenvalues(shp, lengths, alpha, tau, sigma)
    # the inverse transform without 1/N sums lambda_k exp(i kappa_k . x_j) over the modes
    return np.fft.ifftn(lam, norm="forward").real / float(np.prod(lengths))


# --------------------------------------------------------------------------- heat
def heat_solve(
    u0: np.ndarray,
    times: Sequence[float] | np.ndarray,
    diffusivity: float,
    length: float | tuple[float, float],
) -> np.ndarray:
    r"""Exact solution of the periodic 2-D heat equation, in Fourier space.

    Solves :math:`\partial_t u = D \Delta u` on the periodic box of side(s) ``length``
    from the grid values ``u0`` (read as a trigonometric interpolant):
    :math:`\hat u(k, t) = \hat u(k, 0)\, e^{-D |2\pi k / L|^2 t}`. Computed in float64.

    Parameters
    ----------
    u0
        Initial states, shape ``(..., H, W)``.
    times
        1-D non-negative times at which to return the solution.
    diffusivity
        Diffusion coefficient ``D >= 0`` (in length^2 per unit time).
    length
        Box side, or ``(Ly, Lx)``.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(..., T, H, W)``.

    Examples
    --------
    >>> x = np.arange(16) * 2 * np.pi / 16
    >>> u0 = np.broadcast_to(np.sin(x), (16, 16))            # one Fourier mode along x
    >>> u = heat_solve(u0, [0.0, 1.0], diffusivity=0.5, length=2 * np.pi)
    >>> bool(np.allclose(u[1], u0 * np.exp(-0.5)))
    True
    """
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim < 2:
        raise ValueError(
            f"u0 must have shape (..., H, W) with at least 2 dims, got shape {u0.shape}."
        )
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times must be 1-D, got shape {t.shape}.")
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise ValueError("times must be finite and >= 0 (the backward heat equation is ill-posed).")
    if not np.isfinite(diffusivity) or diffusivity < 0:
        raise ValueError(f"diffusivity must be a finite number >= 0, got {diffusivity!r}.")
    lengths = np.broadcast_to(np.asarray(length, dtype=np.float64), (2,))
    if np.any(~np.isfinite(lengths)) or np.any(lengths <= 0):
        raise ValueError(f"length must be positive (a float or (Ly, Lx)), got {length!r}.")
    if not np.all(np.isfinite(u0)):
        raise ValueError("u0 contains NaN or inf; the spectral solver needs a complete field.")

    h, w = u0.shape[-2:]
    kappa2 = _squared_wavenumber((h, w), lengths, rfft=True)
    decay = np.exp(-diffusivity * t[:, None, None] * kappa2)  # (T, H, W//2+1)
    u_hat = np.fft.rfft2(u0)[..., None, :, :] * decay
    return np.fft.irfft2(u_hat, s=(h, w))


def _time_coord(times: np.ndarray, time_units: str | None, start: str) -> xr.Variable:
    if time_units is None:
        return xr.Variable(
            "time", times, attrs={"units": "1", "long_name": "time (nondimensional)", "axis": "T"}
        )
    try:
        unit = pd.to_timedelta(time_units)
    except (TypeError, ValueError):
        raise ValueError(
            f"time_units must be a duration string such as '1h' or '6h' (one unit of model "
            f"time), got {time_units!r}."
        ) from None
    if unit <= pd.Timedelta(0):
        raise ValueError(f"time_units must be a positive duration, got {time_units!r}.")
    try:
        t0 = pd.Timestamp(start)
    except (TypeError, ValueError):
        raise ValueError(
            f"start must be a date string such as '2000-01-01', got {start!r}."
        ) from None
    offsets = pd.to_timedelta(np.rint(times * unit.value).astype(np.int64), unit="ns")
    values = (t0 + offsets).to_numpy().astype("datetime64[ns]")
    # No "units" attr here: xarray's CF encoder sets it for datetime64 variables.
    return xr.Variable(
        "time",
        values,
        attrs={"long_name": "time", "axis": "T", "model_time_unit": str(time_units)},
    )


def heat(
    n_trajectories: int = 8,
    size: int | tuple[int, int] = 64,
    *,
    diffusivity: float = 0.1,
    dt: float = 0.25,
    n_frames: int = 20,
    alpha: float = 2.5,
    tau: float = 7.0,
    domain: tuple[float, float] | tuple[tuple[float, float], tuple[float, float]] = (-1.0, 1.0),
    seed: int | None = 0,
    time_units: str | None = None,
    start: str = "2000-01-01",
    dtype: Any = "float32",
) -> xr.Dataset:
    r"""Trajectories of the 2-D periodic heat equation, solved exactly.

    Initial states are Gaussian random fields (:func:`gaussian_random_field` with
    ``alpha``, ``tau``) and are propagated exactly in Fourier space by
    :func:`heat_solve`. The defaults are the DINo heat-equation tutorial setting:
    64 x 64 grid on :math:`[-1, 1)^2`, ``D = 0.1``, GRF ``alpha=2.5, tau=7``, 20 frames
    every 0.25 time units.

    Parameters
    ----------
    n_trajectories
        Number of independent initial states.
    size
        Grid size ``n`` (square) or ``(ny, nx)``.
    diffusivity
        Diffusion coefficient ``D``.
    dt
        Time between stored frames: frames at ``t = 0, dt, ..., (n_frames - 1) * dt``.
    n_frames
        Number of stored frames.
    alpha
        Smoothness exponent of the Gaussian random field of the initial states (see
        :func:`gaussian_random_field`).
    tau
        Inverse length scale of that field.
    domain
        ``(lo, hi)`` for both axes, or ``((ylo, yhi), (xlo, xhi))``.
    seed
        Seed for :func:`numpy.random.default_rng`.
    time_units
        ``None`` gives a float ``time`` coordinate (nondimensional). A duration string
        such as ``"1h"`` or ``"1D"`` declares the length of one model time unit and gives a
        ``datetime64`` ``time`` coordinate ``start + t * time_units`` (so ``dt=0.25`` with
        ``"1D"`` means a frame every 6 hours).
    start
        First date of the datetime axis (only used with ``time_units``).
    dtype
        dtype of ``u``.

    Returns
    -------
    xarray.Dataset
        Variable ``u`` with dims ``("trajectory", "time", "y", "x")``.

    Examples
    --------
    >>> ds = heat(2, 16, n_frames=5, seed=3)
    >>> ds["u"].shape
    (2, 5, 16, 16)
    >>> heat(1, 8, n_frames=3, time_units="1D")["time"].dtype.kind
    'M'
    """
    _check_counts(n_trajectories, n_frames)
    _check_positive(dt=dt, alpha=alpha, tau=tau)
    if not np.isfinite(diffusivity) or diffusivity < 0:
        raise ValueError(f"diffusivity must be a finite number >= 0, got {diffusivity!r}.")
    shp, bounds, lengths, sigma, u0 = _grf_initial_states(n_trajectories, size, domain, alpha, tau,
                                                          seed, "heat")
    times = dt * np.arange(int(n_frames), dtype=np.float64)
    u = heat_solve(u0, times, diffusivity, tuple(lengths))

    (ylo, yhi), (xlo, xhi) = bounds
    description = (
        f"Exact Fourier solution of du/dt = D (d2u/dx2 + d2u/dy2), D = {diffusivity:g}, "
        f"periodic on [{xlo:g}, {xhi:g}) x [{ylo:g}, {yhi:g}); initial states are Gaussian "
        f"random fields with covariance sigma^2 (-Laplacian + tau^2 I)^(-alpha), "
        f"alpha = {alpha:g}, tau = {tau:g}, sigma = {sigma:g}."
    )
    coords = {
        "trajectory": np.arange(int(n_trajectories)),
        "time": _time_coord(times, time_units, start),
        **_space_coords(bounds, shp),
    }
    da = xr.DataArray(
        u.astype(dtype),
        dims=("trajectory", "time", "y", "x"),
        coords=coords,
        attrs={
            "units": "1",
            "long_name": "temperature (nondimensional)",
            "description": description,
        },
    )
    return xr.Dataset(
        {"u": da},
        attrs={
            "title": "2-D periodic heat equation",
            "source": "xsciml.datasets.heat (exact spectral solution)",
            "equation": "du/dt = D * Laplacian(u)",
            "diffusivity": float(diffusivity),
            "dt": float(dt),
            "alpha": float(alpha),
            "tau": float(tau),
            "sigma": sigma,
            "seed": -1 if seed is None else int(seed),
            "domain": np.asarray(bounds, dtype=float).ravel(),
        },
    )


# --------------------------------------------------------------------------- defaults
def default_dataset(kind: str = "heat", *, seed: int = 0) -> xr.Dataset:
    """A small, fast built-in dataset for demos and tests.

    Parameters
    ----------
    kind
        ``"heat"``: :func:`heat` with 4 trajectories on a 32 x 32 grid, 20 frames.
        ``"grf2d"``: 16 samples of a 32 x 32 :func:`gaussian_random_field`
        (``alpha=2.5, tau=7``).
    seed
        Seed of the generator.

    Examples
    --------
    >>> dict(default_dataset("heat").sizes)
    {'trajectory': 4, 'time': 20, 'y': 32, 'x': 32}
    """
    if kind == "heat":
        return heat(4, 32, n_frames=20, seed=seed)
    if kind == "grf2d":
        return gaussian_random_field((32, 32), n=16, alpha=2.5, tau=7.0, seed=seed)
    raise ValueError(f"kind must be 'heat' or 'grf2d', got {kind!r}.")


# --------------------------------------------------------------------------- masks
def sample_points(
    obj: xr.Dataset | xr.DataArray,
    fraction: float,
    seed: int | None = 0,
    *,
    dims: Hashable | Sequence[Hashable] | None = None,
) -> xr.DataArray:
    """Boolean mask keeping a random ``fraction`` of the points of ``obj``.

    Exactly ``round(fraction * n)`` (at least one) of the ``n`` points spanned by
    ``dims`` are kept, drawn without replacement. The mask only has ``dims``, so it
    broadcasts over every other dimension: ``dims=("y", "x")`` keeps the same
    "sensor" locations at every time.

    Parameters
    ----------
    obj
        Dataset or DataArray whose dimensions and coordinates the mask copies.
    fraction
        Fraction of points kept, in ``(0, 1]``.
    seed
        Seed for :func:`numpy.random.default_rng`.
    dims
        Dimensions the mask spans; default all dimensions of ``obj``.

    Returns
    -------
    xarray.DataArray
        Boolean mask named ``"mask"``.

    Examples
    --------
    >>> ds = heat(1, 8, n_frames=3)
    >>> m = sample_points(ds, 0.25, seed=0, dims=("y", "x"))
    >>> int(m.sum())
    16
    """
    if not isinstance(obj, (xr.Dataset, xr.DataArray)):
        raise TypeError(f"obj must be an xarray Dataset or DataArray, got {type(obj).__name__}.")
    if not (isinstance(fraction, (int, float, np.floating, np.integer)) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}.")
    if dims is None:
        dims = tuple(obj.dims)
    elif isinstance(dims, str) or not isinstance(dims, Sequence):
        dims = (dims,)
    dims = tuple(dims)
    missing = [d for d in dims if d not in obj.dims]
    if missing:
        raise KeyError(f"dims {missing} not found; available dims are {tuple(obj.dims)}.")
    if len(set(dims)) != len(dims):
        raise ValueError(f"dims must not repeat, got {dims}.")
    sizes = tuple(int(obj.sizes[d]) for d in dims)
    n = int(np.prod(sizes))
    k = max(1, int(round(float(fraction) * n)))
    rng = np.random.default_rng(seed)
    flat = np.zeros(n, dtype=bool)
    flat[rng.choice(n, size=k, replace=False)] = True
    coords = {
        name: c.variable for name, c in obj.coords.items() if c.dims and set(c.dims) <= set(dims)
    }
    return xr.DataArray(
        flat.reshape(sizes),
        dims=dims,
        coords=coords,
        name="mask",
        attrs={
            "long_name": "kept points",
            "fraction": float(fraction),
            "seed": -1 if seed is None else int(seed),
        },
    )


def subsample(
    obj: xr.DataArray | xr.Dataset,
    fraction: float,
    seed: int | None = 0,
    *,
    dims: Hashable | Sequence[Hashable] | None = None,
) -> xr.DataArray | xr.Dataset:
    """Keep a random ``fraction`` of the points of ``obj``; the others become NaN.

    Equivalent to ``obj.where(sample_points(obj, fraction, seed, dims=dims))``; lazy
    (dask-backed) inputs stay lazy.

    Examples
    --------
    >>> da = heat(1, 8, n_frames=2)["u"]
    >>> gappy = subsample(da, 0.5, seed=1, dims=("y", "x"))
    >>> int(gappy.isel(trajectory=0, time=0).notnull().sum())
    32
    """
    return obj.where(sample_points(obj, fraction, seed, dims=dims))


# --------------------------------------------------------------------------- wave
def wave(
    n_trajectories: int = 8,
    size: int | tuple[int, int] = 64,
    *,
    speed: float = 0.5,
    dt: float = 0.25,
    n_frames: int = 20,
    alpha: float = 3.0,
    tau: float = 5.0,
    domain: tuple[float, float] | tuple[tuple[float, float], tuple[float, float]] = (-1.0, 1.0),
    seed: int | None = 0,
    dtype: Any = "float32",
) -> xr.Dataset:
    r"""Trajectories of the 2-D periodic wave equation, solved exactly.

    Solves :math:`\partial_{tt} u = c^2 \Delta u` from a Gaussian-random-field
    displacement :math:`u_0` at rest (:math:`\partial_t u = 0`) in Fourier space:
    :math:`\hat u(k, t) = \hat u_0(k) \cos(c |k| t)`,
    :math:`\hat v(k, t) = -c |k| \hat u_0(k) \sin(c |k| t)` for the velocity
    :math:`v = \partial_t u`. The state has two channels, ``u`` and ``v`` (the wave
    equation is second order in time), so a first-order forecaster needs both.

    Parameters
    ----------
    n_trajectories
        Number of independent initial states.
    size
        Grid size ``n`` (square) or ``(ny, nx)``.
    speed
        Wave speed ``c``.
    dt
        Time between stored frames: frames at ``t = 0, dt, ..., (n_frames - 1) * dt``.
    n_frames
        Number of stored frames.
    alpha
        Smoothness exponent of the Gaussian random field of the initial displacement
        (see :func:`gaussian_random_field`).
    tau
        Inverse length scale of that field.
    domain
        ``(lo, hi)`` for both axes, or ``((ylo, yhi), (xlo, xhi))``.
    seed
        Seed for :func:`numpy.random.default_rng`.
    dtype
        dtype of the data variables.

    Returns
    -------
    xarray.Dataset
        Variables ``u`` and ``v`` with dims ``("trajectory", "time", "y", "x")``.

    Examples
    --------
    >>> ds = wave(2, 16, n_frames=5, seed=0)
    >>> sorted(ds.data_vars), ds["u"].shape
    (['u', 'v'], (2, 5, 16, 16))
    >>> bool(abs(ds["v"].isel(time=0)).max() == 0)
    True
    """
    _check_counts(n_trajectories, n_frames)
    _check_positive(speed=speed, dt=dt, alpha=alpha, tau=tau)
    shp, bounds, lengths, _, u0 = _grf_initial_states(n_trajectories, size, domain, alpha, tau,
                                                      seed, "wave")
    times = dt * np.arange(int(n_frames), dtype=np.float64)
    omega = speed * np.sqrt(_squared_wavenumber(shp, lengths, rfft=True))  # c |k|
    u_hat = np.fft.rfft2(u0)[:, None]  # (n, 1, H, W//2+1)
    phase = omega[None] * times[:, None, None]  # (T, H, W//2+1)
    u = np.fft.irfft2(u_hat * np.cos(phase), s=shp)
    v = np.fft.irfft2(-u_hat * omega * np.sin(phase), s=shp)
    coords = {"trajectory": np.arange(int(n_trajectories)),
              "time": xr.Variable("time", times, attrs={"units": "1", "long_name": "time"}),
              **_space_coords(bounds, shp)}
    dims = ("trajectory", "time", "y", "x")
    desc = (f"Exact Fourier solution of d2u/dt2 = c^2 Laplacian(u), c = {speed:g}, periodic; "
            f"u0 a Gaussian random field (alpha = {alpha:g}, tau = {tau:g}), v0 = 0.")
    return xr.Dataset(
        {"u": xr.DataArray(u.astype(dtype), dims=dims, coords=coords,
                           attrs={"units": "1", "long_name": "displacement", "description": desc}),
         "v": xr.DataArray(v.astype(dtype), dims=dims, coords=coords,
                           attrs={"units": "1", "long_name": "velocity du/dt", "description": desc})},
        attrs={"title": "2-D periodic wave equation",
               "source": "xsciml.datasets.wave (exact spectral solution)",
               "equation": "d2u/dt2 = c^2 Laplacian(u)", "speed": float(speed), "dt": float(dt),
               "alpha": float(alpha), "tau": float(tau), "seed": -1 if seed is None else int(seed),
               "domain": np.asarray(bounds, dtype=float).ravel()},
    )


# --------------------------------------------------------------------------- Navier-Stokes
def navier_stokes_solve(
    w0: np.ndarray,
    times: Sequence[float] | np.ndarray,
    *,
    viscosity: float = 1e-3,
    forcing: np.ndarray | None = None,
    length: float = 1.0,
    step: float = 1e-3,
    device: Any = "cpu",
) -> np.ndarray:
    r"""Pseudo-spectral solver of 2-D incompressible Navier--Stokes in vorticity form.

    Solves, on the periodic square of side ``length``,

    .. math::

        \partial_t w + \mathbf u \cdot \nabla w = \nu \Delta w + f, \qquad
        \mathbf u = (\partial_y \psi, -\partial_x \psi), \qquad -\Delta \psi = w,

    with Crank--Nicolson for the viscous term and Heun's predictor--corrector for the
    advection and forcing, the nonlinear term computed in physical space and
    de-aliased by the 2/3 rule (the classic scheme of the FNO / DINo data). The mean
    vorticity is kept at zero.

    Parameters
    ----------
    w0
        Initial vorticity, shape ``(..., n, n)`` (a square grid, ``y`` then ``x``).
    times
        Non-negative increasing output times (0 gives ``w0`` back).
    viscosity
        Kinematic viscosity :math:`\nu`.
    forcing
        Forcing :math:`f` on the grid, shape ``(n, n)`` (default none).
    length
        Side of the periodic square.
    step
        Time step; the last step before each output time is shortened to land on it.
    device
        Where the FFTs run (``torch.fft`` in float64): ``"cpu"`` (default), ``"cuda"``,
        or ``"auto"`` (a GPU when there is one). Timings against a learned model should
        use the model's device.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(..., T, n, n)``.

    Examples
    --------
    >>> n = 32
    >>> x = np.arange(n) / n
    >>> w0 = np.broadcast_to(np.sin(2 * np.pi * x), (n, n))   # a shear: a steady Euler flow
    >>> w = navier_stokes_solve(w0, [0.0, 1.0], viscosity=0.01)
    >>> bool(np.allclose(w[1], w0 * np.exp(-0.01 * (2 * np.pi) ** 2), atol=1e-6))
    True
    """
    w0 = np.asarray(w0, dtype=np.float64)
    if w0.ndim < 2 or w0.shape[-1] != w0.shape[-2]:
        raise ValueError(f"w0 must have shape (..., n, n) (a square grid), got {w0.shape}.")
    t_out = np.asarray(times, dtype=np.float64)
    if t_out.ndim != 1 or np.any(~np.isfinite(t_out)) or np.any(t_out < 0) or np.any(np.diff(t_out) < 0):
        raise ValueError("times must be a 1-D, finite, non-negative, increasing sequence.")
    _check_positive(viscosity=viscosity, length=length, step=step)
    if not np.all(np.isfinite(w0)):
        raise ValueError("w0 contains NaN or inf; the spectral solver needs a complete field.")
    import torch

    from ._utils import resolve_device

    dev = resolve_device(device)
    n = w0.shape[-1]
    if forcing is not None and np.shape(forcing) != (n, n):
        raise ValueError(f"forcing must have shape ({n}, {n}), got {np.shape(forcing)}.")
    if forcing is not None and not np.all(np.isfinite(forcing)):
        raise ValueError("forcing contains NaN or inf; it must be a complete field.")
    k = 2.0 * np.pi * np.fft.fftfreq(n, d=length / n)
    kr = 2.0 * np.pi * np.fft.rfftfreq(n, d=length / n)
    ky, kx = np.meshgrid(k, kr, indexing="ij")  # (n, n//2+1)
    k2 = kx**2 + ky**2
    inv_k2 = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    cut = (2.0 / 3.0) * np.max(np.abs(k))
    dealias = ((np.abs(kx) <= cut) & (np.abs(ky) <= cut)).astype(np.float64)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), device=dev)

    k2_t, dealias_t = tensor(k2), tensor(dealias)
    iky, ikx = tensor(1j * ky), tensor(1j * kx)
    psi_y, psi_x = tensor(1j * ky * inv_k2), tensor(-1j * kx * inv_k2)  # velocity from vorticity
    f_hat = (torch.zeros((), dtype=torch.complex128, device=dev) if forcing is None
             else torch.fft.rfft2(tensor(np.asarray(forcing, dtype=np.float64))))
    shape = (n, n)

    def advection(w_hat: torch.Tensor) -> torch.Tensor:
        u = torch.fft.irfft2(psi_y * w_hat, s=shape)
        v = torch.fft.irfft2(psi_x * w_hat, s=shape)
        wx = torch.fft.irfft2(ikx * w_hat, s=shape)
        wy = torch.fft.irfft2(iky * w_hat, s=shape)
        return torch.fft.rfft2(u * wx + v * wy) * dealias_t

    w_hat = torch.fft.rfft2(tensor(w0))
    w_hat[..., 0, 0] = 0.0
    out = np.empty(w0.shape[:-2] + (len(t_out), n, n))
    t = 0.0

    def cn_factors(h: float) -> tuple[torch.Tensor, torch.Tensor]:
        # Crank--Nicolson's implicit and explicit factors of the viscous term for step h
        return 1.0 + 0.5 * h * viscosity * k2_t, 1.0 - 0.5 * h * viscosity * k2_t

    full = cn_factors(step)  # every step but the shortened ones before an output time
    with torch.no_grad():
        for j, target in enumerate(t_out):
            while t < target - 1e-12:
                h = min(step, target - t)
                lhs, rhs_fac = full if h == step else cn_factors(h)
                rhs_lin = rhs_fac * w_hat
                n0 = f_hat - advection(w_hat)
                pred = (rhs_lin + h * n0) / lhs
                n1 = f_hat - advection(pred)
                w_hat = (rhs_lin + 0.5 * h * (n0 + n1)) / lhs
                w_hat[..., 0, 0] = 0.0
                t += h
            out[..., j, :, :] = torch.fft.irfft2(w_hat, s=shape).cpu().numpy()
    return out


def navier_stokes(
    n_trajectories: int = 8,
    size: int = 64,
    *,
    viscosity: float = 1e-3,
    dt: float = 1.0,
    n_frames: int = 20,
    t_start: float = 0.0,
    resolution: int | None = None,
    step: float = 1e-3,
    alpha: float = 2.5,
    tau: float = 7.0,
    seed: int | None = 0,
    dtype: Any = "float32",
    device: Any = "cpu",
) -> xr.Dataset:
    r"""2-D incompressible Navier--Stokes vorticity on the unit torus (the DINo setting).

    Initial vorticities are Gaussian random fields (``alpha=2.5, tau=7`` as in the FNO /
    DINo data) evolved by :func:`navier_stokes_solve` with viscosity ``1e-3`` and the
    forcing :math:`f(x, y) = 0.1 (\sin(2\pi(x + y)) + \cos(2\pi(x + y)))`; frames every
    ``dt = 1`` time unit, 20 frames (the paper trains on the first 10). The solve runs
    at ``resolution`` (default ``size``) and is subsampled to ``size``.

    Parameters
    ----------
    n_trajectories
        Number of independent initial states.
    size
        Output grid size (square, on :math:`[0, 1)^2`).
    viscosity
        Kinematic viscosity.
    dt
        Time between stored frames: frames at ``t_start + k dt``.
    n_frames
        Number of stored frames.
    t_start
        Time of the first stored frame; the flow is integrated from 0 (a spin-up ``t_start``
        drops the first transient).
    resolution
        Grid of the solver, a multiple of ``size`` (e.g. 256 for the paper's data).
    step
        Solver time step.
    alpha
        Smoothness exponent of the Gaussian random field of the initial vorticity (see
        :func:`gaussian_random_field`).
    tau
        Inverse length scale of that field.
    seed
        Seed for :func:`numpy.random.default_rng`.
    dtype
        dtype of ``vorticity``.
    device
        Where the solver's FFTs run (see :func:`navier_stokes_solve`).

    Returns
    -------
    xarray.Dataset
        Variable ``vorticity`` with dims ``("trajectory", "time", "y", "x")``.

    Examples
    --------
    >>> ds = navier_stokes(2, 16, n_frames=3, dt=0.5, step=5e-3, seed=0)
    >>> ds["vorticity"].shape
    (2, 3, 16, 16)
    """
    _check_counts(n_trajectories, n_frames)
    if np.ndim(size) != 0:
        raise ValueError(f"size must be an int (the grid is square), got {size!r}.")
    size = _parse_shape(size, name="size")[0]
    res = size if resolution is None else int(resolution)
    if res < size or res % size:
        raise ValueError(f"resolution must be a multiple of size={size}, got {resolution!r}.")
    _check_positive(viscosity=viscosity, dt=dt, step=step, alpha=alpha, tau=tau)
    if not np.isfinite(t_start) or t_start < 0:
        raise ValueError(f"t_start must be a finite number >= 0, got {t_start!r}.")
    rng = np.random.default_rng(seed)
    sigma = _default_sigma(alpha, tau, 2)
    w0 = _sample_grf((res, res), int(n_trajectories), [1.0, 1.0], alpha, tau, sigma, rng)
    grid = np.arange(res) / res
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    forcing = 0.1 * (np.sin(2 * np.pi * (gx + gy)) + np.cos(2 * np.pi * (gx + gy)))
    times = t_start + dt * np.arange(int(n_frames), dtype=np.float64)
    w = navier_stokes_solve(w0, times, viscosity=viscosity, forcing=forcing, length=1.0, step=step,
                            device=device)
    sub = res // size
    w = w[..., ::sub, ::sub]
    coords = {"trajectory": np.arange(int(n_trajectories)),
              "time": xr.Variable("time", times, attrs={"units": "1", "long_name": "time"}),
              **_space_coords(((0.0, 1.0), (0.0, 1.0)), (size, size))}
    da = xr.DataArray(
        w.astype(dtype), dims=("trajectory", "time", "y", "x"), coords=coords,
        attrs={"units": "1", "long_name": "vorticity",
               "description": ("2-D incompressible Navier-Stokes, vorticity form, periodic unit "
                               f"square, viscosity {viscosity:g}, forcing 0.1 (sin + cos)(2 pi (x + y)); "
                               f"pseudo-spectral Crank-Nicolson / Heun at {res}x{res}, step {step:g}")})
    return xr.Dataset(
        {"vorticity": da},
        attrs={"title": "2-D Navier-Stokes vorticity on the torus",
               "source": "xsciml.datasets.navier_stokes (pseudo-spectral solver)",
               "viscosity": float(viscosity), "dt": float(dt), "resolution": res,
               "step": float(step), "alpha": float(alpha), "tau": float(tau),
               "seed": -1 if seed is None else int(seed)},
    )


__all__ += ["wave", "navier_stokes", "navier_stokes_solve"]


# 1-D advection-dominated systems (Burgers, Kuramoto-Sivashinsky, KdV): see xsciml.pde1d
from .pde1d import (  # noqa: E402
    burgers,
    kdv,
    kdv_soliton,
    kuramoto_sivashinsky,
    solve_burgers,
    solve_kdv,
    solve_kuramoto_sivashinsky,
    solve_spectral,
)

__all__ += ["burgers", "kdv", "kdv_soliton", "kuramoto_sivashinsky", "solve_burgers", "solve_kdv",
            "solve_kuramoto_sivashinsky", "solve_spectral"]
