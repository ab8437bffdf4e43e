"""amoeba-search: one pretrained LLM, a family of subnets, the Pareto-optimal ones for your device."""
from amoeba_search.shapes import ModelDims, SearchSpace, SubnetShape

__all__ = ["ModelDims", "SearchSpace", "SubnetShape"]
__version__ = "0.1.0"
