"""The MGMVAE / MVAE model: networks, TFP priors, objective, custom train/test steps."""

from tfgmvae.model.config import KINDS, ModelConfig
from tfgmvae.model.gmvae import GMVAE
from tfgmvae.model.priors import MixturePrior, posterior

__all__ = ["KINDS", "ModelConfig", "GMVAE", "MixturePrior", "posterior"]
