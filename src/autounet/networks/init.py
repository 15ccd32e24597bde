"""Weight initialisation policy shared by all autounet networks.

Kaiming-normal with the LeakyReLU slope keeps activation variance roughly constant through
deep conv-norm-act stacks (He et al. 2015); zero biases make the start independent of the
bias draw. Normalisation layers keep torch's identity start (weight 1, bias 0).

Weights are drawn from a private generator in a fixed module order, with optional blocks
(`deferred`) drawn last: under the same seed, a network with an attention block switched
on starts with exactly the same weights in every layer it shares with the network without
it, so an ablation compares the block and nothing else.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@torch.no_grad()
def init_kaiming_normal(module: nn.Module, negative_slope: float = 0.01,
                        generator: torch.Generator | None = None) -> None:
    """Initialise one conv module in place (others are left alone); usable with `network.apply`.

    fan_in is taken as torch does (weight dim 1 x receptive field), also for transposed convs.
    """
    if isinstance(module, _CONV_TYPES):
        weight = module.weight
        fan_in = weight.shape[1] * math.prod(weight.shape[2:])
        std = nn.init.calculate_gain("leaky_relu", negative_slope) / math.sqrt(fan_in)
        weight.normal_(0.0, std, generator=generator)
        if module.bias is not None:
            module.bias.zero_()


def initialize_network(network: nn.Module, seed: int, deferred: tuple[type[nn.Module], ...] = (),
                       negative_slope: float = 0.01) -> None:
    """Kaiming-initialise every conv of `network` from `seed`; modules of `deferred` types go last."""
    generator = torch.Generator().manual_seed(seed)
    late = [m for m in network.modules() if deferred and isinstance(m, deferred)]
    inside_late = {id(sub) for m in late for sub in m.modules()}
    for module in network.modules():
        if id(module) not in inside_late:
            init_kaiming_normal(module, negative_slope, generator)
    for block in late:
        for module in block.modules():
            init_kaiming_normal(module, negative_slope, generator)
