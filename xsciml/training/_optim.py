"""Optimizer and learning-rate scheduler construction for :func:`~xsciml.training.fit`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

_OPTIMIZERS = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "radam": "RAdam",
    "nadam": "NAdam",
    "adagrad": "Adagrad",
    "adamax": "Adamax",
}
_SCHEDULERS = ("cosine", "step", "exponential", "onecycle", "plateau")


# --------------------------------------------------------------------------- optimisation


def make_optimizer(optimizer: Any, model: nn.Module, params: Iterable[Any] | None,
                    lr: float, weight_decay: float) -> Optimizer:
    if isinstance(optimizer, Optimizer):
        if params is not None:
            raise ValueError("params= cannot be combined with an optimizer instance, which "
                             "already holds its parameters; pass one or the other.")
        opt = optimizer
    else:
        if params is None:
            plist: list[Any] = [p for p in model.parameters() if p.requires_grad]
        else:
            plist = list(params)
        if not plist:
            raise ValueError("there are no trainable parameters: the model has none with "
                             "requires_grad=True and params= was not given (or is empty).")
        if isinstance(optimizer, str):
            key = optimizer.lower()
            if key not in _OPTIMIZERS:
                raise ValueError(
                    f"optimizer={optimizer!r} is not known; use one of {sorted(_OPTIMIZERS)}, "
                    "a torch.optim.Optimizer instance, or a callable params -> Optimizer."
                )
            opt = getattr(torch.optim, _OPTIMIZERS[key])(plist, lr=lr, weight_decay=weight_decay)
        elif isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
            opt_cls: Callable[..., Optimizer] = optimizer  # subclasses take lr=/weight_decay=, the base does not
            opt = opt_cls(plist, lr=lr, weight_decay=weight_decay)
        elif callable(optimizer):
            opt = optimizer(plist)
            if not isinstance(opt, Optimizer):
                raise TypeError("the optimizer callable must return a torch.optim.Optimizer, "
                                f"got {type(opt).__name__}.")
        else:
            raise TypeError("optimizer must be a name, a torch.optim.Optimizer (instance or "
                            f"class) or a callable params -> Optimizer; got {type(optimizer).__name__}.")
    if isinstance(opt, torch.optim.LBFGS):
        raise ValueError("LBFGS needs a closure and is not supported by fit; use 'adam' or 'sgd'.")
    return opt


def make_scheduler(scheduler: Any, opt: Optimizer, total_steps: int | None) -> Any:
    if scheduler is None:
        return None
    if isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
        if scheduler.optimizer is not opt:
            raise ValueError("the scheduler instance is bound to another optimizer; pass a "
                             "callable (optimizer, total_steps) -> scheduler instead.")
        return scheduler
    if isinstance(scheduler, str):
        key = scheduler.lower()
        if key not in _SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r} is not known; use one of {list(_SCHEDULERS)}, "
                             "None, or a callable (optimizer, total_steps) -> scheduler.")
        if key == "plateau":
            return ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2)
        if total_steps is None:
            raise ValueError(f"scheduler={scheduler!r} needs the total number of steps, which is "
                             "unknown because the data has no length; pass steps= instead of epochs=.")
        if key == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        if key == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total_steps // 3), gamma=0.1)
        if key == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1.0 / total_steps))
        max_lr = [float(g["lr"]) for g in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps)
    if callable(scheduler):
        sched = scheduler(opt, total_steps)
        if not isinstance(sched, (LRScheduler, ReduceLROnPlateau)):
            raise TypeError("the scheduler callable must return a torch LR scheduler, got "
                            f"{type(sched).__name__}.")
        return sched
    raise TypeError("scheduler must be None, a name, or a callable (optimizer, total_steps) -> "
                    f"scheduler; got {type(scheduler).__name__}.")
