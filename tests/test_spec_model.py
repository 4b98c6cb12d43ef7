"""The model section: compact and explicit forms, broadcasting, options, shapes, limits."""

from __future__ import annotations

import copy
import time

import pytest
from conftest import assert_clean_error

from cnncli.errors import SpecError
from cnncli.spec import load_config, param_shapes
from cnncli.spec.model import FC, Activation, Conv, Pool

LENET_EXPLICIT = """
model:
  name: lenet5
  input: [1, 28, 28]
  blocks:
    - conv: [{filters: 6, size: 5, padding: 2, activation: relu}]
      pool: {type: max, size: 2}
    - conv: [{filters: 16, size: 5}]
      pool: {type: max, size: 2}
  fc: [{units: 120, activation: relu}, {units: 84}, {units: 10}]
"""

ALEXNET_EXPLICIT = """
model:
  name: alexnet
  input: [3, 227, 227]
  blocks:
    - conv: [{filters: 96, size: 11, stride: 4}]
      pool: {size: 3, stride: 2}
    - conv: [{filters: 256, size: 5, padding: 2}]
      pool: {size: 3, stride: 2}
    - conv:
        - {filters: 384, size: 3, padding: 1}
        - {filters: 384, size: 3, padding: 1}
        - {filters: 256, size: 3, padding: 1}
      pool: {type: max, size: 3, stride: 2}
  fc:
    - {units: 4096, dropout: 0.5}
    - {units: 4096, dropout: 0.5}
    - {units: 1000, activation: none}
"""

QUICKSTART_EXPLICIT = """
model:
  name: quickstart
  input: [1, 28, 28]
  blocks:
    - conv: [{filters: 16, size: 5, padding: same}]
      pool: {type: max, size: 2, stride: 2}
    - conv: [{filters: 32, size: [5, 5], stride: [1, 1], padding: same}]
      pool: {}
  fc: [{units: 128, dropout: 0.3}, {units: 10, dropout: 0}]
"""

FASHION_COMPACT = """
model:
  name: fashion-mnist
  input: [1, 28, 28]
  pattern: "INPUT -> [[CONV]*2 -> POOL]*2 -> [FC]*2"
  conv: {filters: [32, 64], size: 3, padding: same}
  pool: {type: max, size: 2}
  fc: {units: [256, 10], dropout: [0.25, 0]}
"""

TUTORIAL_EXPLICIT = """
model:
  name: tutorial-figure
  input: [1, 28, 28]
  blocks:
    - {conv: {filters: 3, size: 5}, pool: {}}
    - {conv: {filters: 5, size: 5}, pool: {}}
  fc: [{units: 32}, {units: 10}]
"""


@pytest.mark.parametrize(("bundled", "explicit"), [
    ("lenet5", LENET_EXPLICIT), ("alexnet", ALEXNET_EXPLICIT),
    ("quickstart", QUICKSTART_EXPLICIT), ("fashion-mnist", FASHION_COMPACT),
    ("tutorial-figure", TUTORIAL_EXPLICIT),
])
def test_compact_and_explicit_give_identical_netspecs(bundled, explicit):
    a = load_config(bundled).model
    b = load_config(explicit).model
    assert a == b
    assert hash(a) == hash(b)


def test_lenet5_shapes_and_layers():
    net = load_config("lenet5").model
    assert [layer.name for layer in net.layers] == [
        "conv1", "pool1", "conv2", "pool2", "fc1", "fc2", "fc3"]
    assert [layer.out_shape for layer in net.layers] == [
        (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120,), (84,), (10,)]
    assert net.layers[0].padding == (2, 2, 2, 2)
    assert net.layers[2].padding_mode == "valid"
    assert net.layers[4].in_shape == (16, 5, 5)
    assert net.layers[-1].activation == Activation("none")
    assert net.layers[-1].init == "xavier"
    assert net.layers[0].init == "he"
    assert net.outputs == 10


def _net(model: str):
    return load_config("model:\n" + model).model


BASE = """  input: [1, 28, 28]
  pattern: "INPUT -> [[CONV]*1 -> POOL]*2 -> [[CONV]*3 -> POOL] -> [FC]*3"
"""


def test_broadcast_one_per_block_and_one_per_layer():
    per_block = _net(BASE + "  conv: {filters: [4, 8, 16], size: 3, padding: same}\n"
                     "  fc: {units: [20, 10, 5]}\n")
    convs = [layer for layer in per_block.layers if isinstance(layer, Conv)]
    assert [c.filters for c in convs] == [4, 8, 16, 16, 16]
    per_layer = _net(BASE + "  conv: {filters: [4, 8, 16, 17, 18], size: 3, padding: same}\n"
                     "  fc: {units: [20, 10, 5]}\n")
    convs = [layer for layer in per_layer.layers if isinstance(layer, Conv)]
    assert [c.filters for c in convs] == [4, 8, 16, 17, 18]
    one = _net(BASE + "  conv: {filters: [7], size: 3, padding: same}\n  fc: {units: [5]}\n")
    assert {c.filters for c in one.layers if isinstance(c, Conv)} == {7}
    assert [f.units for f in one.layers if isinstance(f, FC)] == [5, 5, 5]


@pytest.mark.parametrize(("option", "fits"), [
    ("  conv: {filters: [4, 8], size: 3, padding: same}\n  fc: {units: 10}\n",
     "1 (one value for all), 3 (one per block), 5 (one per conv layer)"),
    ("  conv: {filters: 4, size: 3, padding: same}\n  pool: {size: [2, 2]}\n"
     "  fc: {units: 10}\n", "1 (one value for all), 3 (one per POOL)"),
    ("  conv: {filters: 4, size: 3, padding: same}\n  fc: {units: [10, 10]}\n",
     "1 (one value for all), 3 (one per FC layer)"),
    ("  conv: {filters: 4, size: 3, padding: same}\n  fc: {units: 10, activation: [relu, "
     "tanh]}\n", "3 (one per FC layer)"),
])
def test_broadcast_length_errors_name_what_fits(option, fits):
    with pytest.raises(SpecError) as info:
        _net(BASE + option)
    assert "has 2 values" in str(info.value)
    assert fits in str(info.value)


def test_pairs_are_nested_in_the_compact_form():
    pairs = _net('  input: [1, 28, 28]\n  pattern: "INPUT -> [[CONV]*1 -> POOL]*2 -> FC"\n'
                 "  conv: {filters: 4, size: [[5, 3]]}\n  fc: {units: 10}\n")
    assert {c.size for c in pairs.layers if isinstance(c, Conv)} == {(5, 3)}
    per_block = _net('  input: [1, 28, 28]\n  pattern: "INPUT -> [[CONV]*1 -> POOL]*2 -> FC"\n'
                     "  conv: {filters: 4, size: [5, 3]}\n  fc: {units: 10}\n")
    assert [c.size for c in per_block.layers if isinstance(c, Conv)] == [(5, 5), (3, 3)]
    mixed = _net('  input: [1, 28, 28]\n  pattern: "INPUT -> [[CONV]*1 -> POOL]*2 -> FC"\n'
                 "  conv: {filters: 4, size: [[5, 3], 3], padding: [[1, 2], 0]}\n"
                 "  fc: {units: 10}\n")
    convs = [c for c in mixed.layers if isinstance(c, Conv)]
    assert [c.size for c in convs] == [(5, 3), (3, 3)]
    assert convs[0].padding == (1, 1, 2, 2)


def test_fc_activation_hidden_and_output():
    net = _net('  input: [4, 1, 1]\n  pattern: "INPUT -> [FC]*3"\n'
               "  fc: {units: [8, 8, 2], activation: tanh}\n")
    assert [f.activation.type for f in net.layers] == ["tanh", "tanh", "none"]
    assert [f.init for f in net.layers] == ["xavier", "xavier", "xavier"]
    net = _net('  input: [4, 1, 1]\n  pattern: "INPUT -> [FC]*3"\n'
               "  fc: {units: [8, 8, 2], activation: leaky_relu, alpha: 0.2, "
               "output_activation: sigmoid}\n")
    assert [f.activation for f in net.layers] == [
        Activation("leaky_relu", 0.2), Activation("leaky_relu", 0.2), Activation("sigmoid")]
    net = _net('  input: [4, 1, 1]\n  pattern: "INPUT -> [FC]*3"\n'
               "  fc: {units: [8, 8, 2], activation: [relu, tanh, sigmoid]}\n")
    assert [f.activation.type for f in net.layers] == ["relu", "tanh", "sigmoid"]


def test_mlp_with_m_zero():
    net = _net('  input: [1, 28, 28]\n  pattern: "INPUT -> [[CONV]*2 -> POOL]*0 -> [FC]*2"\n'
               "  fc: {units: [32, 10]}\n")
    assert [layer.kind for layer in net.layers] == ["fc", "fc"]
    assert net.layers[0].in_features == 784
    explicit = _net("  input: [1, 28, 28]\n  fc: [{units: 32}, {units: 10}]\n")
    assert explicit == net


def test_padding_modes():
    def conv(opts: str, size=(1, 8, 8)):
        return _net(f"  input: {list(size)}\n  blocks: [{{conv: [{{{opts}}}]}}]\n"
                    "  fc: [{units: 2}]\n").layers[0]

    same = conv("filters: 1, size: 3, stride: 2, padding: same")
    assert same.out_shape == (1, 4, 4)            # ceil(8/2)
    assert same.padding == (0, 1, 0, 1)           # the extra row/col at bottom/right
    odd = conv("filters: 1, size: 3, stride: 2, padding: same", (1, 7, 9))
    assert odd.out_shape == (1, 4, 5)
    assert odd.padding == (1, 1, 1, 1)
    full = conv("filters: 1, size: [3, 5], padding: full")
    assert full.padding == (2, 2, 4, 4)
    assert full.out_shape == (1, 10, 12)
    valid = conv("filters: 1, size: 3, padding: valid")
    assert valid.out_shape == (1, 6, 6) and valid.padding_mode == "valid"
    zero = conv("filters: 1, size: 3, padding: 0")
    assert zero == valid
    pair = conv("filters: 1, size: 3, padding: [1, 0]")
    assert pair.padding == (1, 1, 0, 0) and pair.out_shape == (1, 8, 6)
    four = conv("filters: 1, size: 3, padding: [0, 1, 2, 1]")
    assert four.padding == (0, 1, 2, 1) and four.out_shape == (1, 7, 9)
    strided = conv("filters: 1, size: 3, stride: 2")
    assert strided.out_shape == (1, 3, 3)
    assert strided.dropped == (1, 1)              # floor((8 - 3)/2) drops one row and column


def test_activation_options_and_init_defaults():
    def first(opts: str):
        return _net("  input: [3, 8, 8]\n  blocks: [{conv: [{filters: 4, size: 3, "
                    f"{opts}}}]}}]\n  fc: [{{units: 2}}]\n").layers[0]

    assert first("activation: leaky_relu, alpha: 0.2").activation == Activation(
        "leaky_relu", 0.2)
    assert first("activation: leaky_relu").activation.alpha == 0.01
    mx = first("activation: maxout, pieces: 3")
    assert mx.activation == Activation("maxout", pieces=3) and mx.maps == 12
    assert param_shapes(mx)["conv1.weight"] == (12, 3, 3, 3)
    assert mx.init == "he"
    assert first("activation: tanh").init == "xavier"
    assert first("activation: sigmoid").init == "xavier"
    assert first("activation: prelu").init == "he"
    assert first("activation: tanh, init: he").init == "he"
    assert first("activation: PReLU").activation.type == "prelu"


def test_learned_combination_and_the_l1_warning():
    cfg = load_config("model:\n  input: [3, 8, 8]\n  blocks: [{conv: [{filters: 4, size: 3, "
                      "combine: learned, sparsity: 0.01}]}]\n  fc: [{units: 2}]\n")
    conv = cfg.model.layers[0]
    assert (conv.combine, conv.sparsity, conv.sparsity_penalty) == ("learned", 0.01, "entropy")
    assert cfg.warnings == ()
    cfg = load_config("model:\n  input: [3, 8, 8]\n  blocks: [{conv: [{filters: 4, size: 3, "
                      "combine: learned, sparsity: 0.01, sparsity_penalty: l1}]}]\n"
                      "  fc: [{units: 2}]\n")
    assert cfg.model.layers[0].sparsity_penalty == "l1"
    assert len(cfg.warnings) == 1
    assert "l1 cannot make the combination sparse" in cfg.warnings[0]
    assert "<config>:3:" in cfg.warnings[0]


@pytest.mark.parametrize(("opts", "warning"), [
    ("conv: [{filters: 2, size: 3, alpha: 0.1}]", "alpha is an option of leaky_relu"),
    ("conv: [{filters: 2, size: 3, pieces: 3}]", "pieces is an option of maxout"),
    ("conv: [{filters: 2, size: 3, sparsity: 0.1}]", "applies to combine: learned"),
    ("conv: [{filters: 2, size: 3}], pool: {type: max, activation: relu}",
     "applies to subsample pools only"),
])
def test_ignored_options_warn(opts, warning):
    cfg = load_config(f"model:\n  input: [1, 8, 8]\n  blocks: [{{{opts}}}]\n"
                      "  fc: [{units: 2}]\n")
    assert any(warning in w for w in cfg.warnings), cfg.warnings


def test_broadcast_activation_options_only_reach_the_layers_they_concern():
    cfg = load_config('model:\n  input: [1, 16, 16]\n  pattern: "INPUT -> CONV -> CONV -> FC"\n'
                      "  conv: {filters: 2, size: 3, activation: [leaky_relu, relu], "
                      "alpha: 0.3}\n  fc: {units: 2}\n")
    assert cfg.warnings == ()
    assert [c.activation for c in cfg.model.layers[:2]] == [
        Activation("leaky_relu", 0.3), Activation("relu")]


def test_subsample_pool():
    net = _net("  input: [2, 8, 8]\n  blocks: [{conv: [{filters: 3, size: 3}], pool: "
               "{type: subsample, size: 2, activation: sigmoid}}]\n  fc: [{units: 2}]\n")
    pool = net.layers[1]
    assert isinstance(pool, Pool)
    assert pool.activation == Activation("sigmoid") and pool.out_shape == (3, 3, 3)
    assert param_shapes(pool) == {"pool1.beta": (3,), "pool1.bias": (3,)}
    with pytest.raises(SpecError, match="maxout is not available for pools"):
        _net("  input: [2, 8, 8]\n  blocks: [{conv: [{filters: 3, size: 3}], pool: "
             "{type: subsample, activation: maxout}}]\n  fc: [{units: 2}]\n")


EXPLICIT = {
    "model": {
        "input": [1, 16, 16],
        "blocks": [{"conv": [{"filters": 4, "size": 3}], "pool": {"type": "max", "size": 2}}],
        "fc": [{"units": 8, "dropout": 0.1}, {"units": 3}],
    },
    "train": {"epochs": 2},
}


def _set(tree: dict, path: tuple, value):
    tree = copy.deepcopy(tree)
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return tree


CONV = ("model", "blocks", 0, "conv", 0)
POOL = ("model", "blocks", 0, "pool")
FC0 = ("model", "fc", 0)

RANGE_CASES = [
    (CONV + ("filters",), 0, "model.blocks[0].conv[0].filters", "must be an integer in [1,"),
    (CONV + ("filters",), -3, "model.blocks[0].conv[0].filters", "got -3"),
    (CONV + ("filters",), 2.5, "model.blocks[0].conv[0].filters", "expected integer, got float"),
    (CONV + ("filters",), True, "model.blocks[0].conv[0].filters", "expected integer, got bool"),
    (CONV + ("size",), 0, "model.blocks[0].conv[0].size", "must be an integer >= 1, got 0"),
    (CONV + ("size",), [3, 3, 3], "model.blocks[0].conv[0].size", "pair [h, w]"),
    (CONV + ("size",), [3, 0], "model.blocks[0].conv[0].size[1]", "got 0"),
    (CONV + ("stride",), 0, "model.blocks[0].conv[0].stride", "got 0"),
    (CONV + ("padding",), -1, "model.blocks[0].conv[0].padding", "got -1"),
    (CONV + ("padding",), 3, "model.blocks[0].conv[0].padding", "kernel size minus one"),
    (CONV + ("padding",), "wide", "model.blocks[0].conv[0].padding", "valid, same, full"),
    (CONV + ("padding",), [1, 1, 1], "model.blocks[0].conv[0].padding", "list of 3"),
    (CONV + ("activation",), "relux", "model.blocks[0].conv[0].activation", "one of relu"),
    (CONV + ("activation",), False, "model.blocks[0].conv[0].activation", "quote it"),
    (CONV, {"filters": 2, "size": 3, "activation": "leaky_relu", "alpha": 1.5},
     "model.blocks[0].conv[0].alpha", "in [0, 1)"),
    (CONV, {"filters": 2, "size": 3, "activation": "maxout", "pieces": 1},
     "model.blocks[0].conv[0].pieces", "in [2, 16]"),
    (CONV, {"filters": 2, "size": 3, "combine": "learned", "sparsity": -1},
     "model.blocks[0].conv[0].sparsity", ">= 0"),
    (CONV, {"filters": 2, "size": 3, "combine": "learned", "sparsity_penalty": "l2"},
     "model.blocks[0].conv[0].sparsity_penalty", "entropy, l1"),
    (CONV + ("init",), "glorot", "model.blocks[0].conv[0].init", "one of he, xavier"),
    (CONV + ("combine",), "sum", "model.blocks[0].conv[0].combine", "full, learned"),
    (CONV + ("kernel",), 3, None, "unknown key 'model.blocks[0].conv[0].kernel'"),
    (POOL + ("type",), "avg", "model.blocks[0].pool.type", "max, mean, subsample"),
    (POOL + ("size",), 0, "model.blocks[0].pool.size", "got 0"),
    (POOL + ("size",), 15, "model.blocks[0].pool.size", "does not fit the 14x14 input"),
    (POOL + ("stride",), -2, "model.blocks[0].pool.stride", "got -2"),
    (FC0 + ("units",), 0, "model.fc[0].units", "got 0"),
    (FC0 + ("units",), "many", "model.fc[0].units", "expected integer, got string"),
    (FC0 + ("dropout",), 1.0, "model.fc[0].dropout", "in [0, 1)"),
    (FC0 + ("dropout",), -0.1, "model.fc[0].dropout", "in [0, 1)"),
    (FC0 + ("dropout",), "half", "model.fc[0].dropout", "expected a number"),
    (("model", "input"), [1, 16], "model.input", "[channels, height, width]"),
    (("model", "input"), [1, 0, 16], "model.input[1]", "got 0"),
    (("model", "input"), "28x28", "model.input", "expected a list"),
    (("model", "name"), "my net", "model.name", "not a valid name"),
    (("model", "name"), "a/b", "model.name", "not a valid name"),
    (("model", "fc"), [], "model.fc", "at least one fc layer"),
    (("model", "fc"), {"units": 10}, "model.fc", "without a pattern"),
    (("model", "blocks"), [{"pool": {}}], "model.blocks[0]", "missing required key"),
    (("model", "blocks"), [{"conv": []}], "model.blocks[0].conv", "at least one conv"),
    (("model", "pattern"), "INPUT -> FC", "model.blocks", "not both"),
    (("model", "conv"), {"filters": 3}, "model.conv", "goes with a pattern"),
    (("model", "extra"), 1, None, "unknown key 'model.extra'"),
    (("model",), [], "model", "expected a mapping"),
]


@pytest.mark.parametrize(("path", "value", "field", "needle"), RANGE_CASES)
def test_model_range_checks(path, value, field, needle):
    with pytest.raises(SpecError) as info:
        load_config(_set(EXPLICIT, path, value))
    err = info.value
    assert err.field == field, str(err)
    if needle:
        assert needle in str(err), str(err)
    shown = value if not isinstance(value, str) else repr(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "got" in str(err):
        assert str(shown) in str(err)


def test_missing_required_options():
    tree = _set(EXPLICIT, CONV, {"size": 3})
    with pytest.raises(SpecError, match="missing required key 'model.blocks\\[0\\].conv\\[0\\]"
                                        ".filters'"):
        load_config(tree)
    with pytest.raises(SpecError, match="missing required key 'model.input'"):
        load_config({"model": {"fc": [{"units": 2}]}})
    with pytest.raises(SpecError, match="missing required key 'model.conv'"):
        load_config('model:\n  input: [1, 8, 8]\n  pattern: "INPUT -> CONV -> FC"\n'
                    "  fc: {units: 2}\n")
    with pytest.raises(SpecError, match="the pattern has no POOL"):
        load_config('model:\n  input: [1, 8, 8]\n  pattern: "INPUT -> CONV -> FC"\n'
                    "  conv: {filters: 2, size: 3}\n  pool: {size: 2}\n  fc: {units: 2}\n")


def test_compact_errors_name_the_compact_field_and_line():
    with pytest.raises(SpecError) as info:
        load_config('model:\n  input: [1, 28, 28]\n  pattern: "INPUT -> CONV -> CONV -> FC"\n'
                    "  conv: {filters: [4, 0], size: 3}\n  fc: {units: 2}\n")
    err = info.value
    assert (err.line, err.col, err.field) == (4, 23, "model.conv.filters[1]")
    with pytest.raises(SpecError) as info:
        load_config('model:\n  input: [1, 28, 28]\n  pattern: "INPUT -> CONV -> FC"\n'
                    "  conv: {filters: 4, size: 3, strid: 2}\n  fc: {units: 2}\n")
    assert info.value.line == 4
    assert "unknown key 'model.conv.strid'" in str(info.value)
    assert info.value.hint == "did you mean 'stride'?"


def test_kernel_that_does_not_fit(cli, write):
    spec = write("model:\n  input: [1, 28, 28]\n  blocks:\n"
                 "    - conv: [{filters: 4, size: 5}]\n      pool: {size: 4}\n"
                 "    - conv: [{filters: 8, size: 7}]\n  fc: [{units: 10}]\n")
    res = cli("summary", spec)
    assert_clean_error(res, 2, f"{spec}:6:33: model.blocks[1].conv[0].size: a 7x7 kernel does "
                       "not fit the 6x6 input of this layer")


def test_kernel_larger_than_the_input(cli, write):
    spec = write("model:\n  input: [1, 28, 28]\n  blocks: [{conv: [{filters: 4, size: 31}]}]\n"
                 "  fc: [{units: 10}]\n")
    assert_clean_error(cli("summary", spec), 2, "a 31x31 kernel does not fit the 28x28 input")


def test_shrinking_chain_names_the_first_bad_layer_and_the_trace():
    with pytest.raises(SpecError) as info:
        load_config('model:\n  input: [1, 28, 28]\n  pattern: "INPUT -> [[CONV]*1 -> POOL]*5 '
                    '-> FC"\n  conv: {filters: 2, size: 3, padding: same}\n  fc: {units: 2}\n')
    text = str(info.value)
    assert "pool4" not in text.split("\n")[0]
    assert info.value.field == "model.pool.size"
    assert ("shape trace: input 1x28x28 -> conv1 2x28x28 -> pool1 2x14x14 -> conv2 2x14x14 -> "
            "pool2 2x7x7 -> conv3 2x7x7 -> pool3 2x3x3 -> conv4 2x3x3 -> pool4 2x1x1 -> conv5 "
            "2x1x1 -> pool5 (2x2 window on 1x1)") in text


@pytest.mark.parametrize("model", [
    '  input: [3, 64, 64]\n  pattern: "INPUT -> CONV -> FC"\n'
    "  conv: {filters: 1000000, size: 64}\n  fc: {units: 10}\n",
    '  input: [1, 1000, 1000]\n  pattern: "INPUT -> [FC]*2"\n  fc: {units: [1000000, 10]}\n',
])
def test_absurd_models_still_describe_themselves_fast(model):
    """The parser never refuses a network for its size (summary must describe it);
    only train and gradcheck refuse what cannot fit in memory."""
    from cnncli.engine.summary import summarize

    t0 = time.perf_counter()
    net = load_config("model:\n" + model).model
    assert summarize(net).total_params > 2**31
    assert time.perf_counter() - t0 < 1.0


def test_alexnet_parameter_count():
    from cnncli.spec.network import count_params

    net = load_config("alexnet").model
    assert sum(count_params(layer) for layer in net.layers) == 62_378_344


def test_model_name_defaults(write):
    spec = write(LENET_EXPLICIT.replace("  name: lenet5\n", ""), name="my net.yaml")
    assert load_config(spec).model.name == "my-net"
    assert load_config(LENET_EXPLICIT.replace("  name: lenet5\n", "")).model.name == "model"
    assert load_config("lenet5").model.name == "lenet5"


def test_absurd_model_through_the_cli(cli, write):
    spec = write("model:\n  input: [1, 28, 28]\n"
                 "  blocks: [{conv: [{filters: 1000000, size: 28}]}]\n"
                 "  fc: [{units: 1000000}, {units: 10}]\n")
    t0 = time.perf_counter()
    res = cli("summary", spec, "--json")
    assert res.exit_code == 0, res.output
    assert '"total_params": 1000796000010' in res.stdout
    assert time.perf_counter() - t0 < 1.0
