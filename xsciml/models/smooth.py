r"""Smooth latent dynamics: an encoder, a consistency regulariser and a decoder ansatz.

After Wan, Zepeda-Núñez, Boral & Sha, "Evolve Smoothly, Fit Consistently: Learning
Smooth Latent Dynamics for Advection-Dominated Systems" (ICLR 2023). The state
:math:`u_t` of a periodic field is represented by the parameters :math:`\theta_t` of a
small decoder :math:`\Psi_\theta(x)`; an encoder :math:`\Lambda` maps a gridded
snapshot to :math:`\theta`, and a neural ODE evolves :math:`\theta`:

.. math::

    \theta_0 = \Lambda(u_0), \qquad \frac{d\theta}{dt} = f(\theta), \qquad
    u_t(x) \approx \Psi_{\theta_t}(x).

**Decoders.** Both are periodic in every space coordinate by construction (period
:math:`L_d` of each axis; phases :math:`\varphi_k(x) = 2\pi\, k\cdot(x - x_0)/L`).

* ``"fourier"`` — the *nonlinear Fourier ansatz*. With :math:`J` "waves" and a set
  :math:`\mathcal K` of :math:`K`-bounded integer wave vectors (``1..K`` in 1-D; the half
  plane of :math:`\max(|k_1|, |k_2|) \le K` in 2-D),

  .. math::

      \Psi_\theta(x)_c = b_c + \sum_{j=1}^{J} a_{jc}\,
          \tanh\Big(d_j + \mathrm{Re} \sum_{k\in\mathcal K} c_{jk}\, e^{i\varphi_k(x)}\Big),
      \qquad \theta = \{b_c, a_{jc}, d_j, c_{jk} \in \mathbb C\}.

  Each wave is a saturating function of a :math:`K`-mode Fourier series, so its own
  Fourier expansion :math:`\mathrm{Re}\sum_{k} \phi_{jk}(\theta) e^{i\varphi_k(x)}` has
  all harmonics: sharp fronts and narrow pulses need a handful of parameters where a
  truncated Fourier series needs many. Translating a wave by :math:`s` multiplies
  :math:`c_{jk}` by :math:`e^{-2i\pi k s/L}` — a smooth rotation of :math:`\theta` — so
  advection is a smooth latent motion. This is our reading of the paper's ansatz
  (learned amplitudes and phases of low Fourier modes, composed with a nonlinearity);
  the parameters all live in :math:`\theta` (the decoder has no weights of its own).
  ``latent_dim = C + J C + J + 2 J |\mathcal K|``.
* ``"mlp"`` — a hypernetwork decoder: a tiny MLP on Fourier features
  :math:`[\cos(2\pi m x_d/L_d), \sin(2\pi m x_d/L_d)]_{m \le M}` of the periodic
  coordinates (any number of space dimensions, e.g. ``(y, x)``), whose weights are
  :math:`W(\theta) = W_0 + P\theta` (a learned linear hypernetwork: :math:`\theta` moves
  the weights within a ``latent_dim``-dimensional subspace). Evaluated for many
  :math:`\theta` at once with batched matrix products.

**Encoder** :math:`\Lambda`: a CNN with circular padding on the training grid (1-D or
2-D; strided convolutions down to ≤ 8 cells per axis, then two dense layers). Initial
states on another grid are interpolated (periodic, linear) to the training grid first;
with ``encode_steps > 0`` the encoder's :math:`\theta` is then refined by a few Adam
steps on the decoded field's misfit at the observed points (NaN points allowed then).

**Training**, in two stages through :func:`xsciml.training.fit`:

1. encoder (and ``"mlp"`` hypernetwork) on all training frames,

   .. math::

       \mathcal L = \lVert u - \Psi(\Lambda(u))\rVert^2
           + \gamma\, \frac{\lVert \Lambda(\Psi(\theta)) - \theta \rVert^2}{\overline{\theta^2}},
       \qquad \theta = \Lambda(u),

   the *consistency* term asks the encoder to recover :math:`\theta` from its own
   decoding, so the encode/decode diagram commutes and equivalent parametrisations of a
   field (signs, permutations of waves, null directions) should not be used arbitrarily
   from one frame to the next. It is normalised by the mean square of :math:`\theta`
   over the batch (a relative error), so ``consistency`` (:math:`\gamma`) does not
   depend on the scale of :math:`\theta`. By default (``consistency_target="free"``)
   it is differentiated through both encoder passes, as the paper writes the loss;
   ``"fixed"`` holds :math:`\theta = \Lambda(u)` fixed in it. An optional penalty on
   the second differences in time of :math:`\theta` over consecutive frames
   (``smoothness``, not in the paper) targets smooth latent trajectories directly;
2. the latent ODE :math:`f` (:class:`~xsciml.models.latent_ode.LatentDynamics`, on
   :math:`\theta` standardised with the training mean and standard deviation) on the
   encoded training trajectories, by teacher-forced rollouts (as in DINo), with a
   fixed-step solver (``train_solver``).

Forecasts integrate :math:`f` with ``solver`` (default the adaptive ``"dopri5"`` of
torchdiffeq); the number of function evaluations of the last forecast is
:attr:`SmoothDynamics.nfe`.
"""

from __future__ import annotations

import math
import os
import time as _time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from .._docs import shared_docs
from .._utils import check_positive_int
from ..base import register_estimator
from ..coords import CoordinateEncoder
from ..tensors import Scaler, decode_variable, space_dims
from ..training import TrainState
from ..training._checkpoints import time_limit_words
from .autodecode import CodePosterior, laplace_posterior
from .latent_ode import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    Clock,
    InitialStates,
    LatentDynamics,
    LatentForecaster,
    OffsetTable,
    default_window,
    draw_windows,
    dynamics_loss,
    ode_settings,
    prepare_trajectories,
    resolve_sample_dim,
    teacher_forcing_schedule,
)

__all__ = [
    "FourierAnsatz",
    "HyperMLP",
    "SmoothDynamics",
    "SmoothModule",
    "SnapshotEncoder",
    "fit_smooth_dynamics",
]


# =========================================================================== decoders
def _wave_vectors(ndim: int, modes: int) -> np.ndarray:
    """Integer wave vectors, one of each ±k pair, with max-norm in ``1..modes``."""
    if ndim == 1:
        return np.arange(1, modes + 1)[:, None]
    grids = np.stack(np.meshgrid(*[np.arange(-modes, modes + 1)] * ndim, indexing="ij"), -1)
    ks = grids.reshape(-1, ndim)
    keep = []
    for k in ks:
        nz = np.flatnonzero(k)
        if nz.size and k[nz[0]] > 0:  # first non-zero component positive: half space
            keep.append(k)
    return np.array(keep)


class FourierAnsatz(nn.Module):
    r"""Nonlinear Fourier ansatz :math:`\Psi_\theta(x)` (see the module docs); no own weights.

    Parameters
    ----------
    ndim
        Number of space coordinates.
    out_channels
        Number of decoded variables :math:`C`.
    modes
        :math:`K`, the largest wave number (max-norm) of the inner Fourier series.
    waves
        :math:`J`, the number of nonlinear waves.

    Examples
    --------
    >>> dec = FourierAnsatz(1, 1, modes=3, waves=2)
    >>> dec.latent_dim
    17
    >>> x = torch.linspace(0, 1, 9)[:-1, None]
    >>> out = dec(torch.randn(5, dec.latent_dim), dec.features(x, torch.tensor([1.0])))
    >>> out.shape
    torch.Size([5, 8, 1])
    """

    k: Tensor  # a buffer, registered in __init__

    def __init__(self, ndim: int, out_channels: int = 1, modes: int = 4, waves: int = 4) -> None:
        super().__init__()
        if modes < 1 or waves < 1:
            raise ValueError(f"modes and waves must be >= 1, got modes={modes}, waves={waves}")
        self.ndim, self.out_channels = int(ndim), int(out_channels)
        self.modes, self.waves = int(modes), int(waves)
        self.register_buffer("k", torch.as_tensor(_wave_vectors(self.ndim, self.modes), dtype=torch.float32),
                             persistent=False)
        self.n_k = int(self.k.shape[0])

    @property
    def latent_dim(self) -> int:
        C, J = self.out_channels, self.waves
        return C + J * C + J + 2 * J * self.n_k

    def config(self) -> dict[str, Any]:
        return {"kind": "fourier", "ndim": self.ndim, "out_channels": self.out_channels,
                "modes": self.modes, "waves": self.waves}

    def initial_theta(self, generator: torch.Generator | None = None) -> Tensor:
        """A well-conditioned starting θ: unit-order amplitudes, random inner series.

        (At θ = 0 the ansatz sits at a saddle: every wave is the product of two small
        factors.) Used as the bias of the encoder's last layer before training.
        """
        C, J, nk = self.out_channels, self.waves, self.n_k
        a = torch.full((J * C,), 1.0 / math.sqrt(J))
        c = torch.randn(2 * J * nk, generator=generator) / math.sqrt(nk)
        return torch.cat([torch.zeros(C), a, torch.zeros(J), c])

    def features(self, x: Tensor, period: Tensor) -> Tensor:
        """``[cos φ_k(x), sin φ_k(x)]`` ``[P, 2|K|]`` of coordinates ``x [P, D]`` (from the origin)."""
        phase = 2 * math.pi * (x / period.to(x)) @ self.k.to(x).T  # [P, nk]
        return torch.cat([torch.cos(phase), torch.sin(phase)], -1)

    def forward(self, theta: Tensor, feats: Tensor) -> Tensor:
        C, J, nk = self.out_channels, self.waves, self.n_k
        b, a, d, c = theta.split([C, J * C, J, 2 * J * nk], dim=-1)
        lead = theta.shape[:-1]
        cr, ci = c.reshape(*lead, 2, J, nk).unbind(-3)
        # d + Re(sum_k c_k e^{i phi_k}) = [Re c, -Im c, d] . [cos phi, sin phi, 1]: one matrix
        # product. tanh(u) = 2 sigmoid(2u) - 1, with the factors folded into the (small)
        # coefficients: sum_j a_j tanh(u_j) + b = sum_j 2 a_j sigmoid(2 u_j) + (b - sum_j a_j).
        # One elementwise pass over [..., J, P] instead of three; torch's CPU tanh is also
        # several times slower than its sigmoid.
        coef = 2.0 * torch.cat([cr, -ci, d.unsqueeze(-1)], -1)  # [..., J, 2|K| + 1]
        basis = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], -1)  # [P, 2|K| + 1]
        waves = torch.sigmoid(coef @ basis.T)  # [..., J, P]
        a = a.reshape(*lead, J, C)
        if C == 1:  # [..., 1, J] @ [..., J, P]: a weighted sum of the waves
            out = ((2.0 * a).transpose(-1, -2) @ waves).transpose(-1, -2)
        else:
            out = waves.transpose(-1, -2) @ (2.0 * a)  # [..., P, C]
        return out + (b - a.sum(-2)).unsqueeze(-2)


class HyperMLP(nn.Module):
    r"""Tiny MLP :math:`\Psi_\theta(x)` whose weights are :math:`W_0 + P\theta` (hypernetwork).

    Inputs are the periodic Fourier features of the coordinates (``n_freq`` harmonics per
    axis); hidden layers use :math:`\sin` activations.

    Parameters
    ----------
    ndim, out_channels
        Space dimensions and decoded variables.
    latent_dim
        Size of :math:`\theta`.
    width, depth
        Hidden width and number of hidden layers of the decoded MLP.
    n_freq
        Harmonics per axis of the input features.

    Examples
    --------
    >>> dec = HyperMLP(2, 1, latent_dim=6, width=8, depth=2, n_freq=2)
    >>> x = torch.rand(10, 2)
    >>> dec(torch.randn(3, 4, 6), dec.features(x, torch.tensor([1.0, 1.0]))).shape
    torch.Size([3, 4, 10, 1])
    """

    m: Tensor  # a buffer, registered in __init__

    def __init__(self, ndim: int, out_channels: int = 1, latent_dim: int = 16, width: int = 32,
                 depth: int = 2, n_freq: int = 4) -> None:
        super().__init__()
        if min(latent_dim, width, depth, n_freq) < 1:
            raise ValueError("latent_dim, width, depth and n_freq must be >= 1")
        self.ndim, self.out_channels = int(ndim), int(out_channels)
        self.latent_dim, self.width, self.depth, self.n_freq = int(latent_dim), int(width), int(depth), int(n_freq)
        fin = 2 * self.n_freq * self.ndim
        dims = [fin] + [self.width] * self.depth + [self.out_channels]
        self.shapes = [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]
        n_w = sum(o * i + o for o, i in self.shapes)
        base = []
        for o, i in self.shapes:  # SIREN-like uniform init of the base weights
            lim = math.sqrt(6.0 / i)
            base += [torch.empty(o * i).uniform_(-lim, lim), torch.zeros(o)]
        self.base = nn.Parameter(torch.cat(base))
        self.hyper = nn.Linear(self.latent_dim, n_w, bias=False)
        nn.init.normal_(self.hyper.weight, std=0.1 / math.sqrt(self.latent_dim))
        self.register_buffer("m", torch.arange(1, self.n_freq + 1, dtype=torch.float32), persistent=False)

    def config(self) -> dict[str, Any]:
        return {"kind": "mlp", "ndim": self.ndim, "out_channels": self.out_channels,
                "latent_dim": self.latent_dim, "width": self.width, "depth": self.depth,
                "n_freq": self.n_freq}

    def features(self, x: Tensor, period: Tensor) -> Tensor:
        """Fourier features ``[P, 2 n_freq D]`` of coordinates ``x [P, D]`` (from the origin)."""
        ph = 2 * math.pi * (x / period.to(x)).unsqueeze(-1) * self.m.to(x)  # [P, D, M]
        return torch.cat([torch.cos(ph), torch.sin(ph)], -1).reshape(len(x), -1)

    def forward(self, theta: Tensor, feats: Tensor) -> Tensor:
        w = self.base + self.hyper(theta)  # [..., n_w]
        lead = theta.shape[:-1]
        h = feats.expand(*lead, *feats.shape)  # [..., P, F]
        pos = 0
        for li, (o, i) in enumerate(self.shapes):
            W = w[..., pos:pos + o * i].reshape(*lead, o, i)
            pos += o * i
            bias = w[..., pos:pos + o]
            pos += o
            h = h @ W.transpose(-1, -2) + bias.unsqueeze(-2)
            if li < len(self.shapes) - 1:
                h = torch.sin(h)
        return h


#: The decoders :math:`\Psi_\theta` of a :class:`SmoothModule`.
_Decoder = FourierAnsatz | HyperMLP


def _build_decoder(config: Mapping[str, Any]) -> _Decoder:
    cfg = dict(config)
    kind = cfg.pop("kind")
    if kind == "fourier":
        return FourierAnsatz(**cfg)
    if kind == "mlp":
        return HyperMLP(**cfg)
    raise ValueError(f"unknown decoder kind {kind!r}")


# =========================================================================== encoder
class SnapshotEncoder(nn.Module):
    """CNN (circular padding) mapping gridded snapshots ``[N, C, *grid]`` to ``θ [N, d]``.

    Parameters
    ----------
    in_channels, latent_dim
        Input variables and size of θ.
    grid
        Grid shape (1 or 2 axes) the encoder is built for.
    width
        Channels of the convolutions (and half the dense width).

    Examples
    --------
    >>> enc = SnapshotEncoder(1, 9, (32,), width=8)
    >>> enc(torch.randn(4, 1, 32)).shape
    torch.Size([4, 9])
    """

    def __init__(self, in_channels: int, latent_dim: int, grid: Sequence[int], width: int = 32) -> None:
        super().__init__()
        self.in_channels, self.latent_dim, self.width = int(in_channels), int(latent_dim), int(width)
        self.grid = tuple(int(g) for g in grid)
        if len(self.grid) not in (1, 2):
            raise ValueError(f"the encoder handles 1-D or 2-D grids, got grid {self.grid}")
        # 1-D or 2-D convolutions, the stride an int or a pair to match
        conv: Callable[..., nn.Module] = nn.Conv1d if len(self.grid) == 1 else nn.Conv2d
        layers: list[nn.Module] = [conv(self.in_channels, self.width, 5, padding=2, padding_mode="circular"),
                                   nn.GELU()]
        size = list(self.grid)
        while max(size) > 8:
            stride = tuple(2 if s > 8 else 1 for s in size)
            layers += [conv(self.width, self.width, 3, stride=stride if len(size) > 1 else stride[0],
                            padding=1, padding_mode="circular"), nn.GELU()]
            size = [(s + 2 - 3) // st + 1 for s, st in zip(size, stride, strict=True)]
        self.conv = nn.Sequential(*layers)
        flat = self.width * int(np.prod(size))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 4 * self.width), nn.GELU(),
                                  nn.Linear(4 * self.width, self.latent_dim))

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "latent_dim": self.latent_dim,
                "grid": list(self.grid), "width": self.width}

    def forward(self, u: Tensor) -> Tensor:
        return self.head(self.conv(u))


class SmoothModule(nn.Module):
    """Encoder, decoder, latent dynamics and the latent normalisation."""

    theta_mean: Tensor  # buffers, registered in __init__
    theta_std: Tensor

    def __init__(self, encoder: SnapshotEncoder, decoder: _Decoder, dynamics: LatentDynamics) -> None:
        super().__init__()
        d = dynamics.latent_dim
        self.encoder, self.decoder, self.dynamics = encoder, decoder, dynamics
        self.register_buffer("theta_mean", torch.zeros(d))
        self.register_buffer("theta_std", torch.ones(d))
        self.teacher_forcing = 1.0

    def normalise(self, theta: Tensor) -> Tensor:
        return (theta - self.theta_mean) / self.theta_std

    def denormalise(self, z: Tensor) -> Tensor:
        return z * self.theta_std + self.theta_mean


# =========================================================================== grid helpers
def _grid_info(ds: xr.Dataset, space: Sequence[str], period: Any) -> tuple[list[np.ndarray], list[float]]:
    """Training-grid coordinates (one 1-D array per space dim) and their periods."""
    coords, periods = [], []
    given = {}
    if period is not None:
        if isinstance(period, Mapping):
            given = {str(k): float(v) for k, v in period.items()}
        else:
            vals = np.atleast_1d(np.asarray(period, dtype=np.float64))
            if vals.size == 1:
                vals = np.repeat(vals, len(space))
            if vals.size != len(space):
                raise ValueError(f"period must be one number or one per space coordinate {list(space)}, "
                                 f"got {period!r}")
            given = dict(zip(space, vals.tolist(), strict=True))
    for n in space:
        c = ds[n]
        if c.ndim != 1 or c.dims[0] != n:
            raise ValueError(f"space coordinate {n!r} must be a 1-D dimension coordinate of a regular "
                             "periodic grid (the encoder is a CNN on the grid); interpolate the data "
                             "to such a grid first")
        v = np.asarray(decode_variable(c).values, dtype=np.float64)
        if v.size < 4:
            raise ValueError(f"space dimension {n!r} has {v.size} points; need at least 4")
        dx = np.diff(v)
        if np.any(dx <= 0) or np.ptp(dx) > 1e-6 * abs(dx.mean()) * max(1, v.size):
            raise ValueError(f"space coordinate {n!r} must be increasing with a uniform spacing "
                             "(a periodic grid); sort or interpolate the data first")
        L = given.get(n, c.attrs.get("period"))
        L = float(L) if L is not None else float(dx.mean() * v.size)
        if not L >= np.ptp(v):
            raise ValueError(f"period {L} of {n!r} is shorter than the extent of its grid ({np.ptp(v)})")
        coords.append(v)
        periods.append(L)
    return coords, periods


def _periodic_interp(da: xr.DataArray, dim: str, new: np.ndarray, period: float) -> xr.DataArray:
    """Linear interpolation along a periodic dimension (the grid wraps around)."""
    x = np.asarray(da[dim].values, dtype=np.float64)
    lo = da.isel({dim: [-1]}).assign_coords({dim: x[-1:] - period})
    hi = da.isel({dim: [0]}).assign_coords({dim: x[:1] + period})
    ext = xr.concat([lo, da, hi], dim=dim)
    x0 = float(x[0])
    wrapped = x0 + np.mod(np.asarray(new, dtype=np.float64) - x0, period)
    out = ext.interp({dim: wrapped})
    return out.assign_coords({dim: new})


# =========================================================================== estimator
@register_estimator
class SmoothDynamics(LatentForecaster):
    """A fitted smooth-latent-dynamics forecaster (encoder, decoder ansatz, latent ODE).

    Built by :func:`fit_smooth_dynamics`. Same interface as
    :class:`~xsciml.models.dino.DINo`: :meth:`encode`, :meth:`decode`, :meth:`forecast`,
    :meth:`score`, :meth:`save` / :func:`xsciml.load`; :attr:`nfe` is the number of
    ODE function evaluations of the last forecast.
    """

    module: SmoothModule  # set by LatentForecaster.__init__

    def __init__(self, module: SmoothModule, encoder: CoordinateEncoder, scaler: Scaler,
                 variables: list[str], *, sample_dim: Hashable | None, time: str, clock: Clock,
                 ode: dict[str, Any], grid: list[np.ndarray], periods: list[float],
                 coord_units: dict[str, str] | None = None, var_attrs: dict | None = None,
                 info: dict | None = None) -> None:
        super().__init__(module, encoder, scaler, variables, sample_dim=sample_dim, time=time,
                         clock=clock, ode=ode, coord_units=coord_units, var_attrs=var_attrs, info=info)
        self.grid = [np.asarray(g, dtype=np.float64) for g in grid]
        self.periods = [float(p) for p in periods]
        mesh = np.meshgrid(*self.grid, indexing="ij")
        self.train_points = np.stack([m.ravel() for m in mesh], -1)
        self.train_observed = np.ones(len(self.train_points), dtype=bool)

    # ------------------------------------------------------------------ properties
    @property
    def latent_dim(self) -> int:
        """Size of θ."""
        return int(self.module.dynamics.latent_dim)

    @property
    def nfe(self) -> int | None:
        """ODE function evaluations of the last :meth:`forecast` (``None`` before any)."""
        return self.last_nfe

    # ------------------------------------------------------------------ persistence
    def _get_config(self) -> dict[str, Any]:
        return {**self._common_config(), "encoder_net": self.module.encoder.config(),
                "periods": self.periods}

    def _get_tensors(self) -> dict[str, Tensor]:
        out = {f"module.{k}": v.detach().cpu() for k, v in self.module.state_dict().items()}
        for i, g in enumerate(self.grid):
            out[f"grid.{i}"] = torch.as_tensor(np.array(g))
        return {**out, **self._reference_tensors()}

    @classmethod
    def _from_state(cls, config: dict, tensors: dict[str, Tensor]) -> SmoothDynamics:
        module = SmoothModule(SnapshotEncoder(**config["encoder_net"]), _build_decoder(config["decoder"]),
                              LatentDynamics(**config["dynamics"]))
        module.load_state_dict({k[len("module."):]: v.cpu() for k, v in tensors.items()
                                if k.startswith("module.")})
        module.eval()
        grid = [tensors[f"grid.{i}"].cpu().numpy() for i in range(len(config["periods"]))]
        model = cls(module, CoordinateEncoder.from_dict(config["encoder"]), Scaler.from_dict(config["scaler"]),
                    config["variables"], sample_dim=config["sample_dim"], time=config["time"],
                    clock=Clock(**config["clock"]), ode=config["ode"], grid=grid,
                    periods=config["periods"], coord_units=config.get("coord_units"),
                    var_attrs=config.get("var_attrs"), info=config.get("info"))
        model._restore_references(config, tensors)
        return model

    def _provenance_extra(self) -> dict[str, Any]:
        return {"xsciml_latent_dim": self.latent_dim,
                "xsciml_decoder": self.module.decoder.config()["kind"],
                "xsciml_training_period": self.info.get("training_period", ""),
                "xsciml_ode_method": self.ode.get("method", "")}

    # ------------------------------------------------------------------ encoding
    def _on_grid(self, ds: xr.Dataset) -> xr.Dataset:
        """``ds``'s variables on the training grid (periodic linear interpolation if needed)."""
        out = ds[self.variables]
        for n, g, L in zip(self.space, self.grid, self.periods, strict=True):
            if n not in out.dims:
                raise ValueError(f"the initial state must be gridded along the space dimension {n!r} "
                                 "(a 1-D coordinate of that name); interpolate scattered points first")
            v = np.asarray(decode_variable(out[n]).values, dtype=np.float64)
            if v.shape == g.shape and np.allclose(v, g, rtol=0, atol=1e-6 * L):
                continue
            out = xr.Dataset({var: _periodic_interp(out[var], n, g, L) for var in self.variables})
        return out

    def _states(self, ds: xr.Dataset) -> InitialStates:
        """Scaled snapshots ``[N, C, *grid]`` (NaN kept) on the training grid, and their labels."""
        g = self._on_grid(ds)
        arrays, bdims, bshape = self._state_arrays(g, list(self.space))
        return InitialStates(self._snapshots(np.stack(arrays, 1)), bdims, bshape,
                             self._batch_coords(ds, bdims))

    def _snapshots(self, y: np.ndarray) -> np.ndarray:
        """Raw snapshots ``[N, C, *grid]`` checked and standardised per variable."""
        if np.isinf(y).any():
            raise ValueError("the initial state contains infinite values; replace them with NaN")
        ys = self.scaler.transform(np.moveaxis(y, 1, -1))
        return np.moveaxis(ys, -1, 1)

    def _grid_context(self, ds: xr.Dataset) -> dict[str, Any]:
        """How the chunks of a lazy forecast reach the training grid: transposed only, or
        interpolated (then with the coordinates to rebuild each chunk's Dataset)."""
        out = ds[self.variables]
        on_grid = True
        for n, g, L in zip(self.space, self.grid, self.periods, strict=True):
            if n not in out.dims:
                raise ValueError(f"the initial state must be gridded along the space dimension {n!r} "
                                 "(a 1-D coordinate of that name); interpolate scattered points first")
            v = np.asarray(decode_variable(out[n]).values, dtype=np.float64)
            on_grid &= bool(v.shape == g.shape and np.allclose(v, g, rtol=0, atol=1e-6 * L))
        sdims = space_dims(ds, self.space, ds[self.variables[0]].dims)
        return {"sdims": list(sdims), "perm": [sdims.index(n) for n in self.space],
                "space_coords": None if on_grid else
                {n: (tuple(ds[n].dims), np.asarray(ds[n].values)) for n in self.space}}

    def _block_states(self, arrays: list[np.ndarray], context: dict[str, Any]) -> InitialStates:
        n = len(arrays[0])
        if context["space_coords"] is not None:  # another grid: interpolated by xarray
            dims = ("_state", *context["sdims"])
            ds = xr.Dataset({v: (dims, a) for v, a in zip(self.variables, arrays, strict=True)},
                            coords=context["space_coords"])
            return InitialStates(self._states(ds).values, ["_state"], [n])
        perm = [0] + [1 + p for p in context["perm"]]
        y = np.stack([a.transpose(perm) for a in arrays], 1)
        return InitialStates(self._snapshots(y), ["_state"], [n])

    def _grid_features(self, device: torch.device) -> Tensor:
        mesh = np.meshgrid(*self.grid, indexing="ij")
        x = np.stack([m.ravel() - g[0] for m, g in zip(mesh, self.grid, strict=True)], -1)
        return self.module.decoder.features(torch.as_tensor(x, dtype=torch.float32, device=device),
                                            torch.as_tensor(self.periods, dtype=torch.float32))

    def _encode_array(self, ys: np.ndarray, *, steps: int, lr: float, reg: float, device: Any,
                      seed: int | None, progress: bool | None, batch_size: int) -> Tensor:
        return self._encode_refined(ys, steps=steps, lr=lr, reg=reg, device=device, seed=seed,
                                    progress=progress, batch_size=batch_size, posterior=False).mean

    def _encode_refined(self, ys: np.ndarray, *, steps: int, lr: float, reg: float, device: Any,
                        seed: int | None, progress: bool | None, batch_size: int,
                        posterior: bool) -> CodePosterior:
        """θ ``[N, d]`` of standardised snapshots ``ys [N, C, *grid]`` (the encoder, refined by
        ``steps`` Adam steps), with the Laplace posterior of the refinement when ``posterior``
        (else only ``mean`` is filled)."""
        from .._utils import progress_bar, resolve_device, seed_everything

        if posterior and steps == 0:
            raise ValueError(
                "members= (and encode_posterior) need encode_steps > 0 with the smooth model: the "
                "Laplace posterior is that of the refinement's misfit at the observed points "
                "around the encoder's guess, and the encoder alone (encode_steps=0) fits no "
                "misfit to estimate it from; pass e.g. encode_steps=20")
        d = self.latent_dim
        none = torch.empty(0, d, d, dtype=torch.float64), torch.empty(0, dtype=torch.float64)

        mask = np.isfinite(ys)
        N = len(ys)
        if not mask.all():
            if steps == 0:
                raise ValueError(
                    "the initial state has NaN on the training grid; the encoder needs complete "
                    "snapshots: fill them, or pass encode_steps > 0 to refine the encoder's guess "
                    "on the observed points only")
            empty = np.flatnonzero(~mask.reshape(N, -1).any(1))
            if empty.size:
                raise ValueError(f"{empty.size} initial state(s) have no observed point; drop them first")
        dev = resolve_device(device)
        m = self.module.to(dev).eval()
        per = max(1, int(batch_size) // max(1, int(np.prod(ys.shape[1:]))))
        if steps == 0:  # the encoder alone: one batched pass per chunk, nothing random
            with torch.inference_mode():
                theta = torch.cat([m.encoder(torch.as_tensor(ys[a:a + per], dtype=torch.float32,
                                                             device=dev)).float().cpu()
                                   for a in range(0, N, per)]) if N else torch.empty(0, self.latent_dim)
            return CodePosterior(theta, none[0], none[1], none[1])
        seed_everything(seed)
        out = torch.empty(N, self.latent_dim)
        nk = N if posterior else 0
        tril = torch.empty(nk, d, d, dtype=torch.float64)
        nvar, dof = torch.empty(nk, dtype=torch.float64), torch.empty(nk, dtype=torch.float64)
        feats = self._grid_features(dev)
        for a in progress_bar(range(0, N, per), desc="encode", progress=self._progress(progress), leave=False):
            yt = torch.as_tensor(np.where(mask[a:a + per], ys[a:a + per], 0.0), dtype=torch.float32,
                                 device=dev)
            with torch.inference_mode():
                theta0 = m.encoder(yt)
            if steps > 0:
                mt = torch.as_tensor(mask[a:a + per], dtype=torch.float32, device=dev)
                C = yt.shape[1]
                yf = yt.reshape(len(yt), C, -1).transpose(1, 2)
                mf = mt.reshape(len(yt), C, -1).transpose(1, 2)
                cnt = mf.sum((1, 2)).clamp_min(1.0)
                z0 = m.normalise(theta0.clone())
                z = z0.clone().requires_grad_(True)
                opt = torch.optim.Adam([z], lr=lr)
                with torch.enable_grad():
                    for _ in range(steps):
                        pred = m.decoder(m.denormalise(z), feats)
                        loss = (((pred - yf) ** 2 * mf).sum((1, 2)) / cnt).sum()
                        if reg > 0:  # stay near the encoder's guess (normalised units)
                            loss = loss + reg * (z - z0).pow(2).mean(1).sum()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                theta0 = m.denormalise(z.detach())
                if posterior:
                    post = self._laplace(z.detach(), yf, mf, feats, reg)
                    tril[a:a + per], nvar[a:a + per], dof[a:a + per] = (
                        post.scale_tril.cpu(), post.noise_var.cpu(), post.dof.cpu())
            out[a:a + per] = theta0.float().cpu()
        return CodePosterior(out, tril, nvar, dof)

    def _laplace(self, z: Tensor, y: Tensor, mask: Tensor, feats: Tensor, reg: float) -> CodePosterior:
        r"""The Laplace posterior of θ at the refined standardised ``z [B, d]``: the refinement
        minimises :math:`\frac1n \lVert m \odot (\Psi(\theta(z)) - y)\rVert^2 + \frac{\rho}{d}
        \lVert z - z_0\rVert^2`, so :math:`z \sim \mathcal N(\hat z, s^2 (J^\top J + n\rho/d\, I)^{-1})`
        (:func:`~xsciml.models.autodecode.laplace_posterior`), and θ = z σ + μ."""
        from torch.func import jacfwd, vmap

        m = self.module
        B, d = z.shape

        def field(zi: Tensor) -> Tensor:  # [d] -> [P*C]
            return m.decoder(m.denormalise(zi), feats).reshape(-1)

        per = max(1, 2**20 // max(1, y.shape[1] * y.shape[2] * d))
        with torch.no_grad():
            J = torch.cat([vmap(jacfwd(field))(z[i:i + per]).double() for i in range(0, B, per)])
            e = ((m.decoder(m.denormalise(z), feats) - y) * mask).reshape(B, -1).double()
        mf = mask.reshape(B, -1).double()
        Jm = mf[:, :, None] * J
        prior = torch.full((d,), float(reg) / d, dtype=torch.float64)
        post = laplace_posterior(m.denormalise(z), Jm, e.pow(2).sum(-1), mf.sum(-1), prior)
        std = m.theta_std.detach().double().to(post.scale_tril.device)
        return post._replace(scale_tril=std[:, None] * post.scale_tril)  # diag(σ) L: still lower

    @staticmethod
    def _encode_options(*, steps: int, lr: float, reg: float) -> dict[str, Any]:
        """The checked options of the encoder's refinement."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"encode steps must be an integer >= 0, got {steps!r}")
        if not (lr > 0 and reg >= 0):
            raise ValueError(f"the encoding needs lr > 0 and reg >= 0, got lr={lr!r}, reg={reg!r}")
        return {"steps": steps, "lr": lr, "reg": reg}

    def _encode_states(self, states: InitialStates, options: dict[str, Any], *, device: Any,
                       seed: int | None, progress: bool | None, batch_size: int) -> Tensor:
        return self._encode_array(states.values, steps=options["steps"], lr=options["lr"],
                                  reg=options["reg"], device=device, seed=seed, progress=progress,
                                  batch_size=batch_size)

    def _encode_posterior(self, states: InitialStates, options: dict[str, Any], *, device: Any,
                          seed: int | None, progress: bool | None, batch_size: int) -> CodePosterior:
        return self._encode_refined(states.values, steps=options["steps"], lr=options["lr"],
                                    reg=options["reg"], device=device, seed=seed, progress=progress,
                                    batch_size=batch_size, posterior=True)

    def encode_posterior(self, ds_init: xr.Dataset | xr.DataArray, *, steps: int = 20, lr: float = 1e-2,
                         reg: float = 1e-2, device: Any = "auto", seed: int | None = 0,
                         progress: bool | None = None, batch_size: int = 2**18) -> xr.Dataset:
        r"""θ of states and its Laplace posterior (what ``forecast(members=...)`` draws from).

        θ is that of :meth:`encode` with the refinement (``steps > 0``: the posterior is
        that of the refinement's objective, the misfit at the finite points plus ``reg``
        times the squared distance to the encoder's guess in standardised units). At the
        refined standardised :math:`\hat z`,
        :math:`z \sim \mathcal N(\hat z, s^2 (J^\top J + n\rho/d\,I)^{-1})` with ``J``
        the decoder's Jacobian on the ``n`` observed entries and :math:`s^2` the
        state's residual variance (:func:`~xsciml.models.autodecode.laplace_posterior`);
        θ = z σ + μ. The encoder network's own error is not in it.

        Returns
        -------
        Dataset over the non-space dims of ``ds_init``: ``codes (..., latent)`` (θ),
        ``scale_tril (..., latent, latent_j)`` (lower Cholesky factor of the covariance of
        θ), ``noise_var`` and ``dof``.

        Examples
        --------
        >>> post = model.encode_posterior(ds.isel(time=0), steps=20)  # doctest: +SKIP
        """
        options = self._encode_options(steps=steps, lr=lr, reg=reg)
        return self._posterior_codes(ds_init, options, device=device, seed=seed, progress=progress,
                                     batch_size=batch_size)

    def encode(self, ds_init: xr.Dataset | xr.DataArray, *, steps: int = 0, lr: float = 1e-2,
               reg: float = 1e-2, device: Any = "auto", seed: int | None = 0,
               progress: bool | None = None, batch_size: int = 2**18) -> xr.DataArray:
        """Map states to θ with the encoder (on the training grid), optionally refined.

        States on another regular grid of the same coordinates are interpolated
        (periodic, linear) to the training grid first. With ``steps > 0``, θ is refined
        by ``steps`` Adam steps (learning rate ``lr``) on the misfit of the decoded field
        at the finite points, plus ``reg`` times the squared distance to the encoder's
        guess in standardised units; NaN points are then allowed.

        Returns
        -------
        DataArray ``(..., latent)`` over the non-space dims of ``ds_init``.

        Examples
        --------
        >>> theta = model.encode(ds.isel(time=0))  # doctest: +SKIP
        """
        options = self._encode_options(steps=steps, lr=lr, reg=reg)
        ds = self._init_dataset(ds_init, "initial state")
        states = self._states(ds)
        theta = self._encode_states(states, options, device=device, seed=seed, progress=progress,
                                    batch_size=batch_size)
        return xr.DataArray(theta.reshape(*states.bshape, self.latent_dim).numpy(),
                            dims=(*states.bdims, "latent"), coords=states.bcoords, name="theta")

    # ------------------------------------------------------------------ decoding
    def _decode_tensor(self, theta: Tensor, tp, device: Any, batch_size: int) -> Tensor:
        """``theta [M, d]`` → physical values ``[M, P, C]`` at the target's points."""
        from .._utils import resolve_device

        dev = resolve_device(device)
        m = self.module.to(dev).eval()
        f = tp.features.numpy().astype(np.float64)
        raw = np.empty_like(f)
        for i, n in enumerate(self.space):
            lo, hi = self.encoder.space_min[n], self.encoder.space_max[n]
            raw[:, i] = (f[:, i] + 1.0) * 0.5 * (hi - lo)  # offset from the grid origin
        feats = m.decoder.features(torch.as_tensor(raw, dtype=torch.float32, device=dev),
                                   torch.as_tensor(self.periods, dtype=torch.float32))
        M, P = theta.shape[0], feats.shape[0]
        out = torch.empty(M, P, len(self.variables))
        per = max(1, int(batch_size) // max(P, 1))
        std = torch.as_tensor(self.scaler.std, dtype=torch.float32)
        mean = torch.as_tensor(self.scaler.mean, dtype=torch.float32)
        with torch.inference_mode():
            for i in range(0, M, per):
                out[i:i + per] = m.decoder(theta[i:i + per].to(dev), feats).float().cpu()
        return out.mul_(std).add_(mean)  # physical units, in place (= Scaler.inverse)

    def decode(self, theta: Tensor | np.ndarray | xr.DataArray, target: Any, *, device: Any = "auto",
               batch_size: int = 2**18) -> xr.DataArray | xr.Dataset:
        """Decode θ ``(..., latent)`` on any target (grid dict, Dataset, DataFrame).

        The decoder is a function of continuous, periodic coordinates: targets may be
        finer or coarser grids, or scattered points.

        Examples
        --------
        >>> model.decode(model.encode(ds.isel(time=0)), {"x": x_fine})  # doctest: +SKIP
        """
        return self._decode(theta, target, device=device, batch_size=batch_size, name="θ")

    # ------------------------------------------------------------------ forecasting
    def _integrate(self, theta0: Tensor, offsets: np.ndarray, device: Any, options: dict[str, Any],
                   t0: np.ndarray | None = None) -> Tensor:
        """θ ``[N, K, d]`` at float time offsets (time units) from ``theta0 [N, d]``."""
        uniq, inv = np.unique(np.asarray(offsets, dtype=np.float64), return_inverse=True)
        return self._integrate_codes(theta0, uniq / self.clock.scale, inv, device,
                                     method=options["solver"], rtol=options["rtol"],
                                     atol=options["atol"], t0=t0)

    @shared_docs
    def forecast(self, ds_init: xr.Dataset | xr.DataArray, *, lead: Any, target: Any = None,
                 members: int | None = None, combine: bool | None = None, recent: Any = None,
                 encode_steps: int = 0, encode_lr: float = 1e-2, encode_reg: float = 1e-2,
                 solver: str | None = None,
                 rtol: float | None = None, atol: float | None = None, device: Any = "auto",
                 seed: int | None = 0, progress: bool | None = None,
                 batch_size: int = 2**18) -> xr.DataArray | xr.Dataset:
        """Forecast from initial states, at any lead times, decoded on any target.

        Parameters
        ----------
        ds_init
            Initial state(s) on a regular grid of the model's space coordinates (the
            training grid, or another one: interpolated to it). Every non-space
            dimension indexes independent initial states.
        lead
            Lead times: numbers (time units of a numeric axis, or the model's
            ``time_units``) or timedeltas.
        target
            Where to decode (default the grid of ``ds_init``): a Dataset/DataArray, a dict
            of 1-D coordinates, or a DataFrame of scattered points.
        members
            ``None`` (default): one deterministic forecast per state. A positive integer:
            an ensemble of that many members per state, drawn with ``seed`` from the
            Laplace posterior of the refined θ (:meth:`encode_posterior`), all integrated in
            one solve; needs ``encode_steps > 0`` (the posterior is that of the
            refinement's misfit) and an eager initial state.
        encode_steps, encode_lr, encode_reg
            Refinement of the encoder's θ (see :meth:`encode`; 0 steps: the encoder alone).
        solver, rtol, atol
            ODE solver and tolerances (default the model's: ``"dopri5"``); fixed-step
            solvers use the model's step.
        {forecast_combine}
        device, seed, progress, batch_size
            Where to run, the seed, a progress bar, and a bound on θ × points at once.

        Returns
        -------
        DataArray (one variable) or Dataset ``(<state dims>..., lead, <target dims>...)``
        with coordinate ``lead`` (and ``valid_time`` when ``ds_init`` has a time);
        attrs carry provenance and the NFE (``xsciml_ode_nfe``). Lazy for a dask-backed
        ``ds_init``. With ``members``: a leading ``member`` dim (coordinate
        ``0 .. members - 1``) and the attr ``xsciml_members``.

        Examples
        --------
        >>> fc = model.forecast(ds.isel(time=0), lead=np.linspace(0, 2, 11))  # doctest: +SKIP
        """
        solver = self.ode["method"] if solver is None else solver
        if solver not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
            raise ValueError(f"solver={solver!r} is not a torchdiffeq solver xsciml supports; use one "
                             f"of {FIXED_STEP_METHODS + ADAPTIVE_METHODS}")
        options = {"solver": solver,
                   "rtol": self.ode["rtol"] if rtol is None else float(rtol),
                   "atol": self.ode["atol"] if atol is None else float(atol),
                   **self._encode_options(steps=encode_steps, lr=encode_lr, reg=encode_reg)}

        def learned(model: Any, init: Any, n: int | None, bar: bool | None) -> xr.DataArray | xr.Dataset:
            return model._forecast(init, lead=lead, target=target, options=options, device=device,
                                   seed=seed, progress=bar, batch_size=batch_size, members=n)

        return self._combined_forecast(learned, ds_init, members=members, progress=progress, combine=combine,
                                       target=target, seed=seed, recent=recent)

    def _forecast_attrs(self, options: dict[str, Any], nfe: int | None) -> dict[str, str]:
        out = {"xsciml_encode_steps": str(options["steps"])}
        if nfe is not None:
            out["xsciml_ode_nfe"] = str(nfe)
        out["xsciml_ode_solver"] = str(options["solver"])
        return out

    def score(self, ds_truth: xr.Dataset | xr.DataArray, n_frames_train: int | None = None, *,
                 observed: xr.DataArray | None = None, encode_steps: int = 0, encode_lr: float = 1e-2,
                 encode_reg: float = 1e-2, device: Any = "auto", seed: int | None = 0,
                 progress: bool | None = None, members: int | None = None) -> xr.Dataset:
        """The DINo table: MSE and relative MSE, In-t / Out-t × In-s / Out-s / all.

        Same as :meth:`xsciml.models.dino.DINo.score`: every trajectory is forecast
        from its first frame to all its times on its own grid. In-s are the points of the
        training grid; with ``observed`` masking points of the initial state the encoder
        needs ``encode_steps > 0``, as ``members`` (the ensemble's scores by time, as in
        :meth:`xsciml.models.dino.DINo.score`) does.

        Examples
        --------
        >>> model.score(test, n_frames_train=21)["rel_mse"]  # doctest: +SKIP
        """
        fc_kw = {"encode_steps": encode_steps, "encode_lr": encode_lr, "encode_reg": encode_reg}
        return self._score(ds_truth, n_frames_train, observed, fc_kw, device=device, seed=seed,
                           progress=progress, attrs={"encode_steps": int(encode_steps),
                                                     "encode_optimizer": "encoder network"},
                           members=members)

    def __repr__(self) -> str:
        kind = self.module.decoder.config()["kind"]
        return (f"SmoothDynamics(variables={self.variables}, space={list(self.space)}, "
                f"time={self.time!r}, network={kind!r}, latent_dim={self.latent_dim}, "
                f"ode={self.ode.get('method')!r})")


def _autoencoder_loss(m: SmoothModule, u: Tensor, feats: Tensor, *, consistency: float = 0.0,
                      consistency_target: str = "free", smoothness: float = 0.0
                      ) -> tuple[Tensor, dict[str, float]]:
    r"""Stage-1 loss on snapshots ``u [B, C, *grid]`` (see the module docs).

    ``reconstruction + consistency * ||Λ(Ψ(θ)) - θ||² / mean(θ²) + smoothness * roughness``
    with θ = Λ(u): held fixed in the consistency term (``"fixed"``) or differentiated
    through both passes (``"free"``, the loss as the paper writes it). The roughness
    (``smoothness > 0``) needs ``u`` in consecutive triplets ``(j, j+1, j+2)`` along the
    batch: the mean over triplets and entries of
    :math:`(\theta_j - 2\theta_{j+1} + \theta_{j+2})^2` divided by the batch variance of
    each entry of θ.
    """
    C = u.shape[1]
    theta = m.encoder(u)
    rec = m.decoder(theta, feats)  # [B, P, C]
    target = u.reshape(len(u), C, -1).transpose(1, 2)
    rec_loss = (rec - target).pow(2).mean()
    logs = {"reconstruction": float(rec_loss.detach())}
    loss = rec_loss
    if consistency > 0:
        theta2 = m.encoder(rec.transpose(1, 2).reshape(u.shape))
        th = theta.detach() if consistency_target == "fixed" else theta
        scale = theta.detach().pow(2).mean().clamp_min(1e-8)
        cons = (theta2 - th).pow(2).mean() / scale
        loss = loss + consistency * cons
        logs["consistency"] = float(cons.detach())
    if smoothness > 0:
        if len(u) % 3:
            raise ValueError(f"the smoothness term needs frames in triplets, got a batch of {len(u)}")
        tri = theta.reshape(-1, 3, theta.shape[-1])
        var = theta.detach().var(0, unbiased=False).clamp_min(1e-8)
        rough = ((tri[:, 0] - 2 * tri[:, 1] + tri[:, 2]).pow(2) / var).mean()
        loss = loss + smoothness * rough
        logs["roughness"] = float(rough.detach())
    return loss, logs


# =========================================================================== fitting
def _stage_checkpoint(path: str | os.PathLike[str], stage: str) -> Path:
    """The checkpoint file of one stage: ``<stem>.<stage><suffix>`` next to ``path``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{stage}{p.suffix}")


@shared_docs
def fit_smooth_dynamics(  # noqa: C901 - flat sequence of argument checks and fitting phases
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    space: str | Sequence[str] | None = None,
    time: str = "time",
    sample_dim: Hashable | None = "auto",
    train_until: Any = None,
    network: str = "fourier",
    modes: int = 4,
    waves: int = 4,
    latent_dim: int = 16,
    width: int = 32,
    depth: int = 2,
    n_freq: int = 4,
    encoder_width: int = 32,
    consistency: float = 1.0,
    consistency_target: str = "free",
    smoothness: float = 0.0,
    period: Any = None,
    dynamics_width: int = 128,
    dynamics_depth: int = 3,
    dynamics_linear: bool = True,
    solver: str = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-4,
    train_solver: str = "rk4",
    ode_step: Any = None,
    teacher_forcing: Any = (0.99, 0.5),
    steps: int = 2000,
    dynamics_steps: int | None = None,
    batch_size: int = 64,
    dynamics_batch_size: int | None = None,
    window: int | None = None,
    lr: float = 2e-3,
    dynamics_lr: float = 3e-3,
    scheduler: Any = "cosine",
    time_units: str = "days",
    device: Any = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    time_limit: float | str | None = None,
) -> SmoothDynamics:
    r"""Learn smooth latent dynamics of a periodic field (encoder + consistency + ansatz).

    Two stages through :func:`xsciml.training.fit` (see the module docs): the encoder
    (and decoder weights, for ``"mlp"``) with the reconstruction + consistency loss on
    all training frames, then the latent ODE on the encoded trajectories.

    Parameters
    ----------
    obj
        Trajectories ``(sample_dim, time, space...)`` on a regular periodic grid (1 or 2
        space dimensions), without NaN. Loaded in memory.
    variables
        Variable(s) to model (decoded together as channels).
    space
        Space coordinates: 1-D dimension coordinates of the grid (default: the
        dimension coordinates other than time and ``sample_dim``).
    time, sample_dim, train_until
        As in :func:`xsciml.models.fit_dynamics`.
    network
        The decoder: ``"fourier"`` (nonlinear Fourier ansatz) or ``"mlp"`` (hypernetwork MLP).
    modes, waves
        :math:`K` and :math:`J` of the Fourier ansatz (``latent_dim`` follows from them).
    latent_dim, width, depth, n_freq
        Size of θ, hidden width and depth of the decoded MLP, harmonics per axis of its
        input features (``"mlp"`` only).
    encoder_width
        Channels of the CNN encoder.
    consistency
        :math:`\gamma`, weight of the consistency term (0 switches it off).
    consistency_target
        ``"free"`` (default): the consistency term is differentiated through both
        encoder passes, :math:`\theta = \Lambda(u)` included — the loss as the paper
        writes it; ``"fixed"``: θ is held fixed there (only :math:`\Lambda(\Psi(\theta))`
        is pulled towards it).
    smoothness
        Weight of a latent time-smoothness penalty (not in the paper, default 0): the
        stage-1 batches are then triplets of consecutive frames and the loss adds the
        mean squared second difference in time of their θ, in units of the batch
        variance of each entry of θ.
    period
        Period of each space coordinate (a number, one per coordinate, or a dict);
        default the coordinate's ``period`` attribute, else ``n * spacing``.
    dynamics_width, dynamics_depth, dynamics_linear
        The latent vector field (:class:`~xsciml.models.latent_ode.LatentDynamics`).
    solver, rtol, atol
        Forecast solver (default adaptive ``"dopri5"``) and its tolerances, on
        standardised θ.
    train_solver, ode_step
        Fixed-step solver used to train the dynamics and its step (default half the
        median frame spacing; a number in time units or a timedelta).
    teacher_forcing
        Restart probability schedule of the rollouts (as in DINo).
    steps, dynamics_steps
        Optimiser steps of the two stages (``dynamics_steps`` defaults to ``steps``).
    batch_size, dynamics_batch_size, window
        Frames per autoencoder step; rollout windows per dynamics step (each from a
        random trajectory and start; default as many as cover every frame once,
        ``S * ceil(T / window)`` for ``S`` trajectories of ``T`` frames) and frames per
        window (default ``min(T, 16)``, :func:`~xsciml.models.latent_ode.default_window`:
        the cost of a step does not grow with the length of the series).
    lr, dynamics_lr, scheduler
        Learning rates (Adam) and schedule.
    time_units
        Float unit of datetime/cftime time axes.
    device, seed, progress
        Where to train, the seed, a progress bar.
    {training_options}

        This fit trains in two stages, ``"autoencoder"`` then ``"dynamics"``, and each
        stage has its own checkpoint file next to ``checkpoint``: ``run.pt`` gives
        ``run.autoencoder.pt`` and ``run.dynamics.pt``. With ``resume=True`` a finished
        stage is read back from its file without training and the stage that was
        interrupted continues. The callbacks are called in both stages
        (``state.step`` counts the steps of the stage, ``state.model`` is what the
        stage trains); one returning ``True`` stops the fit, and the stages after it
        are not run. ``time_limit`` covers the whole fit: each stage gets the time
        that is left, and when it runs out the later stages are not run (their
        history is empty, with ``stop_reason="time_limit"``).

    Returns
    -------
    SmoothDynamics

    Examples
    --------
    >>> from xsciml.pde1d import burgers
    >>> ds = burgers(4, 32, n_frames=6, t_max=0.5)
    >>> model = fit_smooth_dynamics(ds, "u", modes=2, waves=2, steps=5, progress=False)
    >>> fc = model.forecast(ds.isel(trajectory=[0], time=0), lead=[0.0, 0.25])
    >>> fc.dims, model.nfe > 0
    (('trajectory', 'lead', 'x'), True)
    """
    from ..training import History, checkpoint_step, fit, parse_time_limit

    sample_dim = resolve_sample_dim(obj, sample_dim)
    limit = parse_time_limit(time_limit)
    started = _time.perf_counter()
    callbacks = (callbacks,) if callable(callbacks) else tuple(callbacks)
    ckpt_ae, ckpt_dyn = (None, None) if checkpoint is None else (
        _stage_checkpoint(checkpoint, "autoencoder"), _stage_checkpoint(checkpoint, "dynamics"))
    traj = prepare_trajectories(obj, variables, time=time, sample_dim=sample_dim,
                                train_until=train_until, space=space, latlon=False)
    ds, variables, space = traj.ds, traj.variables, traj.space
    T = traj.n_frames
    if len(space) not in (1, 2):
        raise ValueError(f"smooth dynamics handles 1 or 2 space dimensions, got space={space}")
    for n in space:
        if n not in ds.coords:
            raise KeyError(f"space coordinate {n!r} not found; coordinates are {list(ds.coords)}")
    traj.check_dims()
    if network not in ("fourier", "mlp"):
        raise ValueError(f"network must be 'fourier' or 'mlp', got {network!r}")
    if consistency_target not in ("fixed", "free"):
        raise ValueError(f"consistency_target must be 'fixed' or 'free', got {consistency_target!r}")
    for name, val in (("consistency", consistency), ("smoothness", smoothness)):
        if isinstance(val, bool) or not isinstance(val, (int, float, np.floating, np.integer)) \
                or not (val >= 0 and math.isfinite(val)):
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    if train_solver not in FIXED_STEP_METHODS:
        raise ValueError(f"train_solver must be a fixed-step solver {FIXED_STEP_METHODS}, got "
                         f"{train_solver!r}")
    grid, periods = _grid_info(ds, space, period)

    # ---- time
    clock = Clock.fit(ds[time].values, time_units)
    tau = clock.elapsed(ds[time].values) / clock.scale
    ode = {**ode_settings(clock, solver, rtol, atol, ode_step), "train_method": train_solver}

    # ---- data [S, T, C, *grid], standardised per variable
    S, C = traj.n_samples, len(variables)
    y = traj.values(space)  # [S, T, P, C] -> [S, T, C, *grid]
    y = np.ascontiguousarray(np.moveaxis(y, -1, 2)).reshape(S, T, C, *[len(g) for g in grid])
    if not np.isfinite(y).all():
        raise ValueError("the training data has NaN or infinite values; the encoder needs complete "
                         "snapshots on the grid (fill or drop those frames first)")
    scaler = Scaler.from_moments([y[:, :, c].mean() for c in range(C)], [y[:, :, c].std() for c in range(C)])
    ys = np.moveaxis(scaler.transform(np.moveaxis(y, 2, -1)), -1, 2).astype(np.float32)
    frames = torch.from_numpy(ys.reshape(S * T, C, *ys.shape[3:]))
    coord_enc = CoordinateEncoder(space=tuple(space), time=None, sphere=False)
    mesh = np.meshgrid(*grid, indexing="ij")
    coord_enc.fit({n: m.ravel() for n, m in zip(space, mesh, strict=True)}, None,
                  coord_meta={n: ds[n] for n in space})

    # ---- modules (initialised from the seed: torch's global generator starts at random)
    from .._utils import seed_everything

    seed_everything(seed)
    D = len(space)
    dec: _Decoder
    if network == "fourier":
        dec = FourierAnsatz(D, C, modes=int(modes), waves=int(waves))
    else:
        dec = HyperMLP(D, C, latent_dim=int(latent_dim), width=int(width), depth=int(depth),
                       n_freq=int(n_freq))
    d = int(dec.latent_dim)
    enc = SnapshotEncoder(C, d, [len(g) for g in grid], width=int(encoder_width))
    if isinstance(dec, FourierAnsatz):  # start the encoder's output away from the θ = 0 saddle
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        head_out = enc.head[-1]
        assert isinstance(head_out, nn.Linear)  # the encoder ends with a dense layer
        with torch.no_grad():
            head_out.bias.copy_(dec.initial_theta(gen))
    dyn = LatentDynamics(d, width=dynamics_width, depth=dynamics_depth, linear=bool(dynamics_linear))
    module = SmoothModule(enc, dec, dyn)
    x_rel = np.stack([m.ravel() - g[0] for m, g in zip(mesh, grid, strict=True)], -1)
    feats = dec.features(torch.as_tensor(x_rel, dtype=torch.float32),
                         torch.as_tensor(periods, dtype=torch.float32))
    gamma = float(consistency)
    smooth_w = float(smoothness)
    if smooth_w > 0 and T < 3:
        raise ValueError(f"smoothness > 0 needs at least 3 frames per trajectory, got {T}")
    B = int(min(batch_size, S * T))

    # ---- stage 1: encoder (+ decoder weights) with reconstruction + consistency
    n_trip = max(1, B // 3)

    def draw_frames(gen: torch.Generator) -> dict[str, Tensor]:
        if smooth_w > 0:  # triplets of consecutive frames (j, j + 1, j + 2) of random trajectories
            start = (torch.randint(0, S, (n_trip,), generator=gen) * T
                     + torch.randint(0, T - 2, (n_trip,), generator=gen))
            idx = (start[:, None] + torch.arange(3)).reshape(-1)
        else:
            idx = torch.randperm(S * T, generator=gen)[:B]
        return {"u": frames[idx], "feats": feats}

    def ae_loss(m: SmoothModule, batch: dict[str, Tensor]):
        return _autoencoder_loss(m, batch["u"], batch["feats"], consistency=gamma,
                                 consistency_target=consistency_target, smoothness=smooth_w)

    ae_params = [p for p in list(enc.parameters()) + list(dec.parameters()) if p.requires_grad]
    hist1 = fit(module, ae_loss, draw_frames, steps=int(steps), optimizer="adam", lr=lr,
                params=ae_params, scheduler=scheduler, device=device, seed=seed, progress=progress,
                desc="fit_smooth_dynamics[autoencoder]", checkpoint=ckpt_ae, resume=resume,
                callbacks=callbacks, time_limit=limit)
    module = module.cpu().eval()

    # ---- encode the training trajectories, standardise θ
    with torch.inference_mode():
        theta = torch.cat([module.encoder(frames[i:i + 256]) for i in range(0, S * T, 256)])
    theta = theta.reshape(S, T, d)
    flat = theta.reshape(-1, d)
    std = flat.std(0, unbiased=False)
    module.theta_mean.copy_(flat.mean(0))
    module.theta_std.copy_(std.clamp_min(1e-3 * float(std.max()) + 1e-6))
    Z = module.normalise(theta).clone()
    smoothness = float((Z[:, 2:] - 2 * Z[:, 1:-1] + Z[:, :-2]).pow(2).mean()) if T > 2 else float("nan")

    # ---- stage 2: latent ODE on the encoded trajectories
    dsteps = int(steps if dynamics_steps is None else dynamics_steps)
    w = default_window(T) if window is None else int(window)
    if not 2 <= w <= T:
        raise ValueError(f"window must be in [2, {T}] frames, got {window}")
    # windows per step: by default as many as cover every frame once
    Bd = S * -(-T // w) if dynamics_batch_size is None else int(max(1, dynamics_batch_size))
    table = OffsetTable(tau)
    schedule = teacher_forcing_schedule(teacher_forcing, dsteps)
    ode_kw = {"method": train_solver, "step": ode["step"], "rtol": ode["rtol"], "atol": ode["atol"]}

    class _Dyn(nn.Module):  # what the rollout loss needs: .dynamics and .teacher_forcing
        def __init__(self, dynamics: LatentDynamics) -> None:
            super().__init__()
            self.dynamics = dynamics
            # a resumed stage continues the schedule where its checkpoint stopped
            self.teacher_forcing = float(schedule(checkpoint_step(ckpt_dyn) if resume else 0))

    holder = _Dyn(module.dynamics)

    def draw_traj(gen: torch.Generator) -> dict[str, Tensor]:
        rows, j0 = draw_windows(gen, S, T, w, Bd)  # each window its own series and start
        t_out, where = table.windows(j0.numpy(), w)
        return {"z": Z[rows[:, None], j0[:, None] + torch.arange(w)],
                "u": torch.rand(len(rows), w, generator=gen), "t_out": t_out, "where": where}

    def dyn_loss(m: _Dyn, batch: dict[str, Tensor]):
        loss = dynamics_loss(m, batch["z"], batch["u"], batch["t_out"], batch["where"], ode_kw)
        return loss, {"teacher_forcing": float(m.teacher_forcing)}

    def on_step(state) -> None:
        state.model.teacher_forcing = float(schedule(state.step))

    left = None if limit is None else limit - (_time.perf_counter() - started)
    if hist1.stop_reason in ("callback", "time_limit") or (left is not None and left <= 0):
        # stopped by a callback or out of time: the dynamics stage is not run
        reason = hist1.stop_reason if hist1.stop_reason in ("callback", "time_limit") else "time_limit"
        if hist1.stop_reason is None:  # the budget ran out exactly as the first stage ended
            assert limit is not None
            warnings.warn(f"fit_smooth_dynamics: {time_limit_words(limit)} was reached after the "
                          f"autoencoder stage ({hist1.steps} steps); the dynamics stage ({dsteps} steps "
                          "asked for) was not run.", UserWarning, stacklevel=2)
        hist2 = History(stopped_early=True, stop_reason=reason, device=hist1.device)
    else:
        hist2 = fit(holder, dyn_loss, draw_traj, steps=dsteps, optimizer="adam", lr=dynamics_lr,
                    scheduler=scheduler, device=device, seed=seed, progress=progress,
                    desc="fit_smooth_dynamics[dynamics]", callbacks=[on_step, *callbacks],
                    checkpoint=ckpt_dyn, resume=resume, time_limit=left)
    module = module.cpu().eval()

    tvals = ds[time].values
    info = {"n_trajectories": S, "n_frames_train": T, "steps": int(hist1.steps),
            "dynamics_steps": int(hist2.steps), "consistency": gamma,
            "consistency_target": consistency_target, "smoothness": smooth_w, "network": network,
            "training_period": f"{tvals[0]} .. {tvals[-1]}",
            "final_reconstruction_loss": float(np.mean(hist1.logs.get("reconstruction", [np.nan])[-20:])),
            "final_consistency_loss": float(np.mean(hist1.logs.get("consistency", [np.nan])[-20:])),
            "final_dynamics_loss": float(np.mean(hist2.loss[-20:])) if hist2.loss else float("nan"),
            "latent_roughness": smoothness,
            "wall_time": float(hist1.wall_time + hist2.wall_time)}
    model = SmoothDynamics(module, coord_enc, scaler, variables, sample_dim=sample_dim, time=time,
                           clock=clock, ode=ode, grid=grid, periods=periods,
                           coord_units=traj.coord_units(), var_attrs=traj.var_attrs(), info=info)
    model.history = History.chain({"autoencoder": hist1, "dynamics": hist2})
    model.fit_progress = progress  # encode / forecast show bars as the fit did
    return model
