r"""Learning to invert physics with scale-invariant physics (SIP) updates.

A network :math:`N` maps an observation :math:`y = P(x^*)` to a source estimate
:math:`\hat x = N(y)`. Three training methods share the one training loop
(:func:`xsciml.training.fit`):

``"sip"`` (Holl, Koltun & Thuerey, NeurIPS 2022)
    :math:`\Delta x = P^{-1}_{\text{damped}}\big(y - P(\hat x)\big)`, a proxy target
    :math:`\tilde x = \hat x + \Delta x` and the loss
    :math:`\tfrac12\|\hat x - \mathrm{sg}(\tilde x)\|^2` (``sg``: stop-gradient).
    The inverse-physics step rescales each mode by the inverse of what the physics
    did to it, so the network gets a well-scaled target in :math:`x` space.
``"gd"``
    Backpropagation through the physics:
    :math:`\tfrac12\|P(N(y)) - y\|^2`, with any optimizer (Adam, SGD, ...).
``"supervised"``
    :math:`\tfrac12\|N(y) - x^*\|^2`, a reference that needs the true sources.

By default (:func:`fit_inversion`) the network refines the damped physics inverse,
:math:`\hat x = P^{-1}y + N(y, P^{-1}y)` with the correction initialised at zero, and
estimates (and the SIP target) are clipped to the sources' known range. After training,
the per-cell error is calibrated on held-out examples, so
:meth:`LearnedInversion.predict` returns an estimate and its uncertainty.

Physics runs in float64, the network in float32. Losses sum over the grid and
average over examples.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .._docs import shared_docs
from .._utils import resolve_device
from ..base import Estimator, output_attrs, register_estimator
from ..nn.unet import UNet
from ..training import History, TrainState
from .heat import (
    DampedInverse,
    FourierOperator,
    operator_from_config,
    resolve_dims,
    spacing_tuple,
)

__all__ = [
    "METHODS",
    "sip_loss",
    "physics_loss",
    "source_errors",
    "InversionNet",
    "InversionResult",
    "LearnedInversion",
    "fit_inversion",
    "invert",
]

METHODS = ("sip", "gd", "supervised")

#: The U-Net of the SIP heat example: 4 levels x 16 filters, batch norm, ~38 k parameters.
DEFAULT_NETWORK: dict[str, Any] = {"base_channels": 16, "levels": 4, "norm": "batch",
                                   "activation": "relu", "padding_mode": "zeros"}

Operator = Callable[[torch.Tensor], torch.Tensor]


def _check_bounds(bounds: Any) -> tuple[float | None, float | None]:
    """Validate ``(low, high)`` source bounds (either may be ``None``)."""
    if bounds is None:
        return None, None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be a (low, high) pair (either may be None), got {bounds!r}.")
    low, high = (None if b is None else float(b) for b in bounds)
    if low is not None and high is not None and not low < high:
        raise ValueError(f"bounds must have low < high, got {bounds!r}.")
    return low, high


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    if reduction == "none":
        return per_example
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")


def _check_pair(prediction: torch.Tensor, other: torch.Tensor, name: str, ndim: int) -> None:
    for label, t in (("prediction", prediction), (name, other)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(t).__name__}.")
    if prediction.shape != other.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and {name} {tuple(other.shape)} must have the "
            "same shape."
        )
    if prediction.ndim < ndim:
        raise ValueError(f"need at least ndim={ndim} spatial dims, got shape {tuple(prediction.shape)}.")


def sip_loss(
    prediction: torch.Tensor,
    observation: torch.Tensor,
    forward: Operator,
    inverse: Operator,
    *,
    ndim: int = 2,
    reduction: str = "mean",
    physics_dtype: torch.dtype | None = torch.float64,
    iterations: int = 1,
    bounds: tuple[float | None, float | None] | None = None,
) -> torch.Tensor:
    r"""Scale-invariant physics (SIP) proxy loss.

    .. math::
        \Delta x = P^{-1}\big(y - P(\hat x)\big), \qquad
        L = \tfrac12 \big\| \hat x - \mathrm{sg}(\hat x + \Delta x) \big\|^2 ,

    summed over the grid and reduced over examples. Its gradient with respect to
    :math:`\hat x` is :math:`-\Delta x`: the network is pulled towards the
    inverse-physics correction instead of along the (badly scaled) physics gradient.

    More generally the proxy target :math:`\tilde x` is the output of an inverse
    solver started at the prediction (Holl et al., 2022, Sec. 3): with
    ``iterations=n`` the step :math:`x \leftarrow x + P^{-1}(y - P(x))` is repeated
    ``n`` times, and with ``bounds=(low, high)`` every iterate is clipped to the known
    range of the sources (a projection onto a convex set, as in the
    Gerchberg-Papoulis / POCS iterations: Gerchberg 1974, Papoulis 1975, Youla & Webb
    1982). The projection is what lets physics-only training recover detail the
    forward operator erased: a non-negative source that is consistent with the
    observation has far fewer ways to hide ringing than an unconstrained one.

    Works for any operator pair: ``forward`` maps sources to observations,
    ``inverse`` maps an observation-space residual to a source-space correction
    (exact, damped or approximate, e.g. :meth:`FourierOperator.inverse`). Neither is
    differentiated.

    Parameters
    ----------
    prediction
        Network output :math:`\hat x`, shape ``(..., *grid)`` (any float dtype).
    observation
        Observed :math:`y`, same shape.
    forward
        Callables on tensors of that shape.
    inverse
        Callables on tensors of that shape.
    ndim
        Number of trailing spatial axes summed over.
    reduction
        ``"mean"`` (over examples, default), ``"sum"`` or ``"none"``.
    physics_dtype
        Dtype of the physics solve (float64 by default); ``None`` keeps the
        prediction's dtype.
    iterations
        Inverse-physics steps of the solver that makes the target (1: plain SIP).
    bounds
        ``(low, high)`` range of plausible sources (either may be ``None``); every
        solver iterate is clipped to it. ``None``: no projection.

    Returns
    -------
    torch.Tensor
        The loss (a scalar unless ``reduction="none"``), in ``prediction``'s dtype.

    Examples
    --------
    >>> from xsciml.inverse import HeatOperator
    >>> op = HeatOperator(1.0)
    >>> x_true = torch.rand(2, 16, 16, dtype=torch.float64)
    >>> pred = torch.zeros(2, 16, 16, requires_grad=True)
    >>> loss = sip_loss(pred, op(x_true), op.forward, op.inverse)
    >>> loss.backward()
    >>> # mean over 2 examples: the gradient is -dx / 2, dx the inverse-physics correction
    >>> bool(torch.allclose(-2 * pred.grad.double(), op.inverse(op(x_true)), atol=1e-5))
    True
    """
    _check_pair(prediction, observation, "observation", ndim)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}.")
    low, high = _check_bounds(bounds)
    dtype = prediction.dtype if physics_dtype is None else physics_dtype
    with torch.no_grad():
        x = prediction.detach().to(dtype)
        y = observation.to(device=x.device, dtype=dtype)
        for _ in range(iterations):
            x = x + inverse(y - forward(x))
            if low is not None or high is not None:
                x = x.clamp(min=low, max=high)
        target = x.to(prediction.dtype)
    per_example = 0.5 * (prediction - target).pow(2).sum(dim=tuple(range(-ndim, 0)))
    return _reduce(per_example, reduction)


def physics_loss(
    prediction: torch.Tensor,
    observation: torch.Tensor,
    forward: Operator,
    *,
    ndim: int = 2,
    reduction: str = "mean",
    physics_dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    r"""Observation-space loss :math:`\tfrac12\|P(\hat x) - y\|^2`, differentiable through ``forward``.

    The loss of plain gradient descent / Adam through the physics (``method="gd"``).

    Parameters
    ----------
    prediction
        Tensors of shape ``(..., *grid)``.
    observation
        Tensors of shape ``(..., *grid)``.
    forward
        Differentiable operator.
    ndim
        As in :func:`sip_loss`.
    reduction
        As in :func:`sip_loss`.
    physics_dtype
        As in :func:`sip_loss`.

    Returns
    -------
    torch.Tensor
        The loss, in ``physics_dtype``.

    Examples
    --------
    >>> from xsciml.inverse import HeatOperator
    >>> op = HeatOperator(1.0)
    >>> x = torch.rand(3, 8, 8, dtype=torch.float64)
    >>> physics_loss(x, op(x), op.forward).item()
    0.0
    """
    _check_pair(prediction, observation, "observation", ndim)
    dtype = prediction.dtype if physics_dtype is None else physics_dtype
    residual = forward(prediction.to(dtype)) - observation.to(device=prediction.device, dtype=dtype)
    return _reduce(0.5 * residual.pow(2).sum(dim=tuple(range(-ndim, 0))), reduction)


def source_errors(estimate: torch.Tensor, truth: torch.Tensor, *, ndim: int = 2) -> dict[str, torch.Tensor]:
    r"""Per-example source-space errors (computed in float64).

    Returns
    -------
    dict
        ``"x_l2"``: :math:`\tfrac12\sum(\hat x - x^*)^2`; ``"l1"``:
        :math:`\sum|\hat x - x^*|`; ``"rel_l2"``: :math:`\|\hat x - x^*\|_2 / \|x^*\|_2`;
        each of shape ``estimate.shape[:-ndim]``.

    Examples
    --------
    >>> e = source_errors(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))
    >>> e["x_l2"].item(), e["l1"].item()
    (2.0, 4.0)
    """
    _check_pair(estimate, truth, "truth", ndim)
    dims = tuple(range(-ndim, 0))
    diff = estimate.double() - truth.double().to(estimate.device)
    norm = truth.double().pow(2).sum(dims).sqrt()
    return {
        "x_l2": 0.5 * diff.pow(2).sum(dims),
        "l1": diff.abs().sum(dims),
        "rel_l2": diff.pow(2).sum(dims).sqrt() / norm.to(diff.device),
    }


class InversionNet(nn.Module):
    """A 2-D U-Net mapping observations ``(B, H, W)`` to sources ``(B, H, W)``.

    Runs in float32. Two forms:

    * ``residual=True``: the network *refines a physics estimate* ``x0`` (e.g. the
      damped inverse :math:`P^{-1}y`): it sees ``y`` and ``x0`` as two channels and
      returns ``x0 + correction``. The output convolution starts at zero, so an
      untrained network returns ``x0`` exactly.
    * ``residual=False``: ``N(y)`` directly (the network of the SIP reference).

    If ``mean_gain`` is set (the operator's gain of the mean mode, 1 for heat), the
    prediction's mean is corrected to ``mean(y) / mean_gain``: the mean is exactly
    observable, so the network need not learn it.

    Parameters
    ----------
    network
        Keyword arguments of :class:`~xsciml.nn.unet.UNet` (``in_channels`` and
        ``out_channels`` are fixed); defaults to the SIP reference U-Net.
    mean_gain
        Gain of the :math:`k=0` mode, or ``None`` for no mean correction.
    residual
        Refine a physics estimate passed as ``forward(y, x0)``.

    Examples
    --------
    >>> net = InversionNet({"base_channels": 8, "levels": 2})
    >>> y = torch.rand(3, 16, 16)
    >>> x = net(y)
    >>> x.shape, bool(torch.allclose(x.mean((-1, -2)), y.mean((-1, -2)), atol=1e-5))
    (torch.Size([3, 16, 16]), True)
    >>> ref = InversionNet({"base_channels": 8, "levels": 2}, residual=True)
    >>> x0 = torch.rand(3, 16, 16)
    >>> torch.equal(ref(x0, x0), x0)          # untrained: returns the physics estimate
    True
    """

    def __init__(self, network: dict[str, Any] | None = None, mean_gain: float | None = 1.0,
                 *, residual: bool = False) -> None:
        super().__init__()
        kwargs = {**DEFAULT_NETWORK, **(network or {})}
        for fixed in ("in_channels", "out_channels", "cond_dim"):
            kwargs.pop(fixed, None)
        self.residual = bool(residual)
        self.unet = UNet(2 if self.residual else 1, 1, **kwargs)
        if self.residual:  # start exactly at the physics estimate
            nn.init.zeros_(self.unet.outc.weight)
            bias = self.unet.outc.bias
            assert bias is not None  # the UNet's output conv has a bias
            nn.init.zeros_(bias)
        self.mean_gain = None if mean_gain is None or mean_gain <= 0 else float(mean_gain)

    @property
    def config(self) -> dict[str, Any]:
        """UNet keyword arguments (without the fixed channel counts)."""
        return {k: v for k, v in self.unet.config.items()
                if k not in ("in_channels", "out_channels", "cond_dim")}

    def forward(self, y: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        if y.ndim != 3:
            raise ValueError(f"InversionNet expects observations of shape (batch, H, W), got {tuple(y.shape)}.")
        y = y.to(torch.float32)
        if self.residual:
            if x0 is None or x0.shape != y.shape:
                raise ValueError(
                    "this InversionNet refines a physics estimate (residual=True): pass x0 of the "
                    f"observations' shape {tuple(y.shape)}, e.g. operator.inverse(y); got "
                    f"{None if x0 is None else tuple(x0.shape)}."
                )
            x0 = x0.to(torch.float32)
            x = x0 + self.unet(torch.stack([y, x0], dim=1))[:, 0]
        else:
            x = self.unet(y[:, None])[:, 0]
        if self.mean_gain is not None:
            x = x + (y.mean(dim=(-2, -1), keepdim=True) / self.mean_gain
                     - x.mean(dim=(-2, -1), keepdim=True))
        return x


# --------------------------------------------------------------------------- uncertainty
#: Number of edge-strength classes of the calibrated uncertainty.
CALIBRATION_BINS = 8


def _edge_strength(x: torch.Tensor) -> torch.Tensor:
    """Periodic central-difference gradient magnitude of ``(B, H, W)`` fields."""
    gy = 0.5 * (x.roll(-1, -2) - x.roll(1, -2))
    gx = 0.5 * (x.roll(-1, -1) - x.roll(1, -1))
    return torch.sqrt(gy * gy + gx * gx)


def _calibrate(estimate: torch.Tensor, truth: torch.Tensor, bins: int = CALIBRATION_BINS
               ) -> dict[str, torch.Tensor]:
    """Per-class RMS error of ``estimate``, classes = quantiles of its edge strength."""
    feat = _edge_strength(estimate.double()).flatten()
    err2 = (estimate.double() - truth.double()).pow(2).flatten()
    q = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    edges = torch.unique(torch.quantile(feat[:: max(1, feat.numel() // 2**20)], q))
    idx = torch.bucketize(feat, edges)
    overall = err2.mean().sqrt()
    std = torch.stack([err2[idx == i].mean().sqrt() if bool((idx == i).any()) else overall
                       for i in range(edges.numel() + 1)])
    return {"edges": edges.float(), "std": std.float()}


def _calibrated_std(estimate: torch.Tensor, calibration: dict[str, torch.Tensor]) -> torch.Tensor:
    feat = _edge_strength(estimate.double()).float()
    idx = torch.bucketize(feat, calibration["edges"].to(feat.device))
    return calibration["std"].to(feat.device)[idx]


class InversionResult(NamedTuple):
    """Estimate and per-cell uncertainty from :meth:`LearnedInversion.predict`.

    Attributes
    ----------
    estimate
        The estimated source (tensor or DataArray, like the input).
    uncertainty
        Per-cell standard deviation of the estimate's error: calibrated on held-out
        examples for the network (``None`` if fitted with
        ``calibration_examples=0``), propagated through the damped inverse for the
        physics fallback.
    source
        ``"network"``, or ``"physics"`` when the observations were outside the
        training range and the damped physics inverse was returned instead.
    """

    estimate: Any
    uncertainty: Any
    source: str


# --------------------------------------------------------------------------- estimator
def _to_tensor(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(y))
    raise TypeError(
        f"expected a torch.Tensor, numpy array or xarray.DataArray of observations, got {type(y).__name__}."
    )


def _physics_estimate(operator: FourierOperator, y: torch.Tensor, noise: float) -> DampedInverse:
    """The damped inverse of observations ``y`` (float64) at the stated noise level."""
    y = y.to(torch.float64)
    return operator.inverse_with_uncertainty(y, uncertainty=noise if noise > 0 else None)


@register_estimator
class LearnedInversion(Estimator):
    """A fitted network inverting a Fourier-diagonal operator (from :func:`fit_inversion`).

    Parameters
    ----------
    operator
        The physics the network inverts.
    network
        The trained :class:`InversionNet`.
    method
        Training method (``"sip"``, ``"gd"`` or ``"supervised"``).
    training
        JSON-able description of the training run (kept in the saved file); its
        ``"grid"`` (trained grid shape), ``"observation_noise"`` and ``"bounds"``
        entries are checked / applied by :meth:`predict`.
    history
        The training loop's history (not saved).
    calibration
        ``{"edges", "std"}`` tensors of the calibrated uncertainty (see
        :func:`fit_inversion`), or ``None``.

    Examples
    --------
    >>> from xsciml.inverse import HeatOperator, RandomRectangles, fit_inversion
    >>> inv = fit_inversion(HeatOperator(2.0), RandomRectangles((16, 16), batch_size=4,
    ...                     max_half_size=4.0), steps=2, network_kwargs={"base_channels": 4,
    ...                     "levels": 2}, calibration_examples=8, progress=False, device="cpu")
    >>> res = inv.predict(torch.zeros(2, 16, 16))
    >>> res.estimate.shape, res.uncertainty.shape, res.source
    (torch.Size([2, 16, 16]), torch.Size([2, 16, 16]), 'network')
    """

    def __init__(
        self,
        operator: FourierOperator,
        network: InversionNet,
        *,
        method: str = "sip",
        training: dict[str, Any] | None = None,
        history: Any = None,
        calibration: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(operator, FourierOperator):
            raise TypeError(f"operator must be a FourierOperator, got {type(operator).__name__}.")
        if not isinstance(network, InversionNet):
            raise TypeError(f"network must be an InversionNet, got {type(network).__name__}.")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.operator = operator
        self.network = network
        self.method = method
        self.training = dict(training or {})
        self.history = history if history is not None else History()
        self.calibration = None if calibration is None else {
            k: torch.as_tensor(v).detach().cpu().float() for k, v in calibration.items()}

    # -- properties ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """``(low, high)`` range the estimates are clipped to (``None``: open)."""
        b = self.training.get("bounds")
        return _check_bounds(tuple(b) if b is not None else None)

    @property
    def grid(self) -> tuple[int, ...] | None:
        """The grid shape the network was trained on."""
        g = self.training.get("grid")
        return None if g is None else tuple(int(n) for n in g)

    @property
    def observation_noise(self) -> float:
        """Noise std of the training observations (the top of the accepted range)."""
        return float(self.training.get("observation_noise", 0.0))

    # -- checks -------------------------------------------------------------
    def _check_grid(self, shape: Sequence[int]) -> None:
        grid = self.grid
        if grid is not None and tuple(shape) != grid:
            got = " x ".join(str(n) for n in shape)
            want = " x ".join(str(n) for n in grid)
            raise ValueError(
                f"the observations have a {got} grid (last two axes), but this inversion was "
                f"trained on {want} grids: regrid or crop the observations to {want}, or fit a new "
                f"inversion on {got} examples."
            )

    def _noise_in_range(self, noise: float | None) -> bool:
        if noise is None:
            return True
        noise = float(noise)
        if not (math.isfinite(noise) and noise >= 0):
            raise ValueError(f"noise (the observations' per-cell noise std) must be finite and >= 0, got {noise!r}.")
        return noise <= NOISE_TOLERANCE * self.observation_noise + self.operator.noise_floor

    def _fallback_warning(self, noise: float, what: str = "the observations") -> None:
        warnings.warn(
            f"{what} have noise std {noise:g}, outside the range the network was trained on "
            f"(0 to {self.observation_noise:g}); returning the damped physics inverse at noise "
            f"{noise:g} (estimate and propagated uncertainty) instead. To use a network, fit "
            f"with observation_noise >= {noise:g}.",
            UserWarning, stacklevel=3,
        )

    # -- inference ----------------------------------------------------------
    def predict(self, y: Any, *, noise: float | None = None, batch_size: int = 64,
                device: Any = None, **invert_kwargs: Any) -> InversionResult:
        """Estimate sources, with a per-cell uncertainty, from observations.

        Parameters
        ----------
        y
            Observations: a tensor/array ``(H, W)`` or ``(B, H, W)`` on the trained
            grid, or a DataArray (forwarded to :func:`invert`).
        noise
            Per-cell noise std of ``y``, if known. Above the training noise level
            (``training["observation_noise"]``, +10 %) the network is not used: a
            warning names both numbers and the damped physics inverse at this noise
            level is returned (``source="physics"``). ``None``: assume the
            training level.
        batch_size
            Examples per network call.
        device
            Device to run on (default: where the network is).
        **invert_kwargs
            DataArray only: passed to :func:`invert` (e.g. ``dims``).

        Returns
        -------
        InversionResult
            ``estimate`` and ``uncertainty`` (same shape as ``y``; tensors keep
            ``y``'s floating dtype), and ``source``.

        Raises
        ------
        ValueError
            If the grid differs from the trained one, or ``y`` holds NaN or inf.

        Examples
        --------
        >>> res = inv.predict(y)                      # doctest: +SKIP
        >>> res.estimate, res.uncertainty             # doctest: +SKIP
        """
        from .heat import is_dataarray

        if is_dataarray(y):
            return invert(y, self, noise=noise, batch_size=batch_size, device=device, **invert_kwargs)
        t = _to_tensor(y)
        if t.ndim not in (2, 3):
            raise ValueError(f"y must have shape (H, W) or (batch, H, W), got {tuple(t.shape)}.")
        self._check_grid(t.shape[-2:])
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            fields = int(bad.reshape(-1, *t.shape[-2:]).any(dim=(-2, -1)).sum())
            raise ValueError(
                f"y contains {int(bad.sum())} NaN or inf values (in {fields} of "
                f"{1 if t.ndim == 2 else t.shape[0]} fields); the inversion needs complete "
                "observations: fill the gaps first (e.g. interpolate) or drop those fields."
            )
        in_range = self._noise_in_range(noise)
        if not in_range:
            assert noise is not None  # a missing noise level is always in range
            self._fallback_warning(float(noise))
        est, unc = self._predict_tensor(t[None] if t.ndim == 2 else t, noise=noise,
                                        use_network=in_range, batch_size=batch_size, device=device)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        est = est.to(dtype)
        unc = None if unc is None else unc.to(dtype)
        if t.ndim == 2:
            est, unc = est[0], None if unc is None else unc[0]
        return InversionResult(est, unc, "network" if in_range else "physics")

    def _predict_tensor(self, y: torch.Tensor, *, noise: float | None = None, use_network: bool = True,
                        batch_size: int = 64, device: Any = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Estimate and uncertainty of ``(B, H, W)`` observations (float32, on the CPU)."""
        if not use_network:
            assert noise is not None  # the physics fallback is taken only for a given, out-of-range noise
            res = _physics_estimate(self.operator, y, float(noise))
            return res.estimate.float().cpu(), res.uncertainty.float().cpu()
        est = self._run(y, batch_size=batch_size, device=device)
        unc = None if self.calibration is None else _calibrated_std(est, self.calibration)
        return est, unc

    def _run(self, y: torch.Tensor, *, batch_size: int = 64, device: Any = None) -> torch.Tensor:
        """The network's (bounded) estimate of ``(B, H, W)`` observations, float32 on the CPU."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        dev = self.device if device is None else resolve_device(device)
        net = self.network.to(dev)
        low, high = self.bounds
        was_training = net.training
        net.eval()
        try:
            with torch.inference_mode():
                parts = []
                for chunk in torch.split(y, batch_size):
                    chunk = chunk.to(dev, torch.float64)
                    if net.residual:
                        x0 = _physics_estimate(self.operator, chunk, self.observation_noise).estimate
                        out = net(chunk, x0)
                    else:
                        out = net(chunk)
                    if low is not None or high is not None:
                        out = out.clamp(min=low, max=high)
                    parts.append(out.float().cpu())
        finally:
            net.train(was_training)
        return torch.cat(parts) if parts else torch.empty(y.shape, dtype=torch.float32)

    # -- state hooks --------------------------------------------------------
    def _get_config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "operator": self.operator.get_config(),
            "network": self.network.config,
            "mean_gain": self.network.mean_gain,
            "residual": self.network.residual,
            "training": self.training,
        }

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v for k, v in self.network.state_dict().items()}
        if self.calibration is not None:
            out.update({f"calibration.{k}": v for k, v in self.calibration.items()})
        return out

    @classmethod
    def _from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LearnedInversion:
        operator = operator_from_config(config["operator"])
        net = InversionNet(config["network"], mean_gain=config.get("mean_gain"),
                           residual=bool(config.get("residual", False)))
        state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        net.load_state_dict(state)
        net.to(next(iter(state.values())).device if state else "cpu")
        net.eval()
        calib = {k.removeprefix("calibration."): v for k, v in tensors.items()
                 if k.startswith("calibration.")}
        return cls(operator, net, method=config["method"], training=config.get("training"),
                   calibration=calib or None)

    def _provenance_extra(self) -> dict[str, Any]:
        extra = {"xsciml_method": self.method, "xsciml_operator": repr(self.operator)}
        if "steps" in self.training:
            extra["xsciml_training_steps"] = self.training["steps"]
        return extra


#: Noise levels up to this factor times the training level are accepted by ``predict``.
NOISE_TOLERANCE = 1.1


def _observation_batch(data: Callable, operator: FourierOperator, batch_size: int | None,
                       noise: float) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """Wrap a source generator into ``generator -> (sources, observations)`` (float64)."""
    if batch_size is not None and not hasattr(data, "sample"):
        raise TypeError(
            "batch_size= needs a data generator with a .sample(n, generator) method (e.g. "
            "RandomRectangles); for a plain callable, choose the batch size inside it."
        )

    def make(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # batch_size= was checked above to come with a data.sample method
        out = data.sample(batch_size, generator) if batch_size is not None and hasattr(data, "sample") \
            else data(generator)
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise ValueError("a data callable returning a tuple must return (sources, observations).")
            x, y = (torch.as_tensor(t, dtype=torch.float64) for t in out)
        else:
            x = torch.as_tensor(out, dtype=torch.float64)
            y = operator(x)
            if noise > 0:
                y = y + noise * torch.randn(y.shape, generator=generator, device=generator.device,
                                            dtype=y.dtype).to(y.device)
        if x.ndim != 3 or x.shape != y.shape:
            raise ValueError(
                f"data must produce sources of shape (batch, H, W) (and observations of the same "
                f"shape); got {tuple(x.shape)} and {tuple(y.shape)}."
            )
        return x, y

    return make


def _inversion_loss(method: str, operator: FourierOperator, *, noise: float,
                    bounds: tuple[float | None, float | None], solver_steps: int) -> Callable:
    low, high = bounds
    bounded = low is not None or high is not None

    def inverse(dy: torch.Tensor) -> torch.Tensor:
        return _physics_estimate(operator, dy, noise).estimate

    def loss_fn(model: InversionNet, batch: tuple[torch.Tensor, torch.Tensor]):
        dev = next(model.parameters()).device
        x_true, y = (t.to(dev, torch.float64) for t in batch)
        x0 = inverse(y)
        pred = model(y, x0) if model.residual else model(y)
        if method == "sip":
            loss = sip_loss(pred, y, operator.forward, inverse, iterations=solver_steps,
                            bounds=bounds if bounded else None)
        elif method == "gd":
            loss = physics_loss(pred, y, operator.forward)
        else:
            loss = 0.5 * (pred.double() - x_true).pow(2).sum(dim=(-2, -1)).mean()
        with torch.no_grad():
            p = pred.detach().double()
            if bounded:
                p = p.clamp(min=low, max=high)
            logs = {
                "x_l2": float(0.5 * (p - x_true).pow(2).sum(dim=(-2, -1)).mean()),
                "y_l2": float(0.5 * (operator(p) - y).pow(2).sum(dim=(-2, -1)).mean()),
                "x_l2_physics": float(0.5 * (x0 - x_true).pow(2).sum(dim=(-2, -1)).mean()),
            }
            x0b = x0.clamp(min=low, max=high) if bounded else x0
            logs["x_l2_physics_bounded"] = float(0.5 * (x0b - x_true).pow(2).sum(dim=(-2, -1)).mean())
        return loss, logs

    return loss_fn


def _resolve_bounds(bounds: Any, data: Any) -> tuple[float | None, float | None]:
    if isinstance(bounds, str):
        if bounds != "auto":
            raise ValueError(f"bounds must be 'auto', None or a (low, high) pair, got {bounds!r}.")
        found = getattr(data, "bounds", None)
        return _check_bounds(tuple(found)) if found is not None else (None, None)
    return _check_bounds(bounds)


@shared_docs
def fit_inversion(
    operator: FourierOperator,
    data: Callable[..., Any],
    *,
    method: str = "sip",
    steps: int = 150,
    batch_size: int | None = None,
    network: str = "unet",
    network_kwargs: dict[str, Any] | None = None,
    residual: bool = True,
    bounds: str | tuple[float | None, float | None] | None = "auto",
    solver_steps: int = 1,
    optimizer: Any = "adam",
    lr: float = 1e-3,
    observation_noise: float = 0.0,
    calibration_examples: int = 128,
    device: Any = "auto",
    seed: int = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    time_limit: float | str | None = None,
    **fit_kwargs: Any,
) -> LearnedInversion:
    r"""Train a U-Net to invert ``operator`` on on-the-fly generated data.

    Each step draws sources :math:`x^*` from ``data``, observes them through the
    operator (float64) and updates the network with ``method`` through
    :func:`xsciml.training.fit`.

    By default the network *refines the damped physics inverse*:
    :math:`\hat x = P^{-1}y + N(y, P^{-1}y)` with the correction :math:`N` starting
    at zero, so training starts from the physics estimate instead of from scratch;
    estimates are clipped to the sources' known range (``bounds``), and the SIP
    target is made by ``solver_steps`` projected inverse-physics iterations started
    at the prediction (see :func:`sip_loss`). After training, the per-cell error is
    calibrated on ``calibration_examples`` held-out examples (a separate random
    stream): its RMS in each of 8 classes of the estimate's edge strength (gradient
    magnitude) becomes the ``uncertainty`` of :meth:`LearnedInversion.predict`.

    Parameters
    ----------
    operator
        A :class:`~xsciml.inverse.FourierOperator` such as
        :class:`~xsciml.inverse.HeatOperator`; its damped :meth:`inverse` drives SIP
        and provides the physics estimate the network refines.
    data
        Callable ``data(generator) -> sources`` of shape ``(batch, H, W)`` (e.g.
        :class:`~xsciml.inverse.RandomRectangles`), or returning a tuple
        ``(sources, observations)`` to supply observations yourself.
    method
        ``"sip"`` (default), ``"gd"`` (backprop through the physics) or
        ``"supervised"``.
    steps
        Optimisation steps (one fresh batch each).
    batch_size
        Override the generator's batch size (needs ``data.sample(n, generator)``).
    network
        The network family: ``"unet"`` (:class:`~xsciml.nn.unet.UNet`, the only one).
    network_kwargs
        :class:`~xsciml.nn.unet.UNet` keyword overrides (default: 4 levels x 16
        filters with batch norm, the SIP reference).
    residual
        Refine the physics estimate (default) instead of mapping ``y`` directly.
    bounds
        ``(low, high)`` range of the sources (either may be ``None``); ``"auto"``
        (default) takes ``data.bounds`` when the generator states one
        (:class:`~xsciml.inverse.RandomRectangles` with non-negative strengths:
        ``(0, None)``), else none. ``None``: unbounded.
    solver_steps
        Projected inverse-physics iterations per SIP target (``"sip"`` only; 1 is the
        plain SIP update).
    optimizer
        Passed to :func:`~xsciml.training.fit` (``"adam"``, ``"sgd"``, ...).
    lr
        Learning rate, passed to :func:`~xsciml.training.fit`.
    observation_noise
        Std of Gaussian noise added to generated observations; also the noise level
        the physics inverse assumes, and the top of the noise range
        :meth:`LearnedInversion.predict` accepts.
    calibration_examples
        Held-out examples for the uncertainty calibration (0: no uncertainty).
    device
        Where to train, passed to :func:`~xsciml.training.fit`.
    seed
        Seed of the training and of the network initialisation: equal seeds give equal
        initial networks and data streams.
    progress
        Show a progress bar.
    {training_options}
    **fit_kwargs
        Further :func:`~xsciml.training.fit` options (``scheduler``, ``grad_clip``,
        ``checkpoint_every``, ...).

    Returns
    -------
    LearnedInversion
        The fitted estimator; ``.history`` holds the losses and the logged
        per-step ``x_l2`` / ``y_l2`` (mean :math:`\tfrac12\sum` errors of the batch's
        estimate in source and observation space, before the step's update) and
        ``x_l2_physics`` / ``x_l2_physics_bounded`` (the same error of the damped
        physics inverse, as is / clipped to ``bounds``);
        ``.training["calibration_rmse"]`` is the held-out RMS error per cell.

    Examples
    --------
    >>> from xsciml.inverse import HeatOperator, RandomRectangles
    >>> inv = fit_inversion(HeatOperator(8.0), RandomRectangles(batch_size=32),
    ...                     method="sip", steps=150)  # doctest: +SKIP
    >>> res = obs.sciml.invert(inv)  # doctest: +SKIP
    >>> res.estimate, res.uncertainty  # doctest: +SKIP
    """
    from ..training import fit

    if not isinstance(operator, FourierOperator):
        raise TypeError(
            f"operator must be an xsciml.inverse.FourierOperator (e.g. HeatOperator(8.0)), got "
            f"{type(operator).__name__}."
        )
    if operator.ndim != 2:
        raise ValueError(f"fit_inversion trains a 2-D U-Net; the operator has ndim={operator.ndim}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if not callable(data):
        raise TypeError(
            "data must be a callable generator -> sources (e.g. xsciml.inverse.RandomRectangles()); "
            f"got {type(data).__name__}."
        )
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if not isinstance(solver_steps, int) or solver_steps < 1:
        raise ValueError(f"solver_steps must be a positive integer, got {solver_steps!r}.")
    if not isinstance(calibration_examples, int) or calibration_examples < 0:
        raise ValueError(f"calibration_examples must be an integer >= 0, got {calibration_examples!r}.")
    if not (math.isfinite(observation_noise) and observation_noise >= 0):
        raise ValueError(f"observation_noise must be finite and >= 0, got {observation_noise!r}.")
    if network != "unet":
        raise ValueError(f"network must be 'unet' (the only network for inversion), got {network!r}.")
    if network_kwargs is not None and not isinstance(network_kwargs, dict):
        raise TypeError(f"network_kwargs must be a dict of UNet keyword arguments, "
                        f"got {type(network_kwargs).__name__}.")
    resolved_bounds = _resolve_bounds(bounds, data)
    noise = float(observation_noise)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InversionNet(network_kwargs, mean_gain=operator.mean_gain, residual=residual)
    batches = _observation_batch(data, operator, batch_size, noise)
    opt_name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
    start = time.perf_counter()
    history = fit(
        net, _inversion_loss(method, operator, noise=noise, bounds=resolved_bounds,
                             solver_steps=solver_steps),
        batches, steps=steps, optimizer=optimizer, lr=lr,
        device=device, seed=seed, progress=progress, desc=f"fit_inversion[{method}]",
        checkpoint=checkpoint, resume=resume, callbacks=callbacks, time_limit=time_limit,
        **fit_kwargs,
    )
    wall = time.perf_counter() - start
    shape = getattr(data, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 2:
        grid = [int(n) for n in shape]
    else:  # ask the data stream
        grid = [int(n) for n in batches(torch.Generator().manual_seed(seed))[0].shape[-2:]]
    training = {
        "steps": steps, "optimizer": opt_name, "lr": lr, "seed": seed,
        "batch_size": batch_size if batch_size is not None else getattr(data, "batch_size", None),
        "observation_noise": noise, "grid": grid, "residual": bool(residual),
        "bounds": list(resolved_bounds), "solver_steps": solver_steps,
        "data": data.get_config() if hasattr(data, "get_config") else type(data).__name__,
        "wall_time_s": round(wall, 3),
    }
    net.eval()
    inv = LearnedInversion(operator, net, method=method, training=training, history=history)
    if calibration_examples > 0:
        # held-out examples from a stream the training never draws from
        gen = torch.Generator().manual_seed(seed + CALIBRATION_SEED_OFFSET)
        xs, ys, have = [], [], 0
        while have < calibration_examples:
            x, y = batches(gen)
            xs.append(x)
            ys.append(y)
            have += x.shape[0]
        x_cal = torch.cat(xs)[:calibration_examples]
        y_cal = torch.cat(ys)[:calibration_examples]
        est = inv._run(y_cal)
        inv.calibration = _calibrate(est, x_cal)
        inv.training["calibration_examples"] = calibration_examples
        inv.training["calibration_rmse"] = round(float((est.double() - x_cal).pow(2).mean().sqrt()), 6)
    return inv


#: The calibration stream is seeded with ``seed + CALIBRATION_SEED_OFFSET``.
CALIBRATION_SEED_OFFSET = 7_777_777


# --------------------------------------------------------------------------- xarray
def _invert_kernel(inversion: LearnedInversion, values: np.ndarray, *, device: Any,
                   batch_size: int, out_dtype: str, noise: float | None, use_network: bool,
                   label: str) -> tuple[np.ndarray, np.ndarray]:
    """Dask task body of :func:`invert`: fields ``[..., H, W]`` -> (estimate, uncertainty)."""
    lead = values.shape[:-2]
    flat = np.asarray(values, dtype=np.float64).reshape(-1, *values.shape[-2:])
    if flat.shape[0] == 0:
        return np.empty(values.shape, dtype=out_dtype), np.empty(values.shape, dtype=out_dtype)
    if not np.isfinite(flat).all():
        raise ValueError(
            f"{label} contains {int((~np.isfinite(flat)).sum())} NaN or inf values; the inversion "
            "needs complete fields: fill the gaps first (e.g. obs.interpolate_na) or drop them."
        )
    est, unc = inversion._predict_tensor(torch.from_numpy(flat.copy()), noise=noise,
                                         use_network=use_network, batch_size=batch_size,
                                         device=device)
    if unc is None:
        unc = torch.full_like(est, float("nan"))
    shape = (*lead, *values.shape[-2:])
    return (est.numpy().astype(out_dtype, copy=False).reshape(shape),
            unc.numpy().astype(out_dtype, copy=False).reshape(shape))


def invert(
    obs: Any,
    inversion: LearnedInversion,
    *,
    dims: Sequence[Hashable] | None = None,
    noise: float | None = None,
    batch_size: int = 64,
    device: Any = None,
) -> InversionResult:
    """Estimate the source behind observed fields, with its uncertainty.

    Parameters
    ----------
    obs
        :class:`xarray.DataArray` with two spatial dims (default: the last two) and
        any leading dims. Dask-backed input stays lazy (the spatial dims must be
        one chunk).
    inversion
        A :class:`LearnedInversion` from :func:`fit_inversion` or :func:`xsciml.load`.
    dims
        The two spatial dims, ``(y, x)`` order as trained.
    noise
        Per-cell noise std of ``obs`` if known; above the training range the damped
        physics inverse is returned with a warning (see
        :meth:`LearnedInversion.predict`).
    batch_size
        Fields per network call.
    device
        Where to run the network (default: where it is).

    Returns
    -------
    InversionResult
        ``estimate`` (the estimated source) and ``uncertainty`` (its per-cell std,
        NaN if the inversion has no calibration): DataArrays with the dims, coords
        and dtype of ``obs``, attrs of ``obs`` plus provenance (``xsciml_model``,
        ``xsciml_method``, ...); and ``source`` (``"network"`` or ``"physics"``).

    Raises
    ------
    ValueError
        If the grid size or the coordinates' spacing differ from the trained ones,
        ``obs`` holds NaN (numpy-backed input is checked here, dask-backed input when
        computed), or the spatial dims are chunked.

    Examples
    --------
    >>> res = obs.sciml.invert(inv)  # doctest: +SKIP
    >>> res = xsciml.inverse.invert(obs, inv, dims=("lat", "lon"))  # doctest: +SKIP
    >>> res.estimate.plot(); res.uncertainty.plot()  # doctest: +SKIP
    """

    from .heat import grid_spacing, is_dataarray

    if not is_dataarray(obs):
        raise TypeError(
            f"obs must be an xarray.DataArray (use inversion.predict for tensors), got {type(obs).__name__}."
        )
    if not isinstance(inversion, LearnedInversion):
        raise TypeError(
            f"inversion must be a LearnedInversion (from xsciml.inverse.fit_inversion), got "
            f"{type(inversion).__name__}."
        )
    dims = resolve_dims(obs, dims, 2)
    if len(dims) != 2:
        raise ValueError(f"dims must name exactly two spatial dims, got {dims!r}.")
    name = "obs" if obs.name is None else repr(obs.name)
    if inversion.grid is not None and tuple(obs.sizes[d] for d in dims) != inversion.grid:
        got = " x ".join(str(obs.sizes[d]) for d in dims)
        want = " x ".join(str(n) for n in inversion.grid)
        raise ValueError(
            f"{name} has a {got} grid along dims {dims}, but the inversion was trained on {want} "
            f"grids: regrid or crop {name} to {want} (e.g. obs.interp or obs.isel), or fit a new "
            f"inversion on {got} examples."
        )
    if all(d in obs.coords for d in dims):
        h = grid_spacing(obs, dims)
        expected = spacing_tuple(inversion.operator.spacing, 2)
        if not np.allclose(h, expected, rtol=1e-5):
            raise ValueError(
                f"the coordinates of {dims} have spacing {h}, but the inversion was trained on a "
                f"grid of spacing {expected}; regrid the observations first."
            )
    if obs.chunks is not None:
        chunked = [d for d in dims if len(obs.chunksizes[d]) > 1]
        if chunked:
            raise ValueError(
                f"spatial dims {chunked} are split into several dask chunks; the network needs "
                f"whole fields: rechunk first, e.g. obs.chunk({{{chunked[0]!r}: -1}})."
            )
    else:
        n_bad = int((~np.isfinite(np.asarray(obs.values, dtype=np.float64))).sum())
        if n_bad:
            raise ValueError(
                f"{name} contains {n_bad} NaN or inf values; the inversion needs complete fields: "
                f"fill the gaps first (e.g. {name if obs.name is None else 'obs'}.interpolate_na"
                f"(dim={dims[-1]!r})) or drop those fields."
            )
    use_network = inversion._noise_in_range(noise)
    if not use_network:
        assert noise is not None  # a missing noise level is always in range
        inversion._fallback_warning(float(noise), what=name)
    dtype = obs.dtype if np.issubdtype(obs.dtype, np.floating) else np.dtype(np.float64)

    from ..parallel import apply_model

    est, unc = apply_model(
        _invert_kernel, inversion, obs, input_core_dims=[list(dims)],
        output_core_dims=[list(dims), list(dims)], output_dtypes=[dtype, dtype],
        device="auto" if device is None else device,
        kwargs={"batch_size": batch_size, "out_dtype": np.dtype(dtype).str, "noise": noise,
                "use_network": use_network, "label": name}, keep_attrs=True,
    )
    est, unc = est.transpose(*obs.dims), unc.transpose(*obs.dims)
    source = "network" if use_network else "physics"
    provenance = inversion._provenance(f"invert: source estimated from {name} ({source})",
                                       obs.attrs)
    for da, long_name in ((est, "estimated source"), (unc, "uncertainty (std) of the estimated source")):
        kept = output_attrs(obs.attrs)
        kept.pop("standard_name", None)  # the source is another quantity than the observation
        kept.pop("cell_methods", None)
        da.attrs = {**kept, **provenance}
        da.attrs["long_name"] = long_name
        da.attrs["xsciml_estimate_from"] = source
    est.name = f"{obs.name}_source" if obs.name is not None else "source"
    unc.name = f"{est.name}_uncertainty"
    return InversionResult(est, unc, source)
