"""Data-parallel throughput: `cnncli train` with 1 process x 1 thread, 2 processes x 1 thread
(mpiexec, one core each) and 1 process x 2 threads, on a CIFAR-style network.

The network: 3x32x32 input; conv 32, conv 32, max pool, conv 64, conv 64, max pool (3x3
kernels, same padding, ReLU, pool 2), fc 256, fc 10; global batch 128; synthetic random
images in a temporary .npz. Images/s come from the run's metrics (training time only; the
first epoch warms buffers up, so the later epochs' median is used). The Allreduce time per
step and its share of a step are measured inside the loop (time.perf_counter around the
Allreduce) and read from the JSON-lines progress (CNNCLI_PROGRESS=jsonl).

A second table times the Allreduce alone (no compute, so no waiting for the slower rank)
for this network's gradient, and extrapolates to 8 and 64 ranks on 10 Gb/s Ethernet:
ring Allreduce moves 2(K-1)/K * P * 4 bytes per rank per step, a parameter server
receives and sends K * P * 4 bytes per step.

    python bench/parallel.py                  # 2,048 images, 3 epochs per configuration
    python bench/parallel.py --images 1024 --epochs 2

Target: 2 processes >= 1.8x the 1 x 1 figure.
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

SPEC = """\
model:
  name: cifar-style
  input: [3, 32, 32]
  blocks:
    - conv: [{filters: 32, size: 3, padding: same}, {filters: 32, size: 3, padding: same}]
      pool: {type: max, size: 2}
    - conv: [{filters: 64, size: 3, padding: same}, {filters: 64, size: 3, padding: same}]
      pool: {type: max, size: 2}
  fc: [{units: 256}, {units: 10}]
data:
  train: train.npz
  val_split: 0
  normalize: standardize
train:
  epochs: EPOCHS
  batch_size: 128
  optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
  schedule: {type: none}
  seed: 0
"""

ETHERNET_BYTES_PER_S = 10e9 / 8          # 10 Gb/s
ETHERNET_LATENCY_S = 50e-6               # per message, a typical TCP round on a LAN
ALEXNET_PARAMS = 62_378_344


def mpiexec() -> str:
    from cnncli.train.distributed import find_mpiexec

    path = find_mpiexec()
    if path is None:
        raise SystemExit("no mpiexec: pip install 'cnncli[mpi]'")
    return path


def write_data(folder: Path, images: int, epochs: int) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(images, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=images)
    np.savez(folder / "train.npz", x=x, y=y)
    spec = folder / "cifar.yaml"
    spec.write_text(SPEC.replace("EPOCHS", str(epochs)))
    return spec


def run(spec: Path, out: Path, ranks: int, threads: int, batch: int = 128) -> dict:
    """Train once; images/s (median of the epochs after the first), Allreduce figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    env["CNNCLI_PROGRESS"] = "jsonl"
    args = [sys.executable, "-m", "cnncli", "train", str(spec), "--out", str(out), "--json",
            "--set", f"train.batch_size={batch}"]
    preexec = None
    if ranks > 1:
        args = [mpiexec(), "-n", str(ranks), *args]
    elif threads == 1:
        # one core: the engine then runs one thread, and BLAS is held to one as well
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"

        def preexec():
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, env=env, check=False,
                         preexec_fn=preexec)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"cnncli train failed ({res.returncode}):\n{res.stderr[-3000:]}")
    epochs = []
    for line in res.stderr.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("event") == "epoch":
            epochs.append(doc)
    later = epochs[1:] or epochs
    rate = statistics.median(e["images_per_s"] for e in later)
    ms = [e.get("allreduce_ms_per_step") for e in later if "allreduce_ms_per_step" in e]
    share = [e.get("comm_share") for e in later if "comm_share" in e]
    wait = [e.get("wait_ms_per_step") for e in later if "wait_ms_per_step" in e]
    return {
        "images_per_s": rate,
        "step_ms": batch / rate * 1000,
        "allreduce_ms": statistics.median(ms) if ms else None,
        "comm_share": statistics.median(share) if share else None,
        "wait_ms": statistics.median(wait) if wait else None,
        "wall_s": wall,
    }


GEMM = """
import time
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1)
a = np.random.default_rng(0).random((768, 768), dtype=np.float32)
a @ a
t = time.perf_counter()
for _ in range(60):
    a @ a
print(60 * 2 * 768**3 / (time.perf_counter() - t) / 1e9)
"""


def cores_check() -> tuple[float, float]:
    """Single-threaded float32 GEMM GFLOP/s: one process alone, and the sum of two at once.
    Two real cores give about twice the first figure; two hyperthreads of one core do not."""
    cmd = [sys.executable, "-c", GEMM]
    one = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    two = sum(float(p.communicate()[0]) for p in procs)
    return one, two


ALLREDUCE_ONLY = """
import sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
buf = np.ones(int(sys.argv[1]), np.float32)
for _ in range(5):
    comm.Allreduce(MPI.IN_PLACE, buf)
times = []
for _ in range(30):
    comm.Barrier()
    t = time.perf_counter()
    comm.Allreduce(MPI.IN_PLACE, buf)
    times.append(time.perf_counter() - t)
if comm.Get_rank() == 0:
    print(sorted(times)[len(times) // 2])
"""


def allreduce_only(params: int) -> float:
    """Median seconds of one in-place float32 Allreduce of ``params`` values, 2 ranks."""
    res = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", ALLREDUCE_ONLY,
                          str(params)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"Allreduce timing failed:\n{res.stderr[-2000:]}")
    return float(res.stdout.strip().splitlines()[-1])


def ring_s(k: int, params: int) -> float:
    """Ring Allreduce on Ethernet: 2(K-1) messages, each rank sends 2(K-1)/K * P*4 bytes."""
    return 2 * (k - 1) / k * params * 4 / ETHERNET_BYTES_PER_S + 2 * (k - 1) * ETHERNET_LATENCY_S


def server_s(k: int, params: int) -> float:
    """Parameter server on one Ethernet link (full duplex): it receives K*P*4 bytes and sends
    K*P*4 bytes per step, so the step waits K*P*4 bytes' time at least."""
    return k * params * 4 / ETHERNET_BYTES_PER_S + 2 * ETHERNET_LATENCY_S


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()

    from cnncli.spec import load_config
    from cnncli.spec.model import param_shapes

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = write_data(folder, a.images, a.epochs)
        model = load_config(str(spec)).model
        n_params = sum(int(np.prod(s)) for layer in model.layers
                       for s in param_shapes(layer).values())
        rows = []
        for ranks, threads, batch in ((1, 1, 128), (2, 1, 128), (1, 2, 128), (1, 1, 64)):
            r = run(spec, folder / f"run-{ranks}x{threads}-{batch}", ranks, threads, batch)
            rows.append((ranks, threads, batch, r))
            print(f"  {ranks} x {threads}, batch {batch}: {r['images_per_s']:.1f} images/s "
                  f"({r['wall_s']:.1f} s)", file=sys.stderr, flush=True)
        bare = allreduce_only(n_params)
        one, two = cores_check()

    base = rows[0][3]["images_per_s"]
    print(f"CIFAR-style net, {n_params:,} parameters ({n_params * 4 / 1e6:.2f} MB of float32 "
          f"gradient), global batch 128, {a.images:,} random images, median of epochs "
          f"2..{a.epochs}")
    print()
    print("| processes x threads | batch | images/s | vs 1 x 1 | step (ms) "
          "| Allreduce per step (ms) | communication share | wait for slowest rank (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ranks, threads, batch, r in rows:
        ar = "-" if r["allreduce_ms"] is None else f"{r['allreduce_ms']:.2f}"
        sh = "-" if r["comm_share"] is None else f"{100 * r['comm_share']:.1f}%"
        wt = "-" if r["wait_ms"] is None else f"{r['wait_ms']:.1f}"
        note = " (one shard's size, reference)" if batch != 128 else ""
        print(f"| {ranks} x {threads} | {batch}{note} | {r['images_per_s']:.1f} | "
              f"{r['images_per_s'] / base:.2f}x | {r['step_ms']:.0f} | {ar} | {sh} | {wt} |")
    print()
    print(f"Cores check: single-threaded GEMM {one:.1f} GFLOP/s in one process, "
          f"{two:.1f} GFLOP/s summed over two at once ({two / one:.2f}x; two real cores "
          "give about 2x)")
    print()
    print(f"Allreduce alone (2 ranks, shared memory, {n_params * 4 / 1e6:.2f} MB): "
          f"{bare * 1000:.2f} ms")
    print()
    # Extrapolation: a global batch of 128 split over K ranks, compute time per step = the
    # 1 x 1 step time / K (every rank one core), plus communication on 10 Gb/s Ethernet.
    step1 = 128 / base
    print("Extrapolated to 10 Gb/s Ethernet (compute = 1 x 1 step / K, no overlap; "
          f"{ETHERNET_LATENCY_S * 1e6:.0f} us per message):")
    print()
    print("| network | K | compute (ms) | ring Allreduce (ms) | images/s | "
          "parameter server (ms) | images/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, p in (("CIFAR-style", n_params), ("AlexNet", ALEXNET_PARAMS)):
        for k in (8, 64):
            comp = step1 / k if name == "CIFAR-style" else float("nan")
            ring, ps = ring_s(k, p), server_s(k, p)
            ips = (f"{128 / (comp + ring):.0f}", f"{128 / (comp + ps):.0f}") \
                if comp == comp else ("-", "-")
            cs = f"{comp * 1000:.1f}" if comp == comp else "-"
            print(f"| {name} | {k} | {cs} | {ring * 1000:.1f} | {ips[0]} | {ps * 1000:.1f} "
                  f"| {ips[1]} |")


if __name__ == "__main__":
    main()
