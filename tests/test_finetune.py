"""Few-shot fine-tuning to a metric the checkpoint has never seen: the function (accuracy gain,
time bound, RNG hygiene) and the CLI end to end."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from rlm_nas.core import Example
from rlm_nas.finetune import finetune, main
from search_spaces import get_space


def new_device(n: int = 16) -> list[Example]:
    """Latency of a new device: 2 ms plus 1 ms per 3x3 conv (so 2..8 ms)."""
    space = get_space("nb201")
    archs = [space.format(g) for g in space.sample(n, seed=7)]
    return [Example("nb201", a, "latency:newdev", 2.0 + a.count("nor_conv_3x3")) for a in archs]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny RLM that knows only ``latency:pixel3`` (weights untrained: the plumbing is under test)."""
    from rlm_nas.config import make_config
    from rlm_nas.convert import model_input
    from rlm_nas.model import RLM
    from rlm_nas.tokenizers.text import TextTokenizer

    texts = [model_input("nb201", g) for g in get_space("nb201").sample(8, seed=0)]
    config = make_config("tiny", max_input_tokens=256)
    rlm = RLM.create(config, TextTokenizer.train(texts, config.text_vocab_size), ["latency:pixel3"], seed=0)
    return rlm.save_pretrained(tmp_path_factory.mktemp("ck"))


def error(rlm, examples) -> float:
    pred = rlm.predict([e.arch for e in examples], ["latency:newdev"], space="nb201", num_samples=4, seed=0).median[:, 0]
    return float(np.mean(np.abs(pred - [e.value for e in examples])))


def test_finetune_learns_a_new_metric(checkpoint):
    from rlm_nas.model import RLM

    examples = new_device()
    rlm = RLM.from_pretrained(checkpoint)
    baseline = RLM.from_pretrained(checkpoint)
    baseline.add_metrics(["latency:newdev"])  # what the metric predicts before any training
    rng = torch.get_rng_state()
    info = {}
    out = finetune(rlm, examples, steps=40, max_seconds=300, lr=3e-3, seed=0, info=info)
    assert out is rlm and info["steps"] == 40
    assert torch.equal(rng, torch.get_rng_state())  # a search's own RNG stream is not disturbed
    assert "latency:newdev" in rlm.metrics and ("nb201", "latency:newdev") in rlm.known_pairs
    assert not rlm.predict([examples[0].arch], ["latency:newdev"], space="nb201", num_samples=1).extrapolated[0]
    before, after = error(baseline, examples), error(rlm, examples)
    # ms; no constant does better than the targets' median, so beating it needs the cells read
    values = np.array([e.value for e in examples])
    constant = float(np.mean(np.abs(values - np.median(values))))
    assert after < constant and after < 0.5 * before, (before, after, constant)


def test_finetune_is_bounded_in_time(checkpoint):
    from rlm_nas.model import RLM

    rlm = RLM.from_pretrained(checkpoint)
    info = {}
    t0 = time.monotonic()
    finetune(rlm, new_device(8), steps=100_000, max_seconds=1.0, info=info)
    assert time.monotonic() - t0 < 30 and 1 <= info["steps"] < 100_000
    with pytest.raises(ValueError, match="no examples"):
        finetune(rlm, [])


@pytest.mark.filterwarnings("ignore:.*truncated.*")  # the tiny checkpoint reads 256 tokens
def test_equivalents_show_cells_as_genotypes_of_the_same_network(checkpoint, monkeypatch):
    from rlm_nas.convert import equivalent_inputs, model_input
    from rlm_nas.model import RLM

    darts = get_space("darts")
    archs = [darts.format(g) for g in darts.sample(2, seed=0)]
    examples = [Example("darts", a, "latency:pixel3", 5.0) for a in archs]
    rlm, seen = RLM.from_pretrained(checkpoint), []
    loss = rlm.loss
    monkeypatch.setattr(rlm, "loss", lambda texts, *a: seen.extend(texts) or loss(texts, *a))
    finetune(rlm, examples, steps=20, max_seconds=300, seed=0, equivalents=4)
    allowed = {t for a in archs for t in equivalent_inputs("darts", a, 4)}
    assert set(seen) <= allowed and len(set(seen) - {model_input("darts", a) for a in archs}) > 0
    with pytest.raises(ValueError, match="equivalents must be a positive int .* got 0"):
        finetune(rlm, examples, equivalents=0)


def test_learning_rate_decays_to_a_tenth_over_the_step_budget(checkpoint, monkeypatch):
    from rlm_nas.model import RLM

    lrs = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]), step(self, *a, **k))[1])
    finetune(RLM.from_pretrained(checkpoint), new_device(8), steps=10, max_seconds=None, lr=1e-3)
    assert len(lrs) == 10 and lrs[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(1e-3 * (1 - 0.9 * 9 / 10))


def test_finetune_cli(checkpoint, tmp_path, capsys):
    from rlm_nas.model import RLM

    csv = tmp_path / "measured.csv"
    csv.write_text("arch,value\n" + "".join(f'"{e.arch}",{e.value}\n' for e in new_device(12)) + f'"{new_device(1)[0].arch}",NaN\n')
    out = tmp_path / "tuned"
    assert main(["--checkpoint", str(checkpoint), "--space", "nb201", "--metric", "latency:newdev", "--train", str(csv),
                 "--out", str(out), "--steps", "5"]) == 0
    printed = capsys.readouterr().out
    assert "12 rows (1 missing values skipped)" in printed and "NEW metric latency:newdev" in printed
    assert "latency:newdev" in RLM.from_pretrained(out).metrics
    csv.write_text("arch,value\n|x~0|,1\n")
    assert main(["--checkpoint", str(checkpoint), "--space", "nb201", "--metric", "latency:newdev", "--train", str(csv),
                 "--out", str(out)]) == 2
    assert "line 2: column arch" in capsys.readouterr().err


def test_new_device_starts_from_the_nearest_known_one(checkpoint, monkeypatch):
    """``finetune`` copies the embedding of the known device whose predictions rank the rows best."""
    from rlm_nas.core import Prediction
    from rlm_nas.finetune import nearest_metric
    from rlm_nas.model import RLM

    rlm = RLM.from_pretrained(checkpoint)
    rlm.add_metrics(["latency:twin", "accuracy:c10"])
    rlm.register_pairs([("nb201", "latency:pixel3"), ("nb201", "latency:twin"), ("nb201", "accuracy:c10")])
    examples = new_device(6)
    values = np.array([e.value for e in examples]) + np.arange(6) * 1e-3  # distinct

    def fake_predict(archs, metrics, **kw):  # twin ranks like the device, pixel3 the reverse
        assert list(metrics) == ["latency:pixel3", "latency:twin"]  # same kind and trained on nb201 only
        return Prediction(tuple(metrics), np.stack([-values, values], axis=1)[:, :, None])

    monkeypatch.setattr(rlm, "predict", fake_predict)
    assert nearest_metric(rlm, [Example(e.space, e.arch, e.metric, v) for e, v in zip(examples, values)]) == {"latency:newdev": "latency:twin"}
    monkeypatch.undo()

    rlm.add_metrics(["latency:newdev"], like={"latency:newdev": "latency:twin"})
    emb = rlm.module.decoder.embed_tokens.weight
    ids = rlm._metric_ids(["latency:twin", "latency:newdev"])
    assert torch.equal(emb[ids[0]], emb[ids[1]])
    with pytest.raises(ValueError, match="not a known metric"):
        rlm.add_metrics(["latency:other"], like={"latency:other": "latency:nope"})
    with pytest.raises(ValueError, match="init must be"):
        finetune(rlm, examples, init="closest")


def test_locate_only_mixes_known_devices_in_the_new_units(checkpoint, tmp_path, monkeypatch):
    """steps=0: the new device is reported as a weighted geometric mean of known devices (NNLS in
    log space), in its own units; a known device that ranks the rows backwards gets no weight."""
    import rlm_nas.finetune as F
    from rlm_nas.core import Prediction
    from rlm_nas.model import RLM

    rlm = RLM.from_pretrained(checkpoint)
    rlm.add_metrics(["latency:twin"])
    rlm.register_pairs([("nb201", "latency:pixel3"), ("nb201", "latency:twin")])
    examples = new_device(8)
    y = np.array([e.value for e in examples])
    raw = np.exp((np.log(y) - 1.0) / 2.0)  # pixel3's numbers: y = e * raw**2; twin's: 1 / raw
    calls = []

    def fake_predict(archs, metrics, **kw):
        calls.append(list(metrics))
        return Prediction(tuple(metrics), np.stack([raw, 1 / raw], axis=1)[:, :, None])

    monkeypatch.setattr(F, "nearest_metric", lambda rlm, ex, cache=None: {"latency:newdev": "latency:pixel3"})
    monkeypatch.setattr(rlm, "predict", fake_predict)
    info = {}
    finetune(rlm, examples, steps=0, info=info)
    monkeypatch.undo()
    assert info["steps"] == 0 and info["init"] == {"latency:newdev": "latency:pixel3"}
    assert calls == [["latency:pixel3", "latency:twin"]]  # the new metric itself is no candidate
    a, weights = rlm.calibration["latency:newdev"]
    assert np.isclose(a, 1.0) and weights.keys() == {"latency:pixel3"} and np.isclose(weights["latency:pixel3"], 2.0)
    # predict composes it sample by sample from the sources' decoded numbers
    archs = [e.arch for e in examples]
    out = rlm.predict(archs, ["latency:pixel3", "latency:newdev"], space="nb201", num_samples=1, temperature=0).median
    x = out[:, 0]
    assert np.allclose(out[:, 1], np.sign(x) * np.exp(1.0) * np.abs(x) ** 2.0)
    rlm.calibrate("latency:newdev", 0.5, {"latency:pixel3": 0.5, "latency:twin": 0.5})
    out = rlm.predict(archs, ["latency:pixel3", "latency:twin", "latency:newdev"], space="nb201", num_samples=2, seed=3).samples
    assert np.allclose(out[:, 2], np.sign(out[:, 0]) * np.exp(0.5) * np.sqrt(np.abs(out[:, 0] * out[:, 1])))
    loaded = RLM.from_pretrained(rlm.save_pretrained(tmp_path / "located"))
    assert loaded.calibration == rlm.calibration
    with pytest.raises(ValueError, match="exponents b >= 0"):
        rlm.calibrate("latency:newdev", 0.0, {"latency:pixel3": -1.0})
    with pytest.raises(ValueError, match="unknown metric 'latency:nope'"):
        rlm.calibrate("latency:newdev", 0.0, {"latency:nope": 1.0})
    # gradient steps on the metric drop the mixture: its own trained numbers are reported
    finetune(rlm, examples, steps=1)
    assert "latency:newdev" not in rlm.calibration

def test_locating_decodes_the_known_devices_once(checkpoint, monkeypatch):
    """steps=0: nearest_metric and fit_calibration share the known devices' predictions on the rows."""
    from rlm_nas.core import Prediction
    from rlm_nas.model import RLM

    rlm = RLM.from_pretrained(checkpoint)
    rlm.add_metrics(["latency:twin"])
    rlm.register_pairs([("nb201", "latency:pixel3"), ("nb201", "latency:twin")])
    examples = new_device(8)
    y = np.array([e.value for e in examples])
    calls = []

    def fake_predict(archs, metrics, **kw):
        calls.append(list(metrics))
        return Prediction(tuple(metrics), np.stack([1 / y, y**1.5], axis=1)[:, :, None])

    monkeypatch.setattr(rlm, "predict", fake_predict)
    info = {}
    finetune(rlm, examples, steps=0, info=info)
    monkeypatch.undo()
    assert calls == [["latency:pixel3", "latency:twin"]]
    assert info["init"] == {"latency:newdev": "latency:twin"}
    a, weights = rlm.calibration["latency:newdev"]
    assert weights.keys() == {"latency:twin"} and np.isclose(weights["latency:twin"], 1 / 1.5) and np.isclose(a, 0.0, atol=1e-9)
