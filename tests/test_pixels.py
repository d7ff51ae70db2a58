"""Image observations end to end: CNN shapes, uint8 storage, no running normalisation of images,
pixel wrappers, a CLI run on gymnax Catch from pixels, and the open-loop video strip."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, make_spec, small_config
from PIL import Image

from wm_jax.device_loop import (
    DeviceLoop,
    make_task,
    replay_add,
    replay_init,
    replay_sample_flat,
    replay_sample_sequences,
)
from wm_jax.envs import VectorEnv, make_env_spec, pixel_size
from wm_jax.networks import CNNDecoder, CNNEncoder, build_networks
from wm_jax.normalizer import RunningMeanStd, normalize
from wm_jax.open_loop_video import strip_image, to_rgb
from wm_jax.replay import ReplayBuffer
from wm_jax.trainer import Trainer

CATCH = "gymnax:Catch-bsuite"


# ------------------------------------------------------------------------------ CNN shapes


@pytest.mark.parametrize("shape", [(64, 64, 3), (10, 10, 4)])
@pytest.mark.parametrize("layers", [1, 4])
def test_cnn_round_trip_shapes_with_uint8_input(shape, layers):
    images = jnp.zeros((2, 3, *shape), jnp.uint8)  # [B, T] leading axes survive
    enc = CNNEncoder(feature_dim=16, depth=4, max_layers=layers)
    # Shapes only: eval_shape traces without running the convolutions.
    features, _ = jax.eval_shape(enc.init_with_output, jax.random.PRNGKey(0), images)
    assert features.shape == (2, 3, 16) and features.dtype == jnp.float32
    dec = CNNDecoder(shape, depth=4, max_layers=layers)
    recon, _ = jax.eval_shape(dec.init_with_output, jax.random.PRNGKey(1), jnp.zeros((2, 3, 8)))
    assert recon.shape == (2, 3, *shape) and recon.dtype == jnp.float32


def test_uint8_images_are_scaled_by_the_encoder_on_the_device():
    images = np.random.default_rng(0).integers(0, 256, (2, 10, 10, 4), dtype=np.uint8)
    enc = CNNEncoder(feature_dim=8, depth=2, max_layers=2)
    params = enc.init(jax.random.PRNGKey(0), images)
    apply = jax.jit(enc.apply)
    # uint8 [0, 255] is read as float [-0.5, 0.5]: the same features as the scaled floats,
    # and different ones from the raw values cast to float.
    features = apply(params, images)
    scaled = images.astype(np.float32) / 255.0 - 0.5
    np.testing.assert_allclose(apply(params, scaled), features, rtol=1e-5, atol=1e-5)
    assert not np.allclose(apply(params, images.astype(np.float32)), features, atol=1e-3)


def test_cnn_layers_config_sets_encoder_and_decoder_depth():
    spec = make_spec(obs_shape=(10, 5, 1), action_dim=3, obs_dtype=np.uint8)
    nets = build_networks(small_config(**{"model.cnn_layers": 2}), spec)
    assert nets.world_model.encoder.max_layers == nets.world_model.decoder.max_layers == 2


# ------------------------------------------------------- gymnax boards become uint8 images


def test_gymnax_boards_become_uint8_images_identically_in_both_loops():
    for env_id, shape in ((CATCH, (10, 5, 1)), ("gymnax:Breakout-MinAtar", (10, 10, 4))):
        spec = make_env_spec(env_id)
        assert (spec.obs_shape, spec.obs_dtype) == (shape, np.uint8)
    with VectorEnv(CATCH, 2, seed=0) as env:
        obs = env.reset()
    assert obs.dtype == np.uint8 and set(np.unique(obs)) == {0, 255}
    assert np.all((obs == 255).sum(axis=(1, 2, 3)) == 2)  # the ball and the paddle
    # The device loop's task converts the same way (one shared function).
    task = make_task(CATCH)
    board = jnp.zeros((1, 10, 5)).at[0, 0, 2].set(1.0)
    converted = np.asarray(task.observation(board))
    assert converted.dtype == np.uint8 and converted[0, 0, 2, 0] == 255 and converted.sum() == 255
    assert make_env_spec("gymnax:CartPole-v1").obs_dtype == np.float32  # vectors stay float


def test_images_are_stored_as_uint8_in_host_and_device_replay():
    spec = make_env_spec(CATCH)
    host = ReplayBuffer(64, 2, spec.obs_shape, spec.obs_dtype, spec.action_dim)
    with VectorEnv(CATCH, 2, seed=1) as env:
        obs = env.reset()
        for _ in range(12):
            host.add(*env.step(np.eye(3, dtype=np.float32)[[0, 2]]).transition)
    assert host.state_dict()["obs"].dtype == np.uint8
    rng = np.random.default_rng(0)
    assert host.sample_sequences(rng, 3, 4).obs.dtype == np.uint8

    ring = replay_init(8, 2, spec)
    assert ring.obs.dtype == ring.next_obs.dtype == jnp.uint8
    obs = jnp.asarray(obs)
    for _ in range(5):
        zeros = jnp.zeros(2)
        ring = replay_add(ring, obs, jnp.zeros((2, 3)), zeros, jnp.ones(2), obs, zeros)
    assert ring.obs.dtype == jnp.uint8
    key = jax.random.PRNGKey(0)
    assert replay_sample_flat(ring, key, 4).obs.dtype == jnp.uint8
    assert replay_sample_sequences(ring, key, 2, 3).obs.dtype == jnp.uint8


# ------------------------------------------------------------ observation normalisation


def test_running_normaliser_leaves_uint8_images_alone_in_both_loops():
    images = np.random.default_rng(0).integers(0, 256, (5, 10, 5, 1), dtype=np.uint8)
    # The device-side normalisation passes integer images through untouched (same dtype).
    out = normalize(jnp.asarray(images), jnp.full((10, 5, 1), 100.0), jnp.full((10, 5, 1), 3.0))
    assert out.dtype == jnp.uint8 and np.array_equal(np.asarray(out), images)
    # A disabled host normaliser never gathers statistics: checkpoints hold the identity.
    off = RunningMeanStd((10, 5, 1), enabled=False)
    off.update(images)
    mean, std = off.stats()
    assert off.count == 0 and np.all(mean == 0.0) and np.all(std == 1.0)
    # The device loop switches it off for uint8 observations even with obs_norm on (the host
    # loop's switch is checked by the host training test below).
    config = small_config(env_id=CATCH, obs_norm=True, loop="device")
    assert not DeviceLoop(config).norm_enabled
    config.env_id = "gymnax:CartPole-v1"
    assert DeviceLoop(config).norm_enabled
    # Vector observations keep their running normalisation and checkpoint layout.
    vector = RunningMeanStd((4,), enabled=True)
    vector.update(np.arange(8, dtype=np.float32).reshape(2, 4))
    assert vector.count == 2 and set(vector.state_dict()) == {"count", "mean", "m2"}


# ------------------------------------------------------------- gymnasium pixel wrapper


class _NoRenderEnv(gymnasium.Env):
    """A real env whose only flaw is having no renderer."""

    metadata = {"render_modes": []}
    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


gymnasium.register("WmJaxNoRender-v0", entry_point=_NoRenderEnv)


class _FailingRenderEnv(_NoRenderEnv):
    """Declares rgb_array and fails to render, as MuJoCo does with no OpenGL context."""

    metadata = {"render_modes": ["rgb_array"]}

    def render(self):
        raise RuntimeError("an OpenGL platform library has not been loaded")


gymnasium.register("WmJaxFailingRender-v0", entry_point=_FailingRenderEnv)


def test_pixel_option_validates_and_fails_clearly_without_a_renderer():
    assert pixel_size({"pixels": True, "max_episode_steps": 9}) == (64, {"max_episode_steps": 9})
    assert pixel_size({"pixels": 0}) == (None, {})
    for bad in (3, 2.5, "64"):
        with pytest.raises(ValueError, match="pixels"):
            pixel_size({"pixels": bad})
    with pytest.raises(ValueError, match="has no rgb_array renderer"):
        make_env_spec("WmJaxNoRender-v0", {"pixels": 32})
    # A renderer's own failure is named at start-up with the headless fix (it was a traceback).
    with pytest.raises(ValueError, match=r"renderer failed \(RuntimeError: an OpenGL.*MUJOCO_GL"):
        make_env_spec("WmJaxFailingRender-v0", {"pixels": 32})
    with pytest.raises(ValueError, match="gymnax envs have no renderer"):
        VectorEnv(CATCH, 1, seed=0, env_kwargs={"pixels": 32})


@pytest.mark.slow
def test_cartpole_from_pixels_gives_resized_uint8_renders_that_resume_exactly():
    kwargs = {"pixels": 16}
    spec = make_env_spec("CartPole-v1", kwargs)
    assert (spec.obs_shape, spec.obs_dtype, spec.max_episode_steps) == ((16, 16, 3), np.uint8, 500)
    push = np.eye(2, dtype=np.float32)[[1, 0]]
    with VectorEnv("CartPole-v1", 2, seed=3, env_kwargs=kwargs) as env:
        first = env.reset()
        assert first.dtype == np.uint8 and first.shape == (2, 16, 16, 3)
        assert first.max() == 255 and first.min() < 200  # a real render: white with a cart
        for _ in range(3):
            env.step(push)
        state = env.state_dict()
        later = [env.step(push).obs for _ in range(2)]
    assert not np.array_equal(later[0][0], first[0])  # the pole moved
    # Resume replays the actions through the pixel wrapper: the same frames follow.
    with VectorEnv("CartPole-v1", 2, seed=3, env_kwargs=kwargs) as resumed:
        resumed.reset()
        resumed.load_state_dict(state)
        for frame in later:
            np.testing.assert_array_equal(resumed.step(push).obs, frame)


@pytest.mark.slow
def test_host_loop_stores_catch_as_uint8_and_writes_an_open_loop_strip(tmp_path):
    # Collection and the open-loop check only: training on images is the CLI test's (device
    # loop) and the host loop's train step is the one the vector tests compile.
    config = small_config(
        env_id=CATCH,
        total_env_steps=32,
        prefill_steps=64,  # never reached: no train step to compile
        num_envs=2,
        replay_capacity=200,
        eval_every=0,
        checkpoint_every=0,
        log_every=32,
        report=False,
        **{
            "diagnostics.open_loop_every": 0,
            "diagnostics.open_loop_horizon": 4,
            "diagnostics.open_loop_batch": 2,
            "model.cnn_depth": 2,
            "model.cnn_layers": 1,
        },
    )
    trainer = Trainer(config, str(tmp_path))
    try:
        assert trainer.spec.obs_dtype == np.uint8 and not trainer.normalizer.enabled
        trainer.run()
        summary = trainer.open_loop_check()
    finally:
        trainer.close()
    frames = trainer.replay.state_dict()["obs"]
    assert frames.dtype == np.uint8 and set(np.unique(frames)) == {0, 255}
    assert trainer.normalizer.count == 0  # obs_norm is on, but images are never normalised
    assert summary is not None and np.isfinite(summary["open_loop_error_mean"])
    with open(tmp_path / "open_loop.jsonl") as f:
        checks = [json.loads(line) for line in f]
    assert [c["strip"] for c in checks] == ["open_loop/step_32.png"]
    strip = np.asarray(Image.open(tmp_path / "open_loop" / "step_32.png"))
    assert strip.ndim == 3 and strip.shape[2] == 3 and strip.shape[1] == 48 + 4 * (25 + 2)


# ------------------------------------------------------------------- open-loop strip


def test_strip_shows_true_model_and_diff_rows_and_greys_out_finished_steps():
    rng = np.random.default_rng(0)
    true = rng.random((3, 5, 10, 5, 1)).astype(np.float32)
    mask = np.ones((3, 5))
    mask[0, 2:] = 0  # window 0 ends early: the two full windows are shown
    strip = strip_image(true, true, mask, windows=2)
    zoom = 5  # 10-pixel boards are enlarged to at least 48 pixels
    assert strip.dtype == np.uint8 and strip.shape[1] == 48 + 5 * (5 * zoom + 2)
    assert strip.shape[0] == 14 + 6 * (10 * zoom + 2) + 2 * 2
    # A perfect prediction: every |diff| frame is black.
    y_diff = 14 + 2 * (10 * zoom + 2)
    assert np.all(strip[y_diff : y_diff + 10 * zoom, 48 : 48 + 5 * zoom] == 0)
    masked = strip_image(true, true, mask[[0, 0, 0]], windows=1)
    assert np.all(masked[14 : 14 + 10 * zoom, 48 + 4 * (5 * zoom + 2) :][:, : 5 * zoom] == 48)
    # MinAtar-style layers get one colour each; grey and RGB are kept.
    layers = np.zeros((1, 1, 4))
    layers[0, 0, 1] = 1.0
    assert to_rgb(layers)[0, 0].tolist() == [255, 127, 14]
    assert to_rgb(np.full((1, 1, 1), 0.5))[0, 0].tolist() == [128, 128, 128]


@pytest.mark.slow
def test_catch_from_pixels_trains_from_the_cli_with_video_in_the_report(tmp_path):
    workdir = tmp_path / "catch"
    cmd = [
        sys.executable,
        "-m",
        "wm_jax.train",
        "--config=experiments/configs/catch.py",
        f"--workdir={workdir}",
        "--config.total_env_steps=320",
        "--config.prefill_steps=160",
        "--config.eval_every=320",
        "--config.eval_episodes=2",
        "--config.log_every=160",
        "--config.checkpoint_every=0",
        "--config.schedule.warmup_steps=0",
        "--config.schedule.transition_steps=0",
        "--config.diagnostics.open_loop_every=160",
        "--config.diagnostics.open_loop_horizon=4",
        "--config.diagnostics.open_loop_batch=2",
        "--config.model.cnn_depth=2",
        "--config.model.cnn_layers=1",
        "--config.model.feature_dim=8",
        "--config.model.state_dim=8",
        "--config.model.hidden_dim=8",
        "--config.model.hidden_layers=1",
        "--config.batch_size=2",
        "--config.sequence_length=4",
        "--config.imagination.horizon=2",
        "--config.imagination.num_starts=4",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 320 env steps; final eval return" in proc.stdout
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert any("world_model_loss" in r for r in records)
    assert any("open_loop_error_mean" in r for r in records)
    strip = Image.open(workdir / "open_loop" / "step_320.png")
    assert strip.mode == "RGB" and strip.size[0] > 48
    report = (workdir / "report" / "report.md").read_text()
    assert "![open_loop_video_step_320](open_loop_video_step_320.png)" in report
    assert (workdir / "report" / "open_loop_video_step_320.png").exists()
    assert "alt='open_loop_video_step_320'" in (workdir / "report" / "report.html").read_text()
    # TensorBoard's Images tab has the strip of each check (env steps 160, 320) at its step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Images("open_loop/strip")] == [160, 320]
    assert events.Images("open_loop/strip")[-1].width == strip.size[0]
