"""Parameter and FLOP counts of PyTorch networks.

Conventions (the same for every space, so the numbers are comparable):

* ``count_params``: number of elements of all parameters (trainable or not); buffers such as
  BatchNorm running statistics are not parameters and are not counted.
* ``count_flops``: multiply-accumulates (MACs) of ``Conv2d`` and ``Linear`` layers for ONE input
  image (batch 1); biases, normalisation, activations, pooling and additions are not counted.
  A convolution costs ``out_elements * in_channels / groups * kernel_h * kernel_w``; a linear
  layer costs ``out_elements * in_features``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    """Total number of parameter elements of ``module`` (see the module docstring)."""
    return sum(p.numel() for p in module.parameters())


def _macs_hook(counter: list[int]):
    def hook(layer: nn.Module, inputs, output) -> None:
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            counter[0] += output.numel() * (layer.in_channels // layer.groups) * kh * kw
        else:  # nn.Linear
            counter[0] += output.numel() * layer.in_features

    return hook


def count_flops(module: nn.Module, input_shape: Sequence[int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass on one ``input_shape`` image (batch dim excluded).

    The pass is a real one, on a zero image on the module's device: for these networks at batch 1
    it is 2-5x faster than a ``meta``-device pass, whose shape functions run in Python. The module
    is put in eval mode for the pass (a batch of one cannot go through BatchNorm in training mode)
    and its mode is restored afterwards.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"count_flops: input_shape must be positive ints like (3, 32, 32); got {input_shape!r}")
    counter = [0]
    handles = [
        m.register_forward_hook(_macs_hook(counter))
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = module.training
    module.eval()
    try:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        with torch.no_grad():
            module(torch.zeros((1, *shape), device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return counter[0]


def genotype_counts(space, genotype) -> tuple[int, int]:
    """``(flops, params)`` of ``space.build(genotype)``, exact (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):  # building initialises weights: keep the caller's RNG stream
        net = space.build(genotype)
    return count_flops(net, space.input_shape), count_params(net)
