"""Model configuration: a frozen dataclass and named presets (``make_config``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


#: Encoder stacks: ``transformers``' ModernBertModel, or its T5Stack (checkpoints before 2026-11-30).
ENCODERS = ("modernbert", "t5")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the encoder-decoder RLM. Every field is checked on construction.

    The decoder only writes ~7 tokens, so it stays shallow; the encoder carries the capacity.
    """

    #: The encoder stack (see ``ENCODERS``). ``modernbert`` (rotary positions) can point at "the
    #: value 5 lines up", which the canonical text's relative references need; T5's relative
    #: position bias is the same for every query, so it cannot. It is also faster on a CPU: a
    #: forward and backward pass of 16 x 300 tokens at the ``small`` sizes took 0.46 s against
    #: T5's 1.44 s (one thread, float32).
    encoder: str = "modernbert"
    d_model: int = 128
    encoder_layers: int = 3
    decoder_layers: int = 2
    heads: int = 4
    d_ff: int = 512
    #: Dropout on hidden states (embeddings, feed-forward and residual branches), in training only.
    #: The legacy ``t5`` encoder has no separate setting: it drops its attention with this too.
    dropout: float = 0.0
    #: Dropout inside attention (its probabilities and, in the encoder, its output projection). Kept
    #: apart from ``dropout`` for its cost on a CPU: a dropped attention matrix cannot use PyTorch's
    #: flash kernel, and at 0.1 with ``dropout=0.1`` a training step took 1.9x as long as without
    #: dropout, hidden-state dropout alone 1.26x (``benchmarks/train_step_speed.py``: the default's
    #: data mix, bf16, Xeon with AMX).
    attention_dropout: float = 0.0
    #: Longer inputs are truncated (with a warning): size it to the longest space's texts.
    max_input_tokens: int = 1024
    #: BPE vocabulary size to train the text tokenizer with.
    text_vocab_size: int = 4096
    exponent_digits: int = 1
    mantissa_digits: int = 4
    #: T5 relative-position buckets (the decoder's; and the encoder's when it is ``t5``).
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "encoder":
                if v not in ENCODERS:
                    raise ValueError(f"ModelConfig.encoder must be one of {', '.join(ENCODERS)}, got {v!r}")
            elif f.name in ("dropout", "attention_dropout"):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                    raise ValueError(f"ModelConfig.{f.name} must be a float in [0, 1), got {v!r}")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{f.name} must be a positive int, got {v!r}")
        if self.d_model % self.heads:
            raise ValueError(f"ModelConfig.d_model ({self.d_model}) must be divisible by heads ({self.heads})")

    @classmethod
    def from_saved(cls, fields: dict) -> "ModelConfig":
        """The config a checkpoint's ``model_config`` describes. Checkpoints written before the
        encoder was a choice have no ``encoder`` field: theirs is T5; those written before
        ``attention_dropout`` have their ``dropout`` there too, as they trained."""
        return cls(**{"encoder": "t5", "attention_dropout": fields.get("dropout", 0.0), **fields})

    @property
    def d_kv(self) -> int:
        return self.d_model // self.heads


PRESETS: dict[str, ModelConfig] = {
    # Trains in seconds; for tests.
    "tiny": ModelConfig(d_model=64, encoder_layers=2, decoder_layers=1, heads=4, d_ff=128, max_input_tokens=512, text_vocab_size=512),
    # Default: trains on ~20K architectures x ~25 metrics on a 2-core CPU well within an hour.
    "small": ModelConfig(),
    # For a GPU or a longer CPU run.
    "base": ModelConfig(d_model=256, encoder_layers=6, decoder_layers=2, heads=8, d_ff=1024, dropout=0.1, attention_dropout=0.1, text_vocab_size=8192),
}


def make_config(name: str = "small", **overrides) -> ModelConfig:
    """The preset ``name`` (``tiny``, ``small``, ``base``), with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown model config {name!r}; allowed: {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {sorted(unknown)}; fields: {[f.name for f in dataclasses.fields(ModelConfig)]}")
    return dataclasses.replace(PRESETS[name], **overrides)
