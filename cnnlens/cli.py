"""The ``cnnlens`` command line (also ``python -m cnnlens``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DESCRIPTION = """cnnlens: see inside convolutional networks.

Subcommands:
  gallery OUT/     render every local-explanation method on images of the embedded
                   default model to PNG files, with an index.html to browse them
  train-default    regenerate the embedded default model's weights from scratch
                   (reproducible; about 8 minutes on 2 CPU cores)
  layers           print the layer table (shapes, channels, receptive fields) of the
                   default model or of a torchvision architecture (random weights)
"""


def _gallery(args: argparse.Namespace) -> int:
    from .gallery import render_gallery

    out = Path(args.out)
    start = time.time()
    index = render_gallery(out, images=args.images, log=print)
    print(f"wrote {index} in {time.time() - start:.1f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .zoo.train import WEIGHTS, train_default

    out = Path(args.out) if args.out else WEIGHTS
    accuracy = train_default(out, epochs=args.epochs)
    print(f"held-out accuracy: {accuracy:.2%}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from . import layers, zoo

    if args.arch == "default":
        model, size = zoo.shapes_model(), None
    else:
        import torchvision

        names = sorted(n for n in torchvision.models.list_models(module=torchvision.models))
        if args.arch not in names:
            print(f"Unknown architecture {args.arch!r}. Valid: default, {', '.join(names)}.", file=sys.stderr)
            return 2
        model, size = torchvision.models.get_model(args.arch, weights=None), args.size
    rows = layers(model, size)
    print(f"{'name':40} {'kind':22} {'shape':18} {'rf':>5} {'stride':>6}")
    for info in rows:
        shape = "×".join(map(str, info.shape))
        print(f"{info.name:40} {info.kind:22} {shape:18} {info.rf_size:>5} {info.rf_stride or '-':>6}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnlens", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    gallery = sub.add_parser("gallery", help="render every method on default-model images to PNGs + index.html",
                             description="Render every local-explanation method on held-out images of the "
                                         "embedded default model to PNG files and write OUT/index.html.")
    gallery.add_argument("out", help="output folder (created if missing)")
    gallery.add_argument("--images", type=int, default=4, help="how many held-out images (default 4)")
    gallery.set_defaults(run=_gallery)
    train = sub.add_parser("train-default", help="retrain the embedded default model reproducibly",
                           description="Train ShapesNet on the procedural shapes data from scratch and save "
                                       "its weights (default: the packaged weights file).")
    train.add_argument("--out", help="where to save the weights (default: inside the package)")
    train.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    train.set_defaults(run=_train)
    table = sub.add_parser("layers", help="print a model's layer table",
                           description="Print every module with output shape and receptive field.")
    table.add_argument("arch", nargs="?", default="default",
                       help="'default' or a torchvision architecture name (random weights, no download)")
    table.add_argument("--size", type=int, default=224, help="input size for torchvision models (default 224)")
    table.set_defaults(run=_layers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as error:  # (OSError: an output path that cannot be written)
        print(f"cnnlens {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
