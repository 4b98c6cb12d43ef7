"""Image-folder datasets: ``root/<class>/*.png|jpg|jpeg|bmp|gif|tif|tiff|webp``.

Class names are the sub-folder names, sorted; the label of a picture is the index of its
folder. Exactly two levels are read (the root's sub-folders, then their files), so a
symbolic-link loop cannot make the scan run forever. Hidden entries (names starting with
a dot, such as ``.DS_Store`` or macOS ``._x.png`` companions) and files with other
endings (``README.txt``, ``Thumbs.db``) are ignored and counted. A class folder without
pictures is an error, as is a root without class folders.

Every picture is read with ``cnncli.io.images`` (so its errors name the file) and brought
to one shape: the model input when it is given, else the most common size, grey unless
some picture has colour. How many were resized or converted is reported.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import DataError
from cnncli.io._fs import os_reason

_SHOWN_EXTENSIONS = ".png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp"


def _extensions() -> tuple[str, ...]:
    from cnncli.io.images import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _scandir(path: str, what: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {what}: {os_reason(exc)}", path=path) from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()                  # follows a link once; we never go deeper
    except OSError:
        return False


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]], dict]:
    """(class names, [(file, label)], {"ignored_files": n, "ignored_folders": m}).

    Raises DataError for a root that is not a folder, has no class folders, or has a
    class folder without pictures.
    """
    r = os.fspath(root)
    if not os.path.isdir(r):
        raise DataError("not a folder", path=r)
    exts = _extensions()
    entries = _scandir(r, "the dataset folder")
    class_dirs = [e for e in entries if not e.name.startswith(".") and _is_dir(e)]
    if not class_dirs:
        loose = sum(1 for e in entries if e.name.lower().endswith(exts))
        hint = "put the pictures of each class in a sub-folder named after it: " \
               "ROOT/<class>/*.png"
        if loose:
            hint = f"found {loose} pictures directly in the folder; " + hint
        raise DataError(f"no class folders in {r!r}", path=r, hint=hint)
    classes: list[str] = []
    files: list[tuple[str, int]] = []
    ignored_files = ignored_dirs = 0
    for label, d in enumerate(class_dirs):
        classes.append(d.name)
        n = 0
        for e in _scandir(d.path, f"class folder {d.name!r}"):
            if e.name.startswith("."):
                ignored_files += 1
                continue
            if _is_dir(e):
                ignored_dirs += 1
                continue
            if e.name.lower().endswith(exts):
                files.append((e.path, label))
                n += 1
            else:
                ignored_files += 1
        if n == 0:
            raise DataError(
                f"class {d.name!r} has no images (expected files ending {_SHOWN_EXTENSIONS})",
                path=d.path,
            )
    return classes, files, {"ignored_files": ignored_files, "ignored_folders": ignored_dirs}


def read_image_folder(
    root: str | os.PathLike,
    input_shape: tuple[int, int, int] | None = None,
    framing: str = "resize",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """Read an image folder: (x (N, C, H, W) uint8, y (N,) int64, classes, info).

    ``input_shape`` (C, H, W) is the shape every picture is brought to; without it, the
    most common size among the pictures and 1 channel (3 if any picture has colour).
    ``framing`` is ``resize`` (channels converted, picture stretched to (H, W)) or
    ``digit`` (``frame_digit`` for grey square inputs, MNIST-style). ``info`` holds the
    counts of resized and channel-converted pictures, ignored files and the target shape.
    """
    from cnncli.io.images import frame_digit, frame_resize, load_image, probe_image

    classes, files, info = scan_image_folder(root)
    n = len(files)
    if input_shape is None:
        probes = [probe_image(f) for f, _ in files]
        sizes = Counter((pr["size"][1], pr["size"][0]) for pr in probes)
        (h, w), _ = sizes.most_common(1)[0]
        c = 1 if all(pr["grey"] for pr in probes) else 3
        target = (c, int(h), int(w))
    else:
        target = tuple(int(s) for s in input_shape)
        if len(target) != 3 or target[0] not in (1, 3):
            raise DataError(
                f"an image folder can feed a model with 1 or 3 input channels, not {target}",
                path=os.fspath(root),
            )
    c, h, w = target
    digit = framing == "digit" and c == 1 and h == w
    x = np.empty((n, c, h, w), dtype=np.uint8)
    y = np.fromiter((lab for _, lab in files), dtype=np.int64, count=n)
    resized = to_grey = to_rgb = 0
    sizes_seen: Counter = Counter()
    for i, (f, _) in enumerate(files):
        img, _meta = load_image(f)
        ih, iw = img.shape[:2]
        sizes_seen[f"{iw}x{ih}"] += 1
        colour = img.ndim == 3
        if colour and c == 1:
            to_grey += 1
        elif not colour and c == 3:
            to_rgb += 1
        if (ih, iw) != (h, w):
            resized += 1
        if digit:
            arr = frame_digit(img, out=h, box=max(1, round(h * 20 / 28)))[0][None]
        else:
            arr = frame_resize(img, target)
        np.multiply(arr, 255.0, out=arr)
        np.rint(arr, out=arr)
        x[i] = arr
        if progress is not None:
            progress(i + 1, n)
    info.update(
        files=n,
        shape=list(target),
        framing="digit" if digit else "resize",
        resized=resized,
        converted_to_grey=to_grey,
        converted_to_rgb=to_rgb,
        sizes={k: v for k, v in sizes_seen.most_common(5)},
        root=str(Path(root)),
    )
    return x, y, classes, info
