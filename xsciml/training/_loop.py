"""The training loop: :func:`~xsciml.training.fit` and the state of one run."""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from .._utils import check_positive_int, progress_bar, resolve_device, seed_everything
from ._checkpoints import (
    CKPT_FORMAT,
    CKPT_VERSION,
    cpu_state,
    parse_time_limit,
    read_checkpoint,
    rng_state,
    set_rng_state,
    time_limit_words,
    write_checkpoint,
)
from ._data import (
    END,
    batch_len,
    data_kind,
    data_size,
    derive_seed,
    make_stream,
    move,
    split_tensors,
    tensor_len,
    val_batches,
)
from ._optim import make_optimizer, make_scheduler
from ._records import History, TrainState

_M = TypeVar("_M", bound=nn.Module)  # the module fit trains, as loss_fn receives it

log = logging.getLogger("xsciml.training")  # the package's logger, as before the split


# --------------------------------------------------------------------------- the loop


def fit(
    model: _M,
    loss_fn: Callable[[_M, Any], torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]],
    data: Any,
    *,
    val_data: Any = None,
    val_fraction: float = 0.0,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 1024,
    optimizer: str | Optimizer | Callable[[Iterable[Any]], Optimizer] = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    scheduler: None | str | Callable[[Optimizer, int], Any] = None,
    grad_clip: float | None = None,
    params: Iterable[Any] | None = None,
    device: str | torch.device = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    desc: str = "fit",
    val_every: int = 100,
    early_stopping: int | None = None,
    restore_best: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    val_loss_fn: Callable[[nn.Module, Any], Any] | None = None,
    time_limit: float | str | None = None,
) -> History:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` over ``data``.

    The optimizer steps once per batch. The model is moved to ``device`` and stays there.
    Training steps run in ``model.train()`` mode; validation runs in ``model.eval()`` under
    :func:`torch.no_grad`; the model's original mode is restored at the end.

    Parameters
    ----------
    model : torch.nn.Module
        The module to train.
    loss_fn : callable
        ``loss_fn(model, batch)`` returning a scalar tensor, or ``(tensor, logs)`` where
        ``logs`` is a dict of extra floats recorded in :attr:`History.logs`.
    data : Any
        Training data, one of:

        1. a tuple/list (or dict) of tensors sharing their first dimension, or one tensor:
           random minibatches of ``batch_size``, a fresh permutation each epoch from a
           seeded generator; batches have the same structure (tuples for a list). Data
           stays where it is (CPU or device) and each batch is moved to the device;
        2. a :class:`torch.utils.data.Dataset`: shuffled through a ``DataLoader``;
        3. any re-iterable of batches (e.g. a ``DataLoader``), restarted each epoch;
        4. a callable ``data(generator) -> batch`` for on-the-fly data (needs ``steps``);
           the generator is a seeded CPU :class:`torch.Generator`;
        5. an object with ``batches(batch_size, shuffle, seed)``, called once per epoch
           with ``seed = seed + epoch``.

        Batches may be tensors or nested tuples/lists/dicts of tensors; tensors are moved
        to the device, anything else is passed through.
    val_data : Any, optional
        Validation data in forms 1, 2, 3 or 5 (a callable gives one fixed batch, drawn
        once from its own stream seeded by ``seed``). The validation loss is averaged over all of
        it, weighted by batch size.
    val_fraction : float, default 0.0
        For in-memory tensor data only: hold out this fraction (seeded random split) as
        validation data.
    steps : int, optional
        Budget in optimizer steps (default 1000). Give at most one of ``steps`` and ``epochs``.
    epochs : int, optional
        Budget in passes over the data.
    batch_size : int, default 1024
        Samples per batch (forms 1, 2 and 5).
    optimizer : str, Optimizer, Optimizer class or callable, default "adam"
        A name (``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"radam"``,
        ``"nadam"``, ``"adagrad"``, ``"adamax"``) or class, built with ``lr`` and
        ``weight_decay``; an instance, used as is; or a callable ``params -> Optimizer``.
    lr : float
        Learning rate for a named optimizer.
    weight_decay : float
        Weight decay for a named optimizer.
    scheduler : str or callable, optional
        ``"cosine"`` (to 0 at the last step), ``"step"`` (x0.1 every third of the run),
        ``"exponential"`` (to 1% of ``lr`` at the end), ``"onecycle"`` (peak ``lr``), or
        ``"plateau"`` (halve after 3 checks without improvement, stepped on the validation
        loss, or on the mean training loss of the last ``val_every`` steps without
        validation data); or a callable ``(optimizer, total_steps) -> scheduler``
        (``total_steps`` is None when it cannot be known). Other schedulers step after
        every optimizer step.
    grad_clip : float, optional
        Clip the global gradient norm to this value.
    params : iterable, optional
        Parameters or parameter groups to optimise (default: the model's trainable ones).
    device : str or torch.device, default "auto"
        Where to train; ``"auto"`` picks CUDA when available.
    seed : int or None, default 0
        Seeds the global RNGs and the data order: two runs with the same seed give the
        same losses and weights (on the CPU). ``None`` for a random run.
    progress : bool, optional
        Show a tqdm bar; ``None`` follows the ``XSCIML_PROGRESS`` environment variable.
        It shows the step's loss, the last validation loss (``val``) and, once a later
        check is worse, the best one with its step (``best=0.2@200``: the weights
        ``restore_best`` keeps).
    desc : str, default "fit"
        Label of the progress bar.
    val_every : int, default 100
        Validate every this many steps, and at the end.
    early_stopping : int, optional
        Stop after this many validation checks without improvement (needs validation data).
    restore_best : bool, default True
        When validating, load the weights with the lowest validation loss at the end.
    checkpoint : path, optional
        File written atomically every ``checkpoint_every`` steps and at the end (model,
        optimizer, scheduler, data position, history, best weights, RNG states).
    checkpoint_every : int, default 500
        Steps between checkpoints.
    resume : bool, default False
        Continue from ``checkpoint`` if the file exists (otherwise start afresh). Resuming
        gives the same result as an uninterrupted run for data forms 1, 2, 4 and for form
        5 when ``batches`` is deterministic given its seed; a run stopped early by
        ``early_stopping`` does not continue. Pass a larger ``steps`` to train further.
    callbacks : sequence of callables
        Each is called with a :class:`TrainState` after every step; returning ``True``
        stops training (resumable: no extra validation is run).
    val_loss_fn : callable, optional
        Validation loss, ``val_loss_fn(model, batch)``; defaults to ``loss_fn``.
    time_limit : float or str, optional
        Wall-clock budget of this call: seconds, or a string such as ``"90s"``,
        ``"10min"``, ``"1.5h"``, ``"2h30min"`` (:func:`parse_time_limit`). When it runs
        out, training stops after the current step as a callback stop does (no extra
        validation, so a resumed run continues as if uninterrupted): the best weights
        are restored (``restore_best``), the checkpoint is written, the history records
        ``stop_reason="time_limit"``, and a :class:`UserWarning` says how many of the
        steps were done.

    Returns
    -------
    History
        Per-step losses and learning rates, validation losses, best step, and so on.

    Raises
    ------
    FloatingPointError
        When the training loss is NaN or infinite (the message names the step).
    ValueError, TypeError
        For inconsistent arguments or unreadable checkpoints.

    Examples
    --------
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(256, 2)
    >>> y = x @ torch.tensor([[2.0], [-1.0]])
    >>> model = torch.nn.Linear(2, 1)
    >>> mse = lambda m, batch: torch.nn.functional.mse_loss(m(batch[0]), batch[1])
    >>> hist = fit(model, mse, (x, y), steps=300, batch_size=64, lr=0.05, device="cpu",
    ...            progress=False)
    >>> hist.steps, hist.loss[-1] < 1e-3
    (300, True)
    >>> model.weight.detach().round(decimals=2)
    tensor([[ 2., -1.]])
    """
    steps, callbacks = _check_fit_args(
        model, loss_fn, val_loss_fn, steps=steps, epochs=epochs, batch_size=batch_size, val_every=val_every,
        checkpoint_every=checkpoint_every, early_stopping=early_stopping, val_fraction=val_fraction, lr=lr,
        weight_decay=weight_decay, grad_clip=grad_clip, resume=resume, checkpoint=checkpoint,
        callbacks=callbacks, seed=seed)
    limit = parse_time_limit(time_limit)

    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    ckpt = read_checkpoint(ckpt_path) if resume and ckpt_path is not None and ckpt_path.exists() else None

    base_seed = int(ckpt["seed"]) if ckpt is not None else (seed if seed is not None else secrets.randbits(62))
    seed_everything(seed)
    dev = resolve_device(device)
    model.to(dev)

    # ---- data
    kind = data_kind(data, "data")
    data, val_data = _split_validation(kind, data, val_data, val_fraction, epochs, base_seed)
    stream = make_stream(kind, data, batch_size, base_seed)
    val_pass = None
    if val_data is not None:
        val_pass = val_batches(data_kind(val_data, "val_data"), val_data, batch_size, base_seed)
    if early_stopping is not None and val_pass is None:
        raise ValueError("early_stopping needs validation data: pass val_data= or val_fraction=.")
    total_steps = steps
    if epochs is not None:
        per_epoch = stream.batches_per_epoch
        total_steps = None if per_epoch is None else epochs * per_epoch

    # ---- optimisation
    opt = make_optimizer(optimizer, model, params, lr, weight_decay)
    _check_param_devices(opt, dev)
    sched = make_scheduler(scheduler, opt, total_steps)

    run = _FitRun(model, loss_fn, val_loss_fn if val_loss_fn is not None else loss_fn, opt, sched, stream,
                  val_pass, dev, epochs=epochs, total_steps=total_steps, grad_clip=grad_clip,
                  val_every=val_every, early_stopping=early_stopping, restore_best=restore_best,
                  ckpt_path=ckpt_path, checkpoint_every=checkpoint_every, callbacks=callbacks,
                  base_seed=base_seed, desc=desc, time_limit=limit)
    if ckpt is not None:
        run.load_checkpoint(ckpt)
    params_device = next((str(p.device) for p in model.parameters()), str(dev))
    run.history.device = params_device
    if log.isEnabledFor(logging.INFO):
        n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
        val_size = None
        if val_data is not None:
            val_kind = data_kind(val_data, "val_data")
            val_size = (f"{tensor_len(val_data, 'val_data')} samples" if val_kind == "tensors"
                        else val_kind)
        log.info("%s: %s with %d trainable parameters on %s; budget %s; data %s (batch_size %d); "
                 "validation %s; optimizer %s, lr %g, weight_decay %g, scheduler %s, grad_clip %s, "
                 "early_stopping %s, seed %s", desc, type(model).__name__, n_params,
                 params_device, f"{steps} steps" if epochs is None else f"{epochs} epochs",
                 data_size(kind, data, stream), batch_size,
                 f"{val_size} every {val_every} steps" if val_pass is not None else "none",
                 type(opt).__name__, lr, weight_decay, _name(scheduler), grad_clip,
                 early_stopping, seed if seed is not None else f"random ({base_seed})")
        if ckpt is not None:
            log.info("%s: resumed from %s at step %d", desc, ckpt_path, run.history.steps)
    return run.run(progress)


def _check_callbacks(callbacks: Any) -> tuple[Callable[[TrainState], bool | None], ...]:
    """``callbacks`` (one callable or a sequence of them) as a tuple; a clear error otherwise."""
    if callable(callbacks):
        callbacks = (callbacks,)
    message = "callbacks must be a sequence of callables cb(state) -> bool | None."
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise TypeError(message)
    callbacks = tuple(callbacks)
    if not all(callable(cb) for cb in callbacks):
        raise TypeError(message)
    return callbacks


def _check_fit_args(model: Any, loss_fn: Any, val_loss_fn: Any, *, steps: int | None, epochs: int | None,
                    batch_size: int, val_every: int, checkpoint_every: int, early_stopping: int | None,
                    val_fraction: float, lr: float, weight_decay: float, grad_clip: float | None,
                    resume: bool, checkpoint: Any, callbacks: Any, seed: int | None,
                    ) -> tuple[int | None, tuple[Callable[[TrainState], bool | None], ...]]:
    """Check :func:`fit`'s settings; the step budget (``1000`` by default) and the callbacks."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a callable loss_fn(model, batch) -> loss tensor.")
    if val_loss_fn is not None and not callable(val_loss_fn):
        raise TypeError("val_loss_fn must be a callable val_loss_fn(model, batch) -> loss.")
    if steps is not None and epochs is not None:
        raise ValueError("give either steps= or epochs=, not both.")
    if steps is None and epochs is None:
        steps = 1000
    if steps is not None:
        check_positive_int(steps, "steps", minimum=1)
    if epochs is not None:
        check_positive_int(epochs, "epochs", minimum=1)
    check_positive_int(batch_size, "batch_size", minimum=1)
    check_positive_int(val_every, "val_every", minimum=1)
    check_positive_int(checkpoint_every, "checkpoint_every", minimum=1)
    if early_stopping is not None:
        check_positive_int(early_stopping, "early_stopping", minimum=1)
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr!r}.")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be a positive number or None, got {grad_clip!r}.")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the file to resume from).")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got {type(checkpoint).__name__}.")
    callbacks = _check_callbacks(callbacks)
    if seed is not None:
        check_positive_int(seed, "seed", minimum=0)
    return steps, callbacks


def _split_validation(kind: str, data: Any, val_data: Any, val_fraction: float, epochs: int | None,
                      base_seed: int) -> tuple[Any, Any]:
    """``(data, val_data)``: ``val_fraction`` of in-memory tensor data held out (seeded split)."""
    if kind == "callable" and epochs is not None:
        raise ValueError("a callable data(generator) has no epochs; pass steps= instead.")
    if val_fraction > 0:
        if val_data is not None:
            raise ValueError("give either val_data= or val_fraction=, not both.")
        if kind != "tensors":
            raise ValueError("val_fraction only splits in-memory tensor data; for other data "
                             "forms pass val_data=.")
        split_generator = torch.Generator().manual_seed(derive_seed(base_seed, 1))
        data, val_data = split_tensors(data, val_fraction, split_generator)
    return data, val_data


class _FitRun(Generic[_M]):
    """The state of one :func:`fit` run: the step loop, validation, checkpoints."""

    def __init__(self, model: _M, loss_fn: Callable[[_M, Any], Any],
                 v_loss_fn: Callable[[_M, Any], Any], opt: Optimizer, sched: Any, stream: Any,
                 val_pass: Callable[[], Iterable[Any]] | None, dev: torch.device, *, epochs: int | None,
                 total_steps: int | None, grad_clip: float | None, val_every: int,
                 early_stopping: int | None, restore_best: bool, ckpt_path: Path | None,
                 checkpoint_every: int, callbacks: Sequence[Callable[[TrainState], bool | None]],
                 base_seed: int, desc: str, time_limit: float | None = None) -> None:
        self.model, self.loss_fn, self.v_loss_fn = model, loss_fn, v_loss_fn
        self.opt, self.sched, self.stream, self.val_pass, self.dev = opt, sched, stream, val_pass, dev
        self.epochs, self.total_steps, self.grad_clip = epochs, total_steps, grad_clip
        self.val_every, self.early_stopping, self.restore_best = val_every, early_stopping, restore_best
        self.ckpt_path, self.checkpoint_every, self.callbacks = ckpt_path, checkpoint_every, callbacks
        self.base_seed, self.desc, self.time_limit = base_seed, desc, time_limit
        self.clip_params = [p for g in opt.param_groups for p in g["params"]]
        self.plateau = isinstance(sched, ReduceLROnPlateau)
        self.validating = val_pass is not None
        self.history = History()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_checks = 0
        self.wall0, self.t0 = 0.0, 0.0

    def load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt``: weights, optimizer, scheduler, data position, history, RNGs."""
        where = str(self.ckpt_path)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise ValueError(f"the checkpoint {where!r} does not match the model: {err}") from err
        try:
            self.opt.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as err:
            raise ValueError(f"the checkpoint {where!r} does not match the optimizer "
                             f"(different parameters or param groups): {err}") from err
        if (ckpt.get("scheduler") is None) != (self.sched is None):
            raise ValueError(f"the checkpoint {where!r} was written "
                             f"{'without' if self.sched is not None else 'with'} a scheduler; use the "
                             "same scheduler= to resume, or resume=False.")
        if self.sched is not None:
            self.sched.load_state_dict(ckpt["scheduler"])
        self.stream.load_state_dict(ckpt["stream"])
        self.history = History.from_dict(ckpt["history"])
        self.best_state = ckpt.get("best_state")
        self.bad_checks = int(ckpt.get("bad_checks", 0))
        set_rng_state(ckpt["rng"])

    def validate(self, step: int) -> float:
        """Mean validation loss at ``step``, recorded; keeps the best weights."""
        model, dev, history = self.model, self.dev, self.history
        assert self.val_pass is not None
        model.eval()
        try:
            with torch.no_grad():
                total = torch.zeros((), dtype=torch.float64, device=dev)
                weight = 0
                for batch in self.val_pass():
                    batch = move(batch, dev, False)
                    loss, _ = _split_loss_output(self.v_loss_fn(model, batch), "val_loss_fn")
                    w = batch_len(batch) or 1
                    total = total + loss.detach().to(total.device, torch.float64) * w
                    weight += w
        finally:
            model.train()
        if weight == 0:
            raise ValueError("val_data yielded no batches.")
        value = float(total) / weight
        history.val_loss.append((step, value))
        if history.best_val_loss is None or value < history.best_val_loss:
            history.best_val_loss, history.best_step = value, step
            self.bad_checks = 0
            if self.restore_best:
                self.best_state = cpu_state(model)
        else:
            self.bad_checks += 1
        log.info("%s: step %d: loss %.4g, val_loss %.4g (best %.4g at step %d)", self.desc, step,
                 history.loss[-1] if history.loss else math.nan, value, history.best_val_loss,
                 history.best_step)
        return value

    def save(self, step: int) -> None:
        """Write the checkpoint at ``step``."""
        assert self.ckpt_path is not None
        self.history.steps = step
        self.history.wall_time = self.wall0 + (time.perf_counter() - self.t0)
        write_checkpoint(self.ckpt_path, {
            "format": CKPT_FORMAT,
            "version": CKPT_VERSION,
            "seed": self.base_seed,
            "step": step,
            "epoch": self.stream.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": None if self.sched is None else self.sched.state_dict(),
            "stream": self.stream.state_dict(),
            "history": self.history.to_dict(),
            "best_state": self.best_state,
            "bad_checks": self.bad_checks,
            "rng": rng_state(self.dev),
        })

    def optimizer_step(self, batch: Any, step: int) -> tuple[float, dict[str, float], float]:
        """One optimizer step on ``batch``: ``(loss, logs, lr)`` (``step`` is the count before it)."""
        opt = self.opt
        opt.zero_grad(set_to_none=True)
        loss, logs = _split_loss_output(self.loss_fn(self.model, batch), "loss_fn")
        loss_value = float(loss.detach())
        current_lr = float(opt.param_groups[0]["lr"])
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"the training loss is {loss_value} at step {step + 1}; try a lower lr "
                f"(now {current_lr:g}), grad_clip=1.0, or check the data for NaN/inf."
            )
        if not loss.requires_grad:
            raise ValueError("loss_fn returned a loss that does not depend on any trainable "
                             "parameter; call the model inside loss_fn, not under torch.no_grad().")
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.clip_params, self.grad_clip)
        opt.step()
        if self.sched is not None and not self.plateau:
            self.sched.step()
        return loss_value, logs, current_lr

    def record(self, step: int, loss_value: float, current_lr: float, logs: dict[str, float]) -> None:
        """Append the step's loss, learning rate and logs to the history."""
        history = self.history
        history.loss.append(loss_value)
        history.lr.append(current_lr)
        for key, value in logs.items():
            history.logs.setdefault(key, [math.nan] * (step - 1)).append(value)
        for values in history.logs.values():
            if len(values) < step:
                values.append(math.nan)
        history.steps = step

    def check(self, step: int) -> float | None:
        """Validate (and step a plateau scheduler) every ``val_every`` steps."""
        if step % self.val_every != 0:
            return None
        val_value = None
        if self.validating:
            val_value = self.validate(step)
            if self.plateau:
                self.sched.step(val_value)
        elif self.plateau:
            self.sched.step(float(np.mean(self.history.loss[-self.val_every:])))
        return val_value

    def stop_reason(self, state: TrainState) -> str | None:
        """Why training stops after this step (early stopping, a callback), or ``None``."""
        stop = None
        if self.early_stopping is not None and self.bad_checks >= self.early_stopping:
            stop = "early_stopping"
        for cb in self.callbacks:
            if cb(state) is True and stop is None:
                stop = "callback"
        if (stop is None and self.time_limit is not None
                and time.perf_counter() - self.t0 >= self.time_limit and not self.finished(state)):
            stop = "time_limit"
        return stop

    def finished(self, state: TrainState) -> bool:
        """Whether the step of ``state`` was the last of the budget."""
        if self.epochs is None:
            return state.step >= self.total_steps  # type: ignore[operator]
        return self.total_steps is not None and state.step >= self.total_steps

    def warn_time_limit(self, step: int) -> None:
        """The warning of a run stopped by its time limit after ``step`` steps."""
        if self.epochs is None:
            asked = f"{self.total_steps} steps"
        elif self.total_steps is not None:
            asked = f"{self.epochs} epochs ({self.total_steps} steps)"
        else:
            asked = f"{self.epochs} epochs"
        resume = " (resume from the checkpoint to continue)" if self.ckpt_path is not None else ""
        assert self.time_limit is not None  # only a run with a time limit stops by it
        warnings.warn(f"{self.desc}: {time_limit_words(self.time_limit)} was reached after {step} "
                      f"steps of the {asked} asked for; training stopped there{resume}.", UserWarning, stacklevel=4)

    def postfix(self, loss_value: float, last_val: float | None) -> dict[str, str]:
        """The progress bar's postfix."""
        history = self.history
        postfix = {"loss": f"{loss_value:.4g}"}
        if last_val is not None:
            postfix["val"] = f"{last_val:.4g}"
            if history.best_step is not None and history.best_val_loss != last_val:
                # the weights kept at the end (restore_best) are those of the best check
                postfix["best"] = f"{history.best_val_loss:.4g}@{history.best_step}"
        return postfix

    def run(self, progress: bool | None) -> History:
        """The step loop, the final validation and checkpoint; restores the best weights."""
        model, history, stream, epochs = self.model, self.history, self.stream, self.epochs
        was_training = model.training
        step = history.steps
        self.wall0, self.t0 = history.wall_time, time.perf_counter()
        finished_early = history.stop_reason == "early_stopping"
        if not finished_early:
            history.stopped_early, history.stop_reason = False, None
        last_val = history.val_loss[-1][1] if history.val_loss else None
        bar = progress_bar(total=self.total_steps, desc=self.desc, progress=progress, initial=step)
        try:
            model.train()
            while not finished_early:
                if epochs is None and step >= self.total_steps:  # type: ignore[operator]
                    break
                batch = stream.next()
                if batch is END:
                    if epochs is not None and stream.epoch >= epochs:
                        break
                    continue
                batch = move(batch, self.dev, False)
                loss_value, logs, current_lr = self.optimizer_step(batch, step)
                step += 1
                self.record(step, loss_value, current_lr, logs)

                val_value = self.check(step)
                if val_value is not None:
                    last_val = val_value
                state = TrainState(step=step, epoch=stream.epoch, loss=loss_value, model=model,
                                   optimizer=self.opt, history=history, scheduler=self.sched,
                                   val_loss=val_value, logs=logs)
                stop = self.stop_reason(state)
                bar.set_postfix(self.postfix(loss_value, last_val), refresh=False)
                bar.update(1)

                if stop is not None:
                    history.stopped_early, history.stop_reason = True, stop
                    break
                if self.ckpt_path is not None and step % self.checkpoint_every == 0:
                    self.save(step)

            if (self.validating and step > 0 and history.stop_reason not in ("callback", "time_limit")
                    and (not history.val_loss or history.val_loss[-1][0] != step)):
                self.validate(step)
            history.steps = step
            history.wall_time = self.wall0 + (time.perf_counter() - self.t0)
            if self.ckpt_path is not None:
                self.save(step)
            restored = self.validating and self.restore_best and self.best_state is not None
            if restored:
                model.load_state_dict(self.best_state)  # type: ignore[arg-type]
            _log_end(self.desc, history, self.restore_best and self.best_state is not None)
            if history.stop_reason == "time_limit":
                self.warn_time_limit(step)
        finally:
            bar.close()
            model.train(was_training)
        return history

def _name(obj: Any) -> str:
    """A setting for the log: strings as they are, objects by their type's name."""
    if obj is None or isinstance(obj, (str, int, float)):
        return str(obj)
    return getattr(obj, "__name__", type(obj).__name__)


def _log_end(desc: str, history: History, restored: bool) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    rate = history.steps / history.wall_time if history.wall_time > 0 else math.nan
    parts = [f"{history.steps} steps in {history.wall_time:.3g} s ({rate:.3g} steps/s) on "
             f"{history.device}"]
    if history.loss:
        tail = history.loss[-min(len(history.loss), 10):]
        parts.append(f"final loss {float(np.mean(tail)):.4g} (mean of the last {len(tail)} steps)")
    if history.best_val_loss is not None:
        parts.append(f"best val_loss {history.best_val_loss:.4g} at step {history.best_step}"
                     + (" (weights restored)" if restored else ""))
    if history.stopped_early:
        parts.append(f"stopped early ({history.stop_reason})")
    log.info("%s: done: %s", desc, "; ".join(parts))


def _check_param_devices(opt: Optimizer, device: torch.device) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            if p.device.type != device.type or (
                device.index is not None and p.device.index != device.index
            ):
                raise ValueError(
                    f"a parameter being optimised is on {p.device} but training runs on "
                    f"{device}; make it part of the model (fit moves the model) or create it "
                    f"on {device}."
                )


def _split_loss_output(out: Any, name: str) -> tuple[torch.Tensor, dict[str, float]]:
    logs: Any = {}
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise TypeError(f"{name} must return a scalar tensor or (tensor, dict); "
                            f"got a {type(out).__name__} of length {len(out)}.")
        out, logs = out
        logs = {} if logs is None else logs
        if not isinstance(logs, Mapping):
            raise TypeError(f"the second value returned by {name} must be a dict of floats, "
                            f"got {type(logs).__name__}.")
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        desc = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"{name} must return a scalar loss tensor (reduce it, e.g. with .mean()); got {desc}.")
    return out.reshape(()), {str(k): float(v) for k, v in logs.items()}
