"""Estimators over labeled data: neural fields (and, as they land, latent models, DINo)."""

from .field import FieldModule, NeuralField, fit_field

__all__ = ["FieldModule", "NeuralField", "fit_field"]
