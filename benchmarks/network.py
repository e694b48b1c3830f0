"""Cost of the shared-encoder multi-task network against single-task models, on CPU.

Measures the parameter count and the time of one training forward + backward pass (losses from
``ctmtl.losses.MultiTaskLoss``, no optimiser step) of

- the joint network with all four heads (class, seg, recon, det),
- each single-task model (the same encoder with one head); the ``seg`` one is the single-task segmentation UNet,
- the four single-task models run one after another,

all in one run, interleaved round by round so that load from other processes hits every model alike. Each time is
the best of ``--repeats`` steps after one warm-up step (other processes on a shared CPU only ever slow a step down,
by up to 10x when they compete for the cores, so the minimum is the estimate of the cost; the median is reported too),
and the four single-task models' time is the sum of theirs. Goals: the
joint step costs at most 0.5x the four single-task steps and at most 1.6x the segmentation UNet step.

    python benchmarks/network.py --encoder vgg13 --size 128 --batch 4 --out benchmarks/results/network.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from ctmtl.constants import SHORT_TASKS
from ctmtl.losses import MultiTaskLoss
from ctmtl.networks import MultiTaskNet, detection_targets

from common import write_result  # benchmarks/common.py: run as a script, this folder is on sys.path

GOAL_VS_SINGLES = 0.5
GOAL_VS_SEG_UNET = 1.6


def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict:
    """A collated batch of ``batch`` noisy ``size x size`` slices, each with one bright square lesion
    (mask, box, class) and every task label."""
    g = torch.Generator().manual_seed(seed)
    image = 0.15 + 0.05 * torch.randn(batch, 1, size, size, generator=g)
    mask = torch.zeros(batch, 1, size, size, dtype=torch.int64)
    boxes = []
    for i in range(batch):
        side = int(size * (0.1 + 0.2 * torch.rand(1, generator=g).item()))
        y, x = (torch.randint(0, size - side, (2,), generator=g)).tolist()
        mask[i, 0, y : y + side, x : x + side] = 1
        boxes.append(torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32))
    image = torch.where(mask.bool(), torch.full_like(image, 0.8), image).clamp(0, 1)
    return {
        "image": image,
        "mask": mask,
        "class": torch.arange(batch) % 3,
        "boxes": boxes,
        "box_labels": [torch.ones(1, dtype=torch.int64) for _ in boxes],
        "has": {task: torch.ones(batch, dtype=torch.bool) for task in SHORT_TASKS},
    }


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def step(net: MultiTaskNet, loss_fn: MultiTaskLoss, batch: dict, targets: list) -> float:
    """Seconds of one forward + backward pass."""
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = net(batch["image"], targets=targets if "det" in net.tasks else None)
    total, _ = loss_fn(out, batch)
    total.backward()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = (args.size, args.size)
    common = dict(encoder=args.encoder, image_size=size, det_head=args.det_head)
    models = {"joint": MultiTaskNet(tasks=SHORT_TASKS, **common)}
    models.update({f"single:{task}": MultiTaskNet(tasks=(task,), **common) for task in SHORT_TASKS})
    batch = synthetic_batch(args.batch, args.size)
    targets = detection_targets(batch, with_masks=args.det_head == "maskrcnn")
    loss_fn = MultiTaskLoss()
    for net in models.values():
        net.train()
        step(net, loss_fn, batch, targets)  # warm-up (allocator, oneDNN kernels, anchors)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, net in models.items():
            times[name].append(step(net, loss_fn, batch, targets))

    joint = models["joint"]
    rows = {"encoder (shared)": {"params": count(joint.encoder), "ms": None, "ms_median": None}}
    rows.update({f"head: {t}": {"params": count(joint.heads[t]), "ms": None, "ms_median": None} for t in SHORT_TASKS})
    for name, net in models.items():
        label = "single: seg (segmentation UNet)" if name == "single:seg" else name.replace(":", ": ")
        ms = [1000 * t for t in times[name]]
        rows[label] = {"params": count(net), "ms": min(ms), "ms_median": statistics.median(ms), "ms_all": ms}
    rows["four single-task models"] = {  # run one after another: the sum of their step times
        "params": sum(count(models[f"single:{t}"]) for t in SHORT_TASKS),
        "ms": sum(rows[f"single: {t}"]["ms"] for t in ("class", "recon", "det"))
        + rows["single: seg (segmentation UNet)"]["ms"],
        "ms_median": sum(rows[f"single: {t}"]["ms_median"] for t in ("class", "recon", "det"))
        + rows["single: seg (segmentation UNet)"]["ms_median"],
    }
    rows["joint (4 heads)"] = rows.pop("joint")
    joint_ms = rows["joint (4 heads)"]["ms"]
    seg_ms = rows["single: seg (segmentation UNet)"]["ms"]
    ratios = {
        "joint_vs_four_single": joint_ms / rows["four single-task models"]["ms"],
        "joint_vs_seg_unet": joint_ms / seg_ms,
    }
    return {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "rows": rows,
        "ratios": ratios,
        "goals": {
            "joint_vs_four_single": {"goal": GOAL_VS_SINGLES, "met": ratios["joint_vs_four_single"] <= GOAL_VS_SINGLES},
            "joint_vs_seg_unet": {"goal": GOAL_VS_SEG_UNET, "met": ratios["joint_vs_seg_unet"] <= GOAL_VS_SEG_UNET},
        },
    }


def table(result: dict) -> str:
    cfg = result["config"]
    seg_ms = result["rows"]["single: seg (segmentation UNet)"]["ms"]
    lines = [
        f"encoder {cfg['encoder']}, det head {cfg['det_head']}, "
        f"batch {cfg['batch']} x 1 x {cfg['size']} x {cfg['size']}, "
        f"{result['environment']['threads']} CPU threads, forward+backward step: best and median of {cfg['repeats']}",
        f"{'model':<34}{'params (M)':>11}{'best (ms)':>11}{'median (ms)':>13}{'x seg UNet':>12}",
    ]
    for name, row in result["rows"].items():
        best = "" if row["ms"] is None else f"{row['ms']:.1f}"
        median = "" if row["ms_median"] is None else f"{row['ms_median']:.1f}"
        rel = "" if row["ms"] is None else f"{row['ms'] / seg_ms:.2f}"
        lines.append(f"{name:<34}{row['params'] / 1e6:>11.3f}{best:>11}{median:>13}{rel:>12}")
    for key, goal in result["goals"].items():
        verdict = "met" if goal["met"] else "NOT met"
        lines.append(f"{key.replace('_', ' ')}: {result['ratios'][key]:.2f} (goal <= {goal['goal']}: {verdict})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="vgg13", help="registered encoder name (default vgg13, as in the papers)")
    parser.add_argument("--det-head", default="retinanet", choices=("retinanet", "maskrcnn"))
    parser.add_argument("--size", type=int, default=128, help="slice height = width, divisible by 32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (best and median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/network.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    return write_result(result, table(result), args.out)


if __name__ == "__main__":
    sys.exit(main())
