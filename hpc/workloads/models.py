"""Models for `hpc train` (the registry and the user's SPECs) and the synthetic data they are fed.

Built-in: three families sized by flags, `mlp` (wide = communication-heavy: many parameters, little
compute per sample), `cnn` (compute-heavy convolutions on image-like input) and `transformer` (a small
causal LM over tokens), and the standard architectures of `zoo` (resnet18/34/50/101, gpt2) sized by
`--model-arg`. Any other SPEC is the user's factory, resolved like a collective SPEC:
`package.module:factory`, `path/to/file.py:factory` or `torchvision:NAME`; `factory(**model_args)`
returns an `nn.Module` fed float tensors of `input_shape` (cross-entropy over `classes`) or token ids
(next-token loss over `vocab`). Parameters are initialised from the seed, so every rank builds the same
model; synthetic batches come from one seeded, learnable stream per data-parallel rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

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
    args: tuple[tuple[str, Any], ...] = ()   # factory keyword arguments (--model-arg), sorted
    input_kind: str | None = None            # user factories: "tensor" | "tokens" | None = from --data
    input_shape: tuple[int, ...] | None = None  # user factories with float input: one sample's shape

    @property
    def builtin(self) -> bool:
        """A registered name (mlp, cnn, transformer, the zoo) rather than the user's factory."""
        return self.name in MODELS

    @property
    def kind(self) -> str:
        """The data kind the model consumes: tabular, image, tensor (any float shape) or tokens."""
        if self.builtin:
            return MODELS[self.name].kind
        if self.input_kind is None:
            raise HpcError(f"model '{self.name}': input not known yet (needs --input-shape, "
                           "--vocab/--seq-len or --data)")
        return self.input_kind

    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch axis)."""
        if self.kind == "tensor":
            return tuple(self.input_shape or ())
        return {"tabular": (self.features,), "image": (self.channels, self.image, self.image),
                "tokens": (self.seq_len,)}[self.kind]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it, which data kind it trains on, what sizes it.

    `flags`: the sizing flags it reads (--width/--depth/--heads); `takes_args`: whether it is a
    factory that takes `--model-arg` keyword arguments (the zoo).
    """

    kind: str
    build: Callable[[ModelConfig], "torch.nn.Module"] = field(repr=False)
    help: str = ""
    flags: tuple[str, ...] = ()
    takes_args: bool = False


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


def _zoo(name: str, given: Callable[[ModelConfig], dict[str, Any]]) -> Callable[[ModelConfig], "torch.nn.Module"]:
    """Build zoo.NAME(**given(cfg), **cfg.args): sizes the flags fix, plus the user's --model-arg."""
    def build_it(cfg: ModelConfig) -> "torch.nn.Module":
        from hpc.workloads import zoo

        return _call_factory(getattr(zoo, name), cfg.name, {**given(cfg), **dict(cfg.args)})
    build_it.given = given  # type: ignore[attr-defined]  # which kwargs come from flags (checked in plan)
    return build_it


_IMAGE = lambda cfg: {"num_classes": cfg.classes, "in_channels": cfg.channels}  # noqa: E731
_LM = lambda cfg: {"vocab_size": cfg.vocab, "n_positions": cfg.seq_len}  # noqa: E731

MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("tabular", _mlp, "fully connected; --width/--depth (wide = communication-heavy)",
                     ("width", "depth")),
    "cnn": ModelSpec("image", _cnn, "conv blocks + global pooling; --width channels, --depth blocks",
                     ("width", "depth")),
    "transformer": ModelSpec("tokens", _transformer,
                             "small causal LM; --width d_model, --depth layers, --heads, --vocab, --seq-len",
                             ("width", "depth", "heads")),
    "resnet18": ModelSpec("image", _zoo("resnet18", _IMAGE), "ResNet-18, torchvision's layers (11.7M "
                          "params at 1000 classes); --input-shape CxHxH, --classes", takes_args=True),
    "resnet34": ModelSpec("image", _zoo("resnet34", _IMAGE), "ResNet-34, torchvision's layers",
                          takes_args=True),
    "resnet50": ModelSpec("image", _zoo("resnet50", _IMAGE), "ResNet-50, torchvision's layers (25.6M "
                          "params at 1000 classes)", takes_args=True),
    "resnet101": ModelSpec("image", _zoo("resnet101", _IMAGE), "ResNet-101, torchvision's layers",
                           takes_args=True),
    "gpt2": ModelSpec("tokens", _zoo("gpt2", _LM), "GPT-2-style decoder; --vocab, --seq-len, --model-arg "
                      "n_layer=2 n_head=2 n_embd=64 (GPT-2 small: 12/12/768)", takes_args=True),
}
FACTORY_FORMS = "package.module:factory, path/to/file.py:factory or torchvision:NAME"


def check_config(cfg: ModelConfig) -> None:
    """Raise HpcError for an unknown model or sizes that cannot build (cheap: no torch, no import)."""
    if not cfg.builtin and ":" not in cfg.name:
        raise HpcError(f"unknown model '{cfg.name}' (built-in: {', '.join(MODELS)}; or {FACTORY_FORMS})")
    for key in ("width", "features", "classes", "channels", "image", "vocab", "seq_len", "heads"):
        if getattr(cfg, key) < 1:
            raise HpcError(f"model {key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.input_shape is not None and (not cfg.input_shape or min(cfg.input_shape) < 1):
        raise HpcError(f"--input-shape must be sizes >= 1, got {cfg.input_shape}")
    if not cfg.builtin:
        return
    spec = MODELS[cfg.name]
    if cfg.args and not spec.takes_args:
        raise HpcError(f"--model-arg is for factory models (the zoo: {', '.join(zoo_names())}, or "
                       f"{FACTORY_FORMS}); '{cfg.name}' is sized by --{'/--'.join(spec.flags)}")
    given = getattr(spec.build, "given", None)
    for key, _ in cfg.args:
        if given is not None and key in given(cfg):
            flag = {"num_classes": "--classes", "in_channels": "--input-shape", "vocab_size": "--vocab",
                    "n_positions": "--seq-len"}.get(key, key)
            raise HpcError(f"--model-arg {key}: '{cfg.name}' takes it from {flag}")
    if "depth" in spec.flags and (cfg.depth < 0 or (cfg.name != "mlp" and cfg.depth < 1)):
        raise HpcError(f"model depth must be >= {0 if cfg.name == 'mlp' else 1}, got {cfg.depth}")
    if cfg.name == "transformer" and cfg.width % cfg.heads:
        raise HpcError(f"transformer width {cfg.width} is not divisible by --heads {cfg.heads}")


def zoo_names() -> list[str]:
    """The registered standard architectures (factories that take --model-arg)."""
    return [n for n, m in MODELS.items() if m.takes_args]


def factory_target(spec: str) -> str:
    """`module:func` / `file.py:func` a factory SPEC names (`torchvision:NAME` = torchvision.models.NAME)."""
    left, _, attr = spec.rpartition(":")
    return f"torchvision.models:{attr}" if left == "torchvision" else spec


def precheck_factory(spec: str) -> None:
    """Parent-side: the factory's file or package exists (imports nothing)."""
    from hpc.plugins.registry import precheck_callable

    precheck_callable(factory_target(spec), what="model factory", spec=spec)


def _call_factory(factory: Callable, spec: str, kwargs: dict[str, Any]) -> "torch.nn.Module":
    """factory(**kwargs), checked: an exception or a non-Module is one clear HpcError."""
    from torch import nn

    try:
        model = factory(**kwargs)
    except HpcError:
        raise
    except SystemExit as exc:  # it would end every rank "successfully", with nothing trained
        raise HpcError(f"the workload called sys.exit({exc.code!r}): model factory '{spec}' exited "
                       "instead of returning a model") from None
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise HpcError(f"model factory '{spec}'({shown}) raised {type(exc).__name__}: {msg}") from None
    if not isinstance(model, nn.Module):
        raise HpcError(f"model factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _build_user(cfg: ModelConfig) -> "torch.nn.Module":
    from hpc.plugins.registry import resolve_callable

    target = factory_target(cfg.name)
    factory = resolve_callable(target, what="model factory", spec=cfg.name)
    kwargs = dict(cfg.args)
    if target.startswith("torchvision.models:") and cfg.kind != "tokens":
        kwargs.setdefault("num_classes", cfg.classes)
    return _call_factory(factory, cfg.name, kwargs)


def build(cfg: ModelConfig) -> "torch.nn.Module":
    """The model for `cfg`, with parameters drawn from `cfg.seed` (identical on every rank)."""
    import torch

    check_config(cfg)
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        return MODELS[cfg.name].build(cfg) if cfg.builtin else _build_user(cfg)
    finally:
        torch.random.set_rng_state(state)


def check_output(cfg: ModelConfig, model: "torch.nn.Module", device: "torch.device | str" = "cpu") -> None:
    """One forward pass on two zero samples (eval mode: no running statistic moves) must give logits
    of (2, classes), or (2, seq_len, vocab) for token models; otherwise a one-line HpcError."""
    import torch

    shape = cfg.sample_shape()
    tokens = cfg.kind == "tokens"
    x = torch.zeros((2, *shape), dtype=torch.long if tokens else torch.float32, device=device)
    want = (2, cfg.seq_len, cfg.vocab) if tokens else (2, cfg.classes)
    fed = "x".join(map(str, shape)) + (" token ids" if tokens else "")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300]
        raise HpcError(f"model '{cfg.name}' fails on input of {fed} per sample: {type(exc).__name__}: "
                       f"{msg}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise HpcError(f"model '{cfg.name}' returns {type(out).__name__}; hpc train needs a tensor of "
                       f"logits {want}")
    if tuple(out.shape) != want:
        need = f"--vocab {cfg.vocab} and --seq-len {cfg.seq_len}" if tokens else f"--classes {cfg.classes}"
        raise HpcError(f"model '{cfg.name}' outputs shape {tuple(out.shape)} for 2 samples of {fed}; "
                       f"{need} needs {want}")
    if not out.is_floating_point():
        raise HpcError(f"model '{cfg.name}' outputs {out.dtype}; logits must be floating point")


# -- parsing the user's flags (pure: the CLI and Python callers share them) -------------------------

def parse_model_args(items: Sequence[str] | Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """`key=value` strings (or a mapping) -> sorted ((key, value), ...), values as Python literals:
    int, float, true/false, none, else the text (quotes stripped)."""
    if not items:
        return ()
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, sep, text = str(item).partition("=")
            key = key.strip()
            if not sep or not key.isidentifier():
                raise HpcError(f"bad --model-arg '{item}': expected key=value with a Python name as key "
                               "(e.g. --model-arg width=128)")
            pairs.append((key, _literal(text.strip())))
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise HpcError(f"--model-arg {key} is given twice")
        seen.add(key)
    return tuple(sorted(pairs))


def _literal(text: str) -> Any:
    for conv in (int, float):
        try:
            value = conv(text)
        except ValueError:
            continue
        if conv is float and not math.isfinite(value) and text.lower() not in ("inf", "-inf", "nan"):
            continue
        return value
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """`3x32x32` / `512` (or a sequence of ints) -> (3, 32, 32); a one-line HpcError otherwise."""
    if text is None:
        return None
    if not isinstance(text, str):
        dims = tuple(text)
        if not dims or not all(isinstance(d, int) and d >= 1 for d in dims):
            raise HpcError(f"bad --input-shape {dims}: expected positive sizes like 3x32x32 or 512")
        return dims
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise HpcError(f"bad --input-shape '{text}': expected positive sizes like 3x32x32 or 512")
    return dims


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


MAX_LABELS = 1 << 24  # more classes (or a vocabulary larger) than this is a mistake in the labels


def _label_count(value: Any, what: str) -> int:
    """A number of classes / vocabulary size read from a data file: an integer in 2..MAX_LABELS."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    try:
        n = int(value.strip()) if isinstance(value, str) else int(value)
        ok = not isinstance(value, bool) and (isinstance(value, str) or n == value)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise HpcError(f"{what} is {value!r}, not a number of classes (an integer); fix the file")
    if not 1 <= n <= MAX_LABELS:
        raise HpcError(f"{what} is {n}: a model takes up to {MAX_LABELS} classes (labels are class "
                       "indices 0..K-1; give --classes K, or fix the labels)")
    return n


def config_from_data(cfg: ModelConfig, sample_shape: tuple[int, ...], x_dtype: np.dtype,
                     attrs: dict[str, Any], y_max: int | None, explicit: Mapping[str, Any] | None = None,
                     source: str = "the data file") -> ModelConfig:
    """Adapt the model's input/output sizes to an HDF5 file's samples (shape, classes, vocab).

    `explicit`: the size flags the user set (flag -> value, e.g. {"--classes": 5}); one that
    contradicts the file is an error rather than silently replaced.
    """
    explicit = dict(explicit or {})
    attrs = dict(attrs)
    for key in ("classes", "vocab"):
        if attrs.get(key) is not None:
            attrs[key] = _label_count(attrs[key], f"{source}: attribute {key!r}")
    if y_max is not None:
        y_max = _label_count(int(y_max) + 1, f"{source}: its largest label + 1") - 1
    # uint8 samples of 2+ dimensions are stored images (CIFAR-style): trained on as floats (0..255)
    images_u8 = x_dtype.kind == "u" and x_dtype.itemsize == 1 and len(sample_shape) >= 2
    floating, integral = x_dtype.kind == "f" or images_u8, x_dtype.kind in "iu"
    kind = cfg.kind if cfg.builtin or cfg.input_kind else ("tensor" if floating else "tokens")
    file_classes = attrs.get("classes") or (y_max + 1 if y_max is not None else None)
    shape_text = "x".join(map(str, sample_shape))

    def agree(flag: str, theirs: Any, what: str) -> None:
        if flag in explicit and explicit[flag] != theirs:
            mine = explicit[flag]
            mine = "x".join(map(str, mine)) if isinstance(mine, tuple) else mine
            theirs = "x".join(map(str, theirs)) if isinstance(theirs, tuple) else theirs
            raise HpcError(f"{flag} {mine} contradicts {source}, which holds {what} {theirs} "
                           f"(drop {flag} to use the file's)")

    if kind != "tokens" and not floating:
        hint = "use --model transformer" if cfg.builtin else "drop --input-shape to train on them as tokens"
        raise HpcError(f"model '{cfg.name}' needs floating-point samples, {source} holds {x_dtype} "
                       f"(token ids? {hint})")
    classes = int(file_classes or cfg.classes)
    if kind != "tokens" and file_classes:
        agree("--classes", int(file_classes), "classes")
    if kind == "tabular":
        if len(sample_shape) != 1:
            raise HpcError(f"model '{cfg.name}' needs tabular samples (1-D), {source} has shape "
                           f"{sample_shape}: use --model cnn for images, transformer for tokens")
        agree("--features", sample_shape[0], "features")
        agree("--input-shape", tuple(sample_shape), "samples of")
        return replace(cfg, features=sample_shape[0], classes=classes)
    if kind == "image":
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise HpcError(f"model '{cfg.name}' needs square images (C, H, H), {source} has shape "
                           f"{sample_shape}")
        agree("--image", sample_shape[1], "images of side")
        agree("--input-shape", tuple(sample_shape), "samples of")
        return replace(cfg, channels=sample_shape[0], image=sample_shape[1], classes=classes)
    if kind == "tensor":
        agree("--input-shape", tuple(sample_shape), "samples of")
        return replace(cfg, input_kind="tensor", input_shape=tuple(sample_shape), classes=classes)
    if len(sample_shape) != 1 or not integral:
        raise HpcError(f"model '{cfg.name}' needs token ids (N, L) of integers, {source} has "
                       f"{shape_text} x {x_dtype}")
    vocab = int(attrs.get("vocab") or attrs.get("classes") or (y_max + 1 if y_max is not None else cfg.vocab))
    agree("--seq-len", sample_shape[0], "sequences of length")
    if attrs.get("vocab") or attrs.get("classes") or y_max is not None:
        agree("--vocab", vocab, "a vocabulary of")
    return replace(cfg, input_kind=None if cfg.builtin else "tokens", seq_len=sample_shape[0], vocab=vocab)
