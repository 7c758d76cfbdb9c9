"""Checkpoints of :func:`~xsciml.training.fit`: atomic files, RNG state, time budgets."""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CKPT_FORMAT = "xsciml.training.checkpoint"
CKPT_VERSION = 1


# --------------------------------------------------------------------------- checkpoints


def rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=True)  # the default, spelled out: numpy's stubs get the default wrong
    assert isinstance(np_state, tuple)  # the global RandomState is MT19937, whose legacy state is a tuple
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file next to ``path``, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read the checkpoint {str(path)!r} ({type(err).__name__}: {err}). It is "
            "corrupt or was not written by xsciml.training.fit; delete it or pass resume=False "
            "to start over."
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an xsciml training checkpoint; delete it or "
                         "pass resume=False to start over.")
    if int(ckpt.get("version", 0)) > CKPT_VERSION:
        raise ValueError(f"the checkpoint {str(path)!r} has version {ckpt['version']}, newer than "
                         f"this xsciml understands ({CKPT_VERSION}); upgrade xsciml.")
    return ckpt


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}




_SHARE_NOTE: ContextVar[str | None] = ContextVar("xsciml_time_limit_share", default=None)


@contextmanager
def time_limit_share(note: str) -> Iterator[None]:
    """Within this block, a fit stopped by its time limit says whose share of which budget
    the limit was: ``note`` (``"the validation fit's half of time_limit=40 s"``) follows
    the limit in the warning (:func:`time_limit_words`)."""
    token = _SHARE_NOTE.set(note)
    try:
        yield
    finally:
        _SHARE_NOTE.reset(token)


def time_limit_words(limit: float) -> str:
    """``"the time limit of 20 s"``, with the share's note inside :func:`time_limit_share`:
    ``"the time limit of 20 s (the validation fit's half of time_limit=40 s)"``."""
    note = _SHARE_NOTE.get()
    return f"the time limit of {limit:.3g} s" + (f" ({note})" if note else "")


def parse_time_limit(value: float | str | None, name: str = "time_limit") -> float | None:
    """A wall-clock budget in seconds, from a number of seconds or a string with units.

    Parameters
    ----------
    value : float, int, str or None
        Seconds (a number > 0), or a duration string with units as
        :class:`pandas.Timedelta` reads it: ``"90s"``, ``"10min"``, ``"1.5h"``,
        ``"2h30min"``, ``"1h 5min 30s"``, ``"2 hours"``. A string must name its units (a
        bare ``"10"`` is refused rather than read as nanoseconds). ``None``: no limit.
    name : str, default "time_limit"
        The argument's name, for the error message.

    Returns
    -------
    float or None
        The budget in seconds (``None`` for no limit).

    Raises
    ------
    ValueError
        Anything else, including a budget of zero or less.

    Examples
    --------
    >>> parse_time_limit(90), parse_time_limit("10min"), parse_time_limit("1.5h")
    (90.0, 600.0, 5400.0)
    >>> parse_time_limit("2h30min"), parse_time_limit(None)
    (9000.0, None)
    """
    if value is None:
        return None
    forms = ("seconds as a number > 0, or a string such as '90s', '10min', '1.5h' or "
             "'2h30min' (a duration pandas.Timedelta reads, with its units)")
    seconds: float | None = None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        seconds = float(value)
    elif isinstance(value, str) and re.search(r"[a-z]", value, re.IGNORECASE):
        import pandas as pd

        try:
            seconds = float(pd.Timedelta(value.strip()).total_seconds())
        except (ValueError, OverflowError):
            seconds = None
    if seconds is None or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name} must be {forms}; got {value!r}.")
    return seconds


def checkpoint_step(checkpoint: str | os.PathLike[str] | None) -> int:
    """The optimizer steps a training checkpoint written by :func:`fit` has done.

    ``0`` when ``checkpoint`` is ``None`` or the file does not exist (a run with
    ``resume=True`` then starts afresh). Useful to set up step-dependent state (a
    schedule applied by a callback) before resuming.

    Examples
    --------
    >>> checkpoint_step("no-such-checkpoint.pt")
    0
    """
    if checkpoint is None or not Path(checkpoint).exists():
        return 0
    return int(read_checkpoint(Path(checkpoint))["step"])
