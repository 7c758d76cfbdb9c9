"""The ``.sciml`` accessor: xsciml's functions as methods of Datasets and DataArrays.

Every method is one call of a public function with this object as its first argument.
The methods are built from those functions: ``ds.sciml.fit_field?`` (or
``help(ds.sciml.fit_field)``) shows the function's own signature, less the data
argument the accessor supplies, and its full docstring, and tab completion offers its
parameters. ``help(ds.sciml)`` lists the methods grouped by task.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import xarray as xr

__all__ = ["SciMLDatasetAccessor", "SciMLDataArrayAccessor", "METHODS"]

#: ``(task, [(method, "module:function", one-line summary), ...])``: every accessor method,
#: grouped as ``help(ds.sciml)`` shows them. The function's first parameter is the object.
METHODS: list[tuple[str, list[tuple[str, str, str]]]] = [
    ("Data to tensors", [
        ("to_tensors", "xsciml.tensors:to_tensors",
         "valid points as coordinate tensors x, t, y (the input of neural fields)"),
        ("to_fields", "xsciml.tensors:to_fields",
         "whole snapshots as [S, C, H, W] tensors (the input of grid models)"),
    ]),
    ("Gap filling", [
        ("fit_field", "xsciml.models.field:fit_field",
         "neural field on scattered or gappy data: predict (mean, std) anywhere, sample"),
    ]),
    ("EOF / latent models", [
        ("fit_autoencoder", "xsciml.models.amortized:fit_autoencoder",
         "PCA/EOFs (weighted, randomised SVD) or a neural autoencoder of whole snapshots"),
        ("fit_latent", "xsciml.models.latent:fit_latent",
         "latent codes per snapshot with a shared decoder: encode gappy snapshots, decode anywhere"),
    ]),
    ("Forecasting", [
        ("fit_dynamics", "xsciml.models.dynamics:fit_dynamics",
         "space-continuous dynamics (codes evolved by a neural ODE) from trajectories"),
        ("forecast", "xsciml.models.dynamics:forecast",
         "roll a fitted dynamics model forward from these initial states"),
    ]),
    ("Bias correction & downscaling", [
        ("fit_debias", "xsciml.downscale.ot:fit_debias",
         "optimal-transport bias correction of this model output against a reference"),
        ("fit_diffusion", "xsciml.downscale.diffusion:fit_diffusion",
         "score-based diffusion prior of these fine-resolution fields"),
        ("downscale", "xsciml.downscale.pipeline:downscale",
         "fine-resolution samples of these coarse fields, consistent with them"),
    ]),
    ("Inversion", [
        ("invert", "xsciml.inverse:invert",
         "estimate the source behind these observations, with its uncertainty"),
    ]),
]

_SCALE_NOTES = """\
Scale / Dask
    Every fitted estimator's inference methods (``predict``, ``sample``, ``encode``,
    ``decode``, ``forecast``, ``transform``, ...) take dask-backed input, e.g. from
    ``xr.open_zarr``, and return lazy results: one task per chunk on any Dask
    scheduler, the model sent to each worker once (see :mod:`xsciml.parallel`).
    Fitting streams dask-backed training data chunk by chunk. Batch jobs over a zarr
    store, region by region and resumable: :func:`xsciml.jobs.run_job` or
    ``xsciml run TASK --model M --input IN --output OUT`` on the command line.
"""


def _grouped_help() -> str:
    lines = []
    for task, methods in METHODS:
        lines.append(task)
        for name, target, summary in methods:
            lines.append(f"    {name:<16} {summary}")
            lines.append(f"    {'':<16} (:func:`{target.replace(':', '.')}`)")
        lines.append("")
    return "\n".join(lines) + "\n" + _SCALE_NOTES


class _Forward:
    """An accessor method built from a function of xsciml.

    The target is imported on first use (``import xsciml`` stays light). On an
    accessor, the attribute is a function calling the target with the accessor's
    object first; it carries the target's docstring, name and module, ``__wrapped__``
    (``??`` in IPython shows the target's source) and a ``__signature__`` without the
    target's first parameter (what ``help``, ``inspect.signature`` and tab completion
    read).
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.name = target.rpartition(":")[2]
        self._func: Callable[..., Any] | None = None
        self._signature: inspect.Signature | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def function(self) -> Callable[..., Any]:
        """The target function (imported once)."""
        if self._func is None:
            module, _, attr = self.target.partition(":")
            self._func = getattr(importlib.import_module(module), attr)
        return self._func

    def signature(self) -> inspect.Signature:
        """The target's signature without its first (data) parameter."""
        if self._signature is None:
            sig = inspect.signature(self.function())
            self._signature = sig.replace(parameters=list(sig.parameters.values())[1:])
        return self._signature

    def __get__(self, instance: Any, owner: type | None = None) -> Callable[..., Any]:
        func = self.function()
        if instance is None:  # on the class: an unbound method, ``self`` first
            def unbound(accessor: Any, /, *args: Any, **kwargs: Any) -> Any:
                return func(accessor._obj, *args, **kwargs)

            functools.update_wrapper(unbound, func)
            first = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
            unbound.__signature__ = self.signature().replace(  # type: ignore[attr-defined]
                parameters=[first, *self.signature().parameters.values()])
            unbound.__qualname__ = f"{owner.__name__}.{self.name}" if owner else self.name
            return unbound
        obj = instance._obj

        def method(*args: Any, **kwargs: Any) -> Any:
            return func(obj, *args, **kwargs)

        functools.update_wrapper(method, func)
        method.__signature__ = self.signature()  # type: ignore[attr-defined]
        method.__qualname__ = f"{type(instance).__name__}.{self.name}"
        return method


class _SciMLAccessor:
    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj


for _task, _methods in METHODS:
    for _name, _target, _summary in _methods:
        _forward = _Forward(_target)
        _forward.__set_name__(_SciMLAccessor, _name)
        setattr(_SciMLAccessor, _name, _forward)
del _task, _methods, _name, _target, _summary, _forward

_HELP = _grouped_help()


def _class_doc(kind: str, short: str, example: str) -> str:
    return (f"``{short}.sciml``: xsciml's methods on a {kind}.\n\n"
            f"Each method calls the xsciml function named under it with this {kind} as its\n"
            f"first argument; its help (``{short}.sciml.fit_field?``) is that function's.\n\n"
            f"{_HELP}\nExamples\n--------\n{example}")


@xr.register_dataset_accessor("sciml")
class SciMLDatasetAccessor(_SciMLAccessor):
    __doc__ = _class_doc("Dataset", "ds", """\
>>> import xarray as xr, xsciml
>>> ds = xr.Dataset({"u": ("x", [1.0, 2.0])}, coords={"x": [0.0, 1.0]})
>>> list(inspect.signature(ds.sciml.fit_field).parameters)[:3]
['variables', 'space', 'time']
""")


@xr.register_dataarray_accessor("sciml")
class SciMLDataArrayAccessor(_SciMLAccessor):
    __doc__ = _class_doc("DataArray", "da", """\
>>> import xarray as xr, xsciml
>>> da = xr.DataArray([1.0, 2.0], dims="x", name="u")
>>> list(inspect.signature(da.sciml.to_fields).parameters)[:2]
['variables', 'sample_dim']
""")
