"""Security invariants (RELIABILITY.md sections 2.3 and 4.5).

- The package source never calls what can run code from a file: pickle, torch.load, an unsafe
  YAML loader, ``allow_pickle=True``, the ``eval``/``exec`` builtins, ``ImageMath``; and never
  switches Pillow's limits off (``MAX_IMAGE_PIXELS = None``, ``LOAD_TRUNCATED_IMAGES = True``).
  The scanner reads the syntax tree (comments and strings cannot fool it either way) and is
  itself tested on planted code, so the scan can fail.
- Pillow's pixel limit is cnncli's after reading pictures; truncated pictures are refused.
- Files cnncli writes get the usual mode (0o666 minus the umask), whatever the library does.
- Payloads that would create a marker file if executed (YAML tags, pickles in checkpoints and
  .npz files) never run.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle  # noqa: S403 - only to build hostile files; cnncli itself must never import it
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error
from PIL import Image, ImageFile
from test_reliability_data import good_npz, png_bytes, tiny_images, write_config

PACKAGE = Path(__file__).resolve().parent.parent / "cnncli"

# ---- the scanner ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run in a scratch folder: whatever a command writes beside itself lands there."""
    monkeypatch.chdir(tmp_path)


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
               "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}


def _dotted(node: ast.AST) -> str:
    """'a.b.c' for Name/Attribute chains, '' otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan_source(text: str, filename: str = "<source>") -> list[str]:
    """Every forbidden construct in ``text`` as 'file:line: what' (a syntax error is one too)."""
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as e:
        return [f"{filename}:{e.lineno}: cannot be parsed, so cannot be checked"]
    found: list[str] = []

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    # names bound to the yaml module and to pickle-like modules in this file
    yaml_names = {"yaml"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in PICKLE_MODULES:
                    hit(node, f"import {a.name}")
                if a.name == "yaml":
                    yaml_names.add(a.asname or "yaml")
                if a.name.startswith("PIL.ImageMath"):
                    hit(node, "ImageMath")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod.split(".")[0] in PICKLE_MODULES:
                hit(node, f"from {mod} import ...")
            for a in node.names:
                if a.name == "ImageMath" or mod.endswith("ImageMath"):
                    hit(node, "ImageMath")
                if mod == "yaml" and a.name in UNSAFE_YAML | {"load", "load_all"}:
                    hit(node, f"from yaml import {a.name}")
                if mod == "torch" and a.name == "load":
                    hit(node, "from torch import load")
        elif isinstance(node, ast.Attribute):
            if node.attr == "ImageMath":
                hit(node, "ImageMath")
            base = _dotted(node.value)
            if base in yaml_names and node.attr in UNSAFE_YAML:
                hit(node, f"{base}.{node.attr}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                name = t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", "")
                if name == "MAX_IMAGE_PIXELS" and _const(node.value, None):
                    hit(node, "MAX_IMAGE_PIXELS = None")
                if name == "LOAD_TRUNCATED_IMAGES" and not _const(node.value, False):
                    hit(node, "LOAD_TRUNCATED_IMAGES set to something other than False")
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        last = func.rsplit(".", 1)[-1]
        if func in ("eval", "exec", "builtins.eval", "builtins.exec"):
            hit(node, f"{func}() call")
        if func in ("__import__", "importlib.import_module") and node.args and isinstance(
                node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in (
                PICKLE_MODULES | {"torch"}):
            hit(node, f"{func}({node.args[0].value!r})")
        if func == "torch.load" or (last in ("load", "loads", "Unpickler")
                                    and func.split(".")[0] in PICKLE_MODULES):
            hit(node, f"{func}() call")
        if func.split(".")[0] in yaml_names and last in ("load", "load_all"):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            name = _dotted(loader).rsplit(".", 1)[-1] if loader is not None else ""
            if name not in SAFE_YAML_LOADERS:
                hit(node, f"{func}() without a safe Loader")
        if func in ("setattr",) and len(node.args) == 3 and isinstance(
                node.args[1], ast.Constant) and node.args[1].value == "MAX_IMAGE_PIXELS" and (
                _const(node.args[2], None)):
            hit(node, "setattr(..., 'MAX_IMAGE_PIXELS', None)")
        for k in node.keywords:
            if k.arg == "allow_pickle" and not _const(k.value, False):
                hit(node, "allow_pickle not False")
    return found


PLANTED = {
    "import pickle": "import pickle\n",
    "import cPickle as p": "import cPickle as p\n",
    "from pickle import loads": "from pickle import loads\n",
    "pickle.load": "import io\nobj = pickle.load(io.BytesIO(b''))\n",
    "torch.load": "import torch\nm = torch.load('model.pt')\n",
    "from torch import load": "from torch import load\n",
    "yaml.load without Loader": "import yaml\nyaml.load(text)\n",
    "yaml.load unsafe Loader": "import yaml\nyaml.load(text, Loader=yaml.Loader)\n",
    "yaml.load positional FullLoader": "import yaml\nyaml.load(text, yaml.FullLoader)\n",
    "aliased yaml": "import yaml as y\ny.load(text)\n",
    "yaml.unsafe_load": "import yaml\nyaml.unsafe_load(text)\n",
    "yaml.full_load": "import yaml\nyaml.full_load(text)\n",
    "allow_pickle=True": "import numpy as np\nnp.load('x.npz', allow_pickle=True)\n",
    "allow_pickle=flag": "np.load(f, allow_pickle=flag)\n",
    "eval builtin": "x = eval(user_text)\n",
    "exec builtin": "exec(code, {})\n",
    "builtins.eval": "import builtins\nbuiltins.eval('1')\n",
    "ImageMath import": "from PIL import ImageMath\n",
    "ImageMath attribute": "import PIL\nPIL.ImageMath.lambda_eval('a', a=1)\n",
    "MAX_IMAGE_PIXELS = None": "from PIL import Image\nImage.MAX_IMAGE_PIXELS = None\n",
    "setattr MAX_IMAGE_PIXELS": "setattr(Image, 'MAX_IMAGE_PIXELS', None)\n",
    "LOAD_TRUNCATED_IMAGES": "from PIL import ImageFile\nImageFile.LOAD_TRUNCATED_IMAGES = True\n",
    "__import__ pickle": "m = __import__('pickle')\n",
    "import_module pickle": "import importlib\nm = importlib.import_module('pickle')\n",
    "syntax error": "def broken(:\n",
}

BENIGN = {
    "safe yaml": "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)\nyaml.safe_load(text)\n",
    "strict loader class": "import yaml\nclass L(yaml.SafeLoader): pass\nL(text).get_data()\n",
    "no pickle": "import numpy as np\nnp.load(f, allow_pickle=False)\n",
    "method named eval": "net.eval()\nmodel.exec_step()\n",
    "words in strings": "msg = 'cnncli never loads pickles; torch.load and eval( are refused'\n",
    "words in comments": "# import pickle\n# Image.MAX_IMAGE_PIXELS = None\nx = 1\n",
    "pixel limit set": "from PIL import Image\nImage.MAX_IMAGE_PIXELS = 64_000_000\n",
    "truncated off": "ImageFile.LOAD_TRUNCATED_IMAGES = False\n",
    "safetensors load": "from safetensors.numpy import load\nt = load(raw)\n",
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_scanner_finds_each_planted_call(name):
    found = scan_source(PLANTED[name], "planted.py")
    assert found, f"the scanner missed: {name}"
    assert all(f.startswith("planted.py:") for f in found)


@pytest.mark.parametrize("name", list(BENIGN))
def test_scanner_leaves_safe_code_alone(name):
    assert scan_source(BENIGN[name], "benign.py") == []


def test_package_source_has_no_forbidden_calls():
    files = sorted(PACKAGE.rglob("*.py"))
    names = {p.relative_to(PACKAGE).as_posix() for p in files}
    # the scan covers the whole package, the modules that read files included
    assert len(files) >= 30
    assert {"io/checkpoint.py", "io/npz.py", "io/images.py", "spec/yamlio.py",
            "cli/common.py"} <= names
    found = []
    for p in files:
        found += scan_source(p.read_text(encoding="utf-8"), str(p.relative_to(PACKAGE.parent)))
    assert found == []


def test_a_planted_file_in_the_package_would_be_found(tmp_path):
    """The package scan fails when the package holds a forbidden call (run on a copy)."""
    import shutil

    copy = tmp_path / "cnncli"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "io" / "sneaky.py").write_text("import yaml\n\ndef f(t):\n    return yaml.load(t)\n")
    found = [f for p in sorted(copy.rglob("*.py")) for f in scan_source(p.read_text(), str(p))]
    assert len(found) == 1 and "sneaky.py:4" in found[0]


# ---- Pillow's limits -----------------------------------------------------------------------------


def test_pixel_limit_is_ours_after_reading_pictures(tmp_path):
    from pngs import png_header_only

    from cnncli.errors import DataError
    from cnncli.io import images

    assert images.MAX_IMAGE_PIXELS == 64_000_000
    assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(tiny_images(1)[0][0]))
    images.load_image(good)
    assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(9000, 9000))          # 81 Mpx: Pillow would only warn
    with pytest.raises(DataError, match="image too large"):
        images.load_image(bomb)
    assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_limit_holds_even_if_another_library_switched_it_off(tmp_path, monkeypatch):
    from pngs import png_header_only

    from cnncli.errors import DataError
    from cnncli.io import images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(DataError, match="image too large"):
        images.load_image(bomb)


def test_truncated_picture_is_refused(tmp_path):
    from cnncli.errors import DataError
    from cnncli.io import images

    rng = np.random.default_rng(0)
    data = png_bytes(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match="cut.png"):
        images.load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ---- file modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_usual_mode(tmp_path, mask):
    from cnncli.engine.network import build
    from cnncli.io.atomic import atomic_write_bytes, atomic_write_text
    from cnncli.io.checkpoint import save_model, write_checkpoint
    from cnncli.spec import load_config

    cfg = load_config(write_config(tmp_path, tmp_path / "train.npz"))
    net = build(cfg, seed=0)
    old = os.umask(mask)
    try:
        save_model(net, tmp_path / "model.safetensors", {"config": cfg.resolved})
        write_checkpoint(tmp_path / "raw.safetensors", net.params, {"config": {}})
        atomic_write_bytes(tmp_path / "b.bin", b"123")
        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "raw.safetensors", "b.bin", "t.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_command_outputs_get_the_usual_mode(cli, tmp_path):
    old = os.umask(0o027)
    try:
        spec = write_config(tmp_path, good_npz(tmp_path / "train.npz"))
        run = tmp_path / "run"
        assert cli("train", spec, "--out", run, "--quiet").exit_code == 0
        res = cli("visualize-filters", "--model", run, "-o", tmp_path / "f.png")
        assert res.exit_code == 0, res.output
        res = cli("eval", "--model", run, "--data", tmp_path / "train.npz")
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    written = [p for p in run.iterdir() if p.is_file()] + [tmp_path / "f.png"]
    assert {p.name for p in written} >= {"best.safetensors", "last.safetensors", "config.yaml",
                                          "metrics.csv", "curves.png", "confusion.png", "f.png"}
    for p in written:
        assert p.stat().st_mode & 0o777 == 0o640, p.name


# ---- payloads that would leave a marker ----------------------------------------------------------


YAML_PAYLOADS = [
    '!!python/object/apply:os.system ["touch {m}"]',
    '!!python/object/apply:subprocess.call [["touch", "{m}"]]',
    '!!python/object/new:os.system ["touch {m}"]',
    '!!python/name:os.system',
    '!!python/module:os',
]


@pytest.mark.parametrize("payload", YAML_PAYLOADS)
def test_s18_yaml_tags_never_run(cli, tmp_path, payload):
    marker = tmp_path / "PWNED"
    value = payload.format(m=marker)
    spec = write_config(tmp_path, tmp_path / "train.npz")
    text = spec.read_text().replace("name: tiny", f"name: {value}")
    spec.write_text(text)
    for args in (("summary", spec), ("train", spec, "--out", tmp_path / "run"),
                 ("gradcheck", spec)):
        assert_clean_error(cli(*args), 2, "spec.yaml:2:9", "YAML tags are not allowed")
    top = tmp_path / "top.yaml"
    top.write_text(value + "\n")
    assert_clean_error(cli("summary", top), 2, "top.yaml")
    plain = write_config(tmp_path / "plain", tmp_path / "train.npz")
    assert_clean_error(cli("summary", plain, "--set", f"model.name={value}"), 2, "model.name")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


class _Marker:
    """Unpickling this creates the marker file (what a hostile pickle would do)."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def _marker_pickle(marker: Path) -> bytes:
    m = _Marker()
    m.path = str(marker)
    return pickle.dumps(m, protocol=4)


def test_pickled_npz_members_never_run(cli, tmp_path):
    marker = tmp_path / "PWNED"
    payload = _marker_pickle(marker)
    objs = np.empty(3, dtype=object)
    objs[:] = [1, 2, 3]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, objs, allow_pickle=True)
    # swap the harmless pickled list for the payload, keeping a valid .npy header
    raw = buf.getvalue()
    header_end = raw.index(b"\n") + 1
    x, y = tiny_images(3)
    y_buf = io.BytesIO()
    np.lib.format.write_array(y_buf, y)
    member = raw[:header_end] + payload
    npz = tmp_path / "hostile.npz"
    with zipfile.ZipFile(npz, "w") as zf:
        zf.writestr("x.npy", member)
        zf.writestr("y.npy", y_buf.getvalue())
    renamed = tmp_path / "renamed.npz"
    renamed.write_bytes(payload)
    model_dir = tmp_path / "m"
    spec = write_config(model_dir, good_npz(model_dir / "train.npz"))
    assert cli("train", spec, "--out", model_dir / "run", "--quiet").exit_code == 0
    for data in (npz, renamed):
        spec = write_config(tmp_path / f"cfg-{data.stem}", data)
        assert_clean_error(cli("train", spec, "--out", tmp_path / "run"), 2, data.name,
                           "never loads pickles")
        assert_clean_error(cli("eval", "--model", model_dir / "run", "--data", data), 2,
                           data.name, "never loads pickles")
    assert not marker.exists()


def test_pickle_as_checkpoint_never_runs(cli, tmp_path):
    marker = tmp_path / "PWNED"
    pt = tmp_path / "model.pt"
    pt.write_bytes(_marker_pickle(marker))
    pic = tmp_path / "p.png"
    pic.write_bytes(png_bytes(tiny_images(1)[0][0]))
    for args in (("eval", "--model", pt), ("infer", pic, "--model", pt),
                 ("train", "--resume", pt), ("export", "--model", pt),
                 ("inspect", "--model", pt), ("visualize-filters", "--model", pt)):
        assert_clean_error(cli(*args), 2, "model.pt", "not a safetensors file")
    # a pickle in the checkpoint's metadata is only text to cnncli
    from safetensors.numpy import save

    from cnncli.io.checkpoint import MAGIC_KEY, read_checkpoint

    doc = {"format_version": 1, "config": {"payload": _marker_pickle(marker).hex()}}
    raw = save({"w": np.zeros(2, np.float32)}, metadata={MAGIC_KEY: json.dumps(doc)})
    f = tmp_path / "meta.safetensors"
    f.write_bytes(raw)
    read_checkpoint(f)
    assert not marker.exists()
