"""The named failures of a run that the command lines turn into exit statuses (README, "When
things go wrong"), and the conversion of an OS error on the workdir into one of them."""

from __future__ import annotations

import errno
import os
import sys

from absl import logging

# Exit codes of the command lines (README "When things go wrong"); 1 is a usage or config
# error, 128 + N a signal.
EXIT_NONFINITE = 3
EXIT_ENV_DATA = 4
EXIT_LOCKED = 5  # another run holds the workdir
EXIT_RESUME_REFUSED = 6  # the workdir's run has another config or env; nothing was changed
EXIT_WORKDIR = 7  # the workdir or a checkpoint cannot be written (disk full, read-only)
EXIT_ENV_ERROR = 8  # the environment raised inside reset() or step()


def stop_with(err: Exception, code: int) -> None:
    """Ends a command line with ``err``'s message (no traceback) and exit status ``code``."""
    logging.error("%s", err)
    print(f"stopped: {err}", file=sys.stderr)
    sys.exit(code)


class WorkdirError(RuntimeError):
    """The workdir cannot be written (read-only, full disk, ...); names the path and cause."""


def workdir_error(workdir: str, err: OSError, doing: str) -> WorkdirError:
    cause = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(err.errno, os.strerror(err.errno) if err.errno else str(err))
    return WorkdirError(f"cannot {doing} in {workdir}: {cause} ({err})")


# OS errors that mean "this directory cannot take more writes", wherever they surface (a library
# opening a new event file, orbax creating a directory, ...).
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def is_storage_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in STORAGE_ERRNOS
