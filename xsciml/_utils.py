"""Small shared helpers: device choice, seeding, progress bars."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["resolve_device", "seed_everything", "progress_bar", "to_numpy"]


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
    """``progress=None`` follows the ``XSCIML_PROGRESS`` environment variable (default on)."""
    if progress is None:
        return os.environ.get("XSCIML_PROGRESS", "1") not in ("0", "false", "False", "")
    return bool(progress)


def progress_bar(iterable=None, *, total=None, desc=None, progress: bool | None = None, **kw):
    """A tqdm progress bar that can be silenced with ``progress=False``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress_enabled(progress),
                dynamic_ncols=True, **kw)


def to_numpy(x) -> np.ndarray:
    """Tensor or array-like to a NumPy array (detached, on the CPU)."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)
