"""``ctmtl predict``: lesion masks, class probabilities and boxes for CT files, with a trained model.

    ctmtl predict --model BUNDLE_OR_MODEL_PT INPUT [INPUT ...] --out DIR [--split test] [--device cuda:0]
                  [--batch-size 8] [--threads N] [--threshold 0.5] [--score-threshold 0.5] [--no-overlays]
                  [--overwrite] [--quiet]

INPUT: a NIfTI volume, a DICOM series folder, a 2D image (PNG/JPG..., decoded by content), a folder of those, or a
ctmtl manifest. Each input writes ``DIR/<name>/``: ``mask.nii.gz`` (in the input's geometry), ``mask.png`` (2D
inputs), ``prediction.json``, ``detections.json`` (models with a detection head) and overlay pictures. Every input
and output folder is checked before the first prediction; problems are printed one per line (exit code 2).
See :mod:`ctmtl.inference.predict`.
"""

from __future__ import annotations

from pathlib import Path

from ctmtl.constants import SPLITS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict masks, classes and boxes for CT files with a trained model",
        description="Predict lesion masks, diagnosis probabilities and lesion boxes for NIfTI volumes, DICOM series, "
        "2D images, folders of those or manifest entries, with a trained bundle. Writes OUT/<input name>/: mask.nii.gz "
        "(in the input's geometry), mask.png (2D inputs), prediction.json, detections.json, overlay pictures.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="NIfTI file, DICOM series folder, 2D image, folder of those, or manifest (.json)")
    parser.add_argument("--model", "-m", required=True, type=Path,
                        help="trained bundle folder (configs/inference.json + models/model.pt) or its .pt file")
    parser.add_argument("--out", "-o", required=True, type=Path, help="output folder; each input writes OUT/<name>/")
    parser.add_argument("--split", choices=SPLITS, help="manifest inputs: only the entries of this split")
    parser.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest on a busy shared CPU)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="lesion probability threshold of a single-channel segmentation head (default 0.5)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="detection boxes scoring below this are not written (default 0.5)")
    parser.add_argument("--no-overlays", dest="overlays", action="store_false", help="do not write overlay pictures")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ctmtl.errors import DataError
    from ctmtl.inference.predict import predict_files

    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise DataError(f"--threads must be at least 1, got {args.threads}")
    if not 0.0 <= args.threshold <= 1.0 or not 0.0 <= args.score_threshold <= 1.0:
        raise DataError("--threshold and --score-threshold are probabilities, between 0 and 1")
    written = predict_files(
        args.model,
        args.inputs,
        args.out,
        split=args.split,
        overwrite=args.overwrite,
        overlays=args.overlays,
        device=args.device,
        batch_size=args.batch_size,
        threshold=args.threshold,
        score_threshold=args.score_threshold,
        threads=args.threads,
        log=None if args.quiet else print,
    )
    if not args.quiet:
        print(f"wrote {len(written)} prediction(s) to {args.out}")
    return 0
