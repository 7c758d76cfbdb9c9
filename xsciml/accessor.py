"""The ``.sciml`` accessor: a thin layer that forwards to xsciml's functions.

Every method is one call of a public function with this object as its first
argument; see that function for the documentation.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

__all__ = ["SciMLDatasetAccessor", "SciMLDataArrayAccessor"]


class _SciMLAccessor:
    def __init__(self, obj: xr.Dataset | xr.DataArray) -> None:
        self._obj = obj

    # -- tensors -----------------------------------------------------------------
    def to_tensors(self, variables: Any = None, **kwargs: Any):
        """Call :func:`xsciml.tensors.to_tensors` on this object."""
        from .tensors import to_tensors

        return to_tensors(self._obj, variables, **kwargs)

    def to_fields(self, variables: Any = None, **kwargs: Any):
        """Call :func:`xsciml.tensors.to_fields` on this object."""
        from .tensors import to_fields

        return to_fields(self._obj, variables, **kwargs)

    # -- neural fields -------------------------------------------------------------
    def fit_field(self, variables: Any = None, **kwargs: Any):
        """Call :func:`xsciml.models.field.fit_field` on this object."""
        from .models.field import fit_field

        return fit_field(self._obj, variables, **kwargs)

    # -- latent models ---------------------------------------------------------------
    def fit_latent(self, variables: Any = None, **kwargs: Any):
        """Call :func:`xsciml.models.latent.fit_latent` on this object."""
        from .models.latent import fit_latent

        return fit_latent(self._obj, variables, **kwargs)

    def fit_autoencoder(self, variables: Any = None, **kwargs: Any):
        """Call :func:`xsciml.models.amortized.fit_autoencoder` on this object."""
        from .models.amortized import fit_autoencoder

        return fit_autoencoder(self._obj, variables, **kwargs)

    # -- forecasting -------------------------------------------------------------------
    def fit_dynamics(self, variables: Any = None, **kwargs: Any):
        """Call :func:`xsciml.models.dynamics.fit_dynamics` on this object."""
        from .models.dynamics import fit_dynamics

        return fit_dynamics(self._obj, variables, **kwargs)

    def forecast(self, model: Any, **kwargs: Any):
        """Call :func:`xsciml.models.dynamics.forecast` on this object (the initial states)."""
        from .models.dynamics import forecast

        return forecast(self._obj, model, **kwargs)

    # -- downscaling -------------------------------------------------------------------
    def fit_debias(self, reference: Any, **kwargs: Any):
        """Call :func:`xsciml.downscale.ot.fit_debias` on this object (the model output)."""
        from .downscale.ot import fit_debias

        return fit_debias(self._obj, reference, **kwargs)

    def fit_diffusion(self, variables: Any = None, **kwargs: Any):
        """Call :func:`xsciml.downscale.diffusion.fit_diffusion` on this object (fine fields)."""
        from .downscale.diffusion import fit_diffusion

        return fit_diffusion(self._obj, variables, **kwargs)

    def downscale(self, prior: Any, **kwargs: Any):
        """Call :func:`xsciml.downscale.pipeline.downscale` on this object (coarse fields)."""
        from .downscale.pipeline import downscale

        return downscale(self._obj, prior, **kwargs)

    # -- inverse problems ----------------------------------------------------------
    def invert(self, inversion: Any, **kwargs: Any):
        """Call :func:`xsciml.inverse.invert` on this object."""
        from .inverse import invert

        return invert(self._obj, inversion, **kwargs)


@xr.register_dataset_accessor("sciml")
class SciMLDatasetAccessor(_SciMLAccessor):
    """``ds.sciml``: xsciml's methods on a Dataset (each forwards to a function)."""


@xr.register_dataarray_accessor("sciml")
class SciMLDataArrayAccessor(_SciMLAccessor):
    """``da.sciml``: xsciml's methods on a DataArray (each forwards to a function)."""
