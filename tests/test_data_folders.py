"""Image-folder datasets on real folders: layout, ignored files, D11-D26."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cnncli.errors import DataError
from cnncli.io.datasets import load_dataset
from cnncli.io.folders import read_image_folder, scan_image_folder


def put(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path


def grey(v, h=8, w=8):
    return np.full((h, w), v, dtype=np.uint8)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    put(root / "cat" / "a.png", grey(10))
    put(root / "cat" / "b.jpg", grey(20))
    put(root / "dog" / "c.bmp", grey(200))
    put(root / "dog" / "d.PNG", grey(250))
    put(root / "emu" / "e.gif", grey(128))
    return root


def test_classes_sorted_labels_and_values(tree):
    x, y, classes, info = read_image_folder(tree)
    assert classes == ["cat", "dog", "emu"]
    assert y.tolist() == [0, 0, 1, 1, 2]
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.uint8
    assert x[0].max() == 10 and x[2].min() == 200
    assert info["resized"] == 0 and info["shape"] == [1, 8, 8]


def test_d26_other_files_ignored(tree):
    (tree / "cat" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (tree / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tree / "cat" / "README.txt").write_text("cats")
    (tree / "dog" / "Thumbs.db").write_bytes(b"junk")
    (tree / ".hidden").mkdir()
    put(tree / ".hidden" / "z.png", grey(1))
    (tree / "notes.txt").write_text("not a class")
    x, y, classes, info = read_image_folder(tree)
    assert classes == ["cat", "dog", "emu"] and len(y) == 5
    assert info["ignored_files"] == 4


def test_d11_empty_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="no class folders in"):
        read_image_folder(root)
    put(root / "loose.png", grey(3))
    with pytest.raises(DataError) as e:
        read_image_folder(root)
    assert "found 1 pictures directly in the folder" in e.value.hint


def test_d12_class_without_images(tree):
    (tree / "seven").mkdir()
    (tree / "seven" / "README.txt").write_text("todo")
    with pytest.raises(DataError) as e:
        scan_image_folder(tree)
    assert "class 'seven' has no images" in str(e.value) and "seven" in e.value.path


def test_d13_corrupt_image_named(tree):
    p = tree / "cat" / "img_0042.png"
    raw = bytearray((tree / "cat" / "a.png").read_bytes())
    raw[raw.index(b"IDAT") + 8] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        read_image_folder(tree)
    assert "img_0042.png" in str(e.value) and "corrupt image" in str(e.value)


def test_d14_zero_byte(tree):
    (tree / "dog" / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.png: image is empty \(0 bytes\)"):
        read_image_folder(tree, (1, 8, 8))


def test_d15_text_named_png(tree):
    (tree / "dog" / "fake.png").write_text("I am text")
    with pytest.raises(DataError, match=r"fake\.png: not a PNG, JPEG"):
        read_image_folder(tree, (1, 8, 8))


def test_d16_to_d19_modes_in_a_folder(tmp_path):
    root = tmp_path / "modes"
    put(root / "a" / "deep.png", np.full((4, 4), 65535, dtype=np.uint16))
    rgba = np.zeros((4, 4, 4), np.uint8)               # transparent -> white
    put(root / "a" / "alpha.png", rgba)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 255))
    (root / "b").mkdir()
    cmyk.save(root / "b" / "ink.jpg")
    x, y, classes, info = read_image_folder(root, (1, 4, 4))
    assert classes == ["a", "b"]
    # files in sorted order: alpha.png, deep.png, ink.jpg
    assert x[0].min() == 255 and x[1].min() == 255 and x[2].max() <= 10
    assert info["converted_to_grey"] == 2          # RGBA and CMYK pictures


def test_d22_mixed_sizes_resized_and_counted(tmp_path):
    root = tmp_path / "sizes"
    put(root / "a" / "1.png", grey(100, 28, 28))
    put(root / "a" / "2.png", grey(100, 28, 28))
    put(root / "b" / "3.png", grey(50, 32, 32))
    x, y, classes, info = read_image_folder(root)
    assert x.shape == (3, 1, 28, 28) and info["resized"] == 1
    assert abs(int(x[2].mean()) - 50) <= 1
    x, _, _, info = read_image_folder(root, (1, 16, 16))
    assert x.shape == (3, 1, 16, 16) and info["resized"] == 3


def test_channels_follow_the_model_input(tmp_path):
    root = tmp_path / "rgb"
    c = np.zeros((6, 6, 3), np.uint8)
    c[..., 0] = 255
    put(root / "r" / "red.png", c)
    put(root / "g" / "grey.png", grey(60, 6, 6))
    x, _, _, info = read_image_folder(root)              # any colour -> 3 channels
    assert x.shape == (2, 3, 6, 6) and info["converted_to_rgb"] == 1
    assert (x[0] == 60).all()                            # classes sorted: g, r
    assert x[1, 0].min() == 255 and x[1, 1].max() == 0
    x1, _, _, info1 = read_image_folder(root, (1, 6, 6))
    assert x1.shape == (2, 1, 6, 6) and info1["converted_to_grey"] == 1
    assert abs(int(x1[1].mean()) - round(0.299 * 255)) <= 1     # BT.601 luma of red
    with pytest.raises(DataError, match="1 or 3 input channels"):
        read_image_folder(root, (4, 6, 6))


def test_d23_animated_gif_first_frame(tmp_path):
    root = tmp_path / "anim"
    (root / "a").mkdir(parents=True)
    frames = [Image.new("L", (5, 5), v) for v in (30, 220)]
    frames[0].save(root / "a" / "m.gif", save_all=True, append_images=frames[1:])
    x, *_ = read_image_folder(root)
    assert (x == 30).all()


def test_d24_symlink_loop_terminates(tree):
    os.symlink("..", tree / "cat" / "up")               # cat/up -> data/
    classes, files, info = scan_image_folder(tree)
    assert classes == ["cat", "dog", "emu"] and len(files) == 5
    assert info["ignored_folders"] == 1
    os.symlink(tree, tree / "loop")                     # a class folder that is the root
    with pytest.raises(DataError, match="class 'loop' has no images"):
        scan_image_folder(tree)                         # it holds only folders


def test_d24_root_link_class_is_not_followed_deeper(tmp_path):
    root = tmp_path / "data"
    put(root / "a" / "x.png", grey(5))
    os.symlink(root, root / "a" / "again")              # a/again -> root -> a -> again ...
    classes, files, info = scan_image_folder(root)
    assert classes == ["a"] and len(files) == 1 and info["ignored_folders"] == 1


def test_d25_dangling_symlink(tree):
    os.symlink(tree / "nowhere.png", tree / "cat" / "gone.png")
    with pytest.raises(DataError, match=r"gone\.png: cannot open image: no such file"):
        read_image_folder(tree, (1, 8, 8))


def test_d25_self_loop_file(tree):
    link = tree / "cat" / "self.png"
    os.symlink(link, link)
    with pytest.raises(DataError, match="too many levels of symbolic links"):
        read_image_folder(tree, (1, 8, 8))


def test_not_a_folder(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(f)


def test_digit_framing_option(tmp_path):
    root = tmp_path / "pics"
    a = np.full((60, 90), 230, np.uint8)
    a[10:40, 60:66] = 20                                # a dark '1' stroke, off-centre
    put(root / "1" / "one.png", a)
    x, _, _, info = read_image_folder(root, (1, 28, 28), framing="digit")
    assert info["framing"] == "digit"
    img = x[0, 0].astype(float)
    assert img[:4].sum() == 0 and img[-4:].sum() == 0   # 20x20 box inside 28x28
    ys, xs = np.nonzero(img)
    cy = (img.sum(1) @ np.arange(28)) / img.sum()
    assert abs(cy - 13.5) < 1.0 and xs.min() > 4


def test_load_dataset_on_image_folder(tree):
    ds = load_dataset(str(tree), input_shape=(1, 8, 8))
    assert len(ds) == 5 and ds.classes == ["cat", "dog", "emu"]
    assert ds.digit_like is False and ds.info["resized"] == 0
    xb = ds.batch_float(np.array([2]))
    assert xb.dtype == np.float32 and abs(float(xb.max()) - 200 / 255) < 1e-6


def test_train_test_subfolders(tmp_path):
    root = tmp_path / "split"
    put(root / "train" / "a" / "1.png", grey(1))
    put(root / "train" / "b" / "2.png", grey(2))
    put(root / "test" / "a" / "3.png", grey(3))
    put(root / "test" / "b" / "4.png", grey(4))
    put(root / "test" / "b" / "5.png", grey(5))
    assert len(load_dataset(str(root), "train")) == 2
    te = load_dataset(str(root), "test")
    assert len(te) == 3 and te.classes == ["a", "b"]
