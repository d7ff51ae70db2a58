"""Property-based tests (hypothesis) of config validation over whole ranges of values."""

from __future__ import annotations

import ml_collections
from hypothesis import given, settings
from hypothesis import strategies as st

from wm_jax.config import ConfigError, get_config, override, validate

# Every numeric field a user is likely to override, with values from clearly wrong to huge.
INT_FIELDS = [
    "num_envs",
    "batch_size",
    "sequence_length",
    "replay_capacity",
    "prefill_steps",
    "eval_every",
    "eval_episodes",
    "total_env_steps",
    "max_nonfinite_updates",
    "model.feature_dim",
    "model.state_dim",
    "model.hidden_dim",
    "model.hidden_layers",
    "imagination.horizon",
    "imagination.num_starts",
    "critic.bins",
    "schedule.warmup_steps",
    "schedule.transition_steps",
    "diagnostics.open_loop_horizon",
]
FLOAT_FIELDS = [
    "train_ratio",
    "reward_scale",
    "max_abs_reward",
    "world_model.lr",
    "world_model.grad_clip",
    "world_model.termination_weight",
    "actor.lr",
    "actor.entropy_coef",
    "actor.unimix",
    "actor.explore_correlation",
    "actor.min_std",
    "critic.lr",
    "critic.target_update_rate",
    "critic.slow_reg",
    "imagination.gamma",
    "imagination.lambda_",
    "schedule.final_real_mix",
]

ints = st.integers(min_value=-10, max_value=10**6)
floats = st.floats(min_value=-10.0, max_value=1e3, allow_nan=False)
changes = st.dictionaries(
    st.sampled_from(INT_FIELDS + FLOAT_FIELDS), st.none(), min_size=1, max_size=4
).flatmap(
    lambda fields: st.fixed_dictionaries({f: (ints if f in INT_FIELDS else floats) for f in fields})
)


def apply(c: ml_collections.ConfigDict, overrides: dict) -> None:
    override(c, **overrides)


@settings(max_examples=300, deadline=None)
@given(changes)
def test_validation_either_accepts_or_names_a_field_that_was_changed(overrides):
    c = get_config()
    apply(c, overrides)
    try:
        validate(c)
    except ConfigError as err:
        # The defaults are valid, so the culprit must be one of the changed fields (or a field
        # whose constraint involves one: replay vs batch, warmup vs transition, std bounds).
        named = str(err).split(":")[0].removeprefix("config.")
        related = {
            "batch_size": {"replay_capacity", "sequence_length"},
            "replay_capacity": {"num_envs", "sequence_length"},
            "schedule.transition_steps": {"schedule.warmup_steps"},
            "actor.min_std": {"actor.max_std"},
        }
        assert named in overrides or related.get(named, set()) & set(overrides), (named, overrides)
        assert "must" in str(err) or "not one of" in str(err) or "does not fit" in str(err)
        return
    # Accepted: the invariants the rest of the code relies on hold.
    assert c.imagination.horizon >= 1 and c.batch_size >= 1 and c.num_envs >= 1
    assert 0 <= c.imagination.gamma <= 1 and 0 <= c.imagination.lambda_ <= 1
    assert min(c.world_model.lr, c.actor.lr, c.critic.lr) >= 0
    assert c.batch_size <= c.replay_capacity
    assert c.schedule.transition_steps >= c.schedule.warmup_steps


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(INT_FIELDS + FLOAT_FIELDS))
def test_a_single_negative_value_is_rejected_naming_exactly_that_field(field):
    # Every listed field is a size, rate, probability or count: none may be negative.
    c = get_config()
    value = -1 if field in INT_FIELDS else -1.0
    apply(c, {field: value})
    try:
        validate(c)
    except ConfigError as err:
        assert str(err).startswith(f"config.{field}:"), str(err)
    else:
        raise AssertionError(f"config.{field}={value} was accepted")
