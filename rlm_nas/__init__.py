"""rlm-nas: a regression language model over canonical ONNX text, as a NAS surrogate."""

from rlm_nas.core import Example, Prediction, check_metric

__all__ = ["Example", "Prediction", "check_metric"]
