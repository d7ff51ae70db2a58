"""The train step of the schedule's later phases, compiled in the background (issue 18).

A host run's train step is one XLA program per distinct :class:`~wm_jax.schedule.UpdateCounts`
(warmup trains the world model alone, then the actor and critic join), and jit compiles each the
first time it is called: on the README's CartPole config the full program is ~8 s of XLA
compilation during which training stood still, right when warmup ends.  :class:`AheadStep`
compiles the programs of the phases still to come in one background thread a few steps into a
run (the first batch gives the arguments' shapes), so they are ready when their phase starts:
XLA's compiler releases the GIL, and the thread runs at the lowest CPU priority, so it takes
what training leaves idle (on a 2-core CPU little: 2-5 s of a cold 10k-step CartPole run; more
with more cores; BUILD_NOTES).  The
programs are the ones the jitted call would compile (same function, same abstract arguments;
the persistent compilation cache stores them alike), so a run trains bit for bit as before.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from wm_jax.schedule import UpdateCounts

# The first steps of a run compile the loop's own small programs (acting, metrics, checks), and
# a small compile started while the train step compiles in the background waits for much of it
# (XLA compiles largely one program at a time).  So the plan waits a few steps.
START_AFTER_STEPS = 8


def _abstract(x):
    """The shape, dtype, sharding and weak type jit would key its compilation on."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding, weak_type=x.weak_type)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)  # numpy (e.g. the critic's real-data mix)


def _lowest_priority() -> None:
    """Gives the calling thread the lowest CPU priority (Linux: ``nice`` is per thread), so the
    background compile takes only what training leaves idle.  Elsewhere a no-op."""
    if sys.platform == "linux":
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # not permitted in some sandboxes: compile at the normal priority
            pass


class AheadStep:
    """:meth:`step` ``(state, batch, counts, mix)`` returns what the jitted ``train_step``
    (``counts`` static) does, calling programs that :meth:`compile_ahead` compiled in the
    background where there is one for ``counts``.  A call whose program is still compiling
    waits for it (what the jitted call would have done in the foreground); one whose arguments
    no longer match the planned shapes (or whose compilation failed) falls back to the jitted
    call."""

    def __init__(self, jitted: Callable[..., Any]):
        self._jitted = jitted
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._programs: dict[UpdateCounts, concurrent.futures.Future] = {}
        self._plan: list[UpdateCounts] = []
        self._wait = 0  # steps until the plan starts compiling

    def expect(self, plan: list[UpdateCounts]) -> None:
        """The counts the coming steps will use besides the first's
        (:func:`wm_jax.schedule.later_counts`); they start compiling at the
        ``START_AFTER_STEPS``-th :meth:`step` from now."""
        self._plan, self._wait = list(plan), START_AFTER_STEPS

    def compile_ahead(self, plan: list[UpdateCounts], state, batch, mix) -> None:
        """Starts compiling the programs of ``plan`` not yet started, for arguments shaped like
        ``state``, ``batch`` and ``mix``, one after the other in a background thread."""
        todo = [counts for counts in plan if counts not in self._programs]
        if not todo:
            return
        args = jax.tree.map(_abstract, (state, batch, mix))
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "wm_jax-compile-ahead")
        for counts in todo:
            self._programs[counts] = self._pool.submit(self._compile, counts, *args)

    def _compile(self, counts, state, batch, mix):
        _lowest_priority()
        return self._jitted.lower(state, batch, counts, mix).compile()

    def planned(self) -> list[UpdateCounts]:
        """The counts compiled (or compiling) in the background, in the order they were planned."""
        return list(self._programs)

    def step(self, state, batch, counts: UpdateCounts, mix):
        if self._plan and self._wait > 0:
            self._wait -= 1
        elif self._plan:
            plan, self._plan = self._plan, []
            self.compile_ahead([c for c in plan if c != counts], state, batch, mix)
        program = self._program(counts)
        if program is not None:
            try:
                return program(state, batch, mix)
            except TypeError as err:  # compiled for other argument types: jit sorts it out
                logging.warning("train step %s compiled ahead does not fit: %s", counts, err)
                self._programs.pop(counts, None)
        return self._jitted(state, batch, counts, mix)

    def _program(self, counts: UpdateCounts):
        future = self._programs.get(counts)
        if future is None or future.cancelled():
            return None
        err = future.exception()  # waits while it compiles
        if err is not None:  # the jitted call compiles it again and reports what failed
            logging.warning("compiling train step %s ahead failed: %s", counts, err)
            self._programs.pop(counts, None)
            return None
        return future.result()

    def close(self) -> None:
        """Drops the programs not yet started and waits for the one compiling (XLA's compile
        cannot be interrupted, and a thread still in it at interpreter exit can crash)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
