"""NNI 3.0 plugin: the RLM as a surrogate for NNI's NDS model spaces.

- :class:`RLMStrategy`: a strategy that scores pools of samples with the RLM, trains only the best
  predicted ones and fine-tunes the RLM online on their results.
- :func:`rlm_filter`: for ``Chain(RegularizedEvolution(...), Filter(rlm_filter(...)))``, rejecting
  candidates predicted poor or over a latency budget before they are trained.
- :func:`detect_space`: which of our spaces an NNI model space is.

Needs the ``nni`` extra (``pip install 'rlm-nas[nni]'``).

>>> from nni.nas.hub.pytorch import DARTS
>>> from nni.nas.space import RawFormatModelSpace
>>> detect_space(RawFormatModelSpace.from_model(DARTS(width=16, num_cells=4)))
'darts'
"""

from rlm_nas.nni.filter import RLMFilter, rlm_filter
from rlm_nas.nni.strategy import RLMStrategy, detect_space, nni_genotype

__all__ = ["RLMStrategy", "RLMFilter", "rlm_filter", "detect_space", "nni_genotype"]
