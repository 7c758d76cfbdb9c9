"""The one training loop that every xsciml model trains through.

:func:`fit` takes a torch module, a loss ``loss_fn(model, batch)`` and data in one of
several forms (in-memory tensors, a ``Dataset``, any re-iterable of batches, a batch
generator for physics problems, or a streaming provider with a ``batches`` method) and
runs minibatch optimisation with validation, early stopping, learning-rate schedules,
gradient clipping, atomic checkpoints with exact resume, and a progress bar. It returns a
:class:`History`.

This module is pure torch: it knows nothing of xarray.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import re
import secrets
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader, Dataset, IterableDataset

from xsciml._utils import progress_bar, resolve_device, seed_everything

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["History", "TrainState", "checkpoint_step", "fit", "iterate_minibatches", "move_to_device",
           "parse_time_limit"]

_M = TypeVar("_M", bound=nn.Module)  # the module fit trains, as loss_fn receives it

log = logging.getLogger(__name__)

_CKPT_FORMAT = "xsciml.training.checkpoint"
_CKPT_VERSION = 1

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


# --------------------------------------------------------------------------- records


@dataclass
class History:
    """What happened during :func:`fit`.

    Steps are counted from 1: entry ``i`` of ``loss`` / ``lr`` belongs to step ``i + 1``.

    Attributes
    ----------
    loss : list of float
        Training loss of every optimizer step.
    val_loss : list of (int, float)
        ``(step, validation loss)`` at every validation check.
    lr : list of float
        Learning rate (of the first parameter group) used by every step.
    logs : dict of str to list of float
        Extra values returned by ``loss_fn``, one per step (NaN where a step did not
        report the key).
    best_step : int or None
        Step of the lowest validation loss (``None`` without validation).
    best_val_loss : float or None
        The lowest validation loss (``None`` without validation).
    stopped_early : bool
        True when training ended before its budget (early stopping, a callback or the
        time limit).
    stop_reason : str or None
        ``"early_stopping"``, ``"callback"``, ``"time_limit"`` or ``None``.
    steps : int
        Optimizer steps taken in total (across resumes).
    wall_time : float
        Seconds spent training (across resumes).
    device : str
        Where the model trained (and still lives).
    stages : list of (str, int, int)
        For a fit in several stages (:meth:`chain`): ``(name, first step, last step)``
        of each, steps counted in the chained history; empty otherwise.

    Examples
    --------
    >>> h = History(loss=[1.0, 0.5], lr=[0.1, 0.1], steps=2)
    >>> History.from_dict(h.to_dict()) == h
    True
    """

    loss: list[float] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    logs: dict[str, list[float]] = field(default_factory=dict)
    best_step: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    stop_reason: str | None = None
    steps: int = 0
    wall_time: float = 0.0
    device: str = "cpu"
    stages: list[tuple[str, int, int]] = field(default_factory=list)

    @classmethod
    def chain(cls, stages: Mapping[str, History]) -> History:
        """One history of a fit in several stages, run one after the other.

        Losses, learning rates and logs are concatenated (a log a stage did not report
        is NaN there), validation steps are shifted to the chained step count, and
        :attr:`stages` records where each stage starts and ends; :meth:`stage` gives a
        stage back. ``best_step`` / ``best_val_loss`` are those of the last stage that
        validated.

        Examples
        --------
        >>> h = History.chain({"a": History(loss=[3.0, 2.0], steps=2),
        ...                    "b": History(loss=[1.0], val_loss=[(1, 0.5)], best_step=1, steps=1)})
        >>> h.loss, h.val_loss, h.stages, h.best_step
        ([3.0, 2.0, 1.0], [(3, 0.5)], [('a', 1, 2), ('b', 3, 3)], 3)
        >>> h.stage("b").loss
        [1.0]
        """
        if not stages:
            raise ValueError("History.chain needs at least one stage")
        out = cls()
        keys = [k for h in stages.values() for k in h.logs]
        keys = list(dict.fromkeys(keys))
        for name, h in stages.items():
            if not isinstance(h, History):
                raise TypeError(f"stage {name!r} is a {type(h).__name__}, not a History")
            offset, n = len(out.loss), len(h.loss)
            out.loss += list(h.loss)
            out.lr += list(h.lr[:n]) + [math.nan] * (n - len(h.lr[:n]))
            for k in keys:
                vals = list(h.logs.get(k, []))[:n]
                out.logs.setdefault(k, []).extend(vals + [math.nan] * (n - len(vals)))
            out.val_loss += [(offset + st, v) for st, v in h.val_loss]
            if h.best_step is not None:
                out.best_step, out.best_val_loss = offset + h.best_step, h.best_val_loss
            out.stopped_early = out.stopped_early or h.stopped_early
            out.stop_reason = h.stop_reason or out.stop_reason
            out.steps += int(h.steps)
            out.wall_time += float(h.wall_time)
            out.device = h.device
            out.stages.append((str(name), offset + 1, offset + n))
        return out

    def stage(self, name: str) -> History:
        """The part of a chained history (:meth:`chain`) that stage ``name`` ran."""
        for st, first, last in self.stages:
            if st == name:
                lo, hi = first - 1, last
                return History(loss=self.loss[lo:hi], lr=self.lr[lo:hi],
                               val_loss=[(s - lo, v) for s, v in self.val_loss if first <= s <= last],
                               logs={k: v[lo:hi] for k, v in self.logs.items()
                                     if not all(math.isnan(x) for x in v[lo:hi])},
                               steps=hi - lo, device=self.device)
        raise KeyError(f"no stage {name!r}; the stages are {[s for s, _, _ in self.stages]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly dictionary (lists, floats, ints, strings, ``None``).

        Examples
        --------
        >>> import json
        >>> json.dumps(History(loss=[1.0], val_loss=[(1, 2.0)]).to_dict())[:15]
        '{"loss": [1.0],'
        """
        return {
            "loss": [float(v) for v in self.loss],
            "val_loss": [[int(s), float(v)] for s, v in self.val_loss],
            "lr": [float(v) for v in self.lr],
            "logs": {str(k): [float(v) for v in vals] for k, vals in self.logs.items()},
            "best_step": None if self.best_step is None else int(self.best_step),
            "best_val_loss": None if self.best_val_loss is None else float(self.best_val_loss),
            "stopped_early": bool(self.stopped_early),
            "stop_reason": self.stop_reason,
            "steps": int(self.steps),
            "wall_time": float(self.wall_time),
            "device": str(self.device),
            "stages": [[str(n), int(a), int(b)] for n, a, b in self.stages],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        """Inverse of :meth:`to_dict` (unknown keys are ignored).

        Examples
        --------
        >>> History.from_dict({"loss": [3.0], "val_loss": [[1, 2.0]]}).val_loss
        [(1, 2.0)]
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"History.from_dict expects a mapping, got {type(d).__name__}.")
        best_step = d.get("best_step")
        best_val = d.get("best_val_loss")
        return cls(
            loss=[float(v) for v in d.get("loss", [])],
            val_loss=[(int(s), float(v)) for s, v in d.get("val_loss", [])],
            lr=[float(v) for v in d.get("lr", [])],
            logs={str(k): [float(v) for v in vals] for k, vals in d.get("logs", {}).items()},
            best_step=None if best_step is None else int(best_step),
            best_val_loss=None if best_val is None else float(best_val),
            stopped_early=bool(d.get("stopped_early", False)),
            stop_reason=d.get("stop_reason"),
            steps=int(d.get("steps", len(d.get("loss", [])))),
            wall_time=float(d.get("wall_time", 0.0)),
            device=str(d.get("device", "cpu")),
            stages=[(str(n), int(a), int(b)) for n, a, b in d.get("stages", [])],
        )

    def to_dataframe(self) -> pd.DataFrame:
        """One row per step (index ``step``, from 1): ``loss``, ``lr``, the logs,
        ``val_loss`` and ``validated``.

        ``val_loss`` is the latest validation loss at each step: the value of the last
        check, carried forward until the next one (NaN before the first check). So
        ``history.to_dataframe().plot(y=["loss", "val_loss"])`` draws both curves, the
        validation one as steps. ``validated`` is True at the steps where a check ran;
        ``df[df.validated]`` (or :attr:`val_loss`) gives the checks alone.

        Examples
        --------
        >>> h = History(loss=[1.0, 0.5, 0.4, 0.3], lr=[0.1] * 4, val_loss=[(2, 0.7), (4, 0.6)])
        >>> df = h.to_dataframe()
        >>> list(df.columns), df.index.name
        (['loss', 'lr', 'val_loss', 'validated'], 'step')
        >>> df["val_loss"].tolist(), df.index[df.validated].tolist()
        ([nan, 0.7, 0.7, 0.6], [2, 4])
        >>> ax = df.plot(y=["loss", "val_loss"])  # doctest: +SKIP
        """
        import pandas as pd

        n = len(self.loss)
        index = pd.RangeIndex(1, n + 1, name="step")
        columns: dict[str, Any] = {"loss": self.loss, "lr": self.lr[:n] + [math.nan] * (n - len(self.lr))}
        for key, values in self.logs.items():
            columns[key] = list(values[:n]) + [math.nan] * (n - len(values))
        val = np.full(n, np.nan)
        checked = np.zeros(n, dtype=bool)
        for step, value in self.val_loss:
            if 1 <= step <= n:
                val[step - 1] = value
                checked[step - 1] = True
        columns["val_loss"] = pd.Series(np.where(checked, val, np.nan)).ffill().to_numpy()
        columns["validated"] = checked
        return pd.DataFrame(columns, index=index)


@dataclass(eq=False)
class TrainState:
    """What a callback sees after every optimizer step.

    Attributes
    ----------
    step : int
        Steps taken so far (the step just finished, counted from 1).
    epoch : int
        Index (from 0) of the pass over the data that the step's batch came from.
    loss : float
        Training loss of the step.
    model : torch.nn.Module
        The live model; gradients of the step are still in ``.grad``.
    optimizer : torch.optim.Optimizer
        The live optimizer.
    history : History
        The running history.
    scheduler : LRScheduler or None
        The learning-rate scheduler, if any.
    val_loss : float or None
        Validation loss if a validation check ran at this step.
    logs : dict of str to float
        Extra values ``loss_fn`` returned for this step.
    """

    step: int
    epoch: int
    loss: float
    model: nn.Module
    optimizer: Optimizer
    history: History
    scheduler: Any = None
    val_loss: float | None = None
    logs: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- batches


def move_to_device(batch: Any, device: str | torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``batch`` to ``device``.

    Tensors, tuples (named tuples included), lists and mappings are handled recursively;
    anything else is returned unchanged.

    Parameters
    ----------
    batch : Any
        A tensor or a nested container of tensors.
    device : str or torch.device
        Target device (``"auto"`` picks CUDA when available).
    non_blocking : bool, default False
        Passed to :meth:`torch.Tensor.to`.

    Returns
    -------
    Any
        Same structure, tensors on ``device``.

    Examples
    --------
    >>> b = move_to_device({"x": torch.ones(2), "meta": "a", "pair": (torch.zeros(1), 3)}, "cpu")
    >>> b["x"].device, b["meta"], b["pair"][1]
    (device(type='cpu'), 'a', 3)
    """
    dev = resolve_device(device)
    return _move(batch, dev, non_blocking)


def _move(batch: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        moved = {k: _move(v, device, non_blocking) for k, v in batch.items()}
        # a concrete Mapping subclass built from a dict (dict, OrderedDict, ...); the abstract type cannot say so
        rebuild = cast("Callable[[dict[Any, Any]], Any]", type(batch))
        try:
            return rebuild(moved)
        except TypeError:
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(_move(v, device, non_blocking) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_move(v, device, non_blocking) for v in batch)
    return batch


def _batch_len(batch: Any) -> int | None:
    """Leading size of the first tensor (with at least one dim) in ``batch``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim > 0 else None
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(batch, (Mapping, tuple, list)):
        for v in values:
            n = _batch_len(v)
            if n is not None:
                return n
    return None


def _is_tensor_data(data: Any) -> bool:
    """A tensor, or a non-empty tuple/list/mapping whose items are all tensors."""
    if isinstance(data, torch.Tensor):
        return True
    if isinstance(data, Mapping):
        return len(data) > 0 and all(isinstance(v, torch.Tensor) for v in data.values())
    if isinstance(data, (tuple, list)):
        return len(data) > 0 and all(isinstance(v, torch.Tensor) for v in data)
    return False


def _tensor_len(data: Any, name: str) -> int:
    tensors = [data] if isinstance(data, torch.Tensor) else (
        list(data.values()) if isinstance(data, Mapping) else list(data))
    if any(t.ndim == 0 for t in tensors):
        raise ValueError(f"{name}: every tensor needs a leading sample dimension; got a 0-d tensor.")
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(
            f"{name}: tensors must share their first (sample) dimension, got shapes {shapes}. "
            "To pass ready-made batches instead, use a list of tuples or a DataLoader."
        )
    n = sizes.pop()
    if n == 0:
        raise ValueError(f"{name}: the tensors hold no samples (first dimension is 0).")
    return n


def _take(data: Any, idx: slice | torch.Tensor) -> Any:
    def one(t: torch.Tensor) -> torch.Tensor:
        if isinstance(idx, torch.Tensor) and idx.device != t.device:
            return t[idx.to(t.device)]
        return t[idx]

    if isinstance(data, torch.Tensor):
        return one(data)
    if isinstance(data, Mapping):
        return {k: one(v) for k, v in data.items()}
    return tuple(one(t) for t in data)


def _common_device(data: Any) -> torch.device | None:
    tensors = [data] if isinstance(data, torch.Tensor) else (
        list(data.values()) if isinstance(data, Mapping) else list(data))
    devices = {t.device for t in tensors}
    return devices.pop() if len(devices) == 1 else None


def _slices(data: Any, n: int, batch_size: int, perm: torch.Tensor | None,
            start_batch: int = 0) -> Iterator[Any]:
    if perm is not None:
        dev = _common_device(data)
        if dev is not None and perm.device != dev:
            perm = perm.to(dev)  # index where the data lives
    for a in range(start_batch * batch_size, n, batch_size):
        b = min(a + batch_size, n)
        yield _take(data, slice(a, b) if perm is None else perm[a:b])


def iterate_minibatches(
    tensors: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> Iterator[Any]:
    """Minibatches of in-memory tensors that share their first dimension.

    One pass over the data: with ``shuffle`` a random permutation drawn from
    ``generator`` (the global RNG when ``None``), else in order. The last batch may be
    smaller. Indexing happens on the device where the tensors live.

    Parameters
    ----------
    tensors : Tensor, sequence of Tensors or mapping of str to Tensor
        Data; batches have the same structure (a sequence gives tuples).
    batch_size : int
        Samples per batch (at least 1).
    generator : torch.Generator, optional
        Source of the permutation.
    shuffle : bool, default True
        Shuffle, or keep the order (then batches are views, no copy).

    Returns
    -------
    Iterator
        Batches.

    Examples
    --------
    >>> x, y = torch.arange(5.0), torch.arange(5) * 10
    >>> [b[1].tolist() for b in iterate_minibatches((x, y), 2, shuffle=False)]
    [[0, 10], [20, 30], [40]]
    >>> g = torch.Generator().manual_seed(0)
    >>> sorted(torch.cat([b[0] for b in iterate_minibatches((x, y), 2, g)]).tolist())
    [0.0, 1.0, 2.0, 3.0, 4.0]
    """
    if not _is_tensor_data(tensors):
        raise TypeError("tensors must be a tensor, a non-empty sequence of tensors or a "
                        f"mapping of names to tensors; got {type(tensors).__name__}.")
    n = _tensor_len(tensors, "tensors")
    _check_int(batch_size, "batch_size", 1)
    perm = None
    if shuffle:
        dev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(n, generator=generator, device=dev)
    if isinstance(tensors, list):
        tensors = tuple(tensors)
    return _slices(tensors, n, batch_size, perm)


# --------------------------------------------------------------------------- data sources

_END = object()  # an epoch has ended


class _Stream:
    """Training batches epoch after epoch, with a position that can be saved and restored."""

    kind = "base"

    def __init__(self) -> None:
        self.epoch = 0
        self.pos = 0  # batches consumed in the current epoch
        self._it: Iterator[Any] | None = None

    @property
    def batches_per_epoch(self) -> int | None:
        return None

    def _open(self, skip: int) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def next(self) -> Any:
        if self._it is None:
            self._it = self._open(self.pos)
        try:
            batch = next(self._it)
        except StopIteration:
            if self.pos == 0:
                raise ValueError(
                    f"the training data yielded no batches in epoch {self.epoch}: it is empty "
                    "(or drops a last batch bigger than the data), or it is a one-shot iterator "
                    "or generator, which cannot be restarted; pass a list, a DataLoader or a "
                    "callable data(generator) instead."
                ) from None
            self.epoch += 1
            self.pos = 0
            self._it = None
            return _END
        self.pos += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"the checkpoint was written for data of kind {state.get('kind')!r}, "
                             f"but data is of kind {self.kind!r}.")
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self._it = None


class _ShuffledStream(_Stream):
    """A fresh permutation per epoch from one seeded generator (exactly resumable)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        super().__init__()
        self.n = n
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_start: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def _permutation(self) -> torch.Tensor:
        self._epoch_start = self.generator.get_state()
        return torch.randperm(self.n, generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # the permutation of the current epoch is re-drawn from its starting state
        if self._it is not None:
            assert self._epoch_start is not None  # set by _permutation when the epoch's first batch was drawn
            start = self._epoch_start
        else:
            start = self.generator.get_state()
        state["generator"] = start.clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


class _TensorStream(_ShuffledStream):
    kind = "tensors"

    def __init__(self, data: Any, batch_size: int, seed: int) -> None:
        super().__init__(_tensor_len(data, "data"), batch_size, seed)
        self.data = tuple(data) if isinstance(data, list) else data

    def _open(self, skip: int) -> Iterator[Any]:
        return _slices(self.data, self.n, self.batch_size, self._permutation(), skip)


class _DatasetStream(_ShuffledStream):
    kind = "dataset"

    def __init__(self, dataset: Dataset, batch_size: int, seed: int) -> None:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as err:
            raise TypeError("a map-style Dataset passed as data must define __len__.") from err
        if n == 0:
            raise ValueError("data: the Dataset is empty.")
        super().__init__(n, batch_size, seed)
        self.dataset = dataset
        self._loader_generator = torch.Generator().manual_seed(seed)

    def _open(self, skip: int) -> Iterator[Any]:
        # Same as DataLoader(shuffle=True, generator=seeded), but the permutation is ours,
        # so a resumed run can start in the middle of an epoch without loading anything.
        order = self._permutation()[skip * self.batch_size:].tolist()
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order,
                            generator=self._loader_generator)
        return iter(loader)


class _IterableStream(_Stream):
    """Any re-iterable of batches (a DataLoader, a list of batches, an IterableDataset)."""

    kind = "iterable"

    def __init__(self, data: Iterable[Any]) -> None:
        super().__init__()
        self.data = data

    @property
    def batches_per_epoch(self) -> int | None:
        try:
            return len(self.data)  # type: ignore[arg-type]
        except TypeError:
            return None

    def _open(self, skip: int) -> Iterator[Any]:
        return itertools.islice(iter(self.data), skip, None)


class _ProviderStream(_Stream):
    """An object with ``batches(batch_size, shuffle, seed)``, called once per epoch."""

    kind = "provider"

    def __init__(self, data: Any, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self._pending: tuple[int, Iterable[Any]] | None = None

    def _batches(self, epoch: int) -> Iterable[Any]:
        if self._pending is not None and self._pending[0] == epoch:
            batches = self._pending[1]
            self._pending = None
            return batches
        return self.data.batches(batch_size=self.batch_size, shuffle=True, seed=self.seed + epoch)

    @property
    def batches_per_epoch(self) -> int | None:
        batches = self._batches(self.epoch)
        self._pending = (self.epoch, batches)
        try:
            return len(batches)  # type: ignore[arg-type]
        except TypeError:
            return None

    def _open(self, skip: int) -> Iterator[Any]:
        return itertools.islice(iter(self._batches(self.epoch)), skip, None)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = None


class _CallableStream(_Stream):
    """``data(generator) -> batch``: an endless single epoch of generated batches."""

    kind = "callable"

    def __init__(self, fn: Callable[[torch.Generator], Any], seed: int) -> None:
        super().__init__()
        self.fn = fn
        self.generator = torch.Generator().manual_seed(seed)

    def _open(self, skip: int) -> Iterator[Any]:
        while True:
            yield self.fn(self.generator)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.pos = 0  # nothing to skip: the generator state says where we are
        self.generator.set_state(state["generator"])


def _derive_seed(seed: int, stream: int) -> int:
    """An independent seed for a named sub-stream (validation split, validation batch)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _data_kind(data: Any, name: str) -> str:
    if data is None:
        raise TypeError(f"{name} is None; pass tensors, a Dataset, an iterable of batches, "
                        "a callable data(generator) or an object with a batches() method.")
    if _is_tensor_data(data):
        return "tensors"
    if callable(getattr(data, "batches", None)):
        return "provider"
    if isinstance(data, IterableDataset):
        return "iterable_dataset"
    if isinstance(data, Dataset):
        return "dataset"
    if isinstance(data, (str, bytes)):
        raise TypeError(f"{name} is a string; pass tensors, a Dataset or an iterable of batches.")
    if isinstance(data, Iterable):
        if isinstance(data, (tuple, list, Mapping)) and len(data) == 0:
            raise ValueError(f"{name} is empty.")
        return "iterable"
    if callable(data):
        return "callable"
    raise TypeError(
        f"{name} of type {type(data).__name__} is not understood; pass a tuple of tensors, a "
        "torch Dataset, an iterable of batches (e.g. a DataLoader), a callable "
        "data(generator) -> batch, or an object with batches(batch_size, shuffle, seed)."
    )


def _data_size(kind: str, data: Any, stream: _Stream) -> str:
    """How much training data there is, in words (for the log)."""
    n = getattr(stream, "n", None)
    if n is None and kind == "provider":
        try:
            n = len(data)
        except TypeError:
            n = None
    if n is not None:
        return f"{n} samples"
    if kind == "callable":
        return "generated on the fly"
    per_epoch = stream.batches_per_epoch
    return f"{per_epoch} batches per epoch" if per_epoch is not None else "a stream of batches"


def _make_stream(kind: str, data: Any, batch_size: int, seed: int) -> _Stream:
    if kind == "tensors":
        return _TensorStream(data, batch_size, seed)
    if kind == "dataset":
        return _DatasetStream(data, batch_size, seed)
    if kind == "iterable_dataset":
        return _IterableStream(DataLoader(data, batch_size=batch_size,
                                          generator=torch.Generator().manual_seed(seed)))
    if kind == "iterable":
        return _IterableStream(data)
    if kind == "provider":
        return _ProviderStream(data, batch_size, seed)
    return _CallableStream(data, seed)


def _val_batches(kind: str, data: Any, batch_size: int, seed: int) -> Callable[[], Iterable[Any]]:
    """A function giving one deterministic pass over the validation data."""
    if kind == "tensors":
        n = _tensor_len(data, "val_data")
        data = tuple(data) if isinstance(data, list) else data
        return lambda: _slices(data, n, batch_size, None)
    if kind in ("dataset", "iterable_dataset"):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return lambda: loader
    if kind == "iterable":
        return lambda: data
    if kind == "provider":
        return lambda: data.batches(batch_size=batch_size, shuffle=False, seed=seed)
    # a callable: one fixed batch, drawn from its own seeded stream, reused at every check
    fixed: list[Any] = []

    def once() -> list[Any]:
        if not fixed:
            fixed.append(data(torch.Generator().manual_seed(_derive_seed(seed, 2))))
        return fixed

    return once


def _split_tensors(data: Any, fraction: float, generator: torch.Generator) -> tuple[Any, Any]:
    n = _tensor_len(data, "data")
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"val_fraction={fraction} leaves no training samples out of {n}; "
                         "use a smaller fraction or pass val_data.")
    perm = torch.randperm(n, generator=generator)
    train_idx, _ = torch.sort(perm[n_val:])
    val_idx, _ = torch.sort(perm[:n_val])
    return _take(data, train_idx), _take(data, val_idx)


# --------------------------------------------------------------------------- optimisation


def _make_optimizer(optimizer: Any, model: nn.Module, params: Iterable[Any] | None,
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


def _make_scheduler(scheduler: Any, opt: Optimizer, total_steps: int | None) -> Any:
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


def _check_int(value: Any, name: str, minimum: int) -> None:
    from ._utils import check_positive_int

    check_positive_int(value, name, minimum=minimum)


# --------------------------------------------------------------------------- checkpoints


def _rng_state(device: torch.device) -> dict[str, Any]:
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


def _set_rng_state(state: Mapping[str, Any]) -> None:
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


def _write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
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


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read the checkpoint {str(path)!r} ({type(err).__name__}: {err}). It is "
            "corrupt or was not written by xsciml.training.fit; delete it or pass resume=False "
            "to start over."
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an xsciml training checkpoint; delete it or "
                         "pass resume=False to start over.")
    if int(ckpt.get("version", 0)) > _CKPT_VERSION:
        raise ValueError(f"the checkpoint {str(path)!r} has version {ckpt['version']}, newer than "
                         f"this xsciml understands ({_CKPT_VERSION}); upgrade xsciml.")
    return ckpt


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


_TIME_UNITS = {"h": 3600.0, "min": 60.0, "s": 1.0}
_TIME_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(h|min|s)")


def parse_time_limit(value: float | str | None, name: str = "time_limit") -> float | None:
    """A wall-clock budget in seconds, from a number of seconds or a string with units.

    Parameters
    ----------
    value : float, int, str or None
        Seconds (a number > 0), or a string of one or more ``<number><unit>`` parts with
        the units ``h``, ``min`` and ``s``: ``"90s"``, ``"10min"``, ``"1.5h"``,
        ``"2h30min"``, ``"1h 5min 30s"``. ``None``: no limit.
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
             "'2h30min' (units h, min, s)")
    seconds: float | None = None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        seconds = float(value)
    elif isinstance(value, str):
        text, pos, total, parts = value.strip().lower(), 0, 0.0, 0
        while pos < len(text):
            m = _TIME_PART.match(text, pos)
            if m is None:
                break
            total += float(m.group(1)) * _TIME_UNITS[m.group(2)]
            pos, parts = m.end(), parts + 1
        if parts and pos == len(text):
            seconds = total
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
    return int(_read_checkpoint(Path(checkpoint))["step"])


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
    ckpt = _read_checkpoint(ckpt_path) if resume and ckpt_path is not None and ckpt_path.exists() else None

    base_seed = int(ckpt["seed"]) if ckpt is not None else (seed if seed is not None else secrets.randbits(62))
    seed_everything(seed)
    dev = resolve_device(device)
    model.to(dev)

    # ---- data
    kind = _data_kind(data, "data")
    data, val_data = _split_validation(kind, data, val_data, val_fraction, epochs, base_seed)
    stream = _make_stream(kind, data, batch_size, base_seed)
    val_pass = None
    if val_data is not None:
        val_pass = _val_batches(_data_kind(val_data, "val_data"), val_data, batch_size, base_seed)
    if early_stopping is not None and val_pass is None:
        raise ValueError("early_stopping needs validation data: pass val_data= or val_fraction=.")
    total_steps = steps
    if epochs is not None:
        per_epoch = stream.batches_per_epoch
        total_steps = None if per_epoch is None else epochs * per_epoch

    # ---- optimisation
    opt = _make_optimizer(optimizer, model, params, lr, weight_decay)
    _check_param_devices(opt, dev)
    sched = _make_scheduler(scheduler, opt, total_steps)

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
            val_kind = _data_kind(val_data, "val_data")
            val_size = (f"{_tensor_len(val_data, 'val_data')} samples" if val_kind == "tensors"
                        else val_kind)
        log.info("%s: %s with %d trainable parameters on %s; budget %s; data %s (batch_size %d); "
                 "validation %s; optimizer %s, lr %g, weight_decay %g, scheduler %s, grad_clip %s, "
                 "early_stopping %s, seed %s", desc, type(model).__name__, n_params,
                 params_device, f"{steps} steps" if epochs is None else f"{epochs} epochs",
                 _data_size(kind, data, stream), batch_size,
                 f"{val_size} every {val_every} steps" if val_pass is not None else "none",
                 type(opt).__name__, lr, weight_decay, _name(scheduler), grad_clip,
                 early_stopping, seed if seed is not None else f"random ({base_seed})")
        if ckpt is not None:
            log.info("%s: resumed from %s at step %d", desc, ckpt_path, run.history.steps)
    return run.run(progress)


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
        _check_int(steps, "steps", 1)
    if epochs is not None:
        _check_int(epochs, "epochs", 1)
    _check_int(batch_size, "batch_size", 1)
    _check_int(val_every, "val_every", 1)
    _check_int(checkpoint_every, "checkpoint_every", 1)
    if early_stopping is not None:
        _check_int(early_stopping, "early_stopping", 1)
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
    if callable(callbacks):
        callbacks = (callbacks,)
    callbacks = tuple(callbacks)
    if not all(callable(cb) for cb in callbacks):
        raise TypeError("callbacks must be a sequence of callables cb(state) -> bool | None.")
    if seed is not None:
        _check_int(seed, "seed", 0)
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
        split_generator = torch.Generator().manual_seed(_derive_seed(base_seed, 1))
        data, val_data = _split_tensors(data, val_fraction, split_generator)
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
        _set_rng_state(ckpt["rng"])

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
                    batch = _move(batch, dev, False)
                    loss, _ = _split_loss_output(self.v_loss_fn(model, batch), "val_loss_fn")
                    w = _batch_len(batch) or 1
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
                self.best_state = _cpu_state(model)
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
        _write_checkpoint(self.ckpt_path, {
            "format": _CKPT_FORMAT,
            "version": _CKPT_VERSION,
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
            "rng": _rng_state(self.dev),
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
        warnings.warn(f"{self.desc}: the time limit of {self.time_limit:g} s was reached after {step} "
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
                if batch is _END:
                    if epochs is not None and stream.epoch >= epochs:
                        break
                    continue
                batch = _move(batch, self.dev, False)
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
