"""Speed of the slice pipeline on the synthetic data set: slices per second three ways, and data time against the
time of a training step.

Three ways through the same pipeline (each entry's chain, then ``multitask_collate`` in batches), side by side in
one run, each timed without and with the random training augmentation (``train_augment``):

- naive: no cache; every slice re-reads and re-preprocesses its whole volume / series / image
  (``SliceDataset(cache="none")``; timed on an evenly spread subset of the slices);
- cold first epoch: building the cached dataset (each file read once) plus the first epoch;
- cached epochs: the epochs after that (only augmentation, if on, and collation run).

The cache removes the reading and preprocessing; augmentation is random, runs on every access in all three
ways, and so bounds the speed-up of the augmented pipeline. Then one cached, augmented epoch feeds a small
``MultiTaskNet`` (``ctmtl.networks``; MONAI's ``BasicUNet`` when that is not importable) and the time to produce
each batch is set against the training step (forward, backward, optimiser step). Goals: cached >= 20x naive, and
data time per batch below step time per batch.

    python benchmarks/pipeline.py                     # table on stdout, JSON in benchmarks/results/pipeline.json
    python benchmarks/pipeline.py --size 128 --epochs 2 --naive-slices 48
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctmtl.data.chains import load_chain
from ctmtl.data.pipeline import SliceDataset, multitask_collate, torch_threads

from common import write_result  # benchmarks/common.py: run as a script, this folder is on sys.path

GOAL_CACHED_VS_NAIVE = 20.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def run_epoch(ds: SliceDataset, indices: list[int], batch: int, augment=None) -> float:
    """Seconds to produce every batch of ``indices`` (samples, augmentation if given, collation)."""
    start = time.perf_counter()
    for chunk in batches(indices, batch):
        samples = [ds[i] for i in chunk]
        with torch_threads(1):  # as in a DataLoader worker (and as SliceDataset(augment=...) runs augmentation)
            if augment is not None:
                samples = [augment(s) for s in samples]
            multitask_collate(samples)
    return time.perf_counter() - start


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_model(size: int, encoder: str):
    """A small multi-task training step, or a fixed MONAI BasicUNet step when ctmtl.networks is not there."""
    try:
        from ctmtl.losses import MultiTaskLoss
        from ctmtl.networks import MultiTaskNet, detection_targets

        net = MultiTaskNet(encoder=encoder, tasks=("class", "seg", "recon", "det"), det_head="retinanet", image_size=(size, size))
        loss_fn = MultiTaskLoss()

        def step(batch: dict) -> None:
            out = net(batch["image"], targets=detection_targets(batch))
            total, _ = loss_fn(out, batch)
            total.backward()

        name = f"ctmtl MultiTaskNet (encoder {encoder}, class+seg+recon+det)"
    except ImportError:  # the networks package is written in parallel; fall back to a fixed MONAI model
        from monai.networks.nets import BasicUNet

        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(16, 16, 32, 64, 128, 16))

        def step(batch: dict) -> None:
            torch.nn.functional.l1_loss(net(batch["image"]), batch["image"]).backward()

        name = "MONAI BasicUNet (reconstruction)"
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)

    def train_step(batch: dict) -> float:
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        step(batch)
        optimiser.step()
        return time.perf_counter() - start

    return name, train_step


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    from ctmtl.data.synthetic import ensure_synthetic

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    log(f"synthetic data in {args.data} ...")
    manifests = ensure_synthetic(args.data, seed=args.seed, scale=args.scale)
    manifest = manifests["merged"]
    overrides = {"spatial_size": [args.size, args.size]}
    augment = load_chain("train_augment", overrides).set_random_state(args.seed)
    ways = ("naive", "cold", "cached")
    secs = {(w, a): 0.0 for w in ways for a in (False, True)}

    # cold: build the cache (every file read once) + first epoch; cached: the epochs after it
    log("cold build + first epoch, cached epochs ...")
    start = time.perf_counter()
    cached = SliceDataset(manifest, split=args.split, overrides=overrides)
    build_s = time.perf_counter() - start
    n = len(cached)
    orders = [np.random.default_rng(args.seed + e).permutation(n).tolist() for e in range(args.epochs + 1)]
    for aug in (False, True):
        first = run_epoch(cached, orders[0], args.batch, augment if aug else None)
        secs[("cold", aug)] = build_s + first
        epochs = [run_epoch(cached, order, args.batch, augment if aug else None) for order in orders[1:]]
        secs[("cached", aug)] = statistics.mean(epochs)

    # naive: re-read per slice, on an evenly spread subset (all sources)
    log("naive (re-read per slice) ...")
    naive = SliceDataset(manifest, split=args.split, overrides=overrides, cache="none")
    subset = sorted(set(np.linspace(0, n - 1, min(args.naive_slices, n)).round().astype(int).tolist()))
    for aug in (False, True):
        secs[("naive", aug)] = run_epoch(naive, subset, args.batch, augment if aug else None)

    rows = {}
    labels = {"naive": "naive (re-read per slice)", "cold": "cold first epoch (build + epoch)", "cached": f"cached epochs (mean of {args.epochs})"}
    for w in ways:
        count = len(subset) if w == "naive" else n
        rows[labels[w]] = {
            "slices": count,
            "seconds": secs[(w, False)],
            "slices_per_s": count / secs[(w, False)],
            "seconds_augmented": secs[(w, True)],
            "slices_per_s_augmented": count / secs[(w, True)],
        }
    for row in rows.values():
        row["x_naive"] = row["slices_per_s"] / rows[labels["naive"]]["slices_per_s"]
        row["x_naive_augmented"] = row["slices_per_s_augmented"] / rows[labels["naive"]]["slices_per_s_augmented"]
    rows[labels["cold"]]["build_seconds"] = build_s
    cached_x = rows[labels["cached"]]["x_naive"]
    cached_x_aug = rows[labels["cached"]]["x_naive_augmented"]

    # data time vs step time on one cached, augmented epoch
    log("data time vs training step ...")
    name, train_step = build_model(args.size, args.encoder)
    data_ms, step_ms = [], []
    for chunk in batches(orders[-1], args.batch)[: args.step_batches + 1]:
        start = time.perf_counter()
        with torch_threads(1):
            batch = multitask_collate([augment(cached[i]) for i in chunk])
        data_ms.append(1000 * (time.perf_counter() - start))
        step_ms.append(1000 * train_step(batch))
    data_ms, step_ms = data_ms[1:] or data_ms, step_ms[1:] or step_ms  # the first step warms up kernels
    data_step = {
        "model": name,
        "batch": args.batch,
        "data_ms_per_batch": statistics.median(data_ms),
        "step_ms_per_batch": statistics.median(step_ms),
    }
    data_step["data_over_step"] = data_step["data_ms_per_batch"] / data_step["step_ms_per_batch"]
    chains = sorted({cached.sample_meta(i)["chain"] for i in range(n)})
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
        "data": {"manifest": str(manifest), "slices": n, "entries": len(cached.requests), "chains": chains},
        "environment": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "load_average_before": load_before,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": __import__("monai").__version__,
        },
        "rows": rows,
        "data_vs_step": data_step,
        "goals": {
            "cached_vs_naive": {"goal": GOAL_CACHED_VS_NAIVE, "value": cached_x, "met": cached_x >= GOAL_CACHED_VS_NAIVE},
            "cached_vs_naive_augmented": {"goal": GOAL_CACHED_VS_NAIVE, "value": cached_x_aug, "met": cached_x_aug >= GOAL_CACHED_VS_NAIVE},
            "data_faster_than_step": {"value": data_step["data_over_step"], "met": data_step["data_over_step"] < 1.0},
        },
    }


def table(result: dict) -> str:
    cfg, env, data = result["config"], result["environment"], result["data"]
    lines = [
        f"slice pipeline, synthetic merged manifest ({cfg['split']}): {data['slices']} slices from {data['entries']} entries, "
        f"chains {', '.join(data['chains'])}; {cfg['size']}x{cfg['size']}, batch {cfg['batch']}",
        f"{env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch threads, load average before {env['load_average_before']:.2f}",
        f"{'':<34}{'':>7}{'--- no augmentation ---':>27}{'--- train_augment ---':>27}",
        f"{'pipeline':<34}{'slices':>7}{'s':>8}{'slices/s':>10}{'x naive':>9}{'s':>8}{'slices/s':>10}{'x naive':>9}",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"{name:<34}{row['slices']:>7}{row['seconds']:>8.2f}{row['slices_per_s']:>10.1f}{row['x_naive']:>9.1f}"
            f"{row['seconds_augmented']:>8.2f}{row['slices_per_s_augmented']:>10.1f}{row['x_naive_augmented']:>9.1f}"
        )
    ds = result["data_vs_step"]
    lines.append(
        f"per batch of {ds['batch']} (median; cached + train_augment): data {ds['data_ms_per_batch']:.1f} ms, training step "
        f"{ds['step_ms_per_batch']:.1f} ms ({ds['model']}); data/step {ds['data_over_step']:.2f}"
    )
    goals = result["goals"]

    def verdict(key: str) -> str:
        return f"{goals[key]['value']:.1f}x ({'met' if goals[key]['met'] else 'NOT met'})"

    lines.append(
        f"goal cached >= {GOAL_CACHED_VS_NAIVE:.0f}x naive: {verdict('cached_vs_naive')} without augmentation, "
        f"{verdict('cached_vs_naive_augmented')} with it; data faster than the step: "
        f"{'met' if goals['data_faster_than_step']['met'] else 'NOT met'}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("outputs/bench/synthetic"), help="synthetic data folder (made when missing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", default="small", choices=("small", "large"), help="synthetic data preset (large: 256 px, 40 slices)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--size", type=int, default=256, help="slice height = width (chain spatial_size)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="cached epochs timed after the first")
    parser.add_argument("--naive-slices", type=int, default=96, help="slices timed through the naive pipeline")
    parser.add_argument("--encoder", default="small", help="encoder of the MultiTaskNet step")
    parser.add_argument("--step-batches", type=int, default=10, help="batches timed for data vs step (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the training step")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    return write_result(result, table(result), args.out)


if __name__ == "__main__":
    sys.exit(main())
