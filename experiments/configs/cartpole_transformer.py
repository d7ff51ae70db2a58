"""CartPole-v1 with the transformer dynamics (issue 5): ``experiments/configs/cartpole.py``
unchanged except ``model.dynamics = "transformer"``, so the learning benchmark compares the two
dynamics models under the same budget (30k env steps, same world-model/actor/critic settings).

The 16-step replayed sequences are exactly one context window (``context_length = 16``); the
attention width is ``model.hidden_dim`` (128) with 4 heads and 2 layers.

Run: python experiments/benchmarks/learning.py --config=experiments/configs/cartpole_transformer.py
"""

import os

from wm_jax.config import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "cartpole.py"))
    c.model.dynamics = "transformer"
    c.model.context_length = c.sequence_length
    c.model.transformer_layers = 2
    c.model.transformer_heads = 4
    return c
