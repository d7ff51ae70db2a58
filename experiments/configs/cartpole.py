"""CartPole-v1 (discrete actions, 4-D observations) with the seeds' MLP world model; the README's
first command runs ``cartpole_rssm.py``, this config with an RSSM world model, which learns
CartPole sooner and holds it better (BUILD_NOTES, learning figures).

The seeds' plain design (wm_jax/config.py defaults) collapses to a one-action policy here before
the continue predictor has learned what a termination looks like (eval return ~9 after 30k env
steps).  This config switches on the established fixes that measurably helped on this task; see
BUILD_NOTES.md ("CartPole tuning log") for what each one bought and the learning benchmark for
the 3-seed figures.

Run: python -m wm_jax.train --config=experiments/configs/cartpole.py
"""

from wm_jax.config import get_config as base_config


def get_config():
    c = base_config()
    c.env_id = "CartPole-v1"
    c.total_env_steps = 30_000
    # CartPole's state is 4 numbers: half the seeds' widths is plenty and ~4x cheaper.
    c.model.feature_dim = 128
    c.model.state_dim = 32
    c.model.hidden_dim = 128
    # Sequence mode turns on the multi-step (open-loop) loss: without it, 15-step imagination
    # drifts from reality and the actor exploits it (imagined return up, real return down).
    c.sequence_mode = True
    c.batch_size = 16
    c.sequence_length = 16
    c.imagination.num_starts = 64  # of the 256 replayed states: keeps the actor's cost
    # The world model must know terminations before the policy trains on it.
    c.world_model.lr = 6e-4
    c.world_model.termination_weight = 10.0  # terminations are ~5% of transitions
    c.imagination.continue_mode = "mode"  # safe states keep the full discount
    # Policy: REINFORCE with a value baseline; the straight-through dynamics gradient collapsed.
    c.actor.gradient = "reinforce"
    c.actor.lr = 1e-4
    c.actor.return_norm = True
    c.actor.entropy_coef = 3e-4
    c.actor.discount_weights = True
    c.actor.unimix = 0.01
    # Critic: faster, with a slow target network for bootstrapping.
    c.critic.lr = 3e-4
    c.critic.target_update_rate = 0.02
    # Half of the critic's loss stays on real 16-step λ-returns after the transition: real
    # terminations anchor its values (imagined-only targets left a ~110-return plateau).
    c.schedule.final_real_mix = 0.5
    # ... and where an episode has terminated, those targets are its own discounted return, not
    # bootstrapped λ-returns: 12 seeds to 30k, median curve 478 vs 262 at 30k, U 113 of 144 on
    # 12.5k-30k (BUILD_NOTES, fifteenth session); "lambda" reruns the figures measured before.
    c.critic.real_targets = "episode"
    # Speed (issue 18): bf16 matmuls where the CPU/GPU has them natively learned as f32 did
    # (6 seeds each; BUILD_NOTES "Speed (issue 18), 2026-12-05") at ~1.2x the train-step speed.
    # The base config's default, stated here because this config's figures depend on it.
    c.precision = "auto"
    return c
