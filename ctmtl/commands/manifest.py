"""``ctmtl manifest build | check | merge``: make, verify and combine data set manifests.

    ctmtl manifest build {medseg,ucsd-ai4h,lung-pet-ct-dx,folder} ROOT -o FILE [--split-seed S]
                         [--val-fraction F] [--test-fraction F] [--class NAME] [--name NAME] [--overwrite]
    ctmtl manifest build synthetic OUT [-o DIR]          (the three synthetic sources + merged, in OUT/manifests)
    ctmtl manifest check FILE [FILE ...] [--quick]
    ctmtl manifest merge A B ... -o FILE [--name NAME] [--tasks T ...] [--overwrite]

Every problem is printed as one line naming the manifest entry and/or the file; the exit code is then 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ctmtl.constants import CLASS_NAMES, TASKS
from ctmtl.errors import ManifestError

SOURCES = ("medseg", "ucsd-ai4h", "lung-pet-ct-dx", "folder", "synthetic")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("manifest", help="build, check or merge data set manifests",
                                   description="Build, check or merge ctmtl data set manifests (ctmtl-manifest/1).")
    sub = parser.add_subparsers(dest="manifest_command", metavar="ACTION")
    sub.required = True

    build = sub.add_parser("build", help="build a manifest from a data set folder",
                           description="Build a manifest from a downloaded data set in its own layout.")
    build.add_argument("source", choices=SOURCES, help="layout of the data set folder")
    build.add_argument("root", type=Path, help="the data set folder")
    build.add_argument("-o", "--output", type=Path, help="manifest file to write (synthetic: folder, default ROOT/manifests)")
    build.add_argument("--name", help="manifest name (default: the source)")
    build.add_argument("--split-seed", type=int, default=0, help="seed of the patient-level split where there is no official one")
    build.add_argument("--val-fraction", type=float, default=None, help="fraction of patients in val (default 0.2)")
    build.add_argument("--test-fraction", type=float, default=None, help="fraction of patients in test (default 0.2)")
    build.add_argument("--class", dest="class_name", choices=CLASS_NAMES,
                       help="class of every entry (medseg, folder): adds the classification task")
    build.add_argument("--skip-unmatched", action="store_true",
                       help="lung-pet-ct-dx: leave out annotations whose SOPInstanceUID is in no series (default: fail)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    build.set_defaults(func=run_build)

    check = sub.add_parser("check", help="open every file of a manifest and check it",
                           description="Open every file a manifest names: shapes, geometry, label values, boxes, splits.")
    check.add_argument("manifests", nargs="+", type=Path, metavar="FILE")
    check.add_argument("--quick", action="store_true", help="read headers only (no full decode)")
    check.set_defaults(func=run_check)

    merge = sub.add_parser("merge", help="merge manifests into one multi-task training set",
                           description="Merge manifests: paths rewritten, ids prefixed by data set, tasks cut to the labels.")
    merge.add_argument("manifests", nargs="+", type=Path, metavar="FILE")
    merge.add_argument("-o", "--output", type=Path, required=True, help="merged manifest file")
    merge.add_argument("--name", default="merged", help="merged manifest name")
    merge.add_argument("--tasks", nargs="+", choices=list(TASKS), help="keep only these tasks (entries left with none are dropped)")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    merge.set_defaults(func=run_merge)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _command_line() -> str:
    return "ctmtl " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "ctmtl manifest"


def _note(lines) -> None:
    for line in lines:
        print(f"ctmtl manifest: note: {line}", file=sys.stderr)


def run_build(args) -> int:
    from ctmtl.data.check import format_counts
    from ctmtl.data.manifest import load_manifest

    if args.source == "synthetic":
        from ctmtl.data.synthetic import build_synthetic_manifests

        paths = build_synthetic_manifests(args.root, args.output, overwrite=args.overwrite, created_by=_command_line())
        for key, path in paths.items():
            print(f"wrote {path} ({len(load_manifest(path).entries)} entries)")
        return 0
    from ctmtl.data.sources import BuildOptions, build_manifest
    from ctmtl.data.sources.common import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION

    if args.output is None:
        raise ManifestError(f"manifest build {args.source}: -o FILE is required")
    options = BuildOptions(
        name=args.name,
        split_seed=args.split_seed,
        val_fraction=DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction,
        test_fraction=DEFAULT_TEST_FRACTION if args.test_fraction is None else args.test_fraction,
        class_name=args.class_name,
        skip_unmatched=args.skip_unmatched,
        created_by=_command_line(),
    )
    result = build_manifest(args.source, args.root, args.output, options, overwrite=args.overwrite)
    _note(result.warnings)
    manifest = load_manifest(args.output)
    print(f"wrote {args.output} ({len(manifest.entries)} entries)")
    print(format_counts(manifest.counts()))
    return 0


def run_check(args) -> int:
    from ctmtl.data.check import check_manifest, format_counts

    problems: list[str] = []
    for path in args.manifests:
        try:
            report = check_manifest(path, deep=not args.quick)
        except ManifestError as err:
            problems += err.problems
            continue
        print(f"manifest {path}: {report.manifest.name} ({report.manifest.source}), {len(report.manifest.entries)} entries")
        print(format_counts(report.counts))
        if report.ok:
            print(f"manifest {path}: OK ({'headers' if args.quick else 'every file'} read)")
        problems += report.problems
    if problems:
        raise ManifestError(problems)
    return 0


def run_merge(args) -> int:
    from ctmtl.data.check import format_counts
    from ctmtl.data.manifest import load_manifest
    from ctmtl.data.merge import merge_manifests

    merge_manifests(args.manifests, args.output, name=args.name, tasks=args.tasks, overwrite=args.overwrite, created_by=_command_line())
    manifest = load_manifest(args.output)
    print(f"wrote {args.output} ({len(manifest.entries)} entries from {len(args.manifests)} manifests)")
    print(format_counts(manifest.counts()))
    return 0
