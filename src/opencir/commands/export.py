"""``opencir export``: the gallery and query towers as ONNX or TorchScript graphs."""
from __future__ import annotations

import argparse
import json

from . import COMMANDS, Command

EPILOG = """example:
  opencir export --model runs/x/best --out exported/ --format onnx"""


def _add(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True, help="model directory or hf-hub:ORG/NAME")
    parser.add_argument("--out", required=True, help="output folder for gallery/query graphs and export.json")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="graph format (default: onnx)")
    parser.add_argument("--tower", action="append", choices=["gallery", "query"],
                        help="export only this tower (repeatable; default: both where supported)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")


def _run(args: argparse.Namespace) -> int:
    from ..api import load_model
    from ..export import export_model

    model = load_model(args.model)
    manifest = export_model(model, args.out, args.format, args.opset, tuple(args.tower or ("gallery", "query")))
    print(json.dumps(manifest, indent=2))
    return 0


COMMANDS.register("export")(Command("export the gallery and query towers to ONNX or TorchScript", _add, _run))
