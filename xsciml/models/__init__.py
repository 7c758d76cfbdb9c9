"""Estimators over labeled data: neural fields, latent interpolators, PCA and autoencoders."""

from .amortized import PCA, AutoEncoder, fit_autoencoder
from .field import FieldModule, NeuralField, fit_field
from .latent import LatentInterpolator, fit_latent

__all__ = ["PCA", "AutoEncoder", "FieldModule", "LatentInterpolator", "NeuralField",
           "fit_autoencoder", "fit_field", "fit_latent"]
