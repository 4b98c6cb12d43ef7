"""Training throughput: `cnncli train` against the engine's bare train step.

The loop's figure is images/s from the run's metrics.csv (training time only, validation
excluded); the engine's is forward + loss + backward + optimizer step on a ready-made batch,
same network, batch size and thread count. The ratio says what the loop costs on top of the
engine: batch assembly, normalisation, per-step random generators, checks, callbacks, and
(in the "augmented" row) the augmentation itself.

    python bench/train_throughput.py                 # quickstart, batch 64
    python bench/train_throughput.py --epochs 3 --config lenet5

Target: the loop within 15% of the engine without augmentation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def engine_images_per_s(config: str, batch: int, steps: int, repeats: int) -> float:
    from cnncli.engine.network import Network, default_threads
    from cnncli.engine.optim import make_optimizer
    from cnncli.nn import losses
    from cnncli.spec import load_config

    cfg = load_config(config, [f"train.batch_size={batch}"])
    net = Network(cfg.model, dtype=cfg.train.dtype, seed=0, threads=default_threads())
    opt = make_optimizer(cfg.train.optimizer, cfg.train.weight_decay)
    loss_fn = losses.get(cfg.train.loss)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *cfg.model.input)).astype(cfg.train.dtype)
    y = rng.integers(0, cfg.model.outputs, batch)
    lr = cfg.train.optimizer.lr * 0.01  # small: keep the weights sane over many steps

    def step(k: int) -> None:
        logits = net.forward(x, train=True, rng=np.random.default_rng([0, k]))
        _, d = loss_fn(logits, y)
        net.backward(d, input_grad=False)
        opt.step(net.params, net.grads, lr)

    for k in range(3):  # warm-up: buffers, optimizer state
        step(k)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for k in range(steps):
            step(k)
        rates.append(steps * batch / (time.perf_counter() - t))
    return statistics.median(rates)


def loop_images_per_s(config: str, batch: int, epochs: int, augment: bool) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = [sys.executable, "-m", "cnncli", "train", config, "--out", str(out), "--json",
                "--quiet", "--epochs", str(epochs), "--set", f"train.batch_size={batch}"]
        if not augment:
            args += ["--set", "data.augment={}"]
        env = {k: v for k, v in os.environ.items() if k != "CNNCLI_PROGRESS"}
        res = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise SystemExit(f"cnncli train failed ({res.returncode}):\n{res.stderr}")
        doc = json.loads(res.stdout)
        rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("images_per_s")
    rates = [float(r.split(",")[col]) for r in rows[1:]]
    # the first epoch pays for first-touch allocations; use the later ones when there are any
    later = rates[1:] or rates
    return statistics.median(later), doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="engine steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    engine = engine_images_per_s(args.config, args.batch, args.steps, args.repeats)
    plain, _ = loop_images_per_s(args.config, args.batch, args.epochs, augment=False)
    augmented, _ = loop_images_per_s(args.config, args.batch, args.epochs, augment=True)
    engine_after = engine_images_per_s(args.config, args.batch, args.steps, args.repeats)
    engine = max(engine, engine_after)  # the machine may be busy; take the better figure

    print(f"config {args.config}, batch {args.batch}, cpus {os.cpu_count()}")
    print(f"engine train step           {engine:9.0f} images/s")
    print(f"cnncli train, no augment    {plain:9.0f} images/s   ratio {plain / engine:.3f}")
    print(f"cnncli train, as configured {augmented:9.0f} images/s   ratio "
          f"{augmented / engine:.3f}")
    verdict = "within" if plain / engine >= 0.85 else "NOT within"
    print(f"loop overhead without augmentation: {1 - plain / engine:.1%} ({verdict} 15%)")


if __name__ == "__main__":
    main()
