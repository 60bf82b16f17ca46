"""Tests of search_spaces.profile (params / MACs) and search_spaces.export (torch -> ONNX)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from search_spaces.profile import count_flops, count_params


class SmallNet(nn.Module):
    """Conv(3->8, 3x3, pad 1) -> depthwise Conv(8, 3x3, stride 2, pad 1, groups 8) -> BN -> pool -> Linear(8->10)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.bn(self.dw(torch.relu(self.conv(x))))
        return self.fc(x.mean((2, 3)))


# Hand counts for a 3x32x32 input:
#   conv: out 8x32x32 = 8192 elements, each 3*3*3 = 27 MACs  -> 221184
#   dw:   out 8x16x16 = 2048 elements, each (8/8)*3*3 = 9 MACs -> 18432
#   fc:   10 outputs, each 8 MACs                                -> 80
SMALL_MACS = 221184 + 18432 + 80
#   params: conv 8*3*3*3 + 8 = 224; dw 8*1*3*3 = 72; bn 8 + 8 = 16; fc 8*10 + 10 = 90
SMALL_PARAMS = 224 + 72 + 16 + 90


def test_count_params_hand_computed():
    assert count_params(SmallNet()) == SMALL_PARAMS


def test_count_flops_hand_computed_and_leaves_module_intact():
    net = SmallNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert count_flops(net) == SMALL_MACS
    assert net.training, "training mode must be restored"
    for k, v in net.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, before[k]), k
    # Spatial size scales the conv terms only: 3x64x64 has 4x the conv MACs, same fc MACs.
    assert count_flops(net, (3, 64, 64)) == 4 * (221184 + 18432) + 80


def test_count_flops_falls_back_when_forward_makes_cpu_tensors():
    class MakesTensors(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            # torch.ones on CPU cannot be added to a meta tensor: forces the real-input path.
            return self.fc(x.flatten(1) + torch.ones(4))

    assert count_flops(MakesTensors(), (4,)) == 2 * 4


def test_count_flops_rejects_bad_shape():
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(SmallNet(), (3, 0, 32))


# --- export_onnx -------------------------------------------------------------------------------
def test_export_onnx_small_cnn_matches_torch_and_has_text():
    import numpy as np
    import onnx
    import onnxruntime as ort

    from search_spaces import export_onnx, onnx_to_text

    net = SmallNet().train()
    x = torch.randn(2, 3, 32, 32)
    model = export_onnx(net, x)
    assert net.training, "the module's mode must be restored"
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    text = onnx_to_text(model)
    assert text.startswith("main: 3x32x32\n")
    assert "Conv k3 p1 m220k w > 8x32x32" in text  # 3 -> 8 channels, with bias
    assert "Conv k3 s2 p1 g8" in text and re.search(r"\nout m[0-9.]+[kMG]?\n$", text)


def test_export_onnx_errors():
    from search_spaces import export_onnx

    with pytest.raises(TypeError, match="torch.nn.Module"):
        export_onnx("not a module", torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        export_onnx(SmallNet(), [1, 2, 3])
    with pytest.raises(ValueError, match=r"fails on example_input of shape \(1, 5, 32, 32\)"):
        export_onnx(SmallNet(), torch.zeros(1, 5, 32, 32))


def test_export_onnx_channel_shuffle():
    import numpy as np
    import onnxruntime as ort

    from search_spaces import export_onnx

    net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ChannelShuffle(2), nn.Conv2d(8, 8, 3, padding=1, groups=2))
    x = torch.randn(1, 4, 6, 6)
    model = export_onnx(net, x)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, net(x).numpy(), rtol=1e-4, atol=1e-5)
