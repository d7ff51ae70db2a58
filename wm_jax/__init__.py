"""wm_jax — a functional JAX/Flax framework for training world-model agents."""

__version__ = "0.1.0"
