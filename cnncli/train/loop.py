"""The training loop: data, steps, validation, checkpoints, resume, stopping.

Library code: nothing here prints. Progress goes to a ``Callbacks`` object (the CLI draws
bars or writes lines from it) and failures are raised as ``CnncliError`` subclasses.

Reproducibility: every random choice derives from the run's random seed without hidden
state. Epoch e (0-based) visits the training set in the order
``np.random.default_rng([seed, e]).permutation(n)``; step s of that epoch draws its
augmentation and dropout from ``np.random.default_rng([seed, e, s])``. The learning rate
is a pure function of (e, s). So a run resumed from ``last.safetensors`` (weights,
optimizer state, epoch and step) replays exactly what an uninterrupted run does, mid-epoch
included, and ends with the same weights bit for bit (same machine, same thread counts).

Data parallelism (``cnncli.train.distributed``): with K MPI ranks each step's global batch
is the same slice of the same order, cut into K contiguous shards; each rank's loss gradient
is scaled by its share, one Allreduce of a flat buffer sums the gradients, and every rank
takes the same step. Random draws are made for the whole global batch in sample order, so
K ranks and one process train the same model (to rounding). Rank 0 alone reports and
writes files; the checkpoint holds no rank state, so a run may resume with another K.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import CheckFailed, CheckpointError, CnncliError, DataError, Interrupted
from cnncli.io.checkpoint import (
    OPTIM_PREFIX,
    check_meta,
    check_tensors,
    read_checkpoint,
    spec_shapes,
    write_checkpoint,
)
from cnncli.spec.model import Config
from cnncli.train import rundir
from cnncli.train.schedules import lr_at

CHECKPOINT_KINDS = ("best", "last")
RNG_INFO = {
    "bit_generator": "PCG64",
    "epoch_order": "numpy.random.default_rng([seed, epoch]).permutation(n)",
    "step": "numpy.random.default_rng([seed, epoch, step])",
    "epoch_base": 0,
}
# bookkeeping slots after the gradients in the step's Allreduce buffer
_LOSS, _CORRECT, _FAIL, _SIGINT, _SIGTERM = range(5)
_TAIL = 5
# Keys of train.* that a resumed run must keep: they decide the validation split, the
# initial weights, the tensors' dtype and the layout of the optimizer state.
RESUME_FIXED = ("train.seed", "train.dtype", "train.optimizer.type")


class Callbacks:
    """Receives training events; every method is optional. Dicts hold plain numbers."""

    def on_start(self, info: dict) -> None: ...

    def on_epoch_start(self, info: dict) -> None: ...

    def on_step(self, info: dict) -> None: ...

    def on_evaluate(self, info: dict) -> None: ...

    def on_epoch_end(self, row: dict, info: dict) -> None: ...

    def on_warning(self, message: str) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int                     # epochs completed
    epochs_planned: int
    best_val_acc: float | None
    best_epoch: int | None
    final_val_acc: float | None
    final_val_loss: float | None
    test_acc: float | None = None
    test_loss: float | None = None
    test_samples: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    stopped_early: bool = False
    already_complete: bool = False
    resumed: bool = False
    metric: str = "val_acc"
    workers: int = 1                # MPI ranks that trained together
    allreduce_seconds: float = 0.0  # time spent in the gradient Allreduce (workers > 1)

    def to_dict(self) -> dict:
        """The end-of-run document of ``cnncli train --json``."""
        doc: dict[str, Any] = {
            "run": str(self.run_dir),
            "epochs": self.epochs,
            "epochs_planned": self.epochs_planned,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "final_val_acc": self.final_val_acc,
            "final_val_loss": self.final_val_loss,
        }
        if self.test_samples:
            doc["test_acc"] = self.test_acc
            doc["test_loss"] = self.test_loss
            doc["test_samples"] = self.test_samples
        doc.update(
            {
                "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 1),
                "stopped_early": self.stopped_early,
                "resumed": self.resumed,
                "status": "already_complete" if self.already_complete else "completed",
                "best_checkpoint": str(self.run_dir / "best.safetensors"),
                "last_checkpoint": str(self.run_dir / "last.safetensors"),
            }
        )
        if self.workers > 1:
            doc["workers"] = self.workers
            doc["allreduce_seconds"] = round(self.allreduce_seconds, 4)
        return {k: _finite_or_none(v) for k, v in doc.items()}


@dataclass
class ResumeState:
    """What ``prepare_resume`` read from a run: its folder, config and saved state."""

    run_dir: Path
    config: Config
    tensors: dict
    meta: dict
    changed: list[str] = field(default_factory=list)   # train.* keys changed by --set

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    @property
    def step_in_epoch(self) -> int:
        return int(self.meta.get("step_in_epoch", 0))


# ---- resume ------------------------------------------------------------------------------------


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not d and prefix:
            out[prefix] = {}
    elif isinstance(d, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = list(d) if isinstance(d, tuple) else d
    return out


def config_changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, in order."""
    a, b = _flatten(old), _flatten(new)
    keys = list(a) + [k for k in b if k not in a]
    return [k for k in keys if a.get(k, "<unset>") != b.get(k, "<unset>")]


def resume_file(arg: str | os.PathLike) -> Path:
    """The checkpoint ``--resume ARG`` means: a run folder's last.safetensors, or a file."""
    p = Path(arg)
    if p.is_dir():
        rundir.check_unlocked(p)
        last = p / "last.safetensors"
        if not last.exists():
            raise CheckpointError(
                f"'{p}' holds no last.safetensors: nothing to resume",
                hint="--resume takes a run folder written by cnncli train",
            )
        return last
    if not p.exists():
        raise CheckpointError(f"no run or checkpoint at '{p}'")
    rundir.check_unlocked(p.parent)
    return p


def prepare_resume(
    arg: str | os.PathLike, overrides: tuple[str, ...] | list[str] = (), seed: int | None = None
) -> ResumeState:
    """Read a run's last checkpoint and the config to continue it with.

    Only ``train.*`` keys may differ from the stored config (more ``train.epochs`` extends
    the run); anything else is refused with exit 2 naming the key.
    """
    from cnncli.spec import load_config

    file = resume_file(arg)
    tensors, meta = read_checkpoint(file)
    if not any(k.startswith(OPTIM_PREFIX) for k in tensors):
        raise CheckpointError(
            f"'{file}' holds no optimizer state, so training cannot continue from it",
            hint="best.safetensors keeps the model only; resume from the run folder or its "
            "last.safetensors",
        )
    stored = meta.get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"'{file}': metadata holds no config")
    for key in ("epoch", "step_in_epoch", "global_step"):
        v = meta.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CheckpointError(f"'{file}': metadata '{key}' is missing or not a count")
    try:
        load_config(stored)
    except Exception as e:  # noqa: BLE001 - a stored config that no longer loads is bad input
        raise CheckpointError(
            f"'{file}': the config stored in the checkpoint is invalid: {e}"
        ) from None
    config = load_config(stored, tuple(overrides), seed=seed)
    # the file must describe this network before anything is sized from its config
    check_tensors(str(file), spec_shapes(config.model), tensors, prefix_ok=OPTIM_PREFIX)
    check_meta(str(file), meta, config.model)
    changed = config_changes(stored, config.resolved)
    for key in changed:
        if not key.startswith("train.") or any(
            key == f or key.startswith(f + ".") for f in RESUME_FIXED
        ):
            old, new = _flatten(stored).get(key), _flatten(config.resolved).get(key)
            raise CnncliError(
                f"{key} cannot change when resuming (the run has {old!r}, now {new!r})",
                field=key,
                hint="--resume accepts --set train.* changes only (e.g. more train.epochs); "
                "start a new run for anything else",
            )
    return ResumeState(file.parent, config, tensors, meta, changed)


# ---- data --------------------------------------------------------------------------------------


@dataclass
class _Data:
    train: Any
    val: Any | None
    test: Any | None
    classes: list[str]
    norm: dict
    test_labels: np.ndarray | None = None
    framing: str | None = None


def _load_data(config: Config, norm: dict | None) -> _Data:
    from cnncli.io.datasets import (
        compute_normalization,
        dataset_label,
        load_dataset,
        split_validation,
    )

    spec, data = config.model, config.data
    if not data.train:
        raise DataError(
            "no training data: data.train is not set",
            field="data.train",
            hint="name a dataset (digits), an image folder, an IDX pair or a .npz file",
        )
    full = load_dataset(data.train, split="train", input_shape=spec.input, framing=data.framing)
    classes = [str(c) for c in full.classes]
    if len(classes) != spec.outputs:
        raise DataError(
            f"the data has {len(classes)} classes but the network has {spec.outputs} outputs",
            path=full.source,
            field="model.fc",
            hint=f"make the last fc layer {len(classes)} units",
        )
    if tuple(full.x.shape[1:]) != tuple(spec.input):
        raise DataError(
            f"training images are {list(full.x.shape[1:])}, the network expects "
            f"{list(spec.input)}",
            field="model.input",
        )
    if data.val_split and data.val_split > 0:
        train, val = split_validation(full, data.val_split, config.train.seed)
    else:
        train, val = full, None
    if len(train.y) == 0:
        raise DataError("no training images are left after the validation split",
                        field="data.val_split")
    if norm is None:
        norm = compute_normalization(train, data.normalize)
    test = None
    test_labels = None
    if data.test:
        test = load_dataset(data.test, split="test", input_shape=spec.input,
                            framing=data.framing)
        if tuple(test.x.shape[1:]) != tuple(spec.input):
            raise DataError(
                f"test images are {list(test.x.shape[1:])}, the network expects "
                f"{list(spec.input)}",
                field="data.test",
            )
        from cnncli.engine.evaluate import map_labels

        test_labels = map_labels(test.classes, classes, test.y, dataset_label(data.test))
    framing = data.framing
    if framing is None:
        framing = "digit" if getattr(full, "digit_like", False) else "resize"
    return _Data(train, val, test, classes, norm, test_labels, framing)


# ---- the trainer -------------------------------------------------------------------------------


def _finite_or_none(v: Any) -> Any:
    """JSON has no NaN or infinity: such a figure is reported as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _num(v: float) -> str:
    """0.05 -> '0.05', 1e30 -> '1e30' (how a user would write it in a config)."""
    return f"{v:.6g}".replace("e+", "e")


def _finite_all(arrays) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


class Trainer:
    """One training run into one run folder; ``run()`` does the work."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        *,
        callbacks: Callbacks | None = None,
        stop: Any = None,
        resume: ResumeState | None = None,
        latest_link: Path | None = None,
        dist: Any = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        # with several ranks, rank 0 alone reports
        self.dist = dist
        self.lead = dist is None or dist.lead
        self.cb = (callbacks if self.lead else None) or Callbacks()
        self.stop = stop
        self.resume = resume
        self.latest_link = latest_link
        self.dtype = np.dtype(config.train.dtype)
        self.seed = int(config.train.seed)
        self.rows: list[dict] = []
        self.comm_seconds = 0.0       # in the gradient Allreduce, this run
        self.wait_seconds = 0.0       # waiting for the slowest rank before it

    # -- internals
    def _path(self, name: str) -> Path:
        return self.run_dir / name

    def _base_meta(self) -> dict:
        return {
            "config": self.resolved,
            "classes": self.data.classes,
            "normalization": self.data.norm,
            "dtype": str(self.dtype),
        }

    def _batch(self, ds, idx: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        from cnncli.io.datasets import apply_normalization

        x = ds.batch_float(idx, self.dtype)
        if rng is not None and self.config.data.augment.active:
            from cnncli.train.augment import augment_batch

            x = augment_batch(x, self.config.data.augment, rng)
        x = apply_normalization(x, self.data.norm)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _evaluate(self, ds, labels: np.ndarray, split: str) -> tuple[float, float]:
        n = len(labels)
        if n == 0:
            return float("nan"), float("nan")
        self.cb.on_evaluate({"split": split, "samples": n})
        if self.dist is not None:
            return self._evaluate_sharded(ds, labels)
        loss_sum, correct = self._evaluate_rows(ds, labels, 0, n)
        return loss_sum / n, correct / n

    def _evaluate_rows(self, ds, labels: np.ndarray, lo: int, hi: int) -> tuple[float, int]:
        """(sum of the loss, number correct) over samples lo..hi-1, a batch at a time."""
        bs = max(1, int(self.config.train.batch_size))
        loss_sum = 0.0
        correct = 0
        for start in range(lo, hi, bs):
            idx = np.arange(start, min(start + bs, hi))
            logits = self.net.forward(self._batch(ds, idx, None), train=False)
            yb = labels[idx]
            loss, _ = self.loss_fn(logits, yb)
            loss_sum += float(loss) * len(idx)
            correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
        return loss_sum, correct

    def _evaluate_sharded(self, ds, labels: np.ndarray) -> tuple[float, float]:
        """Each rank evaluates its contiguous share; one Allreduce sums loss and correct."""
        n = len(labels)
        lo, hi = self.dist.shard(n)
        buf = np.zeros(3, np.float64)
        err = None
        try:
            buf[0], buf[1] = self._evaluate_rows(ds, labels, lo, hi)
        except BaseException as e:  # noqa: BLE001 - reported to every rank below
            err = e
            buf[:] = (0.0, 0.0, 1.0)
        self.dist.allreduce_sum(buf)
        if buf[2] > 0:
            self.dist.failed(err)
        return float(buf[0]) / n, float(buf[1]) / n

    def _diverged(self, epoch: int, step: int, lr: float, what: str, last_loss) -> None:
        last = self._path("last.safetensors")
        doc = {
            "epoch": epoch + 1,
            "step": step + 1,
            "lr": lr,
            "reason": what,
            "last_finite_loss": last_loss,
            "last_checkpoint": str(last) if last.exists() else None,
        }
        from cnncli.io.atomic import atomic_write_text

        if not self.lead:  # the same values on every rank: rank 0 writes and speaks
            from cnncli.train.distributed import RankStopped

            raise RankStopped(CheckFailed.code)
        try:
            atomic_write_text(self._path("diverged.json"), json.dumps(doc, indent=2) + "\n")
        except CnncliError as e:
            self.cb.on_warning(f"could not write diverged.json: {e}")
        kept = (
            f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint was saved"
        )
        base = self.config.train.optimizer.lr
        err = CheckFailed(
            f"{what} at epoch {epoch + 1} step {step + 1} (lr={_num(lr)}); training stopped; "
            f"{kept}; details in {self._path('diverged.json')}",
            hint=f"lower train.optimizer.lr (currently {_num(base)}), "
            f"e.g. --set train.optimizer.lr={_num(base / 10)}",
        )
        err.agreed = True  # every rank stops here (the decision is made on shared values)
        raise err

    def _save_last(self, epoch: int, step_in_epoch: int, partial: dict, finished: bool) -> None:
        if not self.lead:
            return
        params = self.net.params
        tensors = {k: v for k, v in params.items()}
        for k, v in self.opt.state_dict().items():
            key = k if k.startswith(OPTIM_PREFIX) else OPTIM_PREFIX + k
            v = np.asarray(v)
            # checkpoints hold floating-point tensors only: counters go in as float64,
            # exact up to 2^53, and come back as int64 on resume
            tensors[key] = v.astype(np.float64) if v.dtype.kind in "iub" else v
        meta = self._base_meta()
        meta.update(
            {
                "kind": "last",
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": self.global_step,
                "best_metric": self.best_metric,
                "best_loss": self.best_loss,
                "best_epoch": self.best_epoch,
                "metric": self.metric_name,
                "early_stopping_counter": self.patience_counter,
                "stopped_early": self.stopped_early,
                "finished": finished,
                "metrics_rows": len(self.rows),
                "metrics": self.rows,
                "partial_epoch": partial,
                "rng": {"seed": self.seed, **RNG_INFO},
            }
        )
        write_checkpoint(self._path("last.safetensors"), tensors, meta)

    def _save_best(self, epoch: int) -> None:
        if not self.lead:  # the copy is needed to evaluate the test split on every rank
            self.best_params = {k: v.copy() for k, v in self.net.params.items()}
            return
        meta = self._base_meta()
        meta.update(
            {"kind": "best", "epoch": epoch, "metric": self.metric_name,
             "best_metric": self.best_metric}
        )
        write_checkpoint(self._path("best.safetensors"), dict(self.net.params), meta)
        self.best_params = {k: v.copy() for k, v in self.net.params.items()}

    def _write_side_files(self) -> None:
        if not self.lead:
            return
        rundir.write_metrics(self._path("metrics.csv"), self.rows)
        try:
            from cnncli.viz.curves import save_curves

            save_curves(self.rows, self._path("curves.png"), title=self.run_dir.name)
        except CnncliError as e:
            self.cb.on_warning(f"curves.png not updated: {e}")
        except (OSError, ValueError, ImportError) as e:
            self.cb.on_warning(f"curves.png not updated: {e}")

    def _update_latest(self) -> None:
        if self.latest_link is None or not self.lead:
            return
        from cnncli.io.atomic import point_symlink

        try:
            point_symlink(self.latest_link, self.run_dir.name)
        except CnncliError as e:
            self.cb.on_warning(f"could not update {self.latest_link}: {e}")
        self.latest_link = None  # once per run is enough

    # -- setup
    def setup(self) -> None:
        from cnncli.engine.network import Network, default_threads
        from cnncli.engine.optim import make_optimizer
        from cnncli.io.atomic import atomic_write_text, remove_orphans
        from cnncli.nn import losses
        from cnncli.spec import dump_yaml

        cfg = self.config
        if self.dist is not None:
            from cnncli.train.distributed import injected_failure

            injected_failure(self.dist.rank, "setup")
        removed = remove_orphans(self.run_dir) if self.lead else []
        if removed:
            names = ", ".join(p.name for p in removed)
            self.cb.on_warning(f"removed temporary files left by an interrupted save: {names}")
        meta = self.resume.meta if self.resume else {}
        norm = meta.get("normalization") if self.resume else None
        self.data = _load_data(cfg, norm if isinstance(norm, dict) else None)
        for ds, what in ((self.data.train, "training"), (self.data.test, "test")):
            info = getattr(ds, "info", None) or {}
            if info.get("resized"):
                shape = "x".join(str(d) for d in cfg.model.input[1:])
                self.cb.on_warning(f"{info['resized']} {what} images were resized to {shape}")
        self.resolved = copy.deepcopy(cfg.resolved)
        data_sec = self.resolved.get("data")
        if isinstance(data_sec, dict) and data_sec.get("framing") is None:
            data_sec["framing"] = self.data.framing
        if self.resume and isinstance(meta.get("classes"), list):
            if [str(c) for c in meta["classes"]] != self.data.classes:
                raise DataError(
                    f"the training data's classes ({', '.join(self.data.classes[:10])}) are "
                    "not the ones this run was trained on "
                    f"({', '.join(str(c) for c in meta['classes'][:10])})",
                    field="data.train",
                )
        self.loss_fn = losses.get(cfg.train.loss)
        threads = default_threads() if self.dist is None else self.dist.threads
        self.net = Network(cfg.model, dtype=str(self.dtype), seed=self.seed, threads=threads)
        self.opt = make_optimizer(cfg.train.optimizer, cfg.train.weight_decay)
        self.metric_name = "val_acc" if self.data.val is not None else "train_acc"
        self.best_metric: float | None = None
        self.best_loss: float | None = None
        self.best_epoch: int | None = None
        self.best_params: dict | None = None
        self.patience_counter = 0
        self.stopped_early = False
        self.global_step = 0
        self.start_epoch = 0
        self.start_step = 0
        self.partial: dict = {}
        if self.resume:
            self._restore(self.resume)
        if self.dist is not None:
            self._init_flat()
        if self.lead:
            atomic_write_text(self._path("config.yaml"), dump_yaml(self.resolved))

    def _init_flat(self) -> None:
        """One flat buffer for the step's Allreduce: every gradient tensor in network order,
        then the bookkeeping slots (loss sum, correct, failed, SIGINT, SIGTERM)."""
        from cnncli.train.distributed import FAIL_ENV

        self._layout = []
        off = 0
        for k, g in self.net.grads.items():
            self._layout.append((k, off, g.size))
            off += g.size
        self._nflat = off
        self._flat = np.zeros(off + _TAIL, dtype=self.dtype)
        self._flat_grads = {
            k: self._flat[o:o + size].reshape(self.net.grads[k].shape)
            for k, o, size in self._layout
        }
        self._fail_hook = bool(os.environ.get(FAIL_ENV))

    def _restore(self, st: ResumeState) -> None:
        where = str(st.run_dir / "last.safetensors")
        model = {k: v for k, v in st.tensors.items() if not k.startswith(OPTIM_PREFIX)}
        check_tensors(where, self.net.params, model)
        for k, v in model.items():
            if v.dtype != self.dtype:
                raise CheckpointError(
                    f"'{where}': tensor '{k}' is {v.dtype}, the run trains in {self.dtype}"
                )
        self.net.set_params(model)
        optim = {k: v for k, v in st.tensors.items() if k.startswith(OPTIM_PREFIX)}
        for k in [k for k in optim if k == OPTIM_PREFIX + "step" or k.endswith(".step")]:
            v = optim[k]
            if v.size and not np.all(v == np.round(v)):
                raise CheckpointError(f"'{where}': tensor '{k}' holds a non-integer step count")
            optim[k] = v.astype(np.int64)
        # every parameter carries the same optimizer slots, or none does (plain SGD)
        slots: dict[str, set] = {}
        for k in optim:
            name, _, slot = k[len(OPTIM_PREFIX):].rpartition(".")
            if name:
                slots.setdefault(name, set()).add(slot)
        stray = sorted(f"{OPTIM_PREFIX}{n}.{sl}" for n in slots if n not in self.net.params
                       for sl in slots[n])
        if stray:
            raise CheckpointError(
                f"'{where}' holds optimizer state for parameters the network does not have: "
                + ", ".join(stray[:6]) + (" ..." if len(stray) > 6 else "")
            )
        if slots:
            want = set().union(*slots.values())
            missing = [
                f"{OPTIM_PREFIX}{n}.{sl}" for n in self.net.params for sl in sorted(want)
                if sl not in slots.get(n, ())
            ]
            if missing:
                raise CheckpointError(
                    f"'{where}' lacks optimizer state: {', '.join(missing[:6])}"
                    + (" ..." if len(missing) > 6 else "")
                )
        try:
            self.opt.load_state_dict(optim)
        except CnncliError:
            raise
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"'{where}': the optimizer state does not fit: {e}") from None
        m = st.meta
        self.start_epoch = st.epoch
        self.start_step = st.step_in_epoch
        self.global_step = int(m.get("global_step", 0))
        bm = m.get("best_metric")
        self.best_metric = float(bm) if isinstance(bm, (int, float)) else None
        bl = m.get("best_loss")
        self.best_loss = float(bl) if isinstance(bl, (int, float)) else None
        be = m.get("best_epoch")
        self.best_epoch = int(be) if isinstance(be, int) else None
        self.patience_counter = int(m.get("early_stopping_counter", 0) or 0)
        self.stopped_early = bool(m.get("stopped_early", False))
        rows = m.get("metrics")
        count = int(m.get("metrics_rows", 0) or 0)
        if isinstance(rows, list) and len(rows) >= count:
            self.rows = [dict(r) for r in rows[:count]]
        else:  # fall back on the file, truncated to the checkpoint's row count
            self.rows = rundir.read_metrics(self._path("metrics.csv"))[:count]
        partial = m.get("partial_epoch")
        self.partial = dict(partial) if isinstance(partial, dict) and self.start_step else {}
        best_file = st.run_dir / "best.safetensors"
        if best_file.exists() and self.lead:  # other ranks receive rank 0's copy
            try:
                tensors, _ = read_checkpoint(best_file)
                check_tensors(str(best_file), self.net.params, tensors)
                self.best_params = tensors
            except CnncliError as e:
                self.cb.on_warning(f"{best_file} unusable ({e}); it is rewritten at the next "
                                   "improvement")

    # -- the run
    def finished(self) -> bool:
        t = self.config.train
        if self.start_epoch >= t.epochs:
            return True
        return bool(t.early_stopping and self.patience_counter >= t.early_stopping)

    def run(self) -> TrainResult:
        # Non-finite values are detected and reported by the loop itself (exit 1), so NumPy's
        # overflow warnings, raised in the engine's worker threads too, would only be noise.
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore",
                                                    divide="ignore"):
            warnings.filterwarnings(
                "ignore", category=RuntimeWarning,
                message=r".*(overflow|invalid value|divide by zero) encountered",
            )
            return self._run()

    def _run(self) -> TrainResult:
        t0 = time.perf_counter()
        cfg = self.config
        tr = cfg.train
        ds = self.data.train
        n = len(ds.y)
        bs = max(1, int(tr.batch_size))
        steps = math.ceil(n / bs)
        epochs = int(tr.epochs)
        labels = np.asarray(ds.y, dtype=np.int64)
        val_labels = (
            np.asarray(self.data.val.y, dtype=np.int64) if self.data.val is not None else None
        )
        already = self.finished()
        self.cb.on_start(
            {
                "run_dir": str(self.run_dir),
                "resumed": self.resume is not None,
                "already_complete": already,
                "start_epoch": self.start_epoch + 1,
                "start_step": self.start_step,
                "epochs": epochs,
                "steps_per_epoch": steps,
                "batch_size": bs,
                "train_samples": n,
                "val_samples": 0 if val_labels is None else len(val_labels),
                "test_samples": 0 if self.data.test is None else len(self.data.test.y),
                "classes": self.data.classes,
                "dtype": str(self.dtype),
                "changed": list(self.resume.changed) if self.resume else [],
            }
        )
        if not already:
            self.stopped_early = False  # a patience changed on resume may continue the run
        images = 0
        train_seconds = 0.0
        epoch = self.start_epoch
        # private test hook: slow every step down so a test can signal a run mid-epoch
        delay = float(os.environ.get("_CNNCLI_TEST_STEP_DELAY", "0") or 0)
        while not already and epoch < epochs:
            first = self.start_step if epoch == self.start_epoch else 0
            part = self.partial if epoch == self.start_epoch and first else {}
            loss_sum = float(part.get("loss_sum", 0.0))
            correct = int(part.get("correct", 0))
            seen = int(part.get("seen", 0))
            ep_seconds = float(part.get("seconds", 0.0))
            ep_train_seconds = float(part.get("train_seconds", 0.0))
            ep_start = time.perf_counter()
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            lr0 = lr_at(tr.schedule, tr.optimizer.lr, epoch, 0, steps, epochs)
            self.cb.on_epoch_start(
                {"epoch": epoch + 1, "epochs": epochs, "steps": steps, "first_step": first,
                 "lr": lr0}
            )
            last_loss = None
            ep_comm = ep_wait = 0.0
            for step in range(first, steps):
                st0 = time.perf_counter()
                idx = order[step * bs : (step + 1) * bs]
                lr = lr_at(tr.schedule, tr.optimizer.lr, epoch, step, steps, epochs)
                if self.dist is None:
                    loss, k_correct = self._step_single(ds, labels, idx, epoch, step, lr,
                                                        last_loss)
                else:
                    c0, w0 = self.comm_seconds, self.wait_seconds
                    loss, k_correct, agreed_stop = self._step_parallel(
                        ds, labels, idx, epoch, step, lr, last_loss)
                    ep_comm += self.comm_seconds - c0
                    ep_wait += self.wait_seconds - w0
                self.global_step += 1
                last_loss = loss
                k = len(idx)
                loss_sum += loss * k
                correct += k_correct
                seen += k
                images += k
                so_far = ep_train_seconds + time.perf_counter() - st0
                self.cb.on_step(
                    {
                        "epoch": epoch + 1,
                        "step": step + 1,
                        "steps": steps,
                        "loss": loss,
                        "acc": correct / seen,
                        "lr": lr,
                        "images_per_s": seen / so_far if so_far else 0.0,
                    }
                )
                dt = time.perf_counter() - st0  # the step, progress reporting included
                ep_train_seconds += dt
                train_seconds += dt
                if delay:
                    time.sleep(delay)
                if self.dist is None:
                    agreed_stop = self.stop.signum if self.stop else None
                if agreed_stop and step + 1 < steps:
                    partial = {
                        "loss_sum": loss_sum,
                        "correct": correct,
                        "seen": seen,
                        "seconds": ep_seconds + time.perf_counter() - ep_start,
                        "train_seconds": ep_train_seconds,
                    }
                    self._interrupt(epoch, step + 1, steps, partial, agreed_stop)
            # End of epoch: validate, record, checkpoint.
            if not _finite_all(self.net.params.values()):
                self._diverged(epoch, steps - 1, lr, "weights became non-finite", last_loss)
            if val_labels is not None:
                val_loss, val_acc = self._evaluate(self.data.val, val_labels, "val")
                if not math.isfinite(val_loss):
                    self._diverged(epoch, steps - 1, lr, "validation loss became non-finite",
                                   last_loss)
            else:
                val_loss, val_acc = None, None
            train_acc = correct / seen if seen else float("nan")
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen if seen else float("nan"),
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": lr0,
                "seconds": round(ep_seconds + time.perf_counter() - ep_start, 3),
                "images_per_s": round(seen / ep_train_seconds, 1) if ep_train_seconds else 0.0,
            }
            metric = val_acc if val_acc is not None else train_acc
            metric_loss = val_loss if val_loss is not None else row["train_loss"]
            # best = highest accuracy; a tie goes to the lower loss (a few hundred
            # validation images give accuracy in coarse steps, and ties are common)
            improved = (
                self.best_metric is None
                or metric > self.best_metric
                or (metric == self.best_metric
                    and (self.best_loss is None or metric_loss < self.best_loss))
            )
            if improved:
                self.best_metric, self.best_epoch = float(metric), epoch + 1
                self.best_loss = float(metric_loss)
                self.patience_counter = 0
            else:
                self.patience_counter += 1
            if tr.early_stopping and self.patience_counter >= tr.early_stopping:
                self.stopped_early = True
            self.rows.append(row)
            done = self.stopped_early or epoch + 1 >= epochs
            info = {
                "epochs": epochs,
                "improved": improved,
                "best_metric": self.best_metric,
                "best_epoch": self.best_epoch,
                "metric": self.metric_name,
                "early_stopping_counter": self.patience_counter,
                "stopped_early": self.stopped_early,
            }
            if self.dist is not None:
                ran = steps - first
                info.update({
                    "workers": self.dist.size,
                    # the gradient Allreduce itself, and the wait for the slowest rank
                    # before it (uneven shards, uneven cores)
                    "allreduce_seconds": round(ep_comm, 4),
                    "allreduce_ms_per_step": round(1000 * ep_comm / ran, 3) if ran else 0.0,
                    "wait_ms_per_step": round(1000 * ep_wait / ran, 3) if ran else 0.0,
                    "comm_share": round(ep_comm / ep_train_seconds, 4)
                    if ep_train_seconds else 0.0,
                    "wait_share": round(ep_wait / ep_train_seconds, 4)
                    if ep_train_seconds else 0.0,
                })
            err = None
            try:
                if improved:
                    self._save_best(epoch + 1)
                self._save_last(epoch + 1, 0, {}, finished=done)
                self._write_side_files()
                self._update_latest()
                self.cb.on_epoch_end(dict(row), info)
            except BaseException as e:  # noqa: BLE001 - with several ranks, reported to all
                if self.dist is None:
                    raise
                err = e
            epoch += 1
            if self.dist is None:
                agreed_stop = self.stop.signum if self.stop else None
            else:  # rank 0's files are written: does any rank fail or stop?
                agreed_stop = self.dist.check(err, self.stop.signum if self.stop else None)
            if self.stopped_early:
                break
            if agreed_stop and epoch < epochs:
                self._interrupt(epoch, 0, steps, {}, agreed_stop)
        result = self._finish(already, epoch, epochs, images, train_seconds, t0)
        self.cb.on_end(result)
        return result

    def _interrupt(self, epoch: int, step: int, steps: int, partial: dict,
                   signum: int | None = None) -> None:
        """Save where we are and raise Interrupted (exit 130/143).

        With several ranks every rank comes here at the same step; rank 0 saves once.
        """
        err = None
        try:
            if step:
                self._save_last(epoch, step, partial, finished=False)
        except BaseException as e:  # noqa: BLE001 - with several ranks, reported to all
            if self.dist is None:
                raise
            err = e
        if self.dist is not None:
            self.dist.check(err)
        # at an epoch boundary last.safetensors was just written
        signum = signum or getattr(self.stop, "signum", None) or 2
        if not self.lead:
            from cnncli.train.distributed import RankStopped

            raise RankStopped(128 + int(signum))
        last = self._path("last.safetensors")
        # mid-epoch: `step` batches of epoch epoch+1 are done; at a boundary epoch `epoch` is
        where = f"epoch {epoch + 1} step {step}/{steps}" if step else (
            f"epoch {epoch} step {steps}/{steps}"
        )
        err = Interrupted(
            f"interrupted at {where}; saved {last}; resume: cnncli train --resume {self.run_dir}",
            code=128 + int(signum),
        )
        err.agreed = True
        raise err

    # -- one training step
    def _step_single(self, ds, labels, idx, epoch, step, lr, last_loss) -> tuple[float, int]:
        """Forward, loss, backward and the optimizer step on the batch ``idx``.
        Returns the loss (penalty included) and the number of correct predictions."""
        # one generator per step: augmentation first, then dropout
        rng = np.random.default_rng([self.seed, epoch, step])
        xb = self._batch(ds, idx, rng)
        yb = labels[idx]
        logits = self.net.forward(xb, train=True, rng=rng)
        loss, dlogits = self.loss_fn(logits, yb)
        loss = float(loss)
        pen_value, pen_grads = self.net.penalty()
        loss += float(pen_value)
        if not math.isfinite(loss):
            what = "NaN" if math.isnan(loss) else "infinite"
            self._diverged(epoch, step, lr, f"loss became {what}", last_loss)
        self.net.backward(dlogits, input_grad=False)
        grads = self.net.grads
        for k, g in pen_grads.items():
            grads[k] += g
        if not _finite_all(grads.values()):
            self._diverged(epoch, step, lr, "gradients became non-finite", loss)
        self.opt.step(self.net.params, grads, lr)
        return loss, int(np.count_nonzero(np.argmax(logits, axis=1) == yb))

    def _step_parallel(self, ds, labels, idx, epoch, step, lr, last_loss
                       ) -> tuple[float, int, int | None]:
        """The same step with the batch shared by the ranks.

        This rank computes the gradient of its shard scaled by shard/batch, so that the
        sum over ranks is the gradient of the batch mean; one Allreduce of the flat buffer
        sums the gradients, the shards' loss sums and correct counts, and every rank's
        failure and stop flags. Returns (loss, correct, agreed stop signal or None).
        """
        dist = self.dist
        n = len(idx)
        lo, hi = dist.shard(n)
        m = hi - lo
        flat = self._flat
        tail = flat[self._nflat:]
        grads = self.net.grads
        err = None
        try:
            if self._fail_hook:
                from cnncli.train.distributed import injected_failure

                injected_failure(dist.rank, "step")
            if m:
                from cnncli.train.distributed import ShardRng

                rng = ShardRng(np.random.default_rng([self.seed, epoch, step]), n, lo, hi)
                mine = idx[lo:hi]
                xb = self._batch(ds, mine, rng)
                yb = labels[mine]
                logits = self.net.forward(xb, train=True, rng=rng)
                loss, dlogits = self.loss_fn(logits, yb)
                if m != n:
                    dlogits *= m / n
                self.net.backward(dlogits, input_grad=False)
                for k, o, size in self._layout:
                    flat[o:o + size] = grads[k].reshape(-1)
                tail[:] = 0.0
                tail[_LOSS] = float(loss) * m
                tail[_CORRECT] = np.count_nonzero(np.argmax(logits, axis=1) == yb)
            else:  # a last batch smaller than the number of ranks
                flat[:] = 0.0
        except BaseException as e:  # noqa: BLE001 - reported to every rank below
            err = e
            flat[:] = 0.0
            tail[_FAIL] = 1.0
        from cnncli.train.distributed import agreed_signal, signal_slots

        tail[_SIGINT], tail[_SIGTERM] = signal_slots(self.stop.signum if self.stop else None)
        t = time.perf_counter()
        dist.wait_for_all()
        t1 = time.perf_counter()
        dist.allreduce_sum(flat)
        t2 = time.perf_counter()
        self.wait_seconds += t1 - t
        self.comm_seconds += t2 - t1
        if tail[_FAIL] > 0:
            dist.failed(err)
        pen_value, pen_grads = self.net.penalty()
        loss = float(tail[_LOSS]) / n + float(pen_value)
        if not math.isfinite(loss):
            what = "NaN" if math.isnan(loss) else "infinite"
            self._diverged(epoch, step, lr, f"loss became {what}", last_loss)
        summed = self._flat_grads
        for k, g in pen_grads.items():
            summed[k] += g
        if not bool(np.isfinite(flat[:self._nflat]).all()):
            self._diverged(epoch, step, lr, "gradients became non-finite", loss)
        self.opt.step(self.net.params, summed, lr)
        return loss, int(round(float(tail[_CORRECT]))), agreed_signal(tail[_SIGINT],
                                                                      tail[_SIGTERM])

    def _finish(self, already, epoch, epochs, images, train_seconds, t0) -> TrainResult:
        last_row = self.rows[-1] if self.rows else {}
        res = TrainResult(
            run_dir=self.run_dir,
            epochs=len(self.rows) if self.rows else epoch,
            epochs_planned=epochs,
            best_val_acc=self.best_metric if self.metric_name == "val_acc" else None,
            best_epoch=self.best_epoch,
            final_val_acc=last_row.get("val_acc"),
            final_val_loss=last_row.get("val_loss"),
            stopped_early=self.stopped_early,
            already_complete=already,
            resumed=self.resume is not None,
            metric=self.metric_name,
            workers=1 if self.dist is None else self.dist.size,
            allreduce_seconds=self.comm_seconds,
        )
        if self.data.test is not None and self.data.test_labels is not None:
            if self.best_params is not None:
                self.net.set_params(self.best_params)
            res.test_loss, res.test_acc = self._evaluate(
                self.data.test, self.data.test_labels, "test"
            )
            res.test_samples = len(self.data.test_labels)
        res.seconds = time.perf_counter() - t0
        res.images_per_s = images / train_seconds if train_seconds else 0.0
        if already and self.rows:
            secs = [r.get("images_per_s") or 0.0 for r in self.rows]
            res.images_per_s = float(np.mean(secs))
        return res


# ---- the whole command, in order ---------------------------------------------------------------


def train(
    config: Config,
    *,
    out: str | os.PathLike | None = None,
    runs_base: str | os.PathLike = "runs",
    resume: ResumeState | None = None,
    callbacks: Callbacks | None = None,
    stop: Any = None,
    dist: Any = None,
) -> TrainResult:
    """Train ``config`` into a run folder; continue ``resume`` when given.

    Order matters for what a failure leaves behind: the memory estimate and the output
    folder are checked before anything is created; the folder is probed for writing and
    locked before any data is read; a new folder that never got past set-up is removed.

    ``dist`` (a ``cnncli.train.distributed.Dist``) trains with several MPI ranks: every
    rank calls ``train`` with the same arguments; rank 0 alone touches the run folder.
    """
    if dist is not None:
        return _train_parallel(config, out=out, runs_base=runs_base, resume=resume,
                               callbacks=callbacks, stop=stop, dist=dist)
    from cnncli.train.memory import check_fits

    check_fits(config.model, config.train.batch_size, config.train.dtype)
    run_dir, created, latest = _open_run_dir(config, out, runs_base, resume)
    lock = rundir.RunLock(run_dir)
    try:
        lock.acquire()
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        trainer = Trainer(
            config, run_dir, callbacks=callbacks, stop=stop, resume=resume, latest_link=latest
        )
        try:
            trainer.setup()
        except BaseException:
            lock.release()
            _remove_if_empty(created)
            raise
        return trainer.run()
    finally:
        lock.release()


def _open_run_dir(config: Config, out, runs_base, resume
                  ) -> tuple[Path, list[Path], Path | None]:
    """The run folder (checked, probed for writing, made if new), the folders this made
    (innermost first, to be removed again if training cannot start), and the ``latest``
    link to update (None when the folder is not in ``runs_base``)."""
    base = Path(runs_base)
    created: list[Path] = []
    if resume is not None:
        run_dir = resume.run_dir
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise CnncliError("--out cannot name another folder when resuming; drop --out")
        rundir.probe_writable(run_dir)
    elif out is not None:
        run_dir = Path(out)
        rundir.check_out_dir(run_dir)
        if rundir.make_dir(run_dir):
            created.append(run_dir)
        rundir.probe_writable(run_dir)
    else:
        made_base = rundir.make_dir(base)
        try:
            rundir.probe_writable(base)
            run_dir = rundir.new_run_dir(base, config.model.name or "run")
        except BaseException:
            _remove_if_empty([base] if made_base else [])
            raise
        created = [run_dir, base] if made_base else [run_dir]
    latest = None
    try:
        if run_dir.resolve().parent == base.resolve():
            latest = base / "latest"
    except OSError:
        latest = None
    return run_dir, created, latest


def _train_parallel(config: Config, *, out, runs_base, resume, callbacks, stop, dist
                    ) -> TrainResult:
    """``train`` on several ranks. Every rank checks its own memory and loads the data;
    rank 0 makes and locks the folder. A failure anywhere during set-up is reported to
    every rank (``Dist.check``) before the first step, so all stop with one message."""
    from cnncli.train.memory import check_fits

    bs = max(1, int(config.train.batch_size))
    run_dir: Path | None = None
    created: list[Path] = []
    latest = None
    lock = None
    err = None
    try:
        # each rank holds the model, the data and its shard of the batch
        check_fits(config.model, -(-bs // dist.size), config.train.dtype)
        if dist.lead:
            run_dir, created, latest = _open_run_dir(config, out, runs_base, resume)
            lock = rundir.RunLock(run_dir)
            lock.acquire()
    except BaseException as e:  # noqa: BLE001 - reported to every rank by dist.check
        err = e
    try:
        dist.check(err)
        run_dir = Path(dist.bcast(str(run_dir) if dist.lead else None))
        trainer = Trainer(config, run_dir, callbacks=callbacks, stop=stop, resume=resume,
                          latest_link=latest, dist=dist)
        err = None
        try:
            trainer.setup()
        except BaseException as e:  # noqa: BLE001
            err = e
        dist.check(err)
        # rank 0 read best.safetensors of a resumed run; the test split needs it everywhere
        trainer.best_params = dist.bcast(trainer.best_params if dist.lead else None)
    except BaseException:
        if lock is not None:
            lock.release()
        _remove_if_empty(created)
        raise
    try:
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a run that could not start made (innermost first), each only
    when nothing but a config.yaml is in it."""
    for folder in folders:
        try:
            leftovers = [p for p in folder.iterdir() if p.name != "config.yaml"]
            if leftovers:
                return
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()
        except OSError:
            return
