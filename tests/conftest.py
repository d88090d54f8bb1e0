import pytest
import torch

from opstylegan.config import preset


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test networks are tiny (32 px, a few channels): intra-op threads gain nothing, and on a busy
    machine the thread pool's contention makes them 10-50x slower. Restored after the session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def tiny(overparam: bool = False, res: int = 32, channels: int = 1, **kw):
    return preset("tiny", img_resolution=res, img_channels=channels, overparam=overparam).generator.replace(**kw)


def tiny_d(res: int = 32, channels: int = 1, **kw):
    return preset("tiny", img_resolution=res, img_channels=channels).discriminator.replace(**kw)
