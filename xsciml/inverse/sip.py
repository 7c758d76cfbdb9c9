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

Physics runs in float64, the network in float32. Losses sum over the grid and
average over examples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._utils import resolve_device
from ..base import Estimator, register_estimator
from ..nn.unet import UNet
from .heat import FourierOperator, _resolve_dims, _spacing_tuple, operator_from_config

__all__ = [
    "METHODS",
    "sip_loss",
    "physics_loss",
    "source_errors",
    "InversionNet",
    "LearnedInversion",
    "fit_inversion",
    "invert",
]

METHODS = ("sip", "gd", "supervised")

#: The U-Net of the SIP heat example: 4 levels x 16 filters, batch norm, ~38 k parameters.
DEFAULT_NETWORK: dict[str, Any] = {"base_channels": 16, "levels": 4, "norm": "batch",
                                   "activation": "relu", "padding_mode": "zeros"}

Operator = Callable[[torch.Tensor], torch.Tensor]


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
) -> torch.Tensor:
    r"""Scale-invariant physics (SIP) proxy loss.

    .. math::
        \Delta x = P^{-1}\big(y - P(\hat x)\big), \qquad
        L = \tfrac12 \big\| \hat x - \mathrm{sg}(\hat x + \Delta x) \big\|^2 ,

    summed over the grid and reduced over examples. Its gradient with respect to
    :math:`\hat x` is :math:`-\Delta x`: the network is pulled towards the
    inverse-physics correction instead of along the (badly scaled) physics gradient.

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
    forward, inverse
        Callables on tensors of that shape.
    ndim
        Number of trailing spatial axes summed over.
    reduction
        ``"mean"`` (over examples, default), ``"sum"`` or ``"none"``.
    physics_dtype
        Dtype of the physics solve (float64 by default); ``None`` keeps the
        prediction's dtype.

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
    dtype = prediction.dtype if physics_dtype is None else physics_dtype
    with torch.no_grad():
        x = prediction.detach().to(dtype)
        dy = observation.to(device=x.device, dtype=dtype) - forward(x)
        target = (x + inverse(dy)).to(prediction.dtype)
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
    prediction, observation
        Tensors of shape ``(..., *grid)``.
    forward
        Differentiable operator.
    ndim, reduction, physics_dtype
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

    Runs in float32. If ``mean_gain`` is set (the operator's gain of the mean
    mode, 1 for heat), the prediction's mean is corrected to ``mean(y) / mean_gain``:
    the mean is exactly observable, so the network need not learn it.

    Parameters
    ----------
    network
        Keyword arguments of :class:`~xsciml.nn.unet.UNet` (``in_channels`` and
        ``out_channels`` are fixed to 1); defaults to the SIP reference U-Net.
    mean_gain
        Gain of the :math:`k=0` mode, or ``None`` for no mean correction.

    Examples
    --------
    >>> net = InversionNet({"base_channels": 8, "levels": 2})
    >>> y = torch.rand(3, 16, 16)
    >>> x = net(y)
    >>> x.shape, bool(torch.allclose(x.mean((-1, -2)), y.mean((-1, -2)), atol=1e-5))
    (torch.Size([3, 16, 16]), True)
    """

    def __init__(self, network: dict[str, Any] | None = None, mean_gain: float | None = 1.0) -> None:
        super().__init__()
        kwargs = {**DEFAULT_NETWORK, **(network or {})}
        for fixed in ("in_channels", "out_channels", "cond_dim"):
            kwargs.pop(fixed, None)
        self.unet = UNet(1, 1, **kwargs)
        self.mean_gain = None if mean_gain is None or mean_gain <= 0 else float(mean_gain)

    @property
    def config(self) -> dict[str, Any]:
        """UNet keyword arguments (without the fixed channel counts)."""
        return {k: v for k, v in self.unet.config.items()
                if k not in ("in_channels", "out_channels", "cond_dim")}

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim != 3:
            raise ValueError(f"InversionNet expects observations of shape (batch, H, W), got {tuple(y.shape)}.")
        y = y.to(torch.float32)
        x = self.unet(y[:, None])[:, 0]
        if self.mean_gain is not None:
            x = x + (y.mean(dim=(-2, -1), keepdim=True) / self.mean_gain
                     - x.mean(dim=(-2, -1), keepdim=True))
        return x


# --------------------------------------------------------------------------- estimator
def _to_tensor(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(y))
    raise TypeError(
        f"expected a torch.Tensor, numpy array or xarray.DataArray of observations, got {type(y).__name__}."
    )


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
        JSON-able description of the training run (kept in the saved file).
    history
        The training loop's history (not saved).

    Examples
    --------
    >>> from xsciml.inverse import HeatOperator, RandomRectangles, fit_inversion
    >>> inv = fit_inversion(HeatOperator(2.0), RandomRectangles((16, 16), batch_size=4,
    ...                     max_half_size=4.0), steps=2, network={"base_channels": 4,
    ...                     "levels": 2}, progress=False, device="cpu")
    >>> inv.predict(torch.zeros(2, 16, 16)).shape
    torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        operator: FourierOperator,
        network: InversionNet,
        *,
        method: str = "sip",
        training: dict[str, Any] | None = None,
        history: Any = None,
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
        self.history = history

    # -- inference ----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def predict(self, y: Any, *, batch_size: int = 64, device: Any = None, **invert_kwargs: Any):
        """Estimate sources from observations.

        Parameters
        ----------
        y
            Observations: a tensor/array ``(H, W)`` or ``(B, H, W)``, or a DataArray
            (forwarded to :func:`invert`).
        batch_size
            Examples per network call.
        device
            Device to run on (default: where the network is).
        **invert_kwargs
            DataArray only: passed to :func:`invert` (e.g. ``dims``).

        Returns
        -------
        torch.Tensor or xarray.DataArray
            Same shape as ``y``; tensors keep ``y``'s floating dtype.
        """
        from .heat import _is_dataarray

        if _is_dataarray(y):
            return invert(y, self, batch_size=batch_size, device=device, **invert_kwargs)
        t = _to_tensor(y)
        if t.ndim not in (2, 3):
            raise ValueError(f"y must have shape (H, W) or (batch, H, W), got {tuple(t.shape)}.")
        out = self._run(t[None] if t.ndim == 2 else t, batch_size=batch_size, device=device)
        out = out.to(t.dtype if t.is_floating_point() else torch.float32)
        return out[0] if t.ndim == 2 else out

    def _run(self, y: torch.Tensor, *, batch_size: int = 64, device: Any = None) -> torch.Tensor:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        dev = self.device if device is None else resolve_device(device)
        net = self.network.to(dev)
        was_training = net.training
        net.eval()
        try:
            with torch.inference_mode():
                parts = [net(chunk.to(dev, torch.float32)).cpu()
                         for chunk in torch.split(y, batch_size)]
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
            "training": self.training,
        }

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.network.state_dict().items()}

    @classmethod
    def _from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LearnedInversion:
        operator = operator_from_config(config["operator"])
        net = InversionNet(config["network"], mean_gain=config.get("mean_gain"))
        state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        net.load_state_dict(state)
        net.to(next(iter(state.values())).device if state else "cpu")
        return cls(operator, net, method=config["method"], training=config.get("training"))

    def _provenance_extra(self) -> dict[str, Any]:
        extra = {"xsciml_method": self.method, "xsciml_operator": repr(self.operator)}
        if "steps" in self.training:
            extra["xsciml_training_steps"] = self.training["steps"]
        return extra


def _observation_batch(data: Callable, operator: FourierOperator, batch_size: int | None,
                       noise: float) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """Wrap a source generator into ``generator -> (sources, observations)`` (float64)."""
    if batch_size is not None and not hasattr(data, "sample"):
        raise TypeError(
            "batch_size= needs a data generator with a .sample(n, generator) method (e.g. "
            "RandomRectangles); for a plain callable, choose the batch size inside it."
        )

    def make(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        out = data.sample(batch_size, generator) if batch_size is not None else data(generator)
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


def _inversion_loss(method: str, operator: FourierOperator) -> Callable:
    def loss_fn(model: InversionNet, batch: tuple[torch.Tensor, torch.Tensor]):
        dev = next(model.parameters()).device
        x_true, y = (t.to(dev, torch.float64) for t in batch)
        pred = model(y)
        if method == "sip":
            loss = sip_loss(pred, y, operator.forward, operator.inverse)
        elif method == "gd":
            loss = physics_loss(pred, y, operator.forward)
        else:
            loss = 0.5 * (pred.double() - x_true).pow(2).sum(dim=(-2, -1)).mean()
        with torch.no_grad():
            p = pred.detach().double()
            logs = {
                "x_l2": float(0.5 * (p - x_true).pow(2).sum(dim=(-2, -1)).mean()),
                "y_l2": float(0.5 * (operator(p) - y).pow(2).sum(dim=(-2, -1)).mean()),
            }
        return loss, logs

    return loss_fn


def fit_inversion(
    operator: FourierOperator,
    data: Callable[..., Any],
    *,
    method: str = "sip",
    steps: int = 150,
    batch_size: int | None = None,
    network: dict[str, Any] | None = None,
    optimizer: Any = "adam",
    lr: float = 1e-3,
    observation_noise: float = 0.0,
    device: Any = "auto",
    seed: int = 0,
    progress: bool | None = None,
    callbacks: Sequence[Any] = (),
    **fit_kwargs: Any,
) -> LearnedInversion:
    r"""Train a U-Net to invert ``operator`` on on-the-fly generated data.

    Each step draws sources :math:`x^*` from ``data``, observes them through the
    operator (float64) and updates the network with ``method`` through
    :func:`xsciml.training.fit`.

    Parameters
    ----------
    operator
        A :class:`~xsciml.inverse.FourierOperator` such as
        :class:`~xsciml.inverse.HeatOperator`; its damped :meth:`inverse` drives SIP.
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
        :class:`~xsciml.nn.unet.UNet` keyword overrides (default: 4 levels x 16
        filters with batch norm, the SIP reference).
    optimizer, lr
        Passed to :func:`~xsciml.training.fit` (``"adam"``, ``"sgd"``, ...).
    observation_noise
        Std of Gaussian noise added to generated observations.
    device, seed, progress, callbacks
        Passed to :func:`~xsciml.training.fit`. ``seed`` also fixes the network
        initialisation, so equal seeds give equal initial networks and data streams.
    **fit_kwargs
        Further :func:`~xsciml.training.fit` options (``scheduler``, ``grad_clip``,
        ``checkpoint``, ...).

    Returns
    -------
    LearnedInversion
        The fitted estimator; ``.history`` holds the losses and the logged
        per-step ``x_l2`` / ``y_l2`` (mean :math:`\tfrac12\sum` errors in source and
        observation space).

    Examples
    --------
    >>> from xsciml.inverse import HeatOperator, RandomRectangles
    >>> inv = fit_inversion(HeatOperator(8.0), RandomRectangles(batch_size=32),
    ...                     method="sip", steps=150)  # doctest: +SKIP
    >>> src = obs.sciml.invert(inv)  # doctest: +SKIP
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
    if observation_noise < 0:
        raise ValueError(f"observation_noise must be >= 0, got {observation_noise!r}.")
    if network is not None and not isinstance(network, dict):
        raise TypeError(f"network must be a dict of UNet keyword arguments, got {type(network).__name__}.")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InversionNet(network, mean_gain=operator.mean_gain)
    batches = _observation_batch(data, operator, batch_size, float(observation_noise))
    opt_name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
    start = time.perf_counter()
    history = fit(
        net, _inversion_loss(method, operator), batches, steps=steps, optimizer=optimizer, lr=lr,
        device=device, seed=seed, progress=progress, desc=f"fit_inversion[{method}]",
        callbacks=callbacks, **fit_kwargs,
    )
    training = {
        "steps": steps, "optimizer": opt_name, "lr": lr, "seed": seed,
        "batch_size": batch_size if batch_size is not None else getattr(data, "batch_size", None),
        "observation_noise": float(observation_noise),
        "data": data.get_config() if hasattr(data, "get_config") else type(data).__name__,
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    net.eval()
    return LearnedInversion(operator, net, method=method, training=training, history=history)


# --------------------------------------------------------------------------- xarray
def _invert_kernel(inversion: LearnedInversion, values: np.ndarray, *, device: Any,
                   batch_size: int, out_dtype: str) -> np.ndarray:
    """Dask task body of :func:`invert`: fields ``[..., H, W]`` -> sources, same shape."""
    lead = values.shape[:-2]
    flat = np.asarray(values, dtype=np.float32).reshape(-1, *values.shape[-2:])
    if flat.shape[0] == 0:
        return np.empty(values.shape, dtype=out_dtype)
    if not np.isfinite(flat).all():
        raise ValueError("obs contains NaN or inf; the inversion needs complete fields.")
    out = inversion._run(torch.from_numpy(flat.copy()), batch_size=batch_size, device=device)
    return out.numpy().astype(out_dtype, copy=False).reshape(*lead, *values.shape[-2:])


def invert(
    obs: Any,
    inversion: LearnedInversion,
    *,
    dims: Sequence[Hashable] | None = None,
    batch_size: int = 64,
    device: Any = None,
):
    """Estimate the source behind observed fields with a fitted inversion.

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
    batch_size
        Fields per network call.
    device
        Where to run the network (default: where it is).

    Returns
    -------
    xarray.DataArray
        The estimated source, same dims, coords and dtype as ``obs``; attrs are
        ``obs``'s plus provenance (``xsciml_model``, ``xsciml_method``, ...).

    Raises
    ------
    ValueError
        If the coordinates' spacing differs from the operator's grid spacing, or
        the spatial dims are chunked.

    Examples
    --------
    >>> src = obs.sciml.invert(inv)  # doctest: +SKIP
    >>> src = xsciml.inverse.invert(obs, inv, dims=("lat", "lon"))  # doctest: +SKIP
    """

    from .heat import _is_dataarray, grid_spacing

    if not _is_dataarray(obs):
        raise TypeError(
            f"obs must be an xarray.DataArray (use inversion.predict for tensors), got {type(obs).__name__}."
        )
    if not isinstance(inversion, LearnedInversion):
        raise TypeError(
            f"inversion must be a LearnedInversion (from xsciml.inverse.fit_inversion), got "
            f"{type(inversion).__name__}."
        )
    dims = _resolve_dims(obs, dims, 2)
    if len(dims) != 2:
        raise ValueError(f"dims must name exactly two spatial dims, got {dims!r}.")
    if all(d in obs.coords for d in dims):
        h = grid_spacing(obs, dims)
        expected = _spacing_tuple(inversion.operator.spacing, 2)
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
    dtype = obs.dtype if np.issubdtype(obs.dtype, np.floating) else np.dtype(np.float64)

    from ..parallel import apply_model

    out = apply_model(
        _invert_kernel, inversion, obs, input_core_dims=[list(dims)], output_core_dims=[list(dims)],
        output_dtypes=[dtype], device="auto" if device is None else device,
        kwargs={"batch_size": batch_size, "out_dtype": np.dtype(dtype).str}, keep_attrs=True,
    ).transpose(*obs.dims)
    out.attrs.update(inversion._provenance())
    out.attrs["long_name"] = "estimated source"
    out.name = f"{obs.name}_source" if obs.name is not None else "source"
    return out

