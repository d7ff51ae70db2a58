"""Breakout (MinAtar) from its 10×10×4 object layers, through gymnax on the device loop.

The four boolean layers (paddle, ball, trail, bricks) arrive as a uint8 ``[10, 10, 4]`` image
(``{0, 255}``, the gymnax adapter's board conversion), so the CNN encoder/decoder are used and
replay stores uint8.  +1 per brick; the episode ends when the ball is missed.  Target: eval
return clearly above a random policy within 200k env steps (``experiments/benchmarks/
learning.py --random_episodes``, BUILD_NOTES.md).

Run: python -m wm_jax.train --config=experiments/configs/breakout_minatar.py --workdir=runs/bo
"""

import os

from wm_jax.config import load_config_file


def get_config():
    # CartPole's tuned agent, as for Catch (cartpole.py); everything task-specific is set below.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cartpole.py"))
    c.env_id = "gymnax:Breakout-MinAtar"
    c.loop = "device"
    c.total_env_steps = 200_000
    c.num_envs = 16
    c.train_ratio = 1 / 16  # one train step per vector step of 16 envs
    c.prefill_steps = 5_000
    c.replay_capacity = 200_000
    # 10×10: one stride-2 layer to 5×5, then two at 5×5 (16, 32, 64 channels).
    c.model.cnn_depth = 16
    c.model.cnn_layers = 3
    c.model.feature_dim = 256
    c.model.state_dim = 64
    c.model.hidden_dim = 256
    c.world_model.decoder_scale = 100.0  # the sum over 10×10 pixels, as for Catch (untested)
    c.sequence_mode = True
    c.batch_size = 16
    c.sequence_length = 16
    c.imagination.horizon = 15
    c.imagination.num_starts = 64
    c.schedule.warmup_steps = 10_000
    c.schedule.transition_steps = 30_000
    c.eval_every = 10_000
    c.eval_episodes = 16
    c.log_every = 5_000
    c.checkpoint_every = 20_000
    c.diagnostics.open_loop_every = 20_000
    c.diagnostics.open_loop_horizon = 16
    c.diagnostics.open_loop_batch = 8
    return c
