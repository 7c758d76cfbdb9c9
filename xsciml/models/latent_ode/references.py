r"""Reference forecasts built on the training period, and their combination with a learned forecast.

A learned forecast of weather or climate data is only worth something against what a
forecaster would try first. For a model whose time axis is a calendar (datetime64 or
cftime), :func:`xsciml.models.fit_dynamics` builds three such references on the training
period, on the training grid:

* **persistence**: the initial state, at every lead;
* **climatology**: a least-squares fit, per grid point, of the training period by a
  mean plus the harmonics of the cycles the period resolves — the diurnal cycle
  (:math:`\cos, \sin(2\pi k\,h/24\,\mathrm{h})`, :math:`k \le 2`) when the frames are
  less than 12 h apart and span at least two days, the annual cycle (:math:`k \le 3`,
  in the calendar's own year: 360 days for ``360_day``, 365 for ``noleap``) when they
  span a year; the training mean otherwise;
* **anomaly persistence**: the climatology plus the initial anomaly damped by its lag
  correlation :math:`\rho(\ell)` over the training period (pooled over space and
  variables, the least-squares damping).

The end of the training period is held out (``val_fraction`` of
:func:`~xsciml.models.fit_dynamics`): a first fit of the learned model on the frames
before it forecasts from every held-out
start (up to 32) to every later held-out frame, and per-lead **convex weights** of the
learned forecast and the references are fitted there by least squares
(:func:`xsciml.baselines.fit_blend`; leads binned on a geometric grid of the frame
spacing, weights interpolated in log-lead between bins). The references of these
validation forecasts are those of the whole training period, the ones that forecast
afterwards: they have a few parameters per point (harmonic coefficients, one damping per
lag), which gain little from seeing the validation frames, while references of the
shorter period before them are weaker than the ones in use and would get too little
weight. The model is refitted on the whole training period, and forecasts return the
combination :math:`\sum_k w_k(\ell) f_k`, with the mean of both fits' forecasts as the
learned member: it is at least as good as the best member on the validation period,
and a learned model that does not help gets a small weight.

Ensembles (``members=N``) add to the combination, for each member, the learned
forecast's own spread (initial codes drawn from their Laplace posterior) and a
model-error term drawn from a Gaussian with the empirical covariance of the
combination's errors on the validation period at that lead (the error fields of the
held-out starts weighted by independent standard normals: their spatial structure and
their size by lead are kept), scaled so that both terms add up to the validation
mean squared error times an error level: persistence's mean squared error at that lead
over the whole training period over the same on the validation period (within 1/4 to 4).
The validation period is one stretch of weather; the level refers its errors to the
whole training period's, which spans more of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ...coords import time_calendar, time_to_float

__all__ = ["MEMBERS", "References", "year_length_days"]

#: The combined forecasts, in the order of the weights.
MEMBERS = ("model", "persistence", "climatology", "anomaly persistence")
_DAY = 86400.0
#: Held-out starts used to fit the weights (evenly spread over the validation period).
MAX_STARTS = 32
#: Lead bins of the weights (geometric in the frame spacing).
MAX_LEAD_BINS = 10
#: Bound on the stored validation error fields (floats) that calibrate ensembles.
MAX_ERROR_VALUES = 2**23
#: at most this many recent states (``forecast(..., recent=)``) are forecast and verified to
#: update the combination (:meth:`References.recent_update`), evenly spaced in time
MAX_RECENT_STATES = 64
#: the windows of recent verified forecasts an ensemble's spread is chosen from, as fractions
#: of the validation period's length (:meth:`References.recent_error_ms`)
RECENT_WINDOWS = (1.0, 0.5, 0.25)


def year_length_days(calendar: str) -> float:
    """Days in a year of ``calendar`` (the mean Gregorian year for the standard ones).

    Examples
    --------
    >>> year_length_days("360_day"), year_length_days("noleap")
    (360.0, 365.0)
    """
    cal = calendar.lower()
    if cal in ("360_day",):
        return 360.0
    if cal in ("noleap", "365_day"):
        return 365.0
    if cal in ("all_leap", "366_day"):
        return 366.0
    if cal == "julian":
        return 365.25
    return 365.2425


def _seconds(values: Any) -> np.ndarray:
    return time_to_float(np.asarray(values), "seconds")


def choose_harmonics(t: np.ndarray, calendar: str) -> tuple[int, int, list[str]]:
    """The diurnal and annual harmonics a training period of times ``t`` (seconds) resolves.

    Returns ``(diurnal, annual, notes)``: the number of harmonics of each cycle and why
    the others were left out.
    """
    notes = []
    t = np.sort(np.asarray(t, dtype=np.float64))
    step = float(np.median(np.diff(t))) if t.size > 1 else math.inf
    span = float(t[-1] - t[0]) + step if t.size > 1 else 0.0  # the period the frames cover
    diurnal = 0
    if step < 0.5 * _DAY and span >= 2 * _DAY:
        diurnal = 2 if step <= 0.25 * _DAY else 1
    elif step < 0.5 * _DAY:
        notes.append(f"no diurnal cycle: the training period spans {span / _DAY:.2g} days (needs 2)")
    year = year_length_days(calendar) * _DAY
    annual = 0
    if span >= year - 0.5 * step:
        annual = 3 if step <= 5 * _DAY else 1
    else:
        notes.append(f"no annual cycle: the training period spans {span / _DAY:.0f} days (needs a "
                     f"{year / _DAY:.0f}-day year); the climatology is the training mean"
                     + (" plus the diurnal cycle" if diurnal else ""))
    # as many frames as coefficients, twice over, or drop the highest harmonics
    while 1 + 2 * (diurnal + annual) > max(1, len(t) // 2):
        if annual:
            annual -= 1
        elif diurnal:
            diurnal -= 1
    return diurnal, annual, notes


def _stale_mean(t: np.ndarray, calendar: str, annual: int) -> str | None:
    """Why the training mean is not the climatology of the forecast dates (None when it is).

    A record that spans more than a sixth of a year without resolving the annual cycle
    averages several seasons: its mean (and anomalies from it) describe none of the
    dates after it, so they stay out of the combination.
    """
    t = np.sort(np.asarray(t, dtype=np.float64))
    if annual or t.size < 2:
        return None
    step = float(np.median(np.diff(t)))
    span = float(t[-1] - t[0]) + step
    year = year_length_days(calendar) * _DAY
    if span <= year / 6:
        return None
    return (f"the training period spans {span / _DAY:.0f} days, more than a season and less than a year: "
            "its mean is not the climatology of the forecast dates, so climatology and anomaly persistence "
            "are scored but left out of the combination")


def harmonic_basis(t: np.ndarray, calendar: str, diurnal: int, annual: int) -> np.ndarray:
    """Design matrix ``[..., 1 + 2 (diurnal + annual)]`` of the climatology at times ``t``
    (float seconds since 1970-01-01 in the calendar): 1, then cos/sin of each harmonic."""
    t = np.asarray(t, dtype=np.float64)
    cols = [np.ones_like(t)]
    day_phase = 2 * np.pi * np.mod(t, _DAY) / _DAY
    for k in range(1, diurnal + 1):
        cols += [np.cos(k * day_phase), np.sin(k * day_phase)]
    year = year_length_days(calendar) * _DAY
    year_phase = 2 * np.pi * np.mod(t, year) / year
    for k in range(1, annual + 1):
        cols += [np.cos(k * year_phase), np.sin(k * year_phase)]
    return np.stack(cols, -1)


def _fit_coefficients(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Per-point least squares ``[B, P, C]`` of ``Y [N, P, C]`` (NaN = missing) on ``X [N, B]``;
    points with fewer finite frames than coefficients keep their mean only."""
    m = np.isfinite(Y)
    y0 = np.where(m, Y, 0.0)
    mf = m.astype(np.float64)
    A = np.einsum("nb,npc,nd->pcbd", X, mf, X)  # [P, C, B, B]
    b = np.einsum("nb,npc->pcb", X, y0)
    B = X.shape[1]
    n = mf.sum(0)  # [P, C]
    A = A + 1e-9 * np.maximum(n, 1)[..., None, None] * np.eye(B)
    coef = np.full((*n.shape, B), np.nan)
    full = n >= 2 * B
    if full.any():
        coef[full] = np.linalg.solve(A[full], b[full][..., None])[..., 0]
    part = (n > 0) & ~full
    if part.any():
        coef[part] = 0.0
        coef[part, 0] = y0.sum(0)[part] / n[part]  # the mean (the first column is 1)
    return np.moveaxis(coef, -1, 0)


def _interp_lagged(A: np.ndarray, t: np.ndarray, lag: float, step: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``A`` ``[S, T, ...]`` at times ``t + lag`` (linear in time between frames at most
    1.5 spacings apart), and which frames have such a later value."""
    target = t + lag
    k = np.searchsorted(t, target, side="right") - 1
    ok = (k >= 0) & (k < len(t))
    exact = ok & np.isclose(t[np.clip(k, 0, len(t) - 1)], target, rtol=0, atol=1e-6 * step)
    inner = ok & ~exact & (k < len(t) - 1)
    kk = np.clip(k, 0, len(t) - 2)
    gap = t[kk + 1] - t[kk]
    inner &= gap <= 1.5 * step
    valid = exact | inner
    w = np.where(inner, (target - t[kk]) / np.where(gap > 0, gap, 1.0), 0.0)
    k0 = np.clip(k, 0, len(t) - 1)
    k1 = np.where(inner, kk + 1, k0)
    shape = (1, -1) + (1,) * (A.ndim - 2)
    out = (1 - w.reshape(shape)) * A[:, k0] + w.reshape(shape) * A[:, k1]
    return out, valid


class References:
    """Persistence, a harmonic climatology and damped anomaly persistence of a training
    period, on its grid, and their combination weights with a learned forecast.

    Built by :func:`xsciml.models.fit_dynamics` for calendar time axes (see the module
    docs); a fitted forecaster holds it as ``model.references``. Not usually built by hand.

    Parameters
    ----------
    variables
        The model's variables.
    sdims
        The space dimensions of the grid, in the order of the stored arrays.
    coords
        The grid's space coordinates: name → (dims, values).
    calendar
        Calendar of the time axis.
    diurnal, annual
        Harmonics of the climatology.
    coef
        Climatology coefficients ``[B, P, C]`` (P: the grid's points, flattened).
    scale
        Standard deviation of each variable over the training period (pools the variables
        in the weights and the damping).
    lag_step, rho
        The anomalies' lag correlation at lags ``lag_step * (1 .. len(rho))`` (seconds).
    notes
        What was left out of the references and why.
    """

    def __init__(self, variables: Sequence[str], sdims: Sequence[Hashable],
                 coords: Mapping[str, tuple[Sequence[Hashable], np.ndarray]], *, calendar: str,
                 diurnal: int, annual: int, coef: np.ndarray, scale: np.ndarray, lag_step: float,
                 rho: np.ndarray, notes: Sequence[str] = ()) -> None:
        self.variables = list(variables)
        self.sdims = [str(d) for d in sdims]
        self.coords = {str(k): (tuple(str(d) for d in v[0]), np.asarray(v[1])) for k, v in coords.items()}
        self.calendar = str(calendar)
        self.diurnal, self.annual = int(diurnal), int(annual)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.lag_step = float(lag_step)
        self.rho = np.asarray(rho, dtype=np.float64)
        self.notes = list(notes)
        #: members kept out of the combination (and why, in :attr:`notes`)
        self.excluded: list[str] = []
        #: lead-bin centres (seconds) and weights ``[len(MEMBERS), L]``; None before
        #: :meth:`fit_weights`
        self.lead_grid: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        #: error fields of the combination on the validation period ``[L, n, P, C]``
        #: (NaN where a start has no frame in that bin) and their mean square per bin
        #: times the error level of the bin (the MSE ensembles are calibrated to)
        self.errors: np.ndarray | None = None
        self.error_ms: np.ndarray | None = None
        #: validation scores (RMSE per member and of the combination, per bin)
        self.validation: dict[str, Any] = {}
        #: persistence's mean squared error (standardised) over the training period at lags
        #: ``lag_step * (1 .. len(rho))`` (empty when unknown)
        self.persistence_ms = np.zeros(0)
        #: initial times (seconds) of the validation forecasts; with ``validation["end"]``
        #: (the last validated time) and ``validation["span"]`` (from the first start to
        #: it), the window of :meth:`recent_error_ms`
        self.validation_t0 = np.zeros(0)
        #: the validation errors' cross-products ``Σ (f_i − y)(f_j − y)`` per bin ``[L, M, M]``
        #: (standardised, over the points where every forecast and the truth are finite):
        #: what the weights are fitted on, and refitted on with recent forecasts added
        #: (:meth:`recent_update`)
        self.validation_gram: np.ndarray | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(cls, ds: xr.Dataset, variables: Sequence[str], *, time: str, sample_dim: Hashable | None,
            sdims: Sequence[Hashable], space: Sequence[str]) -> References:
        """The references of a training period ``ds`` (``(sample_dim,) time, *sdims``)."""
        Y, t = _values(ds, variables, time, sample_dim, sdims)
        calendar = time_calendar(np.asarray(ds[time].values))
        diurnal, annual, notes = choose_harmonics(t, calendar)
        S, T = Y.shape[:2]
        X = harmonic_basis(t, calendar, diurnal, annual)
        coef = _fit_coefficients(np.tile(X, (S, 1)), Y.reshape(S * T, *Y.shape[2:]))
        scale = np.nanstd(Y.reshape(-1, Y.shape[-1]), axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        coords = {n: (tuple(str(d) for d in ds[n].dims), np.asarray(ds[n].values)) for n in space}
        refs = cls(variables, sdims, coords, calendar=calendar, diurnal=diurnal, annual=annual,
                   coef=coef, scale=scale, lag_step=1.0, rho=np.zeros(0), notes=notes)
        refs._fit_damping(Y, t)
        stale = _stale_mean(t, calendar, annual)
        if stale:
            refs.excluded = ["climatology", "anomaly persistence"]
            refs.notes.append(stale)
        return refs

    def _fit_damping(self, Y: np.ndarray, t: np.ndarray) -> None:
        """Lag correlation of the standardised anomalies at multiples of the frame spacing,
        and persistence's mean squared error (standardised) at the same lags: the error
        level the validation period's is referred to (:meth:`_error_level`)."""
        step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
        Z = Y / self.scale
        A = Z - self.climatology_values(t)[None] / self.scale
        S = A.shape[0]
        J = int(min(max(len(t) // 2, 1), 256))
        rho, pers = np.zeros(J), np.zeros(J)
        for j in range(J):  # anomalies and values lagged together
            later, valid = _interp_lagged(np.concatenate([A, Z]), t, (j + 1) * step, step)
            a0, a1 = A[:, valid], later[:S, valid]
            ok = np.isfinite(a0) & np.isfinite(a1)
            den = float((a0[ok] ** 2).sum())
            rho[j] = float((a0[ok] * a1[ok]).sum()) / den if den > 0 else 0.0
            d = (later[S:, valid] - Z[:, valid]) ** 2
            pers[j] = float(np.nanmean(d)) if np.isfinite(d).any() else 0.0
        self.lag_step, self.rho = step, np.clip(rho, 0.0, 1.0)
        self.persistence_ms = pers

    # ------------------------------------------------------------------ evaluating
    def climatology_values(self, t: np.ndarray) -> np.ndarray:
        """The climatology ``[..., P, C]`` at times ``t`` (float seconds, any shape)."""
        X = harmonic_basis(t, self.calendar, self.diurnal, self.annual)
        return np.einsum("...b,bpc->...pc", X, self.coef)

    def damping(self, lead: np.ndarray) -> np.ndarray:
        """The damping ``ρ`` of the initial anomaly at leads (seconds): the lag correlation
        of the training anomalies, interpolated; beyond the longest lag it decays
        geometrically from there."""
        lead = np.asarray(lead, dtype=np.float64)
        if self.rho.size == 0:
            return np.zeros_like(lead)
        lags = self.lag_step * np.arange(0, self.rho.size + 1)
        vals = np.concatenate([[1.0], self.rho])
        out = np.interp(lead, lags, vals)
        far = lead > lags[-1]
        if far.any():
            last = float(vals[-1])
            out[far] = last ** (lead[far] / lags[-1]) if last > 0 else 0.0
        return np.clip(out, 0.0, 1.0)

    def check_grid(self, ds: xr.Dataset, role: str = "initial state") -> str | None:
        """Why ``ds`` is not on the references' grid (None when it is)."""
        for n, (dims, vals) in self.coords.items():
            if n not in ds.variables:
                return f"the {role} has no coordinate {n!r}"
            c = ds[n]
            if set(c.dims) != set(dims):
                return f"the {role}'s coordinate {n!r} has dims {c.dims}, the training grid {dims}"
            cv = np.asarray(c.transpose(*dims).values)
            if cv.shape != vals.shape or not np.allclose(cv.astype(np.float64), vals.astype(np.float64),
                                                          equal_nan=True, rtol=0, atol=1e-6):
                return (f"the {role} is not on the training grid (coordinate {n!r} differs); "
                        "the references exist on the training grid only")
        return None

    def members(self, x0: np.ndarray, t0: np.ndarray, lead: np.ndarray) -> dict[str, np.ndarray]:
        """Persistence, climatology and anomaly persistence ``[N, K, P, C]`` from initial
        states ``x0 [N, P, C]`` at times ``t0 [N]`` (seconds), at leads ``[K]`` (seconds)."""
        valid = t0[:, None] + lead[None, :]
        clim = self.climatology_values(valid)
        anom0 = x0 - self.climatology_values(t0)
        rho = self.damping(lead)[None, :, None, None]
        return {"persistence": np.broadcast_to(x0[:, None], clim.shape),
                "climatology": clim, "anomaly persistence": clim + rho * anom0[:, None]}

    def lead_weights(self, lead: np.ndarray) -> np.ndarray:
        """Weights ``[len(MEMBERS), K]`` at leads (seconds), interpolated in log-lead
        between the validated bins (persistence alone at lead 0)."""
        assert self.weights is not None and self.lead_grid is not None
        lead = np.asarray(lead, dtype=np.float64)
        g = np.log(self.lead_grid)
        out = np.empty((len(MEMBERS), lead.size))
        pos = lead > 0
        x = np.log(np.where(pos, lead, 1.0))
        for k in range(len(MEMBERS)):
            out[k] = np.interp(x, g, self.weights[k])
        out[:, ~pos] = 0.0
        out[MEMBERS.index("persistence"), ~pos] = 1.0
        return out / out.sum(0, keepdims=True)

    def lead_error_ms(self, lead: np.ndarray) -> np.ndarray:
        """Validation mean squared error of the combination (standardised) at leads."""
        assert self.error_ms is not None and self.lead_grid is not None
        lead = np.asarray(lead, dtype=np.float64)
        x = np.log(np.where(lead > 0, lead, self.lead_grid[0]))
        return np.interp(x, np.log(self.lead_grid), self.error_ms) * (lead > 0)

    def recent_error_ms(self, errors: np.ndarray, s: np.ndarray, t0: np.ndarray, lead: np.ndarray, *,
                        choose: bool = True) -> tuple[np.ndarray, np.ndarray]:
        r"""The mean squared error ensembles from initial times ``t0 [N]`` are calibrated to,
        updated with the combination's verified forecasts from recent states.

        ``errors [S, K]`` (or ``[N, S, K]``, per initial time): the mean squared error
        (standardised, over the grid) of the deterministic combined forecast from states at
        times ``s [S]`` at the leads ``[K]`` (seconds), NaN where not verified. The MSE at
        ``(n, k)`` is the mean over the forecasts verified in a sliding window before
        ``t0[n]`` (as in Gneiting et al. 2005, "Calibrated probabilistic forecasting using
        ensemble model output statistics and minimum CRPS estimation", Mon. Wea. Rev. 133,
        1098–1118): every validation forecast verified there counts with the calibrated
        MSE (:meth:`lead_error_ms`), every recent one with its own error. Only states after
        the training period count (the model was fitted on the others) and no forecast
        verified after ``t0[n]``.

        The window is the validation period's length, or a half or a quarter of it
        (:data:`RECENT_WINDOWS`), whichever would have predicted the recent forecasts
        verified before ``t0[n]`` best: each of them is scored, at every lead, by the
        Gaussian deviance :math:`\log m + e / m` of its error ``e`` under the MSE ``m`` the
        window gave at its own initial time. A short window follows a change of the error
        level sooner, a long one is less noisy; the record so far says which matters more.
        Without a scored forecast (or with ``choose=False``) the window is the validation
        period's length; at a lead where the chosen window holds no recent forecast, the next
        longer one that holds some. Returns the MSE ``[N, K]`` (the calibrated one where the window
        holds no verified forecast) and the number of recent forecasts used ``[N, K]``.
        """
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        t0 = np.asarray(t0, dtype=np.float64).reshape(-1)
        lead = np.asarray(lead, dtype=np.float64).reshape(-1)
        errors = np.broadcast_to(np.asarray(errors, dtype=np.float64), (t0.size, s.size, lead.size))
        base = self.lead_error_ms(lead)
        out = np.broadcast_to(base, (t0.size, lead.size)).copy()
        used = np.zeros((t0.size, lead.size), dtype=np.int64)
        end, span = self.validation.get("end"), self.validation.get("span")
        if end is None or not span or self.validation_t0.size == 0:
            return out, used
        tol = 1e-3 * self.lag_step
        spans = [float(span) * f for f in (RECENT_WINDOWS if choose else RECENT_WINDOWS[:1])]
        ver = s[:, None] + lead[None]  # [S, K]
        recent = (s > end + tol)[:, None] & (lead > 0)[None]
        for n, tn in enumerate(t0):
            e = errors[n]
            # the forecasts from recent states verified by tn: what the windows are scored on
            scored = recent & np.isfinite(e) & (ver <= tn + tol)
            best, best_dev = 0, math.inf
            for c, w in enumerate(spans):
                if len(spans) == 1 or not scored.any():
                    break
                m = self._window_ms(e, s, s, lead, w, base, end, tol)[0]  # at each state's own time
                dev = float(np.mean(np.log(m[scored]) + e[scored] / m[scored]))
                if dev < best_dev - 1e-12:
                    best, best_dev = c, dev
            # at a lead where the chosen window holds no recent forecast (a gap in the record),
            # the next longer one that holds some
            for c in range(best, -1, -1):
                ms, cnt = self._window_ms(e, s, np.array([tn]), lead, spans[c], base, end, tol)
                fill = (used[n] == 0) & (cnt[0] > 0) if c < best else np.ones(lead.size, bool)
                out[n, fill], used[n, fill] = ms[0, fill], cnt[0, fill]
        return out, used

    def _window_ms(self, e: np.ndarray, s: np.ndarray, q: np.ndarray, lead: np.ndarray, span: float,
                   base: np.ndarray, end: float, tol: float) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated MSE ``[Q, K]`` at times ``q [Q]`` over the window ``[q - span, q]``
        (see :meth:`recent_error_ms`), and the recent forecasts in it ``[Q, K]``."""
        ver = s[:, None] + lead[None]  # [S, K]
        ok = (s > end + tol)[:, None] & np.isfinite(e) & (lead > 0)[None]
        inside = (ver[None] >= q[:, None, None] - span - tol) & (ver[None] <= q[:, None, None] + tol)
        hit = ok[None] & inside  # [Q, S, K]
        total = np.where(hit, e[None], 0.0).sum(1)
        cnt = hit.sum(1)
        v_ver = self.validation_t0[:, None] + lead[None]  # [V, K]
        v_ok = (v_ver <= end + tol) & (lead > 0)[None]
        nv = (v_ok[None] & (v_ver[None] >= q[:, None, None] - span - tol)
              & (v_ver[None] <= q[:, None, None] + tol)).sum(1)
        den = nv + cnt
        ms = np.where(den > 0, (nv * base[None] + total) / np.maximum(den, 1), base[None])
        return ms, cnt.astype(np.int64)

    def recent_update(self, grams: np.ndarray, counts: np.ndarray, s: np.ndarray, t0: np.ndarray,
                      lead: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights and calibrated MSE of each initial time, with the verified forecasts from
        recent states.

        ``grams [S, K, M, M]``: the cross-products ``Σ (f_i − y)(f_j − y)`` of the members'
        errors (standardised) in the forecasts from states at times ``s [S]`` at leads
        ``[K]`` (seconds), over ``counts [S, K]`` values (0: not verified). The weights of
        initial time ``t0[n]`` at lead ``k`` are the convex least-squares ones of the
        validation forecasts (:attr:`validation_gram`, interpolated in log-lead) together
        with the recent ones verified in the window of :meth:`recent_error_ms`; the stored
        weights where that window holds none. The MSE is :meth:`recent_error_ms` with each
        recent forecast's error under the initial time's weights. Returns the weights
        ``[N, M, K]``, the MSE ``[N, K]`` and the number of recent forecasts used ``[N, K]``.
        """
        from ..._utils import simplex_weights

        grams = np.asarray(grams, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        t0 = np.asarray(t0, dtype=np.float64).reshape(-1)
        lead = np.asarray(lead, dtype=np.float64).reshape(-1)
        N, S, K, M = t0.size, s.size, lead.size, len(MEMBERS)
        weights = np.broadcast_to(self.lead_weights(lead)[None], (N, M, K)).copy()
        errors = np.full((N, S, K), np.nan)
        end, span = self.validation.get("end"), self.validation.get("span")
        if end is None or not span or self.validation_gram is None or self.lead_grid is None:
            ms, used = self.recent_error_ms(errors, s, t0, lead)
            return weights, ms, used
        tol = 1e-3 * self.lag_step
        allowed = np.array([n not in self.excluded for n in MEMBERS])
        logg = np.log(self.lead_grid)
        for k, ell in enumerate(lead):
            if ell <= 0:
                continue
            x = float(np.clip(np.log(ell), logg[0], logg[-1]))
            j = int(np.clip(np.searchsorted(logg, x) - 1, 0, max(len(logg) - 2, 0)))
            a = 0.0 if len(logg) == 1 else (x - logg[j]) / (logg[j + 1] - logg[j])
            prior = (1 - a) * self.validation_gram[j] + (a * self.validation_gram[j + 1] if a > 0 else 0.0)
            ok = (counts[:, k] > 0) & (s > end + tol)
            ver = s + ell
            for n, tn in enumerate(t0):
                hit = ok & (ver >= tn - span - tol) & (ver <= tn + tol)
                if not hit.any():
                    continue
                G = prior + grams[hit, k].sum(0)
                w = np.zeros(M)
                w[allowed] = simplex_weights(G[np.ix_(allowed, allowed)])
                weights[n, :, k] = w
                errors[n, hit, k] = np.einsum("i,sij,j->s", w, grams[hit, k], w) / counts[hit, k]
        ms, used = self.recent_error_ms(errors, s, t0, lead)
        return weights, ms, used

    # ------------------------------------------------------------------ fitting the weights
    @staticmethod
    def lead_bins(max_lead: float, step: float) -> np.ndarray:
        """Centres (seconds) of the lead bins of the weights: multiples of the frame spacing
        ``step``, geometric up to ``max_lead``."""
        n = max(1.0, max_lead / step)
        n_bins = int(min(MAX_LEAD_BINS, max(1, round(n))))
        return np.unique(np.round(np.geomspace(1, n, n_bins))) * step

    def fit_weights(self, forecasts: Sequence[tuple[np.ndarray, ...]], grid: np.ndarray) -> None:
        """Per-lead convex weights from validation forecasts.

        ``forecasts``: per held-out start, ``(x0 [N, P, C], t0 [N], leads [K] (s), model
        [N, K, P, C], truth [N, K, P, C])``, at most one lead per bin of ``grid``
        (:meth:`lead_bins`). In each bin the weights are the convex least-squares blend of
        the four forecasts (the references left out by :attr:`excluded` get none): one
        validation period ranks near-equal forecasts by chance, so picking the single best
        one there (or the model and the best reference) is less reliable than the blend,
        which hedges between them.
        """
        logg = np.log(np.asarray(grid, dtype=np.float64))
        pooled: list[list[np.ndarray]] = [[] for _ in grid]  # per bin: [M + 1, n] blocks
        per_start = []
        for x0, t0, leads, model, truth in forecasts:
            refs = self.members(x0, t0, leads)
            stack = np.stack([model, refs["persistence"], refs["climatology"],
                              refs["anomaly persistence"], truth]) / self.scale  # [M+1, N, K, P, C]
            bins = np.abs(np.log(leads)[:, None] - logg[None]).argmin(1)
            for k, j in enumerate(bins):
                block = stack[:, :, k].reshape(stack.shape[0], -1)
                pooled[j].append(block)
            per_start.append((stack, bins))
        keep = [j for j in range(len(grid)) if pooled[j]]
        grid_all = np.asarray(grid, dtype=np.float64)
        grid = grid_all[keep]
        names = list(MEMBERS)
        weights = []
        rmse: dict[str, list[float]] = {n: [] for n in [*names, "combined"]}
        counts = []
        level = []  # persistence's error over the whole period / over the validation period
        grams = []
        for j in keep:
            r = np.concatenate(pooled[j], 1)
            ok = np.isfinite(r).all(0)
            r = r[:, ok]
            if r.shape[1] == 0:
                raise ValueError("no validation point where every forecast and the truth are finite")
            allowed = np.array([n not in self.excluded for n in names])
            w = np.zeros(len(names))
            w[allowed] = _convex(r[:-1][allowed], r[-1])
            weights.append(w)
            e = r[:-1] - r[-1]
            grams.append(e @ e.T)
            combo = w @ r[:-1]
            for i, n in enumerate(names):
                rmse[n].append(float(np.sqrt(np.mean((r[i] - r[-1]) ** 2))))
            rmse["combined"].append(float(np.sqrt(np.mean((combo - r[-1]) ** 2))))
            level.append(self._error_level(float(grid_all[j]), float(np.mean((r[1] - r[-1]) ** 2))))
            counts.append(int(r.shape[1]))
        self.lead_grid = grid
        self.weights = np.stack(weights, 1)
        t0_all = np.concatenate([np.asarray(f[1], dtype=np.float64).reshape(-1)[:1] for f in forecasts])
        end = max(float(np.asarray(f[1]).reshape(-1)[0]) + float(np.max(f[2])) for f in forecasts)
        self.validation_t0 = np.sort(t0_all)
        self.validation_gram = np.stack(grams)
        self.validation = {"rmse": rmse, "n_values": counts,
                           "n_starts": len(forecasts), "error_level": level,
                           "end": end, "span": float(end - self.validation_t0[0])}
        self._store_errors(per_start, keep)
        assert self.error_ms is not None
        self.error_ms = self.error_ms * np.asarray(level)

    def _error_level(self, lead: float, validation_ms: float) -> float:
        """How much larger persistence's mean squared error at ``lead`` is over the whole
        training period than over the validation period (within 1/4 .. 4; 1 when unknown).

        The validation period is one stretch of weather; the combination's error there,
        scaled by this ratio, is the error level ensembles are calibrated to: the training
        period's, which spans more regimes.
        """
        if self.persistence_ms.size == 0 or not validation_ms > 0:
            return 1.0
        lags = self.lag_step * np.arange(1, self.persistence_ms.size + 1)
        whole = float(np.interp(lead, lags, self.persistence_ms))
        return float(np.clip(whole / validation_ms, 0.25, 4.0)) if whole > 0 else 1.0

    def _store_errors(self, per_start: list[tuple[np.ndarray, np.ndarray]], keep: list[int]) -> None:
        """Error fields (standardised) of the combination per bin, one per held-out state."""
        assert self.weights is not None
        fields = []
        for stack, bins in per_start:
            N, P, C = stack.shape[1], stack.shape[3], stack.shape[4]
            e = np.full((len(keep), N, P, C), np.nan)
            for jj, j in enumerate(keep):
                hit = np.flatnonzero(bins == j)
                if hit.size:
                    k = int(hit[0])
                    combo = np.einsum("m,mnpc->npc", self.weights[:, jj], stack[:-1, :, k])
                    e[jj] = stack[-1, :, k] - combo
            fields.append(e)
        err = np.concatenate(fields, 1)  # [L, n, P, C]
        # centred per bin and point: the combination's mean error is not carried into members
        cnt = np.isfinite(err).sum(1, keepdims=True)
        mean = np.where(cnt > 0, np.nansum(err, 1, keepdims=True) / np.maximum(cnt, 1), 0.0)
        err = (err - mean) * np.sqrt(cnt / np.maximum(cnt - 1, 1))
        per = int(np.prod(err.shape[2:])) * err.shape[0]
        if err.shape[1] * per > MAX_ERROR_VALUES:
            n = max(2, MAX_ERROR_VALUES // per)
            err = err[:, np.linspace(0, err.shape[1] - 1, n).round().astype(int)]
        self.errors = err.astype(np.float32)
        self.error_ms = np.array([float(np.nanmean(err[j] ** 2)) if np.isfinite(err[j]).any() else 0.0
                                  for j in range(err.shape[0])])

    # ------------------------------------------------------------------ combining
    def combine(self, model: np.ndarray, x0: np.ndarray, t0: np.ndarray, lead: np.ndarray, *,
                members: int | None = None, seed: int | None = 0,
                target_ms: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
        """The combined forecast ``[N, K, P, C]`` (or ``[E, N, K, P, C]`` with ``members``).

        ``model``: the learned forecast at the same states and leads (with a leading member
        dim when ``members`` is set); NaN members of the combination (persistence where the
        initial state is missing) drop out and the others' weights are renormalised.
        ``target_ms [N, K]``: the MSE each state's ensemble is calibrated to (default the
        validation one, :meth:`lead_error_ms`), and ``weights [N, M, K]`` each state's weights
        (default the stored ones, :meth:`lead_weights`; both from :meth:`recent_update`).
        """
        refs = self.members(x0, t0, lead)
        if weights is None:
            w = self.lead_weights(lead)[:, None]  # [M, 1, K]
        else:
            w = np.moveaxis(np.asarray(weights, dtype=np.float64), 1, 0)  # [M, N, K]
        lead_shape = (w.shape[1], -1, 1, 1)

        def weighted(model_k: np.ndarray) -> np.ndarray:
            parts = [model_k, refs["persistence"], refs["climatology"], refs["anomaly persistence"]]
            num = np.zeros(np.broadcast_shapes(*(p.shape for p in parts)))
            den = np.zeros_like(num)
            for k, p in enumerate(parts):
                ok = np.isfinite(p)
                wk = w[k].reshape(lead_shape)
                num = num + np.where(ok, p, 0.0) * wk
                den = den + ok * wk
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

        # points the training period never observed (a land mask of an ocean variable...) have
        # no climatology: the learned decoder's values there are not a forecast of anything
        never = ~np.isfinite(self.coef[0])  # [P, C]
        if members is None:
            return np.where(never, np.nan, weighted(model))
        out = np.stack([weighted(m) for m in model])  # [E, N, K, P, C]
        return np.where(never, np.nan, out + self._model_error(out, lead, seed, target_ms))

    def _model_error(self, ens: np.ndarray, lead: np.ndarray, seed: int | None,
                     target_ms: np.ndarray | None = None) -> np.ndarray:
        """Draws of the combination's validation errors at ``lead`` for every member and state,
        scaled so that the ensemble's own spread plus them match the validation MSE (or
        ``target_ms [N, K]``)."""
        if self.errors is None or self.lead_grid is None or self.errors.shape[1] < 2:
            return np.zeros_like(ens)
        E, N = ens.shape[:2]
        logg = np.log(self.lead_grid)
        x = np.log(np.maximum(lead, 1e-300))
        err = np.nan_to_num(self.errors.astype(np.float64))  # [L, n, P, C]
        have = np.isfinite(self.errors).any((2, 3))  # [L, n]
        fields = np.empty((lead.size, *err.shape[1:]))
        avail = np.empty((lead.size, err.shape[1]))
        for k, xk in enumerate(x):  # linear in log-lead between the bins
            j = int(np.clip(np.searchsorted(logg, xk) - 1, 0, max(len(logg) - 2, 0)))
            if len(logg) == 1 or xk <= logg[0]:
                fields[k], avail[k] = err[0], have[0]
                continue
            if xk >= logg[-1]:
                fields[k], avail[k] = err[-1], have[-1]
                continue
            a = (xk - logg[j]) / (logg[j + 1] - logg[j])
            fields[k] = (1 - a) * err[j] + a * err[j + 1]
            avail[k] = have[j] | have[j + 1]
        rng = np.random.default_rng(seed)
        g = rng.standard_normal((E, N, err.shape[1]))
        n_eff = np.maximum(avail.sum(1), 1.0)  # [K]
        noise = np.einsum("ens,kspc->enkpc", g, fields) / np.sqrt(n_eff)[None, None, :, None, None]
        # the ensemble's own spread (standardised) already accounts for part of the error
        own = np.nanmean(ens.var(0, ddof=1) / self.scale ** 2, axis=(0, 2, 3)) if E > 1 else np.zeros(lead.size)
        target = np.broadcast_to(self.lead_error_ms(lead) if target_ms is None else target_ms,
                                 (N, lead.size))
        # the draws' mean variance: the fields' sum of squares over the starts (zeros where a
        # start has no frame at that lead), over the starts that have one
        drawn = (fields ** 2).sum(1).mean((1, 2)) / n_eff
        factor = np.sqrt(np.clip(target - own[None], 0.0, None) / np.where(drawn > 0, drawn, 1.0)[None])
        noise = noise * factor[None, :, :, None, None]
        noise[:, :, lead <= 0] = 0.0
        return noise * self.scale

    # ------------------------------------------------------------------ persistence
    def to_config(self) -> dict[str, Any]:
        """JSON-friendly settings (the arrays go in :meth:`tensors`)."""
        return {"variables": self.variables, "sdims": self.sdims,
                "coord_dims": {k: list(v[0]) for k, v in self.coords.items()},
                "calendar": self.calendar, "diurnal": self.diurnal, "annual": self.annual,
                "lag_step": self.lag_step, "notes": self.notes, "validation": self.validation,
                "excluded": self.excluded}

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays, by name."""
        out = {"coef": self.coef, "scale": self.scale, "rho": self.rho,
               "persistence_ms": self.persistence_ms}
        out.update({f"coord.{k}": np.asarray(v[1], dtype=np.float64) for k, v in self.coords.items()})
        if self.validation_t0.size:
            out["validation_t0"] = self.validation_t0
        for name in ("lead_grid", "weights", "errors", "error_ms", "validation_gram"):
            value = getattr(self, name)
            if value is not None:
                out[name] = np.asarray(value)
        return out

    @classmethod
    def from_state(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> References:
        """Rebuild from :meth:`to_config` and :meth:`tensors`."""
        coords = {k: (tuple(d), arrays[f"coord.{k}"]) for k, d in config["coord_dims"].items()}
        refs = cls(config["variables"], config["sdims"], coords, calendar=config["calendar"],
                   diurnal=config["diurnal"], annual=config["annual"], coef=arrays["coef"],
                   scale=arrays["scale"], lag_step=config["lag_step"], rho=arrays["rho"],
                   notes=config.get("notes", ()))
        for name in ("lead_grid", "weights", "errors", "error_ms", "persistence_ms", "validation_t0",
                     "validation_gram"):
            if name in arrays:
                setattr(refs, name, np.asarray(arrays[name], dtype=np.float64 if name != "errors"
                                               else np.float32))
        refs.validation = dict(config.get("validation", {}))
        refs.excluded = list(config.get("excluded", []))
        return refs

    # ------------------------------------------------------------------ reporting
    def summary_lines(self, units: str = "h") -> list[str]:
        """The summary's lines: references, weights and validation RMSE by lead."""
        div = {"h": 3600.0, "d": _DAY}[units]
        clim = "training mean" + (f" + {self.diurnal} diurnal" if self.diurnal else "") + (
            f" + {self.annual} annual" if self.annual else "") + (
            " harmonics" if self.diurnal or self.annual else "")
        lines = [f"references: persistence; climatology ({clim}); anomaly persistence "
                 f"(damping {self.damping(np.array([self.lag_step]))[0]:.2f} at one step)"]
        lines += [f"  ({n})" for n in self.notes]
        if self.weights is None or self.lead_grid is None:
            return lines
        v = self.validation
        lines.append(f"combination weights and validation RMSE ({v.get('n_starts', '?')} held-out starts)")
        head = f"  {'lead':>8s} " + " ".join(f"{n[:11]:>11s}" for n in MEMBERS)
        lines.append(head + "   | RMSE: " + " ".join(f"{n[:11]:>11s}" for n in [*MEMBERS, "combined"]))
        for j, g in enumerate(self.lead_grid):
            ws = " ".join(f"{self.weights[k, j]:11.2f}" for k in range(len(MEMBERS)))
            rs = " ".join(f"{v['rmse'][n][j]:11.3g}" for n in [*MEMBERS, "combined"])
            lines.append(f"  {g / div:7.3g}{units} {ws}   |       {rs}")
        lines.append("  (RMSE in units of each variable's training standard deviation)")
        level = v.get("error_level")
        if level:
            lines.append("ensemble error level by lead (persistence's mean squared error over the training "
                         "period / over the validation period): " + " ".join(f"{x:.2f}" for x in level))
        return lines


def _convex(F: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Convex least-squares weights of the rows of ``F [K, n]`` against ``y [n]``."""
    from ...baselines import fit_blend

    if F.shape[0] == 1:
        return np.ones(1)
    fc = {str(k): xr.DataArray(F[k][None], dims=("lead", "case")) for k in range(F.shape[0])}
    w = fit_blend(fc, xr.DataArray(y[None], dims=("lead", "case")))
    return np.asarray(w.transpose("member", "lead").values)[:, 0]


def _values(ds: xr.Dataset, variables: Sequence[str], time: str, sample_dim: Hashable | None,
            sdims: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """``[S, T, P, C]`` float64 values and the times (seconds) of a training Dataset."""
    arrays = []
    for v in variables:
        da = ds[v]
        lead = [sample_dim] if sample_dim is not None and sample_dim in da.dims else []
        da = da.transpose(*lead, time, *sdims)
        a = np.asarray(da.values, dtype=np.float64)
        if not lead:
            a = a[None]
        arrays.append(a.reshape(a.shape[0], a.shape[1], -1))
    return np.stack(arrays, -1), _seconds(ds[time].values)


def state_values(ds: xr.Dataset, variables: Sequence[str], bdims: Sequence[Hashable],
                 sdims: Sequence[Hashable]) -> np.ndarray:
    """Initial states ``[N, P, C]`` (float64, over the state dims ``bdims``)."""
    out = []
    for v in variables:
        da = ds[v]
        extra = [d for d in bdims if d not in da.dims]
        if extra:
            da = da.expand_dims({d: ds.sizes[d] for d in extra})
        a = np.asarray(da.transpose(*bdims, *sdims).values, dtype=np.float64)
        out.append(a.reshape(int(np.prod([ds.sizes[d] for d in bdims], dtype=np.int64)), -1))
    return np.stack(out, -1)


def warn_left_out(reason: str) -> None:
    """The one warning of a forecast that could not be combined with the references."""
    warnings.warn(f"{reason}: the learned model's forecast is returned alone "
                  "(combine=False says so and silences this)", UserWarning, stacklevel=4)
