"""Any PyTorch module to a simplified ONNX model, for networks that no search space describes.

The search spaces build their ONNX graphs directly (:meth:`Space.to_onnx`, ~100x faster); this
path traces the module with ``torch.onnx.export`` (the TorchScript exporter, which needs no extra
package) and cleans the graph with ``onnxsim`` so that the canonical text
(:func:`search_spaces.text.onnx_to_text`) sees the network, not exporter artefacts.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch

#: Opset of the exported graphs (the spaces' direct graphs use the same).
OPSET = 17


def _channel_shuffle(g, x, groups):
    """ONNX for ``aten::channel_shuffle`` (FBNet's grouped blocks), which the exporter lacks.

    Reshape to (N, groups, C/groups, H*W), swap the two channel axes, reshape back to x's shape.
    """
    from torch.onnx import symbolic_helper as sh

    groups = sh._get_const(groups, "i", "groups")
    channels = sh._get_tensor_sizes(x)[1]
    split = g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0, groups, channels // groups, -1])))
    swapped = g.op("Transpose", split, perm_i=[0, 2, 1, 3])
    return g.op("Reshape", swapped, g.op("Shape", x))


torch.onnx.register_custom_op_symbolic("aten::channel_shuffle", _channel_shuffle, OPSET)


def export_onnx(module: torch.nn.Module, example_input: torch.Tensor | tuple) -> onnx.ModelProto:
    """Export ``module`` in eval mode with ``example_input`` (a tensor or a tuple of tensors).

    The graph is simplified with ``onnxsim`` (constant folding, shape-op cleanup); when
    simplification fails the exported graph is returned unchanged, since it is still valid.
    The module's train/eval mode is restored afterwards. Raises ``TypeError`` for arguments of
    the wrong type and ``ValueError`` when the module cannot be run or exported on the input.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"export_onnx: module must be a torch.nn.Module; got {type(module).__name__}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError(
            "export_onnx: example_input must be a tensor or a tuple of tensors, e.g. torch.zeros(1, 3, 32, 32); "
            f"got {type(example_input).__name__}"
        )
    was_training = module.training
    module.eval()  # BatchNorm/Dropout as at inference; eval also lets the exporter fold BN
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
            try:
                module(*args)  # a clear error for a wrong input, before the exporter's deep one
            except Exception as e:  # noqa: BLE001 - any failure of the user's forward
                shapes = ", ".join(str(tuple(a.shape)) for a in args)
                raise ValueError(f"export_onnx: the module fails on example_input of shape {shapes}: {e}") from e
            try:
                torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET)
            except Exception as e:  # noqa: BLE001 - unsupported ops and the like
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ValueError(f"export_onnx: torch.onnx.export failed: {type(e).__name__}: {first_line}") from e
    finally:
        module.train(was_training)
    model = onnx.load_model_from_string(buf.getvalue())
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if ok:
            model = simplified
    except Exception:  # noqa: BLE001 - onnxsim rejects some valid graphs; keep the exported one
        pass
    return model
