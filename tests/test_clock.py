"""The one clock of the host, device and offline loops (wm_jax.shell.Clock)."""

import time

from wm_jax.config import get_config
from wm_jax.shell import Clock, crossed


def test_crossing_a_multiple_is_the_host_loops_modulo_rule_for_every_step_size():
    # The host loop advances by num_envs; the offline loop by 1; the device loop by segments.
    for every in (1, 3, 7, 1000, 2500):
        for step in (1, 2, 4, 16):
            for after in range(step, 6000, step):
                assert crossed(every, after - step, after) == (after % every < step)
    assert not crossed(0, 0, 10**9)  # 0 = never


def test_a_segment_of_many_steps_is_due_once_for_each_kind():
    clock = Clock(log_every=1000, eval_every=2500, checkpoint_every=5000)
    assert clock.log(900, 1100) and not clock.log(1100, 1900)
    assert clock.evaluate(2000, 3000) and not clock.evaluate(2500, 3000)
    assert clock.checkpoint(4999, 5000) and not clock.checkpoint(5000, 9999)


def test_the_open_loop_check_runs_at_the_log_row_whose_window_passed_its_multiple():
    clock = Clock(log_every=1000, open_loop_every=1500)
    rows = [s for s in range(1000, 10_001, 1000) if clock.open_loop(s)]
    assert rows == [2000, 3000, 5000, 6000, 8000, 9000]  # windows holding 1500, 3000, 4500, ...


def test_checkpoints_fall_due_by_time_once_a_process_alone_decides():
    clock = Clock(log_every=100, checkpoint_every=10**6, checkpoint_seconds=0.05)
    assert not clock.checkpoint(0, 4)
    time.sleep(0.06)
    assert clock.checkpoint(4, 8)
    assert not clock.checkpoint(4, 8, by_time=False)  # several processes: steps only
    clock.saved()
    assert not clock.checkpoint(8, 12)
    # checkpoint_every = 0 turns checkpoints off, time included.
    assert not Clock(log_every=100, checkpoint_seconds=1e-9).checkpoint(0, 10**6)


def test_a_loop_that_runs_many_steps_per_call_stops_where_something_is_due():
    clock = Clock(log_every=1000, eval_every=2500, checkpoint_every=0)
    assert clock.next_stop(0, 30_000) == 1000
    assert clock.next_stop(2000, 30_000) == 2500
    assert clock.next_stop(2000, 30_000, boundaries=(2200, 500)) == 2200
    assert clock.next_stop(29_500, 29_700) == 29_700


def test_online_and_offline_clocks_read_their_intervals_from_the_config():
    c = get_config()
    online = Clock.online(c)
    assert (online.log_every, online.eval_every, online.checkpoint_every) == (
        c.log_every,
        c.eval_every,
        c.checkpoint_every,
    )
    assert online.open_loop_every == c.diagnostics.open_loop_every
    offline = Clock.offline(c)
    assert (offline.log_every, offline.eval_every) == (c.offline.log_every, c.offline.eval_every)
    assert offline.checkpoint_every == c.offline.checkpoint_every
