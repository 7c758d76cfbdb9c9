"""Small shared helpers: device choice, seeding, progress bars, setting checks."""

from __future__ import annotations

import math
import numbers
import operator
import os
import sys
from typing import Any, Literal, overload

import numpy as np

__all__ = ["resolve_device", "seed_everything", "progress_bar", "progress_enabled", "to_numpy",
           "check_positive_int", "check_positive_number", "check_numeric", "NonNumericError",
           "simplex_weights"]


class NonNumericError(TypeError, ValueError):
    """Data or coordinates of a non-numeric dtype where numbers are needed.

    A :class:`TypeError`, and a :class:`ValueError` too, so that code catching either
    (both have been raised for this in the past) keeps working.
    """


def check_numeric(obj: Any, what: str, hint: str = "") -> None:
    """Raise :class:`NonNumericError` naming ``what`` unless ``obj`` has a numeric dtype
    (bool, integer, unsigned or float).

    Examples
    --------
    >>> import numpy as np
    >>> check_numeric(np.arange(3), "variable 'u'")
    >>> check_numeric(np.array(["a"]), "variable 'u'")
    Traceback (most recent call last):
    ...
    xsciml._utils.NonNumericError: variable 'u' has non-numeric dtype <U1
    """
    dtype = obj.dtype if hasattr(obj, "dtype") else np.asarray(obj).dtype
    if dtype.kind not in "biuf":
        raise NonNumericError(f"{what} has non-numeric dtype {dtype}{hint}")


@overload
def check_positive_int(value: Any, name: str, *, allow_none: Literal[False] = ...,
                       minimum: int = ...) -> int: ...
@overload
def check_positive_int(value: Any, name: str, *, allow_none: bool,
                       minimum: int = ...) -> int | None: ...
def check_positive_int(value: Any, name: str, *, allow_none: bool = False,
                       minimum: int = 1) -> int | None:
    """``value`` as a Python ``int >= minimum``: the one check of integer settings.

    Every integer setting of the public functions (``steps``, ``batch_size``,
    ``latent_dim``, ...) goes through this helper, so a wrong value gets the same kind
    of message everywhere, e.g. ``"steps must be a positive integer, got 0"``. NumPy
    integers are accepted; bools, floats and strings are not.

    Parameters
    ----------
    value
        The setting as given.
    name
        Its name, as the user wrote it.
    allow_none
        Return ``None`` for ``None`` (the setting's default applies) instead of refusing it.
    minimum
        Smallest allowed value (``1``: a positive integer, ``0``: a non-negative one).

    Returns
    -------
    int or None

    Raises
    ------
    TypeError
        When ``value`` is not an integer.
    ValueError
        When ``value < minimum``.

    Examples
    --------
    >>> check_positive_int(np.int64(3), "steps")
    3
    >>> check_positive_int(0, "steps")
    Traceback (most recent call last):
    ...
    ValueError: steps must be a positive integer, got 0
    """
    if value is None and allow_none:
        return None
    kind = ("a positive integer" if minimum == 1 else "a non-negative integer" if minimum == 0
            else f"an integer >= {minimum}")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {kind}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be {kind}, got {number}")
    return int(number)


def check_positive_number(value: Any, name: str, *, allow_none: bool = False,
                          allow_zero: bool = False) -> float | None:
    """``value`` as a finite ``float > 0`` (``>= 0`` with ``allow_zero``).

    The counterpart of :func:`check_positive_int` for real-valued settings (``lr``,
    step sizes, scales), with the same message style: ``"lr must be a positive number,
    got -1"``.

    Parameters
    ----------
    value
        The setting as given.
    name
        Its name, as the user wrote it.
    allow_none
        Return ``None`` for ``None`` instead of refusing it.
    allow_zero
        Accept ``0``.

    Returns
    -------
    float or None

    Raises
    ------
    TypeError
        When ``value`` is not a real number.
    ValueError
        When it is not finite or out of range.

    Examples
    --------
    >>> check_positive_number(0.5, "lr")
    0.5
    """
    if value is None and allow_none:
        return None
    kind = "a non-negative number" if allow_zero else "a positive number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return number


def resolve_device(device: Any = "auto"):
    """Turn ``"auto"``, a string or a :class:`torch.device` into a ``torch.device``.

    ``"auto"`` picks CUDA when a GPU is visible, else the CPU.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device={device!r} is not understood ({err}); use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was asked for but no CUDA device is available; "
            "use device='auto' or device='cpu'."
        )
    return dev


def seed_everything(seed: int | None) -> None:
    """Seed Python's, NumPy's and torch's global generators (no-op for ``None``)."""
    if seed is None:
        return
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def progress_enabled(progress: bool | None) -> bool:
    """``progress=None`` follows the ``XSCIML_PROGRESS`` environment variable (default on).

    Examples
    --------
    >>> progress_enabled(False), progress_enabled(True)
    (False, True)
    """
    if progress is None:
        return os.environ.get("XSCIML_PROGRESS", "1").strip().lower() not in ("0", "false", "no",
                                                                              "off", "")
    return bool(progress)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


_BAR_CLASS: Any = None


def _bar_class() -> Any:
    """tqdm (the notebook widget in Jupyter) whose ``close`` writes a one-line summary."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        from tqdm.auto import tqdm

        class _Bar(tqdm):  # type: ignore[misc, valid-type]
            _xsciml_summary = True

            def close(self) -> None:
                if self.disable or not self._xsciml_summary:
                    return super().close()
                self._xsciml_summary = False
                line = bar_summary(self.format_dict)
                super().close()
                if line:
                    stream = self.fp if getattr(self, "fp", None) is not None else sys.stderr
                    try:
                        stream.write(line + "\n")
                        stream.flush()
                    except (AttributeError, ValueError):  # a stream closed at interpreter exit
                        pass

        _BAR_CLASS = _Bar
    return _BAR_CLASS


def bar_summary(fmt: dict[str, Any]) -> str:
    """The closing line of a progress bar: what it counted, how long it took, its postfix.

    Parameters
    ----------
    fmt
        A tqdm bar's ``format_dict``.

    Returns
    -------
    str

    Examples
    --------
    >>> bar_summary({"desc": "fit", "n": 200, "total": 200, "elapsed": 3.2, "unit": "it",
    ...              "postfix": "loss=0.01"})
    'fit: 200/200 it in 3.2 s (62.5 it/s), loss=0.01'
    """
    n, total, elapsed = fmt.get("n", 0), fmt.get("total"), float(fmt.get("elapsed") or 0.0)
    unit = fmt.get("unit") or "it"
    count = f"{n}/{total}" if total is not None else f"{n}"
    rate = f" ({n / elapsed:.3g} {unit}/s)" if elapsed > 0 and n else ""
    text = f"{count} {unit} in {elapsed:.3g} s{rate}"
    desc = str(fmt.get("prefix") or fmt.get("desc") or "").rstrip(": ")
    postfix = str(fmt.get("postfix") or "").lstrip(", ")
    return (f"{desc}: " if desc else "") + text + (f", {postfix}" if postfix else "")


def progress_bar(iterable: Any = None, *, total: int | None = None, desc: str | None = None,
                 progress: bool | None = None, **kw: Any) -> Any:
    """The one maker of xsciml's progress bars: tqdm, silenced by ``progress=False``.

    ``progress=None`` follows the ``XSCIML_PROGRESS`` environment variable (``0`` turns
    every bar off). When stderr is not a terminal (a log file, a batch job) the bar is
    redrawn at most once a second. Either way, closing the bar replaces it by one
    summary line (count, time, rate and the last postfix, e.g. the loss), except for
    transient inner bars made with ``leave=False``; a silenced bar writes nothing.

    Parameters
    ----------
    iterable, total, desc
        As for :class:`tqdm.tqdm`.
    progress
        Show the bar (``None``: the ``XSCIML_PROGRESS`` environment variable, default on).
    **kw
        Other tqdm options (``unit``, ``initial``...).

    Returns
    -------
    tqdm.tqdm

    Examples
    --------
    >>> for _ in progress_bar(range(3), desc="demo", progress=False):
    ...     pass
    """
    enabled = progress_enabled(progress)
    bar = _bar_class()
    if not enabled:
        kw.pop("leave", None)
        return bar(iterable, total=total, desc=desc, disable=True, **kw)
    if not _is_terminal(kw.get("file") or sys.stderr):
        kw.setdefault("mininterval", 1.0)
        kw.setdefault("maxinterval", max(10.0, float(kw["mininterval"])))
    summary = bool(kw.pop("leave", True))  # leave=False: a transient (inner) bar, no summary
    out = bar(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, **kw)
    out._xsciml_summary = summary
    return out


def to_numpy(x) -> np.ndarray:
    """Tensor or array-like to a NumPy array (detached, on the CPU)."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def simplex_weights(G: np.ndarray) -> np.ndarray:
    """argmin ``w' G w`` over the simplex (``w >= 0``, ``sum(w) == 1``) for a positive
    semi-definite error cross-product ``G`` (``G_ij = Σ (f_i - y)(f_j - y)``): the convex
    least-squares blend of forecasts ``f_i`` of ``y`` (SLSQP of scipy).

    Examples
    --------
    >>> import numpy as np
    >>> simplex_weights(np.array([[1.0, 0.0], [0.0, 3.0]])).round(2)  # inverse-variance
    array([0.75, 0.25])
    """
    from scipy.optimize import minimize

    K = len(G)
    A = G / (float(np.trace(G)) / K or 1.0)
    res = minimize(lambda w: w @ A @ w, np.full(K, 1.0 / K), jac=lambda w: 2 * A @ w,
                   method="SLSQP", bounds=[(0.0, 1.0)] * K,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                 "jac": lambda w: np.ones_like(w)}],
                   options={"ftol": 1e-12, "maxiter": 200})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()
