"""Number tokenizer: exact round trip at the kept precision, clear range errors, and a grammar under
which every token string decodes to a finite float."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlm_nas.tokenizers.number import DIGIT0, MINUS, PAD, PLUS, VOCAB, NumberTokenizer

TOK = NumberTokenizer()  # 1 exponent digit, 4 mantissa digits
in_range = st.floats(min_value=TOK.min_abs, max_value=TOK.max_abs, allow_nan=False, allow_infinity=False)


def test_layout():
    assert len(VOCAB) == 13 and VOCAB[:3] == ("<pad>", "<+>", "<->") and VOCAB[DIGIT0] == "<0>"
    assert TOK.length == 7 and TOK.max_exponent == 9
    assert TOK.encode(93.456) == [PLUS, PLUS, DIGIT0 + 1, DIGIT0 + 9, DIGIT0 + 3, DIGIT0 + 4, DIGIT0 + 6]
    assert TOK.encode(-0.00012) == [MINUS, MINUS, DIGIT0 + 4, DIGIT0 + 1, DIGIT0 + 2, DIGIT0, DIGIT0]
    # the default covers 1e-6 .. 1e9 (and more) at 4 significant digits
    assert TOK.min_abs <= 1e-6 and TOK.max_abs >= 1e9


@settings(max_examples=400, deadline=None)
@given(in_range, st.booleans())
def test_round_trip_is_exact_at_kept_precision(x, negative):
    x = -x if negative else x
    expected = float(f"{x:.3e}")  # Python's correctly rounded 4-significant-digit value
    assert TOK.decode(TOK.encode(x)) == expected
    # and a second pass is the identity
    assert TOK.round(expected) == expected


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e3), st.sampled_from([(1, 3), (2, 4), (2, 6), (1, 1)]))
def test_round_trip_other_layouts(x, layout):
    tok = NumberTokenizer(*layout)
    assert tok.length == 2 + sum(layout)
    assert tok.decode(tok.encode(x)) == float(f"{x:.{layout[1] - 1}e}")


def test_zero_and_carry():
    assert TOK.decode(TOK.encode(0.0)) == 0.0
    assert TOK.decode(TOK.encode(-0.0)) == 0.0
    assert TOK.decode(TOK.encode(0)) == 0.0
    assert TOK.round(9.99951) == 10.0  # rounding carries into the exponent
    assert TOK.round(TOK.max_abs) == TOK.max_abs and TOK.round(-TOK.min_abs) == -TOK.min_abs


@pytest.mark.parametrize("bad", [1e10, -2.5e12, 1e-10, -3e-300, 9.9996e9])
def test_out_of_range_raises_never_clips(bad):
    with pytest.raises(ValueError, match="outside the representable range"):
        TOK.encode(bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_nan_and_inf_raise(bad):
    with pytest.raises(ValueError, match="must be finite"):
        TOK.encode(bad)


def test_non_numbers_and_bad_layouts_raise():
    with pytest.raises(ValueError, match="real number"):
        TOK.encode("12")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mantissa_digits"):
        NumberTokenizer(1, 0)
    with pytest.raises(ValueError, match="value #2"):
        TOK.encode_batch([1.0, 2.0, math.nan])


def test_grammar():
    g = TOK.grammar
    assert g.shape == (7, 13) and not g[:, PAD].any()
    assert TOK.allowed_tokens(0) == TOK.allowed_tokens(1) == [PLUS, MINUS]
    for p in range(2, 7):
        assert TOK.allowed_tokens(p) == list(range(DIGIT0, DIGIT0 + 10))
    with pytest.raises(ValueError, match="position"):
        TOK.allowed_tokens(7)


def test_every_grammar_string_decodes_to_a_finite_float():
    rng = np.random.default_rng(0)
    g = TOK.grammar
    # draw each position uniformly among its allowed tokens
    toks = np.stack([rng.choice(np.flatnonzero(g[p]), size=5000) for p in range(TOK.length)], axis=1)
    vals = TOK.decode_batch(toks)
    assert np.isfinite(vals).all()
    assert np.abs(vals).max() <= TOK.max_abs
    # the vectorized decoder agrees with the string form of each number
    for row, v in zip(toks[:300], vals[:300]):
        s = f"{'-' if row[0] == MINUS else ''}{row[-4] - DIGIT0}.{''.join(str(t - DIGIT0) for t in row[-3:])}e{'-' if row[1] == MINUS else ''}{row[2] - DIGIT0}"
        assert v == float(s)


def test_decode_rejects_ungrammatical_tokens():
    ok = TOK.encode(1.5)
    with pytest.raises(ValueError, match="position 0"):
        TOK.decode([DIGIT0] + ok[1:])
    with pytest.raises(ValueError, match="position 3"):
        TOK.decode(ok[:3] + [PLUS] + ok[4:])
    with pytest.raises(ValueError, match="shape"):
        TOK.decode(ok[:-1])
    with pytest.raises(ValueError, match="id 99"):
        TOK.decode(ok[:-1] + [99])


def test_value_order_walks_encoded_numbers_in_increasing_value():
    """Depth-first over the tree in ``value_order`` (reversed where ``order_reversed`` says) lists
    every number ``encode`` writes for a non-zero value in increasing order: what lets decoding by
    inverse CDF turn a level into a quantile."""
    tok = NumberTokenizer(exponent_digits=1, mantissa_digits=2)

    def walk(prefix):
        if len(prefix) == tok.length:
            yield prefix
            return
        p = len(prefix)
        negative = prefix[0] == MINUS if p > 0 else False
        negative_exponent = prefix[1] == MINUS if p > 1 else False
        order = tok.value_order(p)
        for t in order[::-1] if tok.order_reversed(p, negative, negative_exponent) else order:
            yield from walk(prefix + [t])

    strings = [s for s in walk([]) if s[3] != DIGIT0 and not (s[1] == MINUS and s[2] == DIGIT0)]
    assert len(strings) == 2 * 19 * 90  # signs x exponents -9..9 x normalized mantissas
    values = tok.decode_batch(strings)
    assert (np.diff(values) > 0).all()
    assert sorted(set(map(tuple, strings))) == sorted(tuple(tok.encode(v)) for v in values)
    with pytest.raises(ValueError, match="position"):
        tok.order_reversed(tok.length, False, False)
