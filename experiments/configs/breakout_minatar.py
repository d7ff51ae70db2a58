"""Breakout (MinAtar) from its 10×10×4 object layers: the RSSM world model, gymnax env, host loop.

The four boolean layers (paddle, ball, trail, bricks) arrive as a uint8 ``[10, 10, 4]`` image
(``{0, 255}``, the gymnax adapter's board conversion), so the CNN encoder/decoder are used and
replay stores uint8.  +1 per brick; the episode ends when the ball is missed.  Target: eval
return clearly above a random policy (0.405, BUILD_NOTES.md) within 200k env steps
(``experiments/benchmarks/learning.py --random_episodes``).

The recipe that solved Catch (catch.py): RSSM, fixed reward σ, host loop (XLA:CPU runs the
convolutions ~2× slower inside the device loop's scan, BUILD_NOTES.md).

Run: python -m wm_jax.train --config=experiments/configs/breakout_minatar.py --workdir=runs/bo
"""

import os

from wm_jax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "catch.py"))
    c.env_id = "gymnax:Breakout-MinAtar"
    c.env_kwargs.max_episode_steps = 1000  # catch.py's 20 would cut every game short
    c.total_env_steps = 200_000
    c.num_envs = 16
    c.train_ratio = 1 / 16  # one train step per vector step of 16 envs
    c.prefill_steps = 5_000
    c.replay_capacity = 200_000
    # 10×10: one stride-2 layer to 5×5, then two at 5×5 (16, 32, 64 channels).
    c.model.cnn_depth = 16
    c.model.cnn_layers = 3
    # Sized for 12.5k train steps on 2 CPU cores: ~114 ms per train step at T=16; T=32 148 ms,
    # and DreamerV3-size latents and widths at T=32 291 ms (scan_overhead.py, BUILD_NOTES.md).
    c.model.feature_dim = 128
    c.model.hidden_dim = 128
    c.model.rssm_deter = 128
    c.model.rssm_stoch = 8
    c.model.rssm_classes = 8
    c.imagination.sample_dynamics = True
    c.world_model.decoder_scale = 100.0  # the sum over 10×10 pixels, as for Catch
    c.sequence_length = 16
    c.batch_size = 16
    c.imagination.horizon = 15
    c.imagination.num_starts = 128
    c.actor.entropy_coef = 3e-3
    c.schedule.warmup_steps = 10_000
    c.schedule.transition_steps = 20_000
    c.eval_every = 10_000
    c.eval_episodes = 16
    c.log_every = 5_000
    c.checkpoint_every = 20_000
    c.diagnostics.open_loop_every = 20_000
    c.diagnostics.open_loop_horizon = 16
    c.diagnostics.open_loop_batch = 8
    # Measured with LayerNorm in float32 (BUILD_NOTES); RMSNorm and bf16 are unchecked here.
    c.model.norm = "layer"
    c.precision = "float32"
    return c
