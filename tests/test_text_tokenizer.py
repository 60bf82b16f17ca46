"""Text tokenizer (BPE over model inputs) and the model-input converter."""

from __future__ import annotations

import random

import pytest

from rlm_nas.tokenizers.text import PAD_ID, TextTokenizer, length_stats, median_tokens

OPS = ["Conv k3 p1 1 w", "Conv k1 1 w", "AveragePool k3 p1 1", "BN 1 w w w w", "Relu 1", "Add 1 5"]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Line-oriented texts shaped like canonical ONNX text, with the model-input prefix."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lines = [f"main: 3x32x32"] + [rng.choice(OPS) + (f" > {rng.choice([16, 32, 64])}x8x8" if rng.random() < 0.3 else "") for _ in range(rng.randint(5, 15))]
        out.append("nb201\n\n" + "\n".join(lines + ["out 1"]))
    return out


@pytest.fixture(scope="module")
def texts():
    return synthetic_texts(300)


@pytest.mark.parametrize("pre", ["line", "word"])
def test_train_and_encode(texts, pre):
    tok = TextTokenizer.train(texts, vocab_size=300, pre_tokenizer=pre)
    assert 100 < tok.vocab_size <= 300
    ids = tok.encode(texts[:10])
    assert len(ids) == 10 and all(ids) and all(isinstance(i, int) for x in ids for i in x)
    assert all(PAD_ID not in x for x in ids)  # pad never appears inside a text, so it can pad
    assert all(len(x) <= 5 for x in tok.encode(texts[:10], max_length=5))
    assert tok.encode(texts[:10], max_length=5) == [x[:5] for x in ids]


def test_line_pretokenizer_gives_shorter_sequences(texts):
    train, test = texts[:200], texts[200:]
    line = median_tokens(TextTokenizer.train(train, 300, "line"), test)
    word = median_tokens(TextTokenizer.train(train, 300, "word"), test)
    assert line < word
    stats = length_stats(TextTokenizer.train(train, 300, "line"), test)
    assert stats["median"] == line <= stats["p90"] <= stats["max"]


def test_unseen_ascii_is_not_unknown(texts):
    tok = TextTokenizer.train(texts, vocab_size=300)
    ids = tok.encode(["fbnet\n\nQLinearConv ~{}|"])[0]
    assert 1 not in ids  # <unk>: every printable ASCII character is in the base alphabet


def test_save_load_round_trip(texts, tmp_path):
    tok = TextTokenizer.train(texts, vocab_size=300)
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    loaded = TextTokenizer.load(tmp_path)
    assert loaded == tok and loaded.vocab_size == tok.vocab_size
    assert loaded.encode(texts[-5:]) == tok.encode(texts[-5:])


def test_errors(texts, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is corrupt"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="pre_tokenizer 'char' is unknown; allowed: line, word"):
        TextTokenizer.train(texts, 300, "char")
    with pytest.raises(ValueError, match="vocab_size"):
        TextTokenizer.train(texts, 10)
    with pytest.raises(TypeError, match="list of texts"):
        TextTokenizer.train(texts, 300).encode("nb201\n\nRelu 1")


# --- converter ----------------------------------------------------------------------------------
def test_model_input_prefixes_and_caches():
    from rlm_nas.convert import model_input

    assert model_input("nb201", "Relu 1\nout 1") == "nb201\n\nRelu 1\nout 1"
    with pytest.raises(ValueError, match="one-line name"):
        model_input("nb\n201", "Relu 1\nout 1")
    with pytest.raises(ValueError, match="unknown space 'nope'"):
        model_input("nope", "|none~0|")  # a native string needs the space to parse it


def test_model_input_from_genotype_native_string_and_onnx():
    from rlm_nas.convert import _from_native, model_input
    from search_spaces import get_space, onnx_to_text

    space = get_space("nb201")
    g = space.sample(1, seed=3)[0]
    text = model_input("nb201", g)
    assert text.startswith("nb201\n\n") and text == "nb201\n\n" + space.to_text(g)
    hits = _from_native.cache_info().hits
    assert model_input("nb201", space.format(g)) is text  # the native string hits the same cache entry
    assert _from_native.cache_info().hits == hits + 1
    assert model_input(space, space.to_onnx(g)) == "nb201\n\n" + onnx_to_text(space.to_onnx(g))
