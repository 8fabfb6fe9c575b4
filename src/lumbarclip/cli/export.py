"""`lumbarclip export`: the image scorer as an ONNX file for onnxruntime."""

from __future__ import annotations

import argparse
import json

from lumbarclip.bundle import layout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the image scorer to ONNX (for predict --runtime onnx)",
        description="Export a model folder's image scorer (image tower, projection head and the "
        f"operating point's linear classifier) to OUT/{layout.ONNX}: input `image` [N, 1, S, S] "
        f"float32 preprocessed as {layout.PREPROCESS} says, outputs `embedding` [N, D] and the "
        "uncalibrated `logit` [N], dynamic batch. The model folder's other files are copied beside "
        "it, so OUT is a model folder for `predict --runtime onnx`. The export is kept only if "
        f"onnxruntime matches PyTorch within 1e-4 on 16 images (recorded in OUT/{layout.EXPORT_RECORD}), "
        f"which also records the sha256 of the files the graph is built from ({', '.join(layout.BAKED)}); "
        "`predict --runtime onnx` "
        "refuses the export once any of them changes (e.g. after `evaluate --overwrite`): re-run "
        "export with --overwrite. Needs the operating point written by `lumbarclip evaluate`.",
    )
    p.add_argument("--model", required=True, help=f"model folder (with {layout.OPERATING_POINT})")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    p.add_argument("--out", help=f"output folder (default: MODEL/{layout.ONNX_DIR}, where predict --runtime onnx looks)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lumbarclip.bundle.folder import export_paths
    from lumbarclip.inference.onnx import export_onnx

    path = export_onnx(args.model, args.out, overwrite=args.overwrite, opset=args.opset)
    record = json.loads(export_paths(path.parent)[1].read_text())
    print(f"onnx: {path}")
    print(f"parity vs PyTorch on {record['parity_images']} images: max abs diff {record['parity_max_abs_diff']}")
    return 0
