"""Docstring text shared by several public functions: one wording, kept in one place.

A docstring names a shared part by a line holding only its marker, e.g.
``{training_options}``, at the indentation of the parameters it stands for;
:func:`shared_docs` expands it when the function is defined (so ``help()``, ``?`` in a
notebook and the accessor show the full text), and the docs build expands it the same
way (``docs/hooks/griffe_numpydoc.py`` calls :func:`expand`).

Examples
--------
>>> def f(checkpoint=None):
...     pass
>>> f.__doc__ = "Parameters\\n----------\\n{training_options}\\n"
>>> "Wall-clock budget of the training" in shared_docs(f).__doc__
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["SHARED", "expand", "shared_docs"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: The shared parts, by marker name: numpydoc parameter entries, unindented.
SHARED: dict[str, str] = {
    "training_options": """\
checkpoint : str or os.PathLike, optional
    Training checkpoint file, written atomically every 500 steps and at the end
    (see :func:`xsciml.training.fit`).
resume : bool, default False
    Continue the training from ``checkpoint`` when the file exists (same data and
    settings; a larger ``steps`` trains further).
callbacks : sequence of callables, default ()
    Each is called as ``callback(state)`` with a :class:`~xsciml.training.TrainState`
    after every optimizer step; returning ``True`` stops the training.
time_limit : float or str, optional
    Wall-clock budget of the training: seconds, or a string such as ``"90s"``,
    ``"10min"``, ``"1.5h"``, ``"2h30min"`` (:func:`xsciml.training.parse_time_limit`).
    When it runs out, training stops after the current step with a warning, the
    best weights are kept, the checkpoint is written and ``history.stop_reason`` is
    ``"time_limit"``.""",
    "forecast_combine": """\
combine : bool, optional
    Combine the learned forecast with the reference forecasts of the training
    period (persistence, climatology, anomaly persistence) by the per-lead weights
    fitted on its validation split (see ``model.summary()`` and
    :mod:`xsciml.models.latent_ode.references`): ``None`` (default) whenever the
    model has references and the forecast can use them (initial states on the
    training grid, with their time; a warning says why not otherwise), ``True`` to
    require it, ``False`` for the learned model alone.
recent : Dataset or DataArray, optional
    Observations after the training period, up to the initial times (the model's
    variables on the training grid along its time axis; the whole observed record
    can be passed), to update the combination with. The learned model and the
    references are run from up to 64 of their frames and verified on them; for
    each initial time and lead, the weights are refitted on the validation
    forecasts together with the recent ones verified in the period before it (as
    long as the validation period), and an ensemble (``members``) is calibrated to
    the mean squared error of the forecasts verified in that period or in its last
    half or quarter, whichever predicted the recent forecasts verified so far best
    (:meth:`xsciml.models.latent_ode.references.References.recent_error_ms`). A frame after an
    initial time never enters its forecast. Default: the validation period's
    weights and calibration.""",
}


def expand(doc: str) -> str:
    """``doc`` with every line that holds only a ``{name}`` marker of :data:`SHARED`
    replaced by that text, indented as the marker was."""
    out: list[str] = []
    for line in doc.split("\n"):
        key = line.strip()
        if key.startswith("{") and key.endswith("}") and key[1:-1] in SHARED:
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + part if part else part for part in SHARED[key[1:-1]].split("\n"))
        else:
            out.append(line)
    return "\n".join(out)


def shared_docs(func: _F) -> _F:
    """Expand the shared-text markers of ``func``'s docstring (see :func:`expand`)."""
    if func.__doc__:
        func.__doc__ = expand(func.__doc__)
    return func
