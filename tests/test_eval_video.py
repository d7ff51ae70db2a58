"""The evaluation episode as a video (issue 22): a CartPole evaluation writes ``eval/episode``
as an animated GIF to TensorBoard, replayed from the evaluated episode's own actions; an env
that cannot render is skipped with one warning and its evaluation goes on."""

from __future__ import annotations

import io
import logging
import sys

import numpy as np
import pytest
from conftest import REPO, small_config

from wm_jax.episode_video import MAX_FRAMES, MAX_SIDE, EpisodeRecorder
from wm_jax.metrics import read_metrics
from wm_jax.trainer import Trainer
from wm_jax.training_eval import evaluate, video_due

if REPO not in sys.path:  # 'experiments.envs.custom:PointMass-v0' imports from the repo root
    sys.path.insert(0, REPO)


def _evaluating_run(workdir, **overrides):
    """An evaluation at env step 64 and nothing trained (the prefill outlasts the run), so no
    update step is compiled: only acting."""
    settings = {
        "total_env_steps": 64,
        "prefill_steps": 10_000,
        "eval_every": 64,
        "eval_video_every": 64,
        "eval_episodes": 2,
        "log_every": 64,
        "checkpoint_every": 0,
        "report": False,
        "diagnostics.open_loop_every": 0,
    }
    config = small_config(**{**settings, **overrides})
    trainer = Trainer(config, str(workdir))
    try:
        trainer.run()
    except BaseException:
        trainer.close()
        raise
    return trainer


def _images(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def test_a_cartpole_evaluation_writes_its_first_episode_as_a_gif_to_tensorboard(tmp_path):
    pytest.importorskip("pygame")
    from PIL import Image

    trainer = _evaluating_run(tmp_path / "run")
    try:
        [video] = _images(tmp_path / "run")["eval/episode"]
        assert video.step == 64 and video.encoded_image_string[:6] == b"GIF89a"
        gif = Image.open(io.BytesIO(video.encoded_image_string))
        assert 2 <= gif.n_frames <= MAX_FRAMES and max(gif.size) <= MAX_SIDE
        assert (gif.width, gif.height) == (video.width, video.height)
        gif.seek(1)
        assert np.asarray(gif.convert("RGB")).std() > 0  # a cart is drawn
        assert [r["eval_return"] for r in read_metrics(tmp_path / "run") if "eval_return" in r]

        # The replay is the evaluated episode: same seed, same actions, same return.
        recorder = EpisodeRecorder("CartPole-v1", {})
        c = trainer.config
        _, _, returns = evaluate(
            c, trainer.act_fn, trainer.state, trainer.normalizer, 2, 7, None, recorder
        )
        clip = recorder.clip()
        assert clip.episode_return == returns[0]
        assert clip.frames.shape[0] == -(-(int(returns[0]) + 1) // clip.every)  # every k-th
    finally:
        trainer.close()


def test_an_env_that_cannot_render_is_skipped_with_one_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    env_id = "experiments.envs.custom:PointMass-v0"  # render_modes: []
    trainer = _evaluating_run(tmp_path / "run", env_id=env_id, eval_every=32, eval_video_every=32)
    trainer.close()
    rows = [r for r in read_metrics(tmp_path / "run") if "eval_return_std" in r]
    assert [r["env_step"] for r in rows] == [32, 64]  # both evaluations ran
    assert "eval/episode" not in _images(tmp_path / "run")
    warnings = [r for r in caplog.records if "no evaluation video" in r.getMessage()]
    assert len(warnings) == 1 and "eval_video_every=0" in warnings[0].getMessage()
    recorder = EpisodeRecorder("gymnax:CartPole-v1", {})
    recorder.begin(trainer.spec, 0)
    assert recorder.clip() is None and not recorder.available  # gymnax: no renderer


def test_the_video_schedule_is_the_first_evaluation_after_each_multiple():
    # eval every 2500, video every 10000: 10000, 20000 (not 12500); 0 turns it off.
    due = [s for s in range(2500, 30_001, 2500) if video_due(10_000, 2500, s)]
    assert due == [10_000, 20_000, 30_000]
    assert [s for s in range(3000, 30_001, 3000) if video_due(10_000, 3000, s)] == [
        12_000,
        21_000,
        30_000,
    ]
    assert not any(video_due(0, 2500, s) for s in range(2500, 30_001, 2500))
