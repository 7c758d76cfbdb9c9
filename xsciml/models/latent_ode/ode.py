r"""The latent ODE, how a model reads time, and the teacher-forced rollout loss.

:class:`LatentDynamics` is the vector field, :func:`integrate_latent` the solver wrapper
(fixed-step solvers step on a grid independent of the output times); :class:`Clock`
reads numeric, datetime64 or cftime axes (possibly irregular) and lead times given as
numbers or timedeltas; :func:`ode_settings` checks the solver options;
:func:`dynamics_loss` is the teacher-forced rollout loss of the dynamics, with its
restart schedule (:func:`teacher_forcing_schedule`) and window offsets
(:class:`OffsetTable`).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from ...coords import calendars_compatible, time_calendar, time_kind, time_to_float

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "Clock",
    "LatentDynamics",
    "OffsetTable",
    "default_window",
    "draw_windows",
    "dynamics_loss",
    "integrate_latent",
    "ode_settings",
    "teacher_forcing_schedule",
    "unique_solver_times",
]

#: torchdiffeq solvers that take a fixed step (``options={"step_size": ...}``).
FIXED_STEP_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                      "implicit_adams")
#: torchdiffeq solvers with error control (``rtol``/``atol``).
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

_UNIT_SECONDS = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}


# =========================================================================== the latent ODE
class LatentDynamics(nn.Module):
    r"""Autonomous latent vector field :math:`dz/dt = A z + b + g_\psi(z)`.

    :math:`g_\psi` is an MLP with Swish activations (as in DINo); the linear part
    :math:`A z + b` (a skip connection, started at zero) lets the flow represent linear
    dynamics — decay, rotation — exactly, so that trajectories extrapolate beyond the
    training horizon instead of following whatever the MLP does outside its data.
    Counts its evaluations in :attr:`nfe` (reset it before a solve to read the number of
    function evaluations of the ODE solver).

    Parameters
    ----------
    latent_dim
        Size of the (normalised) codes.
    width, depth
        Hidden width and number of hidden layers of the MLP.
    linear
        Include the linear term.
    periods
        Periods (in ODE time units) of known external forcings, e.g. the diurnal cycle.
        Each adds a phase pair :math:`(\sin\theta_k, \cos\theta_k)` to the state, rotating
        exactly at :math:`2\pi / T_k`, which the MLP receives as input: the field is then
        :math:`dz/dt = A z + b + g_\psi(z, \theta(t))`. States carry their phases after the
        ``latent_dim`` code entries (see :meth:`phases`).

    Examples
    --------
    >>> f = LatentDynamics(8, width=32, depth=2)
    >>> f(torch.tensor(0.0), torch.zeros(5, 8)).shape, f.nfe
    (torch.Size([5, 8]), 1)
    >>> g = LatentDynamics(8, width=32, depth=2, periods=[24.0])
    >>> g(torch.tensor(0.0), torch.zeros(5, 8 + 2)).shape
    torch.Size([5, 10])
    """

    omega: Tensor  # a buffer registered in __init__ (declared for the type checker)

    def __init__(self, latent_dim: int, width: int = 256, depth: int = 3, linear: bool = True,
                 periods: Sequence[float] = ()) -> None:
        super().__init__()
        from ...nn import MLP

        self.latent_dim, self.width, self.depth = int(latent_dim), int(width), int(depth)
        self.periods = [float(p) for p in periods]
        if any(not (math.isfinite(p) and p > 0) for p in self.periods):
            raise ValueError(f"forcing periods must be positive, got {self.periods}")
        self.register_buffer("omega", torch.tensor([2 * math.pi / p for p in self.periods],
                                                   dtype=torch.float32), persistent=False)
        n_in = self.latent_dim + 2 * len(self.periods)
        self.net = MLP(n_in, latent_dim, width=width, depth=depth, activation="swish")
        with torch.no_grad():  # start close to "nothing moves": a gentle initial flow
            last = cast(nn.Linear, self.net.net[-1])  # the MLP's output layer
            last.weight.mul_(0.1)
            last.bias.zero_()
        self.linear = nn.Linear(latent_dim, latent_dim) if linear else None
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        self.nfe = 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:  # noqa: ARG002 - time enters via phases
        self.nfe += 1
        d = self.latent_dim
        a = z[..., :d]
        out = self.net(z)
        if self.linear is not None:
            out = out + self.linear(a)
        if not self.periods:
            return out
        ph = z[..., d:]
        s, c = ph[..., 0::2], ph[..., 1::2]
        dph = torch.stack([self.omega * c, -self.omega * s], dim=-1).flatten(-2)
        return torch.cat([out, dph], dim=-1)

    def phases(self, tau: np.ndarray | Tensor) -> Tensor:
        """Phase pairs ``[..., 2 n_periods]`` at absolute ODE times ``tau`` (float64-safe)."""
        t = np.asarray(tau.detach().cpu() if isinstance(tau, Tensor) else tau, dtype=np.float64)
        cols = []
        for p in self.periods:
            theta = 2 * np.pi * np.mod(t, p) / p
            cols += [np.sin(theta), np.cos(theta)]
        out = np.stack(cols, -1) if cols else np.zeros((*t.shape, 0))
        return torch.as_tensor(out, dtype=torch.float32)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-friendly)."""
        return {"latent_dim": self.latent_dim, "width": self.width, "depth": self.depth,
                "linear": self.linear is not None, "periods": list(self.periods)}


def integrate_latent(
    func: nn.Module,
    z0: Tensor,
    t: Tensor,
    *,
    method: str = "rk4",
    step: float | None = 0.5,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    adjoint: bool = False,
) -> Tensor:
    """Solve ``dz/dt = func(t, z)`` from ``z0 [N, d]`` at times ``t [K]`` (``t[0] = 0``).

    With a fixed-step method the solver steps on the grid ``0, step, 2 step, ...``
    whatever the output times (outputs in between are interpolated by torchdiffeq), so
    denser outputs leave the solution at shared times unchanged. Adaptive methods use
    ``rtol``/``atol``.

    Returns
    -------
    Tensor ``[K, N, d]``.

    Examples
    --------
    >>> class Decay(nn.Module):
    ...     def forward(self, t, z):
    ...         return -z
    >>> z = integrate_latent(Decay(), torch.ones(1, 1), torch.tensor([0.0, 1.0]), step=0.01)
    >>> round(float(z[-1, 0, 0]), 5) == round(math.exp(-1), 5)
    True
    """
    import torchdiffeq

    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if t.numel() == 1 or float(t[-1]) == float(t[0]):
        return z0.unsqueeze(0).expand(t.numel(), *z0.shape)
    kwargs: dict[str, Any] = {"method": method}
    n_out = t.numel()
    if method in FIXED_STEP_METHODS:
        if step is None or not step > 0:
            raise ValueError(f"method={method!r} needs a positive step, got {step!r}")
        kwargs["options"] = {"step_size": float(step)}
        # torchdiffeq shortens the last step to end exactly at t[-1]; end on the grid
        # instead so that every output is interpolated from the same steps
        span = float(t[-1] - t[0])
        end = math.ceil(span / step - 1e-9) * step
        extra = t.new_tensor([float(t[0]) + end])
        # in float32 an end a hair past t[-1] can round onto it: append only if it is later
        if end > span + 1e-12 * max(1.0, span) and float(extra) > float(t[-1]):
            t = torch.cat([t, extra])
    else:
        kwargs.update(rtol=float(rtol), atol=float(atol))
    if adjoint:
        sol = torchdiffeq.odeint_adjoint(func, z0, t, adjoint_params=tuple(func.parameters()), **kwargs)
    else:
        sol = torchdiffeq.odeint(func, z0, t, **kwargs)
    return sol[:n_out]


# =========================================================================== time axis
@dataclass
class Clock:
    """How a model reads time: absolute floats in ``units`` and the ODE time unit.

    Built from the training times by :meth:`fit`; saved with the model (:meth:`to_dict`).

    Examples
    --------
    >>> import pandas as pd
    >>> clock = Clock.fit(pd.date_range("2000-01-01", periods=3, freq="6h").values, "hours")
    >>> clock.scale, clock.parse_lead(pd.to_timedelta(["0h", "12h"]))[0].tolist()
    (6.0, [0.0, 12.0])
    """

    kind: str  # "numeric", "datetime64" or "cftime"
    calendar: str
    units: str  # float unit of datetime axes ("days", ...); "" for numeric axes
    scale: float  # one ODE time unit, in float time units (median training spacing)

    @classmethod
    def fit(cls, values: np.ndarray, units: str) -> Clock:
        """The clock of training times ``values``: one ODE time unit is their median spacing."""
        kind = time_kind(values)
        if kind != "numeric" and units not in _UNIT_SECONDS:
            raise ValueError(f"time_units={units!r} not understood; use one of {sorted(_UNIT_SECONDS)}")
        clock = cls(kind, time_calendar(values), units if kind != "numeric" else "", 1.0)
        t = clock.to_float(values)
        if np.any(~np.isfinite(t)):
            raise ValueError("the time coordinate has missing values (NaT/NaN); drop those frames first")
        d = np.diff(clock.elapsed(values))
        if np.any(d <= 0):
            raise ValueError("the time coordinate must be strictly increasing; sort it and drop "
                             "duplicates first (ds.sortby('time').drop_duplicates('time'))")
        clock.scale = float(np.median(d))
        return clock

    def to_float(self, values: np.ndarray) -> np.ndarray:
        """Absolute time values as float64 (numbers, or ``units`` since 1970-01-01)."""
        values = np.asarray(values)
        kind = time_kind(values)
        if (kind == "numeric") != (self.kind == "numeric"):
            raise TypeError(
                f"time values of kind {kind!r} given, but the model was trained on a {self.kind} "
                "time axis; use the same kind of time coordinate as in training"
            )
        if kind == "numeric":
            return values.astype(np.float64)
        cal = time_calendar(values)
        if not calendars_compatible(cal, self.calendar):
            raise ValueError(f"time is in calendar {cal!r} but the model was trained on "
                             f"{self.calendar!r}; convert with ds.convert_calendar first")
        return time_to_float(values, self.units)

    def elapsed(self, values: np.ndarray) -> np.ndarray:
        """Float64 time since the first of ``values``, in the clock's units.

        Datetime64 axes are differenced in integer nanoseconds before the division, so
        that e.g. hourly frames stay exact multiples of 1/24 day instead of inheriting
        the rounding of "days since 1970".
        """
        values = np.asarray(values)
        if values.size == 0:
            return np.zeros(0)
        if self.kind == "datetime64" and np.issubdtype(values.dtype, np.datetime64):
            self.to_float(values[:1])  # kind and calendar checks
            ns = (values.astype("datetime64[ns]") - values.astype("datetime64[ns]")[0]).astype(np.int64)
            return ns.astype(np.float64) / (_UNIT_SECONDS[self.units] * 1e9)
        t = self.to_float(values)
        return t - t[0]

    def parse_lead(self, lead: Any, name: str = "lead") -> tuple[np.ndarray, np.ndarray]:
        """``(float offsets in time units, coordinate values)`` of lead times."""
        import pandas as pd

        if isinstance(lead, (str, bytes)) or lead is None:
            raise TypeError(f"{name} must be numbers or timedeltas (e.g. pd.timedelta_range('0h', "
                            f"'48h', freq='6h') or np.arange(0, 5, 0.25)), got {lead!r}")
        if isinstance(lead, xr.DataArray):
            lead = lead.values
        if isinstance(lead, (_dt.timedelta, np.timedelta64, pd.Timedelta)):
            lead = [lead]
        arr = np.asarray(lead)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
        if arr.dtype == object:
            if all(isinstance(v, (_dt.timedelta, np.timedelta64)) for v in arr):
                arr = pd.to_timedelta(list(arr)).to_numpy()
            else:
                bad = next(v for v in arr if not isinstance(v, (_dt.timedelta, np.timedelta64)))
                raise TypeError(f"{name} must be numbers or timedeltas, got an element {bad!r} "
                                f"of type {type(bad).__name__}")
        if np.issubdtype(arr.dtype, np.timedelta64):
            if self.kind == "numeric":
                raise TypeError(f"the model's time axis is numeric: give {name} as numbers in the "
                                "units of the time coordinate, not timedeltas")
            if np.any(np.isnat(arr)):
                raise ValueError(f"{name} contains NaT")
            arr = arr.astype("timedelta64[ns]")
            off = arr.astype(np.int64) / (_UNIT_SECONDS[self.units] * 1e9)
            coord = arr
        elif arr.dtype.kind in "iuf":
            off = arr.astype(np.float64)
            coord = arr
        else:
            raise TypeError(f"{name} must be numbers or timedeltas, got dtype {arr.dtype}")
        if np.any(~np.isfinite(off)) or np.any(off < 0):
            raise ValueError(f"{name} must be finite and >= 0 (forecasts go forward from the "
                             "initial state)")
        return off, coord

    def offset_seconds(self, offsets: np.ndarray) -> np.ndarray:
        """Float offsets in the clock's units as seconds (calendar axes only)."""
        if self.kind == "numeric":
            raise ValueError("a numeric time axis has no unit of seconds")
        return np.asarray(offsets, dtype=np.float64) * _UNIT_SECONDS[self.units]

    def add(self, t0: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """``t0[..., None] + offsets``: valid times, in the kind of the time axis."""
        t0 = np.asarray(t0)
        if self.kind == "numeric":
            return t0.astype(np.float64)[..., None] + offsets
        self.to_float(t0)  # kind and calendar checks
        ns = np.rint(np.asarray(offsets) * _UNIT_SECONDS[self.units] * 1e9).astype(np.int64)
        if self.kind == "datetime64":
            return t0.astype("datetime64[ns]")[..., None] + ns.astype("timedelta64[ns]")
        steps = np.array([_dt.timedelta(microseconds=int(v) // 1000) for v in ns], dtype=object)
        return t0[..., None] + steps

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-friendly dict (``Clock(**d)`` rebuilds it)."""
        return asdict(self)



# =========================================================================== training the dynamics
def ode_settings(clock: Clock, solver: str, rtol: float, atol: float, ode_step: Any) -> dict[str, Any]:
    """Checked solver options: ``method``, ``step`` (ODE units), ``step_units``, ``rtol``, ``atol``.

    Parameters
    ----------
    clock
        The model's clock (the ODE time unit).
    solver
        A torchdiffeq solver of :data:`FIXED_STEP_METHODS` or :data:`ADAPTIVE_METHODS`.
    rtol, atol
        Tolerances of adaptive solvers (positive).
    ode_step
        Step of fixed-step solvers in time units (a number, or a timedelta for datetime
        axes); ``None``: half the median frame spacing.

    Returns
    -------
    dict

    Examples
    --------
    >>> clock = Clock.fit(np.array([0.0, 0.5, 1.0]), "days")
    >>> ode_settings(clock, "rk4", 1e-3, 1e-5, None)["step"]
    0.5
    """
    if solver not in FIXED_STEP_METHODS + ADAPTIVE_METHODS:
        raise ValueError(f"solver={solver!r} is not a torchdiffeq solver xsciml supports; use one "
                         f"of {FIXED_STEP_METHODS + ADAPTIVE_METHODS}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    if ode_step is None:
        step_units = 0.5 * clock.scale
    else:
        off, _ = clock.parse_lead([ode_step], "ode_step")
        step_units = float(off[0])
        if not step_units > 0:
            raise ValueError(f"ode_step must be positive, got {ode_step!r}")
    return {"method": solver, "step": step_units / clock.scale, "rtol": float(rtol),
            "atol": float(atol), "step_units": step_units}


def teacher_forcing_schedule(spec: Any, steps: int) -> Callable[[int], float]:
    """``step -> probability`` of restarting each ODE step from the true code.

    Parameters
    ----------
    spec
        A probability (constant); ``(start, fraction)``: a geometric decay from ``start``
        to ``start / 100`` over that fraction of the ``steps``, then 0; or a callable
        ``step -> probability``.
    steps
        Number of optimiser steps of the run.

    Returns
    -------
    Callable

    Examples
    --------
    >>> f = teacher_forcing_schedule((0.9, 0.5), 100)
    >>> round(f(0), 3), round(f(25), 4), f(50)
    (0.9, 0.09, 0.0)
    """
    if callable(spec):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not 0.0 <= spec <= 1.0:
            raise ValueError(f"teacher_forcing must be a probability in [0, 1], got {spec}")
        return lambda step: float(spec)
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        start, frac = float(spec[0]), float(spec[1])
        if not (0.0 <= start <= 1.0 and 0.0 < frac <= 1.0):
            raise ValueError("teacher_forcing=(start, fraction) needs start in [0, 1] and "
                             f"fraction in (0, 1], got {spec}")
        end = max(1.0, frac * steps)

        def schedule(step: int) -> float:
            # geometric decay from `start` to start / 100 over `fraction` of the run, then 0
            return 0.0 if step >= end else start * 0.01 ** (step / end)

        return schedule
    raise TypeError("teacher_forcing must be a probability, a (start, fraction) pair or a "
                    f"callable step -> probability, got {spec!r}")


def unique_solver_times(offsets: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """Sorted distinct ODE times as a float32 tensor and where each offset finds its time.

    The de-duplication happens on the float32 values the solver sees, so the times are
    strictly increasing whatever the time unit (offsets closer than float32 resolution
    share one time instead of giving the solver two equal times).

    Examples
    --------
    >>> t, where = unique_solver_times(np.array([1.0, 0.0, 1.0 + 1e-12]))
    >>> t.tolist(), where.tolist()
    ([0.0, 1.0], [1, 0, 1])
    """
    t32 = np.asarray(offsets, dtype=np.float64).astype(np.float32)
    uniq, inv = np.unique(t32, return_inverse=True)
    return torch.from_numpy(uniq), inv.reshape(-1)


class OffsetTable:
    """Unique time offsets between frames of a window, and where each pair finds its offset.

    ``table(j0, w)`` gives, for the window of frames ``j0 .. j0 + w - 1`` of the (ODE)
    times ``tau``, the sorted distinct offsets ``t_out`` (float32) and the index
    ``where[start, target]`` of each pair's offset in it (0 for target before start):
    what :func:`dynamics_loss` takes. Results are cached per window.

    Examples
    --------
    >>> t_out, where = OffsetTable(np.array([0.0, 1.0, 3.0]))(0, 3)
    >>> t_out.tolist(), where[0].tolist()
    ([0.0, 1.0, 2.0, 3.0], [0, 1, 3])
    """

    def __init__(self, tau: np.ndarray) -> None:
        self.tau = np.asarray(tau, dtype=np.float64)
        self._cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def __call__(self, j0: int, w: int) -> tuple[Tensor, Tensor]:
        key = (j0, w)
        if key not in self._cache:
            tw = self.tau[j0:j0 + w]
            delta = tw[None, :] - tw[:, None]  # [start, target]
            delta = np.where(delta >= 0, delta, 0.0)
            uniq, inv = unique_solver_times(delta.reshape(-1))
            self._cache[key] = (uniq, torch.as_tensor(inv.reshape(w, w), dtype=torch.long))
        return self._cache[key]

    def windows(self, j0: np.ndarray | Sequence[int], w: int) -> tuple[Tensor, Tensor]:
        """Offsets of several windows of ``w`` frames starting at frames ``j0 [B]``.

        Returns the sorted distinct offsets ``t_out`` of all the windows together and the
        index ``where[b, start, target]`` ``[B, w, w]`` of each pair's offset in it, what
        :func:`dynamics_loss` takes for a batch of windows (on a regular time axis every
        window has the same offsets and ``t_out`` is that of one window).

        Examples
        --------
        >>> t_out, where = OffsetTable(np.array([0.0, 1.0, 3.0, 4.0])).windows([0, 1], 2)
        >>> t_out.tolist(), where[:, 0, 1].tolist()
        ([0.0, 1.0, 2.0], [1, 2])
        """
        j = np.asarray(j0, dtype=np.int64).reshape(-1)
        if j.size == 0 or j.min() < 0 or j.max() + w > len(self.tau):
            raise ValueError(f"windows of {w} frames from {j.tolist()} do not fit in {len(self.tau)} frames")
        tw = self.tau[j[:, None] + np.arange(w)]  # [B, w]
        delta = tw[:, None, :] - tw[:, :, None]  # [B, start, target]
        delta = np.where(delta >= 0, delta, 0.0)
        uniq, inv = unique_solver_times(delta.reshape(-1))
        return uniq, torch.as_tensor(inv.reshape(len(j), w, w), dtype=torch.long)


#: Frames per rollout window when a fit leaves ``window`` to its default.
WINDOW = 16


def default_window(n_frames: int) -> int:
    """Frames per training rollout by default: ``min(n_frames, WINDOW)`` (16).

    A rollout through a bounded number of frames costs the same whatever the length of
    the series (a rollout through all 552 frames of a month of hourly data would be a
    thousand sequential solver steps per optimiser step), and the windows of a batch
    are drawn at random starts (:func:`draw_windows`).

    Examples
    --------
    >>> default_window(10), default_window(552)
    (10, 16)
    """
    return int(min(n_frames, WINDOW))


def draw_windows(gen: torch.Generator, n_series: int, n_frames: int, window: int, n: int
                 ) -> tuple[Tensor, Tensor]:
    """``n`` random windows of ``window`` consecutive frames: their series and start frames.

    Distinct windows among the ``n_series * (n_frames - window + 1)`` possible ones (all
    of them, in order, when ``n`` is at least that many; drawn with replacement when
    there are more than 2**20).

    Examples
    --------
    >>> rows, j0 = draw_windows(torch.Generator().manual_seed(0), 3, 10, 4, 5)
    >>> rows.shape, bool((j0 + 4 <= 10).all())
    (torch.Size([5]), True)
    >>> draw_windows(torch.Generator(), 2, 4, 4, 8)[0].tolist()
    [0, 1]
    """
    n_starts = n_frames - window + 1
    total = n_series * n_starts
    if n >= total:
        win = torch.arange(total)
    elif total <= 2**20:
        win = torch.randperm(total, generator=gen)[:n]
    else:
        win = torch.randint(0, total, (n,), generator=gen)
    return win // n_starts, win % n_starts


def dynamics_loss(m: nn.Module, z: Tensor, u: Tensor, t_out: Tensor, where: Tensor,
                  ode: dict[str, Any], phase: Tensor | None = None,
                  return_pred: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Teacher-forced latent rollout loss on normalised codes ``z [B, w, d]``.

    ``u [B, w]`` are uniform draws: the step into frame ``j`` restarts from the true code
    of frame ``j - 1`` when ``u[:, j] < m.teacher_forcing``; otherwise it continues the
    predicted trajectory. Every frame's prediction is the ODE solution from its latest
    restart, so all of them come from one batched solve over the distinct (trajectory,
    restart) pairs, integrated only as far as the longest segment between restarts.
    With ``return_pred``, also the predicted codes ``[B, w - 1, d]`` of frames 1..w-1.

    Parameters
    ----------
    m
        Holds the vector field (``m.dynamics``, a :class:`LatentDynamics`) and the current
        restart probability (``m.teacher_forcing``).
    z
        Normalised codes ``[B, w, d]`` of ``w`` consecutive frames.
    u
        Uniform draws ``[B, w]``.
    t_out, where
        The window's offsets and pair index ``[w, w]`` (:class:`OffsetTable`), or those of
        one window per batch element, ``where [B, w, w]`` (:meth:`OffsetTable.windows`).
    ode
        Keyword arguments of :func:`integrate_latent` (``method``, ``step``...).
    phase
        Forcing phases of the frames ``[w, 2 n_periods]`` (forced dynamics), or per batch
        element ``[B, w, 2 n_periods]``; or None.
    return_pred
        Also return the predictions.

    Returns
    -------
    The mean squared error of the predicted codes (and the predictions).

    Examples
    --------
    >>> f = LatentDynamics(2, width=8, depth=1)
    >>> holder = nn.Module()
    >>> holder.dynamics, holder.teacher_forcing = f, 1.0
    >>> t_out, where = OffsetTable(np.arange(4.0))(0, 4)
    >>> loss = dynamics_loss(holder, torch.zeros(3, 4, 2), torch.rand(3, 4), t_out, where,
    ...                      {"method": "rk4", "step": 0.5})
    >>> loss.shape
    torch.Size([])
    """
    B, w, d = z.shape
    steps = torch.arange(w - 1, device=z.device)
    mark = torch.ones(B, w - 1, dtype=torch.bool, device=z.device)
    # m holds teacher_forcing (a float) and dynamics; nn.Module types its attributes Tensor | Module
    mark[:, 1:] = u[:, 2:] < cast(float, m.teacher_forcing)
    start = torch.where(mark, steps, torch.full_like(steps, -1)).cummax(dim=1).values  # [B, w-1]
    b = torch.arange(B, device=z.device)[:, None].expand(-1, w - 1)
    pairs, pair_of = torch.unique(b * w + start, return_inverse=True)
    z0 = z[pairs // w, pairs % w]  # [n_pairs, d]
    if phase is not None and phase.shape[-1]:  # forcing phases at each restart frame
        ph = phase.to(z0)
        z0 = torch.cat([z0, ph[pairs // w, pairs % w] if ph.ndim == 3 else ph[pairs % w]], dim=-1)
    target = (steps + 1).expand(B, -1)
    if where.ndim == 3:  # one window per batch element: offset index of (b, start, target)
        ti = where[b, start, target]
    else:  # offset index of (start, target)
        ti = where[start, target]
    n_t = int(ti.max()) + 1
    sol = integrate_latent(cast(LatentDynamics, m.dynamics), z0, t_out[:n_t], **ode)  # [n_t, n_pairs, d(+phases)]
    pred = sol[ti, pair_of][..., :d]
    loss = (pred - z[:, 1:]).pow(2).mean()
    return (loss, pred) if return_pred else loss
