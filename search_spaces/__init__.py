"""Search spaces for NAS: genotypes, samplers, real networks, direct ONNX export and canonical text.

>>> from search_spaces import get_space
>>> space = get_space("darts")
>>> g = space.sample(1, seed=0)[0]
>>> space.parse(space.format(g)) == g
True
"""

from __future__ import annotations

import functools
import importlib

from search_spaces.base import Space
from search_spaces.errors import InvalidGenotype

# name -> module that implements it; modules expose ``get(name) -> Space``. Imported lazily so
# `import search_spaces` stays cheap.
_REGISTRY = {
    "nasnet": "search_spaces.cell",
    "amoeba": "search_spaces.cell",
    "pnas": "search_spaces.cell",
    "enas": "search_spaces.cell",
    "darts": "search_spaces.cell",
    "nb301": "search_spaces.cell",
    "nb201": "search_spaces.nb201",
    "fbnet": "search_spaces.fbnet",
}
SPACE_NAMES: tuple[str, ...] = tuple(_REGISTRY)
#: The five NDS cell spaces (NNI 3.0 has the same spaces in ``nni.nas.hub.pytorch``).
NDS_SPACES: tuple[str, ...] = ("nasnet", "amoeba", "pnas", "enas", "darts")


@functools.cache
def get_space(name: str) -> Space:
    """The space registered as ``name`` (one of :data:`SPACE_NAMES`)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown space {name!r}; known spaces: {', '.join(SPACE_NAMES)}")
    return importlib.import_module(_REGISTRY[name]).get(name)


def onnx_to_text(model) -> str:
    """Canonical text of any ONNX model; see :mod:`search_spaces.text`."""
    from search_spaces.text import onnx_to_text as impl

    return impl(model)


def export_onnx(module, example_input):
    """Any torch module to a simplified ONNX model; see :mod:`search_spaces.export`."""
    from search_spaces.export import export_onnx as impl

    return impl(module, example_input)


__all__ = ["Space", "InvalidGenotype", "get_space", "SPACE_NAMES", "NDS_SPACES", "onnx_to_text", "export_onnx"]
