"""The multi-task trainer: staged plans carry weights, resume ends with the same epochs, seeds reproduce."""

from __future__ import annotations

import math

import pytest
from ignite.engine import Events
import torch
from torch.utils.data import Dataset

from ctmtl.engines.stages import Stage, build_plan
from ctmtl.engines.trainer import MultiTaskEvaluator, MultiTaskTrainer, attach_checkpointing, latest_checkpoint
from ctmtl.errors import ConfigError
from ctmtl.losses import MultiTaskLoss
from ctmtl.networks import MultiTaskNet

SIZE = 32


class DiskDataset(Dataset):
    """Bright disks on noise, per the per-sample contract; odd samples carry a class, even ones a mask."""

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        self.items = []
        for i in range(n):
            cy, cx = torch.randint(8, SIZE - 8, (2,), generator=g).tolist()
            r = 3 + i % 4
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).long()[None]
            image = (0.2 * torch.rand(1, SIZE, SIZE, generator=g) + 0.6 * mask).float()
            sample = {"image": image, "meta": {"entry_id": f"s{i}", "dataset": "toy"}}
            if i % 2:
                sample["class"] = torch.tensor(int(r > 4))
                sample["tasks"] = {"class": True, "seg": False, "recon": True, "det": False}
            else:
                sample["mask"] = mask
                sample["tasks"] = {"class": False, "seg": True, "recon": True, "det": False}
            self.items.append(sample)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def sample_info(self, i: int) -> dict:
        return {"tasks": {t for t, v in self.items[i]["tasks"].items() if v}, "dataset": "toy"}


def _make(tmp_path, plan="staged", epochs=2, seed=0, patience=None, stages=None, ema_momentum=None, channels_last=False):
    torch.manual_seed(seed)
    net = MultiTaskNet("small", tasks=("class", "seg", "recon"), num_classes=2, image_size=(SIZE, SIZE), det_head=None)
    data = DiskDataset()
    from ctmtl.data.pipeline import multitask_collate

    val = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=multitask_collate)
    evaluator = MultiTaskEvaluator("cpu", val, net, tasks=("class", "recon"), metrics_kwargs={"class": {"class_names": ("a", "b")}},
                                   channels_last=channels_last)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    trainer = MultiTaskTrainer(
        "cpu", net, optimizer, MultiTaskLoss(), data, stages=stages or plan, epochs=epochs, evaluator=evaluator,
        batch_size=4, out_dir=tmp_path, seed=seed, patience=patience, ema_momentum=ema_momentum,
        channels_last=channels_last,
    )
    return trainer


def test_build_plan_named_and_filtered():
    stages = build_plan("staged", epochs=[1, 2, 3], tasks=("class", "seg", "recon"))
    assert [s.name for s in stages] == ["cr", "sr"]
    assert [s.epochs for s in stages] == [1, 2]
    assert stages[1].key_metric == "seg_dice"
    with pytest.raises(ConfigError, match="unknown training plan"):
        build_plan("nope")
    with pytest.raises(ConfigError, match="3 stages"):
        build_plan("staged", epochs=[1, 2])


def test_build_plan_list_names_the_bad_stage():
    stages = build_plan([{"name": "a", "tasks": ["seg"], "epochs": 2}, {"name": "b", "tasks": ["class"], "epochs": 1}])
    assert [(s.name, s.epochs) for s in stages] == [("a", 2), ("b", 1)]
    with pytest.raises(ConfigError, match=r"plan stage 1 \('b'\): missing \['epochs'\]"):
        build_plan([{"name": "a", "tasks": ["seg"], "epochs": 2}, {"name": "b", "tasks": ["class"]}])
    with pytest.raises(ConfigError, match=r"unknown keys \['epoch'\]"):
        build_plan([{"name": "a", "tasks": ["seg"], "epoch": 2}])
    with pytest.raises(ConfigError, match="plan stage 0: expected a dict"):
        build_plan(["seg"])


def test_a_stage_with_fewer_batches_after_a_longer_one_runs_all_its_epochs(tmp_path):
    """Ignite's own end-of-run test (iteration >= epoch_length * max_epochs) assumes one epoch length; stage "a"
    (8 samples, 2 batches per epoch) followed by stage "b" (the 4 masked samples, 1 batch) must still run 2 + 6."""
    stages = [{"name": "a", "tasks": ["recon"], "epochs": 2}, {"name": "b", "tasks": ["seg"], "epochs": 6}]
    trainer = _make(tmp_path, stages=stages)
    trainer.run()
    assert [row["stage"] for row in trainer.history] == ["a"] * 2 + ["b"] * 6
    assert trainer.state.epoch == 8 and trainer.state.iteration == 2 * 2 + 6 * 1
    assert (tmp_path / "model.pt").is_file()


def test_staged_training_carries_encoder_weights(tmp_path):
    trainer = _make(tmp_path, epochs=1)
    seen = {}

    def snapshot(engine):
        stage = engine.stage_at(engine.state.epoch)
        seen.setdefault(stage.name, {k: v.clone() for k, v in engine.network.encoder.state_dict().items()})

    trainer.add_event_handler(Events.EPOCH_STARTED, snapshot)
    trainer.run()
    best_cr = {k[len("encoder."):]: v for k, v in trainer.best_weights["cr"].items() if k.startswith("encoder.")}
    assert set(seen) == {"cr", "sr"}
    for k, v in best_cr.items():
        assert torch.equal(seen["sr"][k], v), k
    assert (tmp_path / "best_cr.pt").is_file() and (tmp_path / "model.pt").is_file()
    rows = [r["stage"] for r in trainer.history]
    assert rows == ["cr", "sr"]
    assert "seg_dice" in trainer.history[1]["val"] and "class_accuracy" in trainer.history[0]["val"]


def test_fresh_stage_does_not_carry_weights(tmp_path):
    stages = [Stage("cr", ("class", "recon"), 1), Stage("sr", ("seg", "recon"), 1, init="fresh")]
    trainer = _make(tmp_path, stages=stages)
    initial = {k: v.clone() for k, v in trainer.network.encoder.state_dict().items()}
    seen = {}

    def snapshot(engine):
        if engine.state.epoch == 2:
            seen.update({k: v.clone() for k, v in engine.network.encoder.state_dict().items()})

    trainer.add_event_handler(Events.EPOCH_STARTED, snapshot)
    trainer.run()
    assert all(torch.equal(seen[k], initial[k]) for k in initial)
    best_cr = trainer.best_weights["cr"]
    assert any(not torch.equal(seen[k], best_cr["encoder." + k]) for k in seen)


def test_resume_after_interruption_ends_with_same_epochs(tmp_path):
    ckpt = tmp_path / "ckpt"
    trainer = _make(tmp_path, epochs=2)
    attach_checkpointing(trainer, ckpt)

    def interrupt(engine):
        if engine.state.epoch == 3:  # inside epoch 3, before its end-of-epoch checkpoint
            raise KeyboardInterrupt  # killed mid-epoch

    trainer.add_event_handler(Events.ITERATION_COMPLETED, interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert latest_checkpoint(ckpt) is not None
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        attach_checkpointing(_make(tmp_path, epochs=2), ckpt)

    resumed = _make(tmp_path, epochs=2)
    attach_checkpointing(resumed, ckpt, resume=True)
    resumed.run()
    assert resumed.state.epoch == 4
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["stage"] for r in resumed.history] == ["cr", "cr", "sr", "sr"]


def test_checkpoint_killed_while_saving_leaves_the_previous_one(tmp_path, monkeypatch):
    """A process killed while writing a checkpoint must not leave a truncated newest checkpoint behind: the last
    complete one stays the one ``--resume`` reads, and the resumed run ends with the planned epochs."""
    ckpt = tmp_path / "ckpt"
    trainer = _make(tmp_path, epochs=2)
    attach_checkpointing(trainer, ckpt)
    real_save = torch.save

    def killed_in_epoch_2(obj, f, *args, **kwargs):
        if trainer.state.epoch == 2 and isinstance(obj, dict) and "trainer" in obj:
            out = f if hasattr(f, "write") else open(f, "wb")  # a saver may hand a path or an open file
            out.write(b"PK\x03\x04 half a checkpoint")  # the first bytes of a zip file, then the kill
            out.flush()
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(torch, "save", real_save)
    last = latest_checkpoint(ckpt)
    assert last is not None and last.name.endswith("epoch=1.pt")
    assert torch.load(last, map_location="cpu", weights_only=False)["trainer"]["iteration"] == trainer.state.epoch_length
    resumed = _make(tmp_path, epochs=2)
    attach_checkpointing(resumed, ckpt, resume=True)
    resumed.run()
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        attach_checkpointing(_make(tmp_path), tmp_path / "none", resume=True)


def test_same_seed_same_metrics(tmp_path):
    runs = []
    for i in range(2):
        trainer = _make(tmp_path / str(i), plan="joint", epochs=2, seed=3)
        trainer.run()
        runs.append(trainer.history[-1]["val"])
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        a, b = runs[0][k], runs[1][k]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6), k


def test_a_stage_starts_at_its_own_learning_rate(tmp_path):
    """A stage's ``lr`` sets the rate it starts at; the next stage without one goes back to the optimizer's."""
    stages = [Stage("cr", ("class", "recon"), 1), Stage("joint", ("class", "seg", "recon"), 2, lr=1e-4),
              Stage("sr", ("seg", "recon"), 1)]
    trainer = _make(tmp_path, stages=stages)
    trainer.run()
    assert [(r["stage"], r["lr"]) for r in trainer.history] == [("cr", 1e-3), ("joint", 1e-4), ("joint", 1e-4), ("sr", 1e-3)]
    with pytest.raises(ConfigError, match="stage 'joint': lr must be a positive number, got 0"):
        Stage("joint", ("class",), 1, lr=0)
    with pytest.raises(ConfigError, match="lr must be a positive number, got 'fast'"):
        build_plan([{"name": "a", "tasks": ["seg"], "epochs": 1, "lr": "fast"}])


def test_early_stop_ends_stage_not_run(tmp_path):
    # the sample count never improves: the stage stops after its second validation
    stages = [Stage("cr", ("class", "recon"), 4, key_metric="class_n"), Stage("sr", ("seg", "recon"), 2)]
    trainer = _make(tmp_path, stages=stages, patience=1)
    trainer.run()
    names = [r["stage"] for r in trainer.history]
    assert names == ["cr", "cr", "sr", "sr"]  # the run went on with the next stage
    assert trainer.stage_state["cr"]["stopped_early_at"] == 2
    assert trainer.state.epoch == trainer.state.max_epochs == 4


def test_joint_stage_keys_on_the_mean_of_its_tasks():
    stages = build_plan("staged_joint", epochs=1)
    assert [s.name for s in stages] == ["cr", "sr", "dr", "joint"]
    joint = stages[-1]
    assert joint.key_metric == "mean"
    assert joint.key_value({"class_accuracy": 0.9, "seg_dice": 0.6, "det_ap50": 0.3, "recon_psnr": 30.0}) == pytest.approx(0.6)
    assert joint.key_value({"class_accuracy": 0.8}) == pytest.approx(0.8)  # absent metrics are left out
    assert math.isnan(joint.key_value({}))
    assert stages[0].key_value({"class_accuracy": 0.7, "seg_dice": 0.1}) == pytest.approx(0.7)
    # a network without detection keeps the mean over what is left
    no_det = build_plan("staged_joint", epochs=1, tasks=("class", "seg", "recon"))
    assert [s.name for s in no_det] == ["cr", "sr", "joint"] and no_det[-1].key_metric == "mean"


def test_weight_average_is_validated_kept_and_handed_on(tmp_path):
    """With ``ema_momentum`` m, one iteration averages the stage's start weights w0 and the stepped ones w1 as
    (1 - m) w0 + m w1: those are validated, kept as the stage's best and loaded by the next stage, while training
    itself goes on from w1. Each stage's average starts from the weights the stage starts with (stage "c" starts
    fresh: its average must not hold stage "a"'s)."""
    m = 0.25
    stages = [Stage(name, ("recon",), 1, key_metric="recon_psnr", init=init)
              for name, init in (("a", "previous"), ("b", "previous"), ("c", "fresh"))]
    trainer = _make(tmp_path, stages=stages, ema_momentum=m)
    trainer.train_dataset.items = trainer.train_dataset.items[:4]  # one batch: one iteration per epoch
    trainer._loaders.clear()
    trainer.set_data(trainer._loader(trainer.stages[0]))
    start, end = {}, {}
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: start.setdefault(e.state.epoch, {
        k: v.clone() for k, v in e.network.state_dict().items()}))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: end.setdefault(e.state.epoch, {
        k: v.clone() for k, v in e.network.state_dict().items()}))  # after the trainer's own handler: w1 is back
    trainer.run()
    params = dict(trainer.network.named_parameters())
    for epoch, name in ((1, "a"), (3, "c")):
        w0, w1, best = start[epoch], end[epoch], trainer.best_weights[name]
        moved = [k for k in params if not torch.equal(w0[k], w1[k])]
        assert moved  # the step changed weights
        for k in moved:
            assert torch.allclose(best[k], (1 - m) * w0[k] + m * w1[k], atol=1e-6), (name, k)
        buffers = [k for k in w0 if k not in params and w0[k].is_floating_point() and not torch.equal(w0[k], w1[k])]
        assert buffers and all(torch.equal(best[k], w1[k]) for k in buffers)  # norm statistics: the latest ("copy")
    assert all(torch.equal(start[2][k], v) for k, v in trainer.best_weights["a"].items())  # b starts from a's average
    assert not all(torch.equal(start[2][k], end[1][k]) for k in params)  # ... not from a's last weights
    assert torch.equal(torch.load(tmp_path / "best_a.pt")[moved[0]], trainer.best_weights["a"][moved[0]])


def test_weight_average_checks_its_momentum(tmp_path):
    with pytest.raises(ConfigError, match=r"ema_momentum must be in \[0, 1\)"):
        _make(tmp_path, ema_momentum=1.5)
    with pytest.raises(ConfigError, match=r"ema_momentum must be in \[0, 1\).*got 'fast'"):
        _make(tmp_path, ema_momentum="fast")
    assert _make(tmp_path, ema_momentum=0).ema is None and _make(tmp_path).ema is None


def test_weight_average_is_in_the_resume_checkpoint(tmp_path):
    trainer = _make(tmp_path, epochs=1, ema_momentum=0.1)
    attach_checkpointing(trainer, tmp_path / "ckpt")
    trainer.run()
    checkpoint = torch.load(latest_checkpoint(tmp_path / "ckpt"), map_location="cpu", weights_only=False)
    saved, average = checkpoint["ema"], trainer.ema.ema_model.state_dict()
    assert saved.keys() == average.keys() and all(torch.equal(saved[k], average[k]) for k in average)
    assert not all(torch.equal(saved[k], v) for k, v in checkpoint["network"].items())  # beside the own weights

    resumed = _make(tmp_path, epochs=1, ema_momentum=0.1)
    attach_checkpointing(resumed, tmp_path / "ckpt", resume=True)
    resumed.run()  # nothing left to train: the checkpoint is loaded and the run ends
    assert all(torch.equal(resumed.ema.ema_model.state_dict()[k], average[k]) for k in average)


def test_channels_last_trains_the_same_model(tmp_path):
    """``channels_last``: the network and every batch it sees are NHWC, in training and validation, on the CPU too;
    the run's history and saved weights match a contiguous run up to float summation order, and the weights load
    into a contiguous network that answers the same."""
    seen = []
    runs = {}
    for fmt in ("contiguous", "channels_last"):
        trainer = _make(tmp_path / fmt, plan="joint", epochs=2, seed=5, channels_last=fmt == "channels_last")
        conv = [m for m in trainer.network.encoder.modules() if isinstance(m, torch.nn.Conv2d)][1]  # 8 channels in
        conv.register_forward_pre_hook(lambda module, args: seen.append((args[0].is_contiguous(),
                                       args[0].is_contiguous(memory_format=torch.channels_last))))
        trainer.run()
        runs[fmt] = trainer
    n = len(seen) // 2
    assert n > 0 and all(c and not nhwc for c, nhwc in seen[:n])  # an encoder conv's input: NCHW
    assert all(nhwc and not c for c, nhwc in seen[n:])  # NHWC in every training and validation batch
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = (runs[f].history for f in ("contiguous", "channels_last"))
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-3, abs=1e-4)
    saved = torch.load(tmp_path / "channels_last" / "model.pt", weights_only=True)
    plain = MultiTaskNet("small", tasks=("class", "seg", "recon"), num_classes=2, image_size=(SIZE, SIZE), det_head=None)
    plain.load_state_dict(saved)
    x = torch.rand(2, 1, SIZE, SIZE)
    runs["channels_last"].network.eval()
    plain.eval()
    with torch.no_grad():
        out, ref = plain(x), runs["channels_last"].network(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out["seg"], ref["seg"], atol=1e-5) and torch.allclose(out["class"], ref["class"], atol=1e-5)
