"""fp16 blocks and `force_fp32`: which blocks would run in fp16 on CUDA is decided on the CPU, and PPL, the
projector and the editability metrics always ask for fp32 (an fp16 block's rounding divided by eps^2 = 1e-8
turns PPL into noise)."""

import torch
from conftest import tiny

from opstylegan import Generator
from opstylegan.inversion.projector import invert
from opstylegan.metrics.ppl import perceptual_path_length

CUDA = torch.device("cuda")  # only used for the dtype decision; nothing is moved there


def test_fp16_blocks_and_force_fp32_decision():
    G = Generator(tiny(True, num_fp16_res=2))  # 32 px: blocks 4, 8, 16, 32; fp16 in 16 and 32
    got = {b.resolution: b.compute_dtype(CUDA) for b in G._synthesis.blocks}
    assert got == {4: torch.float32, 8: torch.float32, 16: torch.float16, 32: torch.float16}
    assert all(b.compute_dtype(CUDA, force_fp32=True) == torch.float32 for b in G._synthesis.blocks)
    assert all(b.compute_dtype(torch.device("cpu")) == torch.float32 for b in G._synthesis.blocks)
    assert all(b.compute_dtype(CUDA) == torch.float64 for b in G.double()._synthesis.blocks[:2])


class _Spy(torch.nn.Module):
    """Records the force_fp32 argument of every synthesis call of a wrapped generator."""

    def __init__(self, G):
        super().__init__()
        self.calls = []
        orig = G.synthesis

        def synthesis(*a, force_fp32=False, **kw):
            self.calls.append(force_fp32)
            return orig(*a, force_fp32=force_fp32, **kw)

        G.synthesis = synthesis


class _FakeLPIPS(torch.nn.Module):
    net = "vgg"

    def forward(self, a, b):
        return (a - b).square().mean(dim=[1, 2, 3])

    def features(self, x):
        return x

    def distance_from_features(self, a, b):
        return (a - b).square().mean(dim=[1, 2, 3])


def test_ppl_and_projector_force_fp32():
    G = Generator(tiny(True, num_fp16_res=2)).eval()
    spy = _Spy(G)
    perceptual_path_length(G, num_samples=2, batch_size=2, lpips=_FakeLPIPS())
    assert spy.calls and all(spy.calls)
    spy.calls.clear()
    target = torch.zeros(1, 1, 32, 32)
    invert(G, target, "W", steps=2, lpips=_FakeLPIPS())
    assert spy.calls and all(spy.calls)
