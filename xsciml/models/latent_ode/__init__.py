r"""The latent-ODE forecasting core shared by the latent-dynamics models (DINo, smooth).

A latent-dynamics model represents every state :math:`u_t` of a field by a code
:math:`\alpha_t`, evolves the code with a learned autonomous ODE and decodes it anywhere
in space. What the models share lives here:

* the vector field :class:`LatentDynamics` and the solver wrapper :func:`integrate_latent`
  (fixed-step solvers step on a grid independent of the output times);
* how a model reads time (:class:`Clock`: numeric, datetime64 or cftime axes, possibly
  irregular; lead times as numbers or timedeltas) and the checked solver options
  (:func:`ode_settings`);
* the training data: :func:`prepare_trajectories` resolves the variables, the time,
  sample and space coordinates (space through :func:`xsciml.tensors.default_space`) and
  builds the ``[S, T, P, C]`` value arrays (:class:`Trajectories`);
* the teacher-forced rollout loss of the dynamics (:func:`dynamics_loss`, its schedule
  :func:`teacher_forcing_schedule` and the window offsets :class:`OffsetTable`);
* :class:`LatentForecaster`, the estimator base class: forecasting is a template method
  (parse the leads, check the initial state, encode, integrate, decode, label), eager or
  lazy per Dask chunk, with the models' encoders plugged in as array-level hooks; plus the
  In-s mask and the In-t / Out-t × In-s / Out-s table.

The models (:mod:`xsciml.models.dino`, :mod:`xsciml.models.smooth`) build on this package
(:mod:`.ode`, :mod:`.data`, :mod:`.forecaster`);
:func:`xsciml.models.dynamics.fit_dynamics` chooses between them.
"""

from .data import Trajectories, prepare_trajectories, resolve_sample_dim
from .forecaster import InitialStates, LatentForecaster
from .ode import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    Clock,
    LatentDynamics,
    OffsetTable,
    default_window,
    draw_windows,
    dynamics_loss,
    integrate_latent,
    ode_settings,
    teacher_forcing_schedule,
    unique_solver_times,
)

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "Clock",
    "InitialStates",
    "LatentDynamics",
    "LatentForecaster",
    "OffsetTable",
    "Trajectories",
    "default_window",
    "draw_windows",
    "dynamics_loss",
    "integrate_latent",
    "ode_settings",
    "prepare_trajectories",
    "resolve_sample_dim",
    "teacher_forcing_schedule",
    "unique_solver_times",
]
