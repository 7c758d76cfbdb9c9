"""Batches and data sources of :func:`~xsciml.training.fit`: minibatches, devices, streams."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .._utils import check_positive_int, resolve_device

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
    return move(batch, dev, non_blocking)


def move(batch: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        moved = {k: move(v, device, non_blocking) for k, v in batch.items()}
        # a concrete Mapping subclass built from a dict (dict, OrderedDict, ...); the abstract type cannot say so
        rebuild = cast("Callable[[dict[Any, Any]], Any]", type(batch))
        try:
            return rebuild(moved)
        except TypeError:
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(move(v, device, non_blocking) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(move(v, device, non_blocking) for v in batch)
    return batch


def batch_len(batch: Any) -> int | None:
    """Leading size of the first tensor (with at least one dim) in ``batch``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim > 0 else None
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(batch, (Mapping, tuple, list)):
        for v in values:
            n = batch_len(v)
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


def tensor_len(data: Any, name: str) -> int:
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
    n = tensor_len(tensors, "tensors")
    check_positive_int(batch_size, "batch_size", minimum=1)
    perm = None
    if shuffle:
        dev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(n, generator=generator, device=dev)
    if isinstance(tensors, list):
        tensors = tuple(tensors)
    return _slices(tensors, n, batch_size, perm)


# --------------------------------------------------------------------------- data sources

END = object()  # an epoch has ended


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
            return END
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
        super().__init__(tensor_len(data, "data"), batch_size, seed)
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


def derive_seed(seed: int, stream: int) -> int:
    """An independent seed for a named sub-stream (validation split, validation batch)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def data_kind(data: Any, name: str) -> str:
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


def data_size(kind: str, data: Any, stream: _Stream) -> str:
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


def make_stream(kind: str, data: Any, batch_size: int, seed: int) -> _Stream:
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


def val_batches(kind: str, data: Any, batch_size: int, seed: int) -> Callable[[], Iterable[Any]]:
    """A function giving one deterministic pass over the validation data."""
    if kind == "tensors":
        n = tensor_len(data, "val_data")
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
            fixed.append(data(torch.Generator().manual_seed(derive_seed(seed, 2))))
        return fixed

    return once


def split_tensors(data: Any, fraction: float, generator: torch.Generator) -> tuple[Any, Any]:
    n = tensor_len(data, "data")
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"val_fraction={fraction} leaves no training samples out of {n}; "
                         "use a smaller fraction or pass val_data.")
    perm = torch.randperm(n, generator=generator)
    train_idx, _ = torch.sort(perm[n_val:])
    val_idx, _ = torch.sort(perm[:n_val])
    return _take(data, train_idx), _take(data, val_idx)


