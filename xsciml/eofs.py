"""Empirical orthogonal functions (EOFs) of snapshot matrices, pure NumPy.

The linear latent models share these pieces: the decomposition of a snapshot matrix
``Y [S, P]`` (snapshots by points), the out-of-sample noise variance of a rank-``k``
truncation, the MAP reconstruction of partly observed snapshots, and the choice of the
rank by validation on held-out snapshots (:func:`select_rank`), which also scores the
classical PCA-MAP reference on the same masks.

PCA-MAP (Bayesian ridge on the leading EOFs) is what a scientist would use to fill a
partly observed snapshot from a record of complete ones: with ``x = m + V^T z``,
``z ~ N(0, diag(p))`` and noise variance ``s2``, the posterior mean of ``z`` given the
observed points ``O`` is ``(V_O V_O^T / s2 + diag(1/p))^{-1} V_O (y_O - m_O) / s2``
(e.g. Bishop 2006, §12.2; Tipping & Bishop 1999 for probabilistic PCA).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["eof_decomposition", "out_of_sample_noise", "map_reconstruct", "select_rank",
           "validation_masks", "RankSelection"]

#: observed fractions at which :func:`select_rank` scores each rank
VALIDATION_FRACTIONS: tuple[float, ...] = (0.1, 0.02)


def eof_decomposition(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``[P]``, EOFs ``[r, P]`` (orthonormal rows) and variances ``[r]`` of ``Y [S, P]``.

    Uses the small Gram matrix when there are fewer snapshots than points.

    Examples
    --------
    >>> import numpy as np
    >>> Y = np.random.default_rng(0).normal(size=(6, 40))
    >>> mean, V, lam = eof_decomposition(Y)
    >>> V.shape, bool(np.allclose(V @ V.T, np.eye(len(lam))))
    ((5, 40), True)
    """
    Y = _check_matrix(Y, "Y")
    mean = Y.mean(0)
    A = Y - mean
    if A.shape[0] < A.shape[1]:
        lam, u = np.linalg.eigh(A @ A.T)
        lam, u = lam[::-1].clip(0.0), u[:, ::-1]
        keep = lam > lam[0] * 1e-12 if lam[0] > 0 else np.zeros(len(lam), bool)
        vt = (u[:, keep].T @ A) / np.sqrt(lam[keep])[:, None]
        lam = lam[keep]
    else:
        _, sv, vt = np.linalg.svd(A, full_matrices=False)
        lam = sv**2
    return mean, vt, lam / max(len(Y) - 1, 1)


def out_of_sample_noise(Y: np.ndarray, ranks: int | np.ndarray, folds: int = 5) -> Any:
    """Out-of-sample residual variance per point of rank-``k`` truncations of ``Y [S, P]``.

    Contiguous blocks of snapshots are projected on the EOFs of the other blocks (the
    in-sample residual underestimates the misfit of new snapshots). ``ranks`` may be one
    rank (a float is returned) or an array of ranks (an array is returned); one
    decomposition per fold serves all ranks.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> Y = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 50)) + 0.1 * rng.normal(size=(40, 50))
    >>> s2 = out_of_sample_noise(Y, np.array([1, 3, 10]))
    >>> bool(s2[1] < s2[0]), bool(0.005 < s2[1] < 0.05)
    (True, True)
    """
    Y = np.asarray(Y, dtype=np.float64)
    scalar = np.ndim(ranks) == 0
    ks = np.atleast_1d(np.asarray(ranks, dtype=int))
    S = len(Y)
    edges = np.linspace(0, S, min(folds, S) + 1).astype(int)
    sq, count = np.zeros(len(ks)), 0
    for a, b in itertools.pairwise(edges):
        rest = np.r_[0:a, b:S]
        if len(rest) < 2 or a == b:
            continue
        mean, vt, _ = eof_decomposition(Y[rest])
        r = Y[a:b] - mean
        energy = np.cumsum(np.r_[0.0, ((r @ vt.T) ** 2).sum(0)])  # captured by the first j EOFs
        sq += float((r * r).sum()) - energy[np.minimum(ks, len(energy) - 1)]
        count += r.size
    out = np.maximum(sq / max(count, 1), 0.0)
    return float(out[0]) if scalar else out


def map_reconstruct(Y: np.ndarray, observed: np.ndarray, mean: np.ndarray, components: np.ndarray,
                    prior_var: np.ndarray, noise_var: float) -> np.ndarray:
    """Posterior-mean reconstruction of snapshots ``Y [N, P]`` from their ``observed`` points.

    ``x = mean + components^T z`` with ``z ~ N(0, diag(prior_var))`` and white noise of
    variance ``noise_var`` on the observations.

    Examples
    --------
    >>> import numpy as np
    >>> V = np.eye(3, 5)
    >>> y = np.array([[2.0, 1.0, 0.0, 0.0, 0.0]])
    >>> obs = np.array([[True, True, False, False, True]])
    >>> map_reconstruct(y, obs, np.zeros(5), V, np.full(3, 1e6), 1e-6).round(3)
    array([[2., 1., 0., 0., 0.]])
    """
    Y = np.asarray(Y, dtype=np.float64)
    out = np.empty_like(Y)
    prior = np.maximum(np.asarray(prior_var, dtype=np.float64), 1e-12)
    for s in range(len(Y)):
        o = observed[s]
        B = components[:, o]
        lhs = B @ B.T / noise_var + np.diag(1.0 / prior)
        z = np.linalg.solve(lhs, B @ (Y[s, o] - mean[o]) / noise_var)
        out[s] = mean + z @ components
    return out


def _check_matrix(Y: np.ndarray, name: str) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or min(Y.shape) < 1:
        raise ValueError(f"{name} must be a [snapshots, points] matrix, got shape {Y.shape}")
    if not np.isfinite(Y).all():
        raise ValueError(f"{name} has {int((~np.isfinite(Y)).sum())} NaN or infinite values; EOFs need complete "
                         "snapshots (drop the points missing in some snapshot first)")
    return Y


def _nrmse_unobserved(pred: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> float:
    w = ~observed
    return float(np.sqrt(np.mean((pred[w] - truth[w]) ** 2)) / max(truth[w].std(), 1e-300))


def validation_masks(n: int, n_points: int, fraction: float, seed: int = 0) -> np.ndarray:
    """``[n, n_points]`` masks, each observing ``max(1, round(fraction * n_points))`` random points.

    Examples
    --------
    >>> validation_masks(3, 50, 0.1).sum(axis=1).tolist()
    [5, 5, 5]
    """
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * n_points)))
    m = np.zeros((n, n_points), dtype=bool)
    for s in range(n):
        m[s, rng.choice(n_points, k, replace=False)] = True
    return m


def _candidate_ranks(max_rank: int) -> list[int]:
    ks = {max_rank}
    k = 1
    while k < max_rank:
        ks.add(k)
        k *= 2
    return sorted(ks)


@dataclass
class RankSelection:
    """What :func:`select_rank` measured on the held-out snapshots.

    ``scores[k]`` and ``reference[k]`` hold, per observed fraction, the nRMSE on the
    unobserved points of the probabilistic-PCA reconstruction (out-of-sample noise) and
    of the classical PCA-MAP (in-sample variances, noise the discarded variance per
    point) at rank ``k``. ``rank`` and ``noise`` (``"cv"``: out-of-sample, or
    ``"discarded"``: the discarded variance per point) are the chosen pair.
    """

    rank: int
    fractions: tuple[float, ...]
    noise: str = "cv"
    scores: dict[int, list[float]] = field(default_factory=dict)
    reference: dict[int, list[float]] = field(default_factory=dict)
    noise_var: float = float("nan")
    n_validation: int = 0

    def best_reference(self) -> tuple[int, list[float]]:
        """PCA-MAP at its rank chosen by validation -- the lowest mean nRMSE over the
        fractions -- and its nRMSE per fraction."""
        k = min(self.reference, key=lambda k: (float(np.mean(self.reference[k])), k))
        return k, list(self.reference[k])


def select_rank(train: np.ndarray, validation: np.ndarray, *, max_rank: int | None = None,
                fractions: tuple[float, ...] = VALIDATION_FRACTIONS, seed: int = 0,
                masks: list[np.ndarray] | None = None) -> RankSelection:
    """Choose the EOF rank by gap filling held-out snapshots.

    EOFs of ``train [S, P]``; each snapshot of ``validation [N, P]`` is observed at a
    random ``fraction`` of its points (per fraction, seeded) and reconstructed by
    probabilistic PCA with the out-of-sample noise (:func:`out_of_sample_noise`) at each
    candidate rank (powers of two up to ``max_rank``, and ``max_rank``), and by the
    classical PCA-MAP (noise the in-sample discarded variance per point) at the same
    ranks on the same masks, the reference. The (rank, noise estimate) pair with the
    lowest mean nRMSE over the fractions wins (the smaller rank on a tie): the
    out-of-sample noise is better founded, but on few or strongly structured snapshots
    the discarded variance can fill gaps better, and validation tells which.
    ``masks`` (one ``[N, P]`` boolean array per fraction) replaces the random masks.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> Y = rng.normal(size=(60, 4)) * [4, 3, 2, 1] @ rng.normal(size=(4, 80))
    >>> Y += 0.05 * rng.normal(size=Y.shape)
    >>> sel = select_rank(Y[:50], Y[50:], max_rank=16, fractions=(0.2,))
    >>> sel.rank >= 4
    True
    """
    train = _check_matrix(train, "train")
    validation = _check_matrix(validation, "validation")
    if validation.shape[1] != train.shape[1]:
        raise ValueError(f"validation has {validation.shape[1]} points per snapshot, train {train.shape[1]}")
    mean, vt, lam = eof_decomposition(train)
    cap = len(lam) if max_rank is None else max(1, min(int(max_rank), len(lam)))
    ks = _candidate_ranks(cap)
    noise = out_of_sample_noise(train, np.array(ks))
    P = train.shape[1]
    if masks is None:
        masks = [validation_masks(len(validation), P, f, seed=seed + j) for j, f in enumerate(fractions)]
    elif len(masks) != len(fractions) or any(m.shape != validation.shape for m in masks):
        raise ValueError(f"masks must be {len(fractions)} boolean arrays of shape {validation.shape}")
    sel = RankSelection(rank=ks[-1], fractions=tuple(fractions), n_validation=len(validation))
    for k, s2 in zip(ks, noise, strict=True):
        s2 = max(float(s2), 1e-12 * float(lam[0]) if len(lam) else 1e-12)
        prior = np.maximum(lam[:k] - s2, 1e-3 * s2)
        discarded = max(float(lam[k:].sum()) / P, 1e-8 * float(lam[0]))
        sel.scores[k] = [_nrmse_unobserved(map_reconstruct(validation, m, mean, vt[:k], prior, s2), validation, m)
                         for m in masks]
        sel.reference[k] = [_nrmse_unobserved(map_reconstruct(validation, m, mean, vt[:k], lam[:k], discarded),
                                              validation, m) for m in masks]
    pairs = [(float(np.mean(sel.scores[k])), k, "cv") for k in ks]
    pairs += [(float(np.mean(sel.reference[k])), k, "discarded") for k in ks]
    _, sel.rank, sel.noise = min(pairs, key=lambda p: (p[0], p[1], p[2] != "cv"))
    if sel.noise == "cv":
        sel.noise_var = float(noise[ks.index(sel.rank)])
    else:
        sel.noise_var = max(float(lam[sel.rank:].sum()) / P, 1e-8 * float(lam[0]))
    return sel
