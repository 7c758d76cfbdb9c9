"""Inverse problems: learn to recover hidden sources from what physics left behind.

* :mod:`~xsciml.inverse.heat` -- Fourier-diagonal periodic operators: exact heat
  diffusion (:func:`diffuse`, :class:`HeatOperator`) and its damped, uncertainty-aware
  inverse (:func:`inverse_diffuse`, :func:`damped_inverse`); subclass
  :class:`FourierOperator` for Poisson, Helmholtz, ...
* :mod:`~xsciml.inverse.sip` -- scale-invariant physics updates (:func:`sip_loss`),
  training a U-Net that refines the damped physics inverse with ``"sip"``, ``"gd"`` or
  ``"supervised"`` updates through the one training loop (:func:`fit_inversion`), the
  saveable :class:`LearnedInversion` and :func:`invert` (``obs.sciml.invert(inv)``),
  both returning an :class:`InversionResult` (estimate and calibrated uncertainty).
* :mod:`~xsciml.inverse.data` -- on-the-fly random-rectangle sources
  (:class:`RandomRectangles`) and a labelled example dataset (:func:`make_heat_dataset`).

Examples
--------
>>> import xsciml
>>> from xsciml.inverse import HeatOperator, RandomRectangles, fit_inversion
>>> inv = fit_inversion(HeatOperator(8.0), RandomRectangles(batch_size=32),
...                     method="sip", steps=150)  # doctest: +SKIP
>>> res = obs.sciml.invert(inv)  # doctest: +SKIP
>>> res.estimate, res.uncertainty  # doctest: +SKIP
"""

from .data import RandomRectangles, make_heat_dataset
from .heat import (
    DampedInverse,
    FourierOperator,
    HeatOperator,
    damped_inverse,
    diffuse,
    fourier_filter,
    grid_spacing,
    heat_gain,
    inverse_diffuse,
    operator_from_config,
    register_operator,
    wavenumbers_squared,
)
from .sip import (
    METHODS,
    InversionNet,
    InversionResult,
    LearnedInversion,
    fit_inversion,
    invert,
    physics_loss,
    sip_loss,
    source_errors,
)

__all__ = [
    "METHODS",
    "DampedInverse",
    "FourierOperator",
    "HeatOperator",
    "InversionNet",
    "InversionResult",
    "LearnedInversion",
    "RandomRectangles",
    "damped_inverse",
    "diffuse",
    "fit_inversion",
    "fourier_filter",
    "grid_spacing",
    "heat_gain",
    "inverse_diffuse",
    "invert",
    "make_heat_dataset",
    "operator_from_config",
    "physics_loss",
    "register_operator",
    "sip_loss",
    "source_errors",
    "wavenumbers_squared",
]
