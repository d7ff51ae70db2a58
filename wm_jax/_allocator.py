"""malloc settings for XLA:CPU's per-call temp buffer, applied by the launchers (issue 18).

XLA:CPU allocates each compiled call's temp buffer (tens of MiB for an update at batch 64, most of
a GiB at 1024) with malloc and frees it when the call ends.  Under glibc's defaults a block that
large is a fresh ``mmap`` every call (above the 32 MiB mmap threshold, or from a worker thread's
arena), so every update page-faults its whole buffer in again: measured here ~14k minor faults and
~25 ms of system time per 64 ms update at batch 64, ~225k faults at 1024.

:func:`tune` re-executes the process once with ``GLIBC_TUNABLES`` set so that malloc keeps the
memory: no mmap for large blocks (``mmap_max=0``), a 4 GiB trim threshold (freed memory stays
mapped) and transparent huge pages for the heap (``hugetlb=1``, so the faults that remain are
2 MiB ones).  ``arena_max=1`` (every thread on the main heap) is *not* set: it removed the last
faults of the largest programs (glibc still maps a worker thread's blocks over 64 MiB afresh)
but made the CartPole train step ~1.2x slower, the seeds'-size step at batch 64 too, and a
README run from a cold compilation cache 1.1x slower (XLA's threads then share one arena).
Measured with ``experiments/benchmarks/allocator.py`` (BUILD_NOTES, "Speed (issue 18),
2026-12-06").  The cost: memory freed by XLA is kept by the process (its peak heap), not
returned to the OS.

Only on Linux with glibc, only once (``WM_JAX_ALLOCATOR_TUNED`` marks the re-executed process),
never when the user set any ``glibc.malloc.*`` tunable, and never with
``WM_JAX_NO_ALLOCATOR_TUNING=1``.  Called by ``python -m wm_jax.train`` / ``wm-jax-train`` and the
benchmarks before JAX starts; a library import never re-executes anything.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
OPT_OUT = "WM_JAX_NO_ALLOCATOR_TUNING"
MARKER = "WM_JAX_ALLOCATOR_TUNED"


def tuned_environment(environ=None) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing should change."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "") not in ("", "0") or environ.get(MARKER):
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in current:  # the user chose malloc settings: keep them
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLES}" if current else TUNABLES
    env[MARKER] = "1"
    return env


def tune() -> None:
    """Re-executes this process (same interpreter, same arguments) with the malloc settings
    above, if they apply (see the module docstring); returns only when it does not."""
    env = tuned_environment()
    argv = getattr(sys, "orig_argv", None)
    if env is None or not sys.executable or not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:  # could not re-execute: run on with the defaults
        return
