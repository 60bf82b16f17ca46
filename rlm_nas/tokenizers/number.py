"""Normalization-free number tokenizer: a float is written as a fixed-length string of tokens.

Layout (default 1 exponent digit, 4 mantissa digits, so 7 tokens)::

    <+|->  <+|->  <e>...  <d0> <d1> <d2> <d3>        value = sign * d0.d1d2d3 * 10^(exp sign * e)
    sign   exp    exponent mantissa

The exponent comes first so the decoder commits to the order of magnitude before the digits. No
per-metric normalization is needed: accuracies (~90), latencies (~1e-1..1e3 ms) and FLOPs (~1e8)
share one vocabulary. The grammar is position-only (each position has a fixed allowed set), so every
token string the grammar accepts decodes to a finite float; :attr:`NumberTokenizer.grammar` is the
mask that constrained decoding applies at each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The 13-token vocabulary; ids are positions in this tuple. ``<pad>`` is never emitted.
VOCAB: tuple[str, ...] = ("<pad>", "<+>", "<->") + tuple(f"<{d}>" for d in range(10))
PAD, PLUS, MINUS = 0, 1, 2
DIGIT0 = 3  # id of "<0>"; digit d has id DIGIT0 + d


@dataclass(frozen=True)
class NumberTokenizer:
    """Floats <-> fixed-length token ids; see the module docstring.

    Args:
        exponent_digits: digits of the base-10 exponent (1 -> exponents -9..9).
        mantissa_digits: significant digits kept (4 -> d.ddd).
    """

    exponent_digits: int = 1
    mantissa_digits: int = 4

    def __post_init__(self):
        for name in ("exponent_digits", "mantissa_digits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 8:
                raise ValueError(f"NumberTokenizer.{name} must be an int in 1..8, got {v!r}")

    # --- layout -----------------------------------------------------------------------------
    @property
    def vocab(self) -> tuple[str, ...]:
        return VOCAB

    @property
    def length(self) -> int:
        """Tokens per number: sign, exponent sign, exponent digits, mantissa digits."""
        return 2 + self.exponent_digits + self.mantissa_digits

    @property
    def max_exponent(self) -> int:
        return 10**self.exponent_digits - 1

    @property
    def min_abs(self) -> float:
        """Smallest non-zero magnitude representable with full precision (1 * 10^-max_exponent)."""
        return 10.0**-self.max_exponent

    @property
    def max_abs(self) -> float:
        """Largest magnitude: 9.99..9 * 10^max_exponent."""
        return float(f"{'9.' + '9' * (self.mantissa_digits - 1)}e{self.max_exponent}")

    def allowed_tokens(self, position: int) -> list[int]:
        """Token ids the grammar allows at ``position`` (0-based) of a number."""
        if not 0 <= position < self.length:
            raise ValueError(f"number token position must be in 0..{self.length - 1}, got {position}")
        if position < 2:  # value sign, exponent sign
            return [PLUS, MINUS]
        return list(range(DIGIT0, DIGIT0 + 10))

    def value_order(self, position: int) -> list[int]:
        """The allowed ids at ``position`` in the order of the values they lead to, for a number whose
        sign and exponent sign are ``+`` (:meth:`order_reversed` says when the order runs backwards).

        Decoding by inverse CDF walks the tokens in this order, so a quantile level picks a value.
        """
        return [MINUS, PLUS] if position < 2 else self.allowed_tokens(position)

    def order_reversed(self, position: int, negative, negative_exponent):
        """Whether :meth:`value_order` runs backwards at ``position`` given the number's sign and its
        exponent's sign, elementwise (bools, or bool arrays/tensors).

        A minus sign reverses every later position (a larger magnitude is a smaller value); a minus
        exponent also reverses the exponent digits (a larger digit is a smaller magnitude). Walking
        the tree this way visits the strings ``encode`` writes for non-zero values (leading mantissa
        digit 1-9, exponent 0 as ``+0``) in increasing value. Zero and the strings ``encode`` never
        writes (exponent ``-0``, another exponent with a leading 0) sit where the tree puts them:
        harmless while the model gives them almost no probability, which training teaches it.
        """
        if not 0 <= position < self.length:
            raise ValueError(f"number token position must be in 0..{self.length - 1}, got {position}")
        if position == 0:
            return negative & False
        if 2 <= position < 2 + self.exponent_digits:
            return negative ^ negative_exponent
        return negative

    @property
    def grammar(self) -> np.ndarray:
        """Boolean mask ``(length, 13)``: ``grammar[p, t]`` is True iff token ``t`` may follow at ``p``."""
        mask = np.zeros((self.length, len(VOCAB)), dtype=bool)
        for p in range(self.length):
            mask[p, self.allowed_tokens(p)] = True
        return mask

    # --- encode / decode --------------------------------------------------------------------
    def encode(self, value: float) -> list[int]:
        """Token ids of ``value`` rounded to ``mantissa_digits`` significant digits.

        Raises ValueError for NaN, inf, and magnitudes outside ``[min_abs, max_abs]`` (0 is fine):
        clipping would silently train the model on a wrong target.
        """
        try:
            if isinstance(value, (str, bytes)):  # float("12") would parse; a label must be a number
                raise TypeError
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"number tokenizer: value must be a real number, got {value!r}") from None
        if not math.isfinite(x):
            raise ValueError(f"number tokenizer: value must be finite, got {x!r}")
        m, e = self.mantissa_digits, self.exponent_digits
        if x == 0.0:
            return [PLUS, PLUS] + [DIGIT0] * (e + m)
        # Python's formatting rounds correctly (half-even on the exact binary value), and carries
        # 9.9995 up to 1.000e+01, so the exponent it prints is the one of the rounded value.
        mant, exp = f"{abs(x):.{m - 1}e}".split("e")
        exp_i = int(exp)
        if abs(exp_i) > self.max_exponent:
            raise ValueError(
                f"number tokenizer: |value| of {x!r} is outside the representable range "
                f"[{self.min_abs:g}, {self.max_abs:g}] (exponent_digits={e}, mantissa_digits={m}); "
                "rescale the metric (e.g. to ms or millions) or use more exponent digits"
            )
        digits = mant.replace(".", "")
        return (
            [MINUS if x < 0 else PLUS, MINUS if exp_i < 0 else PLUS]
            + [DIGIT0 + int(c) for c in f"{abs(exp_i):0{e}d}"]
            + [DIGIT0 + int(c) for c in digits]
        )

    def encode_batch(self, values: Sequence[float]) -> np.ndarray:
        """``(n, length)`` int64 ids of ``values``; the error names the index of a bad value."""
        out = np.empty((len(values), self.length), dtype=np.int64)
        for i, v in enumerate(values):
            try:
                out[i] = self.encode(v)
            except ValueError as err:
                raise ValueError(f"value #{i}: {err}") from None
        return out

    def decode_batch(self, tokens: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """Floats of an ``(n, length)`` array of grammar-valid ids (vectorized).

        The result is the correctly rounded float of the decimal string whenever
        ``|exponent - mantissa_digits + 1| <= 22`` (powers of ten up to 1e22 are exact doubles, so
        one multiply or divide rounds once); this holds for the default layout.
        """
        t = np.asarray(tokens, dtype=np.int64)
        if t.ndim != 2 or t.shape[1] != self.length:
            raise ValueError(f"number tokens must have shape (n, {self.length}), got {t.shape}")
        in_vocab = (t >= 0) & (t < len(VOCAB))
        bad = ~(in_vocab & self.grammar[np.arange(self.length), t.clip(0, len(VOCAB) - 1)])
        if bad.any():
            i, p = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"number tokens row {i} position {p}: id {int(t[i, p])} is not allowed there; allowed: {self.allowed_tokens(p)}"
            )
        e, m = self.exponent_digits, self.mantissa_digits
        place = lambda k: 10 ** np.arange(k - 1, -1, -1, dtype=np.int64)  # noqa: E731  (digit weights)
        exp = (t[:, 2 : 2 + e] - DIGIT0) @ place(e)
        exp = np.where(t[:, 1] == MINUS, -exp, exp)
        mant = ((t[:, 2 + e :] - DIGIT0) @ place(m)).astype(np.float64)  # integer d0d1..d(m-1), exact
        k = exp - (m - 1)
        scale = 10.0 ** np.abs(k).astype(np.float64)
        val = np.where(k >= 0, mant * scale, mant / scale)
        return np.where(t[:, 0] == MINUS, -val, val)

    def decode(self, tokens: Sequence[int]) -> float:
        """Float of one number's token ids (inverse of :meth:`encode` to the kept precision)."""
        return float(self.decode_batch([list(tokens)])[0])

    def round(self, value: float) -> float:
        """``value`` at the kept precision, i.e. ``decode(encode(value))``."""
        return self.decode(self.encode(value))
