"""Base class and registry of fitted estimators.

Every fitted object in xsciml (neural fields, latent interpolators, dynamics models,
diffusion priors, debiasers, inverse-problem networks) derives from :class:`Estimator`.
A subclass describes its learned state with three hooks,

* :meth:`Estimator._get_config` -- a JSON-serialisable ``dict`` (hyper-parameters,
  variable names, coordinate names, ...),
* :meth:`Estimator._get_tensors` -- a flat ``dict`` of ``torch.Tensor`` / NumPy arrays
  (weights, buffers, normaliser statistics, ...),
* :meth:`Estimator._from_state` -- the inverse of the two above,

and is decorated with :func:`register_estimator` so that :func:`xsciml.io.load` can find
the class from the name stored in the file. Saving then needs no pickle.

Outputs are labelled in one place: :func:`output_attrs` gives the attrs of a variable an
estimator computes from data (the predictive mean, standard deviation, a draw, an
ensemble statistic), following the CF conventions, and :meth:`Estimator._provenance`
the provenance attrs, with a ``history`` line (:func:`append_history`).

What an estimator can do is named by four runtime-checkable protocols: :class:`Predictor`
(``predict``), :class:`Forecaster` (``forecast``), :class:`Transformer` (``transform``)
and :class:`Encoder` (``encode``). ``isinstance(model, Predictor)`` tells whether a
model (an :class:`Estimator` or any other object) has the method; batch jobs
(:mod:`xsciml.jobs`) dispatch on them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import pathlib
import pkgutil
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = [
    "Estimator",
    "register_estimator",
    "get_estimator_class",
    "registered_estimators",
    "xsciml_version",
    "output_attrs",
    "append_history",
    "STATISTICS",
    "Predictor",
    "Forecaster",
    "Transformer",
    "Encoder",
]

_EstimatorT = TypeVar("_EstimatorT", bound="Estimator")
_EstimatorTypeT = TypeVar("_EstimatorTypeT", bound=type)

#: Registry of estimator classes, keyed by their registry name.
_REGISTRY: dict[str, type[Estimator]] = {}

#: Packages holding the built-in estimators. ``import xsciml`` imports them lazily, so
#: :func:`get_estimator_class` imports all their modules once when a name is not found.
_BUILTIN_PACKAGES: tuple[str, ...] = ("xsciml.models", "xsciml.downscale", "xsciml.inverse")
_builtins_imported = False


@functools.lru_cache(maxsize=1)
def xsciml_version() -> str:
    """Return the installed xsciml version.

    Reads the installed distribution's metadata; a source checkout that was never
    installed reports ``"0+unknown"``.

    Returns
    -------
    str
        A PEP 440 version string.

    Examples
    --------
    >>> isinstance(xsciml_version(), str)
    True
    """
    try:
        return importlib.metadata.version("xsciml")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


#: What an output variable is, relative to the data it models: the ``statistic`` of
#: :func:`output_attrs`, with its ``long_name`` template and the ``cell_methods`` it adds.
STATISTICS: dict[str, tuple[str, str | None]] = {
    "value": ("{}", None),
    "mean": ("predictive mean of {}", None),
    "std": ("predictive standard deviation of {}", None),
    "sample": ("{} (draw from the predictive distribution)", None),
    "ensemble_mean": ("ensemble mean of {}", "mean"),
    "ensemble_std": ("ensemble standard deviation of {}", "standard_deviation"),
}

#: Attrs of the modelled data that do not describe an output computed from it: packing
#: and fill values (outputs are decoded floats), ranges (a different statistic has
#: others), the audit trail (the output gets its own, see :func:`append_history`).
_NOT_INHERITED = frozenset({
    "history", "scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned",
    "valid_min", "valid_max", "valid_range", "actual_range", "ancillary_variables",
})


def _history_time() -> str:
    """Now in UTC, ISO 8601; ``SOURCE_DATE_EPOCH`` (reproducible outputs) fixes it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and epoch.strip().lstrip("-").isdigit():
        when = datetime.fromtimestamp(int(epoch), tz=timezone.utc)
    else:
        when = datetime.now(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def append_history(history: Any, action: str) -> str:
    """``history`` with one line added: ``<UTC time> xsciml <version>: <action>``.

    The CF ``history`` attribute is an audit trail, one line per program that
    modified the data, each starting with a timestamp; xsciml outputs keep the lines
    of the data they come from and add theirs at the end. Set the environment variable
    ``SOURCE_DATE_EPOCH`` (seconds since 1970) to fix the timestamp, e.g. for
    byte-identical outputs of repeated runs.

    Parameters
    ----------
    history
        The input's ``history`` (``None`` or empty: there is none).
    action
        What was done, e.g. ``"NeuralField.predict: predictive mean and standard deviation"``.

    Returns
    -------
    str

    Examples
    --------
    >>> line = append_history("2020-01-01 cdo selyear", "PCA.decode").splitlines()[-1]
    >>> line.endswith(f"xsciml {xsciml_version()}: PCA.decode")
    True
    """
    line = f"{_history_time()} xsciml {xsciml_version()}: {action}"
    old = "" if history is None else str(history).rstrip("\n")
    return f"{old}\n{line}" if old else line


def output_attrs(source: Mapping[str, Any] | None, statistic: str = "value", *,
                 name: Any = None, dim: str = "sample") -> dict[str, Any]:
    """Attrs of an output variable computed from data with attrs ``source``.

    The one place where xsciml labels what its estimators return, after the CF
    conventions:

    * ``units`` are kept (a standard deviation has the units of its variable);
    * ``"value"`` (a reconstruction, a transformed field) and ``"mean"`` (the predictive
      mean, an estimate of the same quantity) keep ``standard_name`` and
      ``cell_methods``; ``long_name`` says which statistic it is;
    * ``"std"``, the predictive standard deviation: CF has no ``standard_name``
      modifier for it, so there is no ``standard_name``, and ``long_name`` says
      "predictive standard deviation of ..."; ``cell_methods`` are the data's, those
      of the quantity whose uncertainty it gives;
    * ``"sample"``: each draw is a realisation of the quantity (``standard_name`` and
      ``cell_methods`` kept);
    * ``"ensemble_mean"`` / ``"ensemble_std"`` reduce the draws along ``dim``:
      ``cell_methods`` gains ``"<dim>: mean"`` / ``"<dim>: standard_deviation"``, and the
      standard deviation has no ``standard_name``.

    Packing, fill values, valid ranges and ``history`` are not inherited (the
    output's own ``history`` is set with :func:`append_history`).

    Parameters
    ----------
    source
        Attrs of the modelled variable (``None``: none).
    statistic
        One of :data:`STATISTICS`.
    name
        The variable's name, for ``long_name`` when the data have none.
    dim
        The dimension an ensemble statistic reduces.

    Returns
    -------
    dict

    Examples
    --------
    >>> src = {"standard_name": "air_temperature", "long_name": "2 m temperature",
    ...        "units": "K", "cell_methods": "time: mean", "history": "cdo daymean"}
    >>> output_attrs(src, "std")
    {'long_name': 'predictive standard deviation of 2 m temperature', 'units': 'K', 'cell_methods': 'time: mean'}
    >>> output_attrs(src, "ensemble_mean")["cell_methods"]
    'time: mean sample: mean'
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
    template, method = STATISTICS[statistic]
    src = dict(source or {})
    attrs = {k: v for k, v in src.items() if k not in _NOT_INHERITED}
    label = src.get("long_name") or src.get("standard_name") or (str(name) if name is not None else None)
    if statistic in ("std", "ensemble_std"):
        attrs.pop("standard_name", None)
    if label is not None and statistic != "value":
        attrs["long_name"] = template.format(label)
    cell_methods = str(src.get("cell_methods") or "").strip()
    if method is not None:
        cell_methods = f"{cell_methods} {dim}: {method}".strip()
    attrs.pop("cell_methods", None)
    if cell_methods:
        attrs["cell_methods"] = cell_methods
    return attrs


def registry_name(cls: type) -> str:
    """Name ``cls`` is registered under: its own ``_registry_name`` or its class name."""
    # ``_registry_name`` is read from the class's own namespace, never inherited, so an
    # unregistered subclass of a registered class cannot impersonate its parent.
    name = vars(cls).get("_registry_name", cls.__name__)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__}._registry_name must be a non-empty str, got {name!r}.")
    return name


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_estimator(cls: _EstimatorTypeT) -> _EstimatorTypeT:
    """Class decorator registering an :class:`Estimator` subclass for loading.

    The class is registered under ``cls._registry_name`` when the class itself defines
    it, else under ``cls.__name__``. Registering the same class again (e.g. after
    ``importlib.reload``) replaces the entry; registering a *different* class under a
    name already taken is an error.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Estimator`.

    Returns
    -------
    type
        ``cls`` itself, unchanged.

    Raises
    ------
    TypeError
        If ``cls`` is not a subclass of :class:`Estimator`.
    ValueError
        If another class is already registered under the same name.

    Examples
    --------
    >>> @register_estimator
    ... class Constant(Estimator):
    ...     _registry_name = "doc.Constant"
    ...     def __init__(self, value):
    ...         self.value = value
    ...     def _get_config(self):
    ...         return {"value": self.value}
    ...     def _get_tensors(self):
    ...         return {}
    ...     @classmethod
    ...     def _from_state(cls, config, tensors):
    ...         return cls(config["value"])
    >>> get_estimator_class("doc.Constant") is Constant
    True
    """
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise TypeError(
            f"register_estimator expects a subclass of xsciml.base.Estimator, got {cls!r}."
        )
    name = registry_name(cls)
    known = _REGISTRY.get(name)
    if known is not None and known is not cls and _origin(known) != _origin(cls):
        raise ValueError(
            f"Cannot register {_origin(cls)} as {name!r}: that name is already used by "
            f"{_origin(known)}. Give one of the classes a distinct `_registry_name`."
        )
    _REGISTRY[name] = cls
    return cls


def get_estimator_class(name: str) -> type[Estimator]:
    """Return the estimator class registered under ``name``.

    Parameters
    ----------
    name : str
        Registry name (the class name, unless the class sets ``_registry_name``).

    Returns
    -------
    type[Estimator]

    Raises
    ------
    KeyError
        If no class is registered under ``name``; the message lists the known names.

    Examples
    --------
    >>> get_estimator_class("NoSuchModel")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    KeyError: "Unknown estimator class 'NoSuchModel'..."
    """
    if name not in _REGISTRY:
        _import_builtin_estimators()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise KeyError(
            f"Unknown estimator class {name!r}. Known classes: {known}. If it comes from "
            "a plugin or your own code, import the module defining it (decorated with "
            "@xsciml.base.register_estimator) first."
        ) from None


def _import_builtin_estimators() -> None:
    """Import every module of the built-in estimator packages (once per process)."""
    global _builtins_imported
    if _builtins_imported:
        return
    for package_name in _BUILTIN_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as err:
            if err.name == package_name:  # not part of this installation
                continue
            raise
        prefix = package_name + "."
        for info in pkgutil.iter_modules(getattr(package, "__path__", []), prefix=prefix):
            importlib.import_module(info.name)
    _builtins_imported = True


def registered_estimators() -> dict[str, type[Estimator]]:
    """Return a copy of the estimator registry, ``{name: class}``.

    The built-in estimator modules are imported first, so the result lists every
    estimator xsciml ships plus those registered by imported user code.

    Examples
    --------
    >>> isinstance(registered_estimators(), dict)
    True
    """
    _import_builtin_estimators()
    return dict(_REGISTRY)


def _summarise(value: Any, max_chars: int = 32) -> str:
    """Short, single-line rendering of a config value for ``__repr__``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= max_chars else text[: max_chars - 4] + "...'"
    if isinstance(value, (list, tuple)):
        text = repr(value)
        if len(text) <= max_chars:
            return text
        return f"[<{len(value)} items>]"
    if isinstance(value, Mapping):
        return f"{{<{len(value)} keys>}}"
    text = repr(value)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


class Estimator:
    """Base of fitted estimators.

    Subclasses implement the three state hooks :meth:`_get_config`,
    :meth:`_get_tensors` and :meth:`_from_state`, and are decorated with
    :func:`register_estimator`. In return they get :meth:`save`, :meth:`load`, a
    readable ``repr`` and :meth:`_provenance` attrs for their outputs.

    Examples
    --------
    >>> import torch
    >>> @register_estimator
    ... class Scale(Estimator):
    ...     _registry_name = "doc.Scale"
    ...     def __init__(self, factor: torch.Tensor, units: str = "K"):
    ...         self.factor, self.units = factor, units
    ...     def predict(self, x):
    ...         return self.factor * x
    ...     def _get_config(self):
    ...         return {"units": self.units}
    ...     def _get_tensors(self):
    ...         return {"factor": self.factor}
    ...     @classmethod
    ...     def _from_state(cls, config, tensors):
    ...         return cls(tensors["factor"], units=config["units"])
    >>> Scale(torch.tensor(2.0))
    Scale(units='K')
    """

    #: The ``progress`` setting of the fit that made this estimator (not saved). Its
    #: methods that show a bar (``encode``, ``sample``...) follow it when called with
    #: ``progress=None``, so a model fitted with ``progress=False`` stays silent.
    fit_progress: bool | None = None

    def _progress(self, progress: bool | None) -> bool | None:
        """``progress`` as given, else the fit's setting (``None``: ``XSCIML_PROGRESS``)."""
        return self.fit_progress if progress is None else progress

    # -- state hooks (subclasses implement) -----------------------------------------
    def _get_config(self) -> dict[str, Any]:
        """Return the JSON-serialisable part of the state.

        Allowed values are ``str``, ``int``, ``float`` (NaN and infinities included),
        ``bool``, ``None``, lists/tuples and ``dict`` with ``str`` keys, nested freely.
        NumPy scalars are accepted and stored as Python numbers; tuples come back as
        lists. Arrays belong in :meth:`_get_tensors`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement _get_config().")

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        """Return every array of the state as a flat ``{name: tensor}`` dict.

        Values may be ``torch.Tensor`` or numeric NumPy arrays (loaded back as
        tensors). A common pattern is ``{f"net.{k}": v for k, v in
        self.net.state_dict().items()}``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement _get_tensors().")

    @classmethod
    def _from_state(
        cls: type[_EstimatorT], config: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> _EstimatorT:
        """Rebuild an estimator from ``_get_config()`` and ``_get_tensors()`` output.

        ``tensors`` are already on the device asked for at load time.
        """
        raise NotImplementedError(f"{cls.__name__} does not implement _from_state().")

    def _provenance_extra(self) -> dict[str, Any]:
        """Extra provenance attrs (e.g. training period); values are turned into ``str``."""
        return {}

    # -- public API -----------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True,
             key: str | bytes | None = None) -> pathlib.Path:
        """Save the fitted estimator to one file (no pickle).

        Parameters
        ----------
        path : str or os.PathLike
            Destination file; the suffix ``.xsciml`` is recommended.
        overwrite : bool, default True
            If False, refuse to replace an existing file.
        key : str or bytes, optional
            Sign the file with HMAC-SHA256 under this secret key; load it with
            ``xsciml.load(path, key=key)`` to refuse any edited copy.

        Returns
        -------
        pathlib.Path
            The path written.

        See Also
        --------
        xsciml.io.save, xsciml.io.load

        Examples
        --------
        >>> est.save("model.xsciml")  # doctest: +SKIP
        PosixPath('model.xsciml')
        """
        from . import io

        return io.save(self, path, overwrite=overwrite, key=key)

    @classmethod
    def load(
        cls: type[_EstimatorT],
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        key: str | bytes | None = None,
    ) -> _EstimatorT:
        """Load an estimator saved with :meth:`save`, checking it is a ``cls``.

        Parameters
        ----------
        path : str or os.PathLike
            File written by :meth:`save` / :func:`xsciml.io.save`.
        device : str or torch.device, default "cpu"
            Device the tensors are placed on (``"auto"`` picks CUDA when available).
        key : str or bytes, optional
            The key the file was signed with; an unsigned file or a signature that
            does not match is refused.

        Returns
        -------
        Estimator
            An instance of ``cls`` (or of a subclass).

        Raises
        ------
        xsciml.io.ModelFileError
            If the file is not a valid model file, or holds another kind of estimator.

        Examples
        --------
        >>> field = NeuralField.load("field.xsciml")  # doctest: +SKIP
        """
        from . import io

        est = io.load(path, device=device, key=key)
        if not isinstance(est, cls):
            raise io.ModelFileError(
                f"{os.fspath(path)!r} holds a {type(est).__name__}, not a {cls.__name__}. "
                "Use xsciml.load(path) to load any estimator."
            )
        return est

    def _provenance(self, action: str | None = None, source: Mapping[str, Any] | None = None
                    ) -> dict[str, str]:
        """Provenance attrs to attach to outputs produced by this estimator.

        Parameters
        ----------
        action
            What made the output (e.g. ``"predict: predictive mean and standard
            deviation"``); given, the attrs include a ``history`` that appends
            ``<time> xsciml <version>: <class>.<action>`` to ``source``'s.
        source
            Attrs of the data the output comes from (its ``history`` is kept).

        Returns
        -------
        dict[str, str]
            ``{"xsciml_version": ..., "xsciml_model": <class name>}`` plus the
            subclass's :meth:`_provenance_extra`, all values as strings, and
            ``history`` when ``action`` is given.
        """
        attrs = {"xsciml_version": xsciml_version(), "xsciml_model": type(self).__name__}
        attrs.update({str(k): str(v) for k, v in self._provenance_extra().items()})
        if action is not None:
            attrs["history"] = append_history((source or {}).get("history"),
                                              f"{type(self).__name__}.{action}")
        return attrs

    def __repr__(self) -> str:
        name = type(self).__name__
        try:
            config = self._get_config()
        except Exception:  # a repr must never raise (unfitted or half-built objects)
            return f"{name}()"
        if not isinstance(config, Mapping):
            return f"{name}()"
        max_items = 6
        parts = [f"{k}={_summarise(v)}" for k, v in list(config.items())[:max_items]]
        if len(config) > max_items:
            parts.append(f"... +{len(config) - max_items} more")
        return f"{name}({', '.join(parts)})"


# ----------------------------------------------------------------------------------
# inference protocols
# ----------------------------------------------------------------------------------
# The methods take ``*args: Any, **kwargs: Any`` after the first, positional-only
# argument: type checkers then accept every estimator's own signature (its argument
# names and options) as an implementation, and ``isinstance`` checks only that the
# method exists (and is not ``None``).
@runtime_checkable
class Predictor(Protocol):
    """A model that predicts at target locations: ``predict(target, ...)``.

    ``target`` says where (a Dataset or DataArray whose coordinates are the points, a
    mapping of coordinate arrays, observations to invert...); the result is the
    prediction there, e.g. the predictive mean and standard deviation of a
    :class:`~xsciml.models.NeuralField` or the estimate of a
    :class:`~xsciml.inverse.LearnedInversion`. Any object with a ``predict`` method
    is a ``Predictor``: ``isinstance`` checks the method exists, not its signature.

    Examples
    --------
    >>> from xsciml.models import DINo, NeuralField
    >>> issubclass(NeuralField, Predictor), issubclass(DINo, Predictor)
    (True, False)
    >>> class Doubler:
    ...     def predict(self, target):
    ...         return 2 * target
    >>> isinstance(Doubler(), Predictor), isinstance(object(), Predictor)
    (True, False)
    """

    def predict(self, target: Any, /, *args: Any, **kwargs: Any) -> Any:
        """The prediction at ``target``; the options depend on the model."""
        ...


@runtime_checkable
class Forecaster(Protocol):
    """A model that runs initial states forward: ``forecast(ds_init, *, lead, ...)``.

    ``ds_init`` holds the initial states (fields, one per trajectory or start time),
    the keyword ``lead`` the lead times (numbers in the model's time unit, or
    timedeltas); the result gains a ``lead`` dimension. :class:`~xsciml.models.DINo`
    and :class:`~xsciml.models.SmoothDynamics` are forecasters. ``isinstance`` checks
    that a ``forecast`` method exists, not its signature.

    Examples
    --------
    >>> from xsciml.models import DINo, NeuralField, SmoothDynamics
    >>> [issubclass(cls, Forecaster) for cls in (DINo, SmoothDynamics, NeuralField)]
    [True, True, False]
    >>> class Persistence:
    ...     def forecast(self, ds_init, *, lead):
    ...         return [ds_init for _ in lead]
    >>> isinstance(Persistence(), Forecaster)
    True
    """

    def forecast(self, ds_init: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Forecasts from ``ds_init`` at the lead times ``lead=`` (a required keyword)."""
        ...


@runtime_checkable
class Transformer(Protocol):
    """A model that maps data to data of the same kind: ``transform(obj, ...)``.

    E.g. :class:`~xsciml.downscale.Debias` maps model output onto the distribution
    of the reference it was fitted to, keeping dims, coords and attrs. ``isinstance``
    checks that a ``transform`` method exists, not its signature.

    Examples
    --------
    >>> from xsciml.downscale import Debias
    >>> issubclass(Debias, Transformer)
    True
    >>> class Shift:
    ...     def transform(self, obj):
    ...         return obj + 0.5
    >>> isinstance(Shift(), Transformer), isinstance(0.5, Transformer)
    (True, False)
    """

    def transform(self, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """``obj`` transformed; the options depend on the model."""
        ...


@runtime_checkable
class Encoder(Protocol):
    """A model that maps snapshots to latent codes: ``encode(obj, ...)``.

    ``obj`` holds one or more snapshots, possibly partial (NaN where unobserved);
    the result has one code (a ``latent`` dimension) per snapshot. PCA and the
    autoencoders, latent interpolators and the latent dynamics models are encoders.
    ``isinstance`` checks that an ``encode`` method exists, not its signature.

    Examples
    --------
    >>> from xsciml.models import PCA, LatentInterpolator, NeuralField
    >>> [issubclass(cls, Encoder) for cls in (PCA, LatentInterpolator, NeuralField)]
    [True, True, False]
    """

    def encode(self, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """The latent codes of the snapshots in ``obj``; the options depend on the model."""
        ...
