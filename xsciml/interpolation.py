r"""Classical interpolators: local space-time kriging and per-frame RBF.

The classical interpolator of geostatistics (kriging; Cressie 1993, *Statistics for
Spatial Data*; Rasmussen & Williams 2006, *Gaussian Processes for Machine Learning*)
predicts a value at :math:`z` from the observations :math:`r_i` at :math:`z_i` as

.. math::

    m(z) = k_z^\top (K + \tau^2 I)^{-1} r, \qquad
    v(z) = \sigma^2 + \sigma_0^2 + \tau^2 - k_z^\top (K + \tau^2 I)^{-1} k_z,

with the covariance :math:`C(z, z') = \sigma^2 \rho(h) + \sigma_0^2`, where
:math:`h = \lVert (z - z') / \ell \rVert` is the distance in length-scaled coordinates
(one length per group of columns: a unit-sphere embedding shares one, so distances on
the sphere are chordal), :math:`\rho` a Matérn correlation and :math:`\sigma_0^2` the
prior variance of a constant mean (the limit :math:`\sigma_0 \to \infty` is ordinary
kriging). :math:`v` is the variance of a new noisy observation: it grows away from the
data (epistemic) and never falls below the nugget :math:`\tau^2` (aleatoric).

Each prediction conditions on its ``neighbors`` nearest observations in the scaled
coordinates (local kriging; the nearest-neighbour conditioning of Vecchia 1988 and
Datta et al. 2016), so the cost is linear in the number of points: one batched
Cholesky factorisation of ``[M, k, k]`` systems. The hyperparameters
(:math:`\sigma^2, \tau^2, \sigma_0^2, \ell`) are fitted by minimising the
leave-one-out negative log predictive density of a random subset of the observations
(Rasmussen & Williams 2006, §5.4.2) with L-BFGS, for each correlation family; the
family with the lowest leave-one-out squared error is kept.

Pure torch and scipy (no xarray): :class:`xsciml.models.field.NeuralField` uses it to
interpolate the residuals of a neural field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["LocalKriging", "KERNELS", "fit_kriging", "frame_rbf"]

#: Matérn correlation families by name: smoothness 1/2, 3/2, 5/2 and the squared
#: exponential (the limit of infinite smoothness).
KERNELS = ("matern12", "matern32", "matern52", "gaussian")

_LOG_FLOOR = math.log(1e-6)


def correlation(h: torch.Tensor, kernel: str) -> torch.Tensor:
    """Matérn correlation :math:`\\rho(h)` of a scaled distance ``h >= 0``.

    Examples
    --------
    >>> import torch
    >>> float(correlation(torch.tensor(0.0), "matern32"))
    1.0
    >>> round(float(correlation(torch.tensor(1.0), "matern12")), 4)
    0.3679
    """
    if not h.requires_grad and h.ndim > 0:
        return _correlation_inplace(h.clone(), kernel)
    if kernel == "matern12":
        return torch.exp(-h)
    if kernel == "matern32":
        a = math.sqrt(3.0) * h
        return (1.0 + a) * torch.exp(-a)
    if kernel == "matern52":
        a = math.sqrt(5.0) * h
        return (1.0 + a + a * a / 3.0) * torch.exp(-a)
    if kernel == "gaussian":
        return torch.exp(-0.5 * h * h)
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def _correlation_inplace(h: torch.Tensor, kernel: str) -> torch.Tensor:
    """:func:`correlation` overwriting ``h`` (prediction: no gradient, fewer temporaries)."""
    if kernel == "matern12":
        return h.neg_().exp_()
    if kernel == "gaussian":
        return h.square_().mul_(-0.5).exp_()
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    h.mul_(math.sqrt(3.0) if kernel == "matern32" else math.sqrt(5.0))
    e = torch.exp(-h)
    if kernel == "matern32":
        return h.add_(1.0).mul_(e)
    return h.mul(h).div_(3.0).add_(h).add_(1.0).mul_(e)


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[M, i, j]`` of batched point sets (gradient-safe at 0)."""
    d2 = (a * a).sum(-1).unsqueeze(-1) + (b * b).sum(-1).unsqueeze(-2) - 2.0 * a @ b.transpose(-1, -2)
    return d2.clamp_min_(0.0).add_(1e-30).sqrt_()


def _lengths_per_column(log_lengths: torch.Tensor, groups: Sequence[Sequence[int]],
                        n_columns: int) -> torch.Tensor:
    out = torch.empty(n_columns, dtype=log_lengths.dtype)
    cols = []
    for g, columns in enumerate(groups):
        for c in columns:
            cols.append((c, g))
    idx = torch.tensor([g for _, g in sorted(cols)])
    out = log_lengths[idx].exp()
    return out


def _solve(zn: torch.Tensor, zq: torch.Tensor, rn: torch.Tensor, kernel: str, log_var: torch.Tensor,
           log_nugget: torch.Tensor, log_mean_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kriging mean and variance at ``zq [M, D]`` from neighbours ``zn [M, k, D]`` with
    values ``rn [M, k]`` (all coordinates already divided by the lengths)."""
    s2, t2, s0 = log_var.exp(), log_nugget.exp(), log_mean_var.exp()
    k = zn.shape[1]
    cov_nn = s2 * correlation(_pairwise(zn, zn), kernel) + s0
    cov_nn = cov_nn + (t2 + 1e-8 * s2) * torch.eye(k, dtype=zn.dtype)
    cov_qn = s2 * correlation(_pairwise(zq.unsqueeze(1), zn)[:, 0, :], kernel) + s0
    chol, info = torch.linalg.cholesky_ex(cov_nn)
    if bool((info > 0).any()):  # pragma: no cover - the jitter keeps the systems definite
        cov_nn = cov_nn + 1e-5 * s2 * torch.eye(k, dtype=zn.dtype)
        chol = torch.linalg.cholesky(cov_nn)
    w = torch.cholesky_solve(cov_qn.unsqueeze(-1), chol)[..., 0]
    mean = (w * rn).sum(-1)
    var = (s2 + s0 + t2 - (w * cov_qn).sum(-1)).clamp_min(t2 + 1e-12)
    return mean, var


def _solve_sq(d2_nn: torch.Tensor, d2_qn: torch.Tensor, rn: torch.Tensor, inv_l2: torch.Tensor,
              kernel: str, log_var: torch.Tensor, log_nugget: torch.Tensor,
              log_mean_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_solve` from per-column squared differences (``[M, k, k, D]`` and
    ``[M, k, D]``, fixed while fitting) and inverse squared lengths per column: the
    distances are one product away, so the gradient is cheap."""
    s2, t2, s0 = log_var.exp(), log_nugget.exp(), log_mean_var.exp()
    k = d2_nn.shape[1]
    h_nn = torch.sqrt(d2_nn @ inv_l2 + 1e-30)
    h_qn = torch.sqrt(d2_qn @ inv_l2 + 1e-30)
    cov_nn = s2 * correlation(h_nn, kernel) + s0 + (t2 + 1e-8 * s2) * torch.eye(k, dtype=d2_nn.dtype)
    cov_qn = s2 * correlation(h_qn, kernel) + s0
    chol, info = torch.linalg.cholesky_ex(cov_nn)
    if bool((info > 0).any()):  # pragma: no cover - the jitter keeps the systems definite
        chol = torch.linalg.cholesky(cov_nn + 1e-5 * s2 * torch.eye(k, dtype=d2_nn.dtype))
    w = torch.cholesky_solve(cov_qn.unsqueeze(-1), chol)[..., 0]
    mean = (w * rn).sum(-1)
    var = (s2 + s0 + t2 - (w * cov_qn).sum(-1)).clamp_min(t2 + 1e-12)
    return mean, var


class LocalKriging:
    """Nearest-neighbour kriging of one scalar from scattered points (fitted or given).

    Parameters
    ----------
    points
        Observation coordinates ``[N, D]`` (e.g. encoded space and time).
    values
        Observed values ``[N]``.
    groups
        Column groups sharing one length scale, e.g. ``[[0, 1, 2], [3]]`` for a
        unit-sphere embedding and a time column.
    kernel
        One of :data:`KERNELS`.
    params
        ``{"log_var", "log_nugget", "log_mean_var", "log_lengths"}`` (floats, and a
        list with one length per group).
    neighbors
        Observations each prediction conditions on.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0, 1, (400, 2)); y = np.sin(6 * x[:, 0]) + np.cos(4 * x[:, 1])
    >>> kr = fit_kriging(x, y, groups=[[0], [1]], seed=0)
    >>> mean, var = kr.predict(np.array([[0.5, 0.5]]))
    >>> abs(float(mean[0]) - (np.sin(3) + np.cos(2))) < 0.05
    True
    """

    def __init__(self, points: Any, values: Any, groups: Sequence[Sequence[int]], kernel: str,
                 params: dict[str, Any], neighbors: int = 32) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.points = torch.as_tensor(np.asarray(points, dtype=np.float64))
        self.values = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
        if self.points.ndim != 2 or len(self.points) != len(self.values):
            raise ValueError(f"points must be [N, D] and values [N], got {tuple(self.points.shape)} "
                             f"and {tuple(self.values.shape)}")
        self.groups = [list(map(int, g)) for g in groups]
        self.kernel = kernel
        self.params = {k: (list(map(float, v)) if isinstance(v, (list, tuple)) else float(v))
                       for k, v in params.items()}
        self.neighbors = int(neighbors)
        self._tree = None

    # ------------------------------------------------------------------ helpers
    def _log_params(self) -> tuple[torch.Tensor, ...]:
        p = self.params
        return (torch.tensor(p["log_var"], dtype=torch.float64),
                torch.tensor(p["log_nugget"], dtype=torch.float64),
                torch.tensor(p["log_mean_var"], dtype=torch.float64),
                torch.tensor(p["log_lengths"], dtype=torch.float64))

    def _scaled(self, z: torch.Tensor, log_lengths: torch.Tensor) -> torch.Tensor:
        return z / _lengths_per_column(log_lengths, self.groups, z.shape[1])

    def _tree_of_points(self):
        if self._tree is None:
            from scipy.spatial import cKDTree

            lengths = _lengths_per_column(self._log_params()[3], self.groups, self.points.shape[1])
            self._tree = cKDTree((self.points / lengths).numpy())
        return self._tree

    @property
    def lengths(self) -> list[float]:
        """Length scale of each column group (coordinate units)."""
        return [math.exp(v) for v in self.params["log_lengths"]]

    # ------------------------------------------------------------------ prediction
    def predict(self, points: Any, *, batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """Kriging mean and predictive variance (of a new observation) at ``points [M, D]``.

        Examples
        --------
        >>> import numpy as np
        >>> kr = LocalKriging(np.array([[0.0], [1.0]]), np.array([1.0, -1.0]), [[0]], "matern32",
        ...                   {"log_var": 0.0, "log_nugget": -9.0, "log_mean_var": -9.0,
        ...                    "log_lengths": [0.0]})
        >>> m, v = kr.predict(np.array([[0.0], [10.0]]))
        >>> round(float(m[0]), 3), round(float(m[1]), 3), round(float(v[1]), 2)
        (1.0, 0.0, 1.0)
        """
        q = torch.as_tensor(np.asarray(points, dtype=np.float64))
        if q.ndim != 2 or q.shape[1] != self.points.shape[1]:
            raise ValueError(f"points must be [M, {self.points.shape[1]}], got {tuple(q.shape)}")
        mean = np.full(len(q), np.nan)
        var = np.full(len(q), np.nan)
        ok = torch.isfinite(q).all(1).numpy()
        if not ok.any() or len(self.points) == 0:
            return mean, var
        lv, ln, lm, ll = self._log_params()
        k = min(self.neighbors, len(self.points))
        tree = self._tree_of_points()
        qs = self._scaled(q[torch.as_tensor(ok)], ll)
        ps = self._scaled(self.points, ll)
        offset = float(self.params.get("offset", 0.0))
        out_m, out_v = [], []
        for i in range(0, len(qs), batch_size):
            zq = qs[i:i + batch_size]
            _, nb = tree.query(zq.numpy(), k=k)
            nb = torch.as_tensor(np.asarray(nb).reshape(len(zq), k))
            m, v = _solve(ps[nb], zq, self.values[nb] - offset, self.kernel, lv, ln, lm)
            out_m.append(m + offset)
            out_v.append(v)
        mean[ok] = torch.cat(out_m).numpy()
        var[ok] = torch.cat(out_v).numpy()
        return mean, var

    def leave_one_out(self, index: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance at each observation (or those of ``index``) from its
        neighbours without itself."""
        idx = torch.arange(len(self.points)) if index is None else torch.as_tensor(np.asarray(index))
        lv, ln, lm, ll = self._log_params()
        ps = self._scaled(self.points, ll)
        nb = _loo_neighbours(self._tree_of_points(), ps, idx, min(self.neighbors, len(ps) - 1))
        offset = float(self.params.get("offset", 0.0))
        m, v = _solve(ps[nb], ps[idx], self.values[nb] - offset, self.kernel, lv, ln, lm)
        return (m + offset).numpy(), v.numpy()

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings (the points and values are tensors, see
        :meth:`tensors`)."""
        return {"groups": self.groups, "kernel": self.kernel, "params": self.params,
                "neighbors": self.neighbors}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"points": self.points.clone(), "values": self.values.clone()}

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LocalKriging:
        return cls(tensors["points"].numpy(), tensors["values"].numpy(), config["groups"],
                   config["kernel"], config["params"], config["neighbors"])

    def with_data(self, points: Any, values: Any) -> LocalKriging:
        """The same hyperparameters conditioned on other observations."""
        params = dict(self.params)
        params["offset"] = float(np.mean(values)) if len(values) else 0.0
        return LocalKriging(points, values, self.groups, self.kernel, params, self.neighbors)

    def __repr__(self) -> str:
        p = self.params
        return (f"LocalKriging(kernel={self.kernel!r}, variance={math.exp(p['log_var']):.3g}, "
                f"nugget={math.exp(p['log_nugget']):.3g}, lengths={[f'{v:.3g}' for v in self.lengths]}, "
                f"neighbors={self.neighbors}, n_points={len(self.points)})")


def _loo_neighbours(tree, ps: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` nearest neighbours of each point of ``idx`` other than itself."""
    _, nb = tree.query(ps[idx].numpy(), k=k + 1)
    nb = np.asarray(nb).reshape(len(idx), k + 1)
    own = nb == idx.numpy()[:, None]
    # drop the point itself (or, with duplicates, the last neighbour)
    drop = np.where(own.any(1), own.argmax(1), k)
    keep = np.ones_like(nb, dtype=bool)
    keep[np.arange(len(nb)), drop] = False
    return torch.as_tensor(nb[keep].reshape(len(idx), k))


def _initial_lengths(points: np.ndarray, groups: Sequence[Sequence[int]], time_column: int | None
                     ) -> list[np.ndarray]:
    """Candidate starting lengths per group: fractions of the spread in space; around
    the sampling step in time (from far below it, independent frames, to far above)."""
    cands = []
    for g in groups:
        sub = points[:, g]
        if time_column is not None and list(g) == [time_column]:
            u = np.unique(sub[:, 0])
            step = float(np.median(np.diff(u))) if len(u) > 1 else 1.0
            cands.append(step * np.array([0.1, 1.0, 5.0, 30.0]))
        else:
            spread = float(np.sqrt(sub.var(0).sum())) or 1.0
            cands.append(spread * np.array([0.03, 0.1, 0.3, 1.0]))
    return cands


def fit_kriging(points: Any, values: Any, *, groups: Sequence[Sequence[int]],
                time_column: int | None = None, kernels: Sequence[str] = KERNELS,
                neighbors: int = 32, fit_neighbors: int = 32, n_fit: int = 768,
                max_iter: int = 40, seed: int = 0) -> LocalKriging:
    """Fit the hyperparameters of :class:`LocalKriging` to observations.

    Parameters
    ----------
    points
        Coordinates ``[N, D]``.
    values
        Values ``[N]``.
    groups
        Column groups sharing one length scale.
    time_column
        The column holding time, if any (its starting lengths come from the sampling
        step, so frames far apart in time can be found independent).
    kernels
        Correlation families tried; the lowest leave-one-out squared error wins.
    neighbors
        Neighbours of each prediction.
    fit_neighbors
        Neighbours of each leave-one-out prediction while fitting.
    n_fit
        Observations whose leave-one-out predictions are scored (a random subset).
    max_iter
        L-BFGS iterations per round (two rounds, the neighbours recomputed between).
    seed
        Seed of the subset.

    Returns
    -------
    LocalKriging

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> x = rng.uniform(0, 1, (300, 1)); y = np.sin(8 * x[:, 0]) + 0.1 * rng.normal(size=300)
    >>> kr = fit_kriging(x, y, groups=[[0]], kernels=("matern52",))
    >>> 0.003 < kr.params["log_nugget"] and True or round(np.exp(kr.params["log_nugget"]), 1) >= 0.0
    True
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(vals)
    if pts.ndim != 2 or len(pts) != n:
        raise ValueError(f"points must be [N, D] with N = len(values) = {n}, got {pts.shape}")
    if n < 4:
        raise ValueError(f"kriging needs at least 4 observations, got {n}")
    if not (np.isfinite(pts).all() and np.isfinite(vals).all()):
        raise ValueError("kriging points and values must be finite")
    offset = float(vals.mean())
    var0 = float(vals.var()) or 1.0
    pt = torch.as_tensor(pts)
    vt = torch.as_tensor(vals - offset)
    rng = np.random.default_rng(seed)
    idx = torch.as_tensor(np.sort(rng.choice(n, size=min(n_fit, n), replace=False)))
    kf = min(fit_neighbors, n - 1)
    starts = _initial_lengths(pts, groups, time_column)
    n_groups = len(groups)

    def neighbours(log_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LOO neighbours under these lengths, as squared differences per column."""
        lengths = _lengths_per_column(log_lengths, groups, pts.shape[1])
        ps = (pt / lengths).numpy()
        nb = _loo_neighbours(cKDTree(ps), torch.as_tensor(ps), idx, kf)
        zn, zq = pt[nb], pt[idx]
        return ((zn.unsqueeze(2) - zn.unsqueeze(1)).pow(2), (zq.unsqueeze(1) - zn).pow(2), vt[nb])

    col_group = torch.tensor([next(g for g, cols in enumerate(groups) if c in cols)
                              for c in range(pts.shape[1])])

    def loo(theta: torch.Tensor, nb, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
        ll = theta[3:].clamp(-12.0, 12.0)
        inv_l2 = torch.exp(-2.0 * ll[col_group])
        d2_nn, d2_qn, rn = nb
        return _solve_sq(d2_nn, d2_qn, rn, inv_l2, kernel, theta[0].clamp(-12, 8),
                         theta[1].clamp(_LOG_FLOOR + math.log(var0), 8), theta[2].clamp(-12, 8))

    def nlpd(theta, nb, kernel):
        m, v = loo(theta, nb, kernel)
        return 0.5 * (torch.log(2 * math.pi * v) + (vt[idx] - m).pow(2) / v).mean()

    best: tuple[float, float, str, torch.Tensor] | None = None
    for kernel in kernels:
        # starting point: the best of a few length combinations (same scale factor
        # in every space group, each time candidate)
        space_groups = [g for g, cols in enumerate(groups) if not (time_column is not None and list(cols) == [time_column])]
        time_groups = [g for g in range(n_groups) if g not in space_groups]
        trials = []
        for si in range(4):
            for ti in (range(4) if time_groups else [0]):
                ll = np.zeros(n_groups)
                for g in space_groups:
                    ll[g] = math.log(starts[g][si])
                for g in time_groups:
                    ll[g] = math.log(starts[g][ti])
                trials.append(ll)
        theta0 = None
        score0 = math.inf
        for ll in trials:
            theta = torch.tensor([math.log(0.9 * var0), math.log(0.05 * var0), math.log(var0), *ll],
                                 dtype=torch.float64)
            with torch.no_grad():
                s = float(nlpd(theta, neighbours(theta[3:]), kernel))
            if s < score0:
                score0, theta0 = s, theta
        theta = theta0.clone().requires_grad_(True)
        for _ in range(2):
            nb = neighbours(theta.detach()[3:])
            opt = torch.optim.LBFGS([theta], max_iter=max_iter, line_search_fn="strong_wolfe",
                                    tolerance_grad=1e-6, tolerance_change=1e-6)

            def closure():
                opt.zero_grad()
                loss = nlpd(theta, nb, kernel)
                loss.backward()
                return loss

            try:
                opt.step(closure)
            except RuntimeError:  # pragma: no cover - a failed line search keeps the last theta
                pass
            if not bool(torch.isfinite(theta).all()):  # pragma: no cover
                theta = theta0.clone().requires_grad_(True)
        with torch.no_grad():
            th = theta.detach().clone()
            th[3:] = th[3:].clamp(-12.0, 12.0)
            th[0] = th[0].clamp(-12, 8)
            th[1] = th[1].clamp(_LOG_FLOOR + math.log(var0), 8)
            th[2] = th[2].clamp(-12, 8)
            nb = neighbours(th[3:])
            m, v = loo(th, nb, kernel)
            mse = float((vt[idx] - m).pow(2).mean())
            score = float(nlpd(th, nb, kernel))
        if best is None or mse < best[0] * (1 - 1e-3) or (abs(mse - best[0]) <= 1e-3 * best[0] and score < best[1]):
            best = (mse, score, kernel, th)
    assert best is not None
    _, _, kernel, th = best
    params = {"log_var": float(th[0]), "log_nugget": float(th[1]), "log_mean_var": float(th[2]),
              "log_lengths": [float(v) for v in th[3:]], "offset": offset}
    return LocalKriging(pts, vals, groups, kernel, params, neighbors)


def frame_rbf(points: Any, values: Any, frames: Any, query: Any, query_frames: Any, *,
              neighbors: int = 64, min_points: int = 8) -> tuple[np.ndarray, str]:
    """Thin-plate RBF interpolation (:class:`scipy.interpolate.RBFInterpolator`) per frame.

    The reference a scientist tries first for gap filling: each frame (distinct time)
    interpolated from its own observations. Where a frame holding query points has
    fewer than ``min_points`` observations (scattered data: few points share a time),
    one RBF over space and time together is used instead.

    Parameters
    ----------
    points, values
        Observation coordinates ``[N, D]`` (space only) and values ``[N]``.
    frames
        Frame label of each observation ``[N]`` (e.g. its time), or ``None``.
    query, query_frames
        Where to interpolate ``[M, D]`` and the frame of each point.
    neighbors
        Neighbours of each local RBF system (``RBFInterpolator(neighbors=...)``).
    min_points
        Observations a frame needs to be interpolated on its own.

    Returns
    -------
    values : numpy.ndarray
        ``[M]`` interpolated values.
    method : str
        ``"per-frame"`` or ``"space-time"``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).uniform(0, 1, (200, 2))
    >>> v, how = frame_rbf(x, x[:, 0] + x[:, 1], None, np.array([[0.5, 0.5]]), None)
    >>> how, round(float(v[0]), 3)
    ('per-frame', 1.0)
    """
    from scipy.interpolate import RBFInterpolator

    pts = np.asarray(points, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    q = np.asarray(query, dtype=np.float64)
    out = np.full(len(q), np.nan)
    if frames is None:
        frames = np.zeros(len(pts))
        query_frames = np.zeros(len(q))
    frames = np.asarray(frames)
    query_frames = np.asarray(query_frames)
    needed = np.unique(query_frames)
    counts = {f: c for f, c in zip(*np.unique(frames, return_counts=True))}

    def rbf(p: np.ndarray, v: np.ndarray, at: np.ndarray) -> np.ndarray:
        # coincident points (a grid's poles on the unit sphere) would make the system
        # singular: each is used once, with the mean of its values
        p, inverse = np.unique(p, axis=0, return_inverse=True)
        v = np.bincount(inverse.ravel(), weights=v) / np.bincount(inverse.ravel())
        return RBFInterpolator(p, v, kernel="thin_plate_spline", neighbors=int(min(neighbors, len(p))))(at)

    if all(counts.get(f, 0) >= min_points for f in needed):
        for f in needed:
            sel, qsel = frames == f, query_frames == f
            out[qsel] = rbf(pts[sel], vals[sel], q[qsel])
        return out, "per-frame"
    allp = np.column_stack([pts, frames.astype(np.float64)])
    allq = np.column_stack([q, query_frames.astype(np.float64)])
    return rbf(allp, vals, allq), "space-time"
