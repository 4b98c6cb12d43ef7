"""cnncli infer on real files: every image mode, folders, bad files among good ones, and the
pipeline (read, frame, normalise, forward) against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error
from PIL import Image, ImageDraw

from cnncli.cli.infer import Preparer, decide_framing, prepare_image
from cnncli.engine.network import Network
from cnncli.io.checkpoint import write_checkpoint
from cnncli.io.datasets import apply_normalization, compute_normalization, load_dataset
from cnncli.nn import losses
from cnncli.resources import sample_dir
from cnncli.spec import load_config

DIGITS = [str(i) for i in range(10)]
PICTURES = sample_dir() / "pictures"


def digit_config(framing=None):
    data = {"train": "digits", "test": "digits"}
    if framing:
        data["framing"] = framing
    return load_config({
        "model": {"name": "reader", "input": [1, 28, 28],
                  "pattern": "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*1",
                  "conv": {"filters": [6], "size": 5}, "fc": {"units": [10]}},
        "data": data,
    })


def save_model(folder: Path, cfg, net, classes, norm) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "best.safetensors"
    write_checkpoint(path, net.params,
                     {"config": cfg.resolved, "classes": classes, "normalization": norm})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small conv net trained briefly on the bundled digits (about two seconds)."""
    cfg = digit_config()
    net = Network(cfg.model, seed=0)
    ds = load_dataset("digits", "train", (1, 28, 28))
    norm = compute_normalization(ds, "standardize")
    rng = np.random.default_rng(0)
    vel = {k: np.zeros_like(p) for k, p in net.params.items()}
    for _ in range(250):
        idx = rng.choice(len(ds), 64, replace=False)
        logits = net.forward(apply_normalization(ds.batch_float(idx), norm), train=True)
        _, d = losses.get("cross_entropy")(logits, ds.y[idx])
        net.backward(d, input_grad=False)
        for k, p in net.params.items():
            vel[k] = 0.9 * vel[k] - 0.05 * net.grads[k]
            p += vel[k]
    folder = tmp_path_factory.mktemp("trained")
    path = save_model(folder / "run", cfg, net, DIGITS, norm)
    return path, net, norm


def drawn_seven(w=150, h=120) -> np.ndarray:
    """Dark ink on light paper, off-centre: an RGB uint8 picture of a 7."""
    im = Image.new("RGB", (w, h), (236, 232, 220))
    d = ImageDraw.Draw(im)
    d.line([(70, 20), (125, 20), (90, 105)], fill=(30, 30, 60), width=9)
    return np.asarray(im)


def write_every_mode(folder: Path) -> dict[str, str]:
    """The same drawing in every mode and format infer must read; name -> expected mode."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(drawn_seven())
    grey = rgb.convert("L")
    out = {}

    def put(name, im, mode, **kw):
        im.save(folder / name, **kw)
        out[name] = mode

    put("grey.png", grey, "L")
    put("rgb.png", rgb, "RGB")
    rgba = rgb.convert("RGBA")
    a = np.asarray(rgba).copy()
    paper = (a[..., :3].astype(int).sum(axis=2) > 400)
    a[paper, 3] = 0  # transparent paper: composited over white
    put("rgba.png", Image.fromarray(a, "RGBA"), "RGBA")
    put("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "P")
    put("cmyk.jpg", rgb.convert("CMYK"), "CMYK", quality=95)
    sixteen = (np.asarray(grey).astype(np.uint16) * 257)
    put("deep.png", Image.fromarray(sixteen), "I;16")
    put("bitmap.bmp", rgb, "RGB")
    put("anim.gif", grey, "L")
    put("scan.tiff", grey, "L")
    put("photo.webp", rgb, "RGB", quality=95)
    put("photo.jpeg", rgb, "RGB", quality=92)
    return out


def test_every_image_mode_is_read_and_framed_alike(cli, trained, tmp_path):
    model, _, _ = trained
    modes = write_every_mode(tmp_path / "pics")
    (tmp_path / "pics" / "notes.txt").write_text("not a picture")
    (tmp_path / "pics" / "sub").mkdir()
    Image.fromarray(drawn_seven()).save(tmp_path / "pics" / "sub" / "nested.png")
    res = cli("infer", tmp_path / "pics", "--model", model, "--json", "--top-k", "4")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == str(model)
    by_name = {Path(p["file"]).name: p for p in doc["predictions"]}
    assert sorted(by_name) == sorted(modes)  # no .txt, no sub-folder
    ref = by_name["grey.png"]
    for name, mode in modes.items():
        p = by_name[name]
        assert p["preprocess"]["image"]["mode"] == (mode if name != "anim.gif" else "P")
        assert p["preprocess"]["framing"] == "digit"
        assert p["preprocess"]["inverted"] is True  # dark ink on light paper
        assert len(p["top"]) == 4
        probs = [t["probability"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
        assert p["class"] == p["top"][0]["class"] == ref["class"] == "7", name
    # the framed inputs agree closely, whatever the mode (lossy formats within tolerance)
    base, _ = prepare_image(str(tmp_path / "pics" / "grey.png"), (1, 28, 28), "digit")
    for name in modes:
        x, _ = prepare_image(str(tmp_path / "pics" / name), (1, 28, 28), "digit")
        assert np.abs(x - base).mean() < 0.03, name


def test_pipeline_equals_direct_computation(cli, trained):
    """infer's probabilities are softmax(net(normalise(frame_digit(read_image(f)))))."""
    from cnncli.io.images import frame_digit, read_image

    model, net, norm = trained
    files = sorted(PICTURES.glob("*.png"))
    assert len(files) >= 10
    res = cli("infer", *files, "--model", model, "--json", "--top-k", "10", "--batch", "4")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [p["file"] for p in doc["predictions"]] == [str(f) for f in files]
    correct = 0
    for f, p in zip(files, doc["predictions"], strict=True):
        framed, _ = frame_digit(read_image(f))
        x = apply_normalization(framed[None, None].copy(), norm)
        probs = losses.softmax(net.forward(x))[0]
        got = {t["class"]: t["probability"] for t in p["top"]}
        np.testing.assert_allclose([got[c] for c in DIGITS], probs, rtol=1e-5, atol=1e-7)
        correct += p["class"] == f.name[0]
    # the loose sample pictures are real-world digits: a briefly trained net reads most
    assert correct >= len(files) // 2, correct


def test_bad_files_among_good_ones(cli, trained, tmp_path):
    model, _, _ = trained
    good = tmp_path / "good.png"
    Image.fromarray(drawn_seven()).save(good)
    text = tmp_path / "letter.png"
    text.write_text("Dear reader, this is not a picture.")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    args = [good, text, cut, empty, missing, good]
    res = cli("infer", *args, "--model", model, "--json")
    assert_clean_error(res, 2, "letter.png", "cut.png", "empty.jpg", "missing.png",
                       "4 of 6 image(s) could not be read")
    doc = json.loads(res.stdout)
    preds = doc["predictions"]
    assert [p["file"] for p in preds] == [str(a) for a in args]
    assert "error" not in preds[0] and "error" not in preds[5]
    assert preds[0]["class"] == preds[5]["class"]
    for p in preds[1:5]:
        assert set(p) == {"file", "error"}, p
    assert "not a PNG" in preds[1]["error"] or "text" in preds[1]["error"]
    assert "empty" in preds[3]["error"]
    assert "no such file" in preds[4]["error"]
    # the table form says the same, with the good pictures answered
    table = cli("infer", good, text, "--model", model)
    assert_clean_error(table, 2, "letter.png")
    assert "good.png" in table.stdout and "error" in table.stdout


def test_table_output_and_framing_override(cli, trained, tmp_path):
    model, _, _ = trained
    pic = tmp_path / "seven.png"
    Image.fromarray(drawn_seven()).save(pic)
    res = cli("infer", pic, "--model", model, "--top-k", "2")
    assert res.exit_code == 0, res.output
    assert "seven.png" in res.stdout and "top 2" in res.stdout
    res = cli("infer", pic, "--model", model, "--framing", "resize", "--json")
    assert res.exit_code == 0, res.output
    pre = json.loads(res.stdout)["predictions"][0]["preprocess"]
    assert pre["framing"] == "resize" and pre["resized_to"] == [28, 28]
    assert_clean_error(cli("infer", pic, "--model", model, "--framing", "crop"), 2, "--framing")
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert_clean_error(cli("infer", empty, "--model", model), 2, "holds no PNG")


def test_rgb_model_resizes_pictures(cli, tmp_path):
    cfg = load_config({
        "model": {"name": "colour", "input": [3, 16, 16], "pattern": "INPUT -> CONV -> FC",
                  "conv": {"filters": [2], "size": 3}, "fc": {"units": [3]}},
        "data": {"train": "digits"},
    })
    net = Network(cfg.model, seed=0)
    norm = {"mode": "standardize", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    model = save_model(tmp_path / "run", cfg, net, ["red", "green", "blue"], norm)
    pic = tmp_path / "wide.png"
    Image.fromarray(drawn_seven(300, 100)).save(pic)
    grey = tmp_path / "grey.png"
    Image.fromarray(drawn_seven()).convert("L").save(grey)
    res = cli("infer", pic, grey, "--model", model, "--json")
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)["predictions"]
    assert preds[0]["preprocess"]["framing"] == "resize"
    assert preds[0]["preprocess"]["channels"] == "3 -> 3"
    assert preds[1]["preprocess"]["channels"] == "1 -> 3"
    assert preds[0]["class"] in ("red", "green", "blue")
    x, _ = prepare_image(str(pic), (3, 16, 16), "resize")
    probs = losses.softmax(net.forward(apply_normalization(x[None].copy(), norm)))[0]
    assert preds[0]["probability"] == pytest.approx(float(probs.max()), rel=1e-5)


def test_decide_framing():
    digits = digit_config()
    meta = {"config_obj": digits, "config": digits.resolved, "classes": DIGITS}
    assert decide_framing(meta) == "digit"
    assert decide_framing(meta, "resize") == "resize"
    assert decide_framing({**meta, "classes": list("abcdefghij")}) == "resize"
    stored = digit_config("resize")
    assert decide_framing({"config_obj": stored, "config": stored.resolved,
                           "classes": DIGITS}) == "resize"


def test_worker_processes_give_the_same_answers(tmp_path):
    """Many pictures go to worker processes; the results equal the in-process ones."""
    files = sorted(PICTURES.glob("*.png"))
    paths = [str(files[i % len(files)]) for i in range(Preparer.MIN_PARALLEL + 6)]
    paths[3] = str(tmp_path / "missing.png")
    with Preparer((1, 28, 28), "digit", workers=2) as prepare:
        many = prepare(paths)
    with Preparer((1, 28, 28), "digit", workers=1) as prepare:
        one = prepare(paths)
    assert len(many) == len(one) == len(paths)
    for (a, ia, ea), (b, ib, eb) in zip(many, one, strict=True):
        assert ea == eb
        if a is None:
            assert b is None and ea
        else:
            np.testing.assert_array_equal(a, b)
            assert ia == ib


def test_freed_memory_is_kept_for_reuse_on_glibc():
    import platform

    from cnncli.cli.infer import reuse_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning applies to glibc only")
    assert reuse_freed_memory() is True
