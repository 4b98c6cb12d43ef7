"""cnncli eval: figures against a hand-computed confusion matrix, and the batched path against
a slow per-image reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import assert_clean_error
from PIL import Image

from cnncli.engine.evaluate import class_metrics, confusion_matrix, map_labels
from cnncli.engine.network import Network
from cnncli.errors import DataError
from cnncli.io.checkpoint import write_checkpoint
from cnncli.spec import load_config

# Rows: true class, columns: predicted class (cat, dog, eel, fox). Nobody is a fox and the
# model never says fox, so that class exercises the zero denominators.
HAND = [
    [5, 1, 0, 0],
    [2, 3, 1, 0],
    [0, 0, 4, 0],
    [0, 0, 0, 0],
]
CLASSES = ["cat", "dog", "eel", "fox"]
SCALE = {"mode": "scale", "mean": [0.0], "std": [1.0]}


def picker_data(path, confusion=HAND, seed=0):
    """An .npz whose 2x2 images light pixel p (the class the picker model will predict)."""
    xs, ys = [], []
    for t, row in enumerate(confusion):
        for p, count in enumerate(row):
            for _ in range(count):
                img = np.zeros((2, 2), np.uint8)
                img.flat[p] = 255
                xs.append(img)
                ys.append(t)
    order = np.random.default_rng(seed).permutation(len(ys))
    np.savez(path, x=np.stack(xs)[order], y=np.array(ys, np.int64)[order])
    return path


def picker_model(folder, data_ref, classes=CLASSES, test=True):
    """One FC layer whose logits are the four input pixels: it predicts the lit pixel."""
    data = {"train": str(data_ref), "normalize": "scale"}
    if test:
        data["test"] = str(data_ref)
    cfg = load_config({
        "model": {"name": "picker", "input": [1, 2, 2], "pattern": "INPUT -> [FC]*1",
                  "fc": {"units": [len(classes)]}},
        "data": data,
    })
    net = Network(cfg.model, seed=0)
    net.params["fc1.weight"][...] = np.eye(len(classes), 4)
    net.params["fc1.bias"][...] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "best.safetensors"
    write_checkpoint(path, net.params,
                     {"config": cfg.resolved, "classes": list(classes), "normalization": SCALE})
    return path


@pytest.fixture
def picker(tmp_path):
    data = picker_data(tmp_path / "pixels.npz")
    model = picker_model(tmp_path / "run", data)
    return model, data


def test_eval_json_matches_hand_computation(cli, picker):
    model, data = picker
    res = cli("eval", "--model", model.parent, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["confusion"] == HAND
    assert doc["samples"] == 16
    assert doc["data"] == str(data)
    assert doc["model"] == str(model)
    assert doc["classes"] == CLASSES
    assert doc["accuracy"] == pytest.approx(12 / 16)
    # every logit row is one-hot at the predicted class: loss = log(e + 3) - [true == pred]
    assert doc["loss"] == pytest.approx(math.log(math.e + 3) - 12 / 16, rel=1e-6)
    expected = {
        "cat": (5 / 7, 5 / 6, 10 / 13, 6),
        "dog": (3 / 4, 1 / 2, 3 / 5, 6),
        "eel": (4 / 5, 1.0, 8 / 9, 4),
        "fox": (0.0, 0.0, 0.0, 0),
    }
    assert [r["class"] for r in doc["per_class"]] == CLASSES
    for row in doc["per_class"]:
        p, r, f1, support = expected[row["class"]]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    png = model.parent / "confusion.png"
    assert doc["confusion_png"] == str(png)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.width > 200 and im.height > 200
        px = np.asarray(im)
    # the darkest cells (the full eel row) are drawn in the colour scale's dark end
    assert (px.sum(axis=2) < 200).sum() > 500


def test_eval_table_and_min_accuracy(cli, picker):
    model, _ = picker
    res = cli("eval", "--model", model, "--min-accuracy", "0.7")
    assert res.exit_code == 0, res.output
    for needle in ("75.00%", "cat", "fox", "0.600", "confusion matrix", "true \\ pred"):
        assert needle in res.stdout, needle
    below = cli("eval", "--model", model, "--min-accuracy", "80", "--json")
    assert_clean_error(below, 1, "below --min-accuracy 80.00%")
    assert json.loads(below.stdout)["accuracy"] == pytest.approx(0.75)  # still reported
    bad = cli("eval", "--model", model, "--min-accuracy", "150")
    assert_clean_error(bad, 2, "--min-accuracy")


def test_eval_data_option_maps_classes_by_name(cli, picker, tmp_path):
    """An image folder holding two of the model's classes is scored by class name."""
    model, _ = picker
    root = tmp_path / "folder"
    for name, pixel, n in (("dog", 1, 3), ("eel", 0, 2)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.zeros((2, 2), np.uint8)
            img.flat[pixel if i else 2] = 255
            Image.fromarray(img, "L").save(root / name / f"{i}.png")
    res = cli("eval", "--model", model, "--data", root, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    # dog: 1 picture lights pixel 2 (eel), 2 light pixel 1 (dog); eel: 1 eel, 1 cat
    assert doc["confusion"] == [[0, 0, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert doc["samples"] == 5


def test_eval_on_a_list_of_datasets(cli, tmp_path):
    """A config whose test data is a list is scored on all of it, as one confusion matrix."""
    first = picker_data(tmp_path / "a.npz")
    second = picker_data(tmp_path / "b.npz", confusion=[[1, 0, 0, 0], [0, 2, 0, 0],
                                                         [3, 0, 0, 0], [0, 0, 0, 0]], seed=1)
    cfg = load_config({
        "model": {"name": "picker", "input": [1, 2, 2], "pattern": "INPUT -> [FC]*1",
                  "fc": {"units": [4]}},
        "data": {"train": str(first), "test": [str(first), str(second)], "normalize": "scale"},
    })
    net = Network(cfg.model, seed=0)
    net.params["fc1.weight"][...] = np.eye(4)
    net.params["fc1.bias"][...] = 0.0
    path = tmp_path / "run" / "best.safetensors"
    path.parent.mkdir()
    write_checkpoint(path, net.params,
                     {"config": cfg.resolved, "classes": CLASSES, "normalization": SCALE})
    res = cli("eval", "--model", path, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["samples"] == 16 + 6
    assert doc["confusion"] == [[6, 1, 0, 0], [2, 5, 1, 0], [3, 0, 4, 0], [0, 0, 0, 0]]
    assert doc["data"] == f"{first} + {second}"


def test_eval_batched_matches_slow_reference(cli, tmp_path):
    """A conv network on the bundled digits: eval's figures equal a per-image loop's."""
    from cnncli.io.datasets import apply_normalization, load_dataset

    cfg = load_config({
        "model": {"name": "small", "input": [1, 28, 28],
                  "pattern": "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*1",
                  "conv": {"filters": [3], "size": 5}, "fc": {"units": [10]}},
        "data": {"train": "digits", "test": "digits"},
    })
    net = Network(cfg.model, seed=1)
    norm = {"mode": "standardize", "mean": [0.13], "std": [0.31]}
    (tmp_path / "run").mkdir()
    write_checkpoint(tmp_path / "run" / "best.safetensors", net.params,
                     {"config": cfg.resolved, "classes": [str(i) for i in range(10)],
                      "normalization": norm})
    res = cli("eval", "--model", tmp_path / "run", "--json", "--batch", "64")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)

    ds = load_dataset("digits", split="test", input_shape=(1, 28, 28))
    n = 200  # a slow reference on a prefix, the batched figures on the whole set
    preds = []
    for i in range(len(ds)):
        if i < n:
            x = apply_normalization(ds.batch_float(np.array([i])), norm)
            preds.append(int(np.argmax(net.forward(x)[0])))
    slow = [[0] * 10 for _ in range(10)]
    for t, p in zip(ds.y[:n], preds, strict=True):
        slow[int(t)][p] += 1
    x = apply_normalization(ds.batch_float(np.arange(len(ds))), norm)
    all_pred = np.argmax(net.forward(x), axis=1)
    assert np.array_equal(all_pred[:n], preds)
    full = [[0] * 10 for _ in range(10)]
    for t, p in zip(ds.y, all_pred, strict=True):
        full[int(t)][int(p)] += 1
    assert doc["confusion"] == full
    assert doc["samples"] == len(ds) == 1000
    correct = sum(full[k][k] for k in range(10))
    assert doc["accuracy"] == pytest.approx(correct / 1000)
    for k, row in enumerate(doc["per_class"]):
        col = sum(full[i][k] for i in range(10))
        assert row["precision"] == pytest.approx(full[k][k] / col if col else 0.0)
        assert row["support"] == sum(full[k])


def test_metrics_against_loops():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 5, 300))
    c = confusion_matrix(y, p, 5)
    for i in range(5):
        for j in range(5):
            assert c[i, j] == sum(1 for a, b in zip(y, p, strict=True) if a == i and b == j)
    m = class_metrics(c)
    for k in range(5):
        tp = sum(1 for a, b in zip(y, p, strict=True) if a == k and b == k)
        pred_k = sum(1 for b in p if b == k)
        true_k = sum(1 for a in y if a == k)
        prec, rec = tp / pred_k, tp / true_k
        assert m["precision"][k] == pytest.approx(prec)
        assert m["recall"][k] == pytest.approx(rec)
        assert m["f1"][k] == pytest.approx(2 * prec * rec / (prec + rec))
        assert m["support"][k] == true_k


def test_map_labels():
    y = np.array([0, 1, 1])
    assert map_labels(["b", "c"], ["a", "b", "c"], y, "d").tolist() == [1, 2, 2]
    assert map_labels(["0", "1"], ["cat", "dog", "eel"], y, "d").tolist() == [0, 1, 1]
    with pytest.raises(DataError, match="not the model's"):
        map_labels(["zebra"], ["a", "b"], np.array([0]), "d")


def test_eval_errors(cli, picker, tmp_path, monkeypatch):
    model, _ = picker
    monkeypatch.chdir(tmp_path)
    assert_clean_error(cli("eval"), 2, "no model at 'runs/latest'", "cnncli train")
    other = picker_data(tmp_path / "five.npz", confusion=[[1, 0, 0, 0]] * 5)  # 5 classes
    assert_clean_error(cli("eval", "--model", model, "--data", other), 2, "not the model's")
    assert_clean_error(cli("eval", "--model", model, "--data", tmp_path / "nope"), 2,
                       "no such file")
    untested = picker_model(tmp_path / "untested", other, test=False)
    assert_clean_error(cli("eval", "--model", untested), 2, "names no test data", "--data")


@pytest.mark.parametrize("command", ["eval", "infer", "visualize-filters", "inspect", "export"])
def test_help_has_an_example(cli, command):
    res = cli(command, "--help")
    assert res.exit_code == 0, res.output
    assert "Example" in res.stdout and f"cnncli {command}" in res.stdout
    assert "--model" in res.stdout and "runs/latest" in res.stdout
