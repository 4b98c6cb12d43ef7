"""How well a digits model reads pictures that are not MNIST, against a PyTorch LeNet-5.

    python bench/pictures.py                         # train the default model, then measure
    python bench/pictures.py --model runs/quickstart-1 --count 300
    python bench/pictures.py --seeds 0,1,2           # three training runs of each model
    python bench/pictures.py --misses /tmp/misses    # also save what the misses looked like
    python bench/pictures.py --effects               # the same pictures with shadows, ruled paper
    python bench/pictures.py --set data.train=digits # train on the handwritten digits only

Steps:

1. ``tools/make_sample.py heldout`` draws N pictures (half hand-drawn pen strokes, half
   typeset in the machine's fonts; any size and position, dark ink on light paper) into a
   temporary folder; the true label is the first character of each file name.
2. ``cnncli train`` (the default config, into a temporary folder) or ``--model RUN``; then
   ``cnncli infer FOLDER --json`` with the model's own framing (``digit``: the digit is found
   and framed as MNIST was, LeCun et al. 1998) and with ``--framing resize`` (the picture is
   stretched to 28x28), both as subprocesses.
3. When PyTorch is importable: a LeNet-5 (LeCun et al. 1998, in its ReLU and max-pooling form)
   trained in its own process on the same data with the same recipe as the cnncli run (its
   config: validation split, standardisation, augmentation, epochs, batch size, optimizer,
   schedule, weight decay; the best epoch by validation accuracy is kept, as cnncli keeps
   ``best.safetensors``), then scored on the same pictures framed by
   ``cnncli.cli.infer.prepare_image``.
4. A table: test-split accuracy, pictures read with digit framing and with resize framing;
   accuracy by style (hand-drawn / typeset) and by digit; the most frequent confusions.

Accuracy on these pictures moves by a few points from one training seed to the next (the
test split by a fraction of one), so compare models over several ``--seeds``. The default
model trains on the bundled MNIST digits and the bundled typeset digits (drawn in the DejaVu
Serif fonts only); pictures typeset in the other fonts are reported apart.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAKE_SAMPLE = ROOT / "tools" / "make_sample.py"
STYLE_HAND = "hand-drawn"
STYLE_TYPE = "typeset"


# ---- the held-out pictures ----------------------------------------------------------------


def _make_sample_module():
    """tools/make_sample.py as a module, or None when it cannot be loaded."""
    spec = importlib.util.spec_from_file_location("make_sample", MAKE_SAMPLE)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _style(font) -> str:
    if font == "strokes":
        return STYLE_HAND
    return f"{STYLE_TYPE}: {Path(font).stem if font else 'Pillow default'}"


def make_pictures(out: Path, count: int, seed: int, effects: bool = False) -> dict[str, str]:
    """Draw ``count`` pictures with ``tools/make_sample.py heldout``; {file name: style}.

    The generator runs in this process so that each picture's style (pen strokes, or the
    font it was typeset in) can be noted as it is saved; the pictures are exactly those of
    ``python tools/make_sample.py heldout --out OUT --count COUNT --seed SEED [--effects]``.
    If the generator's internals are not as expected, it runs as that command instead and
    the styles are unknown ({}).
    """
    argv = ["heldout", "--out", str(out), "--count", str(count), "--seed", str(seed)]
    argv += ["--effects"] if effects else []
    module = _make_sample_module()
    draw, save = getattr(module, "_picture", None), getattr(module, "_save", None)
    if callable(draw) and callable(save):
        styles: dict[str, str] = {}
        drawn: list[str] = []

        def noted_draw(d, rng, font):
            drawn.append(_style(font))
            return draw(d, rng, font)

        def noted_save(im, path):
            styles[Path(path).name] = drawn.pop()
            return save(im, path)

        module._picture, module._save = noted_draw, noted_save
        with contextlib.redirect_stdout(sys.stderr):
            module.main(argv)
        return styles
    subprocess.run([sys.executable, str(MAKE_SAMPLE), *argv], check=True,
                   stdout=subprocess.DEVNULL)
    return {}


def photo_effect(name: str) -> str:
    """The photo effect in a picture's name (``3_k-shadow.png``), or "none"."""
    stem = Path(name).stem
    return stem.split("-", 1)[1] if "-" in stem else "none"


def typeset_training_fonts(run: str) -> list[str]:
    """The fonts of the typeset digits a run trained on ([] when it used none of them)."""
    from cnncli.io.checkpoint import load_model

    train = load_model(run)[1]["config_obj"].data.train
    refs = [train] if isinstance(train, str) else list(train or [])
    if "typeset" not in refs:
        return []
    module = _make_sample_module()
    family = getattr(module, "TYPESET_TRAIN_FAMILY", None)
    if module is None or family is None:
        return []
    return sorted(f.stem for f in module._fonts() if f.stem.startswith(family))


def picture_files(folder: Path) -> list[Path]:
    """The pictures of ``folder`` whose names start with their digit, sorted by name."""
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in exts and p.name[:1].isdigit())


def true_label(path: str | Path) -> int:
    return int(Path(path).name[0])


# ---- cnncli, as a user runs it ------------------------------------------------------------


def cnncli(*args: str) -> subprocess.CompletedProcess:
    """Run ``cnncli ARGS`` with this interpreter; stdout captured, stderr passed through."""
    cmd = [sys.executable, "-m", "cnncli", *args]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"`cnncli {' '.join(args)}` exited with status {done.returncode}")
    return done


def train_default(out: Path, overrides: list[str]) -> dict:
    sets = [a for kv in overrides for a in ("--set", kv)]
    print(f"training the default model: cnncli train --out {out} {' '.join(sets)}".rstrip(),
          file=sys.stderr, flush=True)
    return json.loads(cnncli("train", "--out", str(out), "--json", *sets).stdout)


def infer(model: str, folder: Path, framing: str | None) -> tuple[str, dict[str, int]]:
    """cnncli infer FOLDER --json: (framing used, {file name: predicted digit})."""
    extra = ["--framing", framing] if framing else []
    doc = json.loads(cnncli("infer", str(folder), "--json", "--quiet", "--top-k", "1",
                            "--model", model, *extra).stdout)
    preds = {}
    for r in doc["predictions"]:
        if "error" in r:
            raise SystemExit(f"cnncli infer could not read {r['file']}: {r['error']}")
        preds[Path(r["file"]).name] = int(r["class"])
    return doc["framing"], preds


def test_split_accuracy(model: str) -> float:
    """The model's accuracy on the test split of its training data (no files written)."""
    from cnncli.io.checkpoint import load_model
    from cnncli.io.datasets import apply_normalization, load_dataset

    net, meta = load_model(model)
    cfg = meta["config_obj"]
    ds = load_dataset(cfg.data.test or cfg.data.train, "test")
    right = 0
    for s in range(0, len(ds), 500):
        x = ds.batch_float(slice(s, s + 500), net.dtype)
        if meta.get("normalization"):
            x = apply_normalization(x, meta["normalization"])
        right += int((net.forward(x, train=False).argmax(axis=1) == ds.y[s:s + 500]).sum())
    return right / len(ds)


# ---- PyTorch LeNet-5, in its own process ----------------------------------------------------


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def run_torch(run: str, files: list[Path], work: Path) -> dict | None:
    """Train and score the PyTorch LeNet-5 in a subprocess; its result, or None on failure."""
    job = work / "torch-job.json"
    out = work / "torch-result.json"
    job.write_text(json.dumps({"run": run, "files": [str(f) for f in files], "out": str(out)}))
    print("training LeNet-5 in PyTorch with the same data and recipe", file=sys.stderr,
          flush=True)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--torch-worker",
                           str(job)])
    if done.returncode != 0 or not out.is_file():
        print(f"the PyTorch run failed (status {done.returncode}); its column is left out",
              file=sys.stderr)
        return None
    return json.loads(out.read_text())


def lenet5():
    """LeNet-5 with ReLU and max pooling: conv 6@5x5 pad 2, pool, conv 16@5x5, pool,
    fc 120, fc 84, fc 10 (61,706 parameters)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def torch_worker(job_file: str) -> None:
    """Train LeNet-5 with the recipe of the cnncli run in the job; write the result JSON."""
    import torch
    from torch import nn

    from cnncli.cli.infer import prepare_image
    from cnncli.io.checkpoint import load_model
    from cnncli.io.datasets import (
        apply_normalization,
        compute_normalization,
        load_dataset,
        split_validation,
    )
    from cnncli.train.augment import augment_batch
    from cnncli.train.schedules import lr_at

    job = json.loads(Path(job_file).read_text())
    _, meta = load_model(job["run"])
    cfg = meta["config_obj"]
    data, tr = cfg.data, cfg.train
    seed = int(tr.seed)
    torch.manual_seed(seed)
    full = load_dataset(data.train or "digits", "train")
    train, val = split_validation(full, data.val_split, seed)
    norm = compute_normalization(train, data.normalize)
    test = load_dataset(data.test or data.train or "digits", "test")

    def inputs(ds, idx):
        return torch.from_numpy(apply_normalization(ds.batch_float(idx, np.float32), norm))

    net = lenet5()
    decay = [p for n, p in net.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    groups = [{"params": decay, "weight_decay": tr.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    o = tr.optimizer
    if o.type == "adam":
        opt = torch.optim.Adam(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    else:
        opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    loss_fn = nn.CrossEntropyLoss()
    n, bs, epochs = len(train), max(1, int(tr.batch_size)), int(tr.epochs)
    steps = -(-n // bs)
    y_train = torch.from_numpy(train.y)

    def score(ds, batch=500):
        net.eval()
        right, loss = 0, 0.0
        with torch.no_grad():
            for s in range(0, len(ds), batch):
                logits = net(inputs(ds, slice(s, s + batch)))
                y = torch.from_numpy(ds.y[s:s + batch])
                loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                right += int((logits.argmax(1) == y).sum())
        return right / len(ds), loss / len(ds)

    best = (-1.0, 0.0, 0, None)         # val accuracy, -val loss, epoch, state
    started = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for step in range(steps):
            idx = order[step * bs:(step + 1) * bs]
            x = train.batch_float(idx, np.float32)
            x = augment_batch(x, data.augment, np.random.default_rng([seed, epoch, step]))
            x = torch.from_numpy(apply_normalization(x, norm))
            for g in opt.param_groups:
                g["lr"] = lr_at(tr.schedule, o.lr, epoch, step, steps, epochs)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y_train[idx])
            loss.backward()
            opt.step()
        acc, vloss = score(val) if val is not None else (0.0, 0.0)
        if (acc, -vloss) > best[:2]:
            best = (acc, -vloss, epoch + 1, {k: v.clone() for k, v in net.state_dict().items()})
        print(f"  LeNet-5 epoch {epoch + 1}/{epochs}: val acc {acc:.4f} loss {vloss:.4f}",
              file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    net.load_state_dict(best[3])
    result = {"model": "PyTorch LeNet-5", "params": sum(p.numel() for p in net.parameters()),
              "epochs": epochs, "best_epoch": best[2], "train_seconds": round(seconds, 1),
              "test_acc": score(test)[0], "torch": torch.__version__}
    net.eval()
    for framing in ("digit", "resize"):
        x = np.stack([prepare_image(f, (1, 28, 28), framing)[0] for f in job["files"]])
        with torch.no_grad():
            pred = net(torch.from_numpy(apply_normalization(x, norm)))
        result[framing] = {Path(f).name: int(p) for f, p in zip(job["files"], pred.argmax(1),
                                                                 strict=True)}
    Path(job["out"]).write_text(json.dumps(result))


# ---- the report ---------------------------------------------------------------------------


def accuracy(preds: dict[str, int], names=None) -> float:
    """The fraction of ``preds`` (file name -> predicted digit) that are right, over ``names``."""
    names = list(preds) if names is None else [n for n in names if n in preds]
    if not names:
        return float("nan")
    return sum(preds[n] == true_label(n) for n in names) / len(names)


def mean_accuracy(runs: list[dict], key: str, names=None) -> float:
    return float(np.mean([accuracy(r[key], names) for r in runs]))


def confusions(runs: list[dict], top: int) -> list[tuple[int, int, int, list[str]]]:
    """The most frequent (true, predicted, count over the runs, files) of digit-framing misses."""
    misses: dict[tuple[int, int], list[str]] = collections.defaultdict(list)
    for r in runs:
        for name, p in sorted(r["digit"].items()):
            if p != true_label(name):
                misses[(true_label(name), p)].append(name)
    ranked = sorted(misses.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [(t, p, len(files), sorted(set(files))) for (t, p), files in ranked[:top]]


def report(models: dict[str, list[dict]], styles: dict[str, str], count: int, top: int,
           data: str, trained_fonts: list[str] = ()) -> None:
    """Print the tables; ``models`` maps a model's name to its runs (one per training seed).

    ``data``: the training data, as named in the config. ``trained_fonts``: fonts that
    typeset training digits were drawn in (a column then gives the accuracy on pictures
    typeset in other fonts)."""
    width = max(len(n) for n in models) + 12

    def fmt(v: float) -> str:
        return "  -  " if v != v else f"{v:.3f}"

    print()
    print(f"Reading {count} held-out digit pictures (not MNIST) with models trained on {data}")
    print()
    head = (f"{'model':{width}s} {'test split':>10s} {'pictures, digit':>16s} "
            f"{'pictures, resize':>17s}")
    print(head)
    print("-" * len(head))
    for name, runs in models.items():
        for r in runs:
            print(f"{name + ', seed ' + str(r['seed']):{width}s} {fmt(r['test_acc']):>10s} "
                  f"{fmt(accuracy(r['digit'])):>16s} {fmt(accuracy(r['resize'])):>17s}")
        if len(runs) > 1:
            print(f"{name + f', mean of {len(runs)}':{width}s} "
                  f"{fmt(float(np.mean([r['test_acc'] for r in runs]))):>10s} "
                  f"{fmt(mean_accuracy(runs, 'digit')):>16s} "
                  f"{fmt(mean_accuracy(runs, 'resize')):>17s}")
    several = any(len(runs) > 1 for runs in models.values())
    over = " (mean over the seeds)" if several else ""
    if styles:
        print()
        print(f"pictures with digit framing, by style{over}")
        kinds = collections.defaultdict(list)
        for name, style in styles.items():
            kinds[STYLE_HAND if style == STYLE_HAND else STYLE_TYPE].append(name)
        if trained_fonts:
            seen = {f"{STYLE_TYPE}: {f}" for f in trained_fonts}
            kinds[f"{STYLE_TYPE}, fonts not trained on"] = [
                n for n, st in styles.items() if st.startswith(STYLE_TYPE) and st not in seen]
        cols = [(f"{k} ({len(v)})", v) for k, v in sorted(kinds.items())]
        print(f"{'model':{width}s} " + " ".join(f"{c:>18s}" for c, _ in cols).rstrip())
        for name, runs in models.items():
            print(f"{name:{width}s} " + " ".join(
                f"{fmt(mean_accuracy(runs, 'digit', v)):>{max(18, len(c))}s}" for c, v in cols))
    effects = collections.defaultdict(list)
    for name in next(iter(models.values()))[0]["digit"]:
        effects[photo_effect(name)].append(name)
    if len(effects) > 1:
        print()
        print(f"pictures with digit framing, by photo effect{over}")
        cols = [(f"{k} ({len(v)})", v) for k, v in sorted(effects.items())]
        print(f"{'model':{width}s} " + " ".join(f"{c:>14s}" for c, _ in cols).rstrip())
        for name, runs in models.items():
            print(f"{name:{width}s} " + " ".join(
                f"{fmt(mean_accuracy(runs, 'digit', v)):>{max(14, len(c))}s}" for c, v in cols))
    print()
    print(f"pictures with digit framing, by digit{over}")
    by_digit = collections.defaultdict(list)
    for name in next(iter(models.values()))[0]["digit"]:
        by_digit[true_label(name)].append(name)
    print(f"{'model':{width}s} " + " ".join(f"{d:>5d}" for d in sorted(by_digit)))
    for name, runs in models.items():
        print(f"{name:{width}s} " + " ".join(
            f"{mean_accuracy(runs, 'digit', by_digit[d]):5.2f}" for d in sorted(by_digit)))
    for name, runs in models.items():
        print()
        runs_note = f", over {len(runs)} runs" if len(runs) > 1 else ""
        print(f"most frequent confusions of {name} (digit framing{runs_note}): "
              "true -> predicted")
        for t, p, k, files in confusions(runs, top):
            where = ", ".join(f"{f} ({styles[f].removeprefix(STYLE_TYPE + ': ')})"
                              if f in styles else f for f in files[:3])
            print(f"  {t} -> {p}  x{k:<3d} {where}{', ...' if len(files) > 3 else ''}")


def save_misses(preds: dict[str, int], pictures: Path, out: Path,
                styles: dict[str, str]) -> None:
    """For each miss: the picture and the 28x28 input it was framed to, side by side."""
    from PIL import Image, ImageDraw

    from cnncli.cli.infer import prepare_image

    out.mkdir(parents=True, exist_ok=True)
    size = 140
    misses = [n for n in sorted(preds) if preds[n] != true_label(n)]
    for name in misses:
        src = Image.open(pictures / name).convert("RGB")
        src.thumbnail((size, size))
        x, _ = prepare_image(str(pictures / name), (1, 28, 28), "digit")
        framed = Image.fromarray(np.uint8(np.clip(x[0], 0, 1) * 255)).resize(
            (size, size), Image.Resampling.NEAREST).convert("RGB")
        tile = Image.new("RGB", (2 * size, size + 16), "white")
        tile.paste(src, (0, 16))
        tile.paste(framed, (size, 16))
        style = styles.get(name, "").removeprefix(STYLE_TYPE + ": ")
        ImageDraw.Draw(tile).text((2, 2), f"{name} read as {preds[name]}  {style}",
                                  fill=(200, 0, 0))
        tile.save(out / f"{Path(name).stem}_as_{preds[name]}.png")
    print(f"{len(misses)} misses saved to {out}", file=sys.stderr)


def measure_cnncli(run: str, folder: Path) -> dict:
    """Test-split accuracy and both framings' predictions of one cnncli model."""
    framing, digit = infer(run, folder, None)
    _, resize = infer(run, folder, "resize")
    if framing != "digit":
        print(f"note: {run} frames pictures with '{framing}' by default", file=sys.stderr)
    return {"test_acc": test_split_accuracy(run), "digit": digit, "resize": resize}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300, help="pictures to draw (default 300)")
    ap.add_argument("--pictures-seed", type=int, default=1,
                    help="random seed of the picture generator (default 1; the bundled "
                    "sample_data/pictures were drawn with 0)")
    ap.add_argument("--effects", action="store_true",
                    help="the same pictures with phone-photo effects (a shadow across the "
                    "sheet, ruled or squared paper) on about three in four")
    ap.add_argument("--pictures", type=Path,
                    help="score these pictures (<digit>*.png) instead of drawing new ones")
    ap.add_argument("--model", help="a cnncli run folder or checkpoint to score instead of "
                    "training the default model")
    ap.add_argument("--seeds", default="",
                    help="training seeds, comma-separated: one run of each model per seed "
                    "(default: the config's own seed); accuracy on pictures varies from seed "
                    "to seed more than on the test split")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="passed to cnncli train (repeatable)")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch LeNet-5")
    ap.add_argument("--misses", type=Path, help="save each digit-framing miss of the first "
                    "cnncli model (picture and framed input) here")
    ap.add_argument("--top", type=int, default=6, help="confusions listed per model")
    ap.add_argument("--json", type=Path, help="also write every prediction to this file")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_worker)
        return
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds takes whole numbers separated by commas, got {args.seeds!r}")
    if args.model and (args.overrides or seeds):
        ap.error("--set and --seeds apply to training runs; they cannot be used with --model")
    from cnncli.io.checkpoint import load_model
    from cnncli.io.datasets import dataset_label

    use_torch = not args.no_torch and torch_available()
    if not args.no_torch and not use_torch:
        print("PyTorch is not installed: the LeNet-5 comparison is left out", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="cnncli-pictures-") as tmp:
        work = Path(tmp)
        styles: dict[str, str] = {}
        if args.pictures:
            pictures = args.pictures
        else:
            pictures = work / "pictures"
            styles = make_pictures(pictures, args.count, args.pictures_seed, args.effects)
        files = picture_files(pictures)
        if not files:
            raise SystemExit(f"no pictures named <digit>*.png in {pictures}")
        names = {f.name for f in files}
        styles = {k: v for k, v in styles.items() if k in names}
        # infer reads whole folders; give it exactly the scored files
        folder = pictures
        if len(files) != sum(1 for _ in pictures.iterdir()):
            folder = work / "scored"
            folder.mkdir()
            for f in files:
                (folder / f.name).symlink_to(f.resolve())

        overrides = list(args.overrides)
        if args.model:
            label = f"cnncli {Path(args.model).name}"
        else:
            label = "cnncli train" + (" --set ..." if args.overrides else " (default)")
        torch_label = "PyTorch LeNet-5 (same data, recipe)"
        models: dict[str, list[dict]] = {label: []}
        if use_torch:
            models[torch_label] = []
        notes = []
        for seed in seeds or [None]:
            if args.model:
                run, trained = args.model, None
            else:
                run = str(work / f"run-{'default' if seed is None else seed}")
                extra = [] if seed is None else [f"train.seed={seed}"]
                trained = train_default(Path(run), overrides + extra)
                notes.append(f"cnncli train: {trained['epochs']} epochs in "
                             f"{trained['seconds']:.0f} s, best validation accuracy "
                             f"{trained['best_val_acc']:.4f}")
            cfg = load_model(run)[1]["config_obj"]
            data_label = dataset_label(cfg.data.train)
            trained_fonts = typeset_training_fonts(run)
            row = {"seed": int(cfg.train.seed), "run": run, "train": trained,
                   **measure_cnncli(run, folder)}
            models[label].append(row)
            if use_torch:
                lenet = run_torch(run, files, work)
                if lenet is not None:
                    models[torch_label].append({"seed": int(cfg.train.seed), **lenet})
                    notes.append(f"PyTorch LeNet-5: {lenet['epochs']} epochs in "
                                 f"{lenet['train_seconds']:.0f} s, best epoch "
                                 f"{lenet['best_epoch']}, {lenet['params']:,} parameters, "
                                 f"torch {lenet['torch']}")
        models = {k: v for k, v in models.items() if v}
        report(models, styles, len(files), args.top, data_label, trained_fonts)
        if trained_fonts:
            print()
            print(f"typeset training digits drawn in: {', '.join(trained_fonts)}")
        print()
        for note in notes:
            print(note)
        if args.misses:
            save_misses(models[label][0]["digit"], pictures, args.misses, styles)
        if args.json:
            doc = {"count": len(files), "styles": styles, "models": models}
            args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
