"""load_config: sources, data/train sections, --set, --seed, the resolved tree, fuzzing."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
from conftest import assert_clean_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.errors import CnncliError, SpecError
from cnncli.resources import bundled_configs, configs_dir
from cnncli.spec import dump_yaml, load_config
from cnncli.spec.model import Augment, DataSpec, Optimizer, Schedule, TrainSpec

MODEL = """model:
  input: [1, 12, 12]
  pattern: "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*2"
  conv: {filters: 4, size: 3}
  fc: {units: [8, 3]}
"""


def spec(extra: str = "") -> str:
    return MODEL + extra


# ---- sources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", bundled_configs())
def test_every_bundled_config_loads_and_round_trips(name):
    cfg = load_config(name)
    assert cfg.model.name == name
    assert cfg.warnings == ()
    again = load_config(cfg.resolved)
    assert again == cfg
    assert again.resolved == cfg.resolved
    text = load_config(dump_yaml(cfg.resolved))
    assert text == cfg and text.resolved == cfg.resolved


def test_sources_agree(tmp_path, monkeypatch):
    path = configs_dir() / "lenet5.yaml"
    by_name = load_config("lenet5")
    assert load_config(path) == by_name
    assert load_config(str(path)) == by_name
    assert load_config(path.read_text()) == load_config(str(path))
    import yaml

    tree = yaml.safe_load(path.read_text())
    assert load_config(tree) == by_name
    assert load_config(by_name) == by_name
    assert by_name.source == str(path)
    # a file where the user is wins over the bundled name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lenet5").write_text(spec())
    assert load_config("lenet5").model.name == "lenet5"
    assert load_config("lenet5").model.layers[0].filters == 4


def test_a_dict_is_not_modified():
    import yaml

    tree = yaml.safe_load(spec("train: {epochs: 3}\n"))
    before = copy.deepcopy(tree)
    load_config(tree, ["train.epochs=5", "model.conv.filters=2"])
    assert tree == before


def test_bad_source_types():
    with pytest.raises(SpecError, match="a config is"):
        load_config(3.5)
    with pytest.raises(SpecError, match="keys must be strings"):
        load_config({1: 2})
    with pytest.raises(SpecError, match="unsupported value"):
        load_config({"model": {"input": object()}})
    with pytest.raises(SpecError, match="no such file") as info:
        load_config("no-such-config")
    assert "lenet5" in info.value.hint


def test_missing_model_and_unknown_top_level(cli, write):
    assert_clean_error(cli("summary", write("train: {epochs: 2}\n")), 2,
                       "missing required key 'model'")
    res = cli("summary", write(spec("trian: {epochs: 2}\n")))
    assert_clean_error(res, 2, "spec.yaml:6:1: unknown key 'trian'", "did you mean 'train'?")


# ---- data and train sections ---------------------------------------------------------------------


def test_defaults_are_filled():
    cfg = load_config(spec())
    assert cfg.data == DataSpec()
    assert cfg.train == TrainSpec()
    assert cfg.resolved["train"]["optimizer"] == {"type": "sgd", "lr": 0.01, "momentum": 0.9,
                                                  "nesterov": False}
    assert cfg.resolved["data"]["augment"] == {"rotate": 0.0, "shift": 0.0, "scale": 0.0,
                                               "noise": 0.0}


def test_full_train_and_data_sections(tmp_path):
    (tmp_path / "train.npz").write_bytes(b"")
    text = spec("""data:
  train: train.npz
  test: digits
  val_split: 0.2
  normalize: scale
  augment: {rotate: 10, shift: 2, scale: 0.1, noise: 0.02}
  framing: resize
train:
  epochs: 3
  batch_size: 32
  loss: hinge
  optimizer: {type: adam, lr: 1e-3, beta1: 0.8, beta2: 0.99, eps: 1.0e-7}
  schedule: {type: step, step_size: 2, gamma: 0.5, warmup: 1}
  weight_decay: 5.0e-4
  seed: 7
  early_stopping: 2
  dtype: float64
""")
    path = tmp_path / "conf" / "c.yaml"
    path.parent.mkdir()
    path.write_text(text.replace("train.npz", "../train.npz"))
    cfg = load_config(path)
    assert cfg.data == DataSpec(train=str(tmp_path / "train.npz"), test="digits", val_split=0.2,
                                normalize="scale", augment=Augment(10, 2, 0.1, 0.02),
                                framing="resize")
    assert cfg.train == TrainSpec(
        epochs=3, batch_size=32, loss="hinge",
        optimizer=Optimizer(type="adam", lr=0.001, beta1=0.8, beta2=0.99, eps=1e-7),
        schedule=Schedule(type="step", step_size=2, gamma=0.5, warmup=1), weight_decay=5e-4,
        seed=7, early_stopping=2, dtype="float64")
    assert load_config(cfg.resolved) == cfg


def test_data_paths(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "mydata").mkdir()
    path = folder / "c.yaml"
    path.write_text(spec("data: {train: mydata, test: sub/test.npz}\n"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert cfg.data.train == str(folder / "mydata")      # exists beside the config
    assert cfg.data.test == str(folder / "sub" / "test.npz")   # has a separator
    assert Path(cfg.resolved["data"]["test"]).is_absolute()
    named = load_config(spec("data: {train: fashion-mnist, test: digits}\n"))
    assert (named.data.train, named.data.test) == ("fashion-mnist", "digits")
    # --set paths are relative to the current folder
    (tmp_path / "here.npz").write_bytes(b"")
    cfg = load_config(path, ["data.train=here.npz", "data.test=./x/y.npz"])
    assert cfg.data.train == str(tmp_path / "here.npz")
    assert cfg.data.test == str(tmp_path / "x" / "y.npz")


def test_data_lists(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "mine").mkdir()
    path = folder / "c.yaml"
    path.write_text(spec("data: {train: [digits, mine, ./x.npz], test: [typeset]}\n"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert cfg.data.train == ("digits", str(folder / "mine"), str(folder / "x.npz"))
    assert cfg.data.test == "typeset"                # a list of one is that one
    assert cfg.resolved["data"]["train"] == ["digits", str(folder / "mine"),
                                             str(folder / "x.npz")]
    assert load_config(cfg.resolved) == cfg
    (tmp_path / "here.npz").write_bytes(b"")
    cfg = load_config(path, ["data.train=[digits, here.npz]"])
    assert cfg.data.train == ("digits", str(tmp_path / "here.npz"))
    with pytest.raises(SpecError, match="empty list") as e:
        load_config(spec("data: {train: []}\n"))
    assert e.value.field == "data.train"
    with pytest.raises(SpecError, match="expected string, got integer") as e:
        load_config(spec("data: {train: [digits, 3]}\n"))
    assert e.value.field == "data.train[1]"


def test_numeric_strings_are_numbers():
    cfg = load_config(spec("train: {optimizer: {lr: 1e-3}, weight_decay: 5e-4, epochs: 1e1}\n"))
    assert cfg.train.optimizer.lr == 0.001
    assert cfg.train.weight_decay == 0.0005
    assert cfg.train.epochs == 10


def test_shorthand_optimizer_and_schedule():
    cfg = load_config(spec("train: {optimizer: adam, schedule: cosine}\n"))
    assert cfg.train.optimizer == Optimizer(type="adam", lr=0.001)
    assert cfg.train.schedule == Schedule(type="cosine")


def test_options_of_another_optimizer_warn():
    cfg = load_config(spec("train: {optimizer: {type: adam, momentum: 0.5}}\n"))
    assert cfg.train.optimizer.momentum == Optimizer.momentum
    assert any("momentum is an option of sgd" in w for w in cfg.warnings)


# (yaml text under train:, field, message)
TRAIN_CASES = [
    ("epochs: \"ten\"", "train.epochs", "expected integer, got string 'ten'"),
    ("epochs: 3.5", "train.epochs", "expected integer, got float 3.5"),
    ("epochs: true", "train.epochs", "expected integer, got boolean"),
    ("epochs: 0", "train.epochs", "must be an integer in [1, 1000000], got 0"),
    ("batch_size: 0", "train.batch_size", "got 0"),
    ("batch_size: -4", "train.batch_size", "got -4"),
    ("loss: nll", "train.loss", "one of cross_entropy, mse, hinge"),
    ("optimizer: {lr: .nan}", "train.optimizer.lr", "must be a finite number > 0"),
    ("optimizer: {lr: .inf}", "train.optimizer.lr", "must be a finite number > 0"),
    ("optimizer: {lr: -0.1}", "train.optimizer.lr", "must be a number > 0, got -0.1"),
    ("optimizer: {lr: 0}", "train.optimizer.lr", "> 0"),
    ("optimizer: {lr: fast}", "train.optimizer.lr", "expected a number, got string"),
    ("optimizer: {type: rmsprop}", "train.optimizer.type", "one of sgd, adam"),
    ("optimizer: {momentum: 1.0}", "train.optimizer.momentum", "in [0, 1)"),
    ("optimizer: {nesterov: 1}", "train.optimizer.nesterov", "expected true or false"),
    ("optimizer: {type: adam, beta2: 1}", "train.optimizer.beta2", "in [0, 1)"),
    ("optimizer: {type: adam, eps: 0}", "train.optimizer.eps", "in (0, 1]"),
    ("optimizer: {learning_rate: 0.1}", None, "unknown key 'train.optimizer.learning_rate'"),
    ("schedule: {type: linear}", "train.schedule.type", "one of none, step, cosine"),
    ("schedule: {type: step, step_size: 0}", "train.schedule.step_size", "got 0"),
    ("schedule: {type: step, gamma: 0}", "train.schedule.gamma", "in (0, 1]"),
    ("schedule: {type: cosine, min_lr: -1}", "train.schedule.min_lr", ">= 0"),
    ("schedule: {warmup: -1}", "train.schedule.warmup", "got -1"),
    ("weight_decay: -1.0e-4", "train.weight_decay", ">= 0"),
    ("seed: -1", "train.seed", "must be an integer in [0, 2^63), got -1"),
    ("seed: 18446744073709551616", "train.seed", "in [0, 2^63)"),
    ("seed: 9223372036854775808", "train.seed", "in [0, 2^63)"),
    ("early_stopping: -1", "train.early_stopping", "got -1"),
    ("dtype: float16", "train.dtype", "one of float32, float64"),
    ("learning_rte: 0.1", None, "unknown key 'train.learning_rte'"),
]


@pytest.mark.parametrize(("line", "field", "needle"), TRAIN_CASES)
def test_train_range_checks(cli, write, line, field, needle):
    path = write(spec(f"train:\n  {line}\n"))
    with pytest.raises(SpecError) as info:
        load_config(path)
    err = info.value
    assert err.field == field
    assert needle in str(err), str(err)
    assert err.line is not None and err.line >= 7
    res = cli("summary", path)
    assert_clean_error(res, 2, needle, f"{path}:{err.line}:{err.col}")


def test_seed_upper_boundary():
    assert load_config(spec("train: {seed: 9223372036854775807}\n")).train.seed == 2**63 - 1


def test_unknown_key_hints():
    with pytest.raises(SpecError) as info:
        load_config(spec("train: {learning_rte: 0.1}\n"))
    assert info.value.hint == "did you mean 'optimizer.lr'?"
    with pytest.raises(SpecError) as info:
        load_config(spec("data: {val_spilt: 0.1}\n"))
    assert info.value.hint == "did you mean 'val_split'?"


# (yaml text under data:, field, message)
DATA_CASES = [
    ("val_split: 1.0", "data.val_split", "in [0, 1)"),
    ("val_split: -0.1", "data.val_split", "in [0, 1)"),
    ("normalize: zscore", "data.normalize", "one of standardize, scale, none"),
    ("augment: {rotate: -1}", "data.augment.rotate", "in [0, 180]"),
    ("augment: {scale: 1}", "data.augment.scale", "in [0, 1)"),
    ("augment: {flip: true}", None, "unknown key 'data.augment.flip'"),
    ("framing: crop", "data.framing", "one of digit, resize"),
    ("train: ''", "data.train", "empty string"),
    ("train: 5", "data.train", "expected string, got integer"),
    ("test: no", "data.test", "YAML reads 'no' as false; quote it"),
]


@pytest.mark.parametrize(("line", "field", "needle"), DATA_CASES)
def test_data_range_checks(line, field, needle):
    with pytest.raises(SpecError) as info:
        load_config(spec(f"data:\n  {line}\n"))
    assert info.value.field == field
    assert needle in str(info.value), str(info.value)


def test_booleans_where_strings_are_expected(cli, write):
    path = write("model:\n  name: no\n" + MODEL[len("model:\n"):])
    assert_clean_error(cli("summary", path), 2, ":2:9: model.name: expected string, got boolean "
                       "(YAML reads 'no' as false; quote it)")
    with pytest.raises(SpecError, match="YAML reads 'off' as false; quote it"):
        load_config(spec().replace("fc: {units: [8, 3]}", "fc: {units: [8, 3], activation: off}"))


# ---- --set and --seed --------------------------------------------------------------------------


def test_set_overrides():
    cfg = load_config("lenet5", ["train.epochs=2", "train.optimizer.lr=0.01",
                                 "model.input=[1,32,32]", "train.optimizer={type: adam}",
                                 "data.augment.rotate=5"])
    assert cfg.train.epochs == 2
    assert cfg.train.optimizer == Optimizer(type="adam", lr=0.001)
    assert cfg.model.input == (1, 32, 32)
    assert cfg.model.layers[1].out_shape == (6, 16, 16)
    assert cfg.data.augment.rotate == 5


def test_set_list_items_in_compact_and_explicit_models():
    compact = load_config("lenet5", ["model.blocks[1].conv[0].size=3", "model.fc[2].units=5",
                                     "model.conv.filters=[8, 16]"])
    convs = [layer for layer in compact.model.layers if layer.kind == "conv"]
    assert [c.filters for c in convs] == [8, 16]
    assert [c.size for c in convs] == [(5, 5), (3, 3)]
    assert compact.model.outputs == 5
    explicit = load_config(compact.resolved, ["model.blocks[0].conv[0].filters=2",
                                              "model.blocks[0].pool.type=mean"])
    assert explicit.model.layers[0].filters == 2
    assert explicit.model.layers[1].type == "mean"
    assert load_config("lenet5", ["model.conv.size=[[5, 3]]"]).model.layers[0].size == (5, 3)


def test_set_creates_missing_sections_and_accepts_null():
    cfg = load_config(spec(), ["train.schedule.type=cosine", "data.test=digits"])
    assert cfg.train.schedule.type == "cosine"
    assert load_config("lenet5", ["data.test="]).data.test is None
    assert load_config("lenet5", ["data.test=null"]).data.test is None


@pytest.mark.parametrize(("arg", "needle"), [
    ("train.epochs", "expects key.path=value"),
    ("=3", "needs a key"),
    ("train..epochs=3", "bad key path"),
    ("train.epochs.=3", "bad key path"),
    ("model.blocks[x].conv=3", "bad list index"),
    ("model.fc[9].units=3", "index 9 is out of range (model.fc has 3 items)"),
    ("train.epochs.x=3", "train.epochs is a integer, so it has no key 'x'"),
    ("train.epochs=[1", "cannot read the value"),
    ("train.epochs=&a 1", "anchors and aliases are not allowed"),
    ("train.epochs=!!python/name:os.system", "tags are not allowed"),
    ("train.epochs=0", "train.epochs: must be an integer in [1, 1000000], got 0"),
    ("train.epochs=true", "expected integer, got boolean"),
    ("train.learning_rte=0.1", "unknown key 'train.learning_rte'"),
    ("model.conv.kernel=3", "unknown key 'model.conv.kernel'"),
    ("model.blocks[0].conv[0].size=0", "model.blocks[0].conv[0].size"),
    ("model.name=no", "YAML reads 'no' as false; quote it"),
])
def test_bad_set_names_the_argument(cli, arg, needle):
    res = cli("summary", "lenet5", "--set", arg)
    assert_clean_error(res, 2, needle)
    assert f"--set {arg}" in res.stderr


def test_set_error_is_located_at_the_argument():
    with pytest.raises(SpecError) as info:
        load_config("lenet5", ["model.conv.filters=[6, 0]"])
    err = info.value
    assert err.path == "--set model.conv.filters=[6, 0]"
    assert err.field == "model.conv.filters[1]"
    assert err.line is None


def test_seed_option():
    assert load_config("lenet5", seed=123).train.seed == 123
    assert load_config(spec(), seed=5).train.seed == 5
    with pytest.raises(SpecError) as info:
        load_config("lenet5", seed=-1)
    assert info.value.path == "--seed"
    assert "[0, 2^63)" in str(info.value)


# ---- the resolved tree --------------------------------------------------------------------------


def test_resolved_is_explicit_and_complete():
    res = load_config("alexnet").resolved
    assert set(res) == {"model", "data", "train"}
    assert "pattern" not in res["model"]
    assert [len(b["conv"]) for b in res["model"]["blocks"]] == [1, 1, 3]
    first = res["model"]["blocks"][0]["conv"][0]
    assert first == {"filters": 96, "size": 11, "stride": 4, "padding": "valid",
                     "activation": "relu", "init": "he", "combine": "full"}
    assert res["model"]["fc"][-1]["activation"] == "none"

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, (str, int, float, bool))

    assert plain(res)


def test_resolved_round_trips_unusual_layers():
    text = """model:
  input: [3, 17, 13]
  blocks:
    - conv: [{filters: 4, size: [3, 5], stride: [2, 1], padding: [0, 1, 2, 1],
              activation: leaky_relu, alpha: 0.2},
             {filters: 3, size: 3, padding: same, activation: maxout, pieces: 3,
              combine: learned, sparsity: 0.5}]
      pool: {type: subsample, size: [2, 3], stride: 1, activation: prelu}
    - conv: [{filters: 2, size: 2, padding: full, activation: tanh, init: he}]
  fc: [{units: 5, activation: prelu, dropout: 0.25}, {units: 2, activation: sigmoid}]
"""
    cfg = load_config(text)
    again = load_config(cfg.resolved)
    assert again == cfg and again.resolved == cfg.resolved
    assert load_config(dump_yaml(cfg.resolved)) == cfg


# ---- fuzzing ------------------------------------------------------------------------------

VALID_TEXTS = [p.read_text() for p in sorted(configs_dir().glob("*.yaml"))]
PIECES = list("abc:-[]{},.*&!?|>'\"#\n \t0123456789eE+_<") + [
    "INPUT", "CONV", "POOL", "FC", "->", "model", "input", "pattern", "blocks", "conv", "fc",
    "pool", "size", "filters", "units", "null", "true", "1e-3", ".nan", "same", "learned",
    "maxout", "prelu", "subsample", "\x00", "\ufeff", "\udcff", "---\n", "&a ", "*a", "!!str ",
]


@st.composite
def mutated_specs(draw):
    text = draw(st.sampled_from(VALID_TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "duplicate"]))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(PIECES)) + text[i:]
        else:
            j = draw(st.integers(0, len(text)))
            text = text[:i] + text[j:j + 12] + text[i:]
    return text + "\n"


def _only_cnncli_errors(source) -> None:
    try:
        cfg = load_config(source)
    except CnncliError:
        return
    assert load_config(cfg.resolved) == cfg


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_mutated_specs_only_raise_cnncli_errors(text):
    _only_cnncli_errors(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300).map(lambda s: s + "\n"))
def test_random_text_only_raises_cnncli_errors(text):
    _only_cnncli_errors(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_cnncli_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(data)
    _only_cnncli_errors(path)


LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([10**12, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
        ["same", "full", "valid", "relu", "maxout", "learned", "l1", "subsample", "adam",
         "step", "x", "", "1e-3", "INPUT -> FC", "INPUT -> [[CONV]*2 -> POOL]*2 -> [FC]*2"]),
)
VALUES = st.recursive(LEAVES, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(
        ["filters", "size", "stride", "padding", "units", "type", "activation", "pieces",
         "alpha", "combine", "dropout", "lr", "x"]), kids, max_size=4)), max_leaves=8)


@st.composite
def mutated_trees(draw):
    import yaml

    tree = yaml.safe_load(draw(st.sampled_from(VALID_TEXTS)))
    for _ in range(draw(st.integers(1, 3))):
        node, parent, key = tree, None, None
        for _depth in range(draw(st.integers(1, 6))):
            if isinstance(node, dict) and node:
                parent, key = node, draw(st.sampled_from(sorted(node)))
            elif isinstance(node, list) and node:
                parent, key = node, draw(st.integers(0, len(node) - 1))
            else:
                break
            node = parent[key]
        if parent is not None:
            parent[key] = draw(VALUES)
    return tree


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_trees())
def test_mutated_trees_only_raise_cnncli_errors(tree):
    _only_cnncli_errors(tree)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_random_set_arguments_only_raise_cnncli_errors(arg):
    try:
        load_config("lenet5", [arg])
    except CnncliError:
        pass


def test_float_fields_never_hold_nan():
    cfg = load_config("lenet5")
    for value in (cfg.train.optimizer.lr, cfg.train.weight_decay, cfg.data.val_split):
        assert math.isfinite(value)
    assert os.path.basename(cfg.source) == "lenet5.yaml"
