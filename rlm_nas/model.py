"""The regression language model: an encoder over ONNX text, a small T5 decoder writing numbers.

Decoder vocabulary = the 13 number tokens + one token per metric. A decoder sequence is
``[<metric>, n0, ..., n(L-2)]`` predicting ``[n0, ..., n(L-1)]`` (L = number length), so one
encoder pass serves every metric (and every sample) of an architecture.

Both stacks are ``transformers`` modules: the encoder a ``ModernBertModel`` (rotary positions; see
``ModelConfig.encoder``) or, in checkpoints before 2026-11-30, a ``T5Stack``, run by their own
forward; the decoder a ``T5Stack`` (weights, norms, feed-forward, relative position buckets)
whose forward is written here (:meth:`RLMModule.decode`) for one reason: cross-attention folds
all rows (metrics x samples) of an architecture into the query axis, ``(N, rows * t, d)`` against
``(N, L_enc, d)``, so encoder states and their keys/values are computed once per architecture and
never copied per row. Copying them per row would cost more than the encoder itself at 25 metrics x
8 samples. Self-attention keys/values are cached as plain tensors while sampling.

The number grammar (:attr:`NumberTokenizer.grammar`) is added to the logits as a ``-inf`` mask in
training and sampling alike, so the loss is the likelihood of the constrained distribution that
decoding samples from, and every sample is a valid number.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import ModernBertConfig, ModernBertModel, T5Config
from transformers.models.t5.modeling_t5 import T5Stack

from rlm_nas.config import ModelConfig
from rlm_nas.core import DRAWS, Prediction, check_metric
from rlm_nas.tokenizers.number import VOCAB as NUMBER_VOCAB
from rlm_nas.tokenizers.number import MINUS, NumberTokenizer
from rlm_nas.tokenizers.text import PAD_ID, TextTokenizer

FORMAT = "rlm-nas"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"
N_NUM = len(NUMBER_VOCAB)  # decoder ids 0..12 are number tokens; metric j has id N_NUM + j
PAD_MULTIPLE = 32  # a training batch's texts are padded to a multiple of this many tokens (RLM.make_batch)
_NEG = torch.finfo(torch.float32).min  # additive mask value; finite, so fully masked rows give no NaN


def checkpoint_dir(checkpoint: str | Path) -> Path:
    """The folder a ``--checkpoint`` value names: ``"default"`` is the shipped one."""
    return DEFAULT_CHECKPOINT if str(checkpoint) == "default" else Path(checkpoint)


def _t5_config(cfg: ModelConfig, vocab_size: int, decoder: bool) -> T5Config:
    return T5Config(
        vocab_size=vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.decoder_layers if decoder else cfg.encoder_layers,
        num_heads=cfg.heads,
        dropout_rate=cfg.dropout,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        feed_forward_proj="gelu",
        is_decoder=decoder,
        use_cache=False,
        attn_implementation="sdpa",
    )


def _encoder(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    """The encoder stack ``cfg.encoder`` names; either is called as ``(input_ids, attention_mask)``."""
    if cfg.encoder == "t5":
        return T5Stack(_t5_config(cfg, vocab_size, decoder=False))
    return ModernBertModel(ModernBertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_input_tokens,
        # Every layer attends globally: texts are short (<= ~500 tokens) and references span cells.
        layer_types=["full_attention"] * cfg.encoder_layers,
        # The usual 10,000: ModernBERT's 160,000 is for 8K-token contexts.
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        embedding_dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        mlp_dropout=cfg.dropout,
        pad_token_id=PAD_ID,
        bos_token_id=None, eos_token_id=None, cls_token_id=None, sep_token_id=None,
        attn_implementation="sdpa",
    ))


#: In training on a CPU, texts up to this many tokens (NB201's ~110) run the encoder's attention
#: as plain matmuls and softmax: at NB201's length the backward of PyTorch's CPU flash-attention
#: kernel made a training step a third slower (a batch of 8: 110 against 80 ms; bf16, one thread,
#: Xeon with AMX). At FBNet's ~280 tokens and the cells' ~370, and in inference, flash is faster.
#: The choice made in the forward pass also fixes the backward's kernel.
MATH_ATTENTION_MAX_TOKENS = 192


def _attention_backend(input_ids: torch.Tensor, training: bool):
    if training and input_ids.device.type == "cpu" and input_ids.shape[1] <= MATH_ATTENTION_MAX_TOKENS:
        return sdpa_kernel(SDPBackend.MATH)
    return nullcontext()


class RLMModule(nn.Module):
    """The torch module (what optimizers and DDP see). :class:`RLM` is the user-facing wrapper."""

    def __init__(self, cfg: ModelConfig, text_vocab_size: int, num_metrics: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = _encoder(cfg, text_vocab_size)
        # Only the decoder stack's modules are used (its forward is replaced by `decode`).
        self.decoder = T5Stack(_t5_config(cfg, N_NUM + num_metrics, decoder=True))
        self.head = nn.Linear(cfg.d_model, N_NUM, bias=False)
        # T5 initializes an untied head with std 1, giving logits of std ~sqrt(d); start near unit scale.
        nn.init.normal_(self.head.weight, std=cfg.d_model**-0.5)
        grammar = NumberTokenizer(cfg.exponent_digits, cfg.mantissa_digits).grammar
        self.register_buffer("grammar_bias", torch.where(torch.from_numpy(grammar), 0.0, _NEG), persistent=False)

    @property
    def number_length(self) -> int:
        return self.grammar_bias.shape[0]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Encoder states ``(N, L, d)`` and, per decoder layer, cross-attention ``(k, v, mask)``."""
        with _attention_backend(input_ids, self.training):
            enc = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        n, length, _ = enc.shape
        mask = torch.where(attention_mask.bool(), 0.0, _NEG).to(enc.dtype)[:, None, None, :]
        memory = []
        for block in self.decoder.block:
            att = block.layer[1].EncDecAttention
            k = att.k(enc).view(n, length, self.cfg.heads, self.cfg.d_kv).transpose(1, 2)
            v = att.v(enc).view(n, length, self.cfg.heads, self.cfg.d_kv).transpose(1, 2)
            memory.append((k, v, mask))
        return memory

    def decode(self, tokens: torch.Tensor, memory, start: int = 0, cache: list | None = None):
        """Logits ``(N, R, t, 13)`` (grammar-masked) for decoder ``tokens`` ``(N, R, t)``.

        ``start`` is the position of ``tokens[..., 0]``; ``cache`` holds self-attention keys and
        values of earlier positions (a list per layer, or None) and is returned updated.
        """
        cfg, n, rows, t = self.cfg, *tokens.shape
        h = self.decoder.dropout(self.decoder.embed_tokens(tokens).view(n * rows, t, cfg.d_model))
        end = start + t
        # T5 relative-position bias (shared by all layers, as in T5Stack) plus the causal mask.
        bias = self.decoder.block[0].layer[0].SelfAttention.compute_bias(end, end, device=h.device)
        causal = torch.ones(end, end, dtype=torch.bool, device=h.device).triu(1)
        bias = bias.masked_fill(causal, _NEG)[:, :, start:end, :]
        p = cfg.attention_dropout if self.training else 0.0
        new_cache = []
        for i, block in enumerate(self.decoder.block):
            sa, ca, ff = block.layer
            att = sa.SelfAttention
            x = sa.layer_norm(h)
            q, k, v = (proj(x).view(n * rows, t, cfg.heads, cfg.d_kv).transpose(1, 2) for proj in (att.q, att.k, att.v))
            if cache is not None:
                k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
            new_cache.append((k, v))
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=1.0)  # T5: unscaled
            h = h + sa.dropout(att.o(o.transpose(1, 2).reshape(n * rows, t, cfg.d_model)))
            # Cross-attention with rows folded into the query axis: (N, R*t) queries per architecture.
            att = ca.EncDecAttention
            x = ca.layer_norm(h).view(n, rows * t, cfg.d_model)
            q = att.q(x).view(n, rows * t, cfg.heads, cfg.d_kv).transpose(1, 2)
            mk, mv, mmask = memory[i]
            o = F.scaled_dot_product_attention(q, mk, mv, attn_mask=mmask, dropout_p=p, scale=1.0)
            o = att.o(o.transpose(1, 2).reshape(n, rows * t, cfg.d_model)).view(n * rows, t, cfg.d_model)
            h = ff(h + ca.dropout(o))
        h = self.decoder.dropout(self.decoder.final_layer_norm(h))
        logits = self.head(h).view(n, rows, t, N_NUM) + self.grammar_bias[start:end]
        return logits, new_cache

    def forward(self, input_ids, attention_mask, decoder_input_ids, labels=None):
        """Teacher-forced logits ``(N, R, L, 13)``; with ``labels`` (-100 = ignore), the mean token CE."""
        logits, _ = self.decode(decoder_input_ids, self.encode(input_ids, attention_mask))
        if labels is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, N_NUM), labels.reshape(-1), ignore_index=-100)


class EnsembleModule(nn.Module):
    """Independently trained :class:`RLMModule` s over the same tokenizer and metrics (see
    :meth:`RLM.ensemble`). ``forward`` is the members' mean, so training and fine-tuning move all of
    them on the same batches; :meth:`RLM.predict` averages their quantiles.
    """

    def __init__(self, members: Sequence[RLMModule]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, input_ids, attention_mask, decoder_input_ids, labels=None):
        """The members' mean logits, or with ``labels`` their mean loss."""
        return torch.stack([m(input_ids, attention_mask, decoder_input_ids, labels) for m in self.members]).mean(0)


class CheckpointError(ValueError):
    """A checkpoint file exists but is corrupt or incompatible; the message names the file."""


class RLM:
    """A regression language model with its tokenizers and metric vocabulary.

    Build with :meth:`create` (fresh weights) or :meth:`from_pretrained`.
    """

    def __init__(self, config: ModelConfig, text_tokenizer: TextTokenizer, metrics: Sequence[str], module: RLMModule):
        self.config = config
        self.text_tokenizer = text_tokenizer
        self.number_tokenizer = NumberTokenizer(config.exponent_digits, config.mantissa_digits)
        self.module = module
        self._metrics = list(metrics)
        self._known: set[tuple[str, str]] = set()
        #: metric -> (a, {source: b}): reported as exp(a) * prod(x_source**b) (see :meth:`calibrate`).
        self._calibration: dict[str, tuple[float, dict[str, float]]] = {}
        self._warned_truncation = False

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, config: ModelConfig, text_tokenizer: TextTokenizer, metrics: Sequence[str], seed: int = 0) -> "RLM":
        """A fresh model (weights seeded by ``seed``, global RNG untouched) for ``metrics``."""
        metrics = _check_new_metrics([], metrics)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = RLMModule(config, text_tokenizer.vocab_size, len(metrics))
        return cls(config, text_tokenizer, metrics, module)

    @classmethod
    def ensemble(cls, rlms: Sequence["RLM"]) -> "RLM":
        """One model that predicts with every one of ``rlms`` (copies): each draws ``num_samples``
        and :meth:`predict` averages their sorted draws, i.e. their quantiles, so the median is the
        members' mean median. Independently trained runs err differently, and on this project's
        test split two of them ranked better than either (``benchmarks/RESULTS.md``).

        The members must share the model config, text tokenizer (train the later ones with
        ``--tokenizer``), metrics and calibration; a pair is known when every member knows it.
        """
        rlms = cls._joinable(rlms, "ensemble", "member", "members must share it (train later members with --tokenizer of the first)")
        return cls._joined(rlms, EnsembleModule([copy.deepcopy(m) for r in rlms for m in r.member_modules]))

    @classmethod
    def average(cls, rlms: Sequence["RLM"]) -> "RLM":
        """One model whose weights are the mean of ``rlms``' weights: a uniform "model soup" of
        checkpoints from *one* training run (e.g. a stage's best and last weights, or one stage's
        end and the next one's), which lie in one basin. Independently trained runs do not (their
        units are permuted): join those with :meth:`ensemble` instead. On this project's
        validation architectures the soup of two checkpoints ranked better than either
        (``benchmarks/RESULTS.md``); it costs no training and predicts as fast as one model.

        The models must share the model config, text tokenizer, metrics and calibration, and be
        single models; the result knows the pairs that every one of them knows.
        """
        rlms = cls._joinable(rlms, "average", "model", "only checkpoints of one run can be averaged")
        for i, r in enumerate(rlms):
            if isinstance(r.module, EnsembleModule):
                raise ValueError(f"average: model #{i} is an ensemble; average the checkpoints of each run, then join them with RLM.ensemble")
        states = [r.module.state_dict() for r in rlms]
        module = copy.deepcopy(rlms[0].module)
        module.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) for k, v in states[0].items()})
        return cls._joined(rlms, module)

    @staticmethod
    def _joinable(rlms: Sequence["RLM"], op: str, noun: str, hint: str) -> list["RLM"]:
        """``rlms`` as a list of two or more that share what :meth:`ensemble` and :meth:`average` need."""
        rlms = list(rlms)
        if len(rlms) < 2 or not all(isinstance(r, RLM) for r in rlms):
            raise ValueError(f"{op}: need at least two RLMs, got {len(rlms)} ({', '.join(type(r).__name__ for r in rlms)})")
        first = rlms[0]
        for i, r in enumerate(rlms[1:], 1):
            # Dropout acts only in training: runs that differ in it alone predict alike, so they join
            # (the result keeps the first's, for whoever fine-tunes it).
            config = dataclasses.replace(r.config, dropout=first.config.dropout, attention_dropout=first.config.attention_dropout)
            for what, mine, theirs in (("model config", config, first.config), ("text tokenizer", r.text_tokenizer, first.text_tokenizer),
                                       ("metrics", r.metrics, first.metrics), ("calibration", r.calibration, first.calibration)):
                if mine != theirs:
                    raise ValueError(f"{op}: {noun} #{i}'s {what} differs from {noun} #0's; {hint}")
        return rlms

    @classmethod
    def _joined(cls, rlms: list["RLM"], module: nn.Module) -> "RLM":
        """An RLM of ``module`` with ``rlms``' shared setup; a pair is known where all of them know it."""
        first = rlms[0]
        out = cls(first.config, first.text_tokenizer, first.metrics, module)
        out.register_pairs(set.intersection(*(r.known_pairs for r in rlms)))
        for m, (a, b) in first.calibration.items():
            out.calibrate(m, a, b)
        return out

    @property
    def member_modules(self) -> list[RLMModule]:
        """The :class:`RLMModule` s that predict: one, or an ensemble's members."""
        return list(self.module.members) if isinstance(self.module, EnsembleModule) else [self.module]

    @property
    def members(self) -> list["RLM"]:
        """Each member as a model of its own (copies; a single model gives a copy of itself): e.g. to keep one
        run of an ensemble and retrain the other, ``RLM.ensemble([retrained, old.members[1]])``."""
        return [self._joined([self], copy.deepcopy(m)) for m in self.member_modules]

    # --- metrics and known pairs ------------------------------------------------------------
    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self._metrics)

    @property
    def known_pairs(self) -> set[tuple[str, str]]:
        """(space, metric) pairs that had training data; others are flagged as extrapolated."""
        return set(self._known)

    def register_pairs(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record (space, metric) pairs that the model was trained on (the trainer calls this)."""
        for pair in pairs:
            space, metric = pair
            self._metric_ids([metric])
            if not isinstance(space, str) or not space or "\n" in space:
                raise ValueError(f"register_pairs: space must be a non-empty one-line str, got {space!r}")
            self._known.add((space, metric))

    @property
    def calibration(self) -> dict[str, tuple[float, dict[str, float]]]:
        """``{metric: (a, {source: b})}``: these metrics are reported as ``exp(a) * prod(x_source**b)``."""
        return {m: (a, dict(w)) for m, (a, w) in self._calibration.items()}

    def calibrate(self, metric: str, a: float, b: float | Mapping[str, float]) -> None:
        """Report ``metric`` as ``exp(a) * prod_s x_s**b[s]``, where ``x_s`` are the decoded numbers
        of the source metrics ``s`` (sample by sample); a number ``b`` means ``{metric: b}``.

        For a new device located among the known ones (few-shot adaptation, see
        :func:`rlm_nas.finetune.fit_calibration`): it ranks like a weighted geometric mean of similar
        devices, in its own units. Exponents must be >= 0 (a source never counts against its own
        ranking) with a positive sum. ``a = 0, b = 1`` removes the calibration.
        """
        self._metric_ids([metric])
        weights = {metric: b} if isinstance(b, (int, float)) else dict(b)
        self._metric_ids(list(weights))
        if not (isinstance(a, (int, float)) and math.isfinite(a)) or not weights or not all(
            isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in weights.values()
        ) or sum(weights.values()) <= 0:
            raise ValueError(f"calibrate({metric!r}): need a finite a and exponents b >= 0 with b > 0 in sum, got a={a!r}, b={b!r}")
        if a == 0 and weights == {metric: 1}:
            self._calibration.pop(metric, None)
        else:
            self._calibration[metric] = (float(a), {s: float(v) for s, v in weights.items() if v > 0})

    def add_metrics(self, names: Sequence[str], like: Mapping[str, str] | None = None) -> None:
        """Grow the decoder vocabulary with new metric tokens (existing names are skipped).

        A new row starts as a copy of the known metric ``like[name]`` when given (e.g. the device
        whose latencies look most like the new one's: see :func:`rlm_nas.finetune.finetune`), else
        at the mean embedding of the metrics of the same kind (the part before ``:``, e.g. every
        ``latency:*``), else of all metrics: a new device starts out predicting like a similar or an
        average device, which fine-tuning then adjusts. Create optimizers after this call: the
        embedding parameter is replaced.
        """
        like = dict(like or {})
        new = _check_new_metrics(self._metrics, [m for m in dict.fromkeys(names) if m not in self._metrics])
        if not new:
            return
        for name, source in like.items():
            if source not in self._metrics:
                raise ValueError(f"add_metrics: like[{name!r}] = {source!r} is not a known metric; known: {', '.join(self._metrics)}")
        for module in self.member_modules:
            old = module.decoder.embed_tokens
            emb = nn.Embedding(old.num_embeddings + len(new), old.embedding_dim).to(old.weight.device, old.weight.dtype)
            with torch.no_grad():
                emb.weight[: old.num_embeddings] = old.weight
                rows = old.weight[N_NUM:]
                for j, name in enumerate(new):
                    same = [i for i, m in enumerate(self._metrics) if _kind(m) == _kind(name)]
                    if name in like:
                        emb.weight[old.num_embeddings + j] = rows[self._metrics.index(like[name])]
                    else:
                        emb.weight[old.num_embeddings + j] = rows[same].mean(0) if same else rows.mean(0)
            module.decoder.set_input_embeddings(emb)
        self._metrics += new

    def _metric_ids(self, metrics: Sequence[str]) -> list[int]:
        out = []
        for m in metrics:
            if m not in self._metrics:
                raise ValueError(f"unknown metric {m!r}; this model knows: {', '.join(self._metrics)} (add new ones with add_metrics)")
            out.append(N_NUM + self._metrics.index(m))
        return out

    # --- inputs -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _pad(self, ids: list[list[int]], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(x) for x in ids)
        width = min(-(-longest // multiple) * multiple, max(longest, self.config.max_input_tokens))
        out = np.full((len(ids), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            out[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return torch.from_numpy(out).to(self.device), torch.from_numpy(mask).to(self.device)

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.text_tokenizer.encode(texts)
        limit = self.config.max_input_tokens
        for i, x in enumerate(ids):
            if not x:
                raise ValueError(f"input text #{i} is empty; expected '{{space}}\\n\\n{{canonical ONNX text}}'")
        long = [len(x) for x in ids if len(x) > limit]
        if long and not self._warned_truncation:
            self._warned_truncation = True  # once per model: a training loop would repeat it forever
            warnings.warn(
                f"{len(long)} input(s) longer than max_input_tokens={limit} (up to {max(long)} tokens) were "
                "truncated; the model only sees their beginning. Raise ModelConfig.max_input_tokens.",
                stacklevel=3,
            )
        return [x[:limit] for x in ids]

    def make_batch(self, texts: Sequence[str], metrics: Sequence[Sequence[str]], values: Sequence[Sequence[float]]) -> dict[str, torch.Tensor]:
        """Tensors for ``module(**batch)``: the loss of :meth:`loss` (use this with DDP)."""
        if not (len(texts) == len(metrics) == len(values)) or not texts:
            raise ValueError(f"texts, metrics and values must be non-empty and of equal length, got {len(texts)}, {len(metrics)}, {len(values)}")
        rows = max(len(m) for m in metrics)
        if rows == 0:
            raise ValueError("no (metric, value) pair in the batch; every architecture has an empty metric list")
        length = self.number_tokenizer.length
        dec_in = np.zeros((len(texts), rows, length), dtype=np.int64)  # padding rows: ignored by labels
        labels = np.full((len(texts), rows, length), -100, dtype=np.int64)
        for i, (ms, vs) in enumerate(zip(metrics, values)):
            if isinstance(ms, str) or len(ms) != len(vs):
                raise ValueError(f"architecture #{i}: metrics and values must be lists of equal length, got {ms!r} and {vs!r}")
            for r, (m, v) in enumerate(zip(ms, vs)):
                try:
                    toks = self.number_tokenizer.encode(v)
                except ValueError as err:
                    raise ValueError(f"architecture #{i}, metric {m!r}: {err}") from None
                dec_in[i, r] = [self._metric_ids([m])[0]] + toks[:-1]
                labels[i, r] = toks
        # Widths rounded up so that batches share a few shapes: oneDNN caches its kernels per shape,
        # and a new width each batch made it build new ones (a training step ~9% slower on a CPU).
        ids, mask = self._pad(self._tokenize(texts), PAD_MULTIPLE)
        dev = self.device
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "decoder_input_ids": torch.from_numpy(dec_in).to(dev),
            "labels": torch.from_numpy(labels).to(dev),
        }

    def loss(self, texts: Sequence[str], metrics: Sequence[Sequence[str]], values: Sequence[Sequence[float]]) -> torch.Tensor:
        """Mean token cross-entropy over all number tokens of the batch (differentiable)."""
        return self.module(**self.make_batch(texts, metrics, values))

    # --- prediction -------------------------------------------------------------------------
    def _model_inputs(self, inputs: Sequence[Any], space: Any, equivalents: int = 1,
                      progress: bool = False) -> tuple[list[str], list[str], list[int]]:
        """Model-input strings, the space of each, and the index in ``inputs`` each one is for."""
        if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
            raise TypeError(f"inputs must be a list (of genotypes, ONNX models or strings), got {type(inputs).__name__}")
        from search_spaces import SPACE_NAMES

        allowed = sorted(set(SPACE_NAMES) | {s for s, _ in self._known})
        if space is not None:
            name = getattr(space, "name", space)
            if name not in allowed:
                raise ValueError(f"unknown space {name!r}; known spaces: {', '.join(allowed)}")
            from tqdm.auto import tqdm

            from rlm_nas.convert import equivalent_inputs

            # Export + canonical text is the slow part for uncached genotypes: it gets its own bar.
            groups = [equivalent_inputs(name, x, equivalents)
                      for x in tqdm(inputs, desc=f"{name} ONNX text", unit="arch", disable=not progress, leave=False)]
            texts = [t for g in groups for t in g]
            return texts, [name] * len(texts), [i for i, g in enumerate(groups) for _ in g]
        spaces = []
        for i, x in enumerate(inputs):
            if not isinstance(x, str) or "\n\n" not in x:
                raise ValueError(
                    f"inputs[{i}] ({type(x).__name__}) is not a model input '{{space}}\\n\\n{{text}}'; "
                    "pass space=... to convert genotypes, ONNX models or canonical texts"
                )
            name = x.split("\n", 1)[0]
            if name not in allowed:
                raise ValueError(f"inputs[{i}] names unknown space {name!r}; known spaces: {', '.join(allowed)}")
            spaces.append(name)
        return list(inputs), spaces, list(range(len(inputs)))

    def predict(
        self,
        inputs: Sequence[Any],
        metrics: Sequence[str] | str,
        space: Any = None,
        num_samples: int = 8,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = False,
        draws: str = "quantiles",
        equivalents: int = 1,
    ) -> Prediction:
        """Draw ``num_samples`` numbers per input and metric; see :class:`rlm_nas.core.Prediction`.

        ``inputs``: genotypes, native strings, ``onnx.ModelProto`` s or canonical texts of ``space``;
        or, with ``space=None``, full model inputs ``"{space}\\n\\n{text}"``.

        ``draws="quantiles"`` (default) returns the model's quantiles at levels ``(i + 0.5) / k``:
        a stratified sample, deterministic, whose median is the median of the model's distribution
        for odd ``k`` (so ``num_samples=1`` gives it in one decoder pass). ``draws="random"`` is
        ancestral sampling, reproducible with ``seed``. ``temperature=0`` is greedy (then all draws
        are equal).

        ``equivalents=k`` reads up to ``k`` genotypes of the same network for each genotype or native
        string (:meth:`search_spaces.base.Space.equivalents`: in the cell spaces, a node's two inputs
        swapped, which reorders the ONNX text but not the network) and averages their sorted draws:
        their quantiles, for quantile draws. The model is not exactly invariant to that order, and
        the average ranks better (``benchmarks/RESULTS.md``). Spaces without such symmetry, ONNX
        models and texts read one input whatever ``k``.

        An ensemble (:meth:`ensemble`) draws ``num_samples`` from each member and averages their
        sorted draws in the same way.
        """
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        self._metric_ids(metrics)
        # What is decoded: each metric's own numbers, or its calibration's sources.
        decoded = list(dict.fromkeys(s for m in metrics for s in (self._calibration[m][1] if m in self._calibration else [m])))
        metric_ids = self._metric_ids(decoded)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        if draws not in DRAWS:
            raise ValueError(f"draws must be one of {', '.join(map(repr, DRAWS))}, got {draws!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(equivalents, int) or equivalents < 1:
            raise ValueError(f"equivalents must be a positive int (1: each input as given), got {equivalents!r}")
        texts, spaces, owner = self._model_inputs(inputs, space, equivalents, progress)
        extrapolated = np.array([any((s, m) not in self._known for s in set(spaces)) for m in metrics], dtype=bool)
        raw = np.empty((len(texts), len(decoded), num_samples))
        if not texts:
            return Prediction(tuple(metrics), np.empty((0, len(metrics), num_samples)), extrapolated)

        ids = self._tokenize(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch: less padding
        gen = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.module.training
        self.module.eval()
        try:
            from tqdm.auto import tqdm

            with torch.inference_mode(), tqdm(total=len(texts), disable=not progress, unit="arch") as bar:
                for b in range(0, len(texts), batch_size):
                    idx = order[b : b + batch_size]
                    batch = self._pad([ids[i] for i in idx])
                    values = []
                    for module in self.member_modules:
                        tokens = self._decode(module, batch, metric_ids, num_samples, temperature, draws, gen)
                        values.append(self.number_tokenizer.decode_batch(tokens.reshape(-1, tokens.shape[-1]).cpu().numpy())
                                      .reshape(len(idx), len(decoded), num_samples))
                    # An ensemble: the members' quantiles averaged (as for equivalents, below).
                    raw[idx] = values[0] if len(values) == 1 else np.mean(np.sort(values, axis=-1), axis=0)
                    bar.update(len(idx))
        finally:
            self.module.train(was_training)
        samples = np.empty((len(texts), len(metrics), num_samples))
        for j, m in enumerate(metrics):
            if m not in self._calibration:
                samples[:, j] = raw[:, decoded.index(m)]
                continue
            a, weights = self._calibration[m]
            x = {s: raw[:, decoded.index(s)] for s in weights}
            with np.errstate(divide="ignore"):  # a decoded 0 gives 0 (b > 0), not a warning
                log = a + sum(b * np.log(np.abs(x[s])) for s, b in weights.items())
            samples[:, j] = np.sign(x[max(weights, key=weights.get)]) * np.exp(log)
        if len(texts) > len(inputs):  # equivalents: average each input's sorted draws (its quantiles)
            owner = np.asarray(owner)
            samples = np.sort(samples, axis=-1)
            pooled = np.zeros((len(inputs), *samples.shape[1:]))
            np.add.at(pooled, owner, samples)
            samples = pooled / np.bincount(owner, minlength=len(inputs))[:, None, None]
        return Prediction(tuple(metrics), samples, extrapolated)

    def _decode(self, module: RLMModule, batch, metric_ids: list[int], k: int, temperature: float, draws: str,
                gen: torch.Generator) -> torch.Tensor:
        """Grammar-constrained decoding by inverse CDF: ``(N, M * k, L)`` number-token ids.

        Each number is read off one level ``u`` in [0, 1): at every position the allowed tokens are
        put in the order of the values they lead to (``NumberTokenizer.value_order``), the token
        whose slice of the cumulative probability holds ``u`` is taken, and ``u`` is rescaled to
        within that slice. A uniformly random ``u`` is exactly ancestral sampling; a fixed ``u``
        gives the value at that quantile of the model's distribution.
        """
        memory = module.encode(*batch)
        n, m = batch[0].shape[0], len(metric_ids)
        # Step 0 reads only the metric token, identical for the k draws: run it once per metric
        # and then repeat its cache k times.
        tok = torch.tensor(metric_ids, device=self.device).expand(n, m)[..., None]
        logits, cache = module.decode(tok, memory, start=0)
        logits = logits.repeat_interleave(k, dim=1)
        cache = [tuple(c.view(n, m, *c.shape[1:]).repeat_interleave(k, 1).flatten(0, 1) for c in kv) for kv in cache]
        if draws == "random":
            u = torch.rand(n, m * k, generator=gen, dtype=torch.float64, device=self.device)
        else:
            u = ((torch.arange(k, dtype=torch.float64, device=self.device) + 0.5) / k).repeat(m).expand(n, m * k)
        nt = self.number_tokenizer
        out, negative, negative_exponent = [], torch.zeros(n, m * k, dtype=torch.bool, device=self.device), None
        for step in range(module.number_length):
            if step:
                logits, cache = module.decode(tok, memory, start=step, cache=cache)
            logits = logits[:, :, -1]
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits.double() / temperature, -1)
                ascending = nt.value_order(step)
                orders = torch.tensor([ascending, ascending[::-1]], device=self.device)
                order = orders[nt.order_reversed(step, negative, negative_exponent).long()]
                cum = probs.gather(-1, order).cumsum(-1)
                # The first token whose cumulative probability exceeds u (the last one if rounding
                # leaves the total a hair under u).
                j = (cum <= u[..., None]).sum(-1, keepdim=True).clamp(max=order.shape[-1] - 1)
                nxt = order.gather(-1, j)[..., 0]
                hi = cum.gather(-1, j)[..., 0]
                lo = torch.where(j[..., 0] > 0, cum.gather(-1, (j - 1).clamp(min=0))[..., 0], 0.0)
                u = ((u - lo) / (hi - lo).clamp(min=1e-300)).clamp(0.0, 1.0 - 1e-12)
            if step == 0:
                negative = nxt == MINUS
            elif step == 1:
                negative_exponent = nxt == MINUS
            out.append(nxt)
            tok = nxt[..., None]
        return torch.stack(out, -1)

    # --- persistence ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: str | None = None) -> Path:
        """Write weights (``model.safetensors``), ``config.json`` and ``tokenizer.json``.

        ``dtype`` ``"float16"``/``"bfloat16"`` stores the weights at half size; they are loaded
        back as float32.
        """
        from safetensors.torch import save_file

        from search_spaces.text import TEXT_VERSION

        casts = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if dtype not in casts:
            raise ValueError(f"dtype {dtype!r} is not supported; allowed: None, float32, float16, bfloat16")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", casts[dtype] or v.dtype).contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": dataclasses.asdict(self.config),
            "members": len(self.member_modules),
            "metrics": self._metrics,
            "known_pairs": sorted(map(list, self._known)),
            "calibration": {m: [a, w] for m, (a, w) in sorted(self._calibration.items())},
            "text_vocab_size": self.text_tokenizer.vocab_size,
            "text_version": TEXT_VERSION,
            "dtype": dtype or "float32",
        }
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        self.text_tokenizer.save(path)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path = "default") -> "RLM":
        """Load a checkpoint directory (``"default"``: the one shipped in ``rlm_nas/checkpoints``).

        Missing files raise FileNotFoundError; corrupt or incompatible ones :class:`CheckpointError`;
        both name the file.
        """
        path = checkpoint_dir(directory)
        if not path.is_dir():
            hint = " (the default checkpoint is not shipped in this install; train one or pass a directory)" if path == DEFAULT_CHECKPOINT else ""
            raise FileNotFoundError(f"RLM checkpoint directory {path} does not exist{hint}")
        cfg_file = path / CONFIG_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"RLM checkpoint file {cfg_file} does not exist")
        try:
            meta = json.loads(cfg_file.read_text())
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{cfg_file}: 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
            if meta.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"{cfg_file}: format_version {meta.get('format_version')!r} is not supported by this rlm_nas (reads version {FORMAT_VERSION})"
                )
            config = ModelConfig.from_saved(meta["model_config"])
            metrics = _check_new_metrics([], meta["metrics"])
            pairs = [tuple(p) for p in meta["known_pairs"]]
            calibration = {str(m): (a, b) for m, (a, b) in meta.get("calibration", {}).items()}
            members = meta.get("members", 1)
            if not isinstance(members, int) or isinstance(members, bool) or members < 1:
                raise CheckpointError(f"{cfg_file}: 'members' is {members!r}, expected an int >= 1")
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{cfg_file} is corrupt or incompatible: {type(err).__name__}: {err}") from None
        from search_spaces.text import TEXT_VERSION

        if (version := meta.get("text_version", 1)) != TEXT_VERSION:
            warnings.warn(f"{cfg_file}: the checkpoint was trained on canonical text version {version}, "
                          f"this rlm_nas writes version {TEXT_VERSION} (search_spaces/text.py): its predictions are off "
                          "until it is fine-tuned (python -m rlm_nas.finetune) or retrained", stacklevel=2)
        tok = TextTokenizer.load(path)
        if tok.vocab_size != meta.get("text_vocab_size", tok.vocab_size):
            raise CheckpointError(f"{path / 'tokenizer.json'} has {tok.vocab_size} tokens but {cfg_file} expects {meta['text_vocab_size']}")
        modules = [RLMModule(config, tok.vocab_size, len(metrics)) for _ in range(members)]
        module = modules[0] if members == 1 else EnsembleModule(modules)
        module.load_state_dict(_load_weights(path / WEIGHTS_FILE, module.state_dict()))
        rlm = cls(config, tok, metrics, module)
        rlm.register_pairs(pairs)
        try:
            for m, (a, b) in calibration.items():
                rlm.calibrate(m, a, b)
        except ValueError as err:
            raise CheckpointError(f"{cfg_file}: bad 'calibration': {err}") from None
        return rlm

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        ensemble = f", an ensemble of {len(self.member_modules)}" if isinstance(self.module, EnsembleModule) else ""
        return f"RLM({n / 1e6:.2f}M params{ensemble}, {len(self._metrics)} metrics, {len(self._known)} known pairs)"


def _load_weights(file: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read ``file`` as float32 and check it matches the module's keys and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise FileNotFoundError(f"RLM checkpoint file {file} does not exist")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file} is corrupt or not a safetensors file: {err}") from None
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{file} does not match config.json: missing tensors {missing[:5]}, unexpected {extra[:5]}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{file}: tensor {k} has shape {tuple(v.shape)}, config.json implies {tuple(expected[k].shape)}")
        if not torch.isfinite(v).all():
            raise CheckpointError(f"{file}: tensor {k} holds NaN or inf")
    # Half-precision checkpoints (kept small for shipping) compute in float32.
    return {k: v.float() for k, v in state.items()}


def _kind(metric: str) -> str:
    return metric.split(":", 1)[0]


def _check_new_metrics(existing: Sequence[str], names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise TypeError(f"metrics must be a list of names, got the single str {names!r}")
    names = [check_metric(m) for m in names]
    dup = sorted({m for m in names if names.count(m) > 1 or m in existing})
    if dup:
        raise ValueError(f"metric(s) {dup} listed twice")
    return names
