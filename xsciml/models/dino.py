r"""Forecasting with DINo: an implicit neural representation driven by a latent ODE.

DINo (Yin et al., ICLR 2023, "Continuous PDE Dynamics Forecasting with Implicit Neural
Representations") represents every state :math:`u_t` of a trajectory by a code
:math:`\alpha_t \in \mathbb R^{d}`, decoded anywhere in space by an implicit neural
representation, and evolves the code with a learned ODE:

.. math::

    u_t(x) \approx D_\phi(\alpha_t)(x), \qquad
    \frac{d\alpha_t}{dt} = f_\psi(\alpha_t).

* **Decoder** :math:`D_\phi`: a FourierNet (multiplicative filter network) whose hidden
  biases are shifted by a linear map of the code, :math:`h_\phi(\alpha) = \{W; b +
  W'\alpha; \omega\}` (:class:`xsciml.nn.FourierNet` with ``code_dim``). Several state
  variables are decoded together as output channels.
* **Auto-decoding**: there is no encoder. Each training frame has its own code, learned
  jointly with :math:`\phi`; a new state is *encoded* by gradient steps on its code with
  :math:`\phi` frozen, from whatever points it is observed at.
* **Dynamics** :math:`f_\psi`: an MLP with Swish activations plus a linear term
  (:class:`LatentDynamics`), integrated with :func:`torchdiffeq.odeint`. It acts on
  *normalised* codes :math:`z = (\alpha - \mu) / \sigma` (per-dimension mean and
  standard deviation of the training codes), so the ODE sees inputs of order one
  whatever scale the auto-decoder gives the codes.

Training follows the paper's algorithm, with one optimiser step per minibatch of
trajectories: the codes and the decoder minimise the reconstruction error

.. math::

    \mathcal L_{dec}(\phi, \alpha) = \frac{1}{|\Omega|}\sum_{t, x \in \Omega}
        \lVert D_\phi(\alpha_t)(x) - u_t(x)\rVert^2,

and the dynamics fits the (fixed) current codes,

.. math::

    \mathcal L_{dyn}(\psi) = \frac{1}{T - 1}\sum_{t \ge 1} \lVert \hat z_t - z_t \rVert^2,

where :math:`\hat z_t` integrates the ODE up to :math:`t` from the code of the latest
*restart* before :math:`t`: with the teacher-forcing probability :math:`\epsilon`
(decayed during training, as in the paper) the integration restarts from the true code
of the previous frame, otherwise it continues the predicted trajectory. All restarts are
integrated in one batched ODE solve (no Python loop over time steps).

Improvements over the reference implementation: codes are normalised before the dynamics
sees them; optimisers step on every batch; with fixed-step solvers the ODE step
(``ode_step``) is independent of the output times (torchdiffeq's ``step_size`` option,
with the grid aligned on multiples of the step), so asking for denser outputs does not
change the solution; adaptive solvers get explicit ``rtol``/``atol``; time may be
datetime64 or cftime and irregularly spaced; training and forecasting run on the CPU or a
GPU, and models load on either.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from .._utils import check_positive_int
from ..base import Estimator, register_estimator
from ..coords import (
    CoordinateEncoder,
    calendars_compatible,
    time_calendar,
    time_kind,
    time_to_float,
)
from ..tensors import Scaler, decode_variable, target_points

__all__ = [
    "DINo",
    "DINoModule",
    "LatentDynamics",
    "LatentForecaster",
    "decode_codes",
    "decoder_jacobian",
    "encode_objective",
    "fit_dynamics",
    "forecast",
    "gauss_newton_codes",
    "gls_factors",
    "gls_quadratic",
    "integrate_latent",
    "residual_covariance_factor",
]

#: torchdiffeq solvers that take a fixed step (``options={"step_size": ...}``).
FIXED_STEP_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                      "implicit_adams")
#: torchdiffeq solvers with error control (``rtol``/``atol``).
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

#: Optimisers of the test-time auto-decoding (:meth:`DINo.encode`).
ENCODE_OPTIMIZERS = ("gauss-newton", "adam")
_DEFAULT_ENCODE_STEPS = {"gauss-newton": 5, "adam": 100}


def _encode_steps(steps: int | None, optimizer: str) -> int:
    return _DEFAULT_ENCODE_STEPS[optimizer] if steps is None else steps


_UNIT_SECONDS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}


# =========================================================================== torch modules
class LatentDynamics(nn.Module):
    r"""Autonomous latent vector field :math:`dz/dt = A z + b + g_\psi(z)`.

    :math:`g_\psi` is an MLP with Swish activations (as in DINo); the linear part
    :math:`A z + b` (a skip connection, started at zero) lets the flow represent linear
    dynamics — decay, rotation — exactly, so that trajectories extrapolate beyond the
    training horizon instead of following whatever the MLP does outside its data.
    Counts its evaluations in :attr:`nfe` (reset it before a solve to read the number of
    function evaluations of the ODE solver).

    Parameters
    ----------
    latent_dim
        Size of the (normalised) codes.
    width
        Hidden width of the MLP.
    depth
        Number of hidden layers of the MLP.
    linear
        Include the linear term.
    periods
        Periods (in ODE time units) of known external forcings, e.g. the diurnal cycle.
        Each adds a phase pair :math:`(\sin\theta_k, \cos\theta_k)` to the state, rotating
        exactly at :math:`2\pi / T_k`, which the MLP receives as input: the field is then
        :math:`dz/dt = A z + b + g_\psi(z, \theta(t))`. States carry their phases after the
        ``latent_dim`` code entries (see :meth:`phases`).

    Examples
    --------
    >>> f = LatentDynamics(8, width=32, depth=2)
    >>> f(torch.tensor(0.0), torch.zeros(5, 8)).shape, f.nfe
    (torch.Size([5, 8]), 1)
    >>> g = LatentDynamics(8, width=32, depth=2, periods=[24.0])
    >>> g(torch.tensor(0.0), torch.zeros(5, 8 + 2)).shape
    torch.Size([5, 10])
    """

    def __init__(self, latent_dim: int, width: int = 256, depth: int = 3, linear: bool = True,
                 periods: Sequence[float] = ()) -> None:
        super().__init__()
        from ..nn import MLP

        self.latent_dim, self.width, self.depth = int(latent_dim), int(width), int(depth)
        self.periods = [float(p) for p in periods]
        if any(not (math.isfinite(p) and p > 0) for p in self.periods):
            raise ValueError(f"forcing periods must be positive, got {self.periods}")
        self.register_buffer("omega", torch.tensor([2 * math.pi / p for p in self.periods],
                                                   dtype=torch.float32), persistent=False)
        n_in = self.latent_dim + 2 * len(self.periods)
        self.net = MLP(n_in, latent_dim, width=width, depth=depth, activation="swish")
        with torch.no_grad():  # start close to "nothing moves": a gentle initial flow
            last = self.net.net[-1]
            last.weight.mul_(0.1)
            last.bias.zero_()
        self.linear = nn.Linear(latent_dim, latent_dim) if linear else None
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        self.nfe = 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:  # noqa: ARG002 - time enters via phases
        self.nfe += 1
        d = self.latent_dim
        a = z[..., :d]
        out = self.net(z)
        if self.linear is not None:
            out = out + self.linear(a)
        if not self.periods:
            return out
        ph = z[..., d:]
        s, c = ph[..., 0::2], ph[..., 1::2]
        dph = torch.stack([self.omega * c, -self.omega * s], dim=-1).flatten(-2)
        return torch.cat([out, dph], dim=-1)

    def phases(self, tau: np.ndarray | Tensor) -> Tensor:
        """Phase pairs ``[..., 2 n_periods]`` at absolute ODE times ``tau`` (float64-safe)."""
        t = np.asarray(tau.detach().cpu() if isinstance(tau, Tensor) else tau, dtype=np.float64)
        cols = []
        for p in self.periods:
            theta = 2 * np.pi * np.mod(t, p) / p
            cols += [np.sin(theta), np.cos(theta)]
        out = np.stack(cols, -1) if cols else np.zeros((*t.shape, 0))
        return torch.as_tensor(out, dtype=torch.float32)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-friendly)."""
        return {"latent_dim": self.latent_dim, "width": self.width, "depth": self.depth,
                "linear": self.linear is not None, "periods": list(self.periods)}


def decode_codes(decoder: nn.Module, features: Tensor, codes: Tensor) -> Tensor:
    r"""Decode codes ``[..., d]`` at shared points ``[P, F]`` into ``[..., P, C]``.

    For a :class:`~xsciml.nn.FourierNet` decoder the filters
    :math:`\sin(\omega_i x + \varphi_i)` depend on the points only, so they are computed
    once for all codes; the code enters through the shifts :math:`W'_i\alpha`, computed
    once per code. This is the same function as ``decoder(features, codes)`` broadcast
    over codes and points, at a fraction of the cost. Other networks fall back to that.

    Examples
    --------
    >>> from xsciml.nn import FourierNet
    >>> net = FourierNet(2, 3, width=16, depth=2, input_scale=8.0, code_dim=4)
    >>> x, a = torch.rand(10, 2), torch.randn(5, 7, 4)
    >>> out = decode_codes(net, x, a)
    >>> out.shape
    torch.Size([5, 7, 10, 3])
    >>> ref = net(x.expand(5, 7, 10, 2), a[..., None, :].expand(5, 7, 10, 4))
    >>> bool(torch.allclose(out, ref, atol=1e-5))
    True
    """
    from ..nn import FourierNet

    if isinstance(decoder, FourierNet) and getattr(decoder, "code_dim", 0):
        shifts = decoder.shift(codes.to(features.dtype)).unsqueeze(-2).split(decoder.width, dim=-1)
        h = torch.sin(decoder.filters[0](features))
        for lin, filt, shift in zip(decoder.linears, decoder.filters[1:], shifts, strict=True):
            h = (lin(h) + shift) * torch.sin(filt(features))
        return decoder.head(h)
    lead = codes.shape[:-1]
    f = features.expand(*lead, *features.shape)
    z = codes.unsqueeze(-2).expand(*lead, features.shape[0], codes.shape[-1])
    return decoder(f, z)


def residual_covariance_factor(residuals: Tensor, mask: Tensor, rank: int = 128
                               ) -> tuple[Tensor, float]:
    r"""Low-rank factor of the spatial covariance of reconstruction residuals.

    ``residuals`` ``[N, P, C]`` (0 where ``mask`` is 0) are the decoder's errors on ``N``
    frames at ``P`` fixed points. Every frame and channel is scaled to unit mean square
    over its observed points (all frames weigh the same, whatever their amplitude), the
    frames are stacked as rows ``E [N, P*C]``, and the sample covariance
    :math:`E^\top E / N` is kept as its leading ``rank`` singular directions:
    ``F = diag(s_{1..k}) V_{1..k}^\top / \sqrt N`` with :math:`F^\top F \approx E^\top E / N`.

    Returns ``(F [k, P*C], mean variance)`` — the mean of the diagonal of the sample
    covariance over observed entries (≈ 1 by construction), the scale of the shrinkage
    target in :func:`gls_factors`.

    Examples
    --------
    >>> r = torch.randn(50, 20, 1)
    >>> F, v = residual_covariance_factor(r, torch.ones_like(r), rank=8)
    >>> F.shape, round(v, 3)
    (torch.Size([8, 20]), 1.0)
    """
    if residuals.shape != mask.shape or residuals.ndim != 3:
        raise ValueError(f"residuals and mask must both be [N, P, C], got {tuple(residuals.shape)} "
                         f"and {tuple(mask.shape)}")
    if not torch.isfinite(residuals).all():
        raise ValueError("residuals contain NaN or inf; put 0 there and 0 in the mask")
    r = residuals.double() * mask
    cnt = mask.sum(1, keepdim=True).clamp_min(1.0)
    rms = (r.pow(2).sum(1, keepdim=True) / cnt).sqrt()
    ok = (rms > 0).squeeze(1).all(-1) & (mask.sum((1, 2)) > 0)
    r = (r / rms.clamp_min(1e-30))[ok]
    m = mask[ok]
    if len(r) == 0:
        raise ValueError("no frame with a non-zero residual to estimate its covariance from")
    E = r.reshape(len(r), -1)
    _, sv, vh = torch.linalg.svd(E, full_matrices=False)
    k = int(min(rank, len(sv)))
    factor = (sv[:k, None] * vh[:k]) / np.sqrt(len(E))
    mean_var = float(E.pow(2).sum() / m.sum().clamp_min(1.0))
    return factor.float(), mean_var


def gls_factors(factor: Tensor, mask: Tensor, floor: float) -> Tensor:
    r"""Cholesky factors for generalised least squares under a low-rank + white covariance.

    The residual covariance on the observed entries of a state is
    :math:`K = a I + F_m^\top F_m` with ``F_m`` the factor ``[k, n]`` restricted to the
    entries where ``mask [B, n]`` is 1 and ``a = floor > 0``. By the Woodbury identity
    :math:`a\, e^\top K^{-1} e = \lVert e\rVert^2 - \lVert L^{-1} F_m e\rVert^2` with
    :math:`L L^\top = a I_k + F_m F_m^\top`; this returns ``L [B, k, k]`` (one
    factorisation per distinct mask). See :func:`gls_quadratic`.

    Examples
    --------
    >>> F, m = torch.randn(4, 30), torch.ones(2, 30)
    >>> gls_factors(F, m, 0.1).shape
    torch.Size([2, 4, 4])
    """
    if not floor > 0:
        raise ValueError(f"the white-noise floor must be > 0, got {floor!r}")
    if factor.ndim != 2 or mask.ndim != 2 or mask.shape[1] != factor.shape[1]:
        raise ValueError(f"factor must be [k, n] and mask [B, n], got {tuple(factor.shape)} and "
                         f"{tuple(mask.shape)}")
    uniq, inv = torch.unique(mask, dim=0, return_inverse=True)
    f = factor.double()
    gram = torch.einsum("kn,bn,ln->bkl", f, uniq.double(), f)
    eye = torch.eye(f.shape[0], dtype=torch.float64, device=f.device)
    chol = torch.linalg.cholesky(gram + floor * eye)
    return chol.to(factor.dtype)[inv]


def gls_quadratic(e: Tensor, factor: Tensor, chol: Tensor) -> Tensor:
    r"""``a e^T K^{-1} e`` per state, for masked residuals ``e [B, n]`` (0 off the mask).

    With ``chol`` from :func:`gls_factors`: :math:`\lVert e\rVert^2 -
    \lVert L^{-1} F e\rVert^2`. With a zero factor this is the plain sum of squares.

    Examples
    --------
    >>> F, m, e = torch.zeros(3, 5), torch.ones(1, 5), torch.ones(1, 5)
    >>> gls_quadratic(e, F, gls_factors(F, m, 1.0))
    tensor([5.])
    """
    if e.ndim != 2 or e.shape[1] != factor.shape[1] or chol.shape != (len(e), len(factor), len(factor)):
        raise ValueError(f"e [B, n], factor [k, n] and chol [B, k, k] do not match: {tuple(e.shape)}, "
                         f"{tuple(factor.shape)}, {tuple(chol.shape)}")
    g = e @ factor.T  # [B, k]
    h = torch.linalg.solve_triangular(chol, g.unsqueeze(-1), upper=False).squeeze(-1)
    return e.pow(2).sum(-1) - h.pow(2).sum(-1)


def _gls_apply(x: Tensor, factor: Tensor, chol: Tensor) -> Tensor:
    r"""``a K^{-1} x`` for masked columns ``x [B, n, q]`` (the matrix of :func:`gls_quadratic`).

    :math:`x - F^\top L^{-\top} L^{-1} F x`, so that :math:`e^\top (\cdot\,e)` is
    ``gls_quadratic(e)``.
    """
    g = torch.einsum("kn,bnq->bkq", factor, x)
    h = torch.linalg.solve_triangular(chol, g, upper=False)
    h = torch.linalg.solve_triangular(chol.transpose(-1, -2), h, upper=True)
    return x - torch.einsum("kn,bkq->bnq", factor, h)


def decoder_jacobian(decoder: nn.Module, features: Tensor, code_mean: Tensor, code_std: Tensor) -> Tensor:
    """Jacobian ``[P*C, d]`` (float64) of the decoded field at ``code_mean [d]`` by central differences.

    The difference step of each code entry is 1 % of its spread ``code_std`` over the
    training codes: two batched decodings of ``d`` codes. What :func:`gauss_newton_codes`
    preconditions with.

    Parameters
    ----------
    decoder
        Code-conditioned coordinate network.
    features
        Encoded points ``[P, F]``.
    code_mean
        Mean of the training codes ``[d]``.
    code_std
        Spread of the training codes ``[d]``.

    Returns
    -------
    Tensor ``[P*C, d]``, float64.

    Examples
    --------
    >>> from xsciml.nn import FourierNet
    >>> net = FourierNet(2, 1, width=8, depth=2, input_scale=4.0, code_dim=3)
    >>> decoder_jacobian(net, torch.rand(20, 2), torch.zeros(3), torch.ones(3)).shape
    torch.Size([20, 3])
    """
    mu, sd = code_mean.reshape(-1), code_std.reshape(-1)
    d = mu.shape[0]
    if features.ndim != 2:
        raise ValueError(f"features must be [P, F] (encoded points), got shape {tuple(features.shape)}")
    if sd.shape[0] != d:
        raise ValueError(f"code_mean and code_std must hold the same number of entries (one per code "
                         f"entry), got {d} and {sd.shape[0]}")
    if not bool(torch.isfinite(mu).all()) or not bool((torch.isfinite(sd) & (sd > 0)).all()):
        raise ValueError("code_mean must be finite and code_std finite and > 0 (the difference step "
                         "of each code entry is 1 % of its spread); a zero spread gives no Jacobian")
    step = 1e-2 * sd
    with torch.no_grad():
        e = torch.diag(step)
        plus = decode_codes(decoder, features, mu + e).reshape(d, -1)
        minus = decode_codes(decoder, features, mu - e).reshape(d, -1)
    return ((plus - minus) / (2.0 * step[:, None])).T.double()


def _check_encode_inputs(features: Tensor, y: Tensor, mask: Tensor, alpha: Tensor, code_mean: Tensor,
                         code_std: Tensor, gls: Tensor | None, chol: Tensor | None) -> None:
    if y.ndim != 3 or y.shape != mask.shape:
        raise ValueError(f"y and mask must both be [B, P, C], got {tuple(y.shape)} and {tuple(mask.shape)}")
    if features.ndim != 2 or len(features) != y.shape[1]:
        raise ValueError(f"features must be [P, F] with P = {y.shape[1]} points (those of y), got "
                         f"{tuple(features.shape)}")
    if alpha.ndim != 2 or len(alpha) != len(y):
        raise ValueError(f"codes must be [B, d] with B = {len(y)} states, got {tuple(alpha.shape)}")
    d = alpha.shape[1]
    if code_mean.numel() != d or code_std.numel() != d:
        raise ValueError(f"code_mean and code_std must hold d = {d} entries (one per code entry), got "
                         f"{code_mean.numel()} and {code_std.numel()}")
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or inf; put 0 at unobserved points and 0 in the mask")
    if (gls is None) != (chol is None):
        raise ValueError("GLS encoding needs both the factor (gls) and its Cholesky factors (chol)")


def encode_objective(decoder: nn.Module, features: Tensor, y: Tensor, mask: Tensor, alpha: Tensor, *,
                     reg: float, code_mean: Tensor, code_std: Tensor, gls: Tensor | None = None,
                     chol: Tensor | None = None) -> Tensor:
    r"""The auto-decoding objective of every state ``[B]`` (what :meth:`DINo.encode` minimises).

    :math:`\ell(\alpha) = \frac{1}{n}\, e^\top W e + \frac{\rho}{d}\lVert(\alpha-\mu)/\sigma\rVert^2`
    with :math:`e = m \odot (D(\alpha) - y)`, ``n`` the observed entries of the state and
    ``W`` the identity, or the GLS matrix of :func:`gls_quadratic` when ``gls`` and
    ``chol`` are given. Both optimisers (Adam and :func:`gauss_newton_codes`) use it.

    Examples
    --------
    >>> from xsciml.nn import FourierNet
    >>> net = FourierNet(2, 1, width=8, depth=2, input_scale=4.0, code_dim=3)
    >>> x, a = torch.rand(20, 2), torch.zeros(2, 3)
    >>> with torch.no_grad():
    ...     y = decode_codes(net, x, a)
    >>> encode_objective(net, x, y, torch.ones_like(y), a, reg=1.0, code_mean=torch.zeros(3),
    ...                  code_std=torch.ones(3)).tolist()
    [0.0, 0.0]
    """
    _check_encode_inputs(features, y, mask, alpha, code_mean, code_std, gls, chol)
    return _encode_objective(decoder, features, y, mask, alpha, reg=reg, code_mean=code_mean,
                             code_std=code_std, gls=gls, chol=chol)


def _encode_objective(decoder: nn.Module, features: Tensor, y: Tensor, mask: Tensor, alpha: Tensor, *,
                      reg: float, code_mean: Tensor, code_std: Tensor, gls: Tensor | None = None,
                      chol: Tensor | None = None) -> Tensor:
    """:func:`encode_objective` without the input checks (inside the optimisers' loops)."""
    e = (decode_codes(decoder, features, alpha) - y) * mask
    if gls is None:
        fit = e.pow(2).sum((1, 2))
    else:  # generalised least squares: correlated residuals discounted
        fit = gls_quadratic(e.reshape(len(e), -1), gls, chol)
    mu, sd = code_mean.reshape(-1), code_std.reshape(-1)
    prior = ((alpha - mu) / sd).pow(2).mean(1)  # Gaussian prior fitted to the training codes
    return fit / mask.sum((1, 2)).clamp_min(1.0) + reg * prior


def gauss_newton_codes(decoder: nn.Module, features: Tensor, y: Tensor, mask: Tensor,
                       alpha0: Tensor, *, steps: int, reg: float, code_mean: Tensor,
                       code_std: Tensor, gls: Tensor | None = None, chol: Tensor | None = None,
                       jacobian: Tensor | None = None) -> Tensor:
    r"""Auto-decoding by Gauss–Newton steps preconditioned at the mean code (batched).

    Minimises, for every state independently, the objective of :meth:`DINo.encode`:
    :math:`\ell(\alpha) = \frac{1}{n}\, e^\top W e + \frac{\rho}{d}\lVert(\alpha-\mu)/\sigma\rVert^2`
    with :math:`e = m \odot (D(\alpha) - y)` on the observed points, ``W`` the identity
    (white noise) or the Woodbury GLS matrix (``gls``, ``chol`` from :func:`gls_factors`).
    The decoder's Jacobian ``J`` is computed once, at the mean training code :math:`\mu`,
    by central differences; every step solves
    :math:`(2 J^\top W J / n + 2\rho/d\,\mathrm{diag}\,\sigma^{-2})\,\delta = \nabla\ell(\alpha)`
    with the *exact* gradient (autograd), so the iteration stops where plain gradient
    descent would — at a stationary point of :math:`\ell` — whatever the Jacobian's
    error; the shared Jacobian only makes each step cost one forward and one backward
    pass. DINo's shift-modulated decoders are close to linear in the code, so a few
    steps match hundreds of Adam steps. A step that increases a state's objective is
    halved for that state (backtracking, per state).

    Parameters
    ----------
    decoder
        Code-conditioned coordinate network (frozen).
    features
        Encoded points ``[P, F]``.
    y
        Standardised values ``[B, P, C]`` (0 where unobserved).
    mask
        Observation mask ``[B, P, C]``.
    alpha0
        Starting codes ``[B, d]``.
    steps
        Gauss–Newton steps.
    reg
        Weight of the Gaussian prior on the normalised code.
    code_mean
        Mean of the training codes ``[d]``.
    code_std
        Spread of the training codes ``[d]``.
    gls
        Optional GLS factor ``[k, P*C]`` (restricted to the points).
    chol
        Its Cholesky factors ``[B, k, k]``.
    jacobian
        The decoder's Jacobian ``[P*C, d]`` at ``code_mean`` on these points (float64),
        from :func:`decoder_jacobian`; computed here when None. Pass it when encoding
        states in several batches on the same points.

    Returns
    -------
    Codes ``[B, d]``.

    Examples
    --------
    >>> from xsciml.nn import FourierNet
    >>> net = FourierNet(2, 1, width=16, depth=2, input_scale=4.0, code_dim=3)
    >>> x, true = torch.rand(50, 2) * 2 - 1, torch.randn(4, 3) * 0.1
    >>> with torch.no_grad():
    ...     y = decode_codes(net, x, true)
    >>> a = gauss_newton_codes(net, x, y, torch.ones_like(y), torch.zeros(4, 3), steps=10,
    ...                        reg=0.0, code_mean=torch.zeros(3), code_std=torch.ones(3))
    >>> bool((a - true).abs().max() < 1e-3)
    True
    """
    _check_encode_inputs(features, y, mask, alpha0, code_mean, code_std, gls, chol)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if steps == 0:
        return alpha0.detach().clone()
    B, d = alpha0.shape
    n_obs = mask.sum((1, 2)).clamp_min(1.0)
    mu, sd = code_mean.reshape(-1).to(alpha0), code_std.reshape(-1).to(alpha0)
    if jacobian is None:
        J = decoder_jacobian(decoder, features, mu, sd)
    elif tuple(jacobian.shape) != (y.shape[1] * y.shape[2], d):
        raise ValueError(f"jacobian must be [P*C, d] = [{y.shape[1] * y.shape[2]}, {d}], got "
                         f"{tuple(jacobian.shape)}")
    else:
        J = jacobian.to(device=alpha0.device, dtype=torch.float64)
    m = mask.reshape(B, -1)
    uniq, inv = torch.unique(m, dim=0, return_inverse=True)  # one normal matrix per mask
    Jm = uniq.double()[:, :, None] * J  # [U, n, d]
    if gls is not None:
        WJ = _gls_apply(Jm, gls.double(), chol.double()[_first_of_each(inv, len(uniq))])
    else:
        WJ = Jm
    prior = (2.0 * reg / d) / sd.double() ** 2
    H = 2.0 * Jm.transpose(1, 2) @ WJ  # [U, d, d], divided by n_obs per state below
    H = H[inv] / n_obs.double()[:, None, None] + torch.diag_embed(prior.expand(B, -1))
    jitter = 1e-8 * H.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    H = H + jitter[:, None, None] * torch.eye(d, dtype=H.dtype, device=H.device)
    L = torch.linalg.cholesky(H)

    def objective(a: Tensor) -> Tensor:  # [B]
        return _encode_objective(decoder, features, y, mask, a, reg=reg, code_mean=mu, code_std=sd,
                                gls=gls, chol=chol)

    alpha = alpha0.detach().clone()
    scale = torch.ones(B, 1, dtype=alpha.dtype, device=alpha.device)
    with torch.enable_grad():
        a = alpha.requires_grad_(True)
        f = objective(a)
        (g,) = torch.autograd.grad(f.sum(), a)
    f = f.detach()
    for _ in range(int(steps)):
        delta = torch.cholesky_solve(g.double().unsqueeze(-1), L).squeeze(-1).to(alpha)
        trial = (alpha - scale * delta).requires_grad_(True)
        with torch.enable_grad():
            ft = objective(trial)
            (gt,) = torch.autograd.grad(ft.sum(), trial)
        better = (ft.detach() <= f)[:, None]
        alpha = torch.where(better, trial.detach(), alpha)
        g = torch.where(better, gt, g)
        f = torch.where(better[:, 0], ft.detach(), f)
        scale = torch.where(better, torch.clamp(scale * 2.0, max=1.0), scale * 0.5)
    return alpha.detach()


def _first_of_each(inv: Tensor, n: int) -> Tensor:
    """Index of the first occurrence of every value 0..n-1 in ``inv``."""
    first = torch.full((n,), len(inv), dtype=torch.long, device=inv.device)
    return first.scatter_reduce(0, inv, torch.arange(len(inv), device=inv.device), reduce="amin")


def integrate_latent(
    func: nn.Module,
    z0: Tensor,
    t: Tensor,
    *,
    method: str = "rk4",
    step: float | None = 0.5,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    adjoint: bool = False,
) -> Tensor:
    """Solve ``dz/dt = func(t, z)`` from ``z0 [N, d]`` at times ``t [K]`` (``t[0] = 0``).

    With a fixed-step method the solver steps on the grid ``0, step, 2 step, ...``
    whatever the output times (outputs in between are interpolated by torchdiffeq), so
    denser outputs leave the solution at shared times unchanged. Adaptive methods use
    ``rtol``/``atol``.

    Returns
    -------
    Tensor ``[K, N, d]``.

    Examples
    --------
    >>> class Decay(nn.Module):
    ...     def forward(self, t, z):
    ...         return -z
    >>> z = integrate_latent(Decay(), torch.ones(1, 1), torch.tensor([0.0, 1.0]), step=0.01)
    >>> round(float(z[-1, 0, 0]), 5) == round(math.exp(-1), 5)
    True
    """
    import torchdiffeq

    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if t.numel() == 1 or float(t[-1]) == float(t[0]):
        return z0.unsqueeze(0).expand(t.numel(), *z0.shape)
    kwargs: dict[str, Any] = {"method": method}
    n_out = t.numel()
    if method in FIXED_STEP_METHODS:
        if step is None or not step > 0:
            raise ValueError(f"method={method!r} needs a positive step, got {step!r}")
        kwargs["options"] = {"step_size": float(step)}
        # torchdiffeq shortens the last step to end exactly at t[-1]; end on the grid
        # instead so that every output is interpolated from the same steps
        span = float(t[-1] - t[0])
        end = math.ceil(span / step - 1e-9) * step
        extra = t.new_tensor([float(t[0]) + end])
        # in float32 an end a hair past t[-1] can round onto it: append only if it is later
        if end > span + 1e-12 * max(1.0, span) and float(extra) > float(t[-1]):
            t = torch.cat([t, extra])
    else:
        kwargs.update(rtol=float(rtol), atol=float(atol))
    if adjoint:
        sol = torchdiffeq.odeint_adjoint(func, z0, t, adjoint_params=tuple(func.parameters()), **kwargs)
    else:
        sol = torchdiffeq.odeint(func, z0, t, **kwargs)
    return sol[:n_out]


class DINoModule(nn.Module):
    """Decoder, latent dynamics, the training codes and the code normalisation.

    Parameters
    ----------
    decoder
        Conditional coordinate network ``D(x, α)`` (a FourierNet with ``code_dim``).
    dynamics
        :class:`LatentDynamics` on normalised codes.
    n_trajectories
        Rows of the table of training codes ``[S, T, d]``.
    n_frames
        Frames per row of that table.
    """

    def __init__(self, decoder: nn.Module, dynamics: LatentDynamics, n_trajectories: int,
                 n_frames: int) -> None:
        super().__init__()
        d = dynamics.latent_dim
        self.decoder = decoder
        self.dynamics = dynamics
        self.codes = nn.Parameter(torch.zeros(n_trajectories, n_frames, d))
        self.register_buffer("code_mean", torch.zeros(d))
        self.register_buffer("code_std", torch.ones(d))
        self.teacher_forcing = 1.0

    @torch.no_grad()
    def update_statistics(self) -> None:
        """Set the code normalisation to the current training codes' mean and std."""
        flat = self.codes.detach().reshape(-1, self.codes.shape[-1])
        std = flat.std(0, unbiased=False)
        floor = 1e-3 * float(std.max()) + 1e-6
        self.code_mean.copy_(flat.mean(0))
        self.code_std.copy_(std.clamp_min(floor))

    def normalise(self, alpha: Tensor) -> Tensor:
        return (alpha - self.code_mean) / self.code_std

    def denormalise(self, z: Tensor) -> Tensor:
        return z * self.code_std + self.code_mean


# =========================================================================== time axis
@dataclass
class _Clock:
    """How the model reads time: absolute floats in ``units`` and the ODE time unit."""

    kind: str  # "numeric", "datetime64" or "cftime"
    calendar: str
    units: str  # float unit of datetime axes ("days", ...); "" for numeric axes
    scale: float  # one ODE time unit, in float time units (median training spacing)

    @classmethod
    def fit(cls, values: np.ndarray, units: str) -> _Clock:
        kind = time_kind(values)
        if kind != "numeric" and units not in _UNIT_SECONDS:
            raise ValueError(f"time_units={units!r} not understood; use one of {sorted(_UNIT_SECONDS)}")
        clock = cls(kind, time_calendar(values), units if kind != "numeric" else "", 1.0)
        t = clock.to_float(values)
        if np.any(~np.isfinite(t)):
            raise ValueError("the time coordinate has missing values (NaT/NaN); drop those frames first")
        d = np.diff(clock.elapsed(values))
        if np.any(d <= 0):
            raise ValueError("the time coordinate must be strictly increasing; sort it and drop "
                             "duplicates first (ds.sortby('time').drop_duplicates('time'))")
        clock.scale = float(np.median(d))
        return clock

    def to_float(self, values: np.ndarray) -> np.ndarray:
        """Absolute time values as float64 (numbers, or ``units`` since 1970-01-01)."""
        values = np.asarray(values)
        kind = time_kind(values)
        if (kind == "numeric") != (self.kind == "numeric"):
            raise TypeError(
                f"time values of kind {kind!r} given, but the model was trained on a {self.kind} "
                "time axis; use the same kind of time coordinate as in training"
            )
        if kind == "numeric":
            return values.astype(np.float64)
        cal = time_calendar(values)
        if not calendars_compatible(cal, self.calendar):
            raise ValueError(f"time is in calendar {cal!r} but the model was trained on "
                             f"{self.calendar!r}; convert with ds.convert_calendar first")
        return time_to_float(values, self.units)

    def elapsed(self, values: np.ndarray) -> np.ndarray:
        """Float64 time since the first of ``values``, in the clock's units.

        Datetime64 axes are differenced in integer nanoseconds before the division, so
        that e.g. hourly frames stay exact multiples of 1/24 day instead of inheriting
        the rounding of "days since 1970".
        """
        values = np.asarray(values)
        if values.size == 0:
            return np.zeros(0)
        if self.kind == "datetime64" and np.issubdtype(values.dtype, np.datetime64):
            self.to_float(values[:1])  # kind and calendar checks
            ns = (values.astype("datetime64[ns]") - values.astype("datetime64[ns]")[0]).astype(np.int64)
            return ns.astype(np.float64) / (_UNIT_SECONDS[self.units] * 1e9)
        t = self.to_float(values)
        return t - t[0]

    def parse_lead(self, lead: Any, name: str = "lead") -> tuple[np.ndarray, np.ndarray]:
        """``(float offsets in time units, coordinate values)`` of lead times."""
        import pandas as pd

        if isinstance(lead, (str, bytes)) or lead is None:
            raise TypeError(f"{name} must be numbers or timedeltas (e.g. pd.timedelta_range('0h', "
                            f"'48h', freq='6h') or np.arange(0, 5, 0.25)), got {lead!r}")
        if isinstance(lead, xr.DataArray):
            lead = lead.values
        if isinstance(lead, (_dt.timedelta, np.timedelta64, pd.Timedelta)):
            lead = [lead]
        arr = np.asarray(lead)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
        if arr.dtype == object:
            if all(isinstance(v, (_dt.timedelta, np.timedelta64)) for v in arr):
                arr = pd.to_timedelta(list(arr)).to_numpy()
            else:
                bad = next(v for v in arr if not isinstance(v, (_dt.timedelta, np.timedelta64)))
                raise TypeError(f"{name} must be numbers or timedeltas, got an element {bad!r} "
                                f"of type {type(bad).__name__}")
        if np.issubdtype(arr.dtype, np.timedelta64):
            if self.kind == "numeric":
                raise TypeError(f"the model's time axis is numeric: give {name} as numbers in the "
                                "units of the time coordinate, not timedeltas")
            if np.any(np.isnat(arr)):
                raise ValueError(f"{name} contains NaT")
            arr = arr.astype("timedelta64[ns]")
            off = arr.astype(np.int64) / (_UNIT_SECONDS[self.units] * 1e9)
            coord = arr
        elif arr.dtype.kind in "iuf":
            off = arr.astype(np.float64)
            coord = arr
        else:
            raise TypeError(f"{name} must be numbers or timedeltas, got dtype {arr.dtype}")
        if np.any(~np.isfinite(off)) or np.any(off < 0):
            raise ValueError(f"{name} must be finite and >= 0 (forecasts go forward from the "
                             "initial state)")
        return off, coord

    def add(self, t0: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """``t0[..., None] + offsets``: valid times, in the kind of the time axis."""
        t0 = np.asarray(t0)
        if self.kind == "numeric":
            return t0.astype(np.float64)[..., None] + offsets
        self.to_float(t0)  # kind and calendar checks
        ns = np.rint(np.asarray(offsets) * _UNIT_SECONDS[self.units] * 1e9).astype(np.int64)
        if self.kind == "datetime64":
            return t0.astype("datetime64[ns]")[..., None] + ns.astype("timedelta64[ns]")
        steps = np.array([_dt.timedelta(microseconds=int(v) // 1000) for v in ns], dtype=object)
        return t0[..., None] + steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# =========================================================================== helpers
def _as_dataset(obj: Any, variables: Any, role: str) -> tuple[xr.Dataset, list[str]]:
    if isinstance(obj, xr.DataArray):
        name = obj.name if obj.name is not None else (variables if isinstance(variables, str) else "values")
        obj = obj.to_dataset(name=name)
        variables = variables if variables is not None else [name]
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"{role} must be an xarray Dataset or DataArray, got {type(obj).__name__}")
    if variables is None:
        variables = list(obj.data_vars)
        if len(variables) != 1:
            raise ValueError(f"name the variable(s) to model, e.g. fit_dynamics(ds, 'u'); the "
                             f"Dataset has {variables}")
    variables = [variables] if isinstance(variables, str) else list(variables)
    missing = [v for v in variables if v not in obj.data_vars]
    if missing:
        raise KeyError(f"variable(s) {missing} not found in the {role}; it has {list(obj.data_vars)}")
    return obj, variables


def _trajectory_data(obj: Any, variables: Any, time: str, sample_dim: Hashable | None,
                     train_until: Any) -> tuple[xr.Dataset, list[str], Hashable, Hashable]:
    """Training trajectories: ``(ds, variables, time dim, sample dim)``, cut at ``train_until``.

    A single trajectory (``sample_dim=None``) gets a length-1 ``"_trajectory"`` dim.
    Shared by every latent-dynamics model (DINo, smooth).
    """
    ds, variables = _as_dataset(obj, variables, "training data")
    if time not in ds.coords:
        raise KeyError(f"time coordinate {time!r} not found; coordinates are {list(ds.coords)}")
    if ds[time].ndim != 1 or ds[time].dims[0] not in ds[variables[0]].dims:
        raise ValueError(f"time coordinate {time!r} must be 1-D along a dimension of {variables[0]!r}")
    tdim = ds[time].dims[0]
    if sample_dim is None:
        sample_eff: Hashable = "_trajectory"
        ds = ds.expand_dims(sample_eff)
    else:
        if sample_dim not in ds.dims:
            raise KeyError(f"sample_dim {sample_dim!r} is not a dimension; dims are {tuple(ds.dims)} "
                           "(pass sample_dim=None for a single trajectory)")
        sample_eff = sample_dim
    if train_until is not None:
        ds = ds.sel({tdim: slice(None, train_until)})
    T = int(ds.sizes[tdim])
    if T < 2:
        raise ValueError(f"need at least 2 time steps to learn dynamics, got {T} along {tdim!r}"
                         + (f" up to train_until={train_until!r}" if train_until is not None else ""))
    return ds, variables, tdim, sample_eff


def _ode_settings(clock: _Clock, solver: str, rtol: float, atol: float, ode_step: Any) -> dict[str, Any]:
    """Checked solver options: ``method``, ``step`` (ODE units), ``step_units``, ``rtol``, ``atol``.

    The step of fixed-step solvers defaults to half the median frame spacing.
    """
    if solver not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
        raise ValueError(f"solver={solver!r} is not a torchdiffeq solver xsciml supports; use one "
                         f"of {FIXED_STEP_METHODS + ADAPTIVE_METHODS}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    if ode_step is None:
        step_units = 0.5 * clock.scale
    else:
        off, _ = clock.parse_lead([ode_step], "ode_step")
        step_units = float(off[0])
        if not step_units > 0:
            raise ValueError(f"ode_step must be positive, got {ode_step!r}")
    return {"method": solver, "step": step_units / clock.scale, "rtol": float(rtol),
            "atol": float(atol), "step_units": step_units}


def _codes_tensor(codes: Any, latent_dim: int, name: str = "codes"
                  ) -> tuple[Tensor, tuple[Hashable, ...], dict[Hashable, xr.Variable]]:
    """Codes ``(..., latent)`` (DataArray or array) as a float tensor, with their leading
    dims and the coordinates along them (``dim_i`` names for plain arrays)."""
    coords: dict[Hashable, xr.Variable] = {}
    lead_dims: tuple[Hashable, ...] | None = None
    if isinstance(codes, xr.DataArray):
        if "latent" not in codes.dims:
            raise ValueError(f"{name} need a 'latent' dimension, got dims {codes.dims}")
        lead_dims = tuple(d for d in codes.dims if d != "latent")
        coords = {k: c.variable for k, c in codes.coords.items()
                  if c.dims and set(c.dims) <= set(lead_dims)}
        codes = codes.transpose(*lead_dims, "latent").values
    a = torch.as_tensor(np.asarray(codes), dtype=torch.float32)
    if a.ndim < 1 or a.shape[-1] != latent_dim:
        raise ValueError(f"{name} must have a last dimension of {latent_dim}, got {tuple(a.shape)}")
    if lead_dims is None:
        lead_dims = tuple(f"dim_{i}" for i in range(a.ndim - 1))
    return a, lead_dims, coords


def _space_dims(ds: xr.Dataset, space: Sequence[str], var_dims: Sequence[Hashable]) -> list[Hashable]:
    dims: list[Hashable] = []
    for n in space:
        for d in ds[n].dims:
            if d not in dims:
                dims.append(d)
    return [d for d in var_dims if d in dims] + [d for d in dims if d not in var_dims]


def _space_values(ds: xr.Dataset, space: Sequence[str], space_dims: Sequence[Hashable]) -> dict[str, np.ndarray]:
    """Raw values of each space coordinate at every point of the ``space_dims`` grid (C order)."""
    sizes = {d: int(ds.sizes[d]) for d in space_dims}
    out = {}
    for n in space:
        c = decode_variable(ds[n])
        if c.dtype.kind not in "biuf":
            raise ValueError(f"space coordinate {n!r} has non-numeric dtype {c.dtype}")
        var = c.variable.set_dims(sizes).transpose(*space_dims)
        out[n] = np.asarray(var.values, dtype=np.float64).ravel()
    return out


def _input_scale_default(space_vals: dict[str, np.ndarray]) -> float:
    n_pts = len(next(iter(space_vals.values())))
    cells = []
    for v in space_vals.values():
        u = np.unique(v[np.isfinite(v)]).size
        cells.append(u if u < n_pts else int(round(n_pts ** (1.0 / len(space_vals)))))
    return float(max(4.0, min(cells) / 2.0))


def _coord_units(ds: xr.Dataset, space: Sequence[str]) -> dict[str, str]:
    return {n: str(ds[n].attrs["units"]) for n in space if "units" in ds[n].attrs}


def _teacher_forcing_schedule(spec: Any, steps: int) -> Callable[[int], float]:
    """``step -> probability`` of restarting each ODE step from the true code."""
    if callable(spec):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not 0.0 <= spec <= 1.0:
            raise ValueError(f"teacher_forcing must be a probability in [0, 1], got {spec}")
        return lambda step: float(spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        start, frac = float(spec[0]), float(spec[1])
        if not (0.0 <= start <= 1.0 and 0.0 < frac <= 1.0):
            raise ValueError("teacher_forcing=(start, fraction) needs start in [0, 1] and "
                             f"fraction in (0, 1], got {spec}")
        end = max(1.0, frac * steps)

        def schedule(step: int) -> float:
            # geometric decay from `start` to start / 100 over `fraction` of the run, then 0
            return 0.0 if step >= end else start * 0.01 ** (step / end)

        return schedule
    raise TypeError("teacher_forcing must be a probability, a (start, fraction) pair or a "
                    f"callable step -> probability, got {spec!r}")


def _unique_solver_times(offsets: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """Sorted distinct ODE times as a float32 tensor and where each offset finds its time.

    The de-duplication happens on the float32 values the solver sees, so the times are
    strictly increasing whatever the time unit (offsets closer than float32 resolution
    share one time instead of giving the solver two equal times).
    """
    t32 = np.asarray(offsets, dtype=np.float64).astype(np.float32)
    uniq, inv = np.unique(t32, return_inverse=True)
    return torch.from_numpy(uniq), inv.reshape(-1)


class _OffsetTable:
    """Unique time offsets between frames of a window, and where each pair finds its offset."""

    def __init__(self, tau: np.ndarray) -> None:
        self.tau = np.asarray(tau, dtype=np.float64)
        self._cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def __call__(self, j0: int, w: int) -> tuple[Tensor, Tensor]:
        key = (j0, w)
        if key not in self._cache:
            tw = self.tau[j0:j0 + w]
            delta = tw[None, :] - tw[:, None]  # [start, target]
            delta = np.where(delta >= 0, delta, 0.0)
            uniq, inv = _unique_solver_times(delta.reshape(-1))
            self._cache[key] = (uniq, torch.as_tensor(inv.reshape(w, w), dtype=torch.long))
        return self._cache[key]


def _dynamics_loss(m: DINoModule, z: Tensor, u: Tensor, t_out: Tensor, where: Tensor,
                   ode: dict[str, Any], phase: Tensor | None = None,
                   return_pred: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Teacher-forced latent rollout loss on normalised codes ``z [B, w, d]``.

    ``u [B, w]`` are uniform draws: the step into frame ``j`` restarts from the true code
    of frame ``j - 1`` when ``u[:, j] < m.teacher_forcing``; otherwise it continues the
    predicted trajectory. Every frame's prediction is the ODE solution from its latest
    restart, so all of them come from one batched solve over the distinct (trajectory,
    restart) pairs, integrated only as far as the longest segment between restarts.
    With ``return_pred``, also the predicted codes ``[B, w - 1, d]`` of frames 1..w-1.
    """
    B, w, d = z.shape
    steps = torch.arange(w - 1, device=z.device)
    mark = torch.ones(B, w - 1, dtype=torch.bool, device=z.device)
    mark[:, 1:] = u[:, 2:] < m.teacher_forcing
    start = torch.where(mark, steps, torch.full_like(steps, -1)).cummax(dim=1).values  # [B, w-1]
    b = torch.arange(B, device=z.device)[:, None].expand(-1, w - 1)
    pairs, pair_of = torch.unique(b * w + start, return_inverse=True)
    z0 = z[pairs // w, pairs % w]  # [n_pairs, d]
    if phase is not None and phase.shape[-1]:  # forcing phases at each restart frame
        z0 = torch.cat([z0, phase.to(z0)[pairs % w]], dim=-1)
    ti = where[start, (steps + 1).expand(B, -1)]  # offset index of (start, target)
    n_t = int(ti.max()) + 1
    sol = integrate_latent(m.dynamics, z0, t_out[:n_t], **ode)  # [n_t, n_pairs, d(+phases)]
    pred = sol[ti, pair_of][..., :d]
    loss = (pred - z[:, 1:]).pow(2).mean()
    return (loss, pred) if return_pred else loss


# =========================================================================== estimator
class LatentForecaster(Estimator):
    """What the latent-dynamics forecasters share (DINo and the smooth model).

    The common state (networks, coordinate encoder, scaler, clock, ODE options), input
    checks, decoding targets, labelled outputs, the lazy per-chunk forecast, the In-s
    mask and the In-t / Out-t × In-s / Out-s table. Subclasses provide ``forecast``,
    ``encode``, ``decode``, ``evaluate`` (their own encoding options, passed on to
    :meth:`_score`), ``_lazy_attrs`` and persistence.
    """

    def __init__(self, module: nn.Module, encoder: CoordinateEncoder, scaler: Scaler,
                 variables: Sequence[str], *, sample_dim: Hashable | None, time: str,
                 clock: _Clock, ode: dict[str, Any], coord_units: dict[str, str] | None = None,
                 var_attrs: dict | None = None, info: dict | None = None) -> None:
        self.module = module
        self.encoder = encoder
        self.scaler = scaler
        self.variables = list(variables)
        self.sample_dim = sample_dim
        self.time = time
        self.clock = clock
        self.ode = dict(ode)
        self.coord_units = dict(coord_units or {})
        self.var_attrs = var_attrs or {}
        self.info = info or {}
        self.history = None
        self.last_nfe = None

    @property
    def space(self) -> tuple[str, ...]:
        """Names of the space coordinates the decoder takes."""
        return tuple(self.encoder.space)

    def _common_config(self) -> dict[str, Any]:
        """The JSON config entries of the shared state plus the networks'."""
        m = self.module
        return {
            "variables": self.variables,
            "sample_dim": None if self.sample_dim is None else str(self.sample_dim),
            "time": self.time,
            "decoder": m.decoder.config(),
            "dynamics": m.dynamics.config(),
            "encoder": self.encoder.to_dict(),
            "scaler": self.scaler.to_dict(),
            "clock": self.clock.to_dict(),
            "ode": self.ode,
            "coord_units": self.coord_units,
            "var_attrs": {v: {k: (a if isinstance(a, (str, int, float, bool)) else str(a))
                              for k, a in at.items()} for v, at in self.var_attrs.items()},
            "info": self.info,
        }

    def _lazy_attrs(self, forecast_kw: dict[str, Any]) -> dict[str, str]:
        """Attrs a lazy forecast records of its options (the eager path's, less the NFE)."""
        return {}

    # ------------------------------------------------------------------ input checks
    def _state_times(self, ds: xr.Dataset, bdims: Sequence[Hashable]) -> xr.DataArray:
        """The initial time of every state, ``(*bdims)`` (broadcast), with a clear error when
        the forced dynamics need it and ``ds`` has none per state."""
        if self.time not in ds.coords or not set(ds[self.time].dims) <= set(bdims):
            raise ValueError(
                f"the model's dynamics are forced with periods {self.forcing_periods}: the initial "
                f"state needs its time coordinate {self.time!r} (one value per state, along "
                f"{list(bdims)}) to know the phase of each forcing")
        t = ds[self.time]
        return t.expand_dims({d: ds.sizes[d] for d in bdims if d not in t.dims}).transpose(*bdims)

    def _initial_times(self, ds: xr.Dataset, bdims: Sequence[Hashable]) -> np.ndarray | None:
        """Absolute float times ``[N]`` of the initial states (for forcing phases), else None."""
        if not self.module.dynamics.periods:
            return None
        return self.clock.to_float(np.asarray(self._state_times(ds, bdims).values).reshape(-1))

    @property
    def forcing_periods(self) -> list[float]:
        """Periods of the known forcings the dynamics receive, in the model's time units."""
        return [p * self.clock.scale for p in self.module.dynamics.periods]

    def _init_dataset(self, obj: Any, role: str) -> xr.Dataset:
        if isinstance(obj, xr.DataArray):
            name = obj.name
            if name is None and len(self.variables) == 1:
                name = self.variables[0]
            if name not in self.variables:
                raise KeyError(f"the {role} holds variable {name!r} but the model was trained on "
                               f"{self.variables}; rename it or pass the right variable")
            obj = obj.to_dataset(name=name)
        if not isinstance(obj, xr.Dataset):
            raise TypeError(f"{role} must be an xarray Dataset or DataArray, got {type(obj).__name__}")
        missing = [v for v in self.variables if v not in obj.data_vars]
        if missing:
            raise KeyError(f"the {role} lacks variable(s) {missing} the model was trained on "
                           f"({self.variables}); it has {list(obj.data_vars)}")
        missing_c = [n for n in self.space if n not in obj.variables]
        if missing_c:
            raise KeyError(f"the {role} lacks space coordinate(s) {missing_c}; the model was trained "
                           f"on space={list(self.space)}")
        self._check_units(obj, role)
        from ..units import check_dataset_units

        return check_dataset_units(obj, self.var_attrs, self.variables, role=role)

    def _check_units(self, coords: Mapping[str, Any], role: str) -> None:
        """Refuse space coordinates whose ``units`` attribute differs from training's.

        ``coords`` maps names to coordinates (a Dataset, or a target dict whose values may
        be plain arrays without attrs); coordinates without units pass.
        """
        for n in self.space:
            v = coords[n] if n in coords else None
            units = getattr(v, "attrs", {}).get("units") if v is not None else None
            trained = self.coord_units.get(n)
            if units is not None and trained is not None and str(units) != trained:
                raise ValueError(f"space coordinate {n!r} of the {role} is in {units!r} but the model "
                                 f"was trained in {trained!r}; convert the coordinate first")

    def _check_domain(self, feats: np.ndarray, role: str) -> None:
        """Refuse coordinates that lie mostly far outside the training domain (other units?)."""
        if feats.size == 0 or self.encoder.sphere:
            return
        outside = np.any(np.abs(feats) > 2.0, axis=1).mean()
        if outside > 0.5:
            rng = {n: (self.encoder.space_min[n], self.encoder.space_max[n]) for n in self.space}
            raise ValueError(
                f"{100 * outside:.0f}% of the {role}'s points lie far outside the training domain "
                f"{rng}; are its coordinates in other units than the training data?")

    def _target(self, target: Any):
        if isinstance(target, (xr.Dataset, xr.DataArray)):
            ds = target if isinstance(target, xr.Dataset) else target.to_dataset(
                name=target.name if target.name is not None else "_target")
            missing = [n for n in self.space if n not in ds.variables]
            if missing:
                raise KeyError(f"target lacks space coordinate(s) {missing}; the model was trained "
                               f"on space={list(self.space)}")
            self._check_units(ds, "target")
            sdims = _space_dims(ds, self.space, [])
            target = xr.Dataset(coords={n: ds[n].variable for n in self.space})
            target = target.transpose(*sdims)
        elif isinstance(target, Mapping):
            self._check_units(target, "target")
        tp = target_points(self.encoder, target)
        self._check_domain(tp.features.numpy(), "target")
        return tp

    def _to_xarray(self, vals: Tensor, tp, lead_dims, lead_coords, extra_attrs=None):
        das = {}
        for j, v in enumerate(self.variables):
            attrs = {**self.var_attrs.get(v, {}), **self._provenance(), **(extra_attrs or {})}
            das[v] = tp.to_dataarray(vals[..., j], name=v, attrs=attrs, leading_dims=tuple(lead_dims),
                                     leading_coords=lead_coords)
        if len(das) == 1:
            return next(iter(das.values()))
        return xr.Dataset(das, attrs={**self._provenance(), **(extra_attrs or {})})

    def _forecast_lazy(self, ds: xr.Dataset, offsets, lead_coord, target, **kw):
        """Per-chunk forecast of a dask-backed initial state (chunks along state dims only).

        Runs through :func:`xsciml.parallel.apply_model`: the model enters the graph once
        and is cached per worker; one task per chunk of the state dims.
        """
        from ..parallel import apply_model, check_core_chunks

        v0 = ds[self.variables[0]]
        sdims = _space_dims(ds, self.space, v0.dims)
        if target is not None:
            raise ValueError("a dask-backed initial state is forecast on its own grid; call "
                             ".compute() first to decode on another target")
        das = [check_core_chunks(ds[v], sdims, argname=f"initial-state variable {v!r}")
               for v in self.variables]
        bdims = [d for d in v0.dims if d not in sdims]
        space_coords = {n: (tuple(ds[n].dims), np.asarray(ds[n].values)) for n in self.space}
        nlead = len(offsets)
        device = kw.pop("device", "auto")
        inputs = [d.transpose(*bdims, *sdims) for d in das]
        core = [list(sdims)] * len(das)
        with_time = bool(self.module.dynamics.periods)
        if with_time:  # forced dynamics: each state's initial time travels with its chunk
            t = self._state_times(ds, bdims)  # a clear error here, not in a task
            inputs.append(t.chunk({d: das[0].chunksizes[d] for d in bdims if d in das[0].chunksizes})
                          if das[0].chunks is not None else t)
            core.append([])
        out = apply_model(
            _forecast_kernel, self, *inputs,
            input_core_dims=core,
            output_core_dims=[["lead", *sdims]] * len(das),
            output_dtypes=[np.float32] * len(das), output_sizes={"lead": nlead}, device=device,
            kwargs={"names": list(self.variables), "sdims": list(sdims), "time": self.time,
                    "with_time": with_time, "space_coords": space_coords, "lead": lead_coord,
                    "forecast_kw": kw},
        )
        outs = list(out) if isinstance(out, tuple) else [out]
        extra = self._lazy_attrs(kw)
        res = xr.Dataset()
        for name, da in zip(self.variables, outs, strict=True):
            da = da.assign_coords(lead=("lead", lead_coord))
            da.attrs = {**self.var_attrs.get(name, {}), **self._provenance(), **extra}
            res[name] = da.transpose(*bdims, "lead", *sdims)
        res = res.assign_coords({k: c for k, c in ds.coords.items()
                                 if c.dims and set(c.dims) <= set(bdims) | set(sdims)
                                 and k not in res.coords})
        if self.time in ds.coords and set(ds[self.time].dims) <= set(bdims):
            t0 = ds[self.time].compute()
            res = res.assign_coords(valid_time=((*t0.dims, "lead"), self.clock.add(t0.values, offsets)))
        return res[self.variables[0]] if len(self.variables) == 1 else res

    # ------------------------------------------------------------------ evaluation
    def observed_mask(self, target: xr.Dataset | xr.DataArray) -> xr.DataArray:
        """Boolean mask of the points of ``target`` observed during training ("In-s").

        A point is In-s when it coincides (to 1e-6 of the domain size) with a training
        point that was observed at least once.
        """
        from scipy.spatial import cKDTree

        ds = target if isinstance(target, xr.Dataset) else target.to_dataset(
            name=target.name if target.name is not None else "_t")
        sdims = _space_dims(ds, self.space, [])
        vals = _space_values(ds, self.space, sdims)
        pts = np.stack([vals[n] for n in self.space], -1)
        ref = self.train_points[self.train_observed]
        span = np.ptp(self.train_points, axis=0) if len(self.train_points) else np.ones(len(self.space))
        scale = np.where(span > 0, span, 1.0)
        hit = np.zeros(len(pts), dtype=bool)
        if len(ref):
            ok = np.all(np.isfinite(pts), axis=1)
            d, _ = cKDTree(ref / scale).query(pts[ok] / scale, k=1)
            hit[ok] = d < 1e-6
        shape = [ds.sizes[d] for d in sdims]
        coords = {k: c.variable for k, c in ds.coords.items() if c.dims and set(c.dims) <= set(sdims)}
        return xr.DataArray(hit.reshape(shape), dims=tuple(sdims), coords=coords, name="observed")

    def _score(self, ds_truth: xr.Dataset | xr.DataArray, n_frames_train: int | None,
               observed: xr.DataArray | None, forecast_kw: dict[str, Any], *, device: Any,
               seed: int | None, progress: bool | None, attrs: dict[str, Any]) -> xr.Dataset:
        """The In-t / Out-t × In-s / Out-s table of ``evaluate`` (``forecast_kw``: the
        subclass's encoding options; ``attrs``: what the table records of them)."""
        ds = self._init_dataset(ds_truth, "truth")
        if self.time not in ds.dims:
            raise ValueError(f"the truth must have a {self.time!r} dimension (whole trajectories)")
        nt = int(ds.sizes[self.time])
        if n_frames_train is None:
            n_frames_train = int(self.info.get("n_frames_train", nt))
        if not 0 < int(n_frames_train) <= nt:
            raise ValueError(f"n_frames_train must be in [1, {nt}], got {n_frames_train}")
        n_frames_train = int(n_frames_train)
        if observed is None:
            observed = self.observed_mask(ds)
        observed = observed.astype(bool)
        t = ds[self.time].values
        if self.clock.kind == "numeric":
            lead = t.astype(np.float64) - float(t[0])
        else:
            lead = self.clock.elapsed(t)
        init = ds[self.variables].isel({self.time: 0}).where(observed)
        fc = self.forecast(init, lead=lead, target=ds, **forecast_kw, device=device, seed=seed,
                           progress=progress)
        fc = fc if isinstance(fc, xr.Dataset) else fc.to_dataset()
        fc = fc.drop_vars("valid_time", errors="ignore").rename({"lead": self.time})
        fc = fc.assign_coords({self.time: ds[self.time].values})
        sdims = list(observed.dims)
        horizon = xr.DataArray(np.arange(nt) < n_frames_train, dims=self.time)
        rows = []
        for v in self.variables:
            truth = ds[v].astype(np.float64)
            pred = fc[v].transpose(*truth.dims)
            err = (pred - truth) ** 2
            den = (truth - truth.mean(sdims)) ** 2
            valid = truth.notnull()
            table_mse = np.full((2, 3), np.nan)
            table_rel = np.full((2, 3), np.nan)
            for i, hmask in enumerate((horizon, ~horizon)):
                for j, smask in enumerate((observed, ~observed, xr.ones_like(observed))):
                    sel = valid & hmask & smask
                    n = int(sel.sum())
                    if n == 0:
                        continue
                    e = float(err.where(sel).sum())
                    table_mse[i, j] = e / n
                    dsum = float(den.where(sel).sum())
                    table_rel[i, j] = e / dsum if dsum > 0 else np.nan
            rows.append((table_mse, table_rel))
        coords = {"horizon": ["In-t", "Out-t"], "grid": ["In-s", "Out-s", "all"]}
        if len(self.variables) == 1:
            mse, rel = rows[0]
            out = xr.Dataset({"mse": (("horizon", "grid"), mse), "rel_mse": (("horizon", "grid"), rel)},
                             coords=coords)
        else:
            coords["variable"] = self.variables
            out = xr.Dataset({"mse": (("variable", "horizon", "grid"), np.stack([r[0] for r in rows])),
                              "rel_mse": (("variable", "horizon", "grid"), np.stack([r[1] for r in rows]))},
                             coords=coords)
        out["mse"].attrs = {"long_name": "mean squared error"}
        out["rel_mse"].attrs = {"long_name": "relative MSE: sum err^2 / sum (truth - spatial mean)^2"}
        out.attrs = {**self._provenance(), "n_frames_train": n_frames_train,
                     "observed_fraction": float(observed.mean()), **attrs}
        return out


@register_estimator
class DINo(LatentForecaster):
    """A fitted DINo forecaster (decoder, latent dynamics, normalisers).

    Built by :func:`fit_dynamics` (``ds.sciml.fit_dynamics``). Forecast with
    :meth:`forecast` (``ds_init.sciml.forecast(model, ...)``), score with
    :meth:`evaluate`, save with :meth:`save` and reload with :func:`xsciml.load`.
    """

    def __init__(self, module: DINoModule, encoder: CoordinateEncoder, scaler: Scaler,
                 variables: list[str], *, sample_dim: Hashable | None, time: str,
                 clock: _Clock, ode: dict[str, Any], train_points: np.ndarray,
                 train_observed: np.ndarray, coord_units: dict[str, str] | None = None,
                 var_attrs: dict | None = None, info: dict | None = None,
                 residual_factor: Tensor | None = None, residual_var: float = 1.0) -> None:
        super().__init__(module, encoder, scaler, variables, sample_dim=sample_dim, time=time,
                         clock=clock, ode=ode, coord_units=coord_units, var_attrs=var_attrs, info=info)
        self.train_points = np.asarray(train_points, dtype=np.float64)
        self.train_observed = np.asarray(train_observed, dtype=bool)
        #: low-rank factor ``[k, P*C]`` of the covariance of the decoder's residuals on the
        #: training points (see :func:`residual_covariance_factor`), or None
        self.residual_factor = residual_factor
        self.residual_var = float(residual_var)

    # ------------------------------------------------------------------ properties
    @property
    def latent_dim(self) -> int:
        """Size of the codes."""
        return int(self.module.codes.shape[-1])

    @property
    def codes(self) -> xr.DataArray:
        """Codes of the training frames ``(sample_dim, time, latent)``."""
        c = self.module.codes.detach().cpu().numpy()
        dims = (str(self.sample_dim or "trajectory"), self.time, "latent")
        return xr.DataArray(c, dims=dims, name="codes")

    # ------------------------------------------------------------------ persistence
    def _get_config(self) -> dict[str, Any]:
        m = self.module
        return {**self._common_config(), "space": list(self.space), "latent_dim": self.latent_dim,
                "shape": [int(s) for s in m.codes.shape[:2]], "residual_var": self.residual_var}

    def _get_tensors(self) -> dict[str, Tensor]:
        out = {f"module.{k}": v.detach().cpu() for k, v in self.module.state_dict().items()}
        out["train_points"] = torch.as_tensor(self.train_points)
        out["train_observed"] = torch.as_tensor(self.train_observed.astype(np.uint8))
        if self.residual_factor is not None:
            out["residual_factor"] = self.residual_factor.detach().cpu().contiguous()
        return out

    @classmethod
    def _from_state(cls, config: dict, tensors: dict[str, Tensor]) -> DINo:
        from ..nn import build_network

        decoder = build_network(config["decoder"])
        dyn = LatentDynamics(**config["dynamics"])
        S, T = config["shape"]
        module = DINoModule(decoder, dyn, S, T)
        module.load_state_dict({k[len("module."):]: v.cpu() for k, v in tensors.items()
                                if k.startswith("module.")})
        module.eval()
        return cls(module, CoordinateEncoder.from_dict(config["encoder"]),
                   Scaler.from_dict(config["scaler"]), config["variables"],
                   sample_dim=config["sample_dim"], time=config["time"],
                   clock=_Clock(**config["clock"]), ode=config["ode"],
                   train_points=tensors["train_points"].cpu().numpy(),
                   train_observed=tensors["train_observed"].cpu().numpy().astype(bool),
                   coord_units=config.get("coord_units"), var_attrs=config.get("var_attrs"),
                   info=config.get("info"), residual_factor=tensors.get("residual_factor"),
                   residual_var=config.get("residual_var", 1.0))

    def _provenance_extra(self) -> dict[str, Any]:
        return {"xsciml_latent_dim": self.latent_dim,
                "xsciml_training_period": self.info.get("training_period", ""),
                "xsciml_ode_method": self.ode.get("method", "")}

    # ------------------------------------------------------------------ encoding
    def _points(self, ds: xr.Dataset, role: str):
        """(space dims, raw coordinate values, features [P, F], finite-coordinate index)."""
        v0 = ds[self.variables[0]]
        sdims = _space_dims(ds, self.space, v0.dims)
        for v in self.variables:
            extra = [d for d in sdims if d not in ds[v].dims]
            if extra:
                raise ValueError(f"variable {v!r} of the {role} lacks space dimension(s) {extra}")
        vals = _space_values(ds, self.space, sdims)
        ok = np.all([np.isfinite(v) for v in vals.values()], axis=0)
        idx = np.flatnonzero(ok)
        feats = self.encoder.transform({n: v[idx] for n, v in vals.items()})
        self._check_domain(feats, role)
        return sdims, vals, feats, idx

    def encode(self, ds_init: xr.Dataset | xr.DataArray, *, steps: int | None = None,
               optimizer: str = "gauss-newton", lr: float = 0.1,
               init: str = "auto", reg: float = 1e-2, noise: str = "auto",
               shrinkage: float = 0.1, device: Any = "auto",
               seed: int | None = 0, progress: bool | None = None,
               max_points: int = 2**18) -> xr.DataArray:
        """Infer the codes α of states by auto-decoding (decoder frozen, batched).

        Every state along the non-space dimensions of ``ds_init`` gets its own code,
        minimising the mean squared error of its decoded field at its finite points
        (standardised values) plus ``reg`` times the mean square of its normalised code — a
        Gaussian prior fitted to the training codes, which keeps the code where the
        dynamics was trained — all states at once. States are independent: the result
        does not depend on how many are encoded together.

        The default optimiser takes Gauss–Newton steps preconditioned by the decoder's
        Jacobian at the mean training code (:func:`gauss_newton_codes`): DINo's decoders
        are close to linear in the code, and 5 such steps reach what 100–300 Adam steps
        reach, at a few percent of the cost. ``optimizer="adam"`` is DINo's
        auto-decoding (Adam with a cosine-decayed learning rate).

        Parameters
        ----------
        ds_init
            States on any grid or scattered points with the model's space coordinates,
            NaN where unobserved.
        steps
            Optimiser steps (default 5 Gauss–Newton steps, or 100 Adam steps).
        optimizer
            ``"gauss-newton"`` (default) or ``"adam"``.
        lr
            Initial learning rate of Adam.
        init
            Starting codes: ``"nearest"`` starts every state from the training code whose
            decoded field is closest to it on its observed points (a nearest-neighbour
            warm start, one batched decoding of up to 512 training codes); ``"mean"`` from
            the mean training code. ``"auto"`` (default): the mean for Gauss–Newton (which
            converges from there, and the warm start would be most of its cost), the
            nearest code for Adam.
        reg
            Weight of the prior term (0: plain least squares).
        noise
            The misfit: ``"white"``, the mean square over the observed points; or
            ``"correlated"``, generalised least squares
            :math:`e^\top K^{-1} e` with :math:`K` the covariance of the decoder's residuals
            estimated on the training frames (:attr:`residual_factor`), shrunk towards
            white noise by ``shrinkage`` (scaled so that white noise gives the mean square
            back). What the code cannot represent (small scales) is spatially correlated;
            on a sparse sample it aliases into the large scales under plain least squares,
            and GLS discounts it. It needs the observed points to be training points (the
            training grid or a subset of it). ``"auto"`` (default): ``"correlated"`` when
            the model has the covariance and every observed point is a training point,
            else ``"white"``.
        shrinkage
            Weight in (0, 1] of white noise in the GLS covariance
            :math:`(1 - s) F^\top F + s \bar v I`.
        max_points
            Bound on states × points handled at once (memory); larger inputs are done in
            consecutive groups of states.

        Returns
        -------
        DataArray ``(..., latent)`` of codes over the non-space dims of ``ds_init``.

        Examples
        --------
        >>> z = model.encode(ds.isel(time=0), steps=100)  # doctest: +SKIP
        """
        ds = self._init_dataset(ds_init, "initial state")
        alpha, bdims, bshape, bcoords = self._encode_tensor(ds, steps=steps, optimizer=optimizer,
                                                            lr=lr, device=device,
                                                            seed=seed, progress=progress,
                                                            max_points=max_points, init=init,
                                                            reg=reg, noise=noise,
                                                            shrinkage=shrinkage)
        return xr.DataArray(alpha.reshape(*bshape, self.latent_dim).numpy(),
                            dims=(*bdims, "latent"), coords=bcoords, name="alpha")

    def _candidate_fields(self, feats: Tensor, max_points: int,
                          max_candidates: int = 512) -> tuple[Tensor, Tensor]:
        """Training codes (at most ``max_candidates``, evenly spread) and their fields at ``feats``."""
        m = self.module
        codes = m.codes.detach().reshape(-1, self.latent_dim).to(feats.device)
        if len(codes) > max_candidates:
            codes = codes[torch.linspace(0, len(codes) - 1, max_candidates).round().long()]
        per = max(1, int(max_points) // max(1, len(feats)))
        with torch.no_grad():
            fields = torch.cat([decode_codes(m.decoder, feats, codes[i:i + per])
                                for i in range(0, len(codes), per)])
        return codes, fields.reshape(len(codes), -1)

    @staticmethod
    def _nearest_codes(cand: tuple[Tensor, Tensor], y: Tensor, mask: Tensor) -> Tensor:
        """For each state, the candidate code whose field is closest on its observed points."""
        codes, fields = cand  # [K, d], [K, P*C]
        with torch.no_grad():
            my = (mask * y).reshape(len(y), -1)
            m = mask.reshape(len(y), -1)
            # sum_p m (f - y)^2 = sum m f^2 - 2 sum m y f + const, for all pairs at once
            err = m @ fields.pow(2).T - 2.0 * my @ fields.T
        return codes[err.argmin(dim=1)]

    def _training_point_index(self, vals: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        """Index of every point (``vals`` at ``idx``) among the training points, -1 if none."""
        import pandas as pd

        pts = np.stack([np.asarray(vals[n], dtype=np.float64)[idx] for n in self.space], -1)
        ref = self.train_points
        span = np.maximum(np.ptp(ref, axis=0), 1e-300) if len(ref) else np.ones(ref.shape[1])

        def key(a: np.ndarray) -> pd.MultiIndex:  # coordinates rounded relative to the span
            return pd.MultiIndex.from_arrays(list(np.round(a / span * 1e9).astype(np.int64).T))

        return key(ref).get_indexer(key(pts))

    def _gls_setup(self, noise: str, shrinkage: float, vals, idx, keep) -> Tensor | None:
        """The residual factor on the observed entries when the misfit is GLS, else None."""
        if noise not in ("auto", "white", "correlated"):
            raise ValueError(f"noise must be 'auto', 'white' or 'correlated', got {noise!r}")
        if not 0 < shrinkage <= 1:
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage!r}")
        if noise == "white":
            return None
        if self.residual_factor is None:
            if noise == "correlated":
                raise ValueError("this model has no residual covariance (fitted with residual_rank=0, "
                                 "too many training points, or saved by an older version); use "
                                 "noise='white'")
            return None
        where = self._training_point_index(vals, idx[keep])
        if (where < 0).any():
            if noise == "correlated":
                raise ValueError(f"{int((where < 0).sum())} observed point(s) are not training points; "
                                 "noise='correlated' needs the training grid or a subset of it (use "
                                 "noise='white' on other grids)")
            return None
        C = len(self.variables)
        cols = (torch.as_tensor(where)[:, None] * C + torch.arange(C)).reshape(-1)
        return self.residual_factor[:, cols] * float(np.sqrt(1.0 - shrinkage))

    def _encode_tensor(self, ds: xr.Dataset, *, steps: int | None, lr: float, device: Any,
                       seed: int | None, progress: bool | None, max_points: int,
                       init: str = "auto", reg: float = 0.0, noise: str = "white",
                       shrinkage: float = 0.1, optimizer: str = "gauss-newton"):
        from .._utils import progress_bar, resolve_device, seed_everything

        if optimizer not in ENCODE_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {ENCODE_OPTIMIZERS}, got {optimizer!r}")
        steps = _encode_steps(steps, optimizer)
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"encode steps must be an integer >= 0, got {steps!r}")
        if not (lr > 0 and reg >= 0):
            raise ValueError(f"the encoding needs lr > 0 and reg >= 0, got lr={lr!r}, reg={reg!r}")
        sdims, vals, feats, idx = self._points(ds, "initial state")
        v0 = ds[self.variables[0]]
        bdims = [d for d in v0.dims if d not in sdims]
        for v in self.variables[1:]:
            if set(ds[v].dims) != set(v0.dims):
                raise ValueError(f"variables {self.variables[0]!r} {v0.dims} and {v!r} "
                                 f"{ds[v].dims} of the initial state have different dimensions")
        bshape = [int(ds.sizes[d]) for d in bdims]
        N = int(np.prod(bshape, dtype=np.int64))
        P = int(np.prod([ds.sizes[d] for d in sdims], dtype=np.int64))
        y = np.stack([np.asarray(decode_variable(ds[v]).transpose(*bdims, *sdims).values,
                                 dtype=np.float64).reshape(N, P) for v in self.variables], -1)
        y = y[:, idx]
        if np.isinf(y).any():
            raise ValueError("the initial state contains infinite values; replace them with NaN")
        mask = np.isfinite(y)
        keep = mask.any(axis=(0, 2))  # drop points unobserved in every state
        y, mask, feats = y[:, keep], mask[:, keep], feats[keep]
        empty = np.flatnonzero(~mask.any(axis=(1, 2)))
        if empty.size:
            raise ValueError(f"{empty.size} initial state(s) have no observed point (e.g. flat "
                             f"index {empty[:3].tolist()} over dims {bdims}); drop them first")
        ys = np.where(mask, self.scaler.transform(np.where(mask, y, 0.0)), 0.0)
        gls = self._gls_setup(noise, shrinkage, vals, idx, keep)
        floor = shrinkage * self.residual_var
        dev = resolve_device(device)
        if gls is not None:
            gls = gls.to(dev)
        seed_everything(seed)
        m = self.module.to(dev).eval()
        dec = m.decoder
        flags = [p.requires_grad for p in dec.parameters()]
        for p in dec.parameters():
            p.requires_grad_(False)
        f = torch.as_tensor(feats, dtype=torch.float32, device=dev)
        out = torch.empty(N, self.latent_dim)
        per = max(1, int(max_points) // max(1, len(feats)))
        if init == "auto":  # Gauss-Newton converges from the mean; Adam needs a warm start
            init = "mean" if optimizer == "gauss-newton" else "nearest"
        jac = (decoder_jacobian(dec, f, m.code_mean.detach(), m.code_std.detach())
               if optimizer == "gauss-newton" and steps > 0 else None)  # shared by every chunk
        if init == "nearest":
            cand = self._candidate_fields(f, max_points)
        elif init != "mean":
            raise ValueError(f"init must be 'auto', 'nearest' or 'mean', got {init!r}")
        try:
            with torch.enable_grad():
                for a in progress_bar(range(0, N, per), desc="encode", progress=progress, leave=False):
                    yt = torch.as_tensor(ys[a:a + per], dtype=torch.float32, device=dev)
                    mt = torch.as_tensor(mask[a:a + per], dtype=torch.float32, device=dev)
                    chol = None if gls is None else gls_factors(gls, mt.reshape(len(mt), -1), floor)
                    if init == "nearest":
                        alpha0 = self._nearest_codes(cand, yt, mt)
                    else:
                        alpha0 = m.code_mean.detach().expand(len(yt), -1)
                    if optimizer == "gauss-newton":
                        out[a:a + per] = gauss_newton_codes(
                            dec, f, yt, mt, alpha0, steps=steps, reg=reg, code_mean=m.code_mean,
                            code_std=m.code_std, gls=gls, chol=chol, jacobian=jac).cpu()
                        continue
                    alpha = alpha0.clone().requires_grad_(True)
                    opt = torch.optim.Adam([alpha], lr=lr)
                    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
                    for _ in range(steps):
                        loss = _encode_objective(dec, f, yt, mt, alpha, reg=reg, code_mean=m.code_mean,
                                                code_std=m.code_std, gls=gls, chol=chol).sum()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        sched.step()
                    out[a:a + per] = alpha.detach().cpu()
        finally:
            for p, r in zip(dec.parameters(), flags, strict=True):
                p.requires_grad_(r)
        bcoords = {k: c.variable for k, c in ds.coords.items()
                   if c.dims and set(c.dims) <= set(bdims)}
        return out, bdims, bshape, bcoords

    # ------------------------------------------------------------------ forecasting
    def _integrate(self, alpha0: Tensor, offsets: np.ndarray, device: Any,
                   t0: np.ndarray | None = None) -> Tensor:
        """Codes ``[N, K, d]`` at float time offsets (time units) from codes ``alpha0 [N, d]``.

        ``t0``: absolute float times of the initial states, needed with forcing periods.
        """
        from .._utils import resolve_device

        dev = resolve_device(device)
        m = self.module.to(dev).eval()
        tau, inv = _unique_solver_times(np.asarray(offsets, dtype=np.float64) / self.clock.scale)
        tau = tau.numpy()
        z0 = m.normalise(alpha0.to(dev))
        d = z0.shape[-1]
        if m.dynamics.periods:
            if t0 is None:
                raise ValueError("forced dynamics need the initial times (t0)")
            z0 = torch.cat([z0, m.dynamics.phases(np.asarray(t0) / self.clock.scale).to(z0)], -1)
        if tau[0] > 0:  # the solve starts at the initial state
            tau = np.concatenate([[0.0], tau])
            inv = inv + 1
        m.dynamics.nfe = 0
        with torch.inference_mode():
            z = integrate_latent(m.dynamics, z0, torch.as_tensor(tau, dtype=torch.float32, device=dev),
                                 method=self.ode["method"], step=self.ode["step"],
                                 rtol=self.ode["rtol"], atol=self.ode["atol"])
            alpha = m.denormalise(z[..., :d])[torch.as_tensor(inv, device=dev)]  # [K, N, d]
        self.last_nfe = int(m.dynamics.nfe)
        return alpha.transpose(0, 1).cpu()

    def decode(self, alpha: Tensor | np.ndarray | xr.DataArray, target: Any, *,
               device: Any = "auto", batch_size: int = 2**18) -> xr.DataArray | xr.Dataset:
        """Decode codes ``(..., latent)`` on any target (grid dict, Dataset, DataFrame).

        Returns fields with the codes' leading dims followed by the target's dims.

        Examples
        --------
        >>> model.decode(model.codes.isel(time=0), {"y": y, "x": x})  # doctest: +SKIP
        """
        a, lead_dims, coords = _codes_tensor(alpha, self.latent_dim)
        tp = self._target(target)
        vals = self._decode_tensor(a.reshape(-1, self.latent_dim), tp, device, batch_size)
        vals = vals.reshape(*a.shape[:-1], *vals.shape[1:])
        return self._to_xarray(vals, tp, lead_dims, coords)

    def _decode_tensor(self, alpha: Tensor, tp, device: Any, batch_size: int) -> Tensor:
        """``alpha [M, d]`` → physical values ``[M, P, C]`` at the target's points."""
        from .._utils import resolve_device

        dev = resolve_device(device)
        m = self.module.to(dev).eval()
        feats = tp.features.to(dev)
        M, P = alpha.shape[0], feats.shape[0]
        out = torch.empty(M, P, len(self.variables))
        per = max(1, int(batch_size) // max(P, 1))
        with torch.inference_mode():
            for i in range(0, M, per):
                out[i:i + per] = decode_codes(m.decoder, feats, alpha[i:i + per].to(dev)).float().cpu()
        return self.scaler.inverse(out)

    def forecast(self, ds_init: xr.Dataset | xr.DataArray, *, lead: Any, target: Any = None,
                 encode_steps: int | None = None, encode_optimizer: str = "gauss-newton",
                 encode_lr: float = 0.1, encode_init: str = "auto",
                 encode_reg: float = 1e-2, encode_noise: str = "auto", residual: str | None = None,
                 device: Any = "auto",
                 seed: int | None = 0, progress: bool | None = None,
                 batch_size: int = 2**18) -> xr.DataArray | xr.Dataset:
        """Forecast from initial states on any grid, at any lead times.

        Parameters
        ----------
        ds_init
            Initial state(s): the model's variables with its space coordinates — the
            training grid, another grid, a random subset of points (NaN elsewhere) or
            scattered points. Every non-space dimension (``trajectory``, ensemble member,
            start date...) indexes independent initial states, all encoded at once.
        lead
            Lead times: numbers (in the units of a numeric time axis, or in the model's
            ``time_units`` for datetime axes) or timedeltas; between, at and beyond the
            training times.
        target
            Where to decode: default the grid/points of ``ds_init``; or a Dataset /
            DataArray (its space coordinates), a dict of 1-D coordinates (a new grid),
            or a DataFrame of scattered points.
        encode_steps
            Auto-decoding steps of the initial codes (``steps`` of :meth:`encode`).
        encode_optimizer
            ``optimizer`` of :meth:`encode`.
        encode_lr
            ``lr`` of :meth:`encode`.
        encode_init
            ``init`` of :meth:`encode`.
        encode_reg
            ``reg`` of :meth:`encode`.
        encode_noise
            ``noise`` of :meth:`encode`.
        residual
            ``None`` (default): the forecast is the decoded latent trajectory. ``"persist"``:
            add the initial state's reconstruction residual ``y0 - D(α0)`` (0 where
            ``y0`` is NaN) at every lead — the small scales the code does not hold, carried
            as persistence, like the anomaly of "climatology + persisted anomaly". Only on
            the initial state's own points (``target=None``).
        device
            Where to run.
        seed
            The seed.
        progress
            Show a progress bar.
        batch_size
            Bound on codes × points decoded at once.

        Returns
        -------
        DataArray (one variable) or Dataset with dims ``(<state dims>..., lead,
        <target dims>...)``, coordinate ``lead`` and, when ``ds_init`` has a time
        coordinate, ``valid_time`` = initial time + lead. Attrs: the variable's and
        provenance. A dask-backed ``ds_init`` (chunked along state dims only) gives a
        lazy result computed per chunk.

        Examples
        --------
        >>> fc = model.forecast(ds.isel(time=0), lead=np.arange(0, 5, 0.25))  # doctest: +SKIP
        """
        offsets, lead_coord = self.clock.parse_lead(lead)
        ds = self._init_dataset(ds_init, "initial state")
        if residual not in (None, "persist"):
            raise ValueError(f"residual must be None or 'persist', got {residual!r}")
        if residual is not None and target is not None:
            raise ValueError("residual='persist' adds the initial state's residual on its own "
                             "points: leave target=None")
        if any(_is_dask(ds[v]) for v in self.variables):
            return self._forecast_lazy(ds, offsets, lead_coord, target, encode_steps=encode_steps,
                                       encode_optimizer=encode_optimizer,
                                       encode_lr=encode_lr, encode_init=encode_init,
                                       encode_reg=encode_reg, encode_noise=encode_noise,
                                       residual=residual, device=device,
                                       seed=seed, batch_size=batch_size)
        alpha0, bdims, bshape, bcoords = self._encode_tensor(
            ds, steps=encode_steps, optimizer=encode_optimizer, lr=encode_lr, device=device,
            seed=seed, progress=progress, max_points=batch_size, init=encode_init, reg=encode_reg,
            noise=encode_noise)
        alpha = self._integrate(alpha0, offsets, device, self._initial_times(ds, bdims))  # [N, K, d]
        if target is None:
            target = ds
        tp = self._target(target)
        vals = self._decode_tensor(alpha.reshape(-1, self.latent_dim), tp, device, batch_size)
        vals = vals.reshape(*bshape, len(offsets), *vals.shape[1:])
        coords = dict(bcoords)
        coords["lead"] = ("lead", lead_coord)
        if self.time in ds.coords and set(ds[self.time].dims) <= set(bdims):
            t0 = ds[self.time].transpose(*[d for d in bdims if d in ds[self.time].dims])
            valid = self.clock.add(t0.values, offsets)
            coords["valid_time"] = ((*t0.dims, "lead"), valid)
        extra = {"xsciml_encode_steps": str(_encode_steps(encode_steps, encode_optimizer)),
                 "xsciml_encode_optimizer": encode_optimizer, "xsciml_ode_nfe": str(self.last_nfe)}
        out = self._to_xarray(vals, tp, (*bdims, "lead"), coords, extra)
        if residual == "persist":
            rec = self._decode_tensor(alpha0, tp, device, batch_size)
            rec = self._to_xarray(rec.reshape(*bshape, *rec.shape[1:]), tp, bdims, dict(bcoords))
            rec = rec.to_dataset() if isinstance(rec, xr.DataArray) else rec
            res = {v: (decode_variable(ds[v]) - rec[v]).fillna(0.0) for v in self.variables}
            if isinstance(out, xr.DataArray):
                out = (out + res[self.variables[0]].astype(out.dtype)).assign_attrs(out.attrs)
            else:
                out = out.assign({v: (out[v] + res[v].astype(out[v].dtype)).assign_attrs(out[v].attrs)
                                  for v in self.variables})
            out.attrs["xsciml_residual"] = "persist"
        return out

    def _lazy_attrs(self, forecast_kw: dict[str, Any]) -> dict[str, str]:
        opt = forecast_kw.get("encode_optimizer", "gauss-newton")
        return {"xsciml_encode_steps": str(_encode_steps(forecast_kw.get("encode_steps"), opt)),
                "xsciml_encode_optimizer": opt}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, ds_truth: xr.Dataset | xr.DataArray, n_frames_train: int | None = None, *,
                 observed: xr.DataArray | None = None, encode_steps: int | None = None,
                 encode_optimizer: str = "gauss-newton",
                 encode_lr: float = 0.1, encode_init: str = "auto", encode_reg: float = 1e-2,
                 encode_noise: str = "auto", device: Any = "auto", seed: int | None = 0,
                 progress: bool | None = None) -> xr.Dataset:
        """The DINo table: MSE In-t / Out-t × In-s / Out-s, and relative MSE.

        Each trajectory of ``ds_truth`` is forecast from its first frame, observed on the
        In-s points only, to all its times, on its whole grid. Errors are split by time
        (In-t: the first ``n_frames_train`` frames, the training horizon; Out-t: later
        frames) and by space (In-s: observed points; Out-s: the others; all).

        Parameters
        ----------
        ds_truth
            True trajectories ``(trajectory..., time, space...)`` (unseen initial states).
        n_frames_train
            Frames inside the training horizon (default: the number the model trained on).
        observed
            Boolean mask over the space dims of the observed points; default the points
            observed in training (:meth:`observed_mask`).
        encode_steps
            Auto-decoding steps of the initial codes (``steps`` of :meth:`encode`).
        encode_optimizer
            ``optimizer`` of :meth:`encode`.
        encode_lr
            ``lr`` of :meth:`encode`.
        encode_init
            ``init`` of :meth:`encode`.
        encode_reg
            ``reg`` of :meth:`encode`.
        encode_noise
            ``noise`` of :meth:`encode`.
        device
            Where to train (or run).
        seed
            The seed.
        progress
            Show a progress bar.

        Returns
        -------
        Dataset with ``mse`` and ``rel_mse`` over ``(horizon, grid)`` (plus ``variable``
        with several variables): ``horizon`` ∈ {In-t, Out-t}, ``grid`` ∈ {In-s, Out-s,
        all}. ``rel_mse = Σ err² / Σ (truth − its spatial mean)²`` over the same frames
        and points; it is the honest score for decaying fields.

        Examples
        --------
        >>> model.evaluate(test, n_frames_train=10)["rel_mse"]  # doctest: +SKIP
        """
        fc_kw = {"encode_steps": encode_steps, "encode_optimizer": encode_optimizer, "encode_lr": encode_lr,
                 "encode_init": encode_init, "encode_reg": encode_reg, "encode_noise": encode_noise}
        return self._score(ds_truth, n_frames_train, observed, fc_kw, device=device, seed=seed,
                           progress=progress,
                           attrs={"encode_steps": int(_encode_steps(encode_steps, encode_optimizer)),
                                  "encode_optimizer": encode_optimizer})

    def __repr__(self) -> str:
        S, T = (int(s) for s in self.module.codes.shape[:2])
        return (f"DINo(variables={self.variables}, space={list(self.space)}, time={self.time!r}, "
                f"latent_dim={self.latent_dim}, trained_on={S}x{T} frames, "
                f"ode={self.ode.get('method')!r})")


def _forecast_kernel(model: DINo, *blocks: np.ndarray, device: Any, names: list[str],
                     sdims: list[Hashable], time: str, with_time: bool,
                     space_coords: dict[str, tuple], lead: Any, forecast_kw: dict[str, Any]) -> Any:
    """Dask task body of a lazy forecast: blocks ``[..., *space]`` -> ``[..., lead, *space]``.

    With ``with_time`` the last block holds the states' initial times ``[...]``.
    """
    times = blocks[-1] if with_time else None
    blocks = blocks[:-1] if with_time else blocks
    nsp = len(sdims)
    loop_shape = blocks[0].shape[: blocks[0].ndim - nsp]
    n = int(np.prod(loop_shape)) if loop_shape else 1
    units = {name: {"units": u} for name in names  # already in these (converted by forecast)
             if (u := model.var_attrs.get(name, {}).get("units")) is not None}
    flat = {name: (("_state", *sdims), np.asarray(b, dtype=np.float64).reshape(n, *b.shape[-nsp:]),
                   units.get(name, {}))
            for name, b in zip(names, blocks, strict=True)}
    ds = xr.Dataset(flat, coords={k: (dims, v) for k, (dims, v) in space_coords.items()})
    if times is not None:
        ds = ds.assign_coords({time: ("_state", np.asarray(times).reshape(n))})
    if n == 0:
        empty = tuple(np.zeros((*loop_shape, len(np.atleast_1d(lead)), *b.shape[-nsp:]), np.float32)
                      for b in blocks)
        return empty if len(empty) > 1 else empty[0]
    # encoding optimises codes by gradient: leave the inference mode of the task runner
    with torch.inference_mode(False), torch.enable_grad():
        fc = model.forecast(ds, lead=lead, target=None, progress=False, device=device, **forecast_kw)
    fc = fc.to_dataset() if isinstance(fc, xr.DataArray) else fc
    outs = []
    for name in names:
        v = fc[name].transpose("_state", "lead", *sdims).values.astype(np.float32)
        outs.append(v.reshape(*loop_shape, *v.shape[1:]))
    return tuple(outs) if len(outs) > 1 else outs[0]


def _is_dask(obj: Any) -> bool:
    data = getattr(obj, "data", None)
    return data is not None and type(data).__module__.startswith("dask")


# =========================================================================== public functions
def fit_dynamics(
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    space: str | Sequence[str] | None = None,
    time: str = "time",
    sample_dim: Hashable | None = "trajectory",
    train_until: Any = None,
    latent_dim: int = 32,
    width: int = 64,
    depth: int = 3,
    input_scale: float | None = None,
    dynamics_width: int = 128,
    dynamics_depth: int = 3,
    dynamics_linear: bool = True,
    periods: Sequence[Any] = (),
    method: str = "dino",
    solver: str | None = None,
    ode_step: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    adjoint: bool = False,
    teacher_forcing: Any = (0.99, 0.5),
    steps: int | None = None,
    batch_size: int | None = None,
    window: int | None = None,
    n_points: int | None = 1024,
    loss: str = "mse",
    lr: float | None = None,
    code_lr: float = 1e-2,
    dynamics_lr: float = 3e-3,
    scheduler: Any = "cosine",
    grad_clip: float | None = None,
    rollout_weight: float = 0.0,
    time_units: str = "days",
    sphere: bool | str = "auto",
    residual_rank: int = 128,
    device: Any = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    **kwargs: Any,
) -> Estimator:
    r"""Learn the dynamics of a field from trajectories (DINo).

    Fits a FourierNet decoder :math:`D_\phi(\alpha)(x)`, one code :math:`\alpha` per
    (trajectory, time) frame, and a latent ODE :math:`d\alpha/dt = f_\psi(\alpha)` on
    normalised codes, jointly, through :func:`xsciml.training.fit` (see the module docs
    for the objective).

    Parameters
    ----------
    obj
        Trajectories ``(sample_dim, time, space...)``; NaN where a frame is not
        observed (e.g. trained on a sub-grid). Loaded in memory.
    variables
        Variable(s) to model; several are decoded together as channels.
    space
        Space coordinate names (default: the dimension coordinates other than time and
        ``sample_dim``, or CF latitude/longitude). 1-D or 2-D (curvilinear) coordinates,
        or scattered points along one dimension.
    time
        Time coordinate (a dimension): numbers, datetime64 or cftime, possibly irregular.
    sample_dim
        Dimension indexing trajectories; ``None`` for a single trajectory.
    train_until
        Last time used for training (a time label, e.g. ``"2019-03-24"`` or ``2.25``);
        default all.
    latent_dim
        Size of the codes.
    width
        Decoder width.
    depth
        Decoder depth.
    input_scale
        Frequency scale of the decoder's filters (default from the grid resolution).
    dynamics_width
        Width of the dynamics MLP.
    dynamics_depth
        Depth of the dynamics MLP.
    dynamics_linear
        Whether the vector field has a linear term (see :class:`LatentDynamics`).
    periods
        Periods of known external forcings (timedeltas such as ``"1D"`` for the diurnal
        cycle, or numbers in time units): the dynamics receive the phase of each
        (``sin``, ``cos``), so :math:`d\alpha/dt = f_\psi(\alpha, \theta(t))`. Forecasts
        then need the initial states' time coordinate.
    method
        The model family: ``"dino"`` (this function's model) or ``"smooth"`` (encoder-based
        smooth latent dynamics, :func:`xsciml.models.smooth.fit_smooth_dynamics`, which
        receives the shared arguments — data, ``space``, ``time``, ``sample_dim``,
        ``train_until``, ``solver``, ``rtol``, ``atol``, ``steps``, ``lr``, ``device``,
        ``seed``, ``progress`` — and its own options through ``**kwargs``).
    solver
        torchdiffeq solver: fixed-step (``"rk4"``, ``"euler"``, ``"midpoint"``...) or
        adaptive (``"dopri5"``, ...).
    ode_step
        Step of fixed-step solvers, in time units (a number, or a timedelta for datetime
        axes); default half the median frame spacing. Independent of the output times.
    rtol
        Relative tolerance of adaptive solvers.
    atol
        Absolute tolerance of adaptive solvers.
    adjoint
        Back-propagate with the adjoint method (``odeint_adjoint``): memory O(1) in the
        number of steps, slower.
    teacher_forcing
        Probability of restarting an ODE step from the true code: ``(start, fraction)``
        decays geometrically from ``start`` to ``start / 100`` over that fraction of the
        steps, then 0 (default ``(0.99, 0.5)``); a float for a constant; or a callable
        ``step -> probability``.
    steps
        Optimiser steps (one per batch).
    batch_size
        Trajectories per step (default all). Codes outside the batch (and the window)
        stay where they are: Adam's momentum does not move them.
    window
        Frames per training rollout (default all training frames); a random window of
        consecutive frames is drawn per step. Use it for long series.
    n_points
        Random points of every frame per step (``None``: all).
    loss
        Reconstruction loss: ``"mse"`` (standardised values, as in DINo) or
        ``"relative"``, where every frame is weighted by the inverse of its spatial
        variance (floored at 1 % of the average), so that small-amplitude frames — late
        frames of decaying dynamics — are reconstructed as accurately, relatively, as
        large ones.
    lr
        Learning rate of the decoder (Adam).
    code_lr
        Learning rate of the codes.
    dynamics_lr
        Learning rate of the dynamics.
    scheduler
        Learning-rate schedule of :func:`xsciml.training.fit`.
    grad_clip
        Clip the global gradient norm of every step to this value (None: no clipping).
        Long rollouts of an unstable latent flow can produce huge gradients; clipping
        (e.g. 1.0) keeps one bad step from wrecking the training.
    rollout_weight
        Weight of a second dynamics loss: the predicted codes of the teacher-forced
        rollout are decoded and compared with the frames (the reconstruction loss on the
        rollout), so that the dynamics is fitted where it matters for the field, not only
        in code space. 0 (default): DINo's latent loss only.
    time_units
        Float unit of datetime/cftime time (leads given as numbers are in this unit).
    sphere
        Embed latitude/longitude on the sphere (see :class:`~xsciml.coords.CoordinateEncoder`).
    residual_rank
        Rank of the covariance of the decoder's residuals on the training points,
        estimated after training (at most 512 frames, :func:`residual_covariance_factor`)
        and used to encode sparsely observed states by generalised least squares
        (:meth:`DINo.encode`, ``noise``); 0 to skip it. Skipped as well when the training
        points times variables exceed 2**15 (memory).
    device
        Where to train (or run).
    seed
        The seed.
    progress
        Show a progress bar.
    **kwargs
        Options of the ``"smooth"`` method (none for DINo).

    Returns
    -------
    DINo, or :class:`~xsciml.models.smooth.SmoothDynamics` for ``method="smooth"``.

    Examples
    --------
    >>> import xsciml
    >>> ds = xsciml.datasets.heat(4, 16, n_frames=6, seed=0)
    >>> model = fit_dynamics(ds, "u", space=("y", "x"), latent_dim=8, width=16, steps=5,
    ...                      progress=False)
    >>> fc = model.forecast(ds.isel(trajectory=[0], time=0), lead=[0.0, 0.5], encode_steps=5)
    >>> fc.dims
    ('trajectory', 'lead', 'y', 'x')
    """
    if method == "smooth":
        from .smooth import fit_smooth_dynamics

        given = {"solver": solver, "rtol": rtol, "atol": atol, "steps": steps, "lr": lr}
        return fit_smooth_dynamics(obj, variables, space=space, time=time, sample_dim=sample_dim,
                                   train_until=train_until, device=device, seed=seed,
                                   progress=progress, **{k: v for k, v in given.items() if v is not None},
                                   **kwargs)
    if method in FIXED_STEP_METHODS + ADAPTIVE_METHODS and solver is None:
        import warnings

        warnings.warn(f"fit_dynamics(method={method!r}) names an ODE solver; the argument is now "
                      f"solver={method!r} (method chooses the model: 'dino' or 'smooth')",
                      FutureWarning, stacklevel=2)
        method, solver = "dino", method
    if method != "dino":
        raise ValueError(f"method={method!r} is not a dynamics model; use 'dino' or 'smooth' "
                         "(the ODE solver is chosen with solver=...)")
    if kwargs:
        raise TypeError(f"fit_dynamics(method='dino') got unexpected argument(s) {sorted(kwargs)}")
    solver = "rk4" if solver is None else solver
    rtol = 1e-3 if rtol is None else rtol
    atol = 1e-5 if atol is None else atol
    steps = 2000 if steps is None else steps
    lr = 1e-2 if lr is None else lr

    from ..nn import build_network
    from ..training import fit

    ds, variables, tdim, sample_dim_eff = _trajectory_data(obj, variables, time, sample_dim, train_until)
    T = int(ds.sizes[tdim])
    v0 = ds[variables[0]]
    if space is None:
        from ..tensors import _default_space

        space = _default_space(ds, [d for d in v0.dims if d not in (tdim, sample_dim_eff)], None)
    space = [space] if isinstance(space, str) else list(space)
    for n in space:
        if n not in ds.variables:
            raise KeyError(f"space coordinate {n!r} not found; coordinates are {list(ds.coords)}")
        bad = [d for d in ds[n].dims if d in (tdim, sample_dim_eff)]
        if bad:
            raise ValueError(f"space coordinate {n!r} varies along {bad}; DINo needs the same points "
                             "in every frame (put NaN where a frame is unobserved)")
    sdims = _space_dims(ds, space, v0.dims)
    for v in variables:
        dims = set(ds[v].dims)
        expected = {sample_dim_eff, tdim, *sdims}
        if dims != expected:
            raise ValueError(f"variable {v!r} has dims {ds[v].dims}; expected exactly "
                             f"{(sample_dim_eff, tdim, *sdims)} (sample, time, space)")
    check_positive_int(latent_dim, "latent_dim")
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    check_positive_int(n_points, "n_points", allow_none=True)
    if loss not in ("mse", "relative"):
        raise ValueError(f"loss must be 'mse' or 'relative', got {loss!r}")
    if not (np.isfinite(rollout_weight) and rollout_weight >= 0):
        raise ValueError(f"rollout_weight must be a finite number >= 0, got {rollout_weight!r}")

    # ---- time
    clock = _Clock.fit(ds[time].values, time_units)
    ode = _ode_settings(clock, solver, rtol, atol, ode_step)
    t_abs = clock.to_float(ds[time].values)
    tau = clock.elapsed(ds[time].values) / clock.scale
    if isinstance(periods, (str, bytes)) or not isinstance(periods, (Sequence, np.ndarray)):
        periods = [periods]
    if len(periods):
        import pandas as pd

        vals = [pd.Timedelta(p).to_timedelta64() if isinstance(p, str) else p for p in periods]
        per_units, _ = clock.parse_lead(vals, "periods")
        if np.any(per_units <= 0):
            raise ValueError(f"periods must be positive, got {list(periods)}")
        periods_ode = [float(p) / clock.scale for p in per_units]
    else:
        periods_ode = []

    # ---- values [S, T, P, C] and points
    S = int(ds.sizes[sample_dim_eff])
    vals = _space_values(ds, space, sdims)
    ok = np.all([np.isfinite(v) for v in vals.values()], axis=0)
    pidx = np.flatnonzero(ok)
    P_all = int(np.prod([ds.sizes[d] for d in sdims], dtype=np.int64))
    y = np.stack([np.asarray(decode_variable(ds[v]).transpose(sample_dim_eff, tdim, *sdims).values,
                             dtype=np.float64).reshape(S, T, P_all)[..., pidx] for v in variables], -1)
    if np.isinf(y).any():
        raise ValueError("the training data contains infinite values; replace them with NaN")
    mask = np.isfinite(y)
    if not mask.any():
        raise ValueError("the training data is all-NaN")
    observed = mask.any(axis=(0, 1, 3))
    scaler = Scaler.from_moments([np.nanmean(y[..., c]) for c in range(y.shape[-1])],
                                 [np.nanstd(y[..., c]) for c in range(y.shape[-1])])
    ys = np.where(mask, scaler.transform(np.where(mask, y, 0.0)), 0.0).astype(np.float32)
    encoder = CoordinateEncoder(space=tuple(space), time=None, sphere=sphere)
    encoder.fit({n: v[pidx] for n, v in vals.items()}, None, coord_meta={n: ds[n] for n in space})
    feats = torch.as_tensor(encoder.transform({n: v[pidx] for n, v in vals.items()}), dtype=torch.float32)
    P = len(pidx)

    # ---- modules
    C = len(variables)
    if input_scale is None:
        input_scale = _input_scale_default({n: v[pidx] for n, v in vals.items()})
    from .._utils import seed_everything

    seed_everything(seed)  # the networks' initial weights come from the seed too
    decoder = build_network("mfn", in_features=feats.shape[1], out_features=C, width=width,
                            depth=depth, input_scale=input_scale, code_dim=int(latent_dim))
    dynamics = LatentDynamics(int(latent_dim), width=dynamics_width, depth=dynamics_depth,
                              linear=bool(dynamics_linear), periods=periods_ode)
    frame_phase = dynamics.phases(t_abs / clock.scale)  # [T, 2 n_periods]
    module = DINoModule(decoder, dynamics, S, T)
    schedule = _teacher_forcing_schedule(teacher_forcing, int(steps))
    module.teacher_forcing = float(schedule(0))

    B = S if batch_size is None else int(min(max(1, batch_size), S))
    w = T if window is None else int(window)
    if not 2 <= w <= T:
        raise ValueError(f"window must be in [2, {T}] frames, got {window}")
    Pb = P if n_points is None else int(min(max(1, n_points), P))
    table = _OffsetTable(tau)
    ode_kw = {"method": solver, "step": ode["step"], "rtol": ode["rtol"], "atol": ode["atol"],
              "adjoint": bool(adjoint)}
    Y = torch.from_numpy(ys)
    M = torch.from_numpy(mask.astype(np.float32))
    if loss == "relative":  # weight every frame by the inverse of its spatial variance
        cnt = np.maximum(mask.sum(2), 1)
        mean = ys.sum(2) / cnt
        var = ((ys - mean[:, :, None]) ** 2 * mask).sum(2) / cnt  # [S, T, C]
        ref = float(var[mask.any(2)].mean())
        wts = 1.0 / (var + 1e-2 * ref)
        wts = wts / wts[mask.any(2)].mean()
    else:
        wts = np.ones((S, T, C))
    Wt = torch.as_tensor(wts, dtype=torch.float32)

    def draw(gen: torch.Generator) -> dict[str, Tensor]:
        traj = torch.randperm(S, generator=gen)[:B] if B < S else torch.arange(S)
        j0 = int(torch.randint(0, T - w + 1, (1,), generator=gen)) if w < T else 0
        pts = torch.randperm(P, generator=gen)[:Pb] if Pb < P else torch.arange(P)
        t_out, where = table(j0, w)
        yb = Y[traj][:, j0:j0 + w][:, :, pts]
        mb = M[traj][:, j0:j0 + w][:, :, pts] * Wt[traj][:, j0:j0 + w, None, :]
        return {"traj": traj, "j0": torch.tensor(j0), "feats": feats[pts], "y": yb, "m": mb,
                "u": torch.rand(len(traj), w, generator=gen), "t_out": t_out, "where": where,
                "phase": frame_phase[j0:j0 + w]}

    partial = B < S or w < T
    frozen: dict[str, Tensor] = {}

    def loss_fn(m: DINoModule, batch: dict[str, Tensor]):
        j0 = int(batch["j0"])
        if partial and m.training:  # remember the codes this step must not move
            keep = torch.ones(S, T, dtype=torch.bool, device=m.codes.device)
            keep[batch["traj"].unsqueeze(1), torch.arange(j0, j0 + w, device=keep.device)] = False
            frozen["keep"], frozen["values"] = keep, m.codes.detach()[keep].clone()
        codes = m.codes[batch["traj"]][:, j0:j0 + w]  # [B, w, d]
        pred = decode_codes(m.decoder, batch["feats"], codes)
        mb = batch["m"]

        def weighted_mse(p: Tensor, y: Tensor, w: Tensor) -> Tensor:  # over observed entries
            return ((p - y) ** 2 * w).sum() / (w > 0).sum().clamp_min(1)

        dec = weighted_mse(pred, batch["y"], mb)
        m.update_statistics()
        # as in DINo, the dynamics fits the codes and the codes fit the data: the
        # dynamics loss does not move the codes (no collapse towards static codes)
        dyn, zpred = _dynamics_loss(m, m.normalise(codes.detach()), batch["u"], batch["t_out"],
                                    batch["where"], ode_kw, batch["phase"], return_pred=True)
        loss = dec + dyn  # separate parameters: the sum just steps both at once
        logs = {"decoder": float(dec.detach()), "dynamics": float(dyn.detach()),
                "teacher_forcing": float(m.teacher_forcing)}
        if rollout_weight > 0:  # the rollout scored on the field, through the decoder
            fpred = decode_codes(m.decoder, batch["feats"], m.denormalise(zpred))
            roll = weighted_mse(fpred, batch["y"][:, 1:], mb[:, 1:])
            loss = loss + rollout_weight * roll
            logs["rollout"] = float(roll.detach())
        return loss, logs

    def on_step(state) -> None:
        state.model.teacher_forcing = float(schedule(state.step))
        if frozen:  # Adam moves zero-gradient codes by momentum: put them back
            with torch.no_grad():
                state.model.codes[frozen["keep"]] = frozen["values"]
            frozen.clear()

    groups = [{"params": list(module.decoder.parameters()), "lr": lr},
              {"params": [module.codes], "lr": code_lr},
              {"params": list(module.dynamics.parameters()), "lr": dynamics_lr}]
    history = fit(module, loss_fn, draw, steps=int(steps), optimizer="adam", lr=lr, params=groups,
                  scheduler=scheduler, grad_clip=grad_clip, device=device, seed=seed,
                  progress=progress, desc="fit_dynamics[DINo]", callbacks=[on_step])
    module = module.cpu().eval()
    module.update_statistics()

    tvals = ds[time].values
    info = {"n_trajectories": S, "n_frames_train": T, "steps": int(history.steps),
            "training_period": f"{tvals[0]} .. {tvals[-1]}",
            "final_decoder_loss": float(np.mean(history.logs.get("decoder", [np.nan])[-20:])),
            "final_dynamics_loss": float(np.mean(history.logs.get("dynamics", [np.nan])[-20:])),
            "wall_time": float(history.wall_time)}
    train_points = np.stack([vals[n][pidx] for n in space], -1)
    factor, rvar = _training_residual_factor(module, feats, Y, M, residual_rank)
    model = DINo(module, encoder, scaler, variables, sample_dim=sample_dim, time=time, clock=clock,
                 ode=ode, train_points=train_points, train_observed=observed,
                 coord_units=_coord_units(ds, space),
                 var_attrs={v: dict(ds[v].attrs) for v in variables}, info=info,
                 residual_factor=factor, residual_var=rvar)
    model.history = history
    return model


_MAX_RESIDUAL_FRAMES = 512
_MAX_RESIDUAL_ENTRIES = 2**15


def _training_residual_factor(module: DINoModule, feats: Tensor, Y: Tensor, M: Tensor,
                              rank: int) -> tuple[Tensor | None, float]:
    """The residual covariance factor of a trained DINo on its training frames (or None)."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
        raise ValueError(f"residual_rank must be an integer >= 0, got {rank!r}")
    S, T, P, C = Y.shape
    if rank == 0 or P * C > _MAX_RESIDUAL_ENTRIES:
        return None, 1.0
    flat = torch.arange(S * T)
    if len(flat) > _MAX_RESIDUAL_FRAMES:
        flat = flat[torch.linspace(0, len(flat) - 1, _MAX_RESIDUAL_FRAMES).round().long()]
    codes = module.codes.detach().reshape(S * T, -1)[flat]
    y, m = Y.reshape(S * T, P, C)[flat], M.reshape(S * T, P, C)[flat]
    per = max(1, 2**20 // max(1, P))
    with torch.no_grad():
        pred = torch.cat([decode_codes(module.decoder, feats, codes[i:i + per])
                          for i in range(0, len(codes), per)])
    try:
        return residual_covariance_factor((y - pred) * m, m, rank)
    except ValueError:  # a perfect fit: nothing to model
        return None, 1.0


def forecast(
    ds_init: xr.Dataset | xr.DataArray,
    model: Estimator,
    *,
    lead: Any,
    **kwargs: Any,
) -> xr.DataArray | xr.Dataset:
    """Forecast from initial state(s) with a fitted dynamics model (``ds_init.sciml.forecast``).

    Calls ``model.forecast(ds_init, lead=lead, **kwargs)``: see :meth:`DINo.forecast`
    (``target``, ``encode_steps``, ``residual``...) or
    :meth:`~xsciml.models.smooth.SmoothDynamics.forecast` for the options each model takes;
    an option the model does not know is an error, never silently dropped.

    Examples
    --------
    >>> import numpy as np, xsciml
    >>> ds = xsciml.datasets.heat(4, 16, n_frames=6, seed=0)
    >>> model = xsciml.models.dino.fit_dynamics(ds, "u", latent_dim=8, width=16, steps=5,
    ...                                        progress=False)
    >>> fc = forecast(ds.isel(time=0), model, lead=np.array([0.0, 2.0]), encode_steps=5)
    >>> fc.sizes["lead"], fc.dims[0]
    (2, 'trajectory')
    """
    if not isinstance(model, Estimator) or not callable(getattr(model, "forecast", None)):
        raise TypeError(f"model must be a fitted dynamics model, a DINo or SmoothDynamics (from "
                        f"fit_dynamics / xsciml.load), got {type(model).__name__}")
    return model.forecast(ds_init, lead=lead, **kwargs)
