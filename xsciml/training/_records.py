"""The records of a :func:`~xsciml.training.fit` run: :class:`History` and :class:`TrainState`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn
from torch.optim import Optimizer

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


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
