"""cnncli export: the network as an ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.common import DEFAULT_MODEL, DebugOpt, ModelOpt, QuietOpt, command

HELP = """Export a trained network as ONNX (opset 17): normalised input (N, C, H, W) in,
logits out, the same numbers as cnncli computes.

The input normalisation and the class names are stored in the model's metadata
(cnncli.normalization, cnncli.classes). Needs the onnx package:
the optional onnx extra of cnncli. When onnxruntime is installed the file is checked
against cnncli's own forward pass.

Examples:

  cnncli export -o digits.onnx

  cnncli export --model runs/lenet5-1 -o lenet5.onnx

Then, in Python:

  onnxruntime.InferenceSession('digits.onnx').run(None, {'input': x})

with x normalised as the metadata property cnncli.normalization says.
"""
CHECK_BATCH = 4


def check_with_runtime(net, model_path: str) -> float | None:
    """Largest |ONNX Runtime - engine| over a small random batch, relative to the largest
    logit (at least 1); None without the runtime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((CHECK_BATCH, *net.input_shape)).astype(np.float32)
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    ref = net.forward(x.astype(net.dtype), train=False)
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    return diff / max(1.0, float(np.max(np.abs(ref))))


def register(app: typer.Typer) -> None:
    @app.command(
        "export", help=HELP,
        short_help="The network as an ONNX model (opset 17).",
    )
    @command
    def export(
        model: ModelOpt = DEFAULT_MODEL,
        output: Annotated[
            str | None,
            typer.Option("--output", "-o", help="ONNX file to write (default: model.onnx "
                         "beside the checkpoint).", show_default=False),
        ] = None,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        from cnncli.cli.common import info, warn
        from cnncli.io.checkpoint import load_model
        from cnncli.io.onnx_export import export_onnx, require_onnx

        require_onnx()
        net, meta = load_model(model)
        path = Path(output) if output else Path(meta["file"]).parent / "model.onnx"
        if path.is_dir():
            path = path / "model.onnx"
        done = export_onnx(net, meta, path)
        try:
            diff = check_with_runtime(net, str(path))
        except Exception as e:  # noqa: BLE001 - the file is written; say what the runtime said
            diff = None
            warn(f"ONNX Runtime could not run the exported model: {e}")
        if diff is not None and diff > 1e-3:
            warn(f"ONNX Runtime's logits differ from cnncli's by up to {diff:.2e} (relative)")
        typer.echo(str(path))
        checked = "" if diff is None else f"; ONNX Runtime agrees to {diff:.1e}"
        info(
            f"wrote {path} ({done['bytes']:,} bytes, opset {done['opset']}, "
            f"{done['nodes']} nodes){checked}",
            quiet,
        )
