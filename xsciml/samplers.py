r"""Classical MCMC for a score or a log-density: Langevin dynamics and MALA (torch).

Both samplers run a batch of independent chains, ``x0 [n_chains, *event_shape]``, and
return the kept states ``[n_kept, n_chains, *event_shape]``.

* :func:`langevin` — the unadjusted Langevin algorithm (ULA), the Euler–Maruyama
  discretisation of :math:`dX = \nabla\log p(X)\,dt + \sqrt 2\, dW`:

  .. math:: x_{k+1} = x_k + h\,\nabla\log p(x_k) + \sqrt{2h}\,\xi_k,\qquad \xi_k \sim \mathcal N(0, I).

  It needs only the score :math:`\nabla\log p` (e.g. a learned one), but its stationary
  law is biased by :math:`O(h)`.
* :func:`mala` — Metropolis-adjusted Langevin: the ULA step is a proposal
  :math:`y \sim q(\cdot\mid x) = \mathcal N(x + h\nabla\log p(x), 2h I)`, accepted with
  probability

  .. math:: \alpha = \min\Big(1, \frac{p(y)\, q(x \mid y)}{p(x)\, q(y \mid x)}\Big),\qquad
            \log q(x' \mid x) = -\frac{\lVert x' - x - h\nabla\log p(x)\rVert^2}{4h} + C,

  which makes :math:`p` exactly invariant for any step :math:`h`.

A log-density is differentiated with autograd (do not call these under
``torch.inference_mode``); it must return one value per chain, ``[n_chains]``.

Examples
--------
>>> import torch
>>> logp = lambda x: -0.5 * (x**2).sum(-1)             # standard normal in 2-D
>>> s = langevin(logp, torch.zeros(500, 2), step=0.05, n_steps=200, burn_in=100,
...              generator=0, progress=False)
>>> s.shape
torch.Size([100, 500, 2])
>>> bool(abs(s.var() - 1.0) < 0.1)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ._utils import progress_bar

__all__ = ["langevin", "mala"]


def _generator(generator: torch.Generator | int | None, device: torch.device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")
    gen = torch.Generator(device=device)
    gen.manual_seed(generator)
    return gen


def _check(x0: Tensor, step: float, n_steps: int, thin: int, burn_in: int) -> Tensor:
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor [n_chains, ...], got {type(x0).__name__}")
    if x0.ndim < 1 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a floating tensor [n_chains, *event_shape], got {x0.dtype} {tuple(x0.shape)}")
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive number, got {step!r}")
    for name, v, lo in (("n_steps", n_steps, 1), ("thin", thin, 1), ("burn_in", burn_in, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if burn_in >= n_steps:
        raise ValueError(f"burn_in ({burn_in}) must be smaller than n_steps ({n_steps})")
    return x0.detach().clone()


def _logp_and_grad(log_prob: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        if lp.shape != x.shape[:1]:
            raise ValueError(
                f"log_prob must return one value per chain, shape {tuple(x.shape[:1])}; got "
                f"{tuple(lp.shape)}"
            )
        (grad,) = torch.autograd.grad(lp.sum(), x)
    return lp.detach(), grad.detach()


def _score_fn(fn: Callable[[Tensor], Tensor], x0: Tensor, kind: str) -> Callable[[Tensor], Tensor]:
    if kind not in ("auto", "score", "log_prob"):
        raise ValueError(f"kind must be 'auto', 'score' or 'log_prob', got {kind!r}")
    if kind == "auto":
        if x0.ndim == 1:
            raise ValueError("with scalar states (x0 of shape [n_chains]) a score and a log-density "
                             "have the same shape: pass kind='score' or kind='log_prob'")
        with torch.no_grad():
            shape = tuple(fn(x0).shape)
        if shape == tuple(x0.shape):
            kind = "score"
        elif shape == tuple(x0.shape[:1]):
            kind = "log_prob"
        else:
            raise ValueError(
                f"the function returned shape {shape}; a score returns x's shape {tuple(x0.shape)}, "
                f"a log-density one value per chain {tuple(x0.shape[:1])}"
            )
    if kind == "log_prob":
        return lambda x: _logp_and_grad(fn, x)[1]

    def score(x: Tensor) -> Tensor:
        s = fn(x)
        if s.shape != x.shape:
            raise ValueError(f"the score must have x's shape {tuple(x.shape)}, got {tuple(s.shape)}")
        return s.detach()

    return score


def langevin(score_or_logp: Callable[[Tensor], Tensor], x0: Tensor, *, step: float, n_steps: int,
             generator: torch.Generator | int | None = None, thin: int = 1, burn_in: int = 0,
             kind: Literal["auto", "score", "log_prob"] = "auto",
             progress: bool | None = None) -> Tensor:
    r"""Unadjusted Langevin dynamics (Euler–Maruyama), batched over chains.

    .. math:: x_{k+1} = x_k + h\, s(x_k) + \sqrt{2h}\,\xi_k

    with :math:`s = \nabla\log p` given directly or by autograd of a log-density.

    Parameters
    ----------
    score_or_logp : callable
        ``x [n_chains, *event] -> score [n_chains, *event]`` or ``-> log p [n_chains]``.
    x0 : Tensor ``[n_chains, *event]``
        Initial states (their device and dtype are used throughout).
    step : float
        Step size :math:`h`.
    n_steps : int
        Number of steps.
    generator : torch.Generator or int, optional
        Noise generator (an int seeds a new one on ``x0``'s device).
    thin : int
        Keep every ``thin``-th state after ``burn_in``.
    burn_in : int
        Steps discarded first.
    kind : {"auto", "score", "log_prob"}
        What ``score_or_logp`` returns; ``"auto"`` decides from the output shape.
    progress : bool, optional
        Progress bar.

    Returns
    -------
    Tensor ``[n_kept, n_chains, *event]``
        The states after steps ``burn_in + thin, burn_in + 2 thin, ...``.

    Examples
    --------
    >>> import torch
    >>> s = langevin(lambda x: -x, torch.zeros(4, 3), step=0.1, n_steps=10, thin=5,
    ...              generator=0, progress=False)
    >>> s.shape
    torch.Size([2, 4, 3])
    """
    x = _check(x0, step, n_steps, thin, burn_in)
    gen = _generator(generator, x.device)
    score = _score_fn(score_or_logp, x, kind)
    noise_scale = math.sqrt(2.0 * step)
    kept = []
    for k in progress_bar(range(1, n_steps + 1), desc="langevin", progress=progress):
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x = x + step * score(x) + noise_scale * noise
        if k > burn_in and (k - burn_in) % thin == 0:
            kept.append(x)
    if not kept:
        return x.new_empty((0,) + tuple(x.shape))
    return torch.stack(kept)


def mala(log_prob: Callable[[Tensor], Tensor], x0: Tensor, *, step: float, n_steps: int,
         generator: torch.Generator | int | None = None, thin: int = 1, burn_in: int = 0,
         progress: bool | None = None) -> tuple[Tensor, float]:
    r"""Metropolis-adjusted Langevin algorithm, batched over chains.

    Proposal :math:`y = x + h\nabla\log p(x) + \sqrt{2h}\,\xi`; accept with
    probability :math:`\min(1, e^{\log p(y) - \log p(x) + \log q(x\mid y) - \log q(y\mid x)})`
    where :math:`\log q(x'\mid x) = -\lVert x' - x - h\nabla\log p(x)\rVert^2 / 4h`.
    Rejected chains keep their state. The target is exactly invariant.

    Parameters
    ----------
    log_prob : callable
        ``x [n_chains, *event] -> log p(x) [n_chains]`` (unnormalised), differentiable.
    x0 : Tensor ``[n_chains, *event]``
    step : float
        Step size :math:`h`.
    n_steps
        As in :func:`langevin`.
    generator
        As in :func:`langevin`.
    thin
        As in :func:`langevin`.
    burn_in
        As in :func:`langevin`.
    progress
        As in :func:`langevin`.

    Returns
    -------
    samples : Tensor ``[n_kept, n_chains, *event]``
    acceptance_rate : float
        Fraction of accepted proposals over all chains and steps (burn-in included).

    Examples
    --------
    >>> import torch
    >>> s, acc = mala(lambda x: -0.5 * (x**2).sum(-1), torch.zeros(8, 2), step=0.5,
    ...               n_steps=20, generator=0, progress=False)
    >>> s.shape, 0.0 < acc < 1.0
    (torch.Size([20, 8, 2]), True)
    """
    x = _check(x0, step, n_steps, thin, burn_in)
    gen = _generator(generator, x.device)
    event_dims = tuple(range(1, x.ndim))

    def log_q(to: Tensor, frm: Tensor, grad_frm: Tensor) -> Tensor:
        diff = to - frm - step * grad_frm
        return -(diff**2).sum(event_dims) / (4.0 * step)

    lp, grad = _logp_and_grad(log_prob, x)
    noise_scale = math.sqrt(2.0 * step)
    accepted = 0
    kept = []
    for k in progress_bar(range(1, n_steps + 1), desc="mala", progress=progress):
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        y = x + step * grad + noise_scale * noise
        lp_y, grad_y = _logp_and_grad(log_prob, y)
        log_alpha = lp_y - lp + log_q(x, y, grad_y) - log_q(y, x, grad)
        u = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype)
        accept = torch.log(u) < log_alpha  # NaN log_alpha (e.g. log p(y) = -inf - -inf) rejects
        shape = (-1,) + (1,) * (x.ndim - 1)
        x = torch.where(accept.view(shape), y, x)
        grad = torch.where(accept.view(shape), grad_y, grad)
        lp = torch.where(accept, lp_y, lp)
        accepted += int(accept.sum())
        if k > burn_in and (k - burn_in) % thin == 0:
            kept.append(x)
    rate = accepted / (n_steps * x.shape[0])
    samples = torch.stack(kept) if kept else x.new_empty((0,) + tuple(x.shape))
    return samples, rate
