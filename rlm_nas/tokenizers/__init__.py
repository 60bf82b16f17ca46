"""Tokenizers, kept apart from the weights: numbers (decoder side) and ONNX text (encoder side)."""

from rlm_nas.tokenizers.number import NumberTokenizer
from rlm_nas.tokenizers.text import TextTokenizer, length_stats, median_tokens

__all__ = ["NumberTokenizer", "TextTokenizer", "length_stats", "median_tokens"]
