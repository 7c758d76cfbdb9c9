r"""Debias coarse model output with optimal transport between whole snapshots.

"Debias Coarsely" (Wan et al., NeurIPS 2023): every coarse snapshot (all the grid points
of one time step, flattened) is a point of :math:`\mathbb R^d`. Given *unpaired*
snapshots :math:`x_1..x_n` of a climate model and :math:`y_1..y_m` of a reference
(e.g. coarsened observations or reanalysis), :func:`fit_debias` learns a map
:math:`T` pushing the model's snapshot distribution onto the reference's, and
:meth:`Debias.transform` applies it to new model snapshots (out of sample).

Methods (``method=``):

``"gaussian"``
    Bures (linear Monge) map between the Gaussian fits of the two clouds,
    :math:`T(x) = \mu_t + A(x - \mu_s)` with
    :math:`A = \Sigma_s^{-1/2}(\Sigma_s^{1/2}\Sigma_t\Sigma_s^{1/2})^{1/2}\Sigma_s^{-1/2}`
    (:func:`ot.gaussian.bures_wasserstein_mapping`). Both covariances are shrunk towards
    a scaled identity, :math:`\Sigma \leftarrow (1-\lambda)\Sigma + \lambda\,
    \mathrm{tr}(\Sigma)/d\; I` with :math:`\lambda` = ``reg_cov``, so the map exists
    when :math:`d` approaches :math:`n`. Cheap, exact for affine biases.
``"entropic"``
    Entropic OT solved by POT's log-domain Sinkhorn (:func:`ot.sinkhorn`, dense
    :math:`n \times m` cost), extended out of sample by the *entropic map*
    (Pooladian & Niles-Weed 2021)

    .. math::

        T(x) = \sum_j \frac{b_j \exp\big((g_j - c(x, y_j))/\varepsilon\big)}
                           {\sum_k b_k \exp\big((g_k - c(x, y_k))/\varepsilon\big)}\, y_j ,
        \qquad c(x, y) = \lVert x - y\rVert^2 ,

    with :math:`g` the reference-side dual potential. On a training snapshot it equals
    the barycentric projection of the Sinkhorn plan.
``"emd"``
    Exact OT (:func:`ot.emd`, network simplex; small :math:`n`). Each training snapshot
    :math:`x_i` gets the displacement :math:`D_i = \bar y_i - x_i` to its barycentric
    image :math:`\bar y_i = \sum_j P_{ij} y_j / a_i`; a new snapshot moves by the
    kernel-weighted displacement of the training snapshots,
    :math:`T(x) = x + \sum_i \mathrm{softmax}_i(-\lVert x - x_i\rVert^2 / h)\, D_i`,
    with bandwidth :math:`h` = ``reg`` times the mean squared distance between training
    snapshots (``reg -> 0``: the nearest training snapshot's displacement).
``"scalable"`` (alias ``"sinkhorn_torch"``)
    The same entropic problem and map as ``"entropic"``, solved by a log-domain
    Sinkhorn in torch that never builds the :math:`n \times m` cost matrix
    (:func:`sinkhorn_potentials`): costs and log-sum-exps are computed block by block
    of rows, on the GPU when there is one, so memory is :math:`O((n + m)d + B m)` for
    blocks of :math:`B` rows. The map stores the reference snapshots (or a random
    subsample of ``max_support`` of them) and their potential.

Entropic methods are scale free: :math:`\varepsilon` = ``reg`` times the mean cost
:math:`\frac1{nm}\sum_{ij}\lVert x_i - y_j\rVert^2`. Inputs are standardised before OT
(``standardize``): ``"global"`` removes the pooled per-point mean and divides by one
pooled standard deviation, which changes no transport geometry (only numerics);
``"per-dim"`` divides each grid point by its own pooled standard deviation (a different
cost); ``"none"`` only centres. The maps act in standardised units and are undone exactly, so
outputs are in physical units.

Snapshots are unpaired: model and reference may have different lengths and calendars
(only the groups of ``group="time.month"`` / ``"time.season"`` are read from the
times, with a separate map per group as in xsdba). Units are converted with
:mod:`xsciml.units` (pint): the map works in the reference's units, so e.g. a model in K
or ``kg m-2 s-1`` and a reference in degC or ``mm day-1`` are fine; units of other
dimensions are refused.
Grid points that are NaN in every snapshot (a land mask) are left out of the OT and stay
NaN; the mask must be the same in both datasets.

Examples
--------
>>> import numpy as np, xarray as xr
>>> from xsciml.downscale.ot import fit_debias
>>> rng = np.random.default_rng(0)
>>> ref = xr.DataArray(rng.normal(size=(200, 2, 3)), dims=("time", "y", "x"), name="tas")
>>> mod = 2.0 * xr.DataArray(rng.normal(size=(150, 2, 3)), dims=("time", "y", "x"), name="tas") + 5
>>> deb = fit_debias(mod, ref, method="gaussian", progress=False)
>>> out = deb.transform(mod)
>>> bool(abs(float(out.mean())) < 0.2), bool(abs(float(out.std()) - 1.0) < 0.2)
(True, True)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import xarray as xr

from .._grid import Grid, as_dataset, sample_info
from .._utils import check_numeric, progress_bar, resolve_device
from ..base import Estimator, append_history, output_attrs, register_estimator
from ..units import units_of as _units_of

log = logging.getLogger(__name__)

__all__ = ["fit_debias", "Debias", "sinkhorn_potentials", "entropic_map", "DEBIAS_METHODS"]

#: Values accepted by ``fit_debias(method=...)``.
DEBIAS_METHODS: tuple[str, ...] = ("gaussian", "entropic", "emd", "scalable")
_ALIASES = {"sinkhorn_torch": "scalable"}
_STANDARDIZE = ("global", "per-dim", "none")
_DENSE_LIMIT = 10**8  # entries of a dense n x m cost matrix (800 MB in float64)
_CPU_BLOCK = 2**22  # elements of one [rows, m] block of the blocked Sinkhorn on the CPU
_GPU_BLOCK = 2**26


# =========================================================================== units
def _convert(da: xr.DataArray, src: str | None, dst: str | None, what: str,
             against: str = "the reference's") -> xr.DataArray:
    """``da`` from ``src`` to ``dst`` units (see :mod:`xsciml.units`), clear error otherwise."""
    from ..units import convert

    if src is None or dst is None:
        return da
    try:
        return convert(da, src, dst, variable=da.name if da.name is not None else what)
    except ValueError as err:
        raise ValueError(f"{what} must be in units convertible to {against} ({dst!r}): {err}") from None


# =========================================================================== groups
_GROUPINGS = ("month", "season")


def _parse_group(group: str | None, sample_dim: str) -> str | None:
    if group is None:
        return None
    if not isinstance(group, str):
        raise TypeError(f"group must be None or a string such as '{sample_dim}.month', got {group!r}")
    prefix, _, prop = group.partition(".")
    if prefix != sample_dim or prop not in _GROUPINGS:
        raise ValueError(
            f"group={group!r} is not supported; use None, '{sample_dim}.month' or "
            f"'{sample_dim}.season' (the prefix is the sample dimension)."
        )
    return prop


def _group_labels(da: xr.DataArray, sample_dim: str, prop: str | None, what: str) -> np.ndarray:
    """One string label per snapshot (``"all"`` without grouping)."""
    n = int(da.sizes[sample_dim]) if sample_dim in da.dims else 1
    if prop is None:
        return np.full(n, "all", dtype=object)
    if sample_dim not in da.dims:
        raise ValueError(
            f"{what} has no {sample_dim!r} dimension, but the debiasing maps are grouped by "
            f"'{sample_dim}.{prop}': give snapshots along {sample_dim!r}."
        )
    if sample_dim not in da.coords:
        raise ValueError(
            f"{what} has no {sample_dim!r} coordinate; grouping by '{sample_dim}.{prop}' needs "
            "the snapshot times (datetime64 or cftime)."
        )
    coord = da[sample_dim]
    try:
        labels = getattr(coord.dt, prop).values
    except (TypeError, AttributeError) as err:
        raise ValueError(
            f"cannot group {what} by '{sample_dim}.{prop}': its {sample_dim!r} coordinate has "
            f"dtype {coord.dtype} ({err}); decode the times (datetime64 or cftime) first."
        ) from None
    return np.asarray([str(v) for v in np.asarray(labels).ravel()], dtype=object)


# =========================================================================== maps
@dataclass
class _Map:
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
def _fit_linear(X: np.ndarray, Y: np.ndarray, reg_cov: float) -> _Map:
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
    return _Map("linear", {"A": torch.from_numpy(A), "b": torch.from_numpy(b)})


def _mean_cost(X: np.ndarray, Y: np.ndarray) -> float:
    """``mean_ij |x_i - y_j|^2`` without the matrix."""
    return float((X**2).sum(1).mean() + (Y**2).sum(1).mean() - 2.0 * X.mean(0) @ Y.mean(0))


def _check_dense(n: int, m: int, method: str) -> None:
    if n * m > _DENSE_LIMIT:
        raise ValueError(
            f"method={method!r} builds a dense {n} x {m} cost matrix ({8 * n * m / 1e9:.1f} GB); "
            "use method='scalable' (blocked Sinkhorn, never builds it) for this many snapshots."
        )


def _fit_entropic(X: np.ndarray, Y: np.ndarray, reg: float, max_iter: int, tol: float) -> _Map:
    import ot

    _check_dense(len(X), len(Y), "entropic")
    M = ot.dist(X, Y)
    eps = reg * float(M.mean())
    a, b = np.full(len(X), 1.0 / len(X)), np.full(len(Y), 1.0 / len(Y))
    _, log = ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", numItermax=max_iter,
                         stopThr=tol, log=True)
    log_w = np.asarray(log["log_v"], dtype=np.float64)  # P = diag(u) K diag(v): log v = g/eps + log b
    info = {"n_iter": int(log.get("niter", -1)), "marginal_error": float(log["err"][-1]) if log["err"] else None}
    return _Map("kernel", {"support": torch.from_numpy(Y.astype(np.float32)),
                           "log_w": torch.from_numpy(log_w.astype(np.float32)),
                           "values": torch.from_numpy(Y.astype(np.float32))}, eps=eps, info=info)


def _fit_emd(X: np.ndarray, Y: np.ndarray, reg: float, max_iter: int) -> _Map:
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
    return _Map("kernel", {"support": torch.from_numpy(X.astype(np.float32)),
                           "log_w": torch.zeros(len(X), dtype=torch.float32),
                           "values": torch.from_numpy(D.astype(np.float32))},
                eps=h, residual=True, info={"cost": float(log["cost"])})


def _fit_scalable(X: np.ndarray, Y: np.ndarray, reg: float, max_iter: int, tol: float,
                  batch_size: int | None, max_support: int | None, device: Any,
                  rng: np.random.Generator, progress: bool | None) -> _Map:
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
    return _Map("kernel", {"support": Yt, "log_w": log_w, "values": Yt}, eps=eps,
                info={"n_iter": info["n_iter"], "marginal_error": info["marginal_error"],
                      "warm_start_iter": info["warm_start_iter"], "omega": info["omega"]})


# =========================================================================== data
def _resolve_method(method: str) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {DEBIAS_METHODS}, got {method!r}")
    method = _ALIASES.get(method, method)
    if method not in DEBIAS_METHODS:
        raise ValueError(f"method must be one of {DEBIAS_METHODS} (or 'sinkhorn_torch'), got {method!r}")
    return method


def _as_variable(obj: Any, variable: str | None, argname: str) -> tuple[xr.DataArray, str]:
    if isinstance(obj, xr.DataArray):
        name = variable if variable is not None else (str(obj.name) if obj.name is not None else "values")
        return obj.rename(name), name
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"{argname} must be an xarray DataArray or Dataset, got {type(obj).__name__}")
    try:
        ds, names = as_dataset(obj, variable, argname)
    except ValueError:
        raise ValueError(
            f"{argname} has several data variables {list(obj.data_vars)}; name the one to "
            "debias with variable=..."
        ) from None
    return ds[names[0]], names[0]


def _matrix(da: xr.DataArray, grid: Grid, sample_dim: str, what: str) -> np.ndarray:
    """Snapshots ``[n, P]`` (float64), checked for inf."""
    check_numeric(da, what)
    arr = np.asarray(da.transpose(sample_dim, *grid.space_dims).values, dtype=np.float64)
    arr = arr.reshape(arr.shape[0], -1)
    if np.isinf(arr).any():
        raise ValueError(f"{what} contains {int(np.isinf(arr).sum())} infinite values; mask or fix them.")
    return arr


def _valid_points(arr: np.ndarray, grid: Grid, what: str, sample_dim: str) -> np.ndarray:
    nan = np.isnan(arr)
    masked = nan.all(0)
    partial = nan.any(0) & ~masked
    if partial.any():
        idx = np.unravel_index(int(np.flatnonzero(partial)[0]), grid.shape)
        where = dict(zip(grid.space_dims, (int(i) for i in idx), strict=True))
        raise ValueError(
            f"{what} is NaN at {int(partial.sum())} grid point(s) in only some snapshots (first at "
            f"index {where}); whole-snapshot OT needs complete snapshots. Drop those snapshots "
            f"(e.g. .dropna({sample_dim!r}, how='any')) or fill the gaps first."
        )
    if masked.all():
        raise ValueError(f"{what} is NaN everywhere; nothing to debias.")
    return ~masked


# =========================================================================== estimator
@register_estimator
class Debias(Estimator):
    """A fitted snapshot-to-snapshot debiasing map (see :func:`fit_debias`).

    Attributes
    ----------
    method : str
    variable : str
    sample_dim : str
    group : str or None
        ``"time.month"``, ``"time.season"`` or ``None``.
    groups : list of str
        Labels with a fitted map (``["all"]`` without grouping).
    units : str or None
        Units of the outputs (the reference's).
    info : dict
        Sizes, convergence and training periods.

    Examples
    --------
    >>> deb = fit_debias(model, reference, variable="tas", method="entropic")  # doctest: +SKIP
    >>> deb.transform(simulated)  # doctest: +SKIP
    """


    def __init__(self, *, method: str, variable: str, sample_dim: str, grid: Grid,
                 valid: np.ndarray, mean: np.ndarray, scale: np.ndarray, group: str | None,
                 maps: Mapping[str, _Map], units: str | None, model_units: str | None,
                 params: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> None:
        self.method = method
        self.variable = variable
        self.sample_dim = sample_dim
        self.grid = grid
        self.valid = np.asarray(valid, dtype=bool).reshape(-1)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.group = group
        self.maps = dict(maps)
        self.units = units
        self.model_units = model_units
        self.params = dict(params)
        self.info = dict(info or {})

    @property
    def groups(self) -> list[str]:
        """Group labels that have a map."""
        return list(self.maps)

    # ------------------------------------------------------------------ arrays
    def transform_array(self, x: np.ndarray, codes: Any = 0, *, device: Any = "cpu",
                        batch_size: int | None = None) -> np.ndarray:
        """Map snapshots given as an array ``[..., *space]`` (already in the output units).

        Parameters
        ----------
        x : ndarray ``[..., *space]``
            Snapshots on the training grid (space dims in the training order).
        codes : int or int array broadcastable to ``x.shape[:-len(space)]``
            Index into :attr:`groups` of each snapshot's map.
        device
            Where the maps run.
        batch_size
            Block size of the maps.

        Returns
        -------
        ndarray like ``x`` (float), NaN at the masked grid points.
        """
        k = len(self.grid.space_dims)
        x = np.asarray(x)
        if x.shape[x.ndim - k:] != tuple(self.grid.shape):
            raise ValueError(f"x must be [..., {', '.join(map(str, self.grid.shape))}], got {x.shape}")
        lead = x.shape[:x.ndim - k]
        flat = np.asarray(x, dtype=np.float64).reshape(-1, self.grid.n_points)
        codes = np.broadcast_to(np.asarray(codes), lead).reshape(-1)
        out = np.full(flat.shape, np.nan, dtype=np.float64)
        if flat.shape[0] == 0:
            return out.reshape(x.shape).astype(_out_dtype(x.dtype))
        vals = flat[:, self.valid]
        bad = ~np.isfinite(vals)
        if bad.any():
            raise ValueError(
                f"{int(bad.any(1).sum())} snapshot(s) of {self.variable!r} have NaN or inf at grid "
                "points that were valid in the training data; only complete snapshots can be mapped."
            )
        extra = np.isfinite(flat[:, ~self.valid])
        if extra.any():
            raise ValueError(
                f"{int(extra.any(1).sum())} snapshot(s) of {self.variable!r} have values at grid points "
                "that were NaN (masked) in every training snapshot; mask them (NaN) first."
            )
        dev = resolve_device(device)
        z = (vals - self.mean) / self.scale
        res = np.empty_like(z)
        labels = self.groups
        for c in np.unique(codes):
            rows = np.flatnonzero(codes == c)
            zt = torch.from_numpy(z[rows]).to(dev)
            res[rows] = self.maps[labels[int(c)]].apply(zt, batch_size).double().cpu().numpy()
        out[:, self.valid] = res * self.scale + self.mean
        return out.reshape(x.shape).astype(_out_dtype(x.dtype), copy=False)

    # ------------------------------------------------------------------ labeled
    def transform(self, simulated: xr.DataArray | xr.Dataset, *, device: Any = "auto",
                  batch_size: int | None = None) -> xr.DataArray | xr.Dataset:
        """Debias new model snapshots.

        Parameters
        ----------
        simulated : DataArray or Dataset
            Snapshots on the training grid (same space dims and coordinates, any order;
            any other dims, e.g. ``time`` or ``member``, are looped over). With grouped
            maps it needs the ``sample_dim`` times. Units are converted to the
            reference's (:mod:`xsciml.units`); a missing ``units`` attr is taken to be
            the training model's, with a warning. Dask input gives a lazy result, one task per chunk of the
            non-space dims (space must be one chunk).
        device : str or torch.device
            ``"auto"``: the GPU when there is one (per Dask worker).
        batch_size : int, optional
            Snapshots per block of the kernel maps.

        Returns
        -------
        DataArray or Dataset
            Same type, dims, coordinates and attrs as the input, with the debiased
            variable (in the reference's units) and provenance attrs added; a Dataset's
            other variables are kept unchanged.

        Raises
        ------
        KeyError
            If the variable is missing, or a snapshot's group has no fitted map.
        ValueError
            Another grid, incompatible units, incomplete snapshots, space split into
            several dask chunks.

        Examples
        --------
        >>> deb.transform(simulated)  # doctest: +SKIP
        """
        from ..parallel import apply_model, check_core_chunks

        is_da = isinstance(simulated, xr.DataArray)
        if is_da:
            ds = simulated.to_dataset(name=self.variable)
        elif isinstance(simulated, xr.Dataset):
            if self.variable not in simulated.data_vars:
                raise KeyError(
                    f"simulated has no variable {self.variable!r} (the map was fitted on it); data "
                    f"variables: {list(simulated.data_vars)}"
                )
            ds = simulated
        else:
            raise TypeError(f"simulated must be an xarray DataArray or Dataset, got {type(simulated).__name__}")
        (da,) = self.grid.check(ds)
        da = check_core_chunks(da, self.grid.space_dims, argname="simulated",
                               why="debiasing maps whole snapshots")
        src = _units_of(da)
        if src is None and self.units is not None:
            warnings.warn(
                f"simulated {self.variable!r} has no 'units' attribute; assuming "
                f"{self.model_units or self.units!r}, the units of the model data the map was "
                "fitted on. Set attrs['units'] to have it checked and converted.",
                UserWarning, stacklevel=2)
            src = self.model_units
        if self.units is not None and src is not None:
            da = _convert(da, src, self.units, f"simulated {self.variable!r}")
        codes = self._codes(da)
        args = [da]
        core: list[list[Hashable]] = [list(self.grid.space_dims)]
        kwargs: dict[str, Any] = {"batch_size": batch_size}
        if codes is None:
            kwargs["codes"] = 0
        else:
            if da.chunks is not None:
                codes = codes.chunk({self.sample_dim: da.chunksizes[self.sample_dim]})
            args.append(codes)
            core.append([])
        # one output core dims entry: one DataArray
        out = cast(xr.DataArray, apply_model(_transform_kernel, self, *args, input_core_dims=core,
                                             output_core_dims=[list(self.grid.space_dims)],
                                             output_dtypes=[_out_dtype(da.dtype)], device=device,
                                             kwargs=kwargs))
        orig = simulated if is_da else simulated[self.variable]
        out = out.transpose(*orig.dims).assign_coords(orig.coords)
        action = f"transform: {self.variable} debiased ({self.method} map)"
        attrs = output_attrs(orig.attrs, name=self.variable)
        if self.units is not None:
            attrs["units"] = self.units
        attrs.update(self._provenance(action, orig.attrs))
        out.attrs = attrs
        out.encoding = {k: v for k, v in orig.encoding.items()
                        if k not in ("scale_factor", "add_offset", "_FillValue", "dtype", "missing_value")}
        if is_da:
            return out.rename(simulated.name)
        res = simulated.assign({self.variable: out})
        res.attrs = {**simulated.attrs, "history": append_history(
            simulated.attrs.get("history"), f"{type(self).__name__}.{action}")}
        return res

    def __repr__(self) -> str:
        text = super().__repr__()
        notes = self.info.get("warnings") or []
        return text + (f"  [{len(notes)} warning(s) at fit time: see .info['warnings']]" if notes else "")

    def _codes(self, da: xr.DataArray) -> xr.DataArray | None:
        prop = _parse_group(self.group, self.sample_dim)
        if prop is None:
            return None
        labels = _group_labels(da, self.sample_dim, prop, "simulated")
        index = {lab: i for i, lab in enumerate(self.groups)}
        missing = sorted(set(labels) - set(index))
        if missing:
            raise KeyError(
                f"simulated data have snapshots in group(s) {missing} of {self.group!r}, which have no "
                f"fitted map (fitted: {self.groups}); fit with training data covering them."
            )
        return xr.DataArray(np.array([index[lab] for lab in labels], dtype=np.int64),
                            dims=(self.sample_dim,))

    # ------------------------------------------------------------------ state
    def _get_config(self) -> dict[str, Any]:
        gcfg, _ = self.grid.to_state()
        return {"method": self.method, "variable": self.variable, "sample_dim": self.sample_dim,
                "group": self.group, "units": self.units, "model_units": self.model_units,
                "params": self.params, "grid": gcfg, "info": self.info,
                "maps": [{"label": lab, "kind": mp.kind, "eps": mp.eps, "residual": mp.residual,
                          "info": mp.info} for lab, mp in self.maps.items()]}

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        _, tensors = self.grid.to_state()
        tensors.update(valid=torch.from_numpy(self.valid.astype(np.uint8)),
                       mean=torch.from_numpy(self.mean), scale=torch.from_numpy(self.scale))
        for i, mp in enumerate(self.maps.values()):
            tensors.update({f"map{i}.{k}": v for k, v in mp.tensors.items()})
        return tensors

    @classmethod
    def _from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Debias:
        maps = {}
        for i, entry in enumerate(config["maps"]):
            prefix = f"map{i}."
            t = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            maps[entry["label"]] = _Map(entry["kind"], t, eps=float(entry["eps"]),
                                        residual=bool(entry["residual"]), info=dict(entry["info"]))
        return cls(method=config["method"], variable=config["variable"],
                   sample_dim=config["sample_dim"], grid=Grid.from_state(config["grid"], tensors),
                   valid=tensors["valid"].cpu().numpy().astype(bool),
                   mean=tensors["mean"].cpu().numpy(), scale=tensors["scale"].cpu().numpy(),
                   group=config["group"], maps=maps, units=config["units"],
                   model_units=config["model_units"], params=config["params"], info=config["info"])

    def _provenance_extra(self) -> dict[str, Any]:
        extra = {"xsciml_debias_method": self.method}
        if self.group:
            extra["xsciml_debias_group"] = self.group
        for k in ("model_period", "reference_period"):
            if k in self.info:
                extra[f"xsciml_{k}"] = self.info[k]
        return extra


def _out_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def _transform_kernel(model: Debias, x: np.ndarray, *rest: np.ndarray, device: torch.device,
                      codes: Any = None, batch_size: int | None = None) -> np.ndarray:
    """Dask task body (module level, so tasks reference it by name)."""
    if rest:
        codes = rest[0]
    return model.transform_array(x, codes, device=device, batch_size=batch_size)


# =========================================================================== public fit
def fit_debias(simulated: xr.DataArray | xr.Dataset, reference: xr.DataArray | xr.Dataset, *,  # noqa: C901 - one flat pass of argument checks and fitting steps
               variable: str | None = None, method: str = "gaussian", sample_dim: str = "time",
               group: str | None = None, reg: float = 0.05, reg_cov: float = 1e-3,
               max_iter: int | None = None, tol: float | None = None, batch_size: int | None = None,
               max_support: int | None = None, standardize: str = "global",
               device: Any = "auto", seed: int | None = 0, progress: bool | None = None,
               ) -> Debias:
    r"""Learn an OT map from simulated snapshots to reference snapshots (unpaired).

    See :mod:`xsciml.downscale.ot` for the methods and formulas.

    Parameters
    ----------
    simulated : DataArray or Dataset
        Model-output snapshots along ``sample_dim`` (the historical run: xsdba's ``hist``);
        every other dim is space (flattened). Dask-backed
        input is loaded (the fit needs all snapshots).
    reference : DataArray or Dataset
        Reference snapshots, with the same space dims, sizes and coordinates as ``simulated``;
        lengths, calendars and time spans may differ.
    variable : str, optional
        Variable to debias (needed for a Dataset with several variables).
    method : {"gaussian", "entropic", "emd", "scalable"}
        ``"sinkhorn_torch"`` is an alias of ``"scalable"``.
    sample_dim : str
        Dimension indexing snapshots.
    group : str, optional
        ``"time.month"`` or ``"time.season"``: one map per group (groups present in
        both datasets; a warning lists the others).
    reg : float
        Entropic methods: :math:`\varepsilon` relative to the mean cost. ``"emd"``: the
        out-of-sample kernel bandwidth relative to the mean squared distance between
        simulated snapshots.
    reg_cov : float
        ``"gaussian"``: covariance shrinkage :math:`\lambda \in [0, 1)`.
    max_iter : int, optional
        Sinkhorn iterations (default 1000) or network-simplex iterations for ``"emd"``
        (default 1,000,000).
    tol : float, optional
        Sinkhorn stopping threshold: POT's ``stopThr`` for ``"entropic"`` (default
        1e-9), the L1 source-marginal violation for ``"scalable"`` (default 1e-4, which
        moves the map by about 1e-5 of its displacement; float32 arithmetic bottoms out
        near 1e-6).
    batch_size : int, optional
        ``"scalable"``: rows per block of the streamed cost (memory ``batch_size x m``).
    max_support : int, optional
        ``"scalable"``: keep at most this many (random) reference snapshots as the
        support of the map; default all.
    standardize : {"global", "per-dim", "none"}
        Standardisation before OT (see the module docs).
    device : str or torch.device
        ``"scalable"``: where Sinkhorn runs (``"auto"``: the GPU when there is one).
    seed : int, optional
        Seed of the support subsample.
    progress : bool, optional
        Progress bars (default: the ``XSCIML_PROGRESS`` environment variable).

    Returns
    -------
    Debias

    Raises
    ------
    KeyError
        Missing variable or ``sample_dim``.
    ValueError
        Different grids or masks, incompatible units, NaN gaps or inf, too few snapshots,
        bad options.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(1)
    >>> ref = xr.DataArray(rng.normal(size=(60, 3)), dims=("time", "site"),
    ...                    attrs={"units": "degC"})
    >>> mod = xr.DataArray(rng.normal(size=(80, 3)) + 274.15, dims=("time", "site"),
    ...                    attrs={"units": "K"})
    >>> deb = fit_debias(mod, ref, method="entropic", progress=False)
    >>> out = deb.transform(mod)
    >>> out.attrs["units"], bool(abs(float(out.mean())) < 0.3)
    ('degC', True)
    """
    method = _resolve_method(method)
    if not isinstance(sample_dim, str):
        raise TypeError(f"sample_dim must be a string, got {sample_dim!r}")
    prop = _parse_group(group, sample_dim)
    if standardize not in _STANDARDIZE:
        raise ValueError(f"standardize must be one of {_STANDARDIZE}, got {standardize!r}")
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a positive number, got {reg!r}")
    if not (isinstance(reg_cov, (int, float)) and 0 <= reg_cov < 1):
        raise ValueError(f"reg_cov must be in [0, 1), got {reg_cov!r}")
    if max_iter is None:
        max_iter = 1_000_000 if method == "emd" else 1000
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if tol is None:
        tol = 1e-4 if method == "scalable" else 1e-9
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if max_support is not None and (isinstance(max_support, bool) or not isinstance(max_support, (int, np.integer))
                                    or max_support < 2):
        raise ValueError(f"max_support must be None or an integer >= 2, got {max_support!r}")
    rng = np.random.default_rng(seed)

    mod_da, name = _as_variable(simulated, variable, "simulated")
    ref_var = variable
    if ref_var is None and isinstance(reference, xr.Dataset) and name in reference.data_vars:
        ref_var = name
    ref_da, _ = _as_variable(reference, ref_var, "reference")
    ref_da = ref_da.rename(name)
    for what, da in (("simulated", mod_da), ("reference", ref_da)):
        if sample_dim not in da.dims:
            raise KeyError(
                f"{what} variable {name!r} has no dimension {sample_dim!r} (dims {da.dims}); pass "
                "sample_dim= the dimension indexing snapshots."
            )
    from ..tensors import decode_variable

    mod_da, ref_da = decode_variable(mod_da), decode_variable(ref_da)
    mod_ds, ref_ds = mod_da.to_dataset(), ref_da.to_dataset()
    grid = Grid.from_data(mod_ds, [name], sample_dim)
    if set(ref_da.dims) - {sample_dim} != set(grid.space_dims):
        raise ValueError(
            f"simulated and reference {name!r} have different space dims: {grid.space_dims} vs "
            f"{tuple(d for d in ref_da.dims if d != sample_dim)}; regrid one onto the other first."
        )
    (ref_da,) = grid.check(ref_ds)

    # units: the map works in the reference's units
    mu, ru = _units_of(mod_da), _units_of(ref_da)
    if (mu is None) != (ru is None):
        raise ValueError(
            f"only the {'simulated' if ru is None else 'reference'} {name!r} has a 'units' attribute "
            f"({mu if ru is None else ru!r}); set attrs['units'] on both so units can be checked."
        )
    mod_da = _convert(mod_da, mu, ru, f"simulated {name!r}")

    X_all = _matrix(mod_da, grid, sample_dim, f"simulated {name!r}")
    Y_all = _matrix(ref_da, grid, sample_dim, f"reference {name!r}")
    vm = _valid_points(X_all, grid, f"simulated {name!r}", sample_dim)
    vr = _valid_points(Y_all, grid, f"reference {name!r}", sample_dim)
    if not np.array_equal(vm, vr):
        raise ValueError(
            f"simulated and reference {name!r} have different NaN masks ({int((vm != vr).sum())} grid "
            "points valid in one only); apply the same mask to both."
        )
    X_all, Y_all = X_all[:, vm], Y_all[:, vm]
    lab_m = _group_labels(mod_da, sample_dim, prop, "simulated")
    lab_r = _group_labels(ref_da, sample_dim, prop, "reference")

    pooled = np.concatenate([X_all, Y_all])
    mean = pooled.mean(0)  # centring is a translation of both clouds: it changes no map
    if standardize == "none":
        scale = np.ones(pooled.shape[1])
    else:
        sd = pooled.std(0)
        if standardize == "global":
            scale = np.full_like(mean, math.sqrt(float((sd**2).mean())))
        else:
            scale = sd.copy()
        scale[~(scale > 0)] = 1.0
    Xs, Ys = (X_all - mean) / scale, (Y_all - mean) / scale

    order = _group_order(prop)
    common = [g for g in order if g in set(lab_m) and g in set(lab_r)]
    dropped = sorted((set(lab_m) | set(lab_r)) - set(common))
    if not common:
        raise ValueError(f"simulated and reference share no {group!r} group; nothing to fit.")
    if dropped:
        warnings.warn(f"groups {dropped} of {group!r} are not in both simulated and reference; "
                      "they get no map.", UserWarning, stacklevel=2)
    maps: dict[str, _Map] = {}
    sizes: dict[str, list[int]] = {}
    notes: list[str] = []
    for lab in progress_bar(common, desc="debias groups", progress=progress if len(common) > 1 else False):
        X, Y = Xs[lab_m == lab], Ys[lab_r == lab]
        if len(X) < 2 or len(Y) < 2:
            raise ValueError(
                f"group {lab!r}: {len(X)} simulated and {len(Y)} reference snapshot(s); at least 2 each "
                "are needed."
            )
        if method == "gaussian":
            note = _undersampled(lab, len(X), len(Y), X.shape[1], name)
            if note:
                notes.append(note)
                warnings.warn(note, UserWarning, stacklevel=2)
            mp = _fit_linear(X, Y, float(reg_cov))
        elif method == "entropic":
            mp = _fit_entropic(X, Y, float(reg), int(max_iter), float(tol))
        elif method == "emd":
            mp = _fit_emd(X, Y, float(reg), int(max_iter))
        else:
            mp = _fit_scalable(X, Y, float(reg), int(max_iter), float(tol), batch_size,
                               max_support, device, rng, progress)
        maps[lab] = mp
        sizes[lab] = [int(len(X)), int(len(Y))]

    info: dict[str, Any] = {"n_model": int(len(X_all)), "n_reference": int(len(Y_all)),
                            "n_points": int(vm.sum()), "group_sizes": sizes}
    if notes:
        info["warnings"] = notes
    for key, ds in (("model_period", mod_ds), ("reference_period", ref_ds)):
        _, si = sample_info(ds, sample_dim)
        if "training_period" in si:
            info[key] = si["training_period"]
    params = {"reg": float(reg), "reg_cov": float(reg_cov), "max_iter": int(max_iter),
              "tol": float(tol), "standardize": standardize, "max_support": max_support,
              "seed": seed}
    log.info("fit_debias[%s]: %s: %d simulated and %d reference snapshots, %d grid points, %d "
             "group(s)%s", method, name, info["n_model"], info["n_reference"], info["n_points"],
             len(maps), f"; {len(notes)} warning(s)" if notes else "")
    return Debias(method=method, variable=name, sample_dim=sample_dim, grid=grid, valid=vm,
                  mean=mean, scale=scale, group=group, maps=maps, units=ru, model_units=mu,
                  params=params, info=info)


def _undersampled(label: str, n_model: int, n_ref: int, d: int, name: str) -> str | None:
    """A warning when a sample covariance of the Gaussian map is singular (n - 1 < d)."""
    n = min(n_model, n_ref)
    if n - 1 >= d:
        return None
    which = "model" if n_model <= n_ref else "reference"
    where = "" if label == "all" else f" in group {label!r}"
    return (
        f"{n} {which} snapshot(s) of {name!r}{where} for a dimension of {d} grid points: the "
        f"sample covariance has rank at most {n - 1}, so {d - n + 1} of its {d} directions come "
        "from the reg_cov shrinkage alone and the map's spread is unreliable. Use more "
        "snapshots than grid points (or fewer grid points, e.g. a coarser grid or a region)."
    )


def _group_order(prop: str | None) -> list[str]:
    if prop is None:
        return ["all"]
    if prop == "month":
        return [str(i) for i in range(1, 13)]
    return ["DJF", "MAM", "JJA", "SON"]
