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
from torch.func import functional_call


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

    The forward runs on the ``meta`` device (shapes only, no arithmetic, the module's own tensors
    untouched) and falls back to a real zero image when the module's forward creates CPU tensors
    that cannot mix with meta ones. The module is put in eval mode for the pass (a batch of one
    cannot go through BatchNorm in training mode) and its mode is restored afterwards.
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
        with torch.no_grad():
            try:
                # Replacing parameters and buffers by meta tensors of the same shape makes the
                # pass cost nothing but Python, whatever the network's size.
                meta = {k: torch.empty_like(v, device="meta") for k, v in module.state_dict(keep_vars=True).items()}
                functional_call(module, meta, (torch.zeros((1, *shape), device="meta"),))
            except (RuntimeError, NotImplementedError, TypeError):
                counter[0] = 0  # a partial meta pass may have counted some layers already
                device = next((p.device for p in module.parameters()), torch.device("cpu"))
                module(torch.zeros((1, *shape), device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return counter[0]


def genotype_counts(space, genotype) -> tuple[int, int]:
    """``(flops, params)`` of ``space.build(genotype)``, exact (see the module docstring).

    The network is built on the ``meta`` device (shapes only: nothing allocated or initialised),
    falling back to CPU for a builder or forward that cannot run there.
    """
    try:
        with torch.device("meta"):
            net = space.build(genotype)
        flops = count_flops(net, space.input_shape)
    except (RuntimeError, NotImplementedError, TypeError):
        net = space.build(genotype)
        flops = count_flops(net, space.input_shape)
    return flops, count_params(net)
