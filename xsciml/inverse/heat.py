r"""Fourier-diagonal physics on periodic grids: heat diffusion and its damped inverse.

Every operator here is linear, shift-invariant and periodic, so it is diagonal in
Fourier space: :math:`\widehat{P(x)}_k = g(k)\,\hat x_k` with a real *transfer
function* (gain) :math:`g \ge 0`. For heat conduction over an *amount*
:math:`a = \nu t`,

.. math:: g(k) = \exp(-a\,4\pi^2 |k|^2),

with :math:`k` the physical wavenumbers ``fftfreq(n, d=spacing)`` per axis.

Inverting it multiplies mode :math:`k` by :math:`1/g(k) = e^{\ell_k}`,
:math:`\ell_k = -\log g(k)`, which amplifies noise without bound. The damped
inverse (:func:`damped_inverse`) decides per mode whether its amplitude is signal
(amplitude :math:`\sim \mathcal N(0, s\sqrt M\, g(k))`, :math:`M` grid cells, :math:`s`
the per-cell signal scale) or noise (:math:`\sim \mathcal N(0, \sigma_f)`) with
equal priors, and applies :math:`e^{\ell_k\,\alpha_k}` with
:math:`\alpha_k = 2(p_k - \tfrac12)` (:math:`p_k` the signal probability; no action
while :math:`\tfrac12 < p_k < 0.68`): likely-signal modes get the full inverse,
likely-noise modes are diffused further. :math:`\sigma_f` has an absolute floor, or
iterating the inverse blows up as the residual goes to zero.

Pure torch plus thin xarray wrappers (:func:`diffuse` and :func:`inverse_diffuse`
accept DataArrays and take the grid spacing from their coordinates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

__all__ = [
    "wavenumbers_squared",
    "fourier_filter",
    "heat_gain",
    "diffuse",
    "damped_inverse",
    "inverse_diffuse",
    "DampedInverse",
    "FourierOperator",
    "HeatOperator",
    "register_operator",
    "operator_from_config",
    "grid_spacing",
]

#: Largest exponent applied by the damped inverse: ``floor(log(float32 max))``.
LOG_FLOAT32_MAX = float(math.floor(math.log(torch.finfo(torch.float32).max)))
#: Signal probability at and above which a mode is sharpened ("one sigma").
SIGNAL_THRESHOLD = 0.68


# --------------------------------------------------------------------------- helpers
def spacing_tuple(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    """Grid spacing as one positive float per dimension (a scalar is repeated ``ndim`` times)."""
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.tolist()
    if isinstance(spacing, (int, float, np.floating, np.integer)):
        out = (float(spacing),) * ndim
    else:
        out = tuple(float(s) for s in spacing)
        if len(out) != ndim:
            raise ValueError(f"spacing needs {ndim} entries (one per spatial axis), got {spacing!r}.")
    if not all(math.isfinite(s) and s > 0 for s in out):
        raise ValueError(f"spacing must be positive and finite, got {spacing!r}.")
    return out


def _check_ndim(x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or xarray.DataArray, got {type(x).__name__}.")
    if ndim < 1 or x.ndim < ndim:
        raise ValueError(
            f"need at least ndim={ndim} trailing spatial dimensions; got a tensor of shape "
            f"{tuple(x.shape)}."
        )
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"expected a real floating-point tensor, got dtype {x.dtype}.")


def is_dataarray(x: Any) -> bool:
    """Whether ``x`` is an xarray DataArray (``False`` when xarray is not installed)."""
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, xr.DataArray)


def grid_spacing(da: Any, dims: Sequence[Hashable]) -> tuple[float, ...]:
    """Uniform grid spacing of ``da`` along ``dims``, read from its coordinates.

    Parameters
    ----------
    da
        An :class:`xarray.DataArray`.
    dims
        Spatial dimension names.

    Returns
    -------
    tuple of float
        One spacing per dimension.

    Raises
    ------
    ValueError
        If a dimension has no numeric 1-D coordinate, fewer than 2 points, or
        non-uniform spacing.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.zeros((4, 8)), coords={"y": np.arange(4) * 0.5,
    ...                   "x": np.arange(8) * 2.0}, dims=("y", "x"))
    >>> grid_spacing(da, ("y", "x"))
    (0.5, 2.0)
    """
    out = []
    for d in dims:
        if d not in da.dims:
            raise KeyError(f"dimension {d!r} is not in the DataArray's dims {tuple(da.dims)}.")
        if d not in da.coords:
            raise ValueError(
                f"dimension {d!r} has no coordinate, so its grid spacing is unknown: assign one "
                f"(da.assign_coords({d}=...)) or pass spacing= explicitly."
            )
        c = np.asarray(da[d].values)
        if not np.issubdtype(c.dtype, np.number) or c.ndim != 1 or c.size < 2:
            raise ValueError(
                f"coordinate {d!r} must be numeric, 1-D and have at least 2 points to define a "
                f"spacing (got dtype {c.dtype}, shape {c.shape}); pass spacing= explicitly."
            )
        step = np.diff(c.astype(np.float64))
        h = float(step.mean())
        if h <= 0 or not np.allclose(step, h, rtol=1e-6, atol=0.0):
            raise ValueError(
                f"coordinate {d!r} is not uniformly increasing (steps from {step.min():g} to "
                f"{step.max():g}); the Fourier operators need a uniform periodic grid: regrid "
                "first (e.g. da.interp) or pass spacing= explicitly."
            )
        out.append(h)
    return tuple(out)


def resolve_dims(da: Any, dims: Sequence[Hashable] | None, ndim: int) -> tuple[Hashable, ...]:
    """The ``ndim`` spatial dims of ``da``: ``dims`` checked, or its last ``ndim`` dims."""
    if dims is None:
        if da.ndim < ndim:
            raise ValueError(f"the DataArray has {da.ndim} dims but {ndim} spatial dims are needed.")
        return tuple(da.dims[-ndim:])
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    missing = [d for d in dims if d not in da.dims]
    if missing:
        raise KeyError(f"dims {missing} are not dimensions of the DataArray {tuple(da.dims)}.")
    return dims


def _apply_spatial(func: Callable[[np.ndarray, tuple[float, ...]], tuple[np.ndarray, ...]],
                   da: Any, dims: Sequence[Hashable] | None, spacing: Any, ndim: int,
                   n_out: int = 1):
    """Run a NumPy ``func(values, spacing) -> tuple of arrays`` over ``da``'s spatial dims.

    Leading dims broadcast; dask-backed inputs stay lazy (one task per chunk, so the
    spatial dims must be a single chunk). Returns a tuple of DataArrays.
    """
    import xarray as xr

    dims = resolve_dims(da, dims, ndim)
    h = grid_spacing(da, dims) if spacing is None else spacing_tuple(spacing, len(dims))
    if da.chunks is not None:
        chunked = [d for d in dims if len(da.chunksizes[d]) > 1]
        if chunked:
            raise ValueError(
                f"spatial dims {chunked} are split into several dask chunks, but a Fourier "
                f"operator needs whole fields: rechunk first, e.g. da.chunk({{{chunked[0]!r}: -1}})."
            )
    dtype = da.dtype if np.issubdtype(da.dtype, np.floating) else np.dtype(np.float64)
    def kernel(values: np.ndarray):
        res = func(np.asarray(values, dtype=dtype), h)
        return res[0] if n_out == 1 else res

    out = xr.apply_ufunc(
        kernel,
        da,
        input_core_dims=[list(dims)],
        output_core_dims=[list(dims)] * n_out,
        dask="parallelized",
        output_dtypes=[dtype] * n_out,
        keep_attrs=True,
    )
    out = out if isinstance(out, tuple) else (out,)
    return tuple(o.transpose(*da.dims) for o in out)


# --------------------------------------------------------------------------- spectra
def wavenumbers_squared(
    shape: Sequence[int],
    spacing: float | Sequence[float] = 1.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Squared physical wavenumber :math:`|k|^2` on the FFT grid of ``shape``.

    Parameters
    ----------
    shape
        Grid shape (one entry per spatial axis).
    spacing
        Cell size, a scalar or one per axis; :math:`k_i` = ``fftfreq(n_i, d=spacing_i)``.
    dtype
        dtype of the result.
    device
        Device of the result.

    Returns
    -------
    torch.Tensor
        Shape ``shape``, in unfftshifted (``torch.fft.fftn``) layout.

    Examples
    --------
    >>> wavenumbers_squared((4,), 1.0)
    tensor([0.0000, 0.0625, 0.2500, 0.0625], dtype=torch.float64)
    """
    shape = tuple(int(n) for n in shape)
    h = spacing_tuple(spacing, len(shape))
    k2 = torch.zeros(shape, dtype=dtype, device=device)
    for axis, (n, d) in enumerate(zip(shape, h, strict=True)):
        k = torch.fft.fftfreq(n, d=d, dtype=dtype, device=device)
        view = [1] * len(shape)
        view[axis] = n
        k2 = k2 + k.reshape(view) ** 2
    return k2


def fourier_filter(x: torch.Tensor, gain: torch.Tensor, *, ndim: int = 2) -> torch.Tensor:
    r"""Apply a real, symmetric per-mode gain: ``ifftn(fftn(x) * gain).real``.

    Differentiable in ``x`` (and in ``gain``).

    Parameters
    ----------
    x
        Real tensor ``(..., *grid)``; the last ``ndim`` axes are spatial and periodic.
    gain
        Real gain broadcastable to ``x``'s spectrum (FFT layout, e.g. from
        :func:`heat_gain`). It must be even in :math:`k` for the result to be real.
    ndim
        Number of trailing spatial axes.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Examples
    --------
    >>> x = torch.randn(3, 8, 8, dtype=torch.float64)
    >>> torch.allclose(fourier_filter(x, torch.ones(8, 8, dtype=torch.float64)), x)
    True
    """
    _check_ndim(x, ndim)
    dims = tuple(range(-ndim, 0))
    spectrum = torch.fft.fftn(x, dim=dims)
    return torch.fft.ifftn(spectrum * gain.to(x.dtype), dim=dims).real


def _amount_tensor(amount: float | torch.Tensor, ndim: int, dtype, device) -> torch.Tensor:
    a = torch.as_tensor(amount, dtype=dtype, device=device)
    if torch.any(a < 0) or not torch.all(torch.isfinite(a)):
        raise ValueError(f"amount (diffusivity x time) must be finite and >= 0, got {amount!r}.")
    return a.reshape(*a.shape, *([1] * ndim)) if a.ndim else a


def heat_gain(
    shape: Sequence[int],
    amount: float | torch.Tensor,
    spacing: float | Sequence[float] = 1.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Heat-equation transfer function :math:`\exp(-a\,4\pi^2|k|^2)` on the FFT grid.

    Parameters
    ----------
    shape
        Grid shape.
    amount
        Diffusivity times time, :math:`a = \nu t \ge 0` (in spacing units squared).
        A tensor of shape ``batch`` gives one amount per example.
    spacing
        Cell size, scalar or per axis.
    dtype
        dtype of the result.
    device
        Device of the result.

    Returns
    -------
    torch.Tensor
        ``(*amount.shape, *shape)``.

    Examples
    --------
    >>> heat_gain((4,), 1.0)[0].item()
    1.0
    """
    k2 = wavenumbers_squared(shape, spacing, dtype=dtype, device=device)
    a = _amount_tensor(amount, len(tuple(shape)), dtype, device)
    return torch.exp(-(4 * math.pi**2) * a * k2)


def diffuse(
    x: Any,
    amount: float | torch.Tensor,
    *,
    spacing: float | Sequence[float] | None = None,
    dims: Sequence[Hashable] | None = None,
    ndim: int = 2,
):
    r"""Periodic heat conduction, exactly, in Fourier space.

    ``diffuse(x, a) = ifft(fft(x) * exp(-a * 4 pi^2 |k|^2))``: the solution at time
    :math:`t` of :math:`u_t = \nu \nabla^2 u` from :math:`u(0) = x` with
    :math:`a = \nu t`. Differentiable; computed in ``x``'s dtype (use float64 for
    physics).

    Parameters
    ----------
    x
        A real tensor ``(..., *grid)`` or an :class:`xarray.DataArray`.
    amount
        :math:`\nu t \ge 0`, in units of the grid spacing squared. A tensor of the
        leading (batch) shape diffuses each example by its own amount.
    spacing
        Cell size, scalar or per spatial axis. Tensors default to 1; DataArrays
        read it from their coordinates (uniform spacing required) unless given.
    dims
        DataArray only: the spatial dims (default: the last ``ndim``).
    ndim
        Number of trailing spatial axes of a tensor (1, 2 or 3, ...).

    Returns
    -------
    torch.Tensor or xarray.DataArray
        Same shape (DataArrays: same dims order, coords and attrs).

    Examples
    --------
    >>> import math
    >>> n = 16
    >>> xs = torch.arange(n, dtype=torch.float64)
    >>> wave = torch.cos(2 * math.pi * 2 * xs / n)            # k = 2/16
    >>> out = diffuse(wave, 0.5, ndim=1)
    >>> torch.allclose(out, wave * math.exp(-0.5 * 4 * math.pi**2 * (2 / n) ** 2))
    True
    """
    if is_dataarray(x):
        def run(values: np.ndarray, h: tuple[float, ...]) -> tuple[np.ndarray]:
            return (diffuse(torch.from_numpy(values), amount, spacing=h, ndim=len(h)).numpy(),)

        return _apply_spatial(run, x, dims, spacing, ndim)[0]
    _check_ndim(x, ndim)
    h = spacing_tuple(1.0 if spacing is None else spacing, ndim)
    gain = heat_gain(x.shape[-ndim:], amount, h, dtype=x.dtype, device=x.device)
    return fourier_filter(x, gain, ndim=ndim)


# --------------------------------------------------------------------------- inverse
class DampedInverse(NamedTuple):
    """Result of a damped inverse solve.

    Attributes
    ----------
    estimate
        The inverted field, shape of the input.
    uncertainty
        Propagated per-cell standard deviation of ``estimate`` (broadcast to its shape).
    signal_probability
        Per-mode probability that the input amplitude is signal (FFT layout).
    kernel
        The applied per-mode multiplier (FFT layout).
    """

    estimate: Any
    uncertainty: Any
    signal_probability: torch.Tensor | None
    kernel: torch.Tensor | None


def damped_inverse(
    dy: torch.Tensor,
    gain: torch.Tensor,
    *,
    uncertainty: float | torch.Tensor = 0.0,
    signal_std: float = 1.0,
    noise_floor: float = 1e-8,
    ndim: int = 2,
) -> DampedInverse:
    r"""Regularised inverse of a Fourier-diagonal operator with probabilistic damping.

    For each mode :math:`k` with amplitude :math:`A_k = \mathrm{FFT}(dy)_k`, compare
    a *signal* hypothesis, :math:`|A_k| \sim \mathcal N(0,\, s\sqrt M\, g_k)` (a
    source of per-cell scale ``signal_std`` seen through the operator), against
    *noise*, :math:`|A_k| \sim \mathcal N(0, \sigma_f)` with
    :math:`\sigma_f^2 = \sum_{cells} (\sigma^2 + \sigma_{floor}^2)`, with equal
    priors (likelihood kernels without normalisation, as in the SIP reference).
    The signal probability :math:`p_k` sets the action
    :math:`\alpha_k = 2(p_k - \tfrac12)` (0 while :math:`\tfrac12 < p_k < 0.68`) and
    the mode is multiplied by :math:`g_k^{-\alpha_k}`, clamped to the float32 range:
    the full inverse for likely signal, extra damping for likely noise. Modes with
    :math:`g_k = 0` are unobservable and set to zero.

    The returned uncertainty is the exact propagation of white noise of per-cell
    variance :math:`\sigma_f^2/M` through the (fixed) kernel:
    :math:`\sigma_x = \sigma_f \sqrt{\sum_k K_k^2} / M`.

    Parameters
    ----------
    dy
        Real tensor ``(..., *grid)`` to invert (an observation or a residual).
        Use float64.
    gain
        Forward transfer function :math:`g_k \ge 0`, FFT layout, broadcastable
        to ``dy``.
    uncertainty
        Per-cell standard deviation of ``dy`` (scalar or tensor broadcastable to it).
    signal_std
        Per-cell scale of a plausible source (sets the signal prior).
    noise_floor
        Absolute per-cell noise floor; keeps repeated inversion stable as ``dy -> 0``.
    ndim
        Number of trailing spatial axes.

    Returns
    -------
    DampedInverse
        ``estimate``, ``uncertainty``, ``signal_probability``, ``kernel``.

    Examples
    --------
    >>> y = torch.zeros(1, 8, 8, dtype=torch.float64); y[0, 2, 3] = 1.0
    >>> g = heat_gain((8, 8), 0.0)                    # identity operator
    >>> torch.allclose(damped_inverse(y, g).estimate, y)
    True
    """
    _check_ndim(dy, ndim)
    if signal_std <= 0 or noise_floor < 0:
        raise ValueError(f"need signal_std > 0 and noise_floor >= 0, got {signal_std}, {noise_floor}.")
    gain = torch.as_tensor(gain, dtype=dy.dtype, device=dy.device)
    if torch.any(gain < 0):
        raise ValueError("gain (the forward transfer function) must be >= 0 everywhere.")
    dims = tuple(range(-ndim, 0))
    n_cells = math.prod(dy.shape[-ndim:])
    sigma = torch.as_tensor(uncertainty, dtype=dy.dtype, device=dy.device)
    if torch.any(sigma < 0):
        raise ValueError("uncertainty must be >= 0.")
    cell_var = torch.broadcast_to(sigma**2 + noise_floor**2, dy.shape)
    f_sigma = torch.sqrt(cell_var.sum(dim=dims, keepdim=True))  # std of every Fourier amplitude

    amp = torch.fft.fftn(dy, dim=dims)
    mag = amp.abs()
    observable = gain > 0
    log_gain_inv = torch.where(observable, -torch.log(torch.where(observable, gain, 1.0)), 0.0)
    expected = signal_std * math.sqrt(n_cells) * gain
    signal_like = 0.5 * torch.exp(-0.5 * (mag / expected) ** 2)
    signal_like = torch.nan_to_num(signal_like, nan=0.0)  # 0/0 where expected underflows
    noise_like = 0.5 * torch.exp(-0.5 * (mag / f_sigma) ** 2)
    total = signal_like + noise_like
    prob = torch.where(total > 0, signal_like / torch.where(total > 0, total, 1.0), 0.0)
    act = (prob <= 0.5) | (prob >= SIGNAL_THRESHOLD)
    action = torch.where(act, 2.0 * (prob - 0.5), 0.0)
    log_kernel = torch.clamp(log_gain_inv * action, max=LOG_FLOAT32_MAX)
    kernel = torch.where(observable, torch.exp(log_kernel), 0.0)

    estimate = torch.fft.ifftn(amp * kernel, dim=dims).real
    sigma_x = f_sigma * torch.sqrt((kernel**2).sum(dim=dims, keepdim=True)) / n_cells
    return DampedInverse(estimate, sigma_x.expand_as(estimate), prob, kernel)


def inverse_diffuse(
    y: Any,
    amount: float | torch.Tensor,
    *,
    uncertainty: float | torch.Tensor = 0.0,
    spacing: float | Sequence[float] | None = None,
    dims: Sequence[Hashable] | None = None,
    ndim: int = 2,
    signal_std: float = 1.0,
    noise_floor: float = 1e-8,
) -> DampedInverse:
    r"""Damped inverse of :func:`diffuse`, with propagated uncertainty.

    See :func:`damped_inverse` for the per-mode signal-vs-noise damping.

    Parameters
    ----------
    y
        Observed (diffused) field: a real tensor ``(..., *grid)`` (float64
        recommended) or an :class:`xarray.DataArray`.
    amount
        The diffusion amount :math:`\nu t` of the forward operator.
    uncertainty
        Per-cell standard deviation of ``y``'s noise: a scalar, or (tensor input
        only) a tensor broadcastable to ``y``.
    spacing
        As in :func:`diffuse`.
    dims
        As in :func:`diffuse`.
    ndim
        As in :func:`diffuse`.
    signal_std
        Per-cell scale of plausible sources.
    noise_floor
        Absolute per-cell noise floor.

    Returns
    -------
    DampedInverse
        ``estimate`` and ``uncertainty`` (tensors, or DataArrays like ``y``, lazy
        if ``y`` is dask-backed), ``signal_probability`` and ``kernel`` (tensors in
        FFT layout for tensor input; ``None`` for DataArray input).

    Examples
    --------
    >>> x = torch.zeros(1, 32, 32, dtype=torch.float64); x[0, 8:20, 10:24] = 1.0
    >>> y = diffuse(x, 2.0)
    >>> inv = inverse_diffuse(y, 2.0)
    >>> bool(((inv.estimate - x) ** 2).sum() < ((y - x) ** 2).sum())
    True
    """
    if is_dataarray(y):
        if is_dataarray(uncertainty) or isinstance(uncertainty, (torch.Tensor, np.ndarray)):
            raise TypeError(
                "for DataArray input, uncertainty must be a scalar (per-cell std); for a "
                "spatially varying one, invert the underlying tensor."
            )
        def run(values: np.ndarray, h: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
            res = inverse_diffuse(torch.from_numpy(values), amount, uncertainty=uncertainty,
                                  spacing=h, ndim=len(h), signal_std=signal_std,
                                  noise_floor=noise_floor)
            return res.estimate.numpy(), res.uncertainty.contiguous().numpy()

        est, unc = _apply_spatial(run, y, dims, spacing, ndim, n_out=2)
        unc.name = f"{y.name}_uncertainty" if y.name is not None else "uncertainty"
        return DampedInverse(est, unc, None, None)
    _check_ndim(y, ndim)
    h = spacing_tuple(1.0 if spacing is None else spacing, ndim)
    gain = heat_gain(y.shape[-ndim:], amount, h, dtype=y.dtype, device=y.device)
    return damped_inverse(y, gain, uncertainty=uncertainty, signal_std=signal_std,
                          noise_floor=noise_floor, ndim=ndim)


# --------------------------------------------------------------------------- operators
_OPERATORS: dict[str, type[FourierOperator]] = {}


def register_operator(cls: type[FourierOperator]) -> type[FourierOperator]:
    """Class decorator: make a :class:`FourierOperator` subclass loadable by name.

    Saved inversions store their operator's :meth:`~FourierOperator.get_config`;
    loading looks the class up under ``cls.kind`` (default: the class name).

    Examples
    --------
    >>> @register_operator
    ... class Identity(FourierOperator):
    ...     def transfer(self, k2):
    ...         return torch.ones_like(k2)
    >>> operator_from_config(Identity().get_config()).kind
    'Identity'
    """
    if not (isinstance(cls, type) and issubclass(cls, FourierOperator)):
        raise TypeError("register_operator decorates FourierOperator subclasses.")
    kind = cls.__dict__.get("kind") or cls.__name__
    cls.kind = kind
    _OPERATORS[kind] = cls
    return cls


def operator_from_config(config: dict[str, Any]) -> FourierOperator:
    """Rebuild an operator from :meth:`FourierOperator.get_config` output.

    Examples
    --------
    >>> op = operator_from_config(HeatOperator(8.0).get_config())
    >>> op.amount
    8.0
    """
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in _OPERATORS:
        raise KeyError(
            f"unknown operator kind {kind!r}; known: {sorted(_OPERATORS)}. Custom operators must "
            "be defined and decorated with @xsciml.inverse.register_operator before loading."
        )
    return _OPERATORS[kind](**config)


class FourierOperator:
    r"""Base class: a linear, periodic operator that is diagonal in Fourier space.

    Subclasses implement :meth:`transfer` (the gain :math:`g(|k|^2) \ge 0`) and list
    their constructor arguments in :meth:`get_config`. They get a differentiable
    :meth:`forward` and a damped :meth:`inverse` (for :func:`~xsciml.inverse.sip_loss`)
    for free. Decorate with :func:`register_operator` to make them loadable.

    Parameters
    ----------
    spacing
        Grid cell size, scalar or one per spatial axis.
    ndim
        Number of trailing spatial axes.
    relative_uncertainty
        In :meth:`inverse`, the per-cell noise std is ``relative_uncertainty * |dy|``
        (the SIP reference uses 1e-6) ...
    noise_floor
        ... plus this absolute floor (in quadrature).
    signal_std
        Per-cell scale of plausible sources (signal prior of the damping).

    Examples
    --------
    >>> class Smooth(FourierOperator):
    ...     def transfer(self, k2):
    ...         return 1.0 / (1.0 + k2)
    >>> Smooth()(torch.ones(2, 8, 8, dtype=torch.float64)).mean().item()
    1.0
    """

    kind: ClassVar[str] = ""

    def __init__(
        self,
        *,
        spacing: float | Sequence[float] = 1.0,
        ndim: int = 2,
        relative_uncertainty: float = 1e-6,
        noise_floor: float = 1e-8,
        signal_std: float = 1.0,
    ) -> None:
        if not isinstance(ndim, int) or ndim < 1:
            raise ValueError(f"ndim must be a positive integer, got {ndim!r}.")
        self.ndim = ndim
        self.spacing = spacing_tuple(spacing, ndim)
        if relative_uncertainty < 0 or noise_floor < 0 or signal_std <= 0:
            raise ValueError("need relative_uncertainty >= 0, noise_floor >= 0 and signal_std > 0.")
        self.relative_uncertainty = float(relative_uncertainty)
        self.noise_floor = float(noise_floor)
        self.signal_std = float(signal_std)

    # -- to implement -------------------------------------------------------
    def transfer(self, k2: torch.Tensor) -> torch.Tensor:
        r"""Per-mode gain :math:`g \ge 0` from :math:`|k|^2` (physical wavenumbers)."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """Subclass constructor arguments (JSON-able) for :meth:`get_config`."""
        return {}

    # -- provided -----------------------------------------------------------
    def gain(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
             device: torch.device | str | None = None) -> torch.Tensor:
        """The transfer function on the FFT grid of ``shape``."""
        k2 = wavenumbers_squared(shape, self.spacing, dtype=dtype, device=device)
        return self.transfer(k2).to(dtype)

    @property
    def mean_gain(self) -> float:
        """Gain of the :math:`k = 0` (mean) mode; 1 for mass-conserving operators."""
        return float(self.transfer(torch.zeros((), dtype=torch.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator to ``x`` of shape ``(..., *grid)`` (differentiable)."""
        _check_ndim(x, self.ndim)
        return fourier_filter(x, self.gain(x.shape[-self.ndim:], dtype=x.dtype, device=x.device),
                              ndim=self.ndim)

    __call__ = forward

    def inverse_with_uncertainty(self, dy: torch.Tensor,
                                 uncertainty: float | torch.Tensor | None = None) -> DampedInverse:
        """Damped inverse of ``dy`` (see :func:`damped_inverse`).

        ``uncertainty=None`` uses ``relative_uncertainty * |dy|`` per cell.
        """
        _check_ndim(dy, self.ndim)
        if uncertainty is None:
            uncertainty = self.relative_uncertainty * dy.abs()
        gain = self.gain(dy.shape[-self.ndim:], dtype=dy.dtype, device=dy.device)
        return damped_inverse(dy, gain, uncertainty=uncertainty, signal_std=self.signal_std,
                              noise_floor=self.noise_floor, ndim=self.ndim)

    def inverse(self, dy: torch.Tensor) -> torch.Tensor:
        """Damped inverse-physics solve: the ``dx`` with ``forward(dx) ~ dy``."""
        return self.inverse_with_uncertainty(dy).estimate

    def get_config(self) -> dict[str, Any]:
        """JSON-able description; :func:`operator_from_config` rebuilds the operator."""
        return {
            "kind": type(self).__dict__.get("kind") or type(self).__name__,
            **self._params(),
            "spacing": list(self.spacing),
            "ndim": self.ndim,
            "relative_uncertainty": self.relative_uncertainty,
            "noise_floor": self.noise_floor,
            "signal_std": self.signal_std,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "kind")
        return f"{type(self).__name__}({args})"


@register_operator
class HeatOperator(FourierOperator):
    r"""Periodic heat conduction :math:`g(k) = \exp(-a\,4\pi^2|k|^2)` with :math:`a = \nu t`.

    Parameters
    ----------
    amount
        Diffusivity times time (units of spacing squared). The SIP heat example
        uses 8 on a 64 x 64 grid of unit cells.
    **kwargs
        ``spacing``, ``ndim``, ``relative_uncertainty``, ``noise_floor``,
        ``signal_std``: see :class:`FourierOperator`.

    Examples
    --------
    >>> op = HeatOperator(8.0)
    >>> x = torch.zeros(1, 64, 64, dtype=torch.float64); x[0, 20:40, 10:30] = 1.0
    >>> y = op(x)
    >>> round(y.sum().item(), 6) == round(x.sum().item(), 6)     # heat is conserved
    True
    """

    kind = "heat"

    def __init__(self, amount: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        amount = float(amount)
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"amount must be finite and >= 0, got {amount!r}.")
        self.amount = amount

    def transfer(self, k2: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(4 * math.pi**2) * self.amount * k2)

    def _params(self) -> dict[str, Any]:
        return {"amount": self.amount}
