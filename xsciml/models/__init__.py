"""Estimators over labeled data: neural fields, latent interpolators, PCA and autoencoders."""

from .amortized import PCA, AutoEncoder, fit_autoencoder
from .dino import DINo, fit_dynamics, forecast
from .field import FieldModule, NeuralField, fit_field
from .latent import LatentInterpolator, fit_latent

__all__ = ["DINo", "PCA", "AutoEncoder", "fit_dynamics", "forecast", "FieldModule", "LatentInterpolator", "NeuralField",
           "fit_autoencoder", "fit_field", "fit_latent"]
