"""Fit and forecast latent dynamics whichever the model: ``fit_dynamics`` and ``forecast``.

:func:`fit_dynamics` (``ds.sciml.fit_dynamics``) chooses the model with ``method``:
``"dino"`` (:mod:`xsciml.models.dino`, auto-decoding, any grid) or ``"smooth"``
(:mod:`xsciml.models.smooth`, an encoder on a periodic grid). :func:`forecast`
(``ds_init.sciml.forecast``) runs a fitted model's ``forecast``. Both models build on
:mod:`xsciml.models.latent_ode`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import xarray as xr

from .._docs import shared_docs
from ..base import Estimator, Forecaster
from ..training import TrainState, parse_time_limit
from ..training._checkpoints import time_limit_share
from .dino import DINo, fit_dino
from .latent_ode import ADAPTIVE_METHODS, FIXED_STEP_METHODS, resolve_sample_dim
from .latent_ode.references import References
from .smooth import SmoothDynamics, fit_smooth_dynamics

__all__ = ["fit_dynamics", "forecast"]


@shared_docs
def fit_dynamics(
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    space: str | Sequence[str] | None = None,
    time: str = "time",
    sample_dim: Hashable | None = "auto",
    train_until: Any = None,
    latent_dim: int = 32,
    width: int = 64,
    depth: int = 3,
    input_scale: float | None = None,
    dynamics_width: int = 128,
    dynamics_depth: int = 3,
    dynamics_linear: bool = True,
    periods: Sequence[Any] = (),
    method: str = "dino",
    solver: str | None = None,
    ode_step: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    adjoint: bool = False,
    teacher_forcing: Any = (0.99, 0.5),
    steps: int | None = None,
    batch_size: int | None = None,
    window: int | None = None,
    n_points: int | None = None,
    loss: str = "relative",
    lr: float | None = None,
    code_lr: float = 1e-2,
    dynamics_lr: float = 3e-3,
    scheduler: Any = "cosine",
    grad_clip: float | None = None,
    rollout_weight: float = 0.0,
    time_units: str = "days",
    sphere: bool | str = "auto",
    residual_rank: int = 128,
    device: Any = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    time_limit: float | str | None = None,
    combine: bool | None = None,
    val_fraction: float = 0.25,
    **kwargs: Any,
) -> DINo | SmoothDynamics:
    r"""Learn the dynamics of a field from trajectories (DINo, or the smooth model).

    By default (``method="dino"``) fits a FourierNet decoder :math:`D_\phi(\alpha)(x)`,
    one code :math:`\alpha` per (trajectory, time) frame, and a latent ODE
    :math:`d\alpha/dt = f_\psi(\alpha)` on normalised codes, jointly, through
    :func:`xsciml.training.fit` (:func:`xsciml.models.dino.fit_dino`; see
    :mod:`xsciml.models.dino` for the objective).

    Parameters
    ----------
    obj
        Trajectories ``(sample_dim, time, space...)``; NaN where a frame is not
        observed (e.g. trained on a sub-grid). Loaded in memory.
    variables
        Variable(s) to model; several are decoded together as channels.
    space
        Space coordinate names (default: the dimension coordinates other than time and
        ``sample_dim``, or CF latitude/longitude). 1-D or 2-D (curvilinear) coordinates,
        or scattered points along one dimension.
    time
        Time coordinate (a dimension): numbers, datetime64 or cftime, possibly irregular.
    sample_dim
        Dimension indexing trajectories; ``None`` for a single trajectory (one record along
        ``time``); default ``"auto"``: ``"trajectory"`` where the data have that dimension,
        a single trajectory otherwise.
    train_until
        Last time used for training (a time label, e.g. ``"2019-03-24"`` or ``2.25``);
        default all.
    latent_dim
        Size of the codes.
    width, depth, input_scale
        Decoder size and frequency scale (default from the grid resolution).
    dynamics_width, dynamics_depth, dynamics_linear
        Size of the dynamics MLP, and whether the vector field has a linear term
        (see :class:`LatentDynamics`).
    periods
        Periods of known external forcings (timedeltas such as ``"1D"`` for the diurnal
        cycle, or numbers in time units): the dynamics receive the phase of each
        (``sin``, ``cos``), so :math:`d\alpha/dt = f_\psi(\alpha, \theta(t))`. Forecasts
        then need the initial states' time coordinate.
    method
        The model family: ``"dino"`` (this function's model) or ``"smooth"`` (encoder-based
        smooth latent dynamics, :func:`xsciml.models.smooth.fit_smooth_dynamics`, which
        receives the data, ``space``, ``time``, ``sample_dim``, ``train_until``,
        ``device``, ``seed``, ``progress``, every other argument given here that it also
        takes (``solver``, ``steps``, ``lr``, ``latent_dim``, ``checkpoint``...), and its
        own options through ``**kwargs``; an argument of DINo's alone, such as
        ``n_points`` or ``input_scale``, set to another value than its default, is
        refused with an error rather than ignored).
    solver
        torchdiffeq solver: fixed-step (``"rk4"``, ``"euler"``, ``"midpoint"``...) or
        adaptive (``"dopri5"``, ...).
    ode_step
        Step of fixed-step solvers, in time units (a number, or a timedelta for datetime
        axes); default half the median frame spacing. Independent of the output times.
    rtol, atol
        Tolerances of adaptive solvers.
    adjoint
        Back-propagate with the adjoint method (``odeint_adjoint``): memory O(1) in the
        number of steps, slower.
    teacher_forcing
        Probability of restarting an ODE step from the true code: ``(start, fraction)``
        decays geometrically from ``start`` to ``start / 100`` over that fraction of the
        steps, then 0 (default ``(0.99, 0.5)``); a float for a constant; or a callable
        ``step -> probability``.
    steps
        Optimiser steps (one per batch); default from the data (for DINo 2000 when a
        step covers every frame, up to 6000 otherwise: see
        :func:`~xsciml.models.dino.fit_dino`).
    batch_size
        Rollout windows per step, each from a random trajectory and start (default as
        many as cover every frame once, fewer when that exceeds the step's budget of
        decoded values). Codes outside the windows stay where they are: Adam's momentum
        does not move them.
    window
        Frames per training rollout (default ``min(T, 16)`` of the ``T`` training frames).
    n_points
        Random points of every frame per step (default from the data: about ``2**14``
        decoded values per step, at least 32 points per frame; a number at least the
        grid size for all).
    loss
        Reconstruction loss: ``"relative"`` (default), where every frame is weighted by
        the inverse of its spatial variance (floored at 1 % of the average), so that
        small-amplitude frames — late frames of decaying dynamics — are reconstructed as
        accurately, relatively, as large ones; or ``"mse"`` (standardised values, as in
        DINo).
    lr, code_lr, dynamics_lr
        Learning rates of the decoder, the codes and the dynamics (Adam).
    scheduler
        Learning-rate schedule of :func:`xsciml.training.fit`.
    grad_clip
        Clip the global gradient norm of every step to this value (None: no clipping).
        Long rollouts of an unstable latent flow can produce huge gradients; clipping
        (e.g. 1.0) keeps one bad step from wrecking the training.
    rollout_weight
        Weight of a second dynamics loss: the predicted codes of the teacher-forced
        rollout are decoded and compared with the frames (the reconstruction loss on the
        rollout), so that the dynamics is fitted where it matters for the field, not only
        in code space. 0 (default): DINo's latent loss only.
    time_units
        Float unit of datetime/cftime time (leads given as numbers are in this unit).
    sphere
        Embed latitude/longitude on the sphere (see :class:`~xsciml.coords.CoordinateEncoder`).
    residual_rank
        Rank of the covariance of the decoder's residuals on the training points,
        estimated after training (at most 512 frames, :func:`residual_covariance_factor`)
        and used to encode sparsely observed states by generalised least squares
        (:meth:`~xsciml.models.dino.DINo.encode`, ``noise``); 0 to skip it. Skipped as well when the training
        points times variables exceed 2**15 (memory).
    device, seed, progress
        Where to train, the seed, a progress bar.
    {training_options}
        Both models take them (``"smooth"`` keeps one checkpoint file per training
        stage, see :func:`xsciml.models.smooth.fit_smooth_dynamics`).
    combine
        Build reference forecasts and learn how to combine them with the learned one
        (calendar time axes only; see :mod:`xsciml.models.latent_ode.references`):
        persistence, a harmonic climatology and damped anomaly persistence of the
        training period, and per-lead convex weights of the four forecasts fitted on the
        last ``val_fraction`` of the training period, forecast by a first fit of the
        learned model that does not see it; the model is then fitted again on the whole
        training period (the fit takes about twice as long; with ``checkpoint``, the
        first fit writes ``<checkpoint>.validation``; ``time_limit`` covers both fits and
        the validation forecasts, the first fit getting half of it). ``forecast`` then returns the
        combination, whose learned member is the mean of both fits' forecasts (the first
        is kept as ``model.validation_model``; ``combine=False`` there gives the refitted
        model alone), and
        ``model.summary()`` prints the weights and the validation scores. ``None``
        (default): for datetime/cftime axes, with a warning naming why when the training
        period is too short; ``True``: required (an error
        otherwise); ``False``: the learned model alone, fitted on the whole period.
    val_fraction
        Share of the training frames, at its end, held out to fit the combination weights
        (default 0.25; at least 2 frames, at most half).
    **kwargs
        Options of the ``"smooth"`` method (none for DINo).

    Returns
    -------
    :class:`~xsciml.models.dino.DINo`, or :class:`~xsciml.models.smooth.SmoothDynamics` for
    ``method="smooth"``.

    Examples
    --------
    >>> import xsciml
    >>> ds = xsciml.datasets.heat(4, 16, n_frames=6, seed=0)
    >>> model = fit_dynamics(ds, "u", space=("y", "x"), latent_dim=8, width=16, steps=5,
    ...                      progress=False)
    >>> fc = model.forecast(ds.isel(trajectory=[0], time=0), lead=[0.0, 0.5], encode_steps=5)
    >>> fc.dims
    ('trajectory', 'lead', 'y', 'x')
    """
    if method == "smooth":
        chosen = _given_options(fit_dynamics, {k: v for k, v in locals().items() if k != "kwargs"})
    else:
        if method in FIXED_STEP_METHODS + ADAPTIVE_METHODS and solver is None:
            import warnings

            warnings.warn(f"fit_dynamics(method={method!r}) names an ODE solver; the argument is now "
                          f"solver={method!r} (method chooses the model: 'dino' or 'smooth')",
                          FutureWarning, stacklevel=2)
            method, solver = "dino", method
        if method != "dino":
            raise ValueError(f"method={method!r} is not a dynamics model; use 'dino' or 'smooth' "
                             "(the ODE solver is chosen with solver=...)")
        if kwargs:
            raise TypeError(f"fit_dynamics(method='dino') got unexpected argument(s) {sorted(kwargs)}")
    given: dict[str, Any] = {"solver": solver, "rtol": rtol, "atol": atol, "steps": steps, "lr": lr}
    sample_dim = resolve_sample_dim(obj, sample_dim)  # "auto": one trajectory unless there is a 'trajectory' dim
    limit = parse_time_limit(time_limit)  # the whole call's budget, shared by both fits

    def learn(until: Any, ckpt: Any, budget: float | None) -> DINo | SmoothDynamics:
        if method == "smooth":
            extra = {"checkpoint": ckpt} if ckpt is not None else {}
            if budget is not None:
                extra["time_limit"] = budget
            return _fit_smooth(obj, variables, space=space, time=time, sample_dim=sample_dim, train_until=until,
                               device=device, seed=seed, progress=progress,
                               chosen={**chosen, **extra}, kwargs=kwargs)
        return fit_dino(obj, variables, space=space, time=time, sample_dim=sample_dim,
                        train_until=until, latent_dim=latent_dim, width=width, depth=depth,
                        input_scale=input_scale, dynamics_width=dynamics_width,
                        dynamics_depth=dynamics_depth, dynamics_linear=dynamics_linear, periods=periods,
                        ode_step=ode_step, adjoint=adjoint, teacher_forcing=teacher_forcing,
                        batch_size=batch_size, window=window, n_points=n_points, loss=loss,
                        code_lr=code_lr, dynamics_lr=dynamics_lr, scheduler=scheduler,
                        grad_clip=grad_clip, rollout_weight=rollout_weight, time_units=time_units,
                        sphere=sphere, residual_rank=residual_rank, device=device, seed=seed,
                        progress=progress, checkpoint=ckpt, resume=resume, callbacks=callbacks,
                        time_limit=budget, **{k: v for k, v in given.items() if v is not None})

    plan = _reference_plan(obj, variables, time=time, sample_dim=sample_dim, train_until=train_until,
                           space=space, combine=combine, val_fraction=val_fraction)
    if plan is None:
        return learn(train_until, checkpoint, limit)
    # the weights come from a model that has not seen the validation period; the forecasts
    # from one refitted on the whole training period, like the references. Both fits take as
    # many steps, so the first gets half the time budget and the second what is left of it.
    # The references and their weights (the held-out model's validation forecasts) come
    # before the refit, which gets what is then left of the budget.
    def share(which: str, until: Any, ckpt: Any, budget: float | None) -> DINo | SmoothDynamics:
        if limit is None:
            return learn(until, ckpt, budget)
        with time_limit_share(f"{which} of time_limit={limit:.3g} s, which both fits share"):
            return learn(until, ckpt, budget)  # a fit stopped by its share says so

    start = perf_counter()
    held_out = share("the validation fit's half", plan.fit_until,
                     None if checkpoint is None else f"{os.fspath(checkpoint)}.validation",
                     None if limit is None else limit / 2)
    refs = _fit_references(held_out, plan)
    left = None if limit is None else max(limit - (perf_counter() - start), 1e-3)
    return _attach_references(share("what the refit had left", train_until, checkpoint, left),
                              held_out, refs, plan)


def forecast(
    ds_init: xr.Dataset | xr.DataArray,
    estimator: Estimator,
    *,
    lead: Any,
    **kwargs: Any,
) -> xr.DataArray | xr.Dataset:
    """Forecast from initial state(s) with a fitted dynamics model (``ds_init.sciml.forecast``).

    Calls ``estimator.forecast(ds_init, lead=lead, **kwargs)``: see
    :meth:`~xsciml.models.dino.DINo.forecast` (``target``, ``encode_steps``, ``residual``...) or
    :meth:`~xsciml.models.smooth.SmoothDynamics.forecast` for the options each model takes;
    an option the model does not know is an error, never silently dropped.

    Examples
    --------
    >>> import numpy as np, xsciml
    >>> ds = xsciml.datasets.heat(4, 16, n_frames=6, seed=0)
    >>> dyn = xsciml.models.fit_dynamics(ds, "u", latent_dim=8, width=16, steps=5,
    ...                                  progress=False)
    >>> fc = forecast(ds.isel(time=0), dyn, lead=np.array([0.0, 2.0]), encode_steps=5)
    >>> fc.sizes["lead"], fc.dims[0]
    (2, 'trajectory')
    """
    if not isinstance(estimator, Estimator) or not isinstance(estimator, Forecaster):
        raise TypeError(f"estimator must be a fitted dynamics model, a DINo or SmoothDynamics (from "
                        f"fit_dynamics / xsciml.load), got {type(estimator).__name__}")
    return estimator.forecast(ds_init, lead=lead, **kwargs)


def _given_options(func: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The keyword-only arguments of ``func`` whose value in ``values`` is not the default."""
    import inspect

    out = {}
    for name, param in inspect.signature(func).parameters.items():
        if param.kind is not param.KEYWORD_ONLY or name not in values:
            continue
        value = values[name]
        try:
            same = value is param.default or bool(value == param.default)
        except Exception:  # arrays and other values without a plain truth value
            same = False
        if not same:
            out[name] = value
    return out


_ALWAYS_FORWARDED = ("space", "time", "sample_dim", "train_until", "device", "seed", "progress", "method",
                     "combine", "val_fraction")


def _fit_smooth(obj: Any, variables: Any, *, chosen: dict[str, Any], kwargs: dict[str, Any],
                **shared: Any) -> SmoothDynamics:
    """``fit_dynamics(method="smooth")``: forward the shared and the chosen options, refuse
    the options of DINo's alone rather than drop them."""
    import inspect

    accepted = inspect.signature(fit_smooth_dynamics).parameters
    extra = {k: v for k, v in chosen.items() if k not in _ALWAYS_FORWARDED}
    refused = sorted(k for k in extra if k not in accepted)
    if refused:
        own = sorted(k for k, p in accepted.items() if p.kind is p.KEYWORD_ONLY)
        raise TypeError(
            f"fit_dynamics(method='smooth') does not take {', '.join(refused)} (options of "
            f"method='dino'); leave them unset, or choose among the smooth model's options: "
            f"{', '.join(own)}")
    return fit_smooth_dynamics(obj, variables, **shared, **extra, **kwargs)


# --------------------------------------------------------------------------- references
#: Fewest training frames for a validation split (and for what precedes it)
MIN_FRAMES_COMBINED = 8


@dataclass
class _ReferencePlan:
    """How a calendar training period is split: the learned model's part and the validation."""

    ds: xr.Dataset  # the training period, with a sample dim (``_trajectory`` for one series)
    variables: list[str]
    time: str
    tdim: Hashable
    sample_dim: Hashable  # the effective one
    user_sample_dim: Hashable | None
    space: list[str]
    sdims: list[Hashable]
    n_fit: int
    fit_until: Any


def _reference_plan(obj: Any, variables: Any, *, time: str, sample_dim: Hashable | None, train_until: Any,
                    space: Any, combine: bool | None, val_fraction: float) -> _ReferencePlan | None:
    """The validation split of a calendar training period (None: no references)."""
    import warnings

    from ..coords import time_kind
    from .latent_ode import prepare_trajectories

    if combine not in (None, True, False):
        raise TypeError(f"combine must be None, True or False, got {combine!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
            0 < float(val_fraction) <= 0.5):
        raise ValueError(f"val_fraction must be a number in (0, 0.5], got {val_fraction!r}")
    if combine is False:
        return None
    traj = prepare_trajectories(obj, variables, time=time, sample_dim=sample_dim,
                                train_until=train_until, space=space)
    kind = time_kind(np.asarray(traj.ds[time].values))
    if kind == "numeric":
        if combine:
            raise ValueError(f"combine=True needs a calendar time axis (datetime64 or cftime); {time!r} "
                             "is numeric, so there is no climatology to build: use combine=None or False")
        return None
    T = traj.n_frames
    n_val = max(2, int(round(float(val_fraction) * T)))
    n_fit = T - n_val
    if T < MIN_FRAMES_COMBINED or n_fit < n_val:
        reason = (f"the training period has {T} frames: too short for a validation split of "
                  f"{n_val} frames after at least as many training frames (needs {MIN_FRAMES_COMBINED} "
                  "frames or more)")
        if combine:
            raise ValueError(f"combine=True: {reason}")
        warnings.warn(f"{reason}; the references (persistence, climatology, anomaly persistence) "
                      "are left out and forecasts are the learned model's alone", UserWarning, stacklevel=3)
        return None
    tdim = traj.time_dim
    return _ReferencePlan(ds=traj.ds, variables=list(traj.variables), time=time, tdim=tdim,
                          sample_dim=traj.sample_dim, user_sample_dim=sample_dim, space=list(traj.space),
                          sdims=list(traj.check_dims()), n_fit=n_fit,
                          fit_until=traj.ds[time].values[n_fit - 1])


def _fit_references(held_out: DINo | SmoothDynamics, plan: _ReferencePlan) -> References:
    """The references of the plan's training period, with their weights fitted on its
    validation split (forecasts of ``held_out``, fitted before it)."""
    from ..coords import time_to_float
    from .latent_ode.references import MAX_STARTS, state_values

    ds, tdim = plan.ds, plan.tdim
    T, n_fit = int(ds.sizes[tdim]), plan.n_fit
    fit_refs: dict[str, Any] = dict(variables=plan.variables, time=plan.time, sample_dim=plan.sample_dim,
                    sdims=plan.sdims, space=plan.space)
    # the references of the whole training period, the ones the forecasts use: their few
    # parameters per point (harmonic coefficients, one damping per lag) gain little from
    # seeing the validation frames, while a climatology of the shorter period before them
    # would be a weaker reference than the one forecasting and get too little weight
    refs = References.fit(ds, **fit_refs)
    t = time_to_float(np.asarray(ds[plan.time].values), "seconds")
    step = float(np.median(np.diff(t)))
    starts = np.arange(n_fit - 1, T - 1)
    if starts.size > MAX_STARTS:
        starts = np.unique(np.linspace(starts[0], starts[-1], MAX_STARTS).round().astype(int))
    reach = t[T - 1] - t[starts[min(2, starts.size - 1)]]  # at least three starts reach the last bin
    grid = References.lead_bins(reach, step)
    logg = np.log(grid)
    user = ds if plan.user_sample_dim is not None else ds.isel({plan.sample_dim: 0}, drop=True)
    bdims = [d for d in user[plan.variables[0]].dims if d not in plan.sdims]
    forecasts = []
    for s in starts:
        off = t[s + 1:] - t[s]
        bins = np.abs(np.log(off)[:, None] - logg[None]).argmin(1)
        chosen = sorted({int(np.flatnonzero(bins == j)[np.abs(np.log(off[bins == j]) - logg[j]).argmin()])
                         for j in np.unique(bins) if off[bins == j].min() <= grid[-1] * 1.5})
        if not chosen:
            continue
        idx = np.asarray(chosen) + s + 1
        leads = off[chosen]
        init = user.isel({tdim: [int(s)]})
        fc = held_out.forecast(init, lead=(leads * 1e9).astype("timedelta64[ns]"), combine=False,
                            progress=False)
        fcs = fc.to_dataset() if isinstance(fc, xr.DataArray) else fc
        order = [*bdims, "lead", *plan.sdims]
        learned = np.stack([np.asarray(fcs[v].transpose(*order).values, dtype=np.float64).reshape(
            -1, len(leads), int(np.prod([user.sizes[d] for d in plan.sdims]))) for v in plan.variables], -1)
        x0 = state_values(init, plan.variables, bdims, plan.sdims)
        truth = np.stack([state_values(user.isel({tdim: [int(k)]}), plan.variables, bdims, plan.sdims)
                          for k in idx], 1)  # [N, K, P, C]
        t0 = np.full(x0.shape[0], t[s])
        forecasts.append((x0, t0, leads, learned, truth))
    refs.fit_weights(forecasts, grid)
    return refs


def _attach_references(model: DINo | SmoothDynamics, held_out: DINo | SmoothDynamics, refs: References,
                       plan: _ReferencePlan) -> DINo | SmoothDynamics:
    """Attach the references (:func:`_fit_references`) and ``held_out`` as the validation
    model to ``model``."""
    import warnings

    ds, tdim = plan.ds, plan.tdim
    T, n_fit = int(ds.sizes[tdim]), plan.n_fit
    model.references = refs
    model.validation_model = held_out
    model.info["references"] = {"n_frames_validation": T - n_fit, "validation_model_steps":
                                held_out.info.get("steps"), "validation_period":
                                f"{ds[plan.time].values[n_fit]} .. {ds[plan.time].values[-1]}",
                                "notes": refs.notes}
    if refs.notes:
        warnings.warn("reference climatology: " + "; ".join(refs.notes), UserWarning, stacklevel=3)
    return model
