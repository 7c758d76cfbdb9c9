r"""A diffusion prior over gridded fields: EDM denoiser, Heun and Euler-Maruyama samplers.

:func:`fit_diffusion` (``fine.sciml.fit_diffusion("tas")``) learns the distribution of
the snapshots of one variable on a fixed 2-D grid with the "elucidating" design of
Karras et al. (2022, EDM). Fields are first normalised, :math:`z = (x - \mu_p) / s`
with :math:`\mu_p` the per-pixel mean over snapshots and :math:`s` one global standard
deviation (both stored with the model; outputs come back in the data's units). The
denoiser is preconditioned,

.. math::

    D(z, \sigma) = c_{skip}(\sigma)\, z + c_{out}(\sigma)\, F\big(c_{in}(\sigma)\, z,
    c_{noise}(\sigma)\big),\quad
    c_{skip} = \frac{\sigma_d^2}{\sigma^2 + \sigma_d^2},\;
    c_{out} = \frac{\sigma\sigma_d}{\sqrt{\sigma^2 + \sigma_d^2}},\;
    c_{in} = \frac{1}{\sqrt{\sigma^2 + \sigma_d^2}},\;
    c_{noise} = \tfrac14 \ln\sigma,

with :math:`F` a :class:`xsciml.nn.UNet` (group norm, SiLU) FiLM-conditioned on random
Fourier features of :math:`c_{noise}`, and trained on
:math:`\mathbb E\,\lambda(\sigma)\lVert D(z + \sigma\varepsilon, \sigma) - z\rVert^2`
with :math:`\lambda(\sigma) = (\sigma^2 + \sigma_d^2)/(\sigma\sigma_d)^2` and
:math:`\ln\sigma \sim \mathcal N(P_{mean}, P_{std}^2)`, through
:func:`xsciml.training.fit`. An exponential moving average of the weights
(:class:`torch.optim.swa_utils.AveragedModel`) is kept during training; the averaged
weights are the ones saved and sampled. Besides the noisy field the network sees two
fixed channels, the standardised per-pixel mean and standard deviation maps, so it
knows where on the grid it is (coasts, orography).

:meth:`DiffusionPrior.sample` draws fields with EDM's second-order Heun sampler
(Algorithm 2 of the paper, deterministic unless ``churn > 0``) or an Euler-Maruyama
discretisation of the reverse SDE, on the Karras noise schedule
:math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_{min}^{1/\rho} -
\sigma_{max}^{1/\rho}))^\rho`. Both samplers take any denoiser callable, so
:func:`xsciml.downscale.downscale` runs them with a guided, projected denoiser.

Missing values (NaN, e.g. land in an ocean field) are refused: the U-Net needs every
pixel. Crop the domain or fill the gaps first.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

import numpy as np
import torch
import xarray as xr
from torch import nn

from .._docs import shared_docs
from .._grid import Grid, sample_info
from .._utils import check_numeric, progress_bar, resolve_device, seed_everything
from ..base import Estimator, output_attrs, register_estimator
from ..nn import UNet
from ..nn.layers import FourierFeatures
from ..training import History, TrainState

__all__ = [
    "DiffusionPrior",
    "EDMDenoiser",
    "fit_diffusion",
    "default_fit_settings",
    "edm_loss",
    "karras_sigmas",
    "row_seeds",
    "run_sampler",
    "sample_heun",
    "sample_euler_maruyama",
    "RowNoise",
    "SAMPLERS",
]

#: Values accepted by ``sampler=``.
SAMPLERS: tuple[str, ...] = ("heun", "euler_maruyama")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# =========================================================================== torch world
class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser :math:`D(x, \\sigma)` around a conditioned U-Net.

    Parameters
    ----------
    shape
        Spatial shape ``(H, W)`` of the fields.
    sigma_data
        Standard deviation of the (normalised) data, :math:`\\sigma_d`.
    static
        Optional fixed input channels ``[C_s, H, W]`` (e.g. climatology maps) given to
        the network alongside the noisy field.
    base_channels
        U-Net width (see :class:`xsciml.nn.UNet`).
    levels
        U-Net resolutions.
    channel_mult
        Width multipliers per level.
    emb_dim
        Width of the noise-level embedding.
    padding_mode
        Padding of the U-Net convolutions.

    Examples
    --------
    >>> net = EDMDenoiser((16, 16), sigma_data=1.0, base_channels=8, levels=2)
    >>> x = torch.randn(3, 1, 16, 16)
    >>> net(x, torch.full((3,), 0.5)).shape
    torch.Size([3, 1, 16, 16])
    """

    static: torch.Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        shape: Sequence[int],
        sigma_data: float = 1.0,
        *,
        static: torch.Tensor | None = None,
        base_channels: int = 32,
        levels: int = 3,
        channel_mult: Sequence[int] | None = None,
        emb_dim: int = 64,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 2:
            raise ValueError(f"EDMDenoiser needs a 2-D field shape (H, W), got {shape!r}.")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}.")
        self.sigma_data = float(sigma_data)
        if static is None:
            static = torch.zeros(0, *self.shape)
        static = torch.as_tensor(static, dtype=torch.float32)
        if static.ndim != 3 or tuple(static.shape[1:]) != self.shape:
            raise ValueError(
                f"static must have shape (channels, {self.shape[0]}, {self.shape[1]}), "
                f"got {tuple(static.shape)}."
            )
        self.register_buffer("static", static.clone())
        self.embed = nn.Sequential(
            FourierFeatures(1, emb_dim // 2, scale=1.0, seed=0, include_input=True),
            nn.Linear(emb_dim // 2 * 2 + 1, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
        )
        self.unet = UNet(
            1 + static.shape[0], 1, base_channels, levels, channel_mult=channel_mult,
            norm="group", activation="silu", padding_mode=padding_mode, cond_dim=emb_dim,
        )
        self.config = dict(
            shape=list(self.shape), sigma_data=self.sigma_data, static_channels=int(static.shape[0]),
            base_channels=int(base_channels), levels=int(levels),
            channel_mult=None if channel_mult is None else [int(m) for m in channel_mult],
            emb_dim=int(emb_dim), padding_mode=padding_mode,
        )

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (any shape)."""
        sd2 = self.sigma_data**2
        s2 = sigma.square()
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1.0 / (s2 + sd2).sqrt()
        c_noise = sigma.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Denoised estimate of ``x [B, 1, H, W]`` at noise level ``sigma`` (scalar or ``[B]``)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in self.preconditioning(sigma))
        inp = c_in * x
        if self.static.shape[0]:
            inp = torch.cat([inp, self.static.to(x.dtype).expand(x.shape[0], -1, -1, -1)], dim=1)
        cond = self.embed(c_noise.reshape(-1, 1))
        return c_skip * x + c_out * self.unet(inp, cond)


def edm_loss(net: EDMDenoiser, z: torch.Tensor, P_mean: float, P_std: float) -> torch.Tensor:
    """EDM training loss: :math:`\\lambda(\\sigma)\\lVert D(z + \\sigma n, \\sigma) - z\\rVert^2`,
    averaged, with :math:`\\ln\\sigma \\sim \\mathcal N(P_{mean}, P_{std}^2)` (global RNG)."""
    sigma = (torch.randn(z.shape[0], device=z.device) * P_std + P_mean).exp()
    sd = net.sigma_data
    weight = (sigma.square() + sd**2) / (sigma * sd).square()
    noisy = z + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(z)
    err = (net(noisy, sigma) - z).square().mean(dim=(1, 2, 3))
    return (weight * err).mean()


def karras_sigmas(
    steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *, dtype: Any = torch.float64
) -> torch.Tensor:
    """The EDM noise schedule: ``steps`` levels from ``sigma_max`` to ``sigma_min``, then 0.

    Parameters
    ----------
    steps
        Number of noise levels :math:`N` (the sampler takes :math:`N` steps).
    sigma_min
        Lowest noise level.
    sigma_max
        Highest noise level.
    rho
        Curvature; larger values spend more steps at low noise.

    Returns
    -------
    torch.Tensor
        Shape ``[steps + 1]``, decreasing, last entry 0.

    Examples
    --------
    >>> s = karras_sigmas(4, 0.002, 80.0)
    >>> s.shape, float(s[0]), round(float(s[-2]), 6), float(s[-1])
    (torch.Size([5]), 80.0, 0.002, 0.0)
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r} and {sigma_max!r}.")
    if steps == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    else:
        ramp = torch.linspace(0.0, 1.0, int(steps), dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).to(dtype)


class RowNoise:
    """Standard normal noise drawn row by row from per-row seeded CPU generators.

    Row ``i`` of every draw depends only on ``seeds[i]`` and on how many draws came
    before, never on the batch it sits in or on the device, so results do not depend on
    minibatching or Dask chunking.

    Parameters
    ----------
    seeds
        One integer seed per row.

    Examples
    --------
    >>> a = RowNoise([1, 2]).randn((2, 3))
    >>> b = RowNoise([2]).randn((1, 3))
    >>> torch.equal(a[1], b[0])
    True
    """

    def __init__(self, seeds: Sequence[int] | np.ndarray) -> None:
        self.generators = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], *, dtype: Any = torch.float32, device: Any = "cpu") -> torch.Tensor:
        """Draw ``shape`` (first axis: one row per seed)."""
        if shape[0] != len(self.generators):
            raise ValueError(f"asked for {shape[0]} rows of noise, have {len(self.generators)} seeds.")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Noise shaped, typed and placed like ``x``."""
        return self.randn(tuple(x.shape), dtype=x.dtype, device=x.device)


def row_seeds(seed: int, index: np.ndarray, n_samples: int) -> np.ndarray:
    """Seeds ``[len(index), n_samples]`` for sample ``k`` of snapshot ``index[i]``.

    A pure function of ``(seed, index, k)`` (NumPy's ``SeedSequence``), so the samples of
    one snapshot never depend on which other snapshots are computed with it.

    Examples
    --------
    >>> s = row_seeds(0, np.array([5, 7]), 2)
    >>> s.shape, bool((s[1] == row_seeds(0, np.array([7]), 2)[0]).all())
    ((2, 2), True)
    """
    index = np.asarray(index, dtype=np.int64).ravel()
    out = np.empty((index.size, int(n_samples)), dtype=np.int64)
    for i, idx in enumerate(index):
        state = np.random.SeedSequence([int(seed) % (2**32), int(idx)]).generate_state(int(n_samples) * 2)
        out[i] = (state[0::2].astype(np.int64) << 31) ^ state[1::2].astype(np.int64)
    return out


def sample_heun(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise: RowNoise,
    *,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    progress: Any = None,
) -> torch.Tensor:
    """EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2).

    Parameters
    ----------
    denoise
        ``denoise(x, sigma) -> D(x, sigma)``, ``sigma`` a 0-d tensor.
    x
        Starting point at ``sigmas[0]`` (``sigmas[0] * N(0, I)``).
    sigmas
        Decreasing noise levels ending with 0 (:func:`karras_sigmas`).
    noise
        Noise source for the churn (unused when ``churn == 0``).
    churn
        Stochasticity :math:`S_{churn}`; ``churn=0`` is the deterministic second-order ODE sampler.
    s_tmin
        Lower end :math:`S_{tmin}` of the noise levels where the churn is applied.
    s_tmax
        Upper end :math:`S_{tmax}` of that range.
    s_noise
        Noise inflation :math:`S_{noise}`.
    progress
        Optional callable run after each step (e.g. a progress bar's ``update``).

    Returns
    -------
    torch.Tensor
        The sample, equal to the last denoised estimate.

    Examples
    --------
    >>> d = lambda x, s: torch.zeros_like(x)       # the data are a point mass at 0
    >>> x0 = 10.0 * torch.ones(2, 1, 4, 4)
    >>> sample_heun(d, x0, karras_sigmas(5, 0.01, 10.0), RowNoise([0, 1])).abs().max().item()
    0.0
    """
    n = len(sigmas) - 1
    for i in range(n):
        t, t_next = sigmas[i], sigmas[i + 1]
        gamma = min(churn / n, math.sqrt(2.0) - 1.0) if (churn > 0 and s_tmin <= t <= s_tmax) else 0.0
        t_hat = t * (1.0 + gamma)
        if gamma > 0:
            x = x + (t_hat.square() - t.square()).sqrt().to(x.dtype) * s_noise * noise.randn_like(x)
        den = denoise(x, t_hat)
        d = (x - den) / t_hat.to(x.dtype)
        if t_next == 0:
            x = den  # the Euler step to sigma = 0 lands exactly on the denoised estimate
        else:
            x_next = x + (t_next - t_hat).to(x.dtype) * d
            d2 = (x_next - denoise(x_next, t_next)) / t_next.to(x.dtype)
            x = x + (t_next - t_hat).to(x.dtype) * 0.5 * (d + d2)
        if progress is not None:
            progress()
    return x


def sample_euler_maruyama(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise: RowNoise,
    *,
    progress: Any = None,
) -> torch.Tensor:
    """Euler-Maruyama steps of the reverse-time SDE :math:`dx = -2\\sigma\\nabla\\log
    p_\\sigma(x)\\,d\\sigma + \\sqrt{2\\sigma}\\,d\\bar w` (variance exploding,
    :math:`\\sigma(t) = t`), with the score :math:`(D(x, \\sigma) - x)/\\sigma^2`.

    From :math:`\\sigma_i` to :math:`\\sigma_{i+1}`:
    :math:`x \\leftarrow x + 2\\frac{\\sigma_i - \\sigma_{i+1}}{\\sigma_i}(D - x) +
    \\sqrt{2\\sigma_i(\\sigma_i - \\sigma_{i+1})}\\,\\varepsilon`; the last step (to 0)
    returns the denoised estimate. Needs more steps than Heun for the same quality.

    Examples
    --------
    >>> d = lambda x, s: torch.zeros_like(x)
    >>> x0 = 10.0 * torch.ones(1, 1, 2, 2)
    >>> sample_euler_maruyama(d, x0, karras_sigmas(3, 0.01, 10.0), RowNoise([0])).abs().max().item()
    0.0
    """
    n = len(sigmas) - 1
    for i in range(n):
        t, t_next = sigmas[i], sigmas[i + 1]
        den = denoise(x, t)
        if t_next == 0:
            x = den
        else:
            dt = (t - t_next).to(x.dtype)
            tt = t.to(x.dtype)
            x = x + 2.0 * dt / tt * (den - x) + (2.0 * tt * dt).sqrt() * noise.randn_like(x)
        if progress is not None:
            progress()
    return x


def run_sampler(
    sampler: str,
    denoise: Denoiser,
    noise: RowNoise,
    shape: Sequence[int],
    *,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float,
    churn: float,
    device: torch.device,
    progress: Any = None,
) -> torch.Tensor:
    """Draw ``shape`` fields: initial noise from ``noise`` then the named sampler."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho).to(device)
    x = noise.randn(tuple(shape), dtype=torch.float32, device=device) * float(sigmas[0])
    if sampler == "heun":
        return sample_heun(denoise, x, sigmas, noise, churn=churn, progress=progress)
    return sample_euler_maruyama(denoise, x, sigmas, noise, progress=progress)


# =========================================================================== estimator
@register_estimator
class DiffusionPrior(Estimator):
    """A fitted diffusion prior over snapshots of one variable on a fixed 2-D grid.

    Built by :func:`fit_diffusion`; see the module docs for the model. The EMA weights
    are the network's weights.

    Attributes
    ----------
    variable : str
        Name of the modelled variable.
    units : str or None
        Its units (``attrs["units"]`` of the training data).
    space_dims : tuple of str
        The two grid dims, in array order.
    shape : tuple of int
        Grid size along ``space_dims``.
    grid_coords : xarray.Dataset
        The grid's coordinates.
    mean : numpy.ndarray
        Per-pixel mean ``[H, W]`` of the training data.
    scale : float
        Global standard deviation of the anomalies.
    net : EDMDenoiser
        The denoiser (EMA weights), acting on normalised fields.
    history : xsciml.training.History or None
        Training history (not saved).
    check_fields : numpy.ndarray or None
        A few training snapshots ``[k, H, W]`` (physical units, saved with the prior)
        on which :func:`xsciml.downscale.downscale` compares its result with bicubic
        upsampling of the same coarse fields.
    mask : numpy.ndarray or None
        Where the training data exist (``[H, W]`` bool), for a variable with a fixed mask
        (the land of an ocean variable); ``None`` for complete fields. Draws and downscaled
        fields are NaN outside it.
    """


    def __init__(self, net: EDMDenoiser, grid: Any, mean: np.ndarray, scale: float, *,
                 sample_dim: str = "time", info: dict[str, Any] | None = None,
                 check_fields: np.ndarray | None = None, mask: np.ndarray | None = None) -> None:
        self.net = net
        self.grid = grid
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = float(scale)
        self.sample_dim = str(sample_dim)
        self.info = dict(info or {})
        self.history = History()  # the training loop's (empty after loading: not saved)
        self.check_fields = None if check_fields is None else np.asarray(check_fields, dtype=np.float64)
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)

    # -- properties ------------------------------------------------------------------
    @property
    def variable(self) -> str:
        return self.grid.variables[0]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.grid.var_attrs[self.variable])

    @property
    def units(self) -> str | None:
        u = self.attrs.get("units")
        return None if u is None else str(u)

    @property
    def space_dims(self) -> tuple[str, ...]:
        return tuple(self.grid.space_dims)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.grid.shape)

    @property
    def grid_coords(self) -> xr.Dataset:
        return self.grid.dataset()

    @property
    def sigma_data(self) -> float:
        return self.net.sigma_data

    # -- tensor level ----------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Physical fields ``[..., H, W]`` to the model's normalised space."""
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
        return (x - mean) / self.scale

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`."""
        mean = torch.as_tensor(self.mean, dtype=z.dtype, device=z.device)
        return z * self.scale + mean

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The denoiser :math:`D(x, \\sigma)` on normalised fields ``x [B, 1, H, W]``.

        Examples
        --------
        >>> prior.denoise(torch.zeros(2, 1, *prior.shape), 1.0).shape  # doctest: +SKIP
        torch.Size([2, 1, 32, 48])
        """
        dev = next(self.net.parameters()).device
        return self.net(x.to(dev), sigma)

    def _default_sigmas(self, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
        lo = 0.002 * self.sigma_data / 0.5 if sigma_min is None else float(sigma_min)
        hi = 80.0 * self.sigma_data / 0.5 if sigma_max is None else float(sigma_max)
        return lo, hi

    # -- labeled level ---------------------------------------------------------------
    def sample(
        self,
        n: int,
        target: xr.Dataset | xr.DataArray | None = None,
        *,
        steps: int = 24,
        sampler: str = "heun",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        churn: float = 0.0,
        seed: int = 0,
        batch_size: int = 64,
        device: Any = "auto",
        progress: bool | None = None,
    ) -> xr.DataArray:
        """Draw ``n`` unconditional fields from the prior.

        Parameters
        ----------
        n
            Number of samples.
        target
            Data on the prior's grid (same space dims and sizes) whose coordinates label
            the draws; default the grid the prior was fitted on.
        steps
            Noise levels of the schedule (Heun evaluates the denoiser ``2 steps - 1``
            times, Euler-Maruyama ``steps`` times).
        sampler
            ``"heun"`` (EDM Algorithm 2) or ``"euler_maruyama"`` (reverse SDE).
        sigma_min
            Lowest noise level.
        sigma_max
            Highest noise level.
        rho
            Schedule curvature.
        churn
            Heun only: EDM's :math:`S_{churn}` (0: deterministic ODE sampler).
        seed
            Sample ``k`` depends only on ``(seed, k)``.
        batch_size
            Samples per network call.
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``...
        progress
            Show a progress bar (``None``: as the fit did, then the ``XSCIML_PROGRESS``
            environment variable).

        Returns
        -------
        xarray.DataArray
            ``(sample, *space_dims)`` with the grid's coordinates, the variable's name,
            attrs and units, and provenance attrs.

        Examples
        --------
        >>> prior.sample(4, steps=18).dims  # doctest: +SKIP
        ('sample', 'lat', 'lon')
        """
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        coords = self._target_coords(target)
        dev = resolve_device(device)
        net = self.net.to(dev).eval()
        lo, hi = self._default_sigmas(sigma_min, sigma_max)
        seeds = row_seeds(seed, np.arange(int(n)), 1)[:, 0]
        out = np.empty((int(n), *self.shape), dtype=np.float64)
        nfe = 2 * steps - 1 if sampler == "heun" else steps
        with progress_bar(total=math.ceil(n / batch_size) * steps, desc="DiffusionPrior.sample",
                          progress=self._progress(progress)) as bar, torch.inference_mode():
            for a in range(0, int(n), int(batch_size)):
                rows = seeds[a:a + batch_size]
                z = run_sampler(sampler, net, RowNoise(rows), (len(rows), 1, *self.shape),
                                steps=steps, sigma_min=lo, sigma_max=hi, rho=rho, churn=churn,
                                device=dev, progress=bar.update)
                out[a:a + len(rows)] = self.denormalise(z[:, 0].double()).cpu().numpy()
        if self.mask is not None:
            out[:, ~self.mask] = np.nan
        from ..units import bounds_text, physical_bounds

        limits = physical_bounds(self.attrs, variable=self.variable)
        if limits is not None:  # a bounded quantity (precipitation, a fraction) stays in its range
            np.clip(out, limits[0], limits[1], out=out)
        attrs = {**output_attrs(self.attrs, name=self.variable),
                 **self._provenance(f"sample: {n} draws of {self.variable} from the diffusion prior",
                                    self.attrs),
                 "xsciml_sampler": sampler,
                 "xsciml_sampler_nfe": nfe}
        if limits is not None:
            attrs["xsciml_bounds"] = f"clipped to {bounds_text(limits, self.units)}"
        return xr.DataArray(out, dims=("sample", *self.space_dims), coords=coords,
                            name=self.variable, attrs=attrs)

    def _target_coords(self, target: xr.Dataset | xr.DataArray | None) -> dict[Hashable, Any]:
        """Coordinates of the draws: the fitted grid's, or those of ``target`` on that grid."""
        if target is None:
            return dict(self.grid.coords)
        if not isinstance(target, (xr.Dataset, xr.DataArray)):
            raise TypeError(f"target must be an xarray Dataset or DataArray on the prior's grid, "
                            f"got {type(target).__name__}")
        sizes = dict(zip(self.space_dims, self.shape, strict=True))
        got = {d: int(target.sizes[d]) for d in self.space_dims if d in target.sizes}
        if got != sizes:
            raise ValueError(f"target must be on the prior's grid {sizes} (space dims and sizes), got "
                             f"{dict(target.sizes)}; regrid it first or leave target=None")
        return {k: c.variable for k, c in target.coords.items() if set(c.dims) <= set(self.space_dims)}

    # -- state -----------------------------------------------------------------------
    def _get_config(self) -> dict[str, Any]:
        gcfg, _ = self.grid.to_state()
        return {"variable": self.variable, "units": self.units, "net": self.net.config,
                "scale": self.scale, "sample_dim": self.sample_dim, "grid": gcfg, "info": self.info}

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        _, tensors = self.grid.to_state()
        tensors["mean"] = torch.from_numpy(np.ascontiguousarray(self.mean))
        if self.check_fields is not None:
            tensors["check_fields"] = torch.from_numpy(np.ascontiguousarray(self.check_fields, dtype=np.float32))
        if self.mask is not None:
            tensors["mask"] = torch.from_numpy(np.ascontiguousarray(self.mask, dtype=np.uint8))
        tensors.update({f"net.{k}": v.detach().cpu() for k, v in self.net.state_dict().items()})
        return tensors

    @classmethod
    def _from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> DiffusionPrior:
        c = dict(config["net"])
        static = tensors["net.static"]
        net = EDMDenoiser(c["shape"], c["sigma_data"], static=static.cpu(), base_channels=c["base_channels"],
                          levels=c["levels"], channel_mult=c["channel_mult"], emb_dim=c["emb_dim"],
                          padding_mode=c["padding_mode"])
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        net.to(static.device).eval()
        grid = Grid.from_state(config["grid"], tensors)
        check = tensors.get("check_fields")
        mask = tensors.get("mask")
        return cls(net, grid, tensors["mean"].cpu().numpy(), config["scale"],
                   sample_dim=config["sample_dim"], info=config.get("info"),
                   check_fields=None if check is None else check.cpu().double().numpy(),
                   mask=None if mask is None else mask.cpu().numpy().astype(bool))

    def _provenance_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"xsciml_variable": self.variable}
        if "training_period" in self.info:
            extra["xsciml_training_period"] = self.info["training_period"]
        return extra


# =========================================================================== fitting
def _training_array(obj: xr.Dataset | xr.DataArray, variable: str | None, sample_dim: str,
                    space: Sequence[str] | None) -> tuple[xr.Dataset, str, tuple[str, str]]:
    from ..tensors import decode_variable, prepare_variables

    ds, names = prepare_variables(obj, variable, "obj")
    if len(names) != 1:
        raise ValueError(f"fit_diffusion models one variable; got {names}. Fit one prior per variable.")
    name = names[0]
    if name not in ds.data_vars:
        raise KeyError(f"variable {name!r} not found; available data variables: {list(ds.data_vars)}")
    da = decode_variable(ds[name])
    check_numeric(da, f"variable {name!r}")
    if sample_dim not in da.dims:
        raise KeyError(
            f"sample_dim {sample_dim!r} is not a dimension of {name!r}; its dims are {da.dims}. "
            "Pass the dimension that indexes snapshots."
        )
    if space is None:
        others = tuple(str(d) for d in da.dims if d != sample_dim)
    else:
        others = tuple(str(d) for d in space)
        lacking = [d for d in others if d not in da.dims]
        if lacking:
            raise KeyError(f"space dims {lacking} are not dimensions of {name!r} {da.dims}.")
        extra = [d for d in da.dims if d not in others and d != sample_dim]
        if extra:
            raise ValueError(
                f"{name!r} has dims {extra} besides sample_dim and space; select or stack them first."
            )
    if len(others) != 2:
        raise ValueError(
            f"fit_diffusion needs exactly two space dims besides sample_dim {sample_dim!r}; "
            f"{name!r} has {others}. Select or stack the others (e.g. .isel(level=0))."
        )
    da = da.transpose(sample_dim, *others)
    out = da.to_dataset(name=name)
    out[name].attrs = dict(ds[name].attrs)
    for k in ("scale_factor", "add_offset", "_FillValue", "missing_value"):
        out[name].attrs.pop(k, None)
    return out, name, (others[0], others[1])


def _fixed_mask(values: np.ndarray, name: str, sample_dim: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Snapshots ``[N, H, W]`` with a fixed mask filled, and the mask (``None``: complete).

    A variable missing at the same pixels in every snapshot (the land of an ocean variable)
    is modelled where it exists: each missing pixel takes the value of its nearest existing
    pixel (so the network sees no artificial edge at the coast), and outputs are NaN
    there. Gaps that differ between snapshots are refused.
    """
    bad = ~np.isfinite(values)
    if not bad.any():
        return values, None
    fixed = bad.all(axis=0)
    varying = bad & ~fixed[None]
    if varying.any():
        frames = np.flatnonzero(varying.any(axis=(1, 2)))
        where = np.argwhere(varying[frames[0]])[:3].tolist()
        raise ValueError(
            f"{name!r} has NaN/inf values that are not the same in every snapshot ({int(varying.sum())} of them, "
            f"in {frames.size} snapshots; e.g. {sample_dim} index {int(frames[0])} at grid index {where}); the "
            "diffusion prior takes complete fields or a fixed mask (missing at the same pixels in every "
            "snapshot, as the land of an ocean variable). Fill the gaps first (fit_field) or drop those snapshots."
        )
    if fixed.all():
        raise ValueError(f"{name!r} is NaN everywhere: nothing to learn.")
    from scipy import ndimage

    mask = ~fixed
    nearest = ndimage.distance_transform_edt(fixed, return_distances=False, return_indices=True)
    return values[:, nearest[0], nearest[1]], mask


#: Pixel-steps (``steps x batch x H x W``) of a default fit, per device kind (see
#: :func:`default_fit_settings`). On one CPU thread a pixel-step of the default network
#: costs about 3.5 microseconds (forward, backward and Adam), so the CPU budget is about
#: six CPU-minutes; on a GPU the step bounds below decide.
PIXEL_STEPS: dict[str, float] = {"cpu": 1e8, "cuda": 2e9}
#: Largest minibatch of a default fit, in pixels (``batch x H x W``), per device kind.
BATCH_PIXELS: dict[str, int] = {"cpu": 2**18, "cuda": 2**22}
#: Bounds of the default number of optimisation steps.
MIN_STEPS, MAX_STEPS = 200, 2000


def default_fit_settings(n_frames: int, shape: Sequence[int], device: Any = "cpu", *,
                         batch_size: int | None = None, steps: int | None = None) -> dict[str, Any]:
    r"""The work of a default :func:`fit_diffusion`: minibatch size, steps and EMA decay.

    The cost of a step grows with the pixels of the minibatch, so the defaults share
    a budget of pixel-steps :math:`P` (:data:`PIXEL_STEPS`: :math:`10^8` on a CPU,
    :math:`2\cdot10^9` on a GPU) between them:

    * ``batch_size = min(32, n_frames, max(4, 2 ** floor(log2(B / (H W)))))`` with
      :math:`B` the
      largest minibatch in pixels (:data:`BATCH_PIXELS`: :math:`2^{18}` on a CPU,
      :math:`2^{22}` on a GPU), so that one step on a large grid stays affordable;
    * ``steps = P / (batch_size H W)``, rounded to tens and kept within
      ``[200, 2000]`` (:data:`MIN_STEPS`, :data:`MAX_STEPS`): small grids keep the
      full 2000 steps, large ones get fewer;
    * ``ema = min(0.999, 1 - 10 / steps)`` (0 below 11 steps): the average spans about
      the last tenth of the steps, whatever their number, so a short fit does not
      return weights dominated by the first steps.

    For example on a CPU: 552 frames of 32 x 48 -> batch 32, 2000 steps; 16 frames of
    120 x 240 -> batch 8, 430 steps; 8 frames of 64 x 128 -> batch 8, 1530 steps. On a
    GPU all three get 2000 steps.

    Parameters
    ----------
    n_frames
        Number of training snapshots.
    shape
        Grid size ``(H, W)``.
    device
        Where the fit runs (``"cpu"``, ``"cuda"``, a :class:`torch.device`); every
        device other than the CPU gets the GPU budget.
    batch_size
        A minibatch size given by the caller (then only the steps are derived).
    steps
        A number of steps given by the caller (then only the EMA decay is derived).

    Returns
    -------
    dict
        ``batch_size``, ``steps`` and ``ema``, plus ``rule``: the rule in words.

    Examples
    --------
    >>> default_fit_settings(16, (120, 240), "cpu")["steps"]
    430
    >>> default_fit_settings(552, (32, 48), "cpu")["batch_size"], default_fit_settings(552, (32, 48))["steps"]
    (32, 2000)
    >>> default_fit_settings(16, (120, 240), "cuda")["steps"]
    2000
    """
    kind = "cpu" if torch.device(device).type == "cpu" else "cuda"
    H, W = (int(n) for n in shape)
    pixels = H * W
    if batch_size is None:
        fits = BATCH_PIXELS[kind] // pixels  # frames per minibatch within the pixel cap
        batch_size = min(32, int(n_frames), max(4, 1 << (fits.bit_length() - 1) if fits else 0))
    batch_size = max(1, min(int(batch_size), int(n_frames)))
    rule = f"batch {batch_size}"
    if steps is None:
        raw = PIXEL_STEPS[kind] / (batch_size * pixels)
        steps = int(min(MAX_STEPS, max(MIN_STEPS, 10 * round(raw / 10))))
        rule = (f"{PIXEL_STEPS[kind]:.0e} pixel-steps on {kind} / ({batch_size} x {H} x {W}) "
                f"= {raw:.0f} -> {steps} steps (within [{MIN_STEPS}, {MAX_STEPS}]), {rule}")
    ema = min(0.999, 1.0 - 10.0 / steps) if steps > 10 else 0.0
    return {"batch_size": batch_size, "steps": int(steps), "ema": float(ema), "rule": rule}


class _LargeTensorHeap:
    """Keep large CPU tensors on the heap during a fit (glibc only; elsewhere a no-op).

    glibc hands every allocation above its mmap threshold (at most 32 MiB) to ``mmap``
    and returns it to the system when freed, so the activations of a minibatch of big
    fields are mapped, zero-filled page by page and unmapped at every step: on a
    120 x 240 grid half the CPU time of a fit was system time. Inside the block the
    threshold and the trim threshold are raised, so freed blocks are reused; on exit
    they are set to glibc's own dynamic maxima (32 MiB, 64 MiB) and ``malloc_trim``
    gives the freed memory back.
    """

    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

    def __init__(self, active: bool = True) -> None:
        self.libc: Any = None
        if active and os.environ.get("XSCIML_HEAP", "1") != "0":
            import ctypes
            import platform

            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                try:
                    self.libc = ctypes.CDLL("libc.so.6")
                except OSError:
                    self.libc = None

    def _set(self, mmap_threshold: int, trim_threshold: int) -> None:
        import ctypes

        self.libc.mallopt(self._M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
        self.libc.mallopt(self._M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))

    def __enter__(self) -> _LargeTensorHeap:
        if self.libc is not None:
            self._set(2**30, 2**31 - 1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.libc is not None:
            self._set(32 * 2**20, 64 * 2**20)
            self.libc.malloc_trim(0)


class _WithAverage(nn.Module):
    """The denoiser and its running average, one module for :func:`xsciml.training.fit`
    (only ``net``'s parameters are optimised; its checkpoints hold both)."""

    def __init__(self, net: nn.Module, average: nn.Module) -> None:
        super().__init__()
        self.net, self.average = net, average


@shared_docs
def fit_diffusion(
    obj: xr.Dataset | xr.DataArray,
    variable: str | None = None,
    *,
    sample_dim: str = "time",
    space: Sequence[str] | None = None,
    base_channels: int = 32,
    levels: int = 3,
    channel_mult: Sequence[int] | None = None,
    emb_dim: int = 64,
    padding_mode: str = "zeros",
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float = 2e-3,
    scheduler: Any = "cosine",
    grad_clip: float | None = 1.0,
    ema: float | None = None,
    sigma_data: float | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    device: Any = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    time_limit: float | str | None = None,
) -> DiffusionPrior:
    r"""Fit an EDM diffusion prior to the snapshots of one gridded variable.

    Parameters
    ----------
    obj
        Dataset or DataArray with ``sample_dim`` and two space dims: complete fields, or
        fields missing at the same pixels in every snapshot (a fixed mask, such as the land
        of an ocean variable), which the prior keeps as :attr:`DiffusionPrior.mask`.
    variable
        Variable to model (optional when there is only one).
    sample_dim
        The dimension indexing snapshots.
    space
        The two space dims, in the order wanted for the grid (default: the dims other
        than ``sample_dim``, in the data's order; a descending latitude stays so).
    base_channels
        U-Net width.
    levels
        Number of resolutions; each side of the grid must be at least ``2 ** (levels - 1)``.
    channel_mult
        Width multipliers per level.
    emb_dim
        Width of the noise embedding.
    padding_mode
        Convolution padding.
    steps
        Optimisation steps (Adam) through :func:`xsciml.training.fit`. Default: scaled
        to the data and the device by :func:`default_fit_settings` -- a budget of
        :math:`10^8` pixel-steps (``steps x batch x H x W``) on a CPU and
        :math:`2\cdot10^9` on a GPU, within ``[200, 2000]`` steps: 2000 steps for
        552 frames of 32 x 48, 430 (batch 8) for 16 frames of 120 x 240 on a CPU,
        a few minutes on two cores. The rule used is in ``prior.info["defaults"]``.
    batch_size
        Snapshots per minibatch. Default ``min(32, frames, max(4, 2 ** floor(log2(B / (H W)))))``
        with ``B = 2**18`` pixels on a CPU, ``2**22`` on a GPU.
    lr
        Learning rate.
    scheduler
        Learning-rate schedule.
    grad_clip
        Gradient clipping norm.
    ema
        Decay of the exponential moving average of the weights (updated every step;
        the averaged weights are kept). ``0`` keeps the last weights. Default
        ``min(0.999, 1 - 10 / steps)``: an average over about the last tenth of the
        steps.
    sigma_data
        :math:`\sigma_d`; default the standard deviation of the normalised training data.
    P_mean
        Mean of the log-normal training noise distribution,
        :math:`\ln\sigma \sim \mathcal N(P_{mean}, P_{std}^2)`.
    P_std
        Standard deviation of that distribution.
    device
        Where to train.
    seed
        The seed (weights, noise and batches).
    progress
        Show a progress bar.
    {training_options}
        The checkpoint holds the averaged (EMA) weights too, so a resumed fit
        continues the average where it stopped. A fit stopped by ``time_limit``
        returns the averaged weights reached so far; ``prior.info["stop_reason"]``
        says ``"time_limit"`` and ``prior.info["steps"]`` how many steps were taken.

    Returns
    -------
    DiffusionPrior

    Raises
    ------
    ValueError
        NaN in the data that differ between snapshots (complete fields or a fixed mask:
        fill the gaps first), data NaN everywhere, a grid too small for ``levels``, fewer
        than two snapshots, bad hyper-parameters.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.random.default_rng(0).normal(size=(16, 8, 8)),
    ...                   dims=("time", "y", "x"), name="u", attrs={"units": "m"})
    >>> prior = fit_diffusion(da, steps=5, base_channels=8, levels=2, progress=False)
    >>> prior.sample(2, steps=3, progress=False).sizes["sample"]
    2
    """
    from ..training import fit

    ds, name, space_dims = _training_array(obj, variable, sample_dim, space)
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {ema!r}.")
    if P_std <= 0:
        raise ValueError(f"P_std must be > 0, got {P_std!r}.")
    values = np.asarray(ds[name].values, dtype=np.float64)
    if values.shape[0] < 2:
        raise ValueError(f"fit_diffusion needs at least 2 snapshots along {sample_dim!r}, got {values.shape[0]}.")
    values, mask = _fixed_mask(values, name, sample_dim)
    from ..units import physical_bounds

    physical_bounds(ds[name].attrs, variable=name)  # samples are projected into them: unusable attrs fail here
    H, W = values.shape[1:]
    need = 2 ** (levels - 1)
    if min(H, W) < need:
        raise ValueError(f"the grid {H}x{W} is too small for levels={levels} (each side >= {need}); use fewer levels.")
    mean = values.mean(axis=0)
    pixel_std = values.std(axis=0)
    anomalies = values - mean if mask is None else (values - mean)[:, mask]
    scale = float(np.sqrt(np.mean(anomalies ** 2)))
    if not scale > 0:
        raise ValueError(f"{name!r} is constant over {sample_dim!r}: nothing to learn.")
    z = ((values - mean) / scale).astype(np.float32)[:, None]
    sd = float(z.std()) if sigma_data is None else float(sigma_data)
    if not sd > 0:
        raise ValueError(f"sigma_data must be > 0, got {sd!r}.")

    def standardise(m: np.ndarray) -> np.ndarray:
        s = m.std()
        return (m - m.mean()) / (s if s > 0 else 1.0)

    static = torch.from_numpy(np.stack([standardise(mean), standardise(pixel_std)]).astype(np.float32))
    seed_everything(seed)
    net = EDMDenoiser((H, W), sd, static=static, base_channels=base_channels, levels=levels,
                      channel_mult=channel_mult, emb_dim=emb_dim, padding_mode=padding_mode)
    dev = resolve_device(device)
    net.to(dev)
    for arg, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{arg} must be a positive integer (or None for the default), got {value!r}.")
    defaults = default_fit_settings(len(z), (H, W), dev, batch_size=batch_size, steps=steps)
    steps, batch_size = defaults["steps"], defaults["batch_size"]
    if ema is None:
        ema = defaults["ema"]
    averaged = None
    steps_done: list[Callable[[TrainState], bool | None]] = []
    trained: nn.Module = net
    if ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
        # trained together so that the checkpoint holds (and a resumed fit restores) the average
        trained = _WithAverage(net, averaged)

        def update_ema(state: TrainState) -> None:
            averaged.update_parameters(net)

        steps_done.append(update_ema)

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        (zb,) = batch
        return edm_loss(net, zb, P_mean, P_std)

    with _LargeTensorHeap(dev.type == "cpu"):
        history = fit(trained, loss_fn, (torch.from_numpy(z),), steps=steps, batch_size=batch_size,
                      optimizer="adam", lr=lr, scheduler=scheduler, grad_clip=grad_clip, device=dev,
                      params=[p for p in net.parameters() if p.requires_grad],
                      seed=seed, progress=progress, desc="fit_diffusion[EDM]",
                      callbacks=[*steps_done, *((callbacks,) if callable(callbacks) else callbacks)],
                      checkpoint=checkpoint, resume=resume,
                      time_limit=time_limit)
    # the averaged model wraps a copy of net
    final = cast(EDMDenoiser, copy.deepcopy(averaged.module)) if averaged is not None else net
    final = final.cpu().eval()
    grid = Grid.from_data(ds, [name], sample_dim)
    _, info = sample_info(ds, sample_dim)
    info.update(steps=int(history.steps), steps_asked=int(steps), batch_size=int(batch_size), ema=float(ema),
                P_mean=float(P_mean), P_std=float(P_std), stop_reason=history.stop_reason,
                defaults=defaults["rule"])
    # a few training frames, evenly spread, for downscale's comparison with bicubic
    n_check = int(max(1, min(4, len(values), 2**18 // (H * W))))
    picks = np.unique(np.linspace(0, len(values) - 1, n_check).round().astype(int))
    info["check_frames"] = [str(v) for v in np.asarray(ds[sample_dim].values)[picks]] if sample_dim in ds.coords \
        else [int(i) for i in picks]
    if mask is not None:
        info["masked_pixels"] = int((~mask).sum())
    check = values[picks].astype(np.float32)
    if mask is not None:
        check[:, ~mask] = np.nan
    prior = DiffusionPrior(final, grid, mean, scale, sample_dim=sample_dim, info=info,
                           check_fields=check, mask=mask)
    prior.history = history
    prior.fit_progress = progress
    return prior
