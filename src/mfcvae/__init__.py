"""mfcvae: Multi-Facet Clustering Variational Autoencoders (Falck et al., NeurIPS 2021).

A VAE with J facets, each with its own Mixture-of-Gaussians prior, so that each facet
learns its own clustering of the same data.
"""

from .estimator import MFCVAE
from .config import list_presets, load_preset

__all__ = ["MFCVAE", "list_presets", "load_preset"]
__version__ = "0.1.0"
