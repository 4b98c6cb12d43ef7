"""RELIABILITY.md section 3.2 (D01-D33) through the commands a user types.

Each bad dataset is given to `cnncli train` (as ``data.train`` of a tiny config) and to
`cnncli eval --data`; bad pictures also to `cnncli infer`. A refused input must give its exit
code, a message naming the file, no traceback, and leave nothing behind: no run folder under
``runs/`` and no ``confusion.png`` beside the model. Accepted oddities (16-bit, palette, alpha,
CMYK, animated, mixed sizes, stray files) must train, score and be classified.

The library-level checks of the same rows (exact messages, pixel values) are in
tests/test_data_idx.py, tests/test_data_npz.py and tests/test_data_folders.py.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error
from PIL import Image
from pngs import png_header_only

# ---- tiny data and config ---------------------------------------------------------------------

CLASSES = ["0", "1", "2"]

TINY_CONFIG = """\
model:
  name: tiny
  input: [1, 8, 8]
  pattern: "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*1"
  conv: {{filters: 2, size: 3}}
  pool: {{type: max, size: 2}}
  fc: {{units: [3]}}
data:
  train: {train}
  val_split: 0.25
  normalize: standardize
train:
  epochs: 1
  batch_size: 8
  optimizer: {{type: sgd, lr: 0.05, momentum: 0.9}}
  seed: 0
"""


def tiny_images(n: int = 24, hw: tuple[int, int] = (8, 8), seed: int = 0):
    """n grey uint8 images (n, h, w) of three classes (bright top, left, or nothing)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    y = np.arange(n) % 3
    x = rng.integers(0, 60, size=(n, h, w))
    x[y == 0, : h // 2, :] += 150
    x[y == 1, :, : w // 2] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_config(folder: Path, train_ref: str | os.PathLike, name: str = "spec.yaml") -> Path:
    """A tiny config whose data.train is ``train_ref`` (quoted: any path is a YAML string)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / name
    spec.write_text(TINY_CONFIG.format(train=json.dumps(str(train_ref))))
    return spec


def good_npz(path: Path, n: int = 24) -> Path:
    x, y = tiny_images(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return path


def make_idx(arr: np.ndarray) -> bytes:
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + (
        a.tobytes()
    )


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", **kw)
    return buf.getvalue()


def image_tree(root: Path, hw: tuple[int, int] = (8, 8), per_class: int = 4) -> Path:
    """root/<0|1|2>/img_k.png: a valid image-folder dataset of the three classes."""
    x, y = tiny_images(3 * per_class, hw)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img_{i:02d}.png")
    return root


# ---- the corpus: one builder per case -----------------------------------------------------------
# A builder gets a fresh folder and returns (data reference, exit code, substrings of the output).
# Exit 0 cases are accepted oddities; their substrings are not checked.

Case = tuple[Path, int, tuple[str, ...]]


def idx_pair(folder: Path, images: bytes, labels: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(images)
    (folder / "train-labels-idx1-ubyte").write_bytes(labels)
    return folder / "train-images-idx3-ubyte"


def _idx_ok() -> tuple[bytes, bytes]:
    x, y = tiny_images(24)
    return make_idx(x), make_idx(y)


def d01_truncated(d: Path) -> Case:
    im, lab = _idx_ok()
    p = idx_pair(d, im[:-100], lab)
    return p, 2, ("train-images-idx3-ubyte", "header declares 24 images of 8x8 (1536 bytes)",
                  "1436 bytes after the 16-byte header")


def d02_count_too_large(d: Path) -> Case:
    im, lab = _idx_ok()
    bad = im[:4] + struct.pack(">I", 60) + im[8:]
    p = idx_pair(d, bad, lab)
    return p, 2, ("train-images-idx3-ubyte", "header declares 60 images of 8x8")


def d03_trailing(d: Path) -> Case:
    im, lab = _idx_ok()
    p = idx_pair(d, im + b"\x00" * 7, lab)
    return p, 2, ("train-images-idx3-ubyte", "7 unexpected trailing bytes")


def d04_bad_magic(d: Path) -> Case:
    im, lab = _idx_ok()
    p = idx_pair(d, b"\x01\x02" + im[2:], lab)
    return p, 2, ("train-images-idx3-ubyte", "not an IDX file (magic 0x0102")


def d04_dtype_code(d: Path) -> Case:
    im, lab = _idx_ok()
    p = idx_pair(d, im[:2] + b"\x0a" + im[3:], lab)
    return p, 2, ("train-images-idx3-ubyte", "IDX data type 0x0A")


def d04_ndim_zero(d: Path) -> Case:
    im, lab = _idx_ok()
    p = idx_pair(d, im[:3] + b"\x00" + im[4:], lab)
    return p, 2, ("train-images-idx3-ubyte", "0 dimensions")


def d05_labels_as_images(d: Path) -> Case:
    im, lab = _idx_ok()
    idx_pair(d, im, lab)
    return d / "train-labels-idx1-ubyte", 2, ("train-labels-idx1-ubyte", "swap")


def d05_swapped_contents(d: Path) -> Case:
    im, lab = _idx_ok()
    p = idx_pair(d, lab, im)
    return p, 2, ("train-images-idx3-ubyte", "1 dimensions", "swap")


def d06_count_mismatch(d: Path) -> Case:
    x, y = tiny_images(24)
    p = idx_pair(d, make_idx(x), make_idx(y[:23]))
    return p, 2, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "image count 24 != label count 23")


def d07_label_too_large(d: Path) -> Case:
    x, y = tiny_images(24)
    y[17] = 255
    p = idx_pair(d, make_idx(x), make_idx(y))
    return p, 2, ("train-labels-idx1-ubyte", "255")


def _gz(d: Path, images: bytes, labels: bytes) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train-images-idx3-ubyte.gz").write_bytes(images)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_ok()[1], mtime=0))
    return d / "train-images-idx3-ubyte.gz"


def d08_gz_truncated(d: Path) -> Case:
    gz = gzip.compress(_idx_ok()[0], mtime=0)
    p = _gz(d, gz[: len(gz) // 2], b"")
    return p, 2, ("train-images-idx3-ubyte.gz", "compressed file ended early")


def d08_gz_not_gzip(d: Path) -> Case:
    p = _gz(d, _idx_ok()[0], b"")
    return p, 2, ("train-images-idx3-ubyte.gz", "not a gzip file")


def d08_gz_bad_crc(d: Path) -> Case:
    gz = bytearray(gzip.compress(_idx_ok()[0], mtime=0))
    gz[-8] ^= 0xFF
    p = _gz(d, bytes(gz), b"")
    return p, 2, ("train-images-idx3-ubyte.gz", "CRC check failed")


def d09_empty(d: Path) -> Case:
    p = idx_pair(d, struct.pack(">BBBBIII", 0, 0, 8, 3, 0, 8, 8),
                 struct.pack(">BBBBI", 0, 0, 8, 1, 0))
    return p, 2, ("train-images-idx3-ubyte", "dataset is empty")


def d10_huge_dims(d: Path) -> Case:
    head = struct.pack(">BBBBIII", 0, 0, 8, 3, 0xFFFFFFFF, 0xFFFFFFFF, 3)
    p = idx_pair(d, head + b"\x00" * 64, _idx_ok()[1])
    return p, 2, ("train-images-idx3-ubyte", str(0xFFFFFFFF * 0xFFFFFFFF * 3))


def d11_empty_root(d: Path) -> Case:
    root = d / "pictures"
    root.mkdir(parents=True)
    return root, 2, ("pictures", "no class folders")


def d12_class_without_images(d: Path) -> Case:
    root = image_tree(d / "pictures")
    (root / "seven").mkdir()
    (root / "seven" / "notes.txt").write_text("nothing to see")
    return root, 2, ("seven", "has no images")


def _bad_picture(d: Path, name: str, data: bytes) -> Path:
    root = image_tree(d / "pictures")
    (root / "1" / name).write_bytes(data)
    return root


def _flip_idat(png: bytes) -> bytes:
    at = png.index(b"IDAT") + 4 + 2          # past the zlib header
    b = bytearray(png)
    b[at] ^= 0xFF
    return bytes(b)


def d13_flipped_idat(d: Path) -> Case:
    bad = _flip_idat(png_bytes(tiny_images(1)[0][0]))
    return _bad_picture(d, "img_0042.png", bad), 2, ("img_0042.png", "corrupt image")


def d14_zero_bytes(d: Path) -> Case:
    return _bad_picture(d, "empty.png", b""), 2, ("empty.png", "empty (0 bytes)")


def d15_text_named_png(d: Path) -> Case:
    return (_bad_picture(d, "note.png", b"just some text, not a picture\n"), 2,
            ("note.png", "not a PNG, JPEG, BMP, GIF, TIFF or WebP image"))


def d15_tiff_named_png(d: Path) -> Case:
    # TIFF is one of the six accepted formats: the content decides, not the name
    buf = io.BytesIO()
    Image.fromarray(tiny_images(1)[0][0]).save(buf, "TIFF")
    return _bad_picture(d, "really.png", buf.getvalue()), 0, ()


def d16_sixteen_bit(d: Path) -> Case:
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    return _bad_picture(d, "deep.png", png_bytes(a)), 0, ()


def d17_palette(d: Path) -> Case:
    im = Image.fromarray(tiny_images(1)[0][0]).convert("P")
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    return _bad_picture(d, "pal.png", buf.getvalue()), 0, ()


def d18_alpha(d: Path) -> Case:
    root = image_tree(d / "pictures")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0
    Image.fromarray(rgba, "RGBA").save(root / "1" / "rgba.png")
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 1] = 128
    Image.fromarray(la, "LA").save(root / "2" / "la.png")
    return root, 0, ()


def d19_cmyk(d: Path) -> Case:
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(buf, "JPEG")
    return _bad_picture(d, "cmyk.jpg", buf.getvalue()), 0, ()


def d20_bomb(d: Path) -> Case:
    return (_bad_picture(d, "huge.png", png_header_only(100_000, 100_000)), 2,
            ("huge.png", "image too large", "10000000000 pixels"))


def d22_mixed_sizes(d: Path) -> Case:
    root = image_tree(d / "pictures")
    image_tree(d / "bigger", hw=(12, 12), per_class=1)
    for c in CLASSES:
        for f in (d / "bigger" / c).iterdir():
            shutil.move(str(f), root / c / f"big_{f.name}")
    return root, 0, ()


def d23_animated_gif(d: Path) -> Case:
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255, 128)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return _bad_picture(d, "anim.gif", buf.getvalue()), 0, ()


def d24_link_to_parent(d: Path) -> Case:
    root = image_tree(d / "pictures")
    os.symlink("..", root / "0" / "up")
    return root, 0, ()


def d24_class_linking_to_root(d: Path) -> Case:
    root = image_tree(d / "pictures")
    os.symlink(".", root / "loop")
    return root, 2, ("loop", "has no images")


def d25_dangling_link(d: Path) -> Case:
    root = image_tree(d / "pictures")
    os.symlink("nowhere.png", root / "1" / "gone.png")
    return root, 2, ("gone.png", "no such file")


def d25_link_loop(d: Path) -> Case:
    root = image_tree(d / "pictures")
    os.symlink("self.png", root / "1" / "self.png")
    return root, 2, ("self.png", "too many levels of symbolic links")


def d26_stray_files(d: Path) -> Case:
    root = image_tree(d / "pictures")
    (root / "0" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "1" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "2" / "README.txt").write_text("digits")
    return root, 0, ()


def _npz(d: Path, name: str, members: dict[str, bytes], stored: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    mode = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(p, "w", compression=mode) as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return p


def d27_object_array(d: Path) -> Case:
    x, y = tiny_images(3)
    obj = np.empty(3, dtype=object)
    obj[:] = [1, "two", None]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, obj, allow_pickle=True)
    p = _npz(d, "objects.npz", {"x.npy": buf.getvalue(), "y.npy": npy_bytes(y)})
    return p, 2, ("objects.npz", "never loads pickles")


def d27_pickle_renamed(d: Path) -> Case:
    import pickle  # noqa: S403 - writing a hostile file; cnncli itself never imports pickle

    d.mkdir(parents=True, exist_ok=True)
    p = d / "data.npz"
    p.write_bytes(pickle.dumps({"x": [1, 2, 3]}, protocol=4))
    return p, 2, ("data.npz", "never loads pickles")


def d28_missing_y(d: Path) -> Case:
    x, _ = tiny_images(6)
    p = _npz(d, "nolabels.npz", {"x.npy": npy_bytes(x)})
    return p, 2, ("nolabels.npz", "missing member 'y'")


def d28_extra_member(d: Path) -> Case:
    x, y = tiny_images(6)
    p = _npz(d, "extra.npz", {"x.npy": npy_bytes(x), "y.npy": npy_bytes(y),
                              "z.npy": npy_bytes(y)})
    return p, 2, ("extra.npz", "unexpected member 'z.npy'")


def d28_float_labels(d: Path) -> Case:
    x, y = tiny_images(6)
    p = _npz(d, "floaty.npz", {"x.npy": npy_bytes(x), "y.npy": npy_bytes(y.astype(np.float64))})
    return p, 2, ("floaty.npz", "member y has dtype float64")


def d28_int8_images(d: Path) -> Case:
    x, y = tiny_images(6)
    p = _npz(d, "int8.npz", {"x.npy": npy_bytes(x.astype(np.int8)), "y.npy": npy_bytes(y)})
    return p, 2, ("int8.npz", "member x has dtype int8")


def d28_wrong_ndim(d: Path) -> Case:
    x, y = tiny_images(6)
    p = _npz(d, "flat.npz", {"x.npy": npy_bytes(x.reshape(6, 64)), "y.npy": npy_bytes(y)})
    return p, 2, ("flat.npz", "member x has shape (6, 64)")


def d29_nan_pixels(d: Path) -> Case:
    x, y = tiny_images(6)
    xf = x.astype(np.float32) / 255
    xf[4, 2, 3] = np.nan
    p = _npz(d, "nan.npz", {"x.npy": npy_bytes(xf), "y.npy": npy_bytes(y)})
    return p, 2, ("nan.npz", "non-finite pixel values in x[4]")


def d30_zip_bomb(d: Path) -> Case:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "bomb.npz"
    header = npy_bytes(np.zeros((20, 1, 1024, 1024), np.uint8)[:0])[:128]
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as m:
            m.write(header)
            chunk = b"\x00" * (1 << 20)
            for _ in range(20):
                m.write(chunk)
        zf.writestr("y.npy", npy_bytes(np.zeros(20, np.int64)))
    return p, 2, ("bomb.npz", "zip bomb")


def d31_header_lies(d: Path) -> Case:
    text = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000, 1, 8, 8), }"
    text = text + b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text
    p = _npz(d, "liar.npz", {"x.npy": head + b"\x00" * 16,
                             "y.npy": npy_bytes(np.zeros(2, np.int64))})
    return p, 2, ("liar.npz", "header declares shape (1000000000, 1, 8, 8)")


def d32_truncated_npz(d: Path) -> Case:
    full = good_npz(d / "whole.npz").read_bytes()
    p = d / "cut.npz"
    p.write_bytes(full[: len(full) // 2])
    return p, 2, ("cut.npz", "not a valid .npz (zip) file")


def d33_fifo(d: Path) -> Case:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "pipe.npz"
    os.mkfifo(p)
    return p, 2, ("pipe.npz", "FIFO", "not read")


def d33_dev_zero(d: Path) -> Case:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    return Path("/dev/zero"), 2, ("/dev/zero", "character device")


def d33_fifo_in_folder(d: Path) -> Case:
    root = image_tree(d / "pictures")
    os.mkfifo(root / "2" / "pipe.png")
    return root, 2, ("pipe.png", "FIFO")


CASES: dict[str, Callable[[Path], Case]] = {
    f.__name__: f
    for f in (
        d01_truncated, d02_count_too_large, d03_trailing, d04_bad_magic, d04_dtype_code,
        d04_ndim_zero, d05_labels_as_images, d05_swapped_contents, d06_count_mismatch,
        d08_gz_truncated, d08_gz_not_gzip, d08_gz_bad_crc, d09_empty, d10_huge_dims,
        d11_empty_root, d12_class_without_images, d13_flipped_idat, d14_zero_bytes,
        d15_text_named_png, d15_tiff_named_png, d16_sixteen_bit, d17_palette, d18_alpha,
        d19_cmyk, d20_bomb, d22_mixed_sizes, d23_animated_gif, d24_link_to_parent,
        d24_class_linking_to_root, d25_dangling_link, d25_link_loop, d26_stray_files,
        d27_object_array, d27_pickle_renamed, d28_missing_y, d28_extra_member,
        d28_float_labels, d28_int8_images, d28_wrong_ndim, d29_nan_pixels, d30_zip_bomb,
        d31_header_lies, d32_truncated_npz, d33_fifo, d33_dev_zero, d33_fifo_in_folder,
    )
}


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run in a scratch folder: whatever a command writes beside itself lands there."""
    monkeypatch.chdir(tmp_path)



@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A checkpoint of the tiny network trained one epoch on good 8x8 data (classes 0, 1, 2)."""
    from cnncli.spec import load_config
    from cnncli.train.loop import train

    d = tmp_path_factory.mktemp("model")
    spec = write_config(d, good_npz(d / "train.npz"))
    train(load_config(spec), out=d / "run")
    return d / "run" / "best.safetensors"


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty current folder: a failed `cnncli train` must leave its runs/ empty."""
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    return w


def run_entries(work: Path) -> list[str]:
    runs = work / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def private_model(model_file: Path, folder: Path) -> Path:
    """A copy of the model in its own folder, so what eval writes beside it can be checked."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(model_file, folder / "best.safetensors"))


# ---- train ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_train_on_bad_data(cli, work, tmp_path, case):
    ref, code, needles = CASES[case](tmp_path / "data")
    spec = write_config(tmp_path / "cfg", ref)
    res = cli("train", spec, "--quiet")
    if code == 0:
        assert res.exit_code == 0, res.output
        assert run_entries(work)[:1] == ["latest"]
        return
    assert_clean_error(res, code, *needles)
    assert run_entries(work) == [], "a refused dataset left a run folder behind"


def test_train_on_mixed_sizes_says_how_many_were_resized(cli, work, tmp_path):
    ref, _, _ = d22_mixed_sizes(tmp_path / "data")
    res = cli("train", write_config(tmp_path / "cfg", ref))
    assert res.exit_code == 0, res.output
    assert "3 training images were resized to 8x8" in res.stderr


def test_train_label_beyond_outputs_names_the_data(cli, work, tmp_path):
    ref, code, needles = d07_label_too_large(tmp_path / "data")
    res = cli("train", write_config(tmp_path / "cfg", ref), "--quiet")
    assert_clean_error(res, code, str(ref.parent), "256 classes", "3 outputs")


def test_train_label_beyond_outputs_is_refused(cli, work, tmp_path):
    ref, _, _ = d07_label_too_large(tmp_path / "data")
    res = cli("train", write_config(tmp_path / "cfg", ref), "--quiet")
    assert_clean_error(res, 2, "256 classes", "3 outputs")
    assert run_entries(work) == []


def test_train_on_npz_label_beyond_outputs(cli, work, tmp_path):
    x, y = tiny_images(24)
    y[5] = 7
    p = _npz(tmp_path / "data", "eight.npz", {"x.npy": npy_bytes(x), "y.npy": npy_bytes(y)})
    res = cli("train", write_config(tmp_path / "cfg", p), "--quiet")
    assert_clean_error(res, 2, "8 classes", "3 outputs")
    assert run_entries(work) == []


def test_slightly_too_many_pixels_is_refused(cli, work, tmp_path, monkeypatch):
    """D21: between the limit and twice the limit (where Pillow would only warn)."""
    import cnncli.io.images as images

    root = image_tree(tmp_path / "pictures")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 40)       # the 8x8 pictures hold 64
    res = cli("train", write_config(tmp_path / "cfg", root), "--quiet")
    assert_clean_error(res, 2, "img_00.png", "image too large", "64", "limit 40")
    assert run_entries(work) == []


def test_training_data_missing(cli, work, tmp_path):
    res = cli("train", write_config(tmp_path / "cfg", tmp_path / "nothing.npz"), "--quiet")
    assert_clean_error(res, 2, "nothing.npz", "no such file")
    assert run_entries(work) == []


# ---- eval --data --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_eval_on_bad_data(cli, model_file, tmp_path, case):
    model = private_model(model_file, tmp_path / "model")
    ref, code, needles = CASES[case](tmp_path / "data")
    res = cli("eval", "--model", model, "--data", ref, "--json")
    if code == 0:
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["samples"] > 0 and 0.0 <= doc["accuracy"] <= 1.0
        return
    assert_clean_error(res, code, *needles)
    assert sorted(p.name for p in model.parent.iterdir()) == ["best.safetensors"]
    assert res.stdout == ""


def test_eval_label_beyond_outputs(cli, model_file, tmp_path):
    model = private_model(model_file, tmp_path / "model")
    ref, _, _ = d07_label_too_large(tmp_path / "data")
    res = cli("eval", "--model", model, "--data", ref)
    assert_clean_error(res, 2, "train-images-idx3-ubyte", "are not the model's (0, 1, 2)")
    assert sorted(p.name for p in model.parent.iterdir()) == ["best.safetensors"]


# ---- infer --------------------------------------------------------------------------------------

PICTURE_CASES = {
    # name: (file name, bytes builder, exit code, needles)
    "d13_flipped_idat": ("img_0042.png",
                         lambda: _flip_idat(png_bytes(tiny_images(1)[0][0])), 2,
                         ("img_0042.png", "corrupt image")),
    "d14_zero_bytes": ("empty.png", lambda: b"", 2, ("empty.png", "empty (0 bytes)")),
    "d15_text_named_png": ("note.png", lambda: b"hello\n", 2,
                           ("note.png", "not a PNG, JPEG, BMP, GIF, TIFF or WebP image")),
    "d20_bomb": ("huge.png", lambda: png_header_only(100_000, 100_000), 2,
                 ("huge.png", "image too large")),
    "d16_sixteen_bit": ("deep.png", lambda: png_bytes(
        (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)), 0, ()),
    "d19_cmyk": ("cmyk.jpg", lambda: _cmyk_jpeg(), 0, ()),
}


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("case", list(PICTURE_CASES))
def test_infer_on_bad_picture_among_good_ones(cli, model_file, tmp_path, case):
    name, build, code, needles = PICTURE_CASES[case]
    model = private_model(model_file, tmp_path / "model")
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(tiny_images(1)[0][0]))
    odd = tmp_path / name
    odd.write_bytes(build())
    res = cli("infer", good, odd, "--model", model, "--json")
    if code:
        assert_clean_error(res, code, *needles)
    else:
        assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)        # the good picture is answered either way
    preds = {Path(p["file"]).name: p for p in doc["predictions"]}
    assert preds["good.png"]["class"] in CLASSES
    assert ("error" in preds[name]) == bool(code)
    assert sorted(p.name for p in model.parent.iterdir()) == ["best.safetensors"]


@pytest.mark.timeout(30)
def test_infer_on_special_files(cli, model_file, tmp_path):
    model = private_model(model_file, tmp_path / "model")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "gone.png"
    os.symlink("nowhere.png", link)
    loop = tmp_path / "self.png"
    os.symlink("self.png", loop)
    res = cli("infer", fifo, link, loop, "--model", model)
    assert_clean_error(res, 2, "pipe.png", "FIFO", "gone.png", "self.png")


def test_infer_slightly_too_many_pixels(cli, model_file, tmp_path, monkeypatch):
    import cnncli.io.images as images

    model = private_model(model_file, tmp_path / "model")
    p = tmp_path / "pic.png"
    p.write_bytes(png_bytes(tiny_images(1)[0][0]))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 40)
    res = cli("infer", p, "--model", model)
    assert_clean_error(res, 2, "pic.png", "image too large")


def test_infer_on_animated_palette_and_alpha_pictures(cli, model_file, tmp_path):
    model = private_model(model_file, tmp_path / "model")
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], loop=0)
    Image.fromarray(tiny_images(1)[0][0]).convert("P").save(tmp_path / "pal.png",
                                                          transparency=0)
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "clear.png")
    res = cli("infer", tmp_path / "anim.gif", tmp_path / "pal.png", tmp_path / "clear.png",
              "--model", model, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [p["class"] in CLASSES for p in doc["predictions"]] == [True] * 3
