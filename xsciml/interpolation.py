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
from typing import Any, cast

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


def _column_groups(groups: Sequence[Sequence[int]], n_columns: int) -> torch.Tensor:
    """The group index of each column."""
    out = torch.full((n_columns,), -1, dtype=torch.long)
    for g, columns in enumerate(groups):
        for c in columns:
            out[int(c)] = g
    if bool((out < 0).any()):
        raise ValueError(f"groups {list(map(list, groups))} do not cover the {n_columns} columns")
    return out


def _inverse_sq_lengths(log_lengths: torch.Tensor, col_group: torch.Tensor,
                        ignore: int | None = None) -> torch.Tensor:
    """``1 / length^2`` per column (0 for the ``ignore`` column: a component constant
    along it)."""
    out = torch.exp(-2.0 * log_lengths[col_group])
    if ignore is not None:
        out = out * (torch.arange(len(col_group)) != ignore).to(out.dtype)
    return out


def _solve_sq(d2_nn: torch.Tensor, d2_qn: torch.Tensor, rn: torch.Tensor,
              components: Sequence[tuple[torch.Tensor, torch.Tensor]], kernel: str,
              log_nugget: torch.Tensor, log_mean_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kriging mean and variance from per-column squared differences of the neighbours
    (``d2_nn [M, k, k, D]``) and of the query to them (``d2_qn [M, k, D]``), the
    neighbours' values ``rn [M, k]`` and the covariance components
    ``(log variance, 1 / length^2 per column)``."""
    t2, s0 = log_nugget.exp(), log_mean_var.exp()
    k = d2_nn.shape[1]
    cov_nn = s0 + torch.zeros_like(d2_nn[..., 0])
    cov_qn = s0 + torch.zeros_like(d2_qn[..., 0])
    total = s0 + t2
    for log_var, inv_l2 in components:
        s2 = log_var.exp()
        cov_nn = cov_nn + s2 * correlation(torch.sqrt(d2_nn @ inv_l2 + 1e-30), kernel)
        cov_qn = cov_qn + s2 * correlation(torch.sqrt(d2_qn @ inv_l2 + 1e-30), kernel)
        total = total + s2
    eye = torch.eye(k, dtype=d2_nn.dtype)
    cov_nn = cov_nn + (t2 + 1e-8 * total) * eye
    chol, info = torch.linalg.cholesky_ex(cov_nn)
    if bool((info > 0).any()):  # pragma: no cover - the jitter keeps the systems definite
        chol = torch.linalg.cholesky(cov_nn + 1e-5 * total * eye)
    w = torch.cholesky_solve(cov_qn.unsqueeze(-1), chol)[..., 0]
    mean = (w * rn).sum(-1)
    var = (total - (w * cov_qn).sum(-1)).clamp_min(t2 + 1e-12)
    return mean, var


def _sq_differences(points: torch.Tensor, query: torch.Tensor, nb: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    zn = points[nb]
    return (zn.unsqueeze(2) - zn.unsqueeze(1)).pow(2), (query.unsqueeze(1) - zn).pow(2)


def _union_neighbours(trees: Sequence[Any], queries: Sequence[np.ndarray], k: int,
                      exclude: np.ndarray | None = None) -> np.ndarray:
    """``k`` distinct neighbours per query: the nearest under the first metric, then
    (with a second metric, e.g. space only) the nearest under it not yet taken; the
    ``exclude`` index of each row (itself, for leave-one-out) is never taken."""
    m = len(queries[0])
    extra = 1 if exclude is not None else 0
    k_first = k if len(trees) == 1 else k - k // 2
    parts = []
    for i, (tree, q) in enumerate(zip(trees, queries, strict=False)):
        kk = (k_first if i == 0 else k) + extra
        kk = min(kk, tree.n)
        _, nb = tree.query(q, k=kk)
        parts.append(np.asarray(nb).reshape(m, kk))
    cand = np.concatenate(parts, 1)
    order = np.argsort(cand, axis=1, kind="stable")
    sorted_c = np.take_along_axis(cand, order, 1)
    dup_sorted = np.zeros(sorted_c.shape, bool)
    dup_sorted[:, 1:] = sorted_c[:, 1:] == sorted_c[:, :-1]
    invalid = np.empty_like(dup_sorted)
    np.put_along_axis(invalid, order, dup_sorted, 1)
    if exclude is not None:
        invalid |= cand == np.asarray(exclude)[:, None]
    keep = ~invalid & (np.cumsum(~invalid, 1) <= k)
    return cand[keep].reshape(m, k)


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
        ``log_var``, ``log_nugget``, ``log_mean_var`` (floats), ``log_lengths`` (one
        per group) and optionally ``offset`` (the mean removed from the values) and a
        time-invariant component ``log_var_static`` / ``log_lengths_static`` (needs
        ``time_column``).
    neighbors
        Observations each prediction conditions on.
    time_column
        The column holding time (a static component ignores it).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0, 1, (400, 2)); y = np.sin(6 * x[:, 0]) + np.cos(4 * x[:, 1])
    >>> kr = fit_kriging(x, y, groups=[[0], [1]], kernels=("matern52",), seed=0)
    >>> mean, var = kr.predict(np.array([[0.5, 0.5]]))
    >>> bool(abs(mean[0] - (np.sin(3) + np.cos(2))) < 0.05)
    True
    """

    def __init__(self, points: Any, values: Any, groups: Sequence[Sequence[int]], kernel: str,
                 params: dict[str, Any], neighbors: int = 32, time_column: int | None = None) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.points = torch.as_tensor(np.asarray(points, dtype=np.float64))
        self.values = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
        if self.points.ndim != 2 or len(self.points) != len(self.values):
            raise ValueError(f"points must be [N, D] and values [N], got {tuple(self.points.shape)} "
                             f"and {tuple(self.values.shape)}")
        self.groups = [list(map(int, g)) for g in groups]
        self.kernel = kernel
        # the log-lengths are lists (one per column group), every other parameter a float
        self.params: dict[str, list[float] | float] = {
            k: (list(map(float, v)) if isinstance(v, (list, tuple)) else float(v)) for k, v in params.items()}
        if "log_var_static" in self.params and time_column is None:
            raise ValueError("a time-invariant kriging component needs time_column")
        self.neighbors = int(neighbors)
        self.time_column = None if time_column is None else int(time_column)
        self._col_group = _column_groups(self.groups, self.points.shape[1])
        self._trees: list[Any] | None = None

    # ------------------------------------------------------------------ helpers
    def _components(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        p = self.params
        out = [(torch.tensor(p["log_var"], dtype=torch.float64),
                _inverse_sq_lengths(torch.tensor(p["log_lengths"], dtype=torch.float64), self._col_group))]
        if "log_var_static" in p:
            out.append((torch.tensor(p["log_var_static"], dtype=torch.float64),
                        _inverse_sq_lengths(torch.tensor(p["log_lengths_static"], dtype=torch.float64),
                                            self._col_group, ignore=self.time_column)))
        return out

    def _metric_trees(self) -> list[Any]:
        if self._trees is None:
            from scipy.spatial import cKDTree

            self._trees = [cKDTree((self.points * inv.sqrt()).numpy()) for _, inv in self._components()]
        return self._trees

    @property
    def lengths(self) -> list[float]:
        """Length scale of each column group (coordinate units)."""
        return [math.exp(v) for v in cast(list[float], self.params["log_lengths"])]

    def _nugget_mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.params["log_nugget"], dtype=torch.float64),
                torch.tensor(self.params["log_mean_var"], dtype=torch.float64))

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
        >>> round(float(m[0]), 3), abs(float(m[1])) < 1e-3, round(float(v[1]), 2)
        (1.0, True, 1.0)
        """
        q = torch.as_tensor(np.asarray(points, dtype=np.float64))
        if q.ndim != 2 or q.shape[1] != self.points.shape[1]:
            raise ValueError(f"points must be [M, {self.points.shape[1]}], got {tuple(q.shape)}")
        mean = np.full(len(q), np.nan)
        var = np.full(len(q), np.nan)
        ok = torch.isfinite(q).all(1).numpy()
        if not ok.any() or len(self.points) == 0:
            return mean, var
        comps = self._components()
        trees = self._metric_trees()
        ln, lm = self._nugget_mean()
        k = min(self.neighbors, len(self.points))
        qs = q[torch.as_tensor(ok)]
        offset = float(cast(float, self.params.get("offset", 0.0)))
        out_m, out_v = [], []
        with torch.no_grad():
            for i in range(0, len(qs), batch_size):
                zq = qs[i:i + batch_size]
                nb = torch.as_tensor(_union_neighbours(
                    trees, [(zq * inv.sqrt()).numpy() for _, inv in comps], k))
                d2_nn, d2_qn = _sq_differences(self.points, zq, nb)
                m, v = _solve_sq(d2_nn, d2_qn, self.values[nb] - offset, comps, self.kernel, ln, lm)
                out_m.append(m + offset)
                out_v.append(v)
        mean[ok] = torch.cat(out_m).numpy()
        var[ok] = torch.cat(out_v).numpy()
        return mean, var

    def leave_one_out(self, index: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance at each observation (or those of ``index``) from its
        neighbours without itself."""
        idx = np.arange(len(self.points)) if index is None else np.asarray(index)
        comps = self._components()
        k = min(self.neighbors, len(self.points) - 1)
        zq = self.points[torch.as_tensor(idx)]
        nb = torch.as_tensor(_union_neighbours(self._metric_trees(),
                                               [(zq * inv.sqrt()).numpy() for _, inv in comps], k,
                                               exclude=idx))
        d2_nn, d2_qn = _sq_differences(self.points, zq, nb)
        offset = float(cast(float, self.params.get("offset", 0.0)))
        with torch.no_grad():
            m, v = _solve_sq(d2_nn, d2_qn, self.values[nb] - offset, comps, self.kernel,
                             *self._nugget_mean())
        return (m + offset).numpy(), v.numpy()

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings (the points and values are tensors, see
        :meth:`tensors`)."""
        return {"groups": self.groups, "kernel": self.kernel, "params": self.params,
                "neighbors": self.neighbors, "time_column": self.time_column}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The conditioning points and values."""
        return {"points": self.points.clone(), "values": self.values.clone()}

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LocalKriging:
        """Rebuild from :meth:`config` and :meth:`tensors`."""
        return cls(tensors["points"].numpy(), tensors["values"].numpy(), config["groups"],
                   config["kernel"], config["params"], config["neighbors"], config.get("time_column"))

    def with_data(self, points: Any, values: Any) -> LocalKriging:
        """The same covariance conditioned on other observations."""
        params = dict(self.params)
        params["offset"] = float(np.mean(values)) if len(values) else 0.0
        return LocalKriging(points, values, self.groups, self.kernel, params, self.neighbors,
                            self.time_column)

    def __repr__(self) -> str:
        p = self.params
        static = ""
        if "log_var_static" in p:
            static_lengths = [f'{math.exp(v):.3g}'
                              for g, v in enumerate(cast(list[float], p['log_lengths_static']))
                              if [self.time_column] != self.groups[g]]
            static = (f", static variance={math.exp(cast(float, p['log_var_static'])):.3g}, static lengths="
                      f"{static_lengths}")
        return (f"LocalKriging(kernel={self.kernel!r}, variance={math.exp(cast(float, p['log_var'])):.3g}, "
                f"nugget={math.exp(cast(float, p['log_nugget'])):.3g}, "
                f"lengths={[f'{v:.3g}' for v in self.lengths]}"
                f"{static}, neighbors={self.neighbors}, n_points={len(self.points)})")


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


def fit_kriging(points: Any, values: Any, *, groups: Sequence[Sequence[int]],  # noqa: C901 - flat sequence of argument checks and fitting phases
                time_column: int | None = None, kernels: Sequence[str] = KERNELS,
                static: bool | None = None, neighbors: int = 32, fit_neighbors: int = 32,
                n_fit: int = 768, max_iter: int = 40, seed: int = 0,
                validation: tuple[Any, Any] | None = None) -> LocalKriging:
    """Fit the covariance of :class:`LocalKriging` to observations.

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
    static
        Add a time-invariant component (a pattern shared by every time, such as a
        climatology, beside the anomalies that decorrelate in time); default: with a
        time column.
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
    validation
        ``(points, values)`` of held-out observations: the covariance is then fitted
        to predict them from the observations (instead of each observation from the
        others). For the residuals of a model fitted to the observations, which are
        smaller there than elsewhere, this is the honest criterion: it learns how the
        error grows away from the data.

    Returns
    -------
    LocalKriging

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> x = rng.uniform(0, 1, (300, 1)); y = np.sin(8 * x[:, 0]) + 0.1 * rng.normal(size=300)
    >>> kr = fit_kriging(x, y, groups=[[0]], kernels=("matern52",))
    >>> bool(0.005 < np.exp(kr.params["log_nugget"]) < 0.02)  # the noise variance, 0.01
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
    static = time_column is not None if static is None else bool(static)
    if static and time_column is None:
        raise ValueError("static=True needs a time_column")
    offset = float(vals.mean())
    var0 = float(vals.var()) or 1.0
    pt = torch.as_tensor(pts)
    vt = torch.as_tensor(vals - offset)
    rng = np.random.default_rng(seed)
    if validation is None:
        idx = np.sort(rng.choice(n, size=min(n_fit, n), replace=False))
        q_pts, q_vals, exclude = pt[torch.as_tensor(idx)], vt[torch.as_tensor(idx)], idx
        kf = min(fit_neighbors, n - 1)
    else:
        vp = np.asarray(validation[0], dtype=np.float64)
        vv = np.asarray(validation[1], dtype=np.float64).reshape(-1)
        if vp.ndim != 2 or vp.shape[1] != pts.shape[1] or len(vp) != len(vv) or len(vv) < 4:
            raise ValueError(f"validation must be ([M, {pts.shape[1]}] points, [M] values) with M >= 4")
        if not (np.isfinite(vp).all() and np.isfinite(vv).all()):
            raise ValueError("kriging validation points and values must be finite")
        sub = np.sort(rng.choice(len(vv), size=min(n_fit, len(vv)), replace=False))
        q_pts, q_vals, exclude = torch.as_tensor(vp[sub]), torch.as_tensor(vv[sub] - offset), None
        kf = min(fit_neighbors, n)
    col_group = _column_groups(groups, pts.shape[1])
    n_groups = len(groups)
    starts = _initial_lengths(pts, groups, time_column)
    time_groups = [g for g, cols in enumerate(groups) if time_column is not None and list(cols) == [time_column]]
    space_groups = [g for g in range(n_groups) if g not in time_groups]
    floor = _LOG_FLOOR + math.log(var0)

    # theta = [log var, log nugget, log mean var, log lengths (G)] (+ [log var static, log lengths static (G)])
    def unpack(theta: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
        comps = [(theta[0].clamp(-12, 8), _inverse_sq_lengths(theta[3:3 + n_groups].clamp(-12, 12), col_group))]
        if static:
            comps.append((theta[3 + n_groups].clamp(-12, 8),
                          _inverse_sq_lengths(theta[4 + n_groups:].clamp(-12, 12), col_group, ignore=time_column)))
        return comps, theta[1].clamp(floor, 8), theta[2].clamp(-12, 8)

    def neighbours(theta: torch.Tensor):
        comps, _, _ = unpack(theta.detach())
        trees = [cKDTree((pt * inv.sqrt()).numpy()) for _, inv in comps]
        nb = torch.as_tensor(_union_neighbours(trees, [(q_pts * inv.sqrt()).numpy() for _, inv in comps],
                                               kf, exclude=exclude))
        d2_nn, d2_qn = _sq_differences(pt, q_pts, nb)
        return d2_nn, d2_qn, vt[nb]

    target = q_vals

    def loo(theta, nb, kernel):
        comps, ln, lm = unpack(theta)
        return _solve_sq(nb[0], nb[1], nb[2], comps, kernel, ln, lm)

    def nlpd(theta, nb, kernel):
        m, v = loo(theta, nb, kernel)
        return 0.5 * (torch.log(2 * math.pi * v) + (target - m).pow(2) / v).mean()

    trials = []
    for si in range(4):
        for ti in (range(4) if time_groups else [0]):
            ll = np.zeros(n_groups)
            for g in space_groups:
                ll[g] = math.log(starts[g][si])
            for g in time_groups:
                ll[g] = math.log(starts[g][ti])
            share = 0.45 if static else 0.9
            start = [math.log(share * var0), math.log(0.05 * var0), math.log(var0), *ll]
            if static:
                start += [math.log(0.45 * var0), *ll]
            trials.append(torch.tensor(start, dtype=torch.float64))

    # the starting point of every family: the best of a few length combinations
    # (scored with the middle family, Matérn 3/2)
    theta0, score0 = trials[0], math.inf
    for th in trials:
        with torch.no_grad():
            s = float(nlpd(th, neighbours(th), "matern32"))
        if s < score0:
            score0, theta0 = s, th
    best: tuple[float, float, str, torch.Tensor] | None = None
    for kernel in kernels:
        theta = theta0.clone().requires_grad_(True)
        for _ in range(2):
            nb = neighbours(theta)
            opt = torch.optim.LBFGS([theta], max_iter=max_iter, line_search_fn="strong_wolfe",
                                    tolerance_grad=1e-6, tolerance_change=1e-6)

            def closure(opt=opt, theta=theta, nb=nb, kernel=kernel):  # bound: run within this pass
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
            nb = neighbours(th)
            m, _ = loo(th, nb, kernel)
            mse = float((target - m).pow(2).mean())
            score = float(nlpd(th, nb, kernel))
        if best is None or mse < best[0] * (1 - 1e-3) or (abs(mse - best[0]) <= 1e-3 * best[0] and score < best[1]):
            best = (mse, score, kernel, th)
    assert best is not None
    _, _, kernel, th = best
    g = n_groups
    params: dict[str, Any] = {
        "log_var": float(th[0].clamp(-12, 8)), "log_nugget": float(th[1].clamp(floor, 8)),
        "log_mean_var": float(th[2].clamp(-12, 8)),
        "log_lengths": [float(v) for v in th[3:3 + g].clamp(-12, 12)], "offset": offset}
    if static:
        params["log_var_static"] = float(th[3 + g].clamp(-12, 8))
        params["log_lengths_static"] = [float(v) for v in th[4 + g:].clamp(-12, 12)]
    return LocalKriging(pts, vals, groups, kernel, params, neighbors, time_column)


def frame_rbf(points: Any, values: Any, frames: Any, query: Any, query_frames: Any, *,
              neighbors: int = 64, min_points: int = 8) -> tuple[np.ndarray, str]:
    """Thin-plate RBF interpolation (:class:`scipy.interpolate.RBFInterpolator`) per frame.

    The reference a scientist tries first for gap filling: each frame (distinct time)
    interpolated from its own observations. Where a frame holding query points has
    fewer than ``min_points`` observations (scattered data: few points share a time),
    one RBF over space and time together is used instead.

    Parameters
    ----------
    points
        Observation coordinates ``[N, D]`` (space only).
    values
        Observed values ``[N]``.
    frames
        Frame label of each observation ``[N]`` (e.g. its time), or ``None``.
    query
        Where to interpolate ``[M, D]``.
    query_frames
        The frame of each query point ``[M]``.
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
    if pts.ndim != 2 or len(pts) != len(vals) or q.ndim != 2 or q.shape[1] != pts.shape[1]:
        raise ValueError(f"frame_rbf needs points [N, D], values [N] and query [M, D]; got "
                         f"{pts.shape}, {vals.shape} and {q.shape}")
    if not (np.isfinite(pts).all() and np.isfinite(vals).all() and np.isfinite(q).all()):
        raise ValueError("frame_rbf points, values and query must be finite; drop missing "
                         "observations first")
    out = np.full(len(q), np.nan)
    if frames is None:
        frames = np.zeros(len(pts))
        query_frames = np.zeros(len(q))
    frames = np.asarray(frames)
    query_frames = np.asarray(query_frames)
    needed = np.unique(query_frames)
    counts = {f: c for f, c in zip(*np.unique(frames, return_counts=True), strict=False)}

    def rbf(p: np.ndarray, v: np.ndarray, at: np.ndarray) -> np.ndarray:
        # coincident points (a grid's poles on the unit sphere) would make the system
        # singular: each is used once, with the mean of its values
        # (to 1e-9: a pole's longitudes give unit-sphere points apart by rounding only)
        _, first, inverse = np.unique(np.round(p, 9), axis=0, return_index=True, return_inverse=True)
        p = p[first]
        v = np.bincount(inverse.ravel(), weights=v) / np.bincount(inverse.ravel())
        k = int(min(neighbors, len(p)))
        try:
            return RBFInterpolator(p, v, kernel="thin_plate_spline", neighbors=k)(at)
        except np.linalg.LinAlgError:
            # neighbourhoods whose points make the linear polynomial degenerate (a ring
            # of constant latitude around a pole, on the unit sphere): the linear
            # polyharmonic spline needs only a constant
            return RBFInterpolator(p, v, kernel="linear", degree=0, neighbors=k)(at)

    if all(counts.get(f, 0) >= min_points for f in needed):
        for f in needed:
            sel, qsel = frames == f, query_frames == f
            out[qsel] = rbf(pts[sel], vals[sel], q[qsel])
        return out, "per-frame"
    allp = np.column_stack([pts, frames.astype(np.float64)])
    allq = np.column_stack([q, query_frames.astype(np.float64)])
    return rbf(allp, vals, allq), "space-time"
