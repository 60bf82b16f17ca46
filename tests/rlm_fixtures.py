"""A tiny, untrained but real RLM checkpoint for plumbing tests (samplers, search CLI, examples).

Its predictions are valid numbers from a randomly initialized model: enough to test that every
piece is wired together, nothing about quality. Use it from a test module with::

    from tests.rlm_fixtures import tiny_checkpoint, tiny_rlm  # noqa: F401  (pytest fixtures)
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Every metric the CLI and the examples ask for, named as in the shipped checkpoint.
METRICS = ("accuracy:cifar10", "accuracy:cifar100", "latency:pixel3", "latency:1080ti_1", "params", "flops")
SPACES = ("nb201", "darts")


def make_tiny_checkpoint(directory: Path) -> Path:
    """Save a tiny RLM (tokenizer trained on a few texts of :data:`SPACES`) to ``directory``."""
    from rlm_nas.config import make_config
    from rlm_nas.convert import model_input
    from rlm_nas.model import RLM
    from rlm_nas.tokenizers import TextTokenizer
    from search_spaces import get_space

    texts = [model_input(s, g) for s in SPACES for g in get_space(s).sample(3, seed=0)]
    config = make_config("tiny", max_input_tokens=256)  # short inputs: fast CPU tests
    rlm = RLM.create(config, TextTokenizer.train(texts, vocab_size=config.text_vocab_size), METRICS, seed=0)
    return rlm.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Path (str) of the tiny checkpoint, saved once per test session."""
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_rlm")))


@pytest.fixture(scope="session")
def tiny_rlm(tiny_checkpoint):
    """The tiny checkpoint, loaded once per session (share it read-only: fine-tuning mutates it)."""
    from rlm_nas.model import RLM

    return RLM.from_pretrained(tiny_checkpoint)
