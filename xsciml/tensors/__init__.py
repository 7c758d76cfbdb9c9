"""Labeled data to torch tensors and back.

Two representations serve every model in xsciml:

* **coordinate-based data** ``D = {(x_n, t_n), y_n}`` (:class:`CoordinateData`, from
  :func:`to_tensors`): one row per *valid* observation — NaN / masked points are dropped,
  never filled — for neural fields and other coordinate networks. Works for regular grids
  (any coordinate order, descending latitude included), 2-D curvilinear coordinates,
  scattered observations along one dimension, and static or time-varying fields.
* **gridded fields** ``[S, C, H, W]`` or ``[S, C, N]`` (:class:`GridData`, from
  :func:`to_fields`) with a validity mask, for models that see a whole snapshot at once.

Both remember everything needed to put predictions back onto labeled coordinates
(:meth:`CoordinateData.to_dataset`, :meth:`GridData.to_dataarray`), and
:func:`target_points` does the same for *new* coordinates (another grid, a dict of
1-D coordinates, scattered points).
"""

from ._coordinate_data import CoordinateData, to_tensors
from ._fields import GridData, to_fields
from ._labels import TIME_ATTRS as TIME_ATTRS
from ._labels import decode_variable, default_space, space_dims, space_values
from ._labels import prepare_variables as prepare_variables
from ._points import PointLayout, Scaler, TargetPoints, check_target_domain, target_points

__all__ = [
    "CoordinateData",
    "GridData",
    "PointLayout",
    "TargetPoints",
    "Scaler",
    "to_tensors",
    "to_fields",
    "target_points",
    "check_target_domain",
    "decode_variable",
    "default_space",
    "space_dims",
    "space_values",
]
