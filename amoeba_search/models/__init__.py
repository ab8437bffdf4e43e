"""Loading models, the supernet view, and export of standalone subnets."""
from amoeba_search.fingerprint import model_fingerprint
from amoeba_search.models.config import SUPPORTED_FAMILIES, UnsupportedModelError, subnet_config
from amoeba_search.models.loading import DEFAULT_MODEL, ModelNotFoundError, load_config, load_model
from amoeba_search.models.supernet import Supernet

__all__ = ["DEFAULT_MODEL", "ModelNotFoundError", "SUPPORTED_FAMILIES", "Supernet", "UnsupportedModelError",
           "load_config", "load_model", "model_fingerprint", "subnet_config"]
