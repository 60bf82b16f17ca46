"""Architecture -> model input text, ``"{space}\\n\\n{canonical ONNX text}"``, with a cache.

Training visits the same architectures once per metric and per epoch, and search scores the same
candidates repeatedly, while export + canonicalization is the slow part of the pipeline; so texts
are cached by ``(space, native string)``. Importing this module does not import torch.
"""

from __future__ import annotations

import functools
from typing import Any

from search_spaces import get_space, onnx_to_text

#: Cached texts; ~2-5 KB each, so this bounds the cache to roughly 100-300 MB.
CACHE_SIZE = 65536


def _check_space_name(space: Any) -> str:
    name = getattr(space, "name", space)  # a Space object or its name
    if not isinstance(name, str) or not name or "\n" in name:
        raise ValueError(f"space must be a non-empty one-line name (e.g. 'nb201'), got {space!r}")
    return name


@functools.lru_cache(maxsize=CACHE_SIZE)
def _from_native(space: str, native: str) -> str:
    sp = get_space(space)
    return f"{space}\n\n{sp.to_text(sp.parse(native))}"


def model_input(space: Any, arch: Any) -> str:
    """The model input for ``arch`` in ``space`` (a space name or a ``Space``).

    ``arch`` may be a genotype of the space, its native one-line string (e.g. an NB201 arch string),
    an ``onnx.ModelProto``, or canonical text that is already converted (any multi-line string).
    Genotypes and native strings are cached; ONNX models and texts are not (nothing cheap to key by).
    """
    space = _check_space_name(space)
    if isinstance(arch, str):
        if "\n" in arch:  # native strings are one line by contract; canonical text is many
            return f"{space}\n\n{arch}"
        return _from_native(space, arch)
    if type(arch).__name__ == "ModelProto":  # avoid importing onnx just for isinstance
        return f"{space}\n\n{onnx_to_text(arch)}"
    return _from_native(space, get_space(space).format(arch))


def equivalent_archs(space: Any, arch: Any, n: int, seed: int = 0) -> list[str]:
    """Native strings of ``arch`` (a genotype or native string) and of up to ``n - 1`` other
    genotypes of the same network (:meth:`search_spaces.base.Space.equivalents`)."""
    sp = get_space(_check_space_name(space))
    genotype = sp.parse(arch) if isinstance(arch, str) else arch
    return [sp.format(g) for g in sp.equivalents(genotype, n, seed)]


def equivalent_inputs(space: Any, arch: Any, n: int, seed: int = 0) -> list[str]:
    """Model inputs of :func:`equivalent_archs`; ONNX models and texts have only their own."""
    space = _check_space_name(space)
    if n <= 1 or type(arch).__name__ == "ModelProto" or (isinstance(arch, str) and "\n" in arch):
        return [model_input(space, arch)]
    return [_from_native(space, a) for a in equivalent_archs(space, arch, n, seed)]


def clear_cache() -> None:
    """Drop cached texts (e.g. after changing the canonical text format in a session)."""
    _from_native.cache_clear()
