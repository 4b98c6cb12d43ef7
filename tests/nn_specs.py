"""Hand-built canonical specs for engine tests (independent of the YAML parser).

Each factory takes the input shape and computes the output shape with the formulas of
DESIGN.md section 2, so tests can chain layers: ``chain((1, 8, 8), conv(4, 3), pool(), fc(10))``.
"""

from __future__ import annotations

import math

from cnncli.spec.model import FC, Activation, Conv, NetSpec, Pool


def act(type="relu", alpha=0.01, pieces=2):
    return Activation(type=type, alpha=alpha, pieces=pieces)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv(filters, size=3, stride=1, padding=0, activation="relu", init=None, combine="full",
         sparsity=0.0, sparsity_penalty="entropy", **act_opts):
    """A factory: call it with (name, in_shape) to get the Conv spec."""

    def make(name, in_shape):
        c, h, w = in_shape
        kh, kw = _pair(size)
        sh, sw = _pair(stride)
        if padding == "same":
            ho, wo = math.ceil(h / sh), math.ceil(w / sw)
            ph = max(0, (ho - 1) * sh + kh - h)
            pw = max(0, (wo - 1) * sw + kw - w)
            pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
            mode = "same"
        elif padding == "full":
            pad, mode = (kh - 1, kh - 1, kw - 1, kw - 1), "full"
        elif padding == "valid":
            pad, mode = (0, 0, 0, 0), "valid"
        elif isinstance(padding, int):
            pad, mode = (padding,) * 4, "explicit"
        else:
            pad, mode = tuple(padding), "explicit"
        ho = (h + pad[0] + pad[1] - kh) // sh + 1
        wo = (w + pad[2] + pad[3] - kw) // sw + 1
        a = act(activation, **act_opts)
        ini = init or ("he" if activation in ("relu", "leaky_relu", "prelu", "maxout")
                       else "xavier")
        return Conv(name=name, in_shape=(c, h, w), out_shape=(filters, ho, wo), filters=filters,
                    size=(kh, kw), stride=(sh, sw), padding=pad, padding_mode=mode,
                    activation=a, init=ini, combine=combine, sparsity=sparsity,
                    sparsity_penalty=sparsity_penalty)

    make.kind = "conv"
    return make


def pool(type="max", size=2, stride=None, activation="none", **act_opts):
    def make(name, in_shape):
        c, h, w = in_shape
        kh, kw = _pair(size)
        sh, sw = _pair(stride) if stride is not None else (kh, kw)
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        return Pool(name=name, in_shape=(c, h, w), out_shape=(c, ho, wo), type=type,
                    size=(kh, kw), stride=(sh, sw), activation=act(activation, **act_opts))

    make.kind = "pool"
    return make


def fc(units, activation="none", dropout=0.0, init=None, **act_opts):
    def make(name, in_shape):
        ini = init or ("he" if activation in ("relu", "leaky_relu", "prelu", "maxout")
                       else "xavier")
        return FC(name=name, in_shape=tuple(in_shape), out_shape=(units,), units=units,
                  activation=act(activation, **act_opts), init=ini, dropout=dropout)

    make.kind = "fc"
    return make


def chain(input_shape, *makers, name="test") -> NetSpec:
    """A NetSpec from layer factories, numbered per kind from 1 as the parser does."""
    counts = {"conv": 0, "pool": 0, "fc": 0}
    shape = tuple(input_shape)
    layers = []
    for m in makers:
        counts[m.kind] += 1
        layer = m(f"{m.kind}{counts[m.kind]}", shape)
        layers.append(layer)
        shape = layer.out_shape
    return NetSpec(name=name, input=tuple(input_shape), layers=tuple(layers))


def lenet5() -> NetSpec:
    return chain((1, 28, 28), conv(6, 5, padding=2), pool(), conv(16, 5), pool(),
                 fc(120, "relu"), fc(84, "relu"), fc(10), name="lenet5")


def cifar() -> NetSpec:
    return chain((3, 32, 32), conv(32, 3, padding="same"), conv(32, 3, padding="same"), pool(),
                 conv(64, 3, padding="same"), conv(64, 3, padding="same"), pool(),
                 fc(256, "relu"), fc(10), name="cifar")


def alexnet() -> NetSpec:
    return chain((3, 227, 227), conv(96, 11, stride=4), pool(size=3, stride=2),
                 conv(256, 5, padding=2), pool(size=3, stride=2), conv(384, 3, padding=1),
                 conv(384, 3, padding=1), conv(256, 3, padding=1), pool(size=3, stride=2),
                 fc(4096, "relu", dropout=0.5), fc(4096, "relu", dropout=0.5), fc(1000),
                 name="alexnet")
