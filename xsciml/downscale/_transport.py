r"""The optimal-transport kernels behind :func:`xsciml.downscale.ot.fit_debias` (pure torch / POT).

Linear (Gaussian) maps, POT's exact and entropic solvers, and the blocked log-domain
Sinkhorn (:func:`sinkhorn_potentials`) with its out-of-sample entropic map
(:func:`entropic_map`); the fitted maps are :class:`TransportMap`. No xarray here:
:mod:`xsciml.downscale.ot` turns snapshots into the matrices these take.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._utils import progress_bar, resolve_device

_DENSE_LIMIT = 10**8  # entries of a dense n x m cost matrix (800 MB in float64)
_CPU_BLOCK = 2**22  # elements of one [rows, m] block of the blocked Sinkhorn on the CPU
_GPU_BLOCK = 2**26


# =========================================================================== maps
@dataclass
class TransportMap:
    """One fitted transport map in standardised units.

    ``kind="linear"``: ``T(z) = z @ A + b``. ``kind="kernel"``:
    ``T(z) = [z +] softmax_j(log_w_j - |z - support_j|^2 / eps) @ values``.
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    eps: float = 0.0
    residual: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, z: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        t = {k: v.to(z.device) for k, v in self.tensors.items()}
        if self.kind == "linear":
            return z.to(t["A"].dtype) @ t["A"] + t["b"]
        return entropic_map(z, t["support"], t["log_w"], self.eps, values=t["values"],
                            residual=self.residual, batch_size=batch_size)


def _block_rows(m: int, batch_size: int | None, device: torch.device) -> int:
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (rows per block), got {batch_size!r}")
        return int(batch_size)
    budget = _GPU_BLOCK if device.type == "cuda" else _CPU_BLOCK
    return max(1, budget // max(m, 1))


def entropic_map(z: Any, support: Any, log_w: Any, eps: float, *, values: Any = None,
                 residual: bool = False, batch_size: int | None = None) -> torch.Tensor:
    r"""Evaluate a kernel (entropic) map at new points, block by block.

    .. math::

        T(z) = [z +] \sum_j \mathrm{softmax}_j\big(w_j - \lVert z - s_j\rVert^2/\varepsilon\big)\, v_j

    With ``w = g / eps + log b`` (dual potential and weights of the support ``s = y``)
    and ``v = y`` this is the entropic OT map; ``values`` defaults to ``support``.

    Parameters
    ----------
    z : tensor ``[N, d]``
        Points to map (any float dtype; computed in float32 unless ``support`` is float64).
    support : tensor ``[m, d]``
    log_w : tensor ``[m]``
        Log-weights :math:`w_j`.
    eps : float
        Temperature (same units as the squared distances).
    values : tensor ``[m, k]``, optional
        What is averaged (default ``support``).
    residual : bool
        Add ``z`` to the average (displacement maps).
    batch_size : int, optional
        Rows of ``z`` per block (default: about 4M block elements on the CPU).

    Returns
    -------
    torch.Tensor ``[N, k]`` on the device of ``support``.

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([[0.0], [10.0]])
    >>> entropic_map(torch.tensor([[0.1], [9.0]]), y, torch.zeros(2), eps=1.0).round()
    tensor([[ 0.],
            [10.]])
    """
    support = torch.as_tensor(support)
    dtype = support.dtype if support.dtype == torch.float64 else torch.float32
    support = support.to(dtype)
    dev = support.device
    z = torch.as_tensor(z).to(device=dev, dtype=dtype)
    log_w = torch.as_tensor(log_w).to(device=dev, dtype=dtype)
    values = support if values is None else torch.as_tensor(values).to(device=dev, dtype=dtype)
    if z.ndim != 2 or z.shape[1] != support.shape[1]:
        raise ValueError(f"z must be [N, {support.shape[1]}], got {tuple(z.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    rows = _block_rows(support.shape[0], batch_size, dev)
    bias = log_w - (support * support).sum(1) / eps  # [m]
    out = torch.empty((z.shape[0], values.shape[1]), dtype=dtype, device=dev)
    for i in range(0, z.shape[0], rows):
        zb = z[i:i + rows]
        s = torch.addmm(bias, zb, support.T, alpha=2.0 / eps)  # (w_j - |y|^2/eps + 2 z.y/eps)
        s = torch.softmax(s, dim=1)
        out[i:i + rows] = s @ values
    if residual:
        out += z
    return out


def sinkhorn_potentials(x: Any, y: Any, eps: float, *, a: Any = None, b: Any = None,
                        max_iter: int = 1000, tol: float = 1e-4, batch_size: int | None = None,
                        warm_start: int | None = 2048, seed: int = 0, device: Any = "auto",
                        progress: bool | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    r"""Entropic OT potentials by log-domain Sinkhorn, never forming the cost matrix.

    Solves :math:`\min_P \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P \,\|\, a b^\top)`
    for :math:`C_{ij} = \lVert x_i - y_j\rVert^2`. The plan is
    :math:`P_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)`; the updates are

    .. math::

        f_i \leftarrow -\varepsilon \log \sum_j b_j e^{(g_j - C_{ij})/\varepsilon},\qquad
        g_j \leftarrow -\varepsilon \log \sum_i a_i e^{(f_i - C_{ij})/\varepsilon}.

    Each iteration streams over blocks of ``batch_size`` rows: the block of exponents
    comes from one matrix product (:math:`C = |x|^2 + |y|^2 - 2xy^\top`, with the
    stabilising row shift folded into the product as an extra column), its row
    log-sum-exp gives the new :math:`f` of those rows, and the same exponentials,
    reweighted by the new :math:`f`, accumulate the column sums of the :math:`g` update
    (columns whose sum underflows are recomputed exactly in the log domain). So one
    iteration costs one :math:`n \times m \times d` product and memory stays
    :math:`O(Bm)`.

    Two accelerations, neither changing the solution: a *warm start* (plain Sinkhorn on
    random subsamples of ``warm_start`` points of each side, its potential extended to
    every :math:`y_j` by the :math:`c`-transform), and *over-relaxation*
    (:math:`f \leftarrow (1-\omega)f + \omega f^{new}`, likewise :math:`g`, with
    :math:`\omega = 2 / (1 + \sqrt{1 - \rho})` from the observed linear rate
    :math:`\rho` of plain Sinkhorn; back to :math:`\omega = 1` if the error grows
    tenfold). Stops when the source-marginal violation :math:`\sum_i |P\mathbf 1 - a|_i`
    (measured for free on the next pass) is below ``tol``, or when float32 round-off
    (about 1e-6) stops progress; the final update is unrelaxed, so the returned
    potentials satisfy the target marginal exactly.

    Parameters
    ----------
    x : array or tensor ``[n, d]``
    y : array or tensor ``[m, d]``
    eps : float
        Entropic regularisation, in the units of the squared distances.
    a : optional
        Marginal weights of the source points (default uniform); normalised to sum to one.
    b : optional
        Marginal weights of the target points (default uniform); normalised to sum to one.
    max_iter : int
    tol : float
    batch_size : int, optional
        Rows per block (default: about 4M elements per block on the CPU, 64M on a GPU).
    warm_start : int, optional
        Subsample size of the warm start (used when both sides are over twice as large
        and the weights are uniform); ``None`` or 0 disables it.
    seed : int
        Seed of the warm-start subsamples.
    device : str or torch.device
        ``"auto"``: the GPU when there is one.
    progress : bool, optional
        Progress bar over iterations.

    Returns
    -------
    f : tensor ``[n]``, g : tensor ``[m]``
        Dual potentials (float64, on ``device``).
    info : dict
        ``n_iter`` (full-size iterations), ``marginal_error``, ``converged``,
        ``stalled``, ``omega``, ``eps``, ``warm_start_iter``, ``errors`` (the marginal
        error after each iteration but the first).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0]]); y = torch.tensor([[0.0], [1.0]])
    >>> f, g, info = sinkhorn_potentials(x, y, eps=0.01, device="cpu", progress=False)
    >>> info["converged"], entropic_map(x, y, g / 0.01, 0.01).round(decimals=3).ravel().tolist()
    (True, [0.0, 1.0])
    """
    dev = resolve_device(device)
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dev, torch.float32)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).to(dev, torch.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be [n, d] and [m, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    if not torch.isfinite(x).all() or not torch.isfinite(y).all():
        raise ValueError("x and y must be finite (no NaN or inf)")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")

    def weights(w: Any, k: int, name: str) -> torch.Tensor:
        if w is None:
            return torch.full((k,), -math.log(k), dtype=torch.float64, device=dev)
        w = torch.as_tensor(np.asarray(w, dtype=np.float64), device=dev)
        if w.shape != (k,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"{name} must be {k} finite non-negative weights with a positive sum")
        return torch.log(w / w.sum())

    if warm_start is not None and (isinstance(warm_start, bool) or not isinstance(warm_start, int)
                                   or warm_start < 0):
        raise ValueError(f"warm_start must be None or a non-negative integer, got {warm_start!r}")
    log_a, log_b = weights(a, n, "a"), weights(b, m, "b")
    rows = _block_rows(m, batch_size, dev)
    g0, omega0, warm_iter = None, None, 0
    if warm_start and a is None and b is None and min(n, m) > 2 * warm_start:
        gen = torch.Generator().manual_seed(seed)
        ix = torch.randperm(n, generator=gen)[:warm_start].to(dev)
        iy = torch.randperm(m, generator=gen)[:warm_start].to(dev)
        k = int(warm_start)
        lw = torch.full((k,), -math.log(k), dtype=torch.float64, device=dev)
        fs, _, sub = _sinkhorn_loop(x[ix], y[iy], eps, lw, lw, None, None, max_iter, max(tol, 1e-4),
                                    _block_rows(k, batch_size, dev), False)
        g0 = -eps * _column_lse(x[ix], y, fs, lw, eps, rows * m)
        omega0, warm_iter = (sub["omega"] if sub["omega"] > 1.0 else None), sub["n_iter"]
    f, g, info = _sinkhorn_loop(x, y, eps, log_a, log_b, g0, omega0, max_iter, tol, rows, progress)
    info["warm_start_iter"] = warm_iter
    return f, g, info


def _sinkhorn_loop(x: torch.Tensor, y: torch.Tensor, eps: float, log_a: torch.Tensor,
                   log_b: torch.Tensor, g0: torch.Tensor | None, omega0: float | None,
                   max_iter: int, tol: float, rows: int, progress: bool | None,
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The blocked, over-relaxed log-domain Sinkhorn iterations (see sinkhorn_potentials)."""
    dev = x.device
    n, m = x.shape[0], y.shape[0]
    a_w = log_a.exp()
    x2 = (x.double() ** 2).sum(1)
    y2 = (y.double() ** 2).sum(1)
    xs = x * (2.0 / eps)
    y1 = torch.cat([y, y.new_ones((m, 1))], 1)  # the extra column carries the row shift
    f = torch.zeros(n, dtype=torch.float64, device=dev)
    g = torch.zeros(m, dtype=torch.float64, device=dev) if g0 is None else g0.clone()
    shift = None  # row log-sum-exps of the last pass: the next pass's stabilising shifts
    err, errs, history = math.inf, [], []
    stalled = False
    omega, pending = 1.0, omega0  # relaxation starts once f has a previous value
    n_iter = 0
    tiny = 1e-20  # relative to b_j: smaller column sums are recomputed in the log domain
    bar = progress_bar(range(max_iter), desc="sinkhorn", progress=progress, leave=False)
    for it in bar:
        # S_ij = log b_j + (g_j - |y_j|^2 + 2 x_i.y_j) / eps - shift_i  (|x_i|^2 term added after)
        bias = (log_b + (g - y2) / eps).to(torch.float32)
        col = torch.zeros((2, m), dtype=torch.float64, device=dev)  # for the exact and relaxed f
        f_new = torch.empty_like(f)
        new_shift = torch.empty_like(f)
        for i in range(0, n, rows):
            sl = slice(i, i + rows)
            if shift is None:
                s = torch.addmm(bias, xs[sl], y.T)
                mx = s.amax(dim=1)
                s.sub_(mx[:, None]).exp_()
            else:
                mx = shift[sl].to(torch.float32)
                s = torch.addmm(bias, torch.cat([xs[sl], -mx[:, None]], 1), y1.T).exp_()
            r = s.sum(dim=1)
            if not bool(((r > 1e-20) & torch.isfinite(r)).all()):  # a shift too far off: exact
                s = torch.addmm(bias, xs[sl], y.T)
                mx = s.amax(dim=1)
                s.sub_(mx[:, None]).exp_()
                r = s.sum(dim=1)
            r = r.double()
            lse = mx.double() + torch.log(r)
            new_shift[sl] = lse
            f_new[sl] = -eps * (lse - x2[sl] / eps)
            # sum_i a_i exp((f_i - C_ij)/eps) = exp(-log b_j - g_j/eps) sum_i (a_i/r_i) E_ij for
            # f = f_new; a relaxed f = (1-w) f_old + w f_new multiplies a_i/r_i by
            # exp((1-w)(f_old - f_new)/eps)
            w0 = a_w[sl] / r
            if omega == 1.0:
                col[0] += (w0.to(torch.float32) @ s).double()
            else:
                rel = ((1.0 - omega) * (f[sl] - f_new[sl]) / eps).clamp(-60.0, 60.0)
                col += (torch.stack([w0, w0 * rel.exp()]).to(torch.float32) @ s).double()
        shift = new_shift
        if it > 0:
            err = float((a_w * torch.expm1((f - f_new) / eps).abs()).sum())
            errs.append(err)
            history.append(err)
        done = err < tol
        if omega != 1.0 and err > 10.0 * min(errs):
            omega, pending, errs = 1.0, None, [math.nan]  # diverging: plain Sinkhorn for good
        relax = omega != 1.0 and not done
        c = col[1] if relax else col[0]
        f_rel = (1.0 - omega) * f + omega * f_new if relax else f_new
        log_col = torch.log(c) - log_b - g / eps
        bad = ~(c > tiny * torch.exp(log_b)) | ~torch.isfinite(log_col)
        if bad.any():  # underflowed columns: exact log-domain log-sum-exp over all rows
            log_col[bad] = _column_lse(x, y[bad], f_rel, log_a, eps, rows * m)
        g = (1.0 - omega) * g - omega * eps * log_col if relax else -eps * log_col
        f = f_rel
        n_iter = it + 1
        bar.set_postfix(err=f"{err:.2e}", omega=f"{omega:.2f}", refresh=False)
        if done:
            break
        if err < 1e-4 and len(errs) > 20 and min(errs[-10:]) > 0.5 * min(errs[:-10]):
            stalled = True  # float32 round-off floor (about 1e-6): no further progress
            break
        if pending is not None:
            omega, pending = pending, None
        elif omega == 1.0 and len(errs) >= 4 and not math.isnan(errs[0]) and errs[-1] < 0.5:
            rho = (errs[-1] / errs[-3]) ** 0.5  # linear convergence rate of plain Sinkhorn
            if 0.0 < rho < 1.0:
                omega = min(1.8, 2.0 / (1.0 + math.sqrt(1.0 - rho)))
    bar.close()
    if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
        raise FloatingPointError(
            "Sinkhorn produced non-finite potentials; increase reg (eps) or check the inputs."
        )
    return f, g, {"n_iter": n_iter, "marginal_error": err, "converged": bool(err < tol),
                  "stalled": stalled, "omega": omega, "eps": float(eps), "errors": history}


def _column_lse(x: torch.Tensor, yb: torch.Tensor, f: torch.Tensor, log_a: torch.Tensor,
                eps: float, budget: int) -> torch.Tensor:
    """``log sum_i a_i exp((f_i - |x_i - y_j|^2) / eps)`` for every row ``y_j`` of ``yb``.

    Blocked over the columns ``yb`` (blocks of about ``budget`` elements), float64.
    """
    xd, yd = x.double(), yb.double()
    cols = max(1, budget // max(x.shape[0], 1))
    pre = (log_a + (f - (xd**2).sum(1)) / eps)[:, None]  # [n, 1]
    out = torch.empty(yb.shape[0], dtype=torch.float64, device=x.device)
    for j in range(0, yb.shape[0], cols):
        yj = yd[j:j + cols]
        t = torch.addmm(pre - (yj**2).sum(1)[None, :] / eps, xd, yj.T, alpha=2.0 / eps)
        out[j:j + cols] = torch.logsumexp(t, dim=0)
    return out


# =========================================================================== fitting
def fit_linear(X: np.ndarray, Y: np.ndarray, reg_cov: float) -> TransportMap:
    import ot

    d = X.shape[1]

    def cov(Z: np.ndarray) -> np.ndarray:
        C = np.atleast_2d(np.cov(Z, rowvar=False))
        return (1.0 - reg_cov) * C + reg_cov * np.trace(C) / d * np.eye(d)

    ms, mt = X.mean(0), Y.mean(0)
    A, b = ot.gaussian.bures_wasserstein_mapping(ms, mt, cov(X), cov(Y))
    A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1)
    if not (np.isfinite(A).all() and np.isfinite(b).all()):
        raise FloatingPointError(
            "the Gaussian (Bures) map is not finite: the snapshot covariance is singular; "
            "increase reg_cov (e.g. 0.01) or use fewer grid points."
        )
    return TransportMap("linear", {"A": torch.from_numpy(A), "b": torch.from_numpy(b)})


def _mean_cost(X: np.ndarray, Y: np.ndarray) -> float:
    """``mean_ij |x_i - y_j|^2`` without the matrix."""
    return float((X**2).sum(1).mean() + (Y**2).sum(1).mean() - 2.0 * X.mean(0) @ Y.mean(0))


def _check_dense(n: int, m: int, method: str) -> None:
    if n * m > _DENSE_LIMIT:
        raise ValueError(
            f"method={method!r} builds a dense {n} x {m} cost matrix ({8 * n * m / 1e9:.1f} GB); "
            "use method='scalable' (blocked Sinkhorn, never builds it) for this many snapshots."
        )


def fit_entropic(X: np.ndarray, Y: np.ndarray, reg: float, max_iter: int, tol: float) -> TransportMap:
    import ot

    _check_dense(len(X), len(Y), "entropic")
    M = ot.dist(X, Y)
    eps = reg * float(M.mean())
    a, b = np.full(len(X), 1.0 / len(X)), np.full(len(Y), 1.0 / len(Y))
    _, log = ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", numItermax=max_iter,
                         stopThr=tol, log=True)
    log_w = np.asarray(log["log_v"], dtype=np.float64)  # P = diag(u) K diag(v): log v = g/eps + log b
    info = {"n_iter": int(log.get("niter", -1)), "marginal_error": float(log["err"][-1]) if log["err"] else None}
    return TransportMap("kernel", {"support": torch.from_numpy(Y.astype(np.float32)),
                           "log_w": torch.from_numpy(log_w.astype(np.float32)),
                           "values": torch.from_numpy(Y.astype(np.float32))}, eps=eps, info=info)


def fit_emd(X: np.ndarray, Y: np.ndarray, reg: float, max_iter: int) -> TransportMap:
    import ot

    _check_dense(len(X), len(Y), "emd")
    M = ot.dist(X, Y)
    a, b = np.full(len(X), 1.0 / len(X)), np.full(len(Y), 1.0 / len(Y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        P, log = ot.emd(a, b, M, numItermax=max_iter, log=True)
    if log.get("warning"):
        warnings.warn(f"ot.emd: {log['warning']} Increase max_iter (now {max_iter}).",
                      RuntimeWarning, stacklevel=3)
    D = (P @ Y) / a[:, None] - X
    h = reg * 2.0 * float(X.var(0).sum())  # reg x mean squared distance between snapshots
    if not h > 0:
        raise ValueError("all model snapshots are identical; the displacement map is undefined.")
    return TransportMap("kernel", {"support": torch.from_numpy(X.astype(np.float32)),
                           "log_w": torch.zeros(len(X), dtype=torch.float32),
                           "values": torch.from_numpy(D.astype(np.float32))},
                eps=h, residual=True, info={"cost": float(log["cost"])})


def fit_scalable(X: np.ndarray, Y: np.ndarray, reg: float, max_iter: int, tol: float,
                  batch_size: int | None, max_support: int | None, device: Any,
                  rng: np.random.Generator, progress: bool | None) -> TransportMap:
    if max_support is not None and len(Y) > max_support:
        Y = Y[np.sort(rng.choice(len(Y), size=max_support, replace=False))]
    eps = reg * _mean_cost(X, Y)
    dev = resolve_device(device)
    _, g, info = sinkhorn_potentials(X, Y, eps, max_iter=max_iter, tol=tol, batch_size=batch_size,
                                     seed=int(rng.integers(2**31)), device=dev, progress=progress)
    if not info["converged"]:
        why = ("float32 round-off stopped progress; use a larger tol" if info["stalled"]
               else "increase max_iter or reg")
        warnings.warn(
            f"Sinkhorn stopped after {info['n_iter']} iterations with marginal error "
            f"{info['marginal_error']:.2e} > tol={tol}: {why}.", RuntimeWarning, stacklevel=3)
    log_w = (g / eps - math.log(len(Y))).float().cpu()
    Yt = torch.from_numpy(Y.astype(np.float32))
    return TransportMap("kernel", {"support": Yt, "log_w": log_w, "values": Yt}, eps=eps,
                info={"n_iter": info["n_iter"], "marginal_error": info["marginal_error"],
                      "warm_start_iter": info["warm_start_iter"], "omega": info["omega"]})
