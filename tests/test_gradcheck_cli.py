"""`cnncli gradcheck`: tables, JSON, exit codes, and a deliberately wrong gradient."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnncli.nn.conv import Conv2D
from cnncli.resources import bundled_configs

SMALL = """\
model:
  name: small
  input: [2, 9, 8]
  blocks:
    - conv: [{filters: 3, size: [3, 2], stride: 2, padding: same}]
      pool: {type: max, size: 3, stride: 2}
  fc: [{units: 6, dropout: 0.5}, {units: 4}]
"""


def test_bundled_configs_pass(cli):
    names = [n for n in bundled_configs() if n != "alexnet"]
    assert {"quickstart", "lenet5", "tutorial-figure"} <= set(names)
    res = cli("gradcheck", *names)
    assert res.exit_code == 0, res.output
    for name in names:
        assert f"gradcheck {name}" in res.stdout
    assert "conv1.weight" in res.stdout and "input" in res.stdout
    assert "all gradients agree" in res.stderr


def test_json_document(cli, write):
    path = write(SMALL)
    res = cli("gradcheck", str(path), "--json", "--batch", "3", "--seed", "4")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] is True
    assert doc["threshold"] == 1e-6
    assert doc["max_rel_error"] <= 1e-6
    tensors = [c["tensor"] for c in doc["checks"]]
    assert tensors == ["conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias", "fc2.weight",
                       "fc2.bias", "input"]
    assert all({"tensor", "rel_error", "config"} <= set(c) for c in doc["checks"])
    assert doc["configs"][0]["batch"] == 3
    by = {c["tensor"]: c for c in doc["checks"]}
    assert by["input"]["shape"] == [3, 2, 9, 8]


def test_set_overrides_the_config(cli, write):
    path = write(SMALL)
    res = cli("gradcheck", str(path), "--json", "--set", "model.fc[0].units=5")
    assert res.exit_code == 0, res.output
    by = {c["tensor"]: c for c in json.loads(res.stdout)["checks"]}
    assert by["fc1.bias"]["shape"] == [5]


def test_wrong_gradient_exits_1_naming_the_tensor(cli, write, monkeypatch):
    real = Conv2D.backward

    def wrong(self, dy, ws, params, grads, need_dx):
        dx = real(self, dy, ws, params, grads, need_dx)
        grads["conv1.bias"][1] += 1e-3
        return dx

    monkeypatch.setattr(Conv2D, "backward", wrong)
    path = write(SMALL)
    res = cli("gradcheck", str(path))
    assert res.exit_code == 1, res.output
    assert "conv1.bias[1]" in res.stderr
    assert "above the threshold 1e-06" in res.stderr
    assert "NO" in res.stdout
    res = cli("gradcheck", str(path), "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["passed"] is False
    worst = max(doc["checks"], key=lambda c: c["rel_error"])
    assert worst["tensor"] == "conv1.bias" and worst["worst_index"] == [1]


def test_threshold_decides(cli, write):
    path = write(SMALL)
    assert cli("gradcheck", str(path), "--threshold", "1e-30").exit_code == 1
    res = cli("gradcheck", str(path), "--threshold", "0")
    assert res.exit_code == 2 and "--threshold" in res.stderr


@pytest.mark.parametrize("args,needle", [
    (["--batch", "0"], "--batch"),
    (["--max-entries", "0"], "--max-entries"),
])
def test_bad_options(cli, write, args, needle):
    res = cli("gradcheck", str(write(SMALL)), *args)
    assert res.exit_code == 2 and needle in res.stderr
    assert "Traceback" not in res.output


def test_bad_config_is_exit_2(cli, write):
    res = cli("gradcheck", str(write("model: {input: [1, 8, 8]}\n")))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    res = cli("gradcheck", "no-such-config.yaml")
    assert res.exit_code == 2


def test_help_has_an_example(cli):
    res = cli("gradcheck", "--help")
    assert res.exit_code == 0 and "Example: cnncli gradcheck" in res.stdout


@pytest.mark.slow
def test_alexnet_in_a_subprocess():
    res = subprocess.run(
        [sys.executable, "-m", "cnncli", "gradcheck", "alexnet", "--max-entries", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["passed"] and len(doc["checks"]) == 17
    assert doc["configs"][0]["name"] == "alexnet"


def test_nan_gradient_json_stays_valid(cli, write, monkeypatch):
    real = Conv2D.backward

    def broken(self, dy, ws, params, grads, need_dx):
        dx = real(self, dy, ws, params, grads, need_dx)
        grads["conv1.weight"][...] = float("nan")
        return dx

    monkeypatch.setattr(Conv2D, "backward", broken)
    res = cli("gradcheck", str(write(SMALL)), "--json")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] is False and doc["max_rel_error"] is None
    assert "conv1.weight" in res.stderr and "inf" in res.stderr
