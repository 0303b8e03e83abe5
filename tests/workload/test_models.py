import pytest
import torch

from etj_workload.models import MODEL_NAMES, build_model


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_produce_ten_logits(name: str) -> None:
    model = build_model(name, width=32, depth=2)
    x = torch.rand(3, 256 if name == "synthetic-mlp" else 64)
    assert model(x).shape == (3, 10)


def test_unknown_model_is_named() -> None:
    with pytest.raises(ValueError, match="digits-mlp"):
        build_model("resnet")
