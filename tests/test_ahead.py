"""The train step of later schedule phases compiled in the background (wm_jax.ahead)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, random_transitions, small_config

from wm_jax import ahead as ahead_lib
from wm_jax import update
from wm_jax.ahead import START_AFTER_STEPS, AheadStep
from wm_jax.schedule import UpdateCounts

WARMUP, FULL = UpdateCounts(1, 0, 0), UpdateCounts(1, 1, 1)
MIX = np.float32(0.5)  # the trainer passes the critic's real-data mix as a numpy scalar


def toy_step(state, batch, counts, mix):
    if counts.critic == 7:
        raise ValueError("no program for seven critic updates")
    new = state * (1.0 + counts.actor) + batch.sum() * mix
    return new, {"loss": new.sum()}


def leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def started(step, state, batch, counts=WARMUP, mix=MIX):
    """The calls of the current phase after which the plan is compiling."""
    for _ in range(START_AFTER_STEPS + 1):
        state, _ = step.step(state, batch, counts, mix)
    return state


def test_the_real_train_step_compiled_ahead_is_the_jitted_one_bit_for_bit(monkeypatch):
    monkeypatch.setattr(ahead_lib, "START_AFTER_STEPS", 0)
    # At nice 19 the compile waits behind the suite's other worker (2x this test's time).
    monkeypatch.setattr(ahead_lib, "_lowest_priority", lambda: None)
    spec = make_spec()
    agent = update.make_agent(small_config(), spec)
    steps = update.make_steps(agent)
    state = steps.init(jax.random.PRNGKey(0))
    batch = random_transitions(jax.random.PRNGKey(1), spec)
    step = AheadStep(steps.train_step)
    step.expect([FULL])
    idle = UpdateCounts(0, 0, 0)  # a cheap first phase: the test is about the planned one
    same, _ = step.step(state, batch, idle, MIX)
    assert step.planned() == [FULL]
    before = steps.train_step._cache_size()
    ahead_state, ahead_metrics = step.step(same, batch, FULL, MIX)
    # The planned phase ran the program compiled ahead: jit compiled nothing new for it.
    assert steps.train_step._cache_size() == before
    plain_state, plain_metrics = steps.train_step(state, batch, FULL, MIX)
    leaves_equal((ahead_state, ahead_metrics), (plain_state, plain_metrics))
    step.close()


def test_a_plan_starts_compiling_only_after_the_first_steps_of_a_run():
    step = AheadStep(jax.jit(toy_step, static_argnums=2))
    step.expect([FULL])
    state, batch = jnp.ones(3), jnp.arange(3.0)
    for _ in range(START_AFTER_STEPS):
        state, _ = step.step(state, batch, WARMUP, MIX)
    assert step.planned() == []  # the loop's own first programs compile undisturbed
    step.step(state, batch, WARMUP, MIX)
    assert step.planned() == [FULL]
    step.close()


def test_arguments_shaped_otherwise_than_planned_fall_back_to_the_jitted_step(caplog):
    jitted = jax.jit(toy_step, static_argnums=2)
    step = AheadStep(jitted)
    step.expect([FULL])
    state = started(step, jnp.ones(3), jnp.arange(3.0))
    longer = jnp.arange(5.0)  # not the batch the plan was compiled for
    got = step.step(state, longer, FULL, MIX)
    leaves_equal(got, jitted(state, longer, FULL, MIX))
    assert "does not fit" in caplog.text
    assert step.planned() == []
    step.close()


def test_a_failed_background_compile_is_raised_by_the_jitted_call_that_replaces_it():
    step = AheadStep(jax.jit(toy_step, static_argnums=2))
    broken = UpdateCounts(1, 1, 7)
    step.expect([broken])
    state = started(step, jnp.ones(3), jnp.arange(3.0))
    with pytest.raises(ValueError, match="seven critic updates"):
        step.step(state, jnp.arange(3.0), broken, MIX)
    step.close()


def test_close_drops_programs_not_started_and_later_calls_still_train(monkeypatch):
    monkeypatch.setattr(ahead_lib, "START_AFTER_STEPS", 0)
    jitted = jax.jit(toy_step, static_argnums=2)
    step = AheadStep(jitted)
    plan = [UpdateCounts(1, a, 1) for a in range(1, 6)]
    step.expect(plan)
    state, batch = jnp.ones(3), jnp.arange(3.0)
    step.step(state, batch, WARMUP, MIX)
    step.close()  # waits for the compile in flight, cancels the rest
    for counts in plan:
        leaves_equal(
            step.step(state, batch, counts, MIX),
            jitted(state, batch, counts, MIX),
        )
