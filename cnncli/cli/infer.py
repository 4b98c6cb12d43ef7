"""cnncli infer: predict the classes of image files or folders of images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cnncli.cli.common import (
    DEFAULT_MODEL,
    DebugOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    command,
)

HELP = """Predict the classes of pictures with a trained model.

Each picture is read whatever its size and mode (grey, RGB, RGBA, palette, 16-bit,
CMYK), then framed like the training data: for a digits model the digit is found,
inverted to light-on-dark if needed, scaled into a 20x20 box and centred by its
centre of mass in 28x28 (as MNIST was made); other models get the picture resized.
A file that cannot be read is reported by name and the others are still answered
(exit status 2 then).

Examples:

  cnncli infer my-digit.png

  cnncli infer photos/ --model runs/quickstart-1 --top-k 5 --json
"""
DIGIT_CLASSES = [str(i) for i in range(10)]


# ---- helpers shared with visualize-filters -------------------------------------------------


def decide_framing(meta: dict, override: str | None = None) -> str:
    """How a picture becomes this model's input: ``digit`` or ``resize``.

    --framing wins; then the checkpoint (``data.framing`` in its config, or ``framing`` in its
    metadata); else ``digit`` for a 1x28x28 model of the ten digits, ``resize`` otherwise.
    """
    if override:
        return override
    cfg = meta.get("config_obj")
    stored = getattr(getattr(cfg, "data", None), "framing", None)
    if not stored:
        stored = ((meta.get("config") or {}).get("data") or {}).get("framing")
    if not stored:
        stored = meta.get("framing")
    if stored in ("digit", "resize"):
        return stored
    shape = tuple(cfg.model.input) if cfg is not None else None
    classes = [str(c) for c in meta.get("classes") or []]
    if shape == (1, 28, 28) and classes == DIGIT_CLASSES:
        return "digit"
    return "resize"


def prepare_image(path: str, shape: tuple[int, int, int], framing: str):
    """Read one picture and bring it to the model input: ((C, H, W) float32 in [0, 1], info)."""
    import numpy as np

    from cnncli.io.images import frame_digit, frame_resize, load_image

    img, found = load_image(path)
    info: dict[str, Any] = {"framing": framing}
    info["image"] = {key: found[key] for key in ("format", "mode", "size", "orientation",
                                                 "animated", "alpha") if key in found}
    c, h, w = shape
    if framing == "digit":
        out = h if h == w else 28
        box = max(1, round(out * 20 / 28))
        framed, how = frame_digit(img, out=out, box=box)
        info.update(how)
        if framed.shape != (h, w) or c != 1:
            x = frame_resize(framed, shape)
            info["then_resized_to"] = [c, h, w]
        else:
            x = framed[None]
    else:
        x = frame_resize(img, shape)
        channels = 1 if img.ndim == 2 else img.shape[2]
        info.update(channels=f"{channels} -> {c}", resized_to=[h, w])
    return np.ascontiguousarray(x, dtype=np.float32), info


def expand_inputs(args: list[str]) -> list[tuple[str, str | None]]:
    """Files as given and the images of folders (non-recursive, image extensions only).

    Returns (path, error message or None) in order; a folder's files are sorted by name.
    """
    from cnncli.io.images import IMAGE_EXTENSIONS

    out: list[tuple[str, str | None]] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            try:
                names = sorted(
                    e.name for e in os.scandir(p)
                    if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
                )
            except OSError as e:
                out.append((arg, f"cannot list folder: {e.strerror}"))
                continue
            if not names:
                out.append((arg, "folder holds no PNG, JPEG, BMP, GIF, TIFF or WebP files"))
            out.extend((str(p / n), None) for n in names)
        elif p.exists():
            out.append((arg, None))
        else:
            out.append((arg, "no such file or folder"))
    return out


def reuse_freed_memory() -> bool:
    """Ask the C library to keep freed blocks (up to 64 MiB) for reuse instead of unmapping them.

    Each picture's decoded and converted buffers (a few MB for a 640x480 photo) are freed and
    allocated again for the next one; by default glibc returns such blocks to the system, so
    every picture pays for thousands of fresh page faults. Measured here on 640x480 JPEGs:
    about 2,800 faults and 15 ms per picture by default, 8 faults and 7 ms with this. Forked
    workers inherit the setting. Returns False where it cannot be applied (not glibc).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> parameter numbers
    ok = mallopt(m_mmap_threshold, 64 << 20) == 1
    return bool(ok and mallopt(m_trim_threshold, 256 << 20) == 1)


def _prepare_one(path: str, shape, framing: str):
    """prepare_image as (array or None, info or None, error message or None); never raises
    for a bad picture (one bad file must not stop the others)."""
    from cnncli.errors import CnncliError

    try:
        x, info = prepare_image(path, shape, framing)
        return x, info, None
    except CnncliError as e:
        return None, None, e.message
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - reported for this file, the others go on
        return None, None, f"cannot read image ({type(e).__name__}: {e})"


def _prepare_list(paths: list[str], shape, framing: str) -> list:
    return [_prepare_one(p, shape, framing) for p in paths]


class Preparer:
    """Reads and frames pictures, on worker processes when there are many.

    Decoding and framing a picture is a few milliseconds of mostly small NumPy steps, which
    threads cannot overlap (the GIL), so large jobs are spread over forked processes, in
    chunks of files to keep the per-picture overhead small. Use as a context manager.
    """

    MIN_PARALLEL = 64
    CHUNK = 32

    def __init__(self, shape, framing: str, workers: int | None = None) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.framing = framing
        if workers is None:
            try:
                workers = len(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                workers = os.cpu_count() or 1
        self.workers = max(1, min(int(workers), 8))
        self._pool = None

    def __enter__(self) -> Preparer:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _get_pool(self):
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            if "fork" not in mp.get_all_start_methods():
                return None
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"))
        return self._pool

    def __call__(self, paths: list[str]) -> list:
        """[(array or None, info or None, error or None)] in the order of ``paths``."""
        if self.workers > 1 and len(paths) >= self.MIN_PARALLEL:
            try:
                pool = self._get_pool()
                if pool is not None:
                    size = max(1, min(self.CHUNK, -(-len(paths) // self.workers)))
                    parts = [paths[i : i + size] for i in range(0, len(paths), size)]
                    futures = [pool.submit(_prepare_list, part, self.shape, self.framing)
                               for part in parts]
                    out = []
                    for f in futures:
                        out.extend(f.result())
                    return out
            except (OSError, RuntimeError) as e:  # no processes here: do it in this one
                from concurrent.futures.process import BrokenProcessPool

                if not isinstance(e, (OSError, BrokenProcessPool)):
                    raise
                self._pool = None
        return _prepare_list(paths, self.shape, self.framing)


def classify(
    net, meta: dict, paths: list[str], *, framing: str, top_k: int = 3, batch: int = 256,
    on_error=None,
) -> list[dict]:
    """Predictions for image files, one entry per path (an ``error`` entry for a bad file).

    Pictures are prepared in chunks (memory stays bounded), normalised with the checkpoint's
    statistics and classified ``batch`` at a time. ``on_error(path, message)`` is called for
    each file that cannot be read.
    """
    spec = meta["config_obj"].model
    shape = tuple(int(d) for d in spec.input)
    classes = [str(c) for c in meta.get("classes") or range(spec.outputs)]
    k = max(1, min(top_k, len(classes)))
    results: list[dict] = []
    chunk = max(batch, 1024)
    if len(paths) > 1:
        reuse_freed_memory()
    with Preparer(shape, framing) as prepare:
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            results.extend(_answer(net, meta, part, prepare(part), classes, k, batch, on_error))
    return results


def _answer(net, meta, part, prepared, classes, k, batch, on_error) -> list[dict]:
    """Classify one chunk of prepared pictures; entries in the order of ``part``."""
    import numpy as np

    from cnncli.io.datasets import apply_normalization
    from cnncli.nn.losses import softmax

    good = [i for i, (x, _, _) in enumerate(prepared) if x is not None]
    row_of = {i: r for r, i in enumerate(good)}
    if good:
        x = np.stack([prepared[i][0] for i in good])
        norm = meta.get("normalization")
        if norm:
            x = apply_normalization(x, norm)
        x = np.ascontiguousarray(x, dtype=net.dtype)
        logits = np.concatenate(
            [net.forward(x[s : s + batch], train=False) for s in range(0, len(x), batch)]
        )
        probs = np.asarray(softmax(logits), dtype=np.float64)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results: list[dict] = []
    for i, path in enumerate(part):
        _, info, err = prepared[i]
        if err is not None:
            if on_error is not None:
                on_error(path, err)
            results.append({"file": path, "error": err})
            continue
        r = row_of[i]
        top = [{"class": classes[j], "probability": float(probs[r, j])} for j in order[r]]
        results.append({
            "file": path,
            "class": top[0]["class"],
            "probability": top[0]["probability"],
            "top": top,
            "preprocess": info,
        })
    return results


def _render(results: list[dict], top_k: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from cnncli.cli.common import out_console

    table = Table(show_edge=False, header_style="bold")
    table.add_column("file", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    if top_k > 1:
        table.add_column(f"top {top_k}")
    for r in results:
        if "error" in r:
            if top_k > 1:
                table.add_row(r["file"], "[red]error[/red]", "", escape(r["error"]))
            else:
                table.add_row(r["file"], f"[red]error:[/red] {escape(r['error'])}", "")
            continue
        row = [r["file"], r["class"], f"{r['probability']:.3f}"]
        if top_k > 1:
            row.append("  ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
        table.add_row(*row)
    out_console().print(table)


def register(app: typer.Typer) -> None:
    @app.command(
        "infer", help=HELP,
        short_help="Predict the classes of pictures with a trained model.",
    )
    @command
    def infer(
        images: Annotated[
            list[str],
            typer.Argument(help="Image files (PNG, JPEG, BMP, GIF, TIFF, WebP) or folders of "
                           "them (not searched recursively).", show_default=False),
        ],
        model: ModelOpt = DEFAULT_MODEL,
        top_k: Annotated[int, typer.Option("--top-k", "-k", min=1,
                                           help="How many classes to list per image.")] = 3,
        framing: Annotated[
            str | None,
            typer.Option("--framing", help="digit: find the digit and frame it as MNIST does; "
                         "resize: stretch the picture to the input size. Default: what the "
                         "model was trained with."),
        ] = None,
        json_out: JsonOpt = False,
        batch: Annotated[int, typer.Option("--batch", min=1,
                                           help="Images per forward pass.")] = 256,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        import sys

        from cnncli.cli.common import info, print_json
        from cnncli.errors import DataError, UsageError
        from cnncli.io.checkpoint import load_model

        if framing is not None and framing not in ("digit", "resize"):
            raise UsageError(f"--framing must be digit or resize, got '{framing}'")
        entries = expand_inputs(images)
        net, meta = load_model(model)
        how = decide_framing(meta, framing)
        todo = [p for p, err in entries if err is None]
        failed = 0

        def on_error(path: str, err: str) -> None:
            nonlocal failed
            failed += 1
            sys.stderr.write(f"error: {path}: {err}\n")

        results_by_path = {}
        if todo:
            for r in classify(net, meta, todo, framing=how, top_k=top_k, batch=batch,
                              on_error=on_error):
                results_by_path.setdefault(r["file"], []).append(r)
        results = []
        for path, err in entries:
            if err is not None:
                on_error(path, err)
                results.append({"file": path, "error": err})
            else:
                results.append(results_by_path[path].pop(0))
        if json_out:
            print_json({"model": meta["file"], "framing": how, "predictions": results})
        else:
            _render(results, top_k)
            answered = len(results) - failed
            info(f"{answered} image(s) classified with {meta['file']} (framing: {how})", quiet)
        if failed:
            raise DataError(f"{failed} of {len(results)} image(s) could not be read")
