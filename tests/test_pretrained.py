"""The shipped models load and still generate the images they generated when shipped."""

import json

import pytest
import torch

from opstylegan import Generator
from opstylegan.pretrained import DEFAULT_MODEL, SHIPPED, resolve_model, shipped_model_path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_reference_images(name):
    path = shipped_model_path(name)
    ref = json.loads((path / "reference.json").read_text())
    G = Generator.from_pretrained(path)
    assert G.fingerprint() == ref["fingerprint"]  # weights + config unchanged
    assert G.overparam == name.endswith("overparam")
    with torch.no_grad():
        img = G(G.z_from_seeds(ref["seeds"]), truncation_psi=ref["truncation_psi"])
    expected = torch.tensor(ref["images"]).reshape(ref["shape"])
    # Same weights, same seeds: any change of the networks' maths shows up here (float rounding is ~1e-6).
    assert torch.allclose(img, expected, atol=1e-4), (img - expected).abs().max()
    assert (path / "MODEL_CARD.md").is_file()


def test_names_resolve_and_default_is_overparam():
    assert DEFAULT_MODEL in SHIPPED
    assert resolve_model(DEFAULT_MODEL) == shipped_model_path(DEFAULT_MODEL)
    assert str(resolve_model("some/folder")) == "some/folder"
    with pytest.raises(ValueError, match="unknown shipped model"):
        shipped_model_path("ffhq1024")


def test_shipped_configs_name_no_path_of_the_training_machine():
    """The training data is recorded by name and images sha256, never by an absolute path."""
    import json
    from pathlib import Path

    import opstylegan.pretrained as P

    for cfg in Path(P.__file__).parent.glob("*/config.json"):
        meta = json.loads(cfg.read_text())["metadata"]
        assert not Path(meta["training_config"]["data"]).is_absolute(), cfg
        assert len(meta["training_data"]["images_sha256"]) == 64, cfg
