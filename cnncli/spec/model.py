"""The canonical, validated description of a network and its training run.

Everything after the spec parser sees only these frozen dataclasses: the pattern
grammar, the compact form and the explicit ``blocks:`` form all desugar into one
flat tuple of layers with shapes already inferred. No arrays live here.

Shapes are (C, H, W) for feature maps and (units,) after the first FC layer.
Tensor names (``conv1.weight``...) are fixed by the checkpoint format; see
``param_shapes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Shape = tuple[int, ...]

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "sigmoid", "tanh", "maxout", "none")
POOL_TYPES = ("max", "mean", "subsample")
INITS = ("he", "xavier")
COMBINES = ("full", "learned")
SPARSITY_PENALTIES = ("entropy", "l1")
LOSSES = ("cross_entropy", "mse", "hinge")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "step", "cosine")
NORMALIZE = ("standardize", "scale", "none")
FRAMINGS = ("digit", "resize")


@dataclass(frozen=True)
class Activation:
    """An activation function and its options.

    ``alpha`` is the leaky_relu slope; ``pieces`` the number of maxout pieces.
    A PReLU slope is a learned tensor ``<layer>.slope`` starting at 0.25.
    """

    type: str = "relu"
    alpha: float = 0.01
    pieces: int = 2

    @property
    def multiplier(self) -> int:
        """How many pre-activation maps/units the layer computes per output."""
        return self.pieces if self.type == "maxout" else 1


@dataclass(frozen=True)
class Conv:
    name: str                       # conv1, conv2, ... in network order
    in_shape: Shape                 # (C, H, W)
    out_shape: Shape                # (filters, H', W')
    filters: int
    size: tuple[int, int]           # (kh, kw)
    stride: tuple[int, int]         # (sh, sw)
    padding: tuple[int, int, int, int]   # resolved (top, bottom, left, right)
    padding_mode: str               # "valid" | "same" | "full" | "explicit"
    activation: Activation
    init: str                       # "he" | "xavier"
    combine: str = "full"           # "full" | "learned" (Bouvrie 2006, section 3.3)
    sparsity: float = 0.0           # lambda of the learned-combination penalty
    sparsity_penalty: str = "entropy"
    kind: str = field(default="conv", init=False)

    @property
    def maps(self) -> int:
        """Pre-activation maps computed (filters x maxout pieces)."""
        return self.filters * self.activation.multiplier

    @property
    def dropped(self) -> tuple[int, int]:
        """Input rows and columns the floor in the output-size formula leaves unused."""
        _, h, w = self.in_shape
        pt, pb, pl, pr = self.padding
        (kh, kw), (sh, sw) = self.size, self.stride
        return ((h + pt + pb - kh) % sh, (w + pl + pr - kw) % sw)


@dataclass(frozen=True)
class Pool:
    name: str                       # pool1, pool2, ...
    in_shape: Shape
    out_shape: Shape
    type: str                       # "max" | "mean" | "subsample"
    size: tuple[int, int]
    stride: tuple[int, int]
    activation: Activation          # only meaningful for "subsample" (default none)
    kind: str = field(default="pool", init=False)

    @property
    def dropped(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        (kh, kw), (sh, sw) = self.size, self.stride
        return ((h - kh) % sh, (w - kw) % sw)


@dataclass(frozen=True)
class FC:
    name: str                       # fc1, fc2, ...
    in_shape: Shape                 # from the previous layer; flattened in (C, H, W) order
    out_shape: Shape                # (units,)
    units: int
    activation: Activation
    init: str
    dropout: float = 0.0
    kind: str = field(default="fc", init=False)

    @property
    def in_features(self) -> int:
        n = 1
        for d in self.in_shape:
            n *= d
        return n


Layer = Conv | Pool | FC


@dataclass(frozen=True)
class NetSpec:
    name: str
    input: Shape                    # (C, H, W)
    layers: tuple[Layer, ...]

    @property
    def outputs(self) -> int:
        return self.layers[-1].out_shape[0]


def param_shapes(layer: Layer) -> dict[str, Shape]:
    """Tensor name -> shape in PyTorch layout, in network order, for one layer."""
    out: dict[str, Shape] = {}
    act = layer.activation
    if isinstance(layer, Conv):
        cin = layer.in_shape[0]
        kh, kw = layer.size
        if layer.combine == "learned":
            out[f"{layer.name}.weight"] = (cin, 1, kh, kw)
            out[f"{layer.name}.combine"] = (layer.maps, cin)
        else:
            out[f"{layer.name}.weight"] = (layer.maps, cin, kh, kw)
        out[f"{layer.name}.bias"] = (layer.maps,)
        slope_n = layer.filters
    elif isinstance(layer, Pool):
        if layer.type != "subsample":
            return out
        c = layer.in_shape[0]
        out[f"{layer.name}.beta"] = (c,)
        out[f"{layer.name}.bias"] = (c,)
        slope_n = c
    else:
        n = layer.units * act.multiplier
        out[f"{layer.name}.weight"] = (n, layer.in_features)
        out[f"{layer.name}.bias"] = (n,)
        slope_n = layer.units
    if act.type == "prelu":
        out[f"{layer.name}.slope"] = (slope_n,)
    return out


@dataclass(frozen=True)
class Augment:
    rotate: float = 0.0             # degrees, uniform in [-rotate, rotate]
    shift: float = 0.0              # pixels, uniform in [-shift, shift] on each axis
    scale: float = 0.0              # relative, uniform in [1 - scale, 1 + scale]
    noise: float = 0.0              # std of Gaussian noise added to [0, 1] pixels

    @property
    def active(self) -> bool:
        return any((self.rotate, self.shift, self.scale, self.noise))


@dataclass(frozen=True)
class DataSpec:
    # a path (resolved against the config's folder) or a named dataset; a tuple of them is
    # read as one dataset
    train: str | tuple[str, ...] | None = None
    test: str | tuple[str, ...] | None = None
    val_split: float = 0.1
    normalize: str = "standardize"
    augment: Augment = Augment()
    framing: str | None = None      # None = decided from the data (digit for MNIST-style)


@dataclass(frozen=True)
class Optimizer:
    type: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9           # sgd
    nesterov: bool = False          # sgd
    beta1: float = 0.9              # adam
    beta2: float = 0.999            # adam
    eps: float = 1e-8               # adam


@dataclass(frozen=True)
class Schedule:
    type: str = "none"
    step_size: int = 10             # step: epochs between decays
    gamma: float = 0.1              # step: decay factor
    min_lr: float = 0.0             # cosine: floor
    warmup: int = 0                 # epochs of linear warm-up (any schedule)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 64
    loss: str = "cross_entropy"
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    weight_decay: float = 0.0
    seed: int = 0
    early_stopping: int = 0         # patience in epochs; 0 = off
    dtype: str = "float32"


@dataclass(frozen=True)
class Config:
    model: NetSpec
    data: DataSpec
    train: TrainSpec
    source: str | None = field(default=None, compare=False)  # the file it came from
    resolved: dict[str, Any] = field(default_factory=dict, compare=False)  # every default filled
    warnings: tuple[str, ...] = field(default=(), compare=False)  # for the CLI to show
