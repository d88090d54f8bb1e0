"""The Python API takes the shipped models' names, as every command's --model does."""

from __future__ import annotations

import pytest
import torch

from opstylegan import Discriminator, Generator
from opstylegan.io.checkpoint import CheckpointError
from opstylegan.pretrained import SHIPPED, shipped_model_path


@pytest.mark.parametrize("name", SHIPPED)
def test_from_pretrained_takes_a_shipped_name(name):
    by_name = Generator.from_pretrained(name)
    by_path = Generator.from_pretrained(shipped_model_path(name))
    assert by_name.fingerprint() == by_path.fingerprint()
    assert by_name.source == by_path.source
    z = by_name.z_from_seeds([0])
    with torch.no_grad():
        assert torch.equal(by_name(z), by_path(z))


def test_a_local_folder_named_like_a_shipped_model(tmp_path, monkeypatch):
    """A string equal to a shipped name means the shipped model; './NAME' or a Path means the local folder."""
    from opstylegan.config import preset

    monkeypatch.chdir(tmp_path)
    local = Generator(preset("tiny", img_resolution=32, img_channels=1).generator)
    local.save_pretrained(SHIPPED[0])
    assert Generator.from_pretrained(SHIPPED[0]).source == str(shipped_model_path(SHIPPED[0]))
    for ref in (f"./{SHIPPED[0]}", tmp_path / SHIPPED[0]):
        assert Generator.from_pretrained(ref).fingerprint() == local.fingerprint()


def test_unknown_name_lists_the_shipped_models():
    with pytest.raises(FileNotFoundError, match="or the name of a shipped model: " + ", ".join(SHIPPED)):
        Generator.from_pretrained("fmnist32-overparm")


def test_shipped_name_is_not_a_discriminator():
    with pytest.raises(CheckpointError, match="holds a Generator, not a Discriminator"):
        Discriminator.from_pretrained(SHIPPED[0])
