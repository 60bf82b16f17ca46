"""Optuna integration: :class:`RLMSampler` proposes architectures the RLM predicts to be good."""

from rlm_nas.optuna.sampler import RLMSampler

__all__ = ["RLMSampler"]
