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

# In the order of the docs page, whose members_order: source follows these lines.
# isort: off
from ._records import History, TrainState
from ._data import move_to_device
from ._data import iterate_minibatches
from ._checkpoints import parse_time_limit
from ._checkpoints import checkpoint_step
from ._loop import fit
from ._loop import log as log  # the package's logger, ``logging.getLogger("xsciml.training")``
# isort: on

__all__ = ["History", "TrainState", "checkpoint_step", "fit", "iterate_minibatches", "move_to_device",
           "parse_time_limit"]
