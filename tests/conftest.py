import pytest
import torch

from opstylegan.config import preset


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def tiny(overparam: bool = False, res: int = 32, channels: int = 1, **kw):
    return preset("tiny", img_resolution=res, img_channels=channels, overparam=overparam).generator.replace(**kw)


def tiny_d(res: int = 32, channels: int = 1, **kw):
    return preset("tiny", img_resolution=res, img_channels=channels).discriminator.replace(**kw)
