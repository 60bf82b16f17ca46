"""BPE tokenizer for the encoder's input, ``"{space}\\n\\n{canonical ONNX text}"``.

Kept apart from the model weights (as in regress-lm): it is trained once on canonical texts and
saved as a single ``tokenizer.json`` next to the checkpoint.

Pre-tokenization decides what BPE may merge. The canonical text is line-oriented and very
repetitive (the same node lines recur across thousands of architectures), so the default
``"line"`` makes every line (with its newline) one pre-token: frequent whole lines become single
tokens and rare ones fall back to sub-line pieces. ``"word"`` splits at spaces as well (longer
sequences, more shared sub-structure); :func:`length_stats` compares them on real texts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1  # fixed by the order of special tokens at training time
PRE_TOKENIZERS = ("line", "word")
FILE_NAME = "tokenizer.json"
# Printable ASCII plus newline: always in the alphabet, so an unseen character in a new space's
# text still gets a character token instead of <unk>.
_ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]


def _pre_tokenizer(kind: str):
    if kind == "line":
        return pre_tokenizers.Split(Regex("\n"), behavior="merged_with_previous")
    if kind == "word":
        return pre_tokenizers.Split(Regex("[ \n]"), behavior="merged_with_previous")
    raise ValueError(f"pre_tokenizer {kind!r} is unknown; allowed: {', '.join(PRE_TOKENIZERS)}")


class TextTokenizer:
    """A trained BPE over model-input texts. Build with :meth:`train` or :meth:`load`."""

    def __init__(self, tokenizer: Tokenizer):
        if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
            raise ValueError(f"text tokenizer must have {PAD_TOKEN} as id {PAD_ID} and {UNK_TOKEN} as id {UNK_ID}")
        self._tok = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, pre_tokenizer: str = "line") -> "TextTokenizer":
        """Train a BPE with (at most) ``vocab_size`` tokens on ``texts`` (full model inputs)."""
        if not isinstance(vocab_size, int) or vocab_size < len(_ALPHABET) + 2:
            raise ValueError(f"vocab_size must be an int >= {len(_ALPHABET) + 2} (the base alphabet), got {vocab_size!r}")
        tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        tok.pre_tokenizer = _pre_tokenizer(pre_tokenizer)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD_TOKEN, UNK_TOKEN],
            initial_alphabet=_ALPHABET,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids of each text (unpadded; the model pads), truncated to ``max_length``."""
        if isinstance(texts, str):
            raise TypeError("TextTokenizer.encode takes a list of texts, got a single str")
        ids = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        return ids if max_length is None else [x[:max_length] for x in ids]

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizer.json``; returns its path."""
        path = Path(directory) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "TextTokenizer":
        """Read ``directory/tokenizer.json``; a missing or corrupt file raises naming it."""
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"text tokenizer file {path} does not exist")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"text tokenizer file {path} is corrupt or not a tokenizer: {err}") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, TextTokenizer) and json.loads(self._tok.to_str()) == json.loads(other._tok.to_str())

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size})"


def length_stats(tokenizer: TextTokenizer, texts: Sequence[str]) -> dict[str, float]:
    """Tokens per text: ``median`` (the number to report per architecture), ``p90``, ``max``."""
    n = np.array([len(x) for x in tokenizer.encode(texts)])
    return {"median": float(np.median(n)), "p90": float(np.quantile(n, 0.9)), "max": float(n.max())}


def median_tokens(tokenizer: TextTokenizer, texts: Sequence[str]) -> float:
    """Median number of tokens per text (e.g. per architecture of one space)."""
    return length_stats(tokenizer, texts)["median"]
