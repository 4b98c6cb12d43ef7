"""cnncli visualize-filters: a conv layer's kernels as a picture, and feature maps of an image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.common import DEFAULT_MODEL, DebugOpt, ModelOpt, QuietOpt, command

HELP = """Draw the learned filters of a conv layer as a grid of small pictures (RGB where
the layer sees 3 channels), each kernel scaled to its own range and enlarged so every
weight is a visible square. With --image, also draw the feature maps that each conv
layer makes of that picture, each map scaled to its own range.

Examples:

  cnncli visualize-filters                    (conv1 of the latest run: RUN/filters-conv1.png)

  cnncli visualize-filters --layer conv2 --image my-digit.png -o conv2.png

    writes conv2.png and conv2-features.png (the maps every conv layer makes of the image)
"""


def conv_layer(spec, name: str | None):
    """The conv layer called ``name`` (default: the first), or a UsageError naming the choices."""
    from cnncli.errors import UsageError

    convs = [layer for layer in spec.layers if layer.kind == "conv"]
    if not convs:
        raise UsageError("this network has no conv layers, so it has no filters to show")
    if name is None:
        return convs[0]
    for layer in convs:
        if layer.name == name.strip().lower():
            return layer
    raise UsageError(
        f"--layer '{name}' is not a conv layer of this network; "
        f"choose one of {', '.join(c.name for c in convs)}"
    )


def feature_maps(net, meta: dict, image: str, framing: str):
    """(framed input (C, H, W), [(conv layer name, maps (C, H, W))]) for one picture."""
    import numpy as np

    from cnncli.cli.infer import prepare_image
    from cnncli.io.datasets import apply_normalization

    spec = meta["config_obj"].model
    x, _ = prepare_image(image, tuple(int(d) for d in spec.input), framing)
    batch = x[None].copy()
    norm = meta.get("normalization")
    if norm:
        batch = apply_normalization(batch, norm)
    net.forward(np.ascontiguousarray(batch, dtype=net.dtype), train=False, keep=True)
    maps = [(layer.name, np.array(net.activations[layer.name][0]))
            for layer in spec.layers if layer.kind == "conv"]
    return x, maps


def register(app: typer.Typer) -> None:
    @app.command(
        "visualize-filters", help=HELP,
        short_help="A conv layer's filters as a picture, and feature maps of an image.",
    )
    @command
    def visualize_filters(
        model: ModelOpt = DEFAULT_MODEL,
        layer: Annotated[
            str | None,
            typer.Option("--layer", "-l", help="Conv layer whose filters to draw "
                         "(default: the first, conv1).", show_default=False),
        ] = None,
        image: Annotated[
            str | None,
            typer.Option("--image", "-i", help="Also draw the feature maps every conv layer "
                         "makes of this picture (framed as infer frames it).",
                         show_default=False),
        ] = None,
        output: Annotated[
            str | None,
            typer.Option("--output", "-o", help="PNG file for the filters (default: "
                         "filters-<layer>.png beside the model); the feature maps go to "
                         "<name>-features.png beside it.", show_default=False),
        ] = None,
        framing: Annotated[
            str | None,
            typer.Option("--framing", help="How --image becomes the input: digit or resize "
                         "(default: as the model was trained).", show_default=False),
        ] = None,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        from cnncli.cli.common import info
        from cnncli.cli.infer import decide_framing
        from cnncli.errors import UsageError
        from cnncli.io.atomic import atomic_write_bytes
        from cnncli.io.checkpoint import load_model
        from cnncli.viz.filters import draw_feature_maps, draw_filters, png_bytes

        if framing is not None and framing not in ("digit", "resize"):
            raise UsageError(f"--framing must be digit or resize, got '{framing}'")
        if output is not None and not output.lower().endswith(".png"):
            raise UsageError(f"-o '{output}': the pictures are PNG; give a name ending in .png")
        net, meta = load_model(model)
        spec = meta["config_obj"].model
        conv = conv_layer(spec, layer)
        run_dir = Path(meta["file"]).parent
        out = Path(output) if output else run_dir / f"filters-{conv.name}.png"

        written = []
        picture = draw_filters(net.params[f"{conv.name}.weight"], conv)
        atomic_write_bytes(out, png_bytes(picture))
        written.append(out)
        if image is not None:
            how = decide_framing(meta, framing)
            x, maps = feature_maps(net, meta, image, how)
            fm = draw_feature_maps(x, maps, source=Path(image).name)
            if output:
                fm_path = out.with_name(out.stem + "-features.png")
            else:
                fm_path = run_dir / f"features-{Path(image).stem}.png"
            atomic_write_bytes(fm_path, png_bytes(fm))
            written.append(fm_path)
        for p in written:
            typer.echo(str(p))
        info(f"{conv.name}: {picture.width}x{picture.height} pixels", quiet)
