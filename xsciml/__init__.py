"""xsciml — scientific machine learning for geoscience data, as an xarray extension.

``import xsciml`` registers the ``.sciml`` accessor on :class:`xarray.Dataset` and
:class:`xarray.DataArray`. The accessor only forwards to the functions and estimators
of this package, which work without it too.

What each fit and batch job does (settings, device, data size, validation scores,
elapsed time) is logged at INFO level to the ``"xsciml"`` logger and its per-module
children (``xsciml.training``, ``xsciml.jobs``...). Nothing is printed unless logging
is configured, e.g. ``logging.basicConfig(level=logging.INFO)``, or
``logging.getLogger("xsciml").setLevel(logging.INFO)`` with a handler of your own.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from . import accessor as _accessor  # noqa: F401  (registers .sciml)
from .coords import CoordinateEncoder
from .tensors import CoordinateData, GridData, Scaler, target_points, to_fields, to_tensors

# the library's records go nowhere until the application configures logging
logging.getLogger(__name__).addHandler(logging.NullHandler())

try:
    from importlib.metadata import version as _version

    __version__ = _version("xsciml")
except Exception:  # pragma: no cover - not installed
    __version__ = "0+unknown"

_LAZY_SUBMODULES = {
    "datasets", "training", "io", "base", "nn", "likelihoods", "plot", "inverse",
    "metrics", "baselines", "models", "parallel", "jobs", "cli", "downscale", "samplers", "pde1d",
}


def load(path: Any, *, device: Any = "cpu", key: str | bytes | None = None):
    """Load a saved estimator (see :func:`xsciml.io.load`); ``key`` checks its signature.

    Examples
    --------
    >>> est = xsciml.load("model.xsciml")  # doctest: +SKIP
    """
    from .io import load as _load

    return _load(path, device=device, key=key)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xsciml' has no attribute {name!r}")


__all__ = [
    "CoordinateData",
    "CoordinateEncoder",
    "GridData",
    "Scaler",
    "load",
    "target_points",
    "to_fields",
    "to_tensors",
    "__version__",
]
