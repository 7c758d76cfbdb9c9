r"""Auto-decoding: the codes of states under a frozen code-conditioned decoder (pure torch).

A decoder :math:`D(\alpha)(x)` maps a code :math:`\alpha \in \mathbb R^d` to a field at
points :math:`x`. *Auto-decoding* infers the code of an observed state :math:`y` (values
at some points, a mask :math:`m` where it is observed) by minimising, for every state
independently,

.. math::

    \ell(\alpha) = \frac{1}{n}\, e^\top W e
        + \frac{\rho}{d}\,\lVert(\alpha - \mu)/\sigma\rVert^2, \qquad
    e = m \odot (D(\alpha) - y),

with ``n`` the observed entries, a Gaussian prior fitted to the training codes
(:math:`\mu`, :math:`\sigma`) and ``W`` the identity (white noise) or a generalised
least-squares matrix built from a low-rank + white covariance of the decoder's residuals
(:func:`residual_covariance_factor`, :func:`gls_factors`, :func:`gls_quadratic`).

Two optimisers: :func:`gauss_newton_codes` (Gauss–Newton steps preconditioned by the
decoder's Jacobian at the mean code, :func:`decoder_jacobian`) and :func:`adam_codes`
(Adam with a cosine-decayed learning rate); :func:`nearest_codes` gives a warm start.
:func:`laplace_codes` gives the Laplace (Gauss–Newton) posterior of the codes at the
optimum, :func:`laplace_posterior` the same from a Jacobian, and :func:`sample_codes`
draws codes from it (ensemble forecasts).
Tensors only: the labelled-data side lives with the models that use it
(:class:`xsciml.models.dino.DINo`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..nn import FourierNet

__all__ = [
    "CodePosterior",
    "adam_codes",
    "candidate_fields",
    "decode_codes",
    "decoder_jacobian",
    "encode_objective",
    "gauss_newton_codes",
    "gls_factors",
    "gls_quadratic",
    "laplace_codes",
    "laplace_posterior",
    "nearest_codes",
    "residual_covariance_factor",
    "sample_codes",
]


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
    if isinstance(decoder, FourierNet) and decoder.code_dim:
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
    code_mean, code_std
        Mean and spread of the training codes ``[d]``.

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
    r"""The auto-decoding objective of every state ``[B]`` (what the auto-decoding minimises).

    :math:`\ell(\alpha) = \frac{1}{n}\, e^\top W e + \frac{\rho}{d}\lVert(\alpha-\mu)/\sigma\rVert^2`
    with :math:`e = m \odot (D(\alpha) - y)`, ``n`` the observed entries of the state and
    ``W`` the identity, or the GLS matrix of :func:`gls_quadratic` when ``gls`` and
    ``chol`` are given. Both optimisers (:func:`adam_codes` and :func:`gauss_newton_codes`)
    use it.

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
        assert chol is not None  # given with gls (_check_encode_inputs)
        fit = gls_quadratic(e.reshape(len(e), -1), gls, chol)
    mu, sd = code_mean.reshape(-1), code_std.reshape(-1)
    prior = ((alpha - mu) / sd).pow(2).mean(1)  # Gaussian prior fitted to the training codes
    return fit / mask.sum((1, 2)).clamp_min(1.0) + reg * prior


def gauss_newton_codes(decoder: nn.Module, features: Tensor, y: Tensor, mask: Tensor,
                       alpha0: Tensor, *, steps: int, reg: float, code_mean: Tensor,
                       code_std: Tensor, gls: Tensor | None = None, chol: Tensor | None = None,
                       jacobian: Tensor | None = None) -> Tensor:
    r"""Auto-decoding by Gauss–Newton steps preconditioned at the mean code (batched).

    Minimises, for every state independently, the objective of :func:`encode_objective`:
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
    y, mask
        Standardised values and observation mask ``[B, P, C]`` (``y`` 0 where unobserved).
    alpha0
        Starting codes ``[B, d]``.
    steps
        Gauss–Newton steps.
    reg
        Weight of the Gaussian prior on the normalised code.
    code_mean, code_std
        :math:`\mu`, :math:`\sigma` of the training codes ``[d]``.
    gls, chol
        Optional GLS factor ``[k, P*C]`` (restricted to the points) and its Cholesky
        factors ``[B, k, k]``.
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
        assert chol is not None  # given with gls (_check_encode_inputs)
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


def adam_codes(decoder: nn.Module, features: Tensor, y: Tensor, mask: Tensor, alpha0: Tensor, *,
               steps: int, lr: float, reg: float, code_mean: Tensor, code_std: Tensor,
               gls: Tensor | None = None, chol: Tensor | None = None) -> Tensor:
    r"""Auto-decoding by Adam steps on :func:`encode_objective` (batched, DINo's optimiser).

    All states move together, each by the gradient of its own objective (the sum over
    states separates), with a cosine-decayed learning rate from ``lr`` over ``steps``.

    Parameters
    ----------
    decoder
        Code-conditioned coordinate network (frozen: its parameters should not require
        gradients).
    features
        Encoded points ``[P, F]``.
    y, mask
        Standardised values and observation mask ``[B, P, C]`` (``y`` 0 where unobserved).
    alpha0
        Starting codes ``[B, d]``.
    steps
        Adam steps.
    lr
        Initial learning rate.
    reg
        Weight of the Gaussian prior on the normalised code.
    code_mean, code_std
        :math:`\mu`, :math:`\sigma` of the training codes ``[d]``.
    gls, chol
        Optional GLS factor ``[k, P*C]`` and its Cholesky factors ``[B, k, k]``.

    Returns
    -------
    Codes ``[B, d]`` (detached).

    Examples
    --------
    >>> from xsciml.nn import FourierNet
    >>> net = FourierNet(2, 1, width=16, depth=2, input_scale=4.0, code_dim=3)
    >>> x, true = torch.rand(50, 2) * 2 - 1, torch.randn(4, 3) * 0.1
    >>> with torch.no_grad():
    ...     y = decode_codes(net, x, true)
    >>> kw = dict(reg=0.0, code_mean=torch.zeros(3), code_std=torch.ones(3))
    >>> a = adam_codes(net, x, y, torch.ones_like(y), torch.zeros(4, 3), steps=200, lr=0.05, **kw)
    >>> bool((encode_objective(net, x, y, torch.ones_like(y), a, **kw) < 1e-3).all())
    True
    """
    _check_encode_inputs(features, y, mask, alpha0, code_mean, code_std, gls, chol)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    alpha = alpha0.clone().requires_grad_(True)
    opt = torch.optim.Adam([alpha], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    with torch.enable_grad():
        for _ in range(steps):
            loss = _encode_objective(decoder, features, y, mask, alpha, reg=reg, code_mean=code_mean,
                                     code_std=code_std, gls=gls, chol=chol).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return alpha.detach()


def candidate_fields(decoder: nn.Module, features: Tensor, codes: Tensor, *, max_points: int,
                     max_candidates: int = 512) -> tuple[Tensor, Tensor]:
    """Candidate codes (at most ``max_candidates``, evenly spread) and their fields at ``features``.

    Parameters
    ----------
    decoder
        Code-conditioned coordinate network.
    features
        Encoded points ``[P, F]``.
    codes
        Codes ``[K, d]`` to choose from (e.g. the training codes, flattened).
    max_points
        Bound on codes × points decoded at once (memory).
    max_candidates
        Largest number of candidates kept.

    Returns
    -------
    ``(codes [K', d], fields [K', P*C])``, for :func:`nearest_codes`.

    Examples
    --------
    >>> from xsciml.nn import FourierNet
    >>> net = FourierNet(2, 1, width=8, depth=2, input_scale=4.0, code_dim=3)
    >>> c, f = candidate_fields(net, torch.rand(20, 2), torch.randn(1000, 3), max_points=4096)
    >>> tuple(c.shape), tuple(f.shape)
    ((512, 3), (512, 20))
    """
    codes = codes.to(features.device)
    if len(codes) > max_candidates:
        codes = codes[torch.linspace(0, len(codes) - 1, max_candidates).round().long()]
    per = max(1, int(max_points) // max(1, len(features)))
    with torch.no_grad():
        fields = torch.cat([decode_codes(decoder, features, codes[i:i + per])
                            for i in range(0, len(codes), per)])
    return codes, fields.reshape(len(codes), -1)


def nearest_codes(candidates: tuple[Tensor, Tensor], y: Tensor, mask: Tensor) -> Tensor:
    """For each state, the candidate code whose field is closest on its observed points.

    Parameters
    ----------
    candidates
        ``(codes [K, d], fields [K, P*C])`` from :func:`candidate_fields`.
    y, mask
        Values and observation mask ``[B, P, C]``.

    Returns
    -------
    Codes ``[B, d]``: a warm start for :func:`adam_codes` or :func:`gauss_newton_codes`.

    Examples
    --------
    >>> codes, fields = torch.eye(3), torch.eye(3)
    >>> y = torch.tensor([[[0.0], [0.9], [0.1]]])
    >>> nearest_codes((codes, fields), y, torch.ones_like(y)).tolist()
    [[0.0, 1.0, 0.0]]
    """
    codes, fields = candidates  # [K, d], [K, P*C]
    with torch.no_grad():
        my = (mask * y).reshape(len(y), -1)
        m = mask.reshape(len(y), -1)
        # sum_p m (f - y)^2 = sum m f^2 - 2 sum m y f + const, for all pairs at once
        err = m @ fields.pow(2).T - 2.0 * my @ fields.T
    return codes[err.argmin(dim=1)]


# =========================================================================== Laplace posterior
class CodePosterior(NamedTuple):
    r"""A Gaussian (Laplace) posterior of the codes of ``B`` states.

    Attributes
    ----------
    mean
        The codes at the optimum ``[B, d]`` (the posterior mean).
    scale_tril
        Lower Cholesky factor ``[B, d, d]`` of the posterior covariance
        :math:`\Sigma = L L^\top` (float64).
    noise_var
        Noise variance estimated from each state's fit residual ``[B]``, in the units of
        the fitted values (standardised for the models).
    dof
        Residual degrees of freedom ``[B]``: observed entries minus the effective number
        of parameters, :math:`n - \mathrm{tr}(A^{-1} J^\top W J)`.
    """

    mean: Tensor
    scale_tril: Tensor
    noise_var: Tensor
    dof: Tensor


def _cholesky_jitter(a: Tensor, what: str = "matrix") -> Tensor:
    """Lower Cholesky factors of symmetric matrices ``[..., d, d]``, adding a growing jitter
    (1e-10 to 1e-4 of the mean diagonal) to those that are not numerically positive definite."""
    a = 0.5 * (a + a.transpose(-1, -2))
    chol, info = torch.linalg.cholesky_ex(a)
    if not bool((info > 0).any()):
        return chol
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    scale = a.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-300)[..., None, None]
    for rel in (1e-10, 1e-8, 1e-6, 1e-4):
        bad = info > 0
        c2, i2 = torch.linalg.cholesky_ex(a + rel * scale * eye)
        chol = torch.where(bad[..., None, None], c2, chol)
        info = torch.where(bad, i2, info)
        if not bool((info > 0).any()):
            return chol
    raise ValueError(f"the {what} is not positive definite, even with a jitter of 1e-4 of its diagonal; "
                     "the code is not identified by the observed points (use a larger encoding reg)")


def laplace_posterior(mean: Tensor, jacobian: Tensor, rss: Tensor, n_obs: Tensor, prior_precision: Tensor,
                      *, weighted_jacobian: Tensor | None = None) -> CodePosterior:
    r"""The Laplace posterior of least-squares codes from the Jacobian at the optimum.

    For a fit :math:`\min_\alpha e^\top W e + n\,\lVert \Lambda^{1/2}(\alpha - \mu)\rVert^2`
    (the auto-decoding objective times ``n``: ``W`` the identity or the GLS matrix, ``n``
    the observed entries, :math:`\Lambda` = ``prior_precision``), with residual
    :math:`e = m \odot (D(\alpha) - y)` and noise :math:`\varepsilon \sim \mathcal N(0,
    s^2 W^{-1})`, the Gauss–Newton (Laplace) posterior at the optimum is

    .. math::

        \alpha \sim \mathcal N\big(\hat\alpha,\; s^2 A^{-1}\big), \qquad
        A = J^\top W J + n\,\Lambda, \qquad
        s^2 = \frac{e^\top W e}{n - \mathrm{tr}(A^{-1} J^\top W J)},

    the normal matrix of the fit, and the noise variance estimated from the fit residual
    with the effective number of parameters of the regularised fit (the trace, at most
    ``d``; the degrees of freedom are floored at 1).

    Parameters
    ----------
    mean
        The codes at the optimum ``[B, d]``.
    jacobian
        Jacobian ``[B, n, d]`` of the masked residual at ``mean`` (zero rows at unobserved
        entries).
    rss
        :math:`e^\top W e` at ``mean`` ``[B]``.
    n_obs
        Observed entries per state ``[B]``.
    prior_precision
        Diagonal prior precision per observed entry, ``[d]`` or ``[B, d]`` (the
        objective's :math:`\rho/d\,\sigma^{-2}`).
    weighted_jacobian
        :math:`W J` ``[B, n, d]`` for a GLS fit (default ``jacobian``: white noise).

    Returns
    -------
    CodePosterior

    Examples
    --------
    Ordinary least squares without prior: the classical covariance :math:`s^2 (J^\top J)^{-1}`.

    >>> J = torch.tensor([[[1.0], [1.0], [1.0], [1.0]]])  # the mean of 4 values
    >>> post = laplace_posterior(torch.zeros(1, 1), J, torch.tensor([3.0]), torch.tensor([4.0]),
    ...                          torch.zeros(1))
    >>> float(post.noise_var[0]), float(post.scale_tril[0, 0, 0] ** 2)  # s^2 = 3/(4-1), s^2/4
    (1.0, 0.25)
    """
    J = jacobian.double()
    WJ = J if weighted_jacobian is None else weighted_jacobian.double()
    if J.ndim != 3 or J.shape != WJ.shape or len(J) != len(mean) or J.shape[-1] != mean.shape[-1]:
        raise ValueError(f"jacobian (and weighted_jacobian) must be [B, n, d] = [{len(mean)}, n, "
                         f"{mean.shape[-1]}], got {tuple(J.shape)} and {tuple(WJ.shape)}")
    n = n_obs.double().reshape(-1)
    G = J.transpose(1, 2) @ WJ
    G = 0.5 * (G + G.transpose(1, 2))
    prior = prior_precision.double().to(G.device).expand(len(G), G.shape[-1])
    A = G + torch.diag_embed(n[:, None] * prior)
    LA = _cholesky_jitter(A, "normal matrix of the code")
    Ainv = torch.cholesky_inverse(LA)
    p_eff = (Ainv * G).sum((-2, -1))  # tr(A^-1 G), both symmetric
    dof = (n - p_eff).clamp_min(1.0)
    s2 = rss.double().reshape(-1).clamp_min(0.0) / dof
    cov = s2[:, None, None] * Ainv
    L = _cholesky_jitter(cov, "posterior covariance of the code")
    return CodePosterior(mean.detach(), L, s2, dof)


_LAPLACE_CHUNK = 2**20  # bound on states x points x code entries in one Jacobian pass


def laplace_codes(decoder: nn.Module, features: Tensor, y: Tensor, mask: Tensor, alpha: Tensor, *,
                  reg: float, code_mean: Tensor, code_std: Tensor, gls: Tensor | None = None,
                  chol: Tensor | None = None) -> CodePosterior:
    r"""The Laplace posterior of auto-decoded codes (the objective of :func:`encode_objective`).

    At the codes ``alpha`` found by :func:`gauss_newton_codes` (or :func:`adam_codes`),
    the decoder's Jacobian :math:`J` is taken at each state's own code (forward-mode
    autodiff), and :func:`laplace_posterior` gives
    :math:`\mathcal N(\hat\alpha, s^2 (J^\top W J + n\rho/d\,\mathrm{diag}\,\sigma^{-2})^{-1})`
    with :math:`s^2` the state's residual variance (GLS-whitened under ``gls``): the
    normal matrix of the Gauss–Newton steps at the optimum, scaled by the noise level
    of the fit. Fewer observed points or a noisier state give a wider posterior.

    Parameters
    ----------
    decoder, features, y, mask, reg, code_mean, code_std, gls, chol
        As in :func:`gauss_newton_codes`.
    alpha
        The fitted codes ``[B, d]``.

    Returns
    -------
    CodePosterior

    Examples
    --------
    >>> from xsciml.nn import FourierNet
    >>> net = FourierNet(2, 1, width=16, depth=2, input_scale=4.0, code_dim=3)
    >>> x, true = torch.rand(200, 2) * 2 - 1, torch.randn(1, 3) * 0.1
    >>> with torch.no_grad():
    ...     y = decode_codes(net, x, true) + 0.01 * torch.randn(1, 200, 1)
    >>> kw = dict(reg=0.0, code_mean=torch.zeros(3), code_std=torch.ones(3))
    >>> a = gauss_newton_codes(net, x, y, torch.ones_like(y), torch.zeros(1, 3), steps=10, **kw)
    >>> post = laplace_codes(net, x, y, torch.ones_like(y), a, **kw)
    >>> post.scale_tril.shape, round(float(post.noise_var[0]) ** 0.5, 2)
    (torch.Size([1, 3, 3]), 0.01)
    """
    from torch.func import jacfwd, vmap

    _check_encode_inputs(features, y, mask, alpha, code_mean, code_std, gls, chol)
    B, d = alpha.shape
    a = alpha.detach()

    def field(code: Tensor) -> Tensor:  # [d] -> [P*C]
        return decode_codes(decoder, features, code).reshape(-1)

    per = max(1, _LAPLACE_CHUNK // max(1, y.shape[1] * d))  # states per forward-mode pass (memory)
    with torch.no_grad():
        J = torch.cat([vmap(jacfwd(field))(a[i:i + per]).double() for i in range(0, B, per)])  # [B, P*C, d]
        e = ((decode_codes(decoder, features, a) - y) * mask).reshape(B, -1)
    m = mask.reshape(B, -1).double()
    Jm = m[:, :, None] * J
    if gls is None:
        WJ = None
        rss = e.double().pow(2).sum(-1)
    else:
        assert chol is not None  # given with gls (_check_encode_inputs)
        WJ = _gls_apply(Jm, gls.double(), chol.double())
        rss = gls_quadratic(e.double(), gls.double(), chol.double())
    prior = (float(reg) / d) / code_std.reshape(-1).double().to(J.device) ** 2
    return laplace_posterior(a, Jm, rss, m.sum(-1), prior, weighted_jacobian=WJ)


def sample_codes(mean: Tensor, scale_tril: Tensor, members: int, *, seed: int | None = 0) -> Tensor:
    r"""Draw ``members`` codes per state from :math:`\mathcal N(\text{mean}, L L^\top)`.

    With :class:`torch.distributions.MultivariateNormal` on the CPU (float64), the
    global generator seeded by ``seed`` inside :func:`torch.random.fork_rng` (so the
    caller's random state is left as it was); ``seed=None`` draws from the current
    state.

    Parameters
    ----------
    mean
        Codes ``[B, d]``.
    scale_tril
        Lower Cholesky factors ``[B, d, d]`` of the covariances.
    members
        Draws per state.
    seed
        Seed of the draws.

    Returns
    -------
    Tensor ``[members, B, d]`` in the dtype of ``mean``.

    Examples
    --------
    >>> draws = sample_codes(torch.zeros(2, 3), 0.5 * torch.eye(3).expand(2, 3, 3), 4000, seed=0)
    >>> draws.shape, round(float(draws.std()), 1)
    (torch.Size([4000, 2, 3]), 0.5)
    """
    from torch.distributions import MultivariateNormal

    dist = MultivariateNormal(mean.detach().double().cpu(), scale_tril=scale_tril.double().cpu())
    if seed is None:
        draws = dist.sample((int(members),))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            draws = dist.sample((int(members),))
    return draws.to(mean.dtype)
