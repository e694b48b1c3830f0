"""``ctmtl synth OUT --seed S [--size N] [--scale small|medium|large]``: write the synthetic chest CT data set.

The data lands in the three real layouts (``OUT/medseg``, ``OUT/ucsd-ai4h-covid-ct``, ``OUT/lung-pet-ct-dx``) with
``OUT/synth.json``; build the manifests with ``ctmtl manifest build synthetic OUT`` (or ``--build``).
"""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    from ctmtl.constants import SCALES

    parser = subparsers.add_parser("synth", help="write the synthetic chest CT data set",
                                   description="Write deterministic synthetic chest CT in the MedSeg, UCSD-AI4H and Lung-PET-CT-Dx layouts.")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="small: trains in minutes on 2 CPU cores (default); medium: small with 480 UCSD-style images "
                             "(the ctmtl demo default); large: 256 px, more patients")
    parser.add_argument("--size", type=int, help="in-plane pixels (overrides the scale's)")
    parser.add_argument("--build", action="store_true", help="also build the manifests in OUT/manifests")
    parser.add_argument("--overwrite", action="store_true", help="replace synthetic data already in OUT")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ctmtl.data.synthetic import SynthConfig, build_synthetic_manifests, generate_synthetic

    config = SynthConfig.preset(args.scale, args.size)
    record = generate_synthetic(args.out, args.seed, config, overwrite=args.overwrite)
    print(f"wrote synthetic data to {args.out} in {record['seconds']} s (seed {args.seed}, {args.scale}, {config.size} px)")
    for source, info in record["sources"].items():
        c = info["counts"]
        splits = ", ".join(f"{s} {c['splits'][s]['entries']}" for s in ("train", "val", "test"))
        print(f"  {source}: {c['entries']} entries ({splits}); classes {json.dumps(c['classes'])}")
    if args.build:
        for path in build_synthetic_manifests(args.out, overwrite=args.overwrite).values():
            print(f"wrote {path}")
    else:
        print(f"next: ctmtl manifest build synthetic {args.out}")
    return 0
