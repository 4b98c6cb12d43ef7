"""Datasets as the trainer sees them, and where they come from.

A dataset reference is a named dataset or a path:

- ``digits``: the bundled sample (5,000 MNIST digits, IDX files in ``sample_data/digits``);
- ``typeset``: 1,200 bundled typeset digits framed as MNIST frames its digits (IDX files in
  ``sample_data/typeset``; the test split is set in fonts the train split never uses);
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` files in
  ``/usr/share/datasets/fashion-mnist``, or a folder given in ``CNNCLI_DATA``;
- a folder holding an IDX pair (``train-images-idx3-ubyte[.gz]`` and
  ``train-labels-idx1-ubyte[.gz]`` for the train split; ``t10k-*`` or ``test-*`` for the
  test split); ``DIR/train`` or ``DIR/test`` naming a split of such a folder;
- an IDX images file (its labels are found beside it: ``idx3`` -> ``idx1``,
  ``images`` -> ``labels``);
- an image folder (``root/<class>/*.png``; see ``cnncli.io.folders``), or one with
  ``train/`` and ``test/`` sub-folders, of which ``split`` picks one;
- an ``.npz`` with ``x`` and ``y`` (see ``cnncli.io.npz``);
- a list of any of these, read one after the other as one dataset (same classes, same
  image shape): ``[digits, typeset]``.

Pixels stay as stored (uint8 0..255, or float32 in [0, 1]) and are converted to float
only batch by batch (``Dataset.batch_float``), so a 60,000-image set costs 47 MB, not 188.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import DataError
from cnncli.io.idx import read_idx

NAMED_DATASETS = ("digits", "typeset", "fashion-mnist")
#: the named datasets bundled with cnncli: a folder of sample_data each, an IDX pair per split
BUNDLED_DIGITS = {"digits": "the bundled digits sample", "typeset": "the bundled typeset digits"}
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
#: Fashion-MNIST's class names (Xiao, Rasul and Vollgraf, 2017), in label order.
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]

_IDX_NAME = re.compile(
    r"^(?P<split>train|t10k|test)-(?P<kind>images|labels)[-.]idx(?P<nd>[13])-ubyte(?P<gz>\.gz)?$",
    re.IGNORECASE,
)
_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


@dataclass(eq=False)
class Dataset:
    """Images and labels in memory.

    x: (N, C, H, W) uint8 (0..255) or float32 in [0, 1]
    y: (N,) int64 class indices into ``classes``
    digit_like: the images are MNIST-style digits (``infer`` then frames pictures as
    digits by default)
    info: what loading did (resized pictures, ignored files, ...), JSON-serialisable
    """

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    source: str
    digit_like: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batch_float(self, idx: Any, dtype: Any = np.float32) -> np.ndarray:
        """The selected rows as a new float array (n, C, H, W) in [0, 1].

        ``idx`` is anything NumPy indexes the first axis with (an index array, a slice).
        Only those rows are converted; the result never shares memory with ``x``.
        """
        xb = self.x[idx]
        if xb.ndim == 3:
            xb = xb[None]
        if xb.dtype == np.uint8:
            out = xb.astype(dtype)
            out *= np.asarray(1.0 / 255.0, dtype=dtype)
            return out
        out = np.array(xb, dtype=dtype, copy=True)
        return out

    def subset(self, idx: np.ndarray, source: str | None = None) -> Dataset:
        """The rows ``idx`` as a new Dataset (copies; same classes)."""
        return Dataset(
            x=self.x[idx], y=self.y[idx], classes=list(self.classes),
            source=source or self.source, digit_like=self.digit_like, info=dict(self.info),
        )


# ---- locating files ------------------------------------------------------------------------


def find_idx_pair(folder: str | os.PathLike, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files for ``split`` in ``folder``, or None if there are none.

    Plain files are preferred over ``.gz`` when both exist. Images without labels (or the
    reverse) are an error.
    """
    d = Path(folder)
    try:
        names = sorted(e.name for e in os.scandir(d))
    except OSError:
        return None
    found: dict[str, list[str]] = {"images": [], "labels": []}
    for name in names:
        m = _IDX_NAME.match(name)
        if not m or m["split"].lower() not in _SPLIT_PREFIXES[split]:
            continue
        kind = m["kind"].lower()
        if (kind == "images") != (m["nd"] == "3"):
            continue
        found[kind].append(name)
    if not found["images"] and not found["labels"]:
        return None
    pick = {}
    for kind, other in (("images", "labels"), ("labels", "images")):
        if not found[kind]:
            raise DataError(
                f"found {found[other][0]} but no {kind} file for the {split} split "
                f"(expected {_expected_name(split, kind)}[.gz])",
                path=str(d),
            )
        # plain before .gz, train/t10k before test
        pick[kind] = sorted(found[kind], key=lambda n: (n.lower().endswith(".gz"),
                                                        n.lower().startswith("test")))[0]
    return d / pick["images"], d / pick["labels"]


def _expected_name(split: str, kind: str) -> str:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-{kind}-idx{'3' if kind == 'images' else '1'}-ubyte"


def labels_beside(images: str | os.PathLike) -> Path:
    """The labels file that goes with an IDX images file (idx3 -> idx1, images -> labels)."""
    p = Path(images)
    name = p.name
    swapped = re.sub("idx3", "idx1", name, flags=re.IGNORECASE)
    swapped = re.sub("images", "labels", swapped, flags=re.IGNORECASE)
    if swapped == name:
        raise DataError(
            "cannot tell which labels file goes with this IDX images file (its name has "
            "neither 'idx3' nor 'images' in it)",
            path=str(p),
            hint="give the folder holding train-images-idx3-ubyte and train-labels-idx1-ubyte",
        )
    base = swapped[:-3] if swapped.lower().endswith(".gz") else swapped
    for cand in (swapped, base, base + ".gz"):
        if (p.parent / cand).exists():
            return p.parent / cand
    raise DataError(f"no labels file {swapped!r} beside the images file", path=str(p))


def _fashion_dir() -> tuple[Path | None, list[str]]:
    looked = []
    env = os.environ.get("CNNCLI_DATA")
    candidates = []
    if env:
        candidates += [Path(env) / "fashion-mnist", Path(env)]
    candidates.append(Path(FASHION_SYSTEM_DIR))
    for c in candidates:
        looked.append(str(c))
        if c.is_dir() and find_idx_pair(c, "train") is not None:
            return c, looked
    return None, looked


# ---- loading -------------------------------------------------------------------------------


def dataset_label(ref: str | Sequence[str] | None) -> str:
    """A dataset reference as people read it: ``digits``, ``digits + typeset``."""
    if ref is None:
        return ""
    if isinstance(ref, str):
        return ref
    return " + ".join(str(r) for r in ref)


def load_dataset(
    ref: str | Sequence[str],
    split: str = "train",
    input_shape: tuple[int, int, int] | None = None,
    framing: str | None = None,
) -> Dataset:
    """Load a dataset reference (named, a path, or a list of them; see the module docstring).

    ``split`` ("train" or "test") picks the file pair of IDX folders and named datasets.
    ``input_shape`` (C, H, W), when given, is checked: image folders are converted to it
    (grey <-> RGB, resized); other sources must match it. ``framing`` ("resize" or
    "digit") applies to image folders only.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    if not isinstance(ref, str | os.PathLike):
        return concat_datasets(
            [load_dataset(r, split, input_shape, framing) for r in ref], dataset_label(ref)
        )
    ref = str(ref)
    key = ref.strip().lower()
    if key in NAMED_DATASETS and not os.path.lexists(ref):
        ds = _load_named(key, split)
        _check_shape(ds, input_shape)
        return ds
    path = Path(ref).expanduser()
    if not os.path.lexists(path):
        parent = path.parent
        if path.name.lower() in ("train", "test") and parent.is_dir():
            pair = find_idx_pair(parent, path.name.lower())
            if pair is not None:
                ds = _load_idx_pair(*pair, source=str(path))
                _check_shape(ds, input_shape)
                return ds
        raise DataError(
            "no such file or folder",
            path=ref,
            hint="give an image folder, an IDX file or folder, an .npz, or a named dataset: "
            + ", ".join(NAMED_DATASETS),
        )
    if path.is_dir():
        ds = _load_folder(path, split, input_shape, framing)
    else:
        ds = _load_file(path)
    _check_shape(ds, input_shape)
    return ds


def concat_datasets(parts: list[Dataset], source: str) -> Dataset:
    """The rows of ``parts`` one after the other as one Dataset.

    The parts must have the same classes in the same order and the same image shape;
    uint8 and float parts together give float32 in [0, 1].
    """
    if not parts:
        raise DataError("an empty list of datasets", hint="name at least one dataset")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for ds in parts[1:]:
        if list(ds.classes) != list(first.classes):
            raise DataError(
                f"the datasets of a list must have the same classes: {first.source} has "
                f"{_class_list(first.classes)}, {ds.source} has {_class_list(ds.classes)}",
                path=source,
            )
        if ds.x.shape[1:] != first.x.shape[1:]:
            raise DataError(
                f"the datasets of a list must have images of one shape: {first.source} has "
                f"{list(first.x.shape[1:])}, {ds.source} has {list(ds.x.shape[1:])}",
                path=source,
            )
    if all(ds.x.dtype == np.uint8 for ds in parts):
        x = np.concatenate([ds.x for ds in parts])
    else:
        x = np.concatenate([ds.batch_float(slice(None)) for ds in parts])
    info: dict[str, Any] = {}
    for ds in parts:
        for k, v in ds.info.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                info[k] = info.get(k, 0) + v
            else:
                info.setdefault(k, v)
    return Dataset(
        x=x, y=np.concatenate([np.asarray(ds.y, dtype=np.int64) for ds in parts]),
        classes=list(first.classes), source=" + ".join(ds.source for ds in parts),
        digit_like=all(ds.digit_like for ds in parts), info=info,
    )


def _class_list(classes: list[str]) -> str:
    shown = ", ".join(str(c) for c in classes[:10])
    return f"[{shown}{', ...' if len(classes) > 10 else ''}] ({len(classes)})"


def _load_named(name: str, split: str) -> Dataset:
    if name in BUNDLED_DIGITS:
        from cnncli.resources import sample_dir

        folder = sample_dir() / name
        pair = find_idx_pair(folder, split) if folder.is_dir() else None
        if pair is None:
            raise DataError(
                f"{BUNDLED_DIGITS[name]} is missing from this installation",
                path=str(folder),
                hint="reinstall cnncli",
            )
        ds = _load_idx_pair(*pair, classes=DIGIT_CLASSES, source=f"{name} ({split})")
        ds.digit_like = True
        return ds
    folder, looked = _fashion_dir()
    if folder is None:
        raise DataError(
            "dataset 'fashion-mnist' is not installed (looked in " + ", ".join(looked) + ")",
            hint="install it with `apt-get install dataset-fashion-mnist`, or set CNNCLI_DATA "
            "to a folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz",
        )
    pair = find_idx_pair(folder, split)
    if pair is None:
        raise DataError(
            f"no IDX files for the {split} split of fashion-mnist", path=str(folder),
            hint=f"expected {_expected_name(split, 'images')}.gz and "
            f"{_expected_name(split, 'labels')}.gz",
        )
    ds = _load_idx_pair(*pair, classes=FASHION_CLASSES, source=f"fashion-mnist ({split})")
    ds.digit_like = False
    return ds


def _load_folder(path: Path, split: str, input_shape, framing) -> Dataset:
    pair = find_idx_pair(path, split)
    if pair is not None:
        return _load_idx_pair(*pair)
    other = "test" if split == "train" else "train"
    if (path / "train").is_dir() and (path / "test").is_dir():
        return _load_folder(path / split, split, input_shape, framing)
    try:
        other_pair = find_idx_pair(path, other)
    except DataError:
        other_pair = None
    if other_pair is not None:
        raise DataError(
            f"this IDX folder has no files for the {split} split (found {other_pair[0].name})",
            path=str(path),
            hint=f"expected {_expected_name(split, 'images')}[.gz] and "
            f"{_expected_name(split, 'labels')}[.gz]",
        )
    from cnncli.io.folders import read_image_folder

    x, y, classes, info = read_image_folder(path, input_shape, framing or "resize")
    ds = Dataset(x=x, y=y, classes=classes, source=str(path), info=info)
    ds.digit_like = looks_like_mnist_digits(ds.x)
    return ds


def _load_file(path: Path) -> Dataset:
    from cnncli.io._fs import open_regular

    fh, size = open_regular(path, "dataset file")
    with fh:
        head = fh.read(4)
    name = path.name.lower()
    if head.startswith(b"PK") or name.endswith(".npz"):
        from cnncli.io.npz import read_npz

        x, y = read_npz(path)
        classes = [str(i) for i in range(int(y.max()) + 1)]
        ds = Dataset(x=x, y=y, classes=classes, source=str(path))
        ds.digit_like = looks_like_mnist_digits(ds.x)
        return ds
    is_idx_name = _IDX_NAME.match(path.name) is not None or "idx" in name
    if head[:2] == b"\x00\x00" or (head[:2] == b"\x1f\x8b" and is_idx_name) or is_idx_name:
        if ("idx1" in name or "labels" in name) and "idx3" not in name:
            raise DataError(
                "this is an IDX labels file; give the images file (or the folder holding both)",
                path=str(path),
                hint="did you swap the images and labels files?",
            )
        return _load_idx_pair(path, labels_beside(path))
    if name.endswith(".npy"):
        raise DataError("a single .npy array is not a dataset; expected an .npz with x and y",
                        path=str(path), hint="save with np.savez(path, x=images, y=labels)")
    from cnncli.io.images import IMAGE_EXTENSIONS

    if name.endswith(IMAGE_EXTENSIONS):
        raise DataError(
            "a single picture is not a dataset; give a folder with one sub-folder per class",
            path=str(path),
        )
    raise DataError(
        "unrecognised dataset file; expected an .npz, an IDX file, or a folder",
        path=str(path),
    )


def _load_idx_pair(images: Path, labels: Path, classes: list[str] | None = None,
                   source: str | None = None) -> Dataset:
    x = read_idx(images, role="images")
    y = read_idx(labels, role="labels")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"image count {x.shape[0]} != label count {y.shape[0]} (labels file {labels.name})",
            path=str(images),
        )
    y = y.astype(np.int64)
    if classes is None and "fashion" in images.parent.name.lower() and int(y.max()) < 10:
        classes = FASHION_CLASSES               # a copy of Fashion-MNIST given by its path
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1)]
        digit_like = None
    else:
        check_labels(y, len(classes), str(labels))
        digit_like = False
    x = x[:, None, :, :]
    ds = Dataset(x=x, y=y, classes=list(classes), source=source or str(images),
                 info={"images": str(images), "labels": str(labels)})
    ds.digit_like = looks_like_mnist_digits(x) if digit_like is None else digit_like
    return ds


def _check_shape(ds: Dataset, input_shape) -> None:
    if input_shape is None:
        return
    want = tuple(int(s) for s in input_shape)
    if ds.shape != want:
        c, h, w = ds.shape
        raise DataError(
            f"the data holds {c}x{h}x{w} images (channels x height x width); the model "
            f"expects {want[0]}x{want[1]}x{want[2]}",
            path=ds.source,
            hint="change model.input, or use an image folder (it is converted to the input)",
        )


def check_labels(y_or_ds: Any, num_classes: int, source: str | None = None) -> None:
    """Every label must be in [0, num_classes): DataError naming the first one that is not."""
    if isinstance(y_or_ds, Dataset):
        y, source = y_or_ds.y, source or y_or_ds.source
    else:
        y = np.asarray(y_or_ds)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"label {int(y[i])} at index {i} outside [0, {num_classes})",
                        path=source,
                        hint=f"the model has {num_classes} outputs")


def looks_like_mnist_digits(x: np.ndarray) -> bool:
    """True for grey 28x28 images framed as MNIST frames its digits.

    MNIST centres each digit's 20x20 box by its centre of mass in a 28x28 field
    (LeCun et al. 1998), so the outer two-pixel ring holds almost no ink; natural
    images and Fashion-MNIST's clothes fill the field.
    """
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28) or x.shape[0] == 0:
        return False
    sample = x[: min(len(x), 2000), 0].astype(np.float64)
    total = sample.sum()
    if total <= 0:
        return False
    inner = sample[:, 2:-2, 2:-2].sum()
    return bool((total - inner) / total < 0.01)


# ---- validation split and normalisation ----------------------------------------------------


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """A seeded random split into (train, validation); validation is None when fraction is 0.

    ``fraction`` in [0, 1); at least one image goes to each side when it is above 0.
    """
    f = float(fraction)
    if not 0.0 <= f < 1.0:
        raise DataError(f"validation fraction {fraction} outside [0, 1)", field="data.val_split")
    n = len(ds)
    n_val = int(round(n * f))
    if f > 0:
        n_val = max(1, n_val)
    if n_val == 0:
        return ds, None
    if n - n_val < 1:
        raise DataError(
            f"{n} images cannot be split into training and validation (val_split {fraction})",
            path=ds.source, field="data.val_split",
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:n_val])
    tr_idx = np.sort(perm[n_val:])
    return ds.subset(tr_idx), ds.subset(val_idx, source=f"{ds.source} (validation)")


def compute_normalization(ds: Dataset, mode: str) -> dict[str, Any]:
    """Input normalisation as a JSON-serialisable dict {"mode", "mean", "std"} per channel.

    The network sees (x - mean) / std with x in [0, 1]:
    ``standardize``: mean and std of the training pixels per channel;
    ``scale``: x itself (mean 0, std 1);
    ``none``: the stored pixel values 0..255 (mean 0, std 1/255).
    """
    c = ds.x.shape[1]
    if mode == "scale":
        return {"mode": "scale", "mean": [0.0] * c, "std": [1.0] * c}
    if mode == "none":
        return {"mode": "none", "mean": [0.0] * c, "std": [1.0 / 255.0] * c}
    if mode != "standardize":
        raise DataError(
            f"unknown normalize mode {mode!r}; expected standardize, scale or none",
            field="data.normalize",
        )
    means, stds = [], []
    for ch in range(c):
        if ds.x.dtype == np.uint8:
            hist = np.zeros(256, dtype=np.int64)
            for s in range(0, len(ds), 8192):
                hist += np.bincount(ds.x[s:s + 8192, ch].ravel(), minlength=256)
            v = np.arange(256, dtype=np.float64) / 255.0
            n = hist.sum()
            mean = float(hist @ v / n)
            var = float(hist @ (v - mean) ** 2 / n)
        else:
            total = sq = 0.0
            n = 0
            for s in range(0, len(ds), 8192):
                part = ds.x[s:s + 8192, ch].astype(np.float64)
                total += float(part.sum())
                n += part.size
            mean = total / n
            for s in range(0, len(ds), 8192):
                part = ds.x[s:s + 8192, ch].astype(np.float64)
                sq += float(((part - mean) ** 2).sum())
            var = sq / n
        std = float(np.sqrt(var))
        means.append(mean)
        stds.append(std if std > 1e-6 else 1.0)
    return {"mode": "standardize", "mean": means, "std": stds}


def apply_normalization(x: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """(x - mean) / std per channel, in place on a float array (N, C, H, W) or (C, H, W).

    Returns ``x`` (a float32 copy first if ``x`` is not a writable float array).
    """
    if x.dtype.kind != "f" or not x.flags.writeable:
        x = np.array(x, dtype=np.float32)
    mean = np.asarray(norm["mean"], dtype=x.dtype).reshape(-1, 1, 1)
    inv = (1.0 / np.asarray(norm["std"], dtype=np.float64)).astype(x.dtype).reshape(-1, 1, 1)
    x -= mean
    x *= inv
    return x
