"""Estimators over labeled data: neural fields, latent interpolators, PCA and autoencoders,
latent dynamics (DINo and the smooth encoder-based variant)."""

from .amortized import PCA, AutoEncoder, fit_autoencoder
from .dino import DINo
from .dynamics import fit_dynamics, forecast
from .field import FieldModule, NeuralField, fit_field
from .latent import LatentInterpolator, fit_latent
from .smooth import SmoothDynamics, fit_smooth_dynamics

__all__ = ["DINo", "PCA", "AutoEncoder", "fit_dynamics", "forecast", "FieldModule", "LatentInterpolator", "NeuralField",
           "SmoothDynamics", "fit_autoencoder", "fit_field", "fit_latent", "fit_smooth_dynamics"]
