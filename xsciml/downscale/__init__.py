"""Downscaling: debias coarse model output with optimal transport, then super-resolve
with a diffusion prior sampled under the constraint ``C'x = y``.

Method: "Debias Coarsely, Sample Conditionally" (Wan et al., NeurIPS 2023).

* :mod:`xsciml.downscale.ot` — :func:`fit_debias` / :class:`Debias` (POT, and a scalable
  torch path);
* :mod:`xsciml.downscale.diffusion` — :func:`fit_diffusion` / :class:`DiffusionPrior`
  (EDM denoiser, Heun and Euler-Maruyama samplers);
* :mod:`xsciml.downscale.pipeline` — :func:`downscale` (guided, projected sampling) and
  the coarsening operators.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "fit_debias": "ot",
    "Debias": "ot",
    "fit_diffusion": "diffusion",
    "DiffusionPrior": "diffusion",
    "default_fit_settings": "diffusion",
    "downscale": "pipeline",
    "coarsen": "pipeline",
    "project": "pipeline",
    "bicubic": "pipeline",
    "training_check": "pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in {"ot", "diffusion", "pipeline"}:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xsciml.downscale' has no attribute {name!r}")


__all__ = sorted(_LAZY)
