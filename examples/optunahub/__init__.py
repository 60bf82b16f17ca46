"""OptunaHub package: ``RLMSampler``, architecture search with a regression language model.

Load it with ``optunahub.load_local_module(package="optunahub", registry_root="examples")`` from
the repository root (``optunahub.load_module("samplers/rlm_nas")`` once registered); see README.md
and example.py.
"""

from rlm_nas.optuna import RLMSampler

__all__ = ["RLMSampler"]
