"""RLM: decoder correctness, constrained sampling, learning, persistence, metrics and errors.

Everything uses the ``tiny`` config on synthetic line-oriented texts, so the file runs in well under
a minute on a shared 2-core CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import random

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from rlm_nas.config import ENCODERS, ModelConfig, make_config
from rlm_nas.model import N_NUM, RLM, CheckpointError, RLMModule
from rlm_nas.tokenizers import TextTokenizer
from rlm_nas.tokenizers.number import MINUS
from tests.rlm_fixtures import tiny_checkpoint, tiny_rlm  # noqa: F401  (pytest fixtures)

METRICS = ["accuracy:synth", "latency:synth"]
# Op lines and their contribution to the synthetic "accuracy"; latency counts convolutions.
OPS = {"Conv k3 p1 1 w": 3.0, "Conv k1 1 w": 1.5, "AveragePool k3 p1 1": 0.5, "Identity 1": 0.2, "Zero 1": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synth(n: int, seed: int) -> dict[str, tuple[float, float]]:
    """``n`` distinct texts -> (accuracy, latency): simple functions of the op lines."""
    rng, out = random.Random(seed), {}
    while len(out) < n:
        ops = [rng.choice(list(OPS)) for _ in range(6)]
        text = "synth\n\n" + "\n".join(f"n{i} = {op}" for i, op in enumerate(ops, 1))
        out[text] = (10 + sum(OPS[o] for o in ops), 0.1 * (1 + sum(o.startswith("Conv") for o in ops)))
    return out


@pytest.fixture(scope="module")
def data():
    return synth(900, seed=0)


@pytest.fixture(scope="module")
def tok(data):
    return TextTokenizer.train(list(data)[:700], vocab_size=256)


@pytest.fixture
def rlm(tok):
    model = RLM.create(make_config("tiny"), tok, METRICS, seed=0)
    model.register_pairs([("synth", m) for m in METRICS])
    return model


# --- the decoder --------------------------------------------------------------------------------
def test_decoder_matches_transformers_t5_and_kv_cache(rlm):
    """The folded cross-attention decoder equals HF's T5Stack run on per-row copies of the encoder
    states, and cached step-by-step decoding equals teacher forcing."""
    m = rlm.module.eval()
    ids, mask = rlm._pad([[5, 6, 7, 8, 9, 10], [5, 6, 7]])
    dec = torch.randint(3, N_NUM, (2, 2, 7), generator=torch.Generator().manual_seed(0))
    dec[..., 0] = torch.tensor([N_NUM, N_NUM + 1])
    with torch.no_grad():
        ours = m(ids, mask, dec)
        enc = m.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        h = m.decoder(
            input_ids=dec.view(4, 7),
            encoder_hidden_states=enc.repeat_interleave(2, 0),
            encoder_attention_mask=mask.repeat_interleave(2, 0),
        ).last_hidden_state
        ref = m.head(h).view(2, 2, 7, N_NUM) + m.grammar_bias
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        memory, cache, steps = m.encode(ids, mask), None, []
        for s in range(7):
            logits, cache = m.decode(dec[..., s : s + 1], memory, start=s, cache=cache)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, 2), ours, rtol=1e-5, atol=1e-5)


def test_untrained_samples_are_all_valid_numbers(rlm, data):
    texts = list(data)[:2]
    for temperature in (0.5, 1.0, 3.0):
        pred = rlm.predict(texts, METRICS, num_samples=1000, temperature=temperature, seed=1)
        assert pred.samples.shape == (2, 2, 1000)
        assert np.isfinite(pred.samples).all()
        assert np.abs(pred.samples).max() <= rlm.number_tokenizer.max_abs
    assert len(np.unique(pred.samples)) > 100  # sampling, not a constant


def test_random_draws_are_seeded_and_quantile_draws_deterministic(rlm, data):
    texts = list(data)[:5]
    a = rlm.predict(texts, METRICS, seed=3, draws="random").samples
    assert np.array_equal(a, rlm.predict(texts, METRICS, seed=3, draws="random").samples)
    assert not np.array_equal(a, rlm.predict(texts, METRICS, seed=4, draws="random").samples)
    q = rlm.predict(texts, METRICS, seed=3).samples
    assert np.array_equal(q, rlm.predict(texts, METRICS, seed=4).samples)
    assert (np.diff(q, axis=-1) >= 0).all()  # increasing levels give increasing quantiles
    greedy = rlm.predict(texts, METRICS, temperature=0, num_samples=3).samples
    assert (greedy == greedy[..., :1]).all()


def _exact_distribution(rlm, text, metric):
    """Every number string of ``rlm``'s grammar with its probability, in the order of the
    inverse-CDF walk (``NumberTokenizer.value_order``, reversed where ``order_reversed`` says)."""
    nt = rlm.number_tokenizer
    strings = [list(s) for s in itertools.product(*(nt.allowed_tokens(p) for p in range(nt.length)))]

    def walk_rank(s):
        rank = []
        for p, t in enumerate(s):
            order = nt.value_order(p)
            r = order.index(t)
            rank.append(len(order) - 1 - r if nt.order_reversed(p, s[0] == MINUS, s[1] == MINUS) else r)
        return rank

    strings.sort(key=walk_rank)
    dec = torch.tensor([[rlm._metric_ids([metric])[0]] + s[:-1] for s in strings])[None]
    with torch.no_grad():
        logp = torch.log_softmax(rlm.module.eval()(*rlm._pad(rlm._tokenize([text])), dec)[0].double(), -1)
    prob = logp.gather(-1, torch.tensor(strings)[..., None])[..., 0].sum(-1).exp().numpy()
    return nt.decode_batch(strings), prob


def test_quantile_draws_are_the_exact_quantiles_and_random_draws_the_distribution(tok, data):
    """Brute force over all 400 number strings of a 1-mantissa-digit layout: quantile draws are the
    strings whose cumulative-probability slice holds (i + 0.5) / k; random draws follow the
    distribution (Kolmogorov-Smirnov distance)."""
    rlm = RLM.create(make_config("tiny", mantissa_digits=1), tok, METRICS, seed=0)
    rlm.register_pairs([("synth", m) for m in METRICS])
    text = list(data)[0]
    for metric in METRICS:
        values, prob = _exact_distribution(rlm, text, metric)
        assert prob.sum() == pytest.approx(1.0, abs=1e-9)
        cum = np.cumsum(prob)
        k = 7
        expected = values[np.searchsorted(cum, (np.arange(k) + 0.5) / k, side="right")]
        got = rlm.predict([text], metric, num_samples=k).samples[0, 0]
        np.testing.assert_array_equal(got, expected)
        draws = rlm.predict([text], metric, num_samples=4000, draws="random", seed=0).samples[0, 0]
        grid = np.unique(values)
        exact_cdf = np.array([prob[values <= v].sum() for v in grid])
        empirical_cdf = np.searchsorted(np.sort(draws), grid, side="right") / len(draws)
        assert np.abs(exact_cdf - empirical_cdf).max() < 0.03  # KS 99% bound for n=4000 is 0.026


def test_predict_reuses_one_encoder_pass_per_batch(rlm, data, monkeypatch):
    calls = []
    original = rlm.module.encode
    monkeypatch.setattr(rlm.module, "encode", lambda ids, mask: calls.append(ids.shape[0]) or original(ids, mask))
    rlm.predict(list(data)[:10], METRICS, num_samples=8, batch_size=4)
    assert calls == [4, 4, 2]  # once per batch of architectures, shared by 2 metrics x 8 samples


# --- learning -----------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ENCODERS)
def test_tiny_model_learns_a_synthetic_ranking(tok, data, encoder):
    """A few hundred AdamW steps: Spearman > 0.9 on held-out texts, for both metrics."""
    texts = list(data)
    train, test = texts[:700], texts[700:]
    rlm = RLM.create(make_config("tiny", encoder=encoder), tok, METRICS, seed=0)
    rlm.register_pairs([("synth", m) for m in METRICS])
    steps = 600
    opt = torch.optim.AdamW(rlm.module.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)  # linear decay to 0
    rlm.module.train()
    for step in range(steps):
        batch = random.Random(step).sample(train, 16)
        loss = rlm.loss(batch, [METRICS] * 16, [list(data[t]) for t in batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert loss.item() < 0.2
    pred = rlm.predict(test, METRICS, num_samples=8)
    assert not pred.extrapolated.any()
    for j, metric in enumerate(METRICS):
        rho = spearmanr(pred.median[:, j], [data[t][j] for t in test]).statistic
        assert rho > 0.9, f"{metric}: held-out Spearman {rho:.3f}"


# --- persistence --------------------------------------------------------------------------------
def test_save_load_round_trip(rlm, data, tmp_path):
    texts = list(data)[:6]
    rlm.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = RLM.from_pretrained(tmp_path)
    assert loaded.metrics == rlm.metrics and loaded.known_pairs == rlm.known_pairs
    assert loaded.config == rlm.config
    a, b = rlm.predict(texts, METRICS, seed=7), loaded.predict(texts, METRICS, seed=7)
    assert np.array_equal(a.samples, b.samples)


def test_configs_without_an_encoder_field_load_as_t5(tok, data, tmp_path):
    """Checkpoints written before the encoder was a choice (the T5 default of 2026-11-25) still load."""
    rlm = RLM.create(make_config("tiny", encoder="t5"), tok, METRICS, seed=0)
    rlm.register_pairs([("synth", m) for m in METRICS])
    rlm.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["model_config"]["encoder"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = RLM.from_pretrained(tmp_path)
    assert loaded.config.encoder == "t5"
    texts = list(data)[:6]
    assert np.array_equal(rlm.predict(texts, METRICS, seed=7).samples, loaded.predict(texts, METRICS, seed=7).samples)


def test_the_training_step_settings_for_a_cpu_leave_the_loss_unchanged(rlm, data, monkeypatch):
    """Padding training batches to a multiple of PAD_MULTIPLE and the math attention kernel for
    short texts are for speed only: the loss is that of exact widths and the flash kernel."""
    import rlm_nas.model as M

    texts = list(data)[:8]
    values = [list(v) for v in data.values()][:8]

    def loss(pad_multiple: int, math_max: int):
        monkeypatch.setattr(M, "PAD_MULTIPLE", pad_multiple)
        monkeypatch.setattr(M, "MATH_ATTENTION_MAX_TOKENS", math_max)
        batch = rlm.make_batch(texts, [METRICS] * len(texts), values)
        assert batch["input_ids"].shape[1] % pad_multiple == 0
        with torch.no_grad():
            return rlm.module.train()(**batch).item(), batch["input_ids"].shape[1]

    multiple, math_max = M.PAD_MULTIPLE, M.MATH_ATTENTION_MAX_TOKENS
    (exact, width), (padded, padded_width) = loss(1, 0), loss(multiple, math_max)
    assert width < padded_width == multiple * -(-width // multiple)
    assert padded == pytest.approx(exact, rel=1e-5)
    # Inference keeps exact widths.
    assert rlm._pad(rlm._tokenize(texts))[0].shape[1] == width


def test_attention_dropout_is_its_own_field_and_older_checkpoints_keep_theirs():
    """``dropout`` no longer covers attention (its CPU cost); checkpoints saved before the split
    trained with attention dropout equal to ``dropout``, and a fine-tune of them keeps it."""
    cfg = make_config("tiny", dropout=0.1)
    assert (cfg.dropout, cfg.attention_dropout) == (0.1, 0.0)
    module = RLMModule(cfg, 64, 2)
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in module.encoder.modules())
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in module.encoder.modules())
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "attention_dropout"}
    assert ModelConfig.from_saved(old).attention_dropout == 0.1
    assert ModelConfig.from_saved(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ValueError, match=r"ModelConfig.attention_dropout must be a float in \[0, 1\), got 1.0"):
        make_config("tiny", attention_dropout=1.0)


def test_a_checkpoint_of_another_text_version_warns(rlm, tmp_path):
    """A model trained on texts of another version still loads, but says its predictions are off."""
    import warnings

    from search_spaces.text import TEXT_VERSION

    rlm.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["text_version"] == TEXT_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RLM.from_pretrained(tmp_path)
    meta["text_version"] = TEXT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=f"trained on canonical text version {TEXT_VERSION + 1}, this rlm_nas writes version {TEXT_VERSION}"):
        RLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoint_loads_as_float32(rlm, tmp_path, dtype):
    rlm.save_pretrained(tmp_path, dtype=dtype)
    loaded = RLM.from_pretrained(tmp_path)
    for (k, v), w in zip(loaded.module.state_dict().items(), rlm.module.state_dict().values()):
        assert v.dtype == torch.float32, k
        torch.testing.assert_close(v, w.to(getattr(torch, dtype)).float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        rlm.save_pretrained(tmp_path, dtype="int8")


def test_checkpoint_errors_name_the_file(rlm, tmp_path, monkeypatch):
    import rlm_nas.model

    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        RLM.from_pretrained(tmp_path / "nowhere")
    monkeypatch.setattr(rlm_nas.model, "DEFAULT_CHECKPOINT", tmp_path / "checkpoints" / "default")
    with pytest.raises(FileNotFoundError, match="checkpoints/default does not exist .*default checkpoint is not shipped"):
        RLM.from_pretrained("default")

    rlm.save_pretrained(tmp_path)
    cfg, weights = tmp_path / "config.json", tmp_path / "model.safetensors"
    good = cfg.read_text()

    cfg.write_text("{oops")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        RLM.from_pretrained(tmp_path)
    cfg.write_text(good.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        RLM.from_pretrained(tmp_path)
    meta = json.loads(good)
    meta["model_config"]["d_model"] = 96  # weights no longer fit the config
    cfg.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model.safetensors: tensor .* has shape"):
        RLM.from_pretrained(tmp_path)
    cfg.write_text(good.replace('"members": 1', '"members": 0'))
    with pytest.raises(CheckpointError, match="'members' is 0, expected an int >= 1"):
        RLM.from_pretrained(tmp_path)
    cfg.write_text(good)

    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        RLM.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors does not exist"):
        RLM.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json does not exist"):
        RLM.from_pretrained(tmp_path)
    cfg.unlink()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        RLM.from_pretrained(tmp_path)


# --- metrics, spaces and input errors -----------------------------------------------------------
def test_add_metrics_grows_vocabulary_and_predicts(rlm, data, tmp_path):
    emb = rlm.module.decoder.embed_tokens.weight.detach().clone()
    rlm.add_metrics(["latency:my-phone", "params", "latency:synth"])  # the existing one is skipped
    assert rlm.metrics == (*METRICS, "latency:my-phone", "params")
    new = rlm.module.decoder.embed_tokens.weight.detach()
    assert new.shape[0] == emb.shape[0] + 2 and torch.equal(new[: emb.shape[0]], emb)
    torch.testing.assert_close(new[-2], emb[N_NUM + 1])  # the mean of the one other latency metric
    torch.testing.assert_close(new[-1], emb[N_NUM:].mean(0))  # no other "params": mean of all
    pred = rlm.predict(list(data)[:3], ["latency:my-phone"], num_samples=4)
    assert np.isfinite(pred.samples).all() and pred.extrapolated.tolist() == [True]
    loss = rlm.loss(list(data)[:2], [["latency:my-phone"], ["params", "accuracy:synth"]], [[3.2], [1.5e6, 90.0]])
    loss.backward()
    assert rlm.module.decoder.embed_tokens.weight.grad[-2].abs().sum() > 0
    rlm.register_pairs([("synth", "latency:my-phone")])
    rlm.save_pretrained(tmp_path)
    loaded = RLM.from_pretrained(tmp_path)
    assert loaded.metrics == rlm.metrics and ("synth", "latency:my-phone") in loaded.known_pairs


def test_unknown_metric_and_space(rlm, data):
    texts = list(data)[:2]
    with pytest.raises(ValueError, match=r"unknown metric 'latency:mars'; this model knows: accuracy:synth, latency:synth"):
        rlm.predict(texts, ["latency:mars"])
    with pytest.raises(ValueError, match=r"unknown space 'mars'; known spaces: .*nb201.*synth"):
        rlm.predict(["Relu 1\nout 1"], METRICS, space="mars")
    with pytest.raises(ValueError, match=r"inputs\[0\] names unknown space 'mars'"):
        rlm.predict(["mars\n\nRelu 1"], METRICS)
    with pytest.raises(ValueError, match=r"inputs\[0\] \(int\) is not a model input"):
        rlm.predict([3], METRICS)
    with pytest.raises(ValueError, match="not a valid metric name"):
        rlm.add_metrics(["Latency On Mars"])
    with pytest.raises(ValueError, match="num_samples"):
        rlm.predict(texts, METRICS, num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        rlm.predict(texts, METRICS, temperature=-1)
    with pytest.raises(ValueError, match="draws must be one of 'quantiles', 'random', got 'sobol'"):
        rlm.predict(texts, METRICS, draws="sobol")
    with pytest.raises(ValueError, match="equivalents must be a positive int .* got 0"):
        rlm.predict(texts, METRICS, equivalents=0)


@pytest.mark.filterwarnings("ignore:.*truncated.*")  # the tiny checkpoint reads 256 tokens: enough here
def test_equivalents_average_the_quantiles_of_equivalent_genotypes(tiny_rlm):  # noqa: F811
    from search_spaces import get_space

    darts, nb201 = get_space("darts"), get_space("nb201")
    genotypes = darts.sample(2, seed=0)
    pred = tiny_rlm.predict(genotypes, ["latency:pixel3"], space="darts", num_samples=5, equivalents=4, batch_size=1)
    for i, g in enumerate(genotypes):
        each = tiny_rlm.predict(darts.equivalents(g, 4), ["latency:pixel3"], space="darts", num_samples=5, batch_size=1)
        assert len(each.samples) == 4  # the genotype and three swaps
        np.testing.assert_allclose(pred.samples[i, 0], np.sort(each.samples[:, 0], axis=-1).mean(axis=0))
    # no symmetry in NB201, and texts are read as given: one input each, whatever equivalents says
    archs = [nb201.format(g) for g in nb201.sample(3, seed=0)]
    for inputs, space in ((archs, "nb201"), ([darts.to_text(g) for g in genotypes], "darts")):
        np.testing.assert_array_equal(tiny_rlm.predict(inputs, ["params"], space=space, num_samples=3, equivalents=8).samples,
                                      tiny_rlm.predict(inputs, ["params"], space=space, num_samples=3).samples)


def test_ensemble_averages_its_members_quantiles_and_round_trips(rlm, tok, data, tmp_path):
    other = RLM.create(make_config("tiny"), tok, METRICS, seed=1)  # another run: other weights
    other.register_pairs([("synth", METRICS[0])])
    ens = RLM.ensemble([rlm, other])
    assert len(ens.member_modules) == 2 and "an ensemble of 2" in repr(ens)
    assert ens.known_pairs == {("synth", METRICS[0])}  # known only where every member is
    texts = list(data)[:5]
    for draws in ("quantiles", "random"):
        each = [m.predict(texts, METRICS, num_samples=6, draws=draws, seed=3).samples for m in (rlm, other)]
        pred = ens.predict(texts, METRICS, num_samples=6, draws=draws, seed=3)
        if draws == "quantiles":  # the same quantile levels in each member: their average, level by level
            np.testing.assert_allclose(pred.samples, np.mean(np.sort(each, axis=-1), axis=0))
        assert pred.samples.shape == (5, 2, 6) and np.isfinite(pred.samples).all()
    ens.save_pretrained(tmp_path, dtype="float16")
    loaded = RLM.from_pretrained(tmp_path)
    assert len(loaded.member_modules) == 2 and loaded.known_pairs == ens.known_pairs
    # float16 storage: close to, not equal to, the float32 ensemble
    np.testing.assert_allclose(loaded.predict(texts, METRICS).median, ens.predict(texts, METRICS).median, rtol=0.05)


def test_an_ensemble_trains_and_grows_every_member(rlm, tok, data):
    ens = RLM.ensemble([rlm, RLM.create(make_config("tiny"), tok, METRICS, seed=1)])
    ens.add_metrics(["latency:new"])
    assert all(m.decoder.embed_tokens.num_embeddings == N_NUM + 3 for m in ens.member_modules)
    before = [m.head.weight.detach().clone() for m in ens.member_modules]
    ens.loss(list(data)[:4], [["latency:new"]] * 4, [[1.0], [2.0], [3.0], [4.0]]).backward()
    torch.optim.SGD(ens.module.parameters(), lr=0.1).step()
    assert all(not torch.equal(b, m.head.weight) for b, m in zip(before, ens.member_modules))


def test_ensemble_members_must_share_tokenizer_and_metrics(rlm, tok, data):
    with pytest.raises(ValueError, match="at least two"):
        RLM.ensemble([rlm])
    with pytest.raises(ValueError, match="member #1's metrics differs"):
        RLM.ensemble([rlm, RLM.create(make_config("tiny"), tok, METRICS[:1], seed=1)])
    other_tok = TextTokenizer.train(list(data)[100:400], vocab_size=200)
    with pytest.raises(ValueError, match="member #1's text tokenizer differs.*--tokenizer"):
        RLM.ensemble([rlm, RLM.create(make_config("tiny"), other_tok, METRICS, seed=1)])


def test_an_ensemble_comes_apart_into_its_members_and_joins_runs_that_differ_in_dropout_alone(rlm, tok, data):
    other = RLM.create(make_config("tiny", dropout=0.1), tok, METRICS, seed=1)  # dropout acts in training only
    other.register_pairs(rlm.known_pairs)
    ens = RLM.ensemble([rlm, other])
    texts = list(data)[:5]
    for member, run in zip(ens.members, (rlm, other)):
        assert member.module is not run.module and member.known_pairs == ens.known_pairs
        np.testing.assert_array_equal(member.predict(texts, METRICS, num_samples=4).samples, run.predict(texts, METRICS, num_samples=4).samples)
    assert [m.config for m in rlm.members] == [rlm.config]
    with pytest.raises(ValueError, match="member #1's model config differs"):
        RLM.ensemble([rlm, RLM.create(make_config("tiny", d_ff=64), tok, METRICS, seed=1)])


def test_average_is_the_mean_of_the_weights_of_one_runs_checkpoints(rlm, tok, data):
    later = copy.deepcopy(rlm.module)  # a copy of rlm's weights, then one step on: a later checkpoint
    later_rlm = RLM(rlm.config, rlm.text_tokenizer, rlm.metrics, later)
    later_rlm.register_pairs(rlm.known_pairs)
    later_rlm.loss(list(data)[:4], [[METRICS[0]]] * 4, [[1.0], [2.0], [3.0], [4.0]]).backward()
    torch.optim.SGD(later.parameters(), lr=0.1).step()
    soup = RLM.average([rlm, later_rlm])
    for name, w in soup.module.state_dict().items():
        torch.testing.assert_close(w, (rlm.module.state_dict()[name] + later.state_dict()[name]) / 2)
    assert soup.module is not rlm.module and soup.known_pairs == rlm.known_pairs
    with pytest.raises(ValueError, match="at least two"):
        RLM.average([rlm])
    with pytest.raises(ValueError, match="model #1 is an ensemble"):
        RLM.average([rlm, RLM.ensemble([rlm, later_rlm])])
    with pytest.raises(ValueError, match="model #1's metrics differs"):
        RLM.average([rlm, RLM.create(make_config("tiny"), tok, METRICS[:1], seed=1)])


def test_extrapolated_flags_pairs_without_training_data(rlm, data):
    # canonical text given with its space: nb201 was never trained on, so every metric is a guess
    pred = rlm.predict(["Relu 1\nout 1"], METRICS, space="nb201", num_samples=2)
    assert pred.extrapolated.tolist() == [True, True]
    rlm.register_pairs([("nb201", "latency:synth")])
    pred = rlm.predict(["nb201\n\nRelu 1\nout 1"], METRICS, num_samples=2)
    assert pred.extrapolated.tolist() == [True, False]
    assert rlm.predict([], METRICS).samples.shape == (0, 2, 8)


def test_loss_errors_are_clear(rlm, data):
    texts = list(data)[:2]
    with pytest.raises(ValueError, match=r"architecture #1, metric 'latency:synth': .*must be finite"):
        rlm.loss(texts, [METRICS, METRICS], [[90.0, 1.0], [90.0, float("nan")]])
    with pytest.raises(ValueError, match=r"architecture #0, metric 'accuracy:synth': .*outside the representable range"):
        rlm.loss(texts, [METRICS, METRICS], [[1e12, 1.0], [90.0, 1.0]])
    with pytest.raises(ValueError, match="unknown metric 'flops'"):
        rlm.loss(texts, [["flops"], ["flops"]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="equal length"):
        rlm.loss(texts, [METRICS], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="architecture #0: metrics and values"):
        rlm.loss(texts, [METRICS, METRICS], [[1.0], [1.0, 2.0]])


def test_long_inputs_are_truncated_with_a_warning(tok):
    rlm = RLM.create(make_config("tiny", max_input_tokens=8), tok, METRICS)
    rlm.register_pairs([("synth", METRICS[0])])
    long = "synth\n\n" + "\n".join(f"n{i} = Conv k1 1 w" for i in range(40))
    with pytest.warns(UserWarning, match="truncated"):
        pred = rlm.predict([long], METRICS, space=None, num_samples=2)
    assert np.isfinite(pred.samples).all()


def test_make_config_errors():
    assert make_config("tiny").d_model < make_config("small").d_model < make_config("base").d_model
    with pytest.raises(ValueError, match="unknown model config 'huge'; allowed: tiny, small, base"):
        make_config("huge")
    with pytest.raises(ValueError, match="heads"):
        make_config("tiny", heads=3)
    with pytest.raises(ValueError, match="dropout"):
        make_config("tiny", dropout=1.5)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        make_config("tiny", width=3)
    with pytest.raises(ValueError, match="ModelConfig.encoder must be one of modernbert, t5, got 'lstm'"):
        make_config("tiny", encoder="lstm")


def test_interval_is_made_of_samples_so_one_wild_sample_cannot_stretch_it():
    from rlm_nas.core import Prediction

    # 8 samples, one decoded with a wrong exponent: an interpolated p90 would be ~8,900.
    samples = np.array([[[93.1, 93.4, 93.6, 93.8, 94.0, 94.2, 94.4, 2.97e4]]])
    p = Prediction(("accuracy:cifar10",), samples)
    assert p.p10[0, 0] == 93.4 and p.p90[0, 0] == 94.4
    assert p.p10[0, 0] <= p.median[0, 0] <= p.p90[0, 0]
