"""Channels-last against contiguous memory format: one training step of each stage's tasks, on CPU.

Measures one training step (forward, losses from ``ctmtl.losses.MultiTaskLoss``, backward, Adam step) of the
network of ``ctmtl demo`` (the ``small`` encoder with instance norm, the demo's RetinaNet settings) for the tasks of
each stage of the staged plan (``cr``: class + recon, ``sr``: seg + recon, ``dr``: det + recon, ``joint``: all four),
once with the network and its input in the default (contiguous, NCHW) memory format and once in channels-last
(NHWC, what ``MultiTaskTrainer(channels_last=True)`` and the bundle value ``channels_last`` use). Both copies start
from the same weights; the steps of the two are interleaved round by round so that load from other processes hits
both alike, and each time is the best of ``--repeats`` (the median is reported too). The ratio is channels-last time
over contiguous time: under 1 means channels-last is faster.

    python benchmarks/memory_format.py --size 128 --batch 8 --out benchmarks/results/memory_format.json
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, run as a script
from common import write_result  # noqa: E402
from network import synthetic_batch  # noqa: E402

from ctmtl.constants import SHORT_TASKS  # noqa: E402
from ctmtl.losses import MultiTaskLoss  # noqa: E402
from ctmtl.networks import MultiTaskNet, detection_targets  # noqa: E402

STAGES = {"cr": ("class", "recon"), "sr": ("seg", "recon"), "dr": ("det", "recon"), "joint": SHORT_TASKS}
DEMO_DET_KWARGS = {"levels": [1, 2, 3], "cls_loss": "focal", "fpn_channels": 32, "box_loss": "giou", "atss_candidates": 9}


class Stepper:
    """One training step of ``net`` on ``batch`` for ``tasks``, in one memory format."""

    def __init__(self, net: MultiTaskNet, batch: dict, tasks: tuple[str, ...], channels_last: bool) -> None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=fmt).train()
        self.image = batch["image"].contiguous(memory_format=fmt)
        self.batch, self.tasks = batch, tasks
        self.targets = detection_targets(batch) if "det" in tasks else None
        self.loss = MultiTaskLoss()
        self.optimizer = torch.optim.Adam(self.net.parameters(), 1e-4)

    def __call__(self) -> float:
        start = time.perf_counter()
        out = self.net(self.image, tasks=self.tasks, targets=self.targets)
        total, _ = self.loss(out, self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = MultiTaskNet(args.encoder, image_size=(args.size, args.size), encoder_kwargs={"norm": "instance"},
                       class_pool="max", class_dropout=0.0, det_kwargs=DEMO_DET_KWARGS)
    batch = synthetic_batch(args.batch, args.size)
    rows: dict[str, dict] = {}
    for stage, tasks in STAGES.items():
        steppers = {fmt: Stepper(copy.deepcopy(net), batch, tasks, fmt == "channels_last") for fmt in ("contiguous", "channels_last")}
        for stepper in steppers.values():
            stepper()  # warm-up (allocator, oneDNN kernels, anchors)
        times: dict[str, list[float]] = {fmt: [] for fmt in steppers}
        for _ in range(args.repeats):
            for fmt, stepper in steppers.items():
                times[fmt].append(stepper())
        ms = {fmt: [1000 * t for t in ts] for fmt, ts in times.items()}
        rows[stage] = {
            "tasks": list(tasks),
            **{f"{fmt}_ms": min(v) for fmt, v in ms.items()},
            **{f"{fmt}_ms_median": statistics.median(v) for fmt, v in ms.items()},
            "ratio": min(ms["channels_last"]) / min(ms["contiguous"]),
        }
    return {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "rows": rows,
    }


def table(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"encoder {cfg['encoder']} (instance norm, demo RetinaNet), batch {cfg['batch']} x 1 x {cfg['size']} x {cfg['size']}, "
        f"{result['environment']['threads']} CPU threads; training step (forward, backward, Adam): best (median) of {cfg['repeats']}",
        f"{'stage':<8}{'tasks':<28}{'contiguous (ms)':>18}{'channels-last (ms)':>21}{'ratio':>8}",
    ]
    for stage, row in result["rows"].items():
        lines.append(f"{stage:<8}{', '.join(row['tasks']):<28}"
                     f"{row['contiguous_ms']:>9.1f} ({row['contiguous_ms_median']:>6.1f})"
                     f"{row['channels_last_ms']:>12.1f} ({row['channels_last_ms_median']:>6.1f}){row['ratio']:>8.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="small", help="registered encoder name (default small, the demo's)")
    parser.add_argument("--size", type=int, default=128, help="slice height = width, divisible by 32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per format and stage")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_format.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    return write_result(result, table(result), args.out)


if __name__ == "__main__":
    sys.exit(main())
