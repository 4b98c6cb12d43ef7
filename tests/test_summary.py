"""`cnncli summary` and cnncli.engine.summary: numbers, table, JSON, explain, errors."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time

import pytest
from conftest import assert_clean_error

from cnncli.engine.summary import human_bytes, human_count, summarize
from cnncli.spec import load_config, param_shapes


def _params(net) -> int:
    return sum(math.prod(s) for layer in net.layers for s in param_shapes(layer).values())


def test_lenet5_numbers():
    s = summarize(load_config("lenet5").model)
    assert s.total_params == 61_706
    by = {r.name: r for r in s.rows}
    assert [r.name for r in s.rows] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2", "fc3"]
    assert by["conv1"].params == 156
    assert "params: (5*5*1+1)*6 = 156" in by["conv1"].explain
    assert "output size: floor((W - F + 2P)/S) + 1 = floor((28 - 5 + 2*2)/1) + 1 = 28 " \
           "(rows and columns)" in by["conv1"].explain
    # conv1: 2*(5*5*1)*6*28*28 multiply-adds + 4704 bias adds + 4704 ReLUs
    assert by["conv1"].flops == 2 * 25 * 6 * 784 + 4704 + 4704
    assert by["pool1"].flops == 6 * 14 * 14
    assert by["fc1"].params == (400 + 1) * 120
    assert by["fc1"].flops == 2 * 400 * 120 + 120 + 120
    assert by["fc3"].flops == 2 * 84 * 10 + 10           # no activation on the output layer
    assert by["conv1"].activation_bytes == 6 * 28 * 28 * 4
    assert by["conv1"].receptive_field == (5, 5) and by["conv1"].jump == (1, 1)
    assert by["pool2"].receptive_field == (16, 16) and by["pool2"].jump == (4, 4)
    assert by["fc1"].receptive_field is None
    assert s.total_flops == sum(r.flops for r in s.rows) == 847_642
    assert s.total_activation_bytes == 4 * (4704 + 1176 + 1600 + 400 + 120 + 84 + 10)


def test_alexnet_numbers_and_speed():
    cfg = load_config("alexnet")
    t0 = time.perf_counter()
    s = summarize(cfg.model)
    assert time.perf_counter() - t0 < 0.1
    assert s.total_params == 62_378_344 == _params(cfg.model)
    by = {r.name: r for r in s.rows}
    assert by["conv1"].output_shape == (96, 55, 55)
    assert by["pool3"].output_shape == (256, 6, 6)
    assert by["fc1"].params == (9216 + 1) * 4096
    assert by["fc1"].flops == 2 * 9216 * 4096 + 4096 + 4096 + 4096   # bias, relu, dropout
    assert by["conv2"].flops == 2 * 5 * 5 * 96 * 256 * 27 * 27 + 2 * 256 * 27 * 27
    assert by["pool3"].receptive_field == (195, 195)
    assert s.total_flops == 2_271_960_392


def test_tutorial_figure_numbers():
    s = summarize(load_config("tutorial-figure").model)
    assert [r.output_shape for r in s.rows] == [
        (3, 24, 24), (3, 12, 12), (5, 8, 8), (5, 4, 4), (32,), (10,)]
    assert [r.params for r in s.rows] == [78, 0, 380, 0, 2592, 330]
    assert s.total_params == 3380


@pytest.mark.parametrize("model", [
    "  input: [3, 9, 9]\n  blocks: [{conv: [{filters: 4, size: 3, activation: maxout, pieces: 3,"
    " combine: learned}], pool: {type: subsample, activation: prelu}}]\n"
    "  fc: [{units: 5, activation: maxout}, {units: 2, activation: prelu}]\n",
    "  input: [2, 10, 7]\n  blocks: [{conv: [{filters: 3, size: [3, 2], stride: [2, 3], "
    "padding: [1, 0, 0, 1], activation: prelu}], pool: {type: mean, size: [2, 1]}}]\n"
    "  fc: [{units: 4, dropout: 0.5}, {units: 2}]\n",
])
def test_params_always_match_the_tensors(model):
    net = load_config("model:\n" + model).model
    s = summarize(net)
    for layer, row in zip(net.layers, s.rows, strict=True):
        assert row.params == sum(math.prod(x) for x in param_shapes(layer).values())
        assert row.explain[-2].endswith(f"= {row.params:,}") or row.params == 0


def test_learned_combination_and_subsample_counts():
    net = load_config("model:\n  input: [3, 6, 6]\n  blocks: [{conv: [{filters: 4, size: 3, "
                      "combine: learned}], pool: {type: subsample}}]\n"
                      "  fc: [{units: 2}]\n").model
    conv, pool, _ = summarize(net).rows
    # one 3x3 kernel per input map on 4x4 outputs, then 4 maps mixing 3: multiply-adds x 2,
    # plus one bias add and one ReLU per output element
    assert conv.flops == 2 * (3 * 16 * 9 + 4 * 3 * 16) + 64 + 64
    assert conv.params == 3 * 9 + 4 * 3 + 4
    assert pool.params == 8
    assert pool.flops == 3 * 4 * 2 * 2          # window sum, beta, bias per output element


def test_dropped_rows_are_reported(cli, write):
    spec = write("model:\n  input: [1, 8, 8]\n  blocks: [{conv: [{filters: 2, size: 3, "
                 "stride: 2}]}]\n  fc: [{units: 2}]\n")
    s = summarize(load_config(spec).model)
    assert s.rows[0].dropped == (1, 1)
    assert any("drops the last 1 row and 1 column" in n for n in s.notes)
    res = cli("summary", spec)
    assert res.exit_code == 0
    assert "drops the last 1 row and 1 column of the 8x8 input" in res.stdout


def test_human_sizes():
    assert human_count(61_706) == "61.7 K"
    assert human_count(62_378_344) == "62.4 M"
    assert human_count(999) == "999"
    assert human_bytes(246_824) == "241 KiB"
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 2**30) == "3 GiB"


# ---- the command --------------------------------------------------------------------------------

NUM = re.compile(r"^\s*(\w+)\*?\s.*?\s([\d,]+)\s+([\d,]+)\s+[\d.]+ (?:B|KiB|MiB|GiB)\b")


def _table_numbers(stdout: str) -> dict[str, tuple[int, int]]:
    out = {}
    for line in stdout.splitlines():
        m = NUM.match(line)
        if m and m.group(1) != "input":
            out[m.group(1)] = (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")))
    return out


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "tutorial-figure", "quickstart"])
def test_json_equals_the_table(cli, name):
    table = cli("summary", name)
    assert table.exit_code == 0, table.output
    doc_res = cli("summary", name, "--json")
    assert doc_res.exit_code == 0, doc_res.output
    doc = json.loads(doc_res.stdout)
    assert set(doc) >= {"layers", "total_params", "total_flops"}
    for layer in doc["layers"]:
        assert set(layer) >= {"name", "type", "output_shape", "params", "flops",
                              "activation_bytes"}
    nums = _table_numbers(table.stdout)
    expected = {d["name"]: (d["params"], d["flops"]) for d in doc["layers"]}
    expected["total"] = (doc["total_params"], doc["total_flops"])
    assert nums == expected
    assert f"{doc['total_params']:,} parameters" in table.stdout


def test_lenet5_table_text(cli):
    res = cli("summary", "lenet5")
    assert res.exit_code == 0
    out = res.stdout
    assert "\x1b[" not in out
    assert "61,706" in out and "61.7 K" in out and "241 KiB" in out
    assert re.search(r"conv1\s+6 5x5 pad 2, relu\s+6x28x28\s+156\s+244,608", out)
    assert res.stderr == ""


def test_explain(cli):
    res = cli("summary", "tutorial-figure", "--explain")
    assert res.exit_code == 0
    assert "floor((28 - 5)/1) + 1 = 24" in res.stdout
    assert "params: (5*5*1+1)*3 = 78" in res.stdout
    assert "params: (80+1)*32 = 2,592" in res.stdout
    assert "receptive field 14x14 input pixels, jump 2x2" in res.stdout


def test_json_is_the_only_thing_on_stdout(cli):
    res = cli("summary", "alexnet", "--json")
    doc = json.loads(res.stdout)
    assert doc["total_params"] == 62_378_344
    assert doc["layers"][0] == {**doc["layers"][0], "name": "conv1", "type": "conv",
                                "output_shape": [96, 55, 55], "params": 34_944}
    assert doc["layers"][-1]["output_shape"] == [1000]


def test_set_and_warnings(cli):
    res = cli("summary", "lenet5", "--set", "model.conv.combine=learned", "--set",
              "model.conv.sparsity_penalty=l1", "--json")
    assert res.exit_code == 0
    assert "warning:" in res.stderr and "l1 cannot make the combination sparse" in res.stderr
    json.loads(res.stdout)


def test_bad_config_exits_2_without_traceback(cli, write):
    spec = write('model:\n  input: [1, 28, 28]\n  pattern: "INPUT -> [[CONV]*1 -> POOL?]*2 -> '
                 '[FC]*3"\n  conv: {filters: 6, size: 5}\n  fc: {units: [120, 84, 10]}\n')
    res = cli("summary", spec)
    assert_clean_error(res, 2, "spec.yaml:3:39: model.pattern:", "write POOL or leave it out",
                       "  INPUT -> [[CONV]*1 -> POOL?]*2 -> [FC]*3\n" + " " * 28 + "^")
    assert res.stdout == ""
    assert_clean_error(cli("summary", spec, "--json"), 2, "write POOL")


def test_help_has_an_example(cli):
    res = cli("summary", "--help")
    assert res.exit_code == 0
    assert "cnncli summary lenet5 --explain" in res.stdout
    assert "--json" in res.stdout and "--set" in res.stdout


@pytest.mark.slow
def test_real_process_pipe_has_no_escape_codes():
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cnncli", "summary", "alexnet"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "COLUMNS": "60", "TERM": "xterm"})
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert "\x1b[" not in res.stdout
    assert "62,378,344" in res.stdout
    # a pipe gets whole lines: no row is wrapped or cut with an ellipsis
    assert "…" not in res.stdout
    assert re.search(r"fc1\s+4096, relu, dropout 0.5\s+4096\s+37,752,832", res.stdout)
    assert elapsed < 5
