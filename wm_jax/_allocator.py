"""The launchers' allocator for XLA:CPU's per-call temp buffers (issue 18).

XLA:CPU allocates each compiled call's temp buffer (tens of MiB for an update at batch 64, most of
a GiB at 1024) with malloc and frees it when the call ends.  Under glibc's defaults a block that
large is a fresh ``mmap`` every call (above the 32 MiB mmap threshold, or from a worker thread's
arena), so every update page-faults its whole buffer in again: measured here ~14k minor faults and
~25 ms of system time per 64 ms update at batch 64, ~225k faults at 1024.

:func:`tune` re-executes the process once with an allocator that keeps that memory:

* **mimalloc** where the ``cmeel-mimalloc`` wheel is installed (a dependency on Linux): its
  library as ``LD_PRELOAD`` with ``MIMALLOC_PURGE_DELAY=-1`` (freed memory stays committed, so a
  call's temp buffer is the previous call's pages).  It removes the faults glibc cannot: glibc
  serves a worker thread's block over its 64 MiB arena heap with a fresh ``mmap`` whatever its
  tunables say (~800 faults and ~180 ms of system time per batch-1024 update), and a single arena
  (``arena_max=1``, which does remove them) makes XLA's threads queue on one lock (the CartPole
  step ~1.5x slower).  Measured with ``experiments/benchmarks/allocator.py`` (BUILD_NOTES,
  "Twelfth session").
* otherwise **glibc tunables**: no mmap for large blocks (``mmap_max=0``), a 4 GiB trim
  threshold (freed memory stays mapped) and transparent huge pages for the heap (``hugetlb=1``).

Either way the memory XLA frees is kept by the process (its peak heap), not returned to the OS.
``WM_JAX_ALLOCATOR=glibc`` picks the tunables even where mimalloc is installed.

Only on Linux with glibc, only once (``WM_JAX_ALLOCATOR_TUNED`` marks the re-executed process),
never when the user chose an allocator (``glibc.malloc.*`` tunables, or a malloc library already
in ``LD_PRELOAD``), and never with ``WM_JAX_NO_ALLOCATOR_TUNING=1``.  Called by ``python -m
wm_jax.train`` / ``wm-jax-train`` and the benchmarks before JAX starts; a library import never
re-executes anything.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
OPT_OUT = "WM_JAX_NO_ALLOCATOR_TUNING"
MARKER = "WM_JAX_ALLOCATOR_TUNED"
CHOICE = "WM_JAX_ALLOCATOR"  # "mimalloc" (the default where installed) or "glibc"
# Freed memory stays committed: the next call's temp buffer reuses the pages.
MIMALLOC_OPTIONS = {"MIMALLOC_PURGE_DELAY": "-1"}


def mimalloc_library() -> str | None:
    """Path of the ``cmeel-mimalloc`` wheel's shared library, or None if it is not installed."""
    from importlib import metadata

    try:
        files = metadata.files("cmeel-mimalloc") or ()
    except metadata.PackageNotFoundError:
        return None
    found = sorted(
        (f for f in files if f.name.startswith("libmimalloc.so")), key=lambda f: len(f.name)
    )
    for f in found:  # libmimalloc.so, then its versioned names
        path = str(f.locate())
        if os.path.isfile(path):
            return os.path.realpath(path)
    return None


def preload_mimalloc(env: dict[str, str], library: str) -> None:
    """Puts ``library`` first in ``env``'s ``LD_PRELOAD`` with :data:`MIMALLOC_OPTIONS` (a value
    the user set wins)."""
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library}:{preload}" if preload else library
    for key, value in MIMALLOC_OPTIONS.items():
        env.setdefault(key, value)


def tuned_environment(environ=None, find_mimalloc=mimalloc_library) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing should change.
    ``find_mimalloc() -> path | None``: where the mimalloc library is, if installed."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "") not in ("", "0") or environ.get(MARKER):
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    preload = environ.get("LD_PRELOAD", "")
    if "glibc.malloc." in current or "malloc" in preload:
        return None  # the user chose the allocator: keep it
    env = dict(environ)
    env[MARKER] = "1"
    choice = environ.get(CHOICE, "mimalloc")
    if choice not in ("mimalloc", "glibc"):
        raise ValueError(f"{CHOICE}={choice!r}: choose mimalloc or glibc")
    library = find_mimalloc() if choice == "mimalloc" else None
    if library:
        preload_mimalloc(env, library)
    else:
        env["GLIBC_TUNABLES"] = f"{current}:{TUNABLES}" if current else TUNABLES
    return env


def describe(environ=None) -> str:
    """The allocator this process runs on, in words (for benchmark results and logs)."""
    environ = os.environ if environ is None else environ
    preload = environ.get("LD_PRELOAD", "")
    if "mimalloc" in preload:
        return "mimalloc (" + ", ".join(f"{k}={environ.get(k, '')}" for k in MIMALLOC_OPTIONS) + ")"
    if "malloc" in preload:
        return f"LD_PRELOAD={preload}"
    tunables = environ.get("GLIBC_TUNABLES", "")
    return f"glibc ({tunables})" if "glibc.malloc." in tunables else "default malloc"


def tune() -> None:
    """Re-executes this process (same interpreter, same arguments) with the allocator above, if
    it applies (see the module docstring); returns only when it does not."""
    try:
        env = tuned_environment()
    except ValueError as err:
        sys.exit(f"error: {err}")
    argv = getattr(sys, "orig_argv", None)
    if env is None or not sys.executable or not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:  # could not re-execute: run on with the defaults
        return
