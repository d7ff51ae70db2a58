"""One metric writer, several sinks (issue 22): metrics.jsonl, TensorBoard and Weights & Biases
get the same rows through the same calls; W&B runs offline into the workdir here (never a
server) and a resumed run continues the same W&B run."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import small_config

from wm_jax import config as config_module
from wm_jax.config import ConfigError, check_wandb_installed, validate
from wm_jax.episode_video import Clip, encode_gif
from wm_jax.metric_sinks import tensorboard_tag, wandb_names
from wm_jax.metrics import MetricsWriter, read_metrics

ROWS = [(8, {"world_model_loss": 1.5, "phase": "warmup"}), (16, {"eval_return": 9.0})]


def _clip() -> Clip:
    frames = np.zeros((3, 6, 8, 3), np.uint8)
    frames[1, :, :4] = 255
    frames[2, :, 4:, 1] = 255
    return Clip(frames, encode_gif(frames, 10.0), 10.0, 3.0, 1)


class _Recorder:
    """A sink of the interface that remembers every call."""

    def __init__(self):
        self.calls = []

    def write(self, step, record):
        self.calls.append(("write", step, dict(record)))

    def write_text(self, tag, text, step):
        self.calls.append(("text", tag, step))

    def write_image(self, tag, image, step):
        self.calls.append(("image", tag, step))

    def write_video(self, tag, video, step):
        self.calls.append(("video", tag, step))

    def close(self):
        self.calls.append(("close",))


def test_every_sink_gets_the_same_rows_media_and_close():
    a, b = _Recorder(), _Recorder()
    writer = MetricsWriter("/tmp/unused_by_custom_sinks", sinks=[a, b])
    for step, row in ROWS:
        written = writer.write(step, row)
        assert written["env_step"] == step and written[next(iter(row))] == next(iter(row.values()))
    writer.write_image("open_loop/strip", np.zeros((4, 4, 3), np.uint8), 16)
    writer.write_video("eval/episode", _clip(), 16)
    writer.write_text("config", "x")
    writer.close()
    assert a.calls == b.calls
    assert [c[0] for c in a.calls] == ["write", "write", "image", "video", "text", "close"]
    assert a.calls[0][2]["world_model_loss"] == 1.5 and "wall_time_s" in a.calls[0][2]


def _wandb_records(path):
    """The protobuf records of one ``.wandb`` file (a leveldb-style log: 7-byte header, then
    per chunk a 4-byte checksum, 2-byte length, 1-byte kind, in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, parts, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
    return records


def _wandb_history(workdir):
    """``(run record, history rows)`` of every offline W&B run under ``workdir``.  wandb's own
    process writes the file: wait for its ``exit`` record (written once the run finished)."""
    runs = []
    for path in sorted(glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        deadline = time.monotonic() + 60
        while True:
            records = _wandb_records(path)
            kinds = [r.WhichOneof("record_type") for r in records]
            if "exit" in kinds or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        [run] = [r.run for r, k in zip(records, kinds, strict=True) if k == "run"]
        rows = []
        for record, kind in zip(records, kinds, strict=True):
            if kind == "history":
                items = {"/".join(i.nested_key) or i.key: i.value_json for i in record.history.item}
                rows.append({k: json.loads(v) for k, v in items.items()})
        runs.append((run, rows))
    return runs


def test_wandb_offline_gets_the_rows_metrics_jsonl_and_tensorboard_get(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: never a server
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = small_config(**{"wandb.enabled": True, "wandb.project": "tests"})
    workdir = tmp_path / "cartpole_run"
    writer = MetricsWriter(str(workdir), config=config)
    try:
        for step, row in ROWS:
            writer.write(step, row)
        writer.write_image("open_loop/strip", np.full((4, 6, 3), 200, np.uint8), 16)
        writer.write_video("eval/episode", _clip(), 16)
    finally:
        writer.close()
    jsonl = {r["env_step"]: r for r in read_metrics(workdir)}
    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    [(run, history)] = _wandb_history(workdir)
    assert run.display_name == "cartpole_run" and run.project == "tests"
    stored_id = json.loads((workdir / "wandb_run.json").read_text())["id"]
    assert run.run_id == stored_id
    config_json = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config_json["model"]["hidden_dim"] == 32 and config_json["wandb"]["mode"] == "offline"
    by_step = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    for step, row in ROWS:
        for name, value in row.items():
            if isinstance(value, str):
                continue  # strings stay in metrics.jsonl
            tag = tensorboard_tag(name)
            assert jsonl[step][name] == value
            assert [(e.step, e.value) for e in events.Scalars(tag)] == [(step, value)]
            assert by_step[step][tag] == value
        assert by_step[step]["train/wall_time_s"] == jsonl[step]["wall_time_s"]
    assert by_step[16]["open_loop/strip/_type"] == "image-file"
    assert by_step[16]["eval/episode/_type"] == "video-file"
    assert events.Images("eval/episode")[0].encoded_image_string[:6] == b"GIF89a"

    # A resumed run (same workdir) continues the same W&B run.
    writer = MetricsWriter(str(workdir), config=config)
    try:
        writer.write(24, {"world_model_loss": 1.0})
    finally:
        writer.close()
    runs = _wandb_history(workdir)
    assert len(runs) == 2 and {r.run_id for r, _ in runs} == {stored_id}
    assert runs[1][1][-1]["world_model/world_model_loss"] == 1.0


def test_wandb_run_names_group_the_seeds_of_one_experiment():
    assert wandb_names("/runs/acro3/seed_1") == ("acro3/seed_1", "acro3")
    assert wandb_names("/runs/cartpole/") == ("cartpole", None)


@pytest.mark.parametrize(
    "field, value",
    [
        ("wandb.mode", "cloud"),
        ("wandb.project", ""),
        ("wandb.project", "team/project"),
        ("eval_video_every", -1),
        ("offline.eval_every", -5),
        ("offline.eval_video_every", -1),
    ],
)
def test_bad_logging_fields_are_rejected_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"config.{field}:"):
        validate(small_config(**{field: value}))


def test_wandb_enabled_without_wandb_installed_names_the_install_command(monkeypatch):
    import importlib.util

    config = small_config(**{"wandb.enabled": True})
    validate(config)  # a saved run's config loads without wandb
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install -e \.\[wandb\]"):
        check_wandb_installed(config)
    check_wandb_installed(small_config())  # off: wandb is never needed
    assert config_module.get_config().wandb.enabled is False
    assert config_module.get_config().wandb.mode == "offline"


_TORCH_PROBE = """
import glob, sys
from wm_jax.metric_sinks import TensorBoardSink
sink = TensorBoardSink(sys.argv[1])
sink.write(1, {"eval_return": 9.0})
sink.close()
loaded_by_sink = "torch" in sys.modules
import torch  # the stand-in below: importable again once the sink is made
print(loaded_by_sink, torch.MARK, len(glob.glob(sys.argv[1] + "/tensorboard/events.*")))
"""


def test_the_tensorboard_sink_does_not_import_torch_and_leaves_it_importable(tmp_path):
    # A stand-in torch on the path, so the test means the same with or without the bench extra:
    # tensorboardX imports whatever "torch" it finds at module level (seconds of start-up).
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'stand-in'\nTensor = object\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), os.getcwd()]))
    out = subprocess.run(
        [sys.executable, "-c", _TORCH_PROBE, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "stand-in", "1"]
