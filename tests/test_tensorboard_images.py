"""TensorBoard images (issue 22): the metric writers' ``write_image`` and the open-loop check's
image at each check (the strip for image observations, the trajectories for vectors)."""

from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest

from wm_jax.metrics import MetricsWriter
from wm_jax.shell import NoWriter, record_open_loop


def _events(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return events


def _must_not_render():
    raise AssertionError("rendered an image that nothing writes")


def test_write_image_goes_to_tensorboard_only_and_reads_back(tmp_path):
    from PIL import Image

    image = np.zeros((6, 10, 3), np.uint8)
    image[:, :5, 0] = 255  # left half red
    writer = MetricsWriter(str(tmp_path))
    try:
        writer.write(8, {"loss": 1.0})
        writer.write_image("open_loop/strip", image, 8)
        writer.write_image("open_loop/strip", lambda: image[::-1], 16)  # rendered on demand
        with pytest.raises(ValueError, match="no group"):
            writer.write_image("strip", image, 8)
        with pytest.raises(ValueError, match="uint8"):
            writer.write_image("open_loop/strip", image.astype(np.float32), 8)
    finally:
        writer.close()
    events = _events(tmp_path)
    assert events.Tags()["images"] == ["open_loop/strip"]
    written = events.Images("open_loop/strip")
    assert [e.step for e in written] == [8, 16]
    assert (written[0].width, written[0].height) == (10, 6)
    decoded = np.asarray(Image.open(io.BytesIO(written[0].encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, image)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_step"] for r in rows] == [8]  # metrics.jsonl stays scalars


def test_writers_that_write_no_tensorboard_render_nothing(tmp_path):
    NoWriter().write_image("open_loop/trajectories", _must_not_render, 1)  # processes > 0
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    try:
        writer.write_image("open_loop/trajectories", _must_not_render, 1)
    finally:
        writer.close()
    assert not (tmp_path / "tensorboard").exists()


class _Recorder:
    def __init__(self):
        self.images = []

    def write_image(self, tag, image, step):
        image = image() if callable(image) else image
        self.images.append((tag, np.asarray(image), step))


def _check(obs, horizon):
    b = obs.shape[0]
    mask = np.ones((b, horizon), np.float32)
    mask[0, -2:] = 0  # the first window's episode ended early
    windows = types.SimpleNamespace(obs=obs, mask=mask)
    out = {
        "obs_error_by_step": np.linspace(0.1, 1.0, horizon),
        "state_error_by_step": np.linspace(0.1, 1.0, horizon),
        "valid_by_step": np.ones(horizon),
        "pred_obs": np.zeros(obs[:, 1:].shape, np.float32),
    }
    return out, windows


@pytest.mark.parametrize("kind", ["vector", "image"])
def test_each_open_loop_check_writes_its_image_at_its_step(tmp_path, kind):
    rng = np.random.default_rng(0)
    horizon = 6
    if kind == "vector":  # CartPole-like: the report's predicted-vs-true trajectories
        obs = rng.normal(size=(4, horizon + 1, 4)).astype(np.float32)
        mean, std, tag = np.zeros(4, np.float32), np.ones(4, np.float32), "open_loop/trajectories"
    else:  # images: the PNG strip, the same pixels in TensorBoard
        obs = rng.integers(0, 256, size=(3, horizon + 1, 8, 8, 1), dtype=np.uint8)
        mean, std, tag = np.zeros(()), np.ones(()), "open_loop/strip"
    out, windows = _check(obs, horizon)
    recorder = _Recorder()
    summary = record_open_loop(out, windows, mean, std, 96, str(tmp_path), recorder)
    assert np.isfinite(summary["open_loop_error_mean"])
    [(written_tag, image, step)] = recorder.images
    assert (written_tag, step) == (tag, 96)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 0  # something is drawn
    if kind == "image":
        from PIL import Image

        lines = (tmp_path / "open_loop.jsonl").read_text().splitlines()
        check = json.loads(lines[0])
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / check["strip"])), image)
    else:
        assert image.shape[0] <= 400 and image.shape[1] <= 720  # a small figure
    # No writer (tests, callers without one): the same record, nothing rendered.
    record_open_loop(out, windows, mean, std, 128, str(tmp_path))
