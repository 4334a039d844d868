"""Models for `hpc train` and the synthetic, learnable data each one is fed without `--data`.

Three families sized by flags: `mlp` (wide = communication-heavy: many parameters, little compute per
sample), `cnn` (compute-heavy convolutions on image-like input) and `transformer` (a small causal LM
over tokens). Parameters are initialised deterministically from the seed, so every rank builds the
same model; synthetic batches come from one seeded stream per data-parallel rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from hpc.errors import HpcError

if TYPE_CHECKING:
    import torch

# Salts keep the data stream and the class templates apart from the model's init stream.
_DATA_SALT, _TEMPLATE_SALT = 0xDA7A, 0x7E4F


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a model's shape; `kind` says what input it takes."""

    name: str = "mlp"
    width: int = 256           # mlp hidden size / cnn channels / transformer d_model
    depth: int = 2             # hidden layers / conv blocks / transformer layers
    features: int = 64         # mlp input size
    classes: int = 10          # mlp / cnn outputs
    channels: int = 3          # cnn input channels
    image: int = 16            # cnn input height = width
    vocab: int = 64            # transformer vocabulary
    seq_len: int = 32          # transformer context (tokens per sample)
    heads: int = 4             # transformer attention heads
    seed: int = 0

    @property
    def kind(self) -> str:
        """The data kind the model consumes: tabular, image or tokens."""
        return MODELS[self.name].kind

    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch axis)."""
        return {"tabular": (self.features,), "image": (self.channels, self.image, self.image),
                "tokens": (self.seq_len,)}[self.kind]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and which data kind it trains on."""

    kind: str
    build: Callable[[ModelConfig], "torch.nn.Module"] = field(repr=False)
    help: str = ""


def _mlp(cfg: ModelConfig) -> "torch.nn.Module":
    from torch import nn

    layers: list[nn.Module] = []
    size = cfg.features
    for _ in range(cfg.depth):
        layers += [nn.Linear(size, cfg.width), nn.ReLU()]
        size = cfg.width
    layers.append(nn.Linear(size, cfg.classes))
    return nn.Sequential(*layers)


def _cnn(cfg: ModelConfig) -> "torch.nn.Module":
    from torch import nn

    layers: list[nn.Module] = []
    chans, size = cfg.channels, cfg.image
    for i in range(cfg.depth):
        out = cfg.width * (2 ** min(i, 2))  # channels double for the first blocks, like VGG/ResNet
        layers += [nn.Conv2d(chans, out, 3, padding=1), nn.ReLU()]
        if size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        chans = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans, cfg.classes)]
    return nn.Sequential(*layers)


def _transformer(cfg: ModelConfig) -> "torch.nn.Module":
    import torch
    from torch import nn

    if cfg.width % cfg.heads:
        raise HpcError(f"transformer width {cfg.width} is not divisible by --heads {cfg.heads}")

    class TinyCausalLM(nn.Module):
        """Token + position embeddings, pre-norm causal encoder layers (no dropout), tied-free head."""

        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(cfg.vocab, cfg.width)
            self.pos = nn.Embedding(cfg.seq_len, cfg.width)
            layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.width)
            self.head = nn.Linear(cfg.width, cfg.vocab)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(cfg.seq_len),
                                 persistent=False)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            n = x.shape[1]
            h = self.tok(x) + self.pos(torch.arange(n, device=x.device))
            h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
            return self.head(self.norm(h))

    return TinyCausalLM()


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("tabular", _mlp, "fully connected; --width/--depth (wide = communication-heavy)"),
    "cnn": ModelSpec("image", _cnn, "conv blocks + global pooling; --width channels, --depth blocks"),
    "transformer": ModelSpec("tokens", _transformer,
                             "small causal LM; --width d_model, --depth layers, --heads, --vocab, --seq-len"),
}


def check_config(cfg: ModelConfig) -> None:
    """Raise HpcError for an unknown model or sizes that cannot build (cheap: no torch)."""
    if cfg.name not in MODELS:
        raise HpcError(f"unknown model '{cfg.name}' (known: {', '.join(MODELS)})")
    for key in ("width", "features", "classes", "channels", "image", "vocab", "seq_len", "heads"):
        if getattr(cfg, key) < 1:
            raise HpcError(f"model {key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.depth < 0 or (cfg.name != "mlp" and cfg.depth < 1):
        raise HpcError(f"model depth must be >= {0 if cfg.name == 'mlp' else 1}, got {cfg.depth}")
    if cfg.name == "transformer" and cfg.width % cfg.heads:
        raise HpcError(f"transformer width {cfg.width} is not divisible by --heads {cfg.heads}")


def build(cfg: ModelConfig) -> "torch.nn.Module":
    """The model for `cfg`, with parameters drawn from `cfg.seed` (identical on every rank)."""
    import torch

    check_config(cfg)
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        return MODELS[cfg.name].build(cfg)
    finally:
        torch.random.set_rng_state(state)


def n_params(model: "torch.nn.Module") -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def loss_fn(cfg: ModelConfig, out: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
    """Mean cross-entropy; for the language model over every position."""
    import torch.nn.functional as F

    if cfg.kind == "tokens":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.cross_entropy(out, y)


class SyntheticData:
    """An endless, learnable batch stream for one data-parallel rank, seeded by (seed, rank).

    tabular/image: label uniform, input = class template + unit noise. tokens: arithmetic
    sequences t[i+1] = (t[i] + step) mod vocab with a per-sequence step in 1..4; the model predicts
    the next token. Rank r's stream is the same whatever the world size.
    """

    def __init__(self, cfg: ModelConfig, rank: int, batch: int) -> None:
        self.cfg, self.batch = cfg, batch
        self.rng = np.random.default_rng([cfg.seed, rank, _DATA_SALT])
        if cfg.kind != "tokens":
            t_rng = np.random.default_rng([cfg.seed, _TEMPLATE_SALT])
            self.templates = t_rng.standard_normal((cfg.classes, *cfg.sample_shape())).astype(np.float32)

    def __iter__(self) -> "SyntheticData":
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, n, rng = self.cfg, self.batch, self.rng
        if cfg.kind == "tokens":
            start = rng.integers(0, cfg.vocab, size=(n, 1))
            step = rng.integers(1, 5, size=(n, 1))
            seq = (start + step * np.arange(cfg.seq_len + 1)) % cfg.vocab
            return seq[:, :-1].astype(np.int64), seq[:, 1:].astype(np.int64)
        y = rng.integers(0, cfg.classes, size=n)
        x = rng.standard_normal((n, *cfg.sample_shape()), dtype=np.float32)
        x += self.templates[y]
        return x, y.astype(np.int64)


def config_from_data(cfg: ModelConfig, sample_shape: tuple[int, ...], x_dtype: np.dtype,
                     attrs: dict[str, Any], y_max: int | None) -> ModelConfig:
    """Adapt the model's input/output sizes to an HDF5 file's samples (shape, classes, vocab)."""
    kind = cfg.kind
    if kind != "tokens" and x_dtype.kind not in "f":
        raise HpcError(f"model '{cfg.name}' needs floating-point samples, the file holds {x_dtype} "
                       "(token ids? use --model transformer)")
    classes = int(attrs.get("classes") or (y_max + 1 if y_max is not None else cfg.classes))
    if kind == "tabular":
        if len(sample_shape) != 1:
            raise HpcError(f"model '{cfg.name}' needs tabular samples (1-D), the file has shape "
                           f"{sample_shape}: use --model cnn for images, transformer for tokens")
        return replace(cfg, features=sample_shape[0], classes=classes)
    if kind == "image":
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise HpcError(f"model '{cfg.name}' needs square images (C, H, H), the file has shape "
                           f"{sample_shape}")
        return replace(cfg, channels=sample_shape[0], image=sample_shape[1], classes=classes)
    if len(sample_shape) != 1 or x_dtype.kind not in "iu":
        raise HpcError(f"model '{cfg.name}' needs token ids (N, L) of integers, the file has "
                       f"{sample_shape} x {x_dtype}")
    vocab = int(attrs.get("vocab") or attrs.get("classes") or (y_max + 1 if y_max is not None else cfg.vocab))
    return replace(cfg, seq_len=sample_shape[0], vocab=vocab)
