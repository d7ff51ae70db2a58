"""The three update steps — world model, actor, critic — and the train step that composes them
(seeds, "Three separate optimization phases").

Each step is a pure function ``(agent, state, batch, ...) -> (state, metrics)`` with its own optax
state (Adam after ``clip_by_global_norm``).  Gradient isolation is functional:

* ``world_model_update`` differentiates only the world-model loss w.r.t. world-model parameters;
* ``actor_update`` differentiates the actor loss w.r.t. actor parameters only, reading world-model
  and critic parameters through ``jax.lax.stop_gradient`` (the gradient flows *through* the
  dynamics, reward and continue predictors to the actions, never *into* their parameters);
* ``critic_update`` regresses the value on ``stop_gradient`` return targets.

That is what the PyTorch prototype reached by saving and restoring world-model gradients around
a second ``backward()``: here nothing needs restoring because nothing else is ever written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wm_jax.agent import (  # noqa: F401 - re-exported: the update API's historical home
    Agent,
    expected_updates,
    init_state,
    make_agent,
    make_optimizer,
    nonfinite_streak,
)
from wm_jax.networks import COMPONENTS
from wm_jax.networks.common import matmul_precision
from wm_jax.schedule import UpdateCounts
from wm_jax.step_losses import (  # noqa: F401 - re-exported with the steps that use them
    BatchStates,
    actor_loss_fn,
    critic_loss_fn,
    imagine_from_batch,
    observe_batch,
    real_value_targets,
    start_states,
    world_model_loss,
)
from wm_jax.types import Batch, Imagined, Metrics, Params, TrainState

sg = jax.lax.stop_gradient


def _scaled(updates: Params, scale: chex.Array) -> Params:
    """An optimiser's step times its ``TrainState.lr_scale`` entry (x 1.0 is exact)."""
    return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)


def _skip_metrics(opt_state, prefix: str) -> Metrics:
    return {
        f"{prefix}_update_skipped": 1.0 - opt_state.last_finite.astype(jnp.float32),
        f"{prefix}_nonfinite_total": opt_state.total_notfinite.astype(jnp.float32),
    }


def _is_static_zero(x) -> bool:
    """True for a concrete (Python / NumPy) zero: a weight known at trace time to be 0."""
    return isinstance(x, (int, float, np.number)) and float(x) == 0.0


def _in_precision(step):
    """Traces ``step(agent, ...)`` under ``agent.config.precision``
    (:func:`wm_jax.networks.common.matmul_precision`)."""

    @functools.wraps(step)
    def wrapped(agent, *args, **kwargs):
        with matmul_precision(agent.config.get("precision", "float32")):
            return step(agent, *args, **kwargs)

    return wrapped


def _grad_norms(grads: Params, prefix: str, components: tuple[str, ...] = ()) -> Metrics:
    metrics = {f"{prefix}_grad_norm": optax.tree.norm(grads)}
    for name in components:
        metrics[f"{name}_grad_norm"] = optax.tree.norm(grads["params"][name])
    return metrics


@_in_precision
def world_model_update(agent: Agent, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One optimiser step on ``L_WM`` for the world-model parameters only."""
    key, loss_key = jax.random.split(state.key)
    grads, metrics = jax.grad(world_model_loss, argnums=1, has_aux=True)(
        agent, state.wm_params, batch, loss_key
    )
    updates, opt_state = agent.wm_optimizer.update(grads, state.wm_opt_state, state.wm_params)
    metrics.update(_grad_norms(grads, "world_model", COMPONENTS))
    metrics.update(_skip_metrics(opt_state, "world_model"))
    updates = _scaled(updates, state.lr_scale[0])
    return (
        state.replace(
            wm_params=optax.apply_updates(state.wm_params, updates),
            wm_opt_state=opt_state,
            key=key,
            wm_updates=state.wm_updates + 1,
        ),
        metrics,
    )


@_in_precision
def actor_update(
    agent: Agent, state: TrainState, batch: Batch, observed: BatchStates | None = None
) -> tuple[TrainState, Metrics, Imagined, chex.Array]:
    """One optimiser step of the policy head on the imagined-return objective.

    Returns the (gradient-free) imagined trajectory and its start weights for the critic.
    ``observed``: :func:`observe_batch` of ``batch`` with ``state.wm_params``, if already made.
    """
    key, loss_key = jax.random.split(state.key)
    grads, (metrics, imagined, weights, return_range) = jax.grad(actor_loss_fn, has_aux=True)(
        state.actor_params, agent, state, batch, loss_key, observed
    )
    updates, opt_state = agent.actor_optimizer.update(
        grads, state.actor_opt_state, state.actor_params
    )
    metrics.update(_grad_norms(grads, "actor"))
    metrics.update(_skip_metrics(opt_state, "actor"))
    updates = _scaled(updates, state.lr_scale[1])
    new_state = state.replace(
        actor_params=optax.apply_updates(state.actor_params, updates),
        actor_opt_state=opt_state,
        key=key,
        actor_updates=state.actor_updates + 1,
        return_range=return_range,
    )
    return new_state, metrics, sg(imagined), weights


@_in_precision
def critic_update(
    agent: Agent,
    state: TrainState,
    batch: Batch,
    imagined: Imagined,
    weights: chex.Array,
    real_mix: chex.Array | float = 0.0,
    observed: BatchStates | None = None,
    reuse_values: bool = False,
) -> tuple[TrainState, Metrics]:
    """One optimiser step of the value function; then the target critic moves by τ.
    ``observed``: :func:`observe_batch` of ``batch`` with ``state.wm_params``, if already made.
    ``reuse_values`` (static): bootstrap from ``imagined.values`` instead of evaluating the
    bootstrap critic again; only valid when its parameters are those imagination used
    (:func:`train_step` sets it for its first critic update when τ = 1 or the bootstrap is
    the online critic)."""
    real = None
    if not _is_static_zero(real_mix):
        real = functools.partial(real_value_targets, agent, state, batch, observed)
    grads, metrics = jax.grad(critic_loss_fn, has_aux=True)(
        state.critic_params,
        agent,
        state,
        sg(imagined),
        weights,
        real,
        real_mix,
        reuse_values,
    )
    updates, opt_state = agent.critic_optimizer.update(
        grads, state.critic_opt_state, state.critic_params
    )
    updates = _scaled(updates, state.lr_scale[2])
    params = optax.apply_updates(state.critic_params, updates)
    tau = agent.config.critic.target_update_rate
    target = (
        params if tau == 1 else optax.incremental_update(params, state.critic_target_params, tau)
    )
    metrics.update(_grad_norms(grads, "critic"))
    metrics.update(_skip_metrics(opt_state, "critic"))
    return (
        state.replace(
            critic_params=params,
            critic_target_params=target,
            critic_opt_state=opt_state,
            critic_updates=state.critic_updates + 1,
        ),
        metrics,
    )


@_in_precision
def train_step(
    agent: Agent,
    state: TrainState,
    batch: Batch,
    counts: UpdateCounts,
    real_mix: chex.Array | float = 0.0,
) -> tuple[TrainState, Metrics]:
    """``counts.world_model`` world-model updates, then ``counts.actor`` actor updates, then
    ``counts.critic`` critic updates, all on ``batch``.  ``counts`` is static (a few distinct
    values over a run, each compiled once); metrics are those of the last update of each kind.
    """
    metrics: Metrics = {}
    for _ in range(counts.world_model):
        state, m = world_model_update(agent, state, batch)
        metrics.update(m)
    imagined = weights = None
    # The actor and critic updates leave the world model alone: read the batch once for both.
    observed = None
    if counts.actor or counts.critic:
        observed = observe_batch(agent, state.wm_params, batch)
    for _ in range(counts.actor):
        state, m, imagined, weights = actor_update(agent, state, batch, observed)
        metrics.update(m)
    if counts.critic and imagined is None:
        key, imagine_key = jax.random.split(state.key)
        imagined, weights = imagine_from_batch(
            agent, state, state.actor_params, batch, imagine_key, observed
        )
        imagined, state = sg(imagined), state.replace(key=key)
    # The first critic update bootstraps from the critic imagination just used when targets
    # come from the online critic, or at τ = 1 (an update sets the target to the new
    # parameters): it reuses the imagined values.
    critic_cfg = agent.config.critic
    reuse = critic_cfg.bootstrap == "online" or critic_cfg.target_update_rate == 1
    for i in range(counts.critic):
        state, m = critic_update(
            agent, state, batch, imagined, weights, real_mix, observed, reuse and i == 0
        )
        metrics.update(m)
    return state, metrics


class Steps(NamedTuple):
    """Jitted entry points bound to one agent."""

    init: Callable[[chex.PRNGKey], TrainState]
    world_model_update: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    actor_update: Callable[..., Any]
    critic_update: Callable[..., Any]
    train_step: Callable[..., tuple[TrainState, Metrics]]


def make_steps(agent: Agent) -> Steps:
    """Binds ``agent`` and jits the three update steps and the train step."""
    return Steps(
        init=jax.jit(functools.partial(init_state, agent)),
        world_model_update=jax.jit(functools.partial(world_model_update, agent)),
        actor_update=jax.jit(functools.partial(actor_update, agent)),
        critic_update=jax.jit(functools.partial(critic_update, agent)),
        train_step=jax.jit(functools.partial(train_step, agent), static_argnums=(2,)),
    )


__all__ = [
    "Agent",
    "Steps",
    "actor_update",
    "critic_update",
    "init_state",
    "make_agent",
    "make_optimizer",
    "make_steps",
    "train_step",
    "world_model_loss",
    "world_model_update",
]
