"""Fault injection at the environment boundary: NaN/Inf/out-of-range data never gets stored."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest

from wm_jax.env_guard import EnvGuard, InvalidEnvDataError
from wm_jax.envs import VectorEnv

FAULTY_ID = "wm_jax_test/Faulty-v0"
WRONG_SHAPE_ID = "wm_jax_test/WrongShape-v0"
ARRAY_REWARD_ID = "wm_jax_test/ArrayReward-v0"


class FaultyEnv(gymnasium.Env):
    """3-D observations in [-1, 1]; at episode step 5 the observation is NaN/Inf/out of range
    (``fault``) and the reward is NaN; episodes last 12 steps."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, fault: str = "nan"):
        self.fault = fault
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full(3, 0.1, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(3, 0.1 * (self.t % 5), np.float32)
        reward = 1.0
        if self.t == 5:
            obs[1] = {"nan": np.nan, "inf": np.inf, "range": 7.0}[self.fault]
            reward = np.nan
        return obs, reward, False, self.t >= 12, {}


class WrongShapeEnv(FaultyEnv):
    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}


class ArrayRewardEnv(FaultyEnv):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, np.array([0.0], np.float32), terminated, truncated, info


gymnasium.register(FAULTY_ID, entry_point=FaultyEnv, disable_env_checker=True)
gymnasium.register(ARRAY_REWARD_ID, entry_point=ArrayRewardEnv, disable_env_checker=True)
gymnasium.register(WRONG_SHAPE_ID, entry_point=WrongShapeEnv, disable_env_checker=True)


def make_guard(mode):
    return EnvGuard(mode, "Test-v0", np.full(3, -1.0), np.array([1.0, 1.0, np.inf]), 100.0)


def test_raise_mode_names_the_env_index_the_values_and_the_fix():
    obs = np.zeros((2, 3), np.float32)
    obs[1, 2] = np.nan
    with pytest.raises(InvalidEnvDataError, match=r"env indices \[1\].*env_check=sanitize"):
        make_guard("raise").observations(obs)
    with pytest.raises(InvalidEnvDataError, match=r"outside its observation_space.*\[5\.0\]"):
        make_guard("raise").observations(np.array([[0.0, 5.0, 0.0]], np.float32))
    with pytest.raises(InvalidEnvDataError, match="max_abs_reward"):
        make_guard("raise").rewards(np.array([1.0, 1e9], np.float32))


def test_sanitize_repairs_nan_inf_and_range_and_counts_each_observation_once():
    guard = make_guard("sanitize")
    obs = np.array([[np.nan, 0.5, np.inf], [np.inf, -np.inf, 3.0], [0.2, 0.3, 1e9]], np.float32)
    fixed = guard.observations(obs)
    # NaN -> 0; +Inf -> the finite bound (1) or the float32 max where the bound is infinite.
    np.testing.assert_array_equal(fixed[0], [0.0, 0.5, np.finfo(np.float32).max])
    np.testing.assert_array_equal(fixed[1], [1.0, -1.0, 3.0])  # no upper bound on entry 2
    np.testing.assert_array_equal(fixed[2], obs[2])  # in range: untouched
    rewards = guard.rewards(np.array([np.nan, 500.0, -1.0], np.float32))
    np.testing.assert_array_equal(rewards, [0.0, 100.0, -1.0])
    assert guard.take_counts() == {"env_invalid_obs": 2, "env_invalid_reward": 2}
    assert guard.take_counts() == {"env_invalid_obs": 0, "env_invalid_reward": 0}


def test_float_rounding_at_a_bound_is_not_out_of_range_and_off_mode_checks_nothing():
    at_bound = np.array([[-1.0 - 1e-7, 1.0 + 1e-7, 0.0]], np.float32)
    assert make_guard("raise").observations(at_bound) is at_bound
    nan = np.full((1, 3), np.nan, np.float32)
    assert make_guard("off").observations(nan) is nan


@pytest.mark.parametrize("fault", ["nan", "inf", "range"])
def test_vector_env_rejects_a_bad_observation_at_the_step_it_appears(fault):
    with VectorEnv(FAULTY_ID, 2, seed=0, env_kwargs={"fault": fault}) as env:
        env.reset()
        for _ in range(4):
            env.step(np.eye(2, dtype=np.float32)[[0, 1]])
        with pytest.raises(InvalidEnvDataError, match="episode step 5"):
            env.step(np.eye(2, dtype=np.float32)[[0, 1]])


def test_vector_env_in_sanitize_mode_returns_only_finite_in_range_data():
    with VectorEnv(FAULTY_ID, 2, seed=0, check="sanitize", env_kwargs={"fault": "inf"}) as env:
        env.reset()
        for _ in range(30):
            out = env.step(np.eye(2, dtype=np.float32)[[0, 1]])
            for array in (out.transition.obs, out.transition.next_obs, out.obs):
                assert np.isfinite(array).all() and np.abs(array).max() <= 1.0
            assert np.isfinite(out.transition.reward).all()
        # Two envs, episodes of 12 steps: step 5 of episodes 1, 2 and 3 in each env.
        assert env.guard.take_counts() == {"env_invalid_obs": 6, "env_invalid_reward": 6}


def test_an_observation_of_the_wrong_shape_names_the_declared_space():
    with pytest.raises(InvalidEnvDataError, match=r"shape \(3,\)"):
        with VectorEnv(WRONG_SHAPE_ID, 2, seed=0) as env:
            env.reset()


def test_a_reward_array_names_the_scalar_a_step_must_return():
    with VectorEnv(ARRAY_REWARD_ID, 2, seed=0) as env:
        env.reset()
        with pytest.raises(InvalidEnvDataError, match=r"scalar reward.*shape \(1,\)"):
            env.step(np.eye(2, dtype=np.float32))


def tiny_config(**overrides):
    from conftest import small_config

    c = small_config(
        env_id=FAULTY_ID,
        num_envs=2,
        total_env_steps=96,
        prefill_steps=32,
        eval_every=0,
        log_every=32,
        checkpoint_every=0,
        report=False,
        **{"schedule.warmup_steps": 48, "schedule.transition_steps": 64},
        **{"diagnostics.open_loop_every": 0},
    )
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.mark.slow
def test_training_on_an_env_that_emits_nan_stops_with_a_clear_error(tmp_path):
    from wm_jax.loops import train

    with pytest.raises(InvalidEnvDataError, match="non-finite observation"):
        train(tiny_config(), str(tmp_path / "raise"))


@pytest.mark.slow
def test_training_in_sanitize_mode_counts_repairs_and_keeps_every_parameter_finite(tmp_path):
    import jax

    from wm_jax.trainer import Trainer

    trainer = Trainer(tiny_config(env_check="sanitize"), str(tmp_path / "sanitize"))
    try:
        trainer.run()
        assert np.isfinite(trainer.replay.state_dict()["obs"]).all()
        leaves = jax.tree.leaves(trainer.state)
        assert all(
            np.isfinite(np.asarray(x)).all() for x in leaves if np.issubdtype(x.dtype, np.floating)
        )
    finally:
        trainer.close()
    records = [json.loads(line) for line in open(tmp_path / "sanitize" / "metrics.jsonl")]
    assert sum(r.get("env_invalid_obs", 0) for r in records) > 0
    assert sum(r.get("env_invalid_reward", 0) for r in records) > 0


def test_a_state_with_a_nan_parameter_is_never_saved(tmp_path):
    import jax

    from wm_jax.trainer import NonFiniteError, Trainer

    trainer = Trainer(tiny_config(env_check="sanitize", checkpoint_every=32), str(tmp_path / "c"))
    try:
        trainer.save()  # a finite state saves
        trainer.checkpointer.wait()
        poisoned = jax.tree.map(lambda x: x * np.nan, trainer.state.actor_params)
        trainer.state = trainer.state.replace(actor_params=poisoned)
        trainer.env_step = 32
        with pytest.raises(
            NonFiniteError, match="not saving it.*last good checkpoint is env step 0"
        ):
            trainer.save()
        assert trainer.checkpointer.all_steps() == [0]
    finally:
        trainer.close()
