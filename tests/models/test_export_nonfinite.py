import pytest
import torch

from amoeba_search.models.export import export_subnet
from amoeba_search.models.supernet import Supernet
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model


def test_export_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    supernet = Supernet(model)
    out = tmp_path / "export"
    with pytest.raises(ValueError, match="NaN or inf"):
        export_subnet(supernet, SubnetShape(supernet.dims.num_layers, 1.0, 1.0), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
