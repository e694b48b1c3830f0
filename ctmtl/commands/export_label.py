"""``ctmtl export-label``: a trained model as MONAI Label bundles, one per head.

    ctmtl export-label --model BUNDLE_OR_MODEL_PT --out APP_MODEL_DIR [--name ctmtl] [--overwrite]
                       [--chain slice_8bit] [--tasks seg det class]

Writes ``APP_MODEL_DIR/<name>_segmentation``, ``<name>_detection`` and ``<name>_classification`` (for the heads
the network has); serve them with MONAI Label's ``monaibundle`` app (see ``docs/monailabel.md``).
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    from ctmtl.export.label import LABEL_HEADS

    parser = subparsers.add_parser(
        "export-label",
        help="export a trained model as MONAI Label bundles (one per head)",
        description="Export a trained ctmtl model as MONAI Label bundles, one per head "
        "(<name>_segmentation, <name>_detection, <name>_classification), for MONAI Label's monaibundle app.",
    )
    parser.add_argument("--model", type=Path, required=True, help="trained bundle folder, or its models/model.pt")
    parser.add_argument("--out", type=Path, required=True, help="MONAI Label app's model folder (<app>/model)")
    parser.add_argument("--name", default="ctmtl", help="bundle name prefix (default: ctmtl)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing bundles of the same names")
    parser.add_argument("--chain", default="slice_8bit",
                        help="preprocessing chain the model was trained with, name or file (default: slice_8bit, "
                             "for PNG / JPEG studies)")
    parser.add_argument("--tasks", nargs="+", choices=list(LABEL_HEADS), metavar="TASK",
                        help=f"heads to export, of {', '.join(LABEL_HEADS)} (default: every one the network has)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ctmtl.export.label import export_label

    written = export_label(args.model, args.out, name=args.name, overwrite=args.overwrite, chain=args.chain, tasks=args.tasks)
    for task, path in written.items():
        print(f"wrote {path} ({task}; weights checked strictly)")
    names = ",".join(p.name for p in written.values())
    print(f"serve with: monailabel start_server --app <app> --studies <studies> --conf models {names} "
          "--conf zoo_source local --conf sam2 false")
    return 0
