"""rlm-nas: a regression language model over canonical ONNX text, as a NAS surrogate."""

from rlm_nas.config import ModelConfig, make_config
from rlm_nas.core import Example, Prediction, check_metric

# Torch-heavy names load on first use, so `import rlm_nas` stays cheap for loaders and CLIs.
_LAZY = {
    "RLM": "rlm_nas.model",
    "CheckpointError": "rlm_nas.model",
    "NumberTokenizer": "rlm_nas.tokenizers",
    "TextTokenizer": "rlm_nas.tokenizers",
    "model_input": "rlm_nas.convert",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlm_nas' has no attribute {name!r}")


__all__ = ["Example", "Prediction", "check_metric", "ModelConfig", "make_config", *_LAZY]
