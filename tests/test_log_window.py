"""The log row in progress (``metrics.LogWindow``) survives a checkpoint: saved mid-window and
restored, it writes the row of a window that was never interrupted, bit for bit."""

import math

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from wm_jax.metrics import LogWindow, aggregate


def _updates(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        m = {"loss": jnp.float32(rng.normal() * 1e3), "tiny": jnp.float32(rng.random() * 1e-7)}
        if i >= 3:  # actor metrics start later in the window, as after the warmup
            m["actor_loss"] = jnp.float32(rng.normal())
        if i == 5:
            m["loss"] = jnp.float32(math.nan)  # a NaN stays a NaN, it does not break the save
        m["continue_predicted_terminations"] = jnp.float32(i % 3)
        m["continue_true_terminations"] = jnp.float32(1.0)
        m["continue_correct_terminations"] = jnp.float32(i % 2)
        out.append(m)
    return out


def test_a_window_saved_mid_way_and_restored_ends_with_the_uninterrupted_row(tmp_path):
    updates = _updates(9)
    straight = LogWindow()
    for m in updates:
        straight.add(m)
    straight.add_returns(57.0, 3)
    straight.add_returns(0.1 + 0.2, 1)

    first = LogWindow()
    for m in updates[:4]:
        first.add(m)
    first.add_returns(57.0, 3)
    # Through a real orbax save and restore, as the checkpoint extras travel.
    ckpt = ocp.PyTreeCheckpointer()
    ckpt.save(tmp_path / "w", {"log_window": first.state_dict()})
    resumed = LogWindow.from_state_dict(ckpt.restore(tmp_path / "w")["log_window"])
    for m in updates[4:]:
        resumed.add(m)
    resumed.add_returns(0.1 + 0.2, 1)

    a, b = straight.means(), resumed.means()
    assert a.keys() == b.keys() and math.isnan(a["loss"]) and math.isnan(b["loss"])
    assert all(a[k] == b[k] for k in a if k != "loss")  # exact, not approximately
    assert (resumed.return_sum, resumed.episodes) == (straight.return_sum, straight.episodes)
    whole = aggregate(updates)  # the function every row used before windows were saved
    assert all(whole[k] == b[k] for k in whole if k != "loss") and whole.keys() == b.keys()


def test_an_empty_window_saves_and_a_checkpoint_without_one_resumes_empty():
    empty = LogWindow()
    assert not empty and empty.state_dict().size > 0  # orbax saves no zero-size arrays
    assert not LogWindow.from_state_dict(empty.state_dict())
    assert not LogWindow.from_state_dict(None) and LogWindow.from_state_dict(None).means() == {}


def test_device_scalars_are_packed_one_array_per_update_and_sum_exactly_as_host_values():
    updates = _updates(7)
    packed = LogWindow()
    for m in updates:
        packed.add(m)
    assert all(isinstance(p, tuple) and p[1].shape == (len(p[0]),) for p in packed.pending)
    mixed = LogWindow()  # host values (as the device loop's summaries) take the per-value path
    for i, m in enumerate(updates):
        mixed.add({k: np.asarray(v) for k, v in m.items()} if i % 2 else m)
    a, b = packed.means(), mixed.means()
    assert a.keys() == b.keys() and math.isnan(a["loss"]) and math.isnan(b["loss"])
    by_hand = sum(float(np.asarray(m["tiny"], np.float64)) for m in updates) / len(updates)
    assert a["tiny"] == by_hand and all(a[k] == b[k] for k in a if k != "loss")


def test_the_same_metric_names_as_host_numbers_or_wide_integers_are_summed_exactly_unpacked():
    # Packing is decided per update, not per name: host floats and int32 counts (which float32
    # would round) under names already seen packed still add up exactly.
    window = LogWindow()
    window.add({"loss": jnp.float32(0.5), "count": jnp.float32(1.0)})
    window.add({"loss": 0.25, "count": 2.0})
    window.add({"loss": jnp.float32(0.25), "count": jnp.int32(2**24 + 1)})
    means = window.means()
    assert means["loss"] == (0.5 + 0.25 + 0.25) / 3
    assert means["count"] == (1.0 + 2.0 + 2**24 + 1) / 3
