"""Pure-PyTorch building blocks: FIR resampling, equalized-lr layers, the modulated convolution."""

from opstylegan.nn.layers import Conv2dLayer, FullyConnectedLayer, bias_act
from opstylegan.nn.modconv import modulated_conv2d
from opstylegan.nn.resample import downsample2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "Conv2dLayer", "FullyConnectedLayer", "bias_act", "modulated_conv2d",
    "downsample2d", "setup_filter", "upfirdn2d", "upsample2d",
]
