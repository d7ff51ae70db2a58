"""CartPole-v1 with the RSSM world model: the README's first command (issue 19: the config that
learns CartPole best). It is ``cartpole.py`` (the seeds' MLP world model, tuned for CartPole)
with the representation and dynamics swapped for a Dreamer-style recurrent state-space model;
everything else (heads, losses, actor, critic, schedule, budget) is unchanged, so the learning
benchmark compares the two world models at equal budget (BUILD_NOTES: 6 seeds, 12.5k env steps,
Mann-Whitney U 35 of 36 for this one).

Run: python -m wm_jax.train --config=experiments/configs/cartpole_rssm.py --workdir=runs/cartpole
"""

import os

from wm_jax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cartpole.py"))
    c.model.representation = "rssm"
    c.model.dynamics = "rssm"
    # h: 128 units; z: 8 categoricals of 8 classes -> heads read a 192-d state.
    c.model.rssm_deter = 128
    c.model.rssm_stoch = 8
    c.model.rssm_classes = 8
    # Imagine with samples of the prior, as the posterior states the heads were trained on are
    # one-hot samples too (a mean of one-hots is a state the heads never saw).
    c.imagination.sample_dynamics = True
    # Measured with LayerNorm in float32 (BUILD_NOTES); RMSNorm and bf16 are unchecked here.
    c.model.norm = "layer"
    c.precision = "float32"
    # Exploration correlated in time (each action still a sample of the policy, consecutive
    # ones correlated over ~10 steps): what lets this config, only env_id changed, solve
    # Acrobot (5 of 6 seeds; a uniform random policy never reaches its goal). On CartPole it
    # slows the early climb (6-seed median first 475 at 15k env steps, not 10k) and is level
    # at 30k. BUILD_NOTES "The README config explores correlated by default"; set it to 0 to
    # rerun the figures measured before it was this config's default.
    c.actor.explore_correlation = 0.9
    # Real-data critic targets: a terminated episode's own discounted return where the replay
    # holds one (the cart's slow drift off the track ends episodes ~100 steps after it starts,
    # far beyond a 16-step window and the 15-step imagination). 8 of 12 seeds hold >= 400 after
    # first reaching 475 (5 of the first 6, against 2 of those 6 with λ-returns alone;
    # BUILD_NOTES, fourteenth session); "lambda" reruns the figures measured before.
    c.critic.real_targets = "episode"
    # The actor from 2.5k env steps (the world model alone before), the critic's real-data
    # weight annealed by 7.5k: with episode targets, 12 seeds' median curve 275 / 450 / 500 at
    # 7.5k / 10k / 12.5k and 500 at every evaluation to 30k, 9 of 12 hold (5k / 10k: 183 /
    # 310 / 379, 8 of 12; BUILD_NOTES, fifteenth session); 5000 / 10000 reruns the figures
    # measured before.
    c.schedule.warmup_steps = 2_500
    c.schedule.transition_steps = 7_500
    return c
