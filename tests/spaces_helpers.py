"""Helpers shared by the search-space tests (test_nb201.py, test_fbnet.py, test_cell_spaces.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn


def run_onnx(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    """``model``'s output on ``x`` (its input is named ``input``), run single-threaded."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options).run(None, {"input": x.numpy()})[0]


def randomize_bn(net: nn.Module) -> nn.Module:
    """``net`` in eval mode with non-trivial BatchNorm statistics and affine parameters, so that
    evaluation-mode BN is really checked."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return net.eval()


def assert_onnx_matches_torch(space: Any, g: Any, x: torch.Tensor | None = None) -> np.ndarray:
    """``space.to_onnx(g)``, given the weights of ``space.build(g)`` (BN randomized), is a valid
    model that computes what the torch network does on ``x``, to 1e-4; returns the ONNX output.

    ``x`` defaults to a batch of 2 images drawn from torch's global generator after the network
    is built (so a seed set before the call fixes both the weights and the input).
    """
    net = randomize_bn(space.build(g))
    if x is None:
        x = torch.randn(2, *space.input_shape)
    model = space.to_onnx(g, weights=net, batch_size=len(x))
    onnx.checker.check_model(model, full_check=True)
    with torch.no_grad():
        expected = net(x).numpy()
    got = run_onnx(model, x)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    return got


def leaf_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """FLOPs of one leaf module's call, as the published NB201 and FBNet tables count them:
    Conv2d / Linear: multiply-accumulates, no biases; BatchNorm2d: 2 per output element; ReLU: 1
    per element; AvgPool2d: kernel_h * kernel_w per output element; AdaptiveAvgPool2d: 1 per input
    element; anything else: 0."""
    n = output.numel()
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return n * module.weight[0].numel()  # fan-in of one output element
    if isinstance(module, nn.BatchNorm2d):
        return 2 * n
    if isinstance(module, nn.ReLU):
        return n
    if isinstance(module, nn.AvgPool2d):
        return n * module.kernel_size**2
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return inputs[0].numel()
    return 0


def costs_by_part(
    net: nn.Module, part_of: Callable[[str], str], uncounted: Collection[nn.Module] = ()
) -> tuple[Counter, Counter]:
    """FLOPs (:func:`leaf_flops`) and params of ``net`` on one 32x32 image, summed per
    ``part_of(leaf module name)``; the leaf modules in ``uncounted`` count for neither."""
    flops, params = Counter(), Counter()
    handles = []
    for name, m in net.named_modules():
        if next(m.children(), None) is None and m not in uncounted:
            part = part_of(name)
            params[part] += sum(p.numel() for p in m.parameters())
            hook = lambda m, i, o, part=part: flops.update({part: leaf_flops(m, i, o)})  # noqa: E731
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    return flops, params
