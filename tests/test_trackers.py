"""Experiment trackers through accelerate (train.log_with): TensorBoard event files hold the scalars, the
evaluation and the sample grids (the same pixels as samples/step-N.png), a resumed run's TensorBoard keeps one
value per step, a tracker registered with accelerate or passed as a GeneralTracker instance receives the config,
the numbers and the images, and an unknown or missing tracker is refused in one line before the run folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from accelerate.tracking import GeneralTracker, register_tracker_class
from PIL import Image

from versadiff.config import ConfigError, load_config
from versadiff.train.logging import TRACKER_PACKAGES, StatsLogger, check_trackers, tracker_names
from versadiff.train.trainer import Trainer

TINY = [
    "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
    "model.attention_resolutions=[16]", "model.emb_channels=32", "data.size=16", "train.batch_size=8",
    "train.log_every=1", "train.sample_every=2", "train.warmup_steps=1", "train.ema_decay=0.5",
    "train.mixed_precision=no", "sample.n=4", "sample.steps=2", "sample.guidance=0", "train.max_steps=4",
    "train.checkpoint_every=2",
]


def tiny(*extra: str):
    return load_config("shapes_unet_tiny", TINY + list(extra))


def _events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run / "tensorboard" / "shapes_unet_tiny"
    ea = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


class Recorder(GeneralTracker):
    """Keeps what accelerate hands a tracker (registered by name, or passed as an instance)."""

    name = "recorder"
    requires_logging_directory = False
    made: list["Recorder"] = []

    def __init__(self, run_name: str = "", **kwargs) -> None:
        super().__init__()
        self.run_name, self.kwargs = run_name, kwargs
        self.config: dict = {}
        self.scalars: list[tuple[int, dict]] = []
        self.images: list[tuple[int, str, np.ndarray]] = []
        self.finished = False
        Recorder.made.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.scalars.append((step, dict(values)))

    def log_images(self, values: dict, step: int | None = None, **kwargs) -> None:
        for key, images in values.items():
            for im in images:
                self.images.append((step, key, np.asarray(im)))

    def finish(self) -> None:
        self.finished = True


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_tensorboard_events_hold_scalars_evaluation_and_grids(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny("train.eval_every=2", "train.eval_n=4", "train.eval_options={ref_n: 16}"), out=run,
            quiet=True).run()
    ea = _events(run)
    tags = ea.Tags()
    assert {"loss", "lr", "grad_norm", "eval/shapes_fd", "eval/shapes_acc"} <= set(tags["scalars"])
    losses = {e.step: e.value for e in ea.Scalars("loss")}
    stats = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert losses == pytest.approx({s["step"]: s["loss"] for s in stats if "loss" in s}, rel=1e-6)
    fd = {e.step: e.value for e in ea.Scalars("eval/shapes_fd")}
    assert fd == pytest.approx({s["step"]: s["eval/shapes_fd"] for s in stats if "eval/shapes_fd" in s}, rel=1e-6)
    assert "samples" in tags["images"]
    images = {e.step: e for e in ea.Images("samples")}
    assert sorted(images) == [2, 4]
    for step, ev in images.items():
        got = np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)).convert("RGB"))
        assert np.array_equal(got, _png(run / "samples" / f"step-{step:08d}.png"))  # the grid, pixel for pixel


def test_a_resumed_run_keeps_one_tensorboard_value_per_step(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny(), out=run, quiet=True).run(until=3)  # killed after step 3; the last checkpoint is step 2
    Trainer(None, out=run, resume=True, quiet=True).run()
    steps = [e.step for e in _events(run).Scalars("loss")]
    assert steps == [1, 2, 3, 4]  # the step-3 value of the killed session was purged, not doubled


def test_registered_and_instance_trackers_receive_config_numbers_and_images(tmp_path):
    register_tracker_class(Recorder)
    Recorder.made.clear()
    given = Recorder("given")
    run = tmp_path / "run"
    Trainer(tiny("train.log_with=recorder", "train.log_kwargs={recorder: {tag: demo}}"), out=run, quiet=True,
            trackers=[given]).run()
    by_name = next(r for r in Recorder.made if r is not given)
    assert by_name.run_name == "shapes_unet_tiny" and by_name.kwargs == {"tag": "demo"}
    for rec in (by_name, given):
        assert rec.finished
        assert rec.config["train.lr"] == pytest.approx(1e-3) and rec.config["model.num_classes"] == 18
        steps = [s for s, v in rec.scalars if "loss" in v]
        assert steps == [1, 2, 3, 4]
        assert all(isinstance(x, (int, float)) for _, v in rec.scalars for x in v.values())  # numbers only
        assert [(s, k) for s, k, _ in rec.images] == [(2, "samples"), (4, "samples")]
        assert np.array_equal(rec.images[-1][2], _png(run / "samples" / "step-00000004.png"))
    assert not (run / "tensorboard").exists()  # log_with names only the recorder


def test_log_with_none_writes_only_stats_jsonl(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny("train.log_with=none", "train.sample_every=0", "train.max_steps=2"), out=run, quiet=True).run()
    assert not (run / "tensorboard").exists()
    assert len(StatsLogger.entries(run / "stats.jsonl")) == 2


def test_tracker_names_and_unknown_or_missing_trackers(tmp_path):
    assert tracker_names("tensorboard, wandb,tensorboard") == ["tensorboard", "wandb"]
    assert tracker_names("none") == tracker_names([]) == []
    with pytest.raises(ConfigError, match=r"train.log_with: unknown tracker 'tensorbord'; choose from .*tensorboard"):
        Trainer(tiny("train.log_with=tensorbord"), out=tmp_path / "a", quiet=True)
    assert not (tmp_path / "a").exists()
    from accelerate.utils import imports

    missing = [n for n in TRACKER_PACKAGES if not getattr(imports, f"is_{n}_available")()]
    if missing:
        with pytest.raises(ConfigError, match=rf"{missing[0]} is not installed \(pip install "):
            check_trackers([missing[0]])
