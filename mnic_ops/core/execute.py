"""The one place where external commands run.

Commands are argv lists (never a shell), logged before they start, bounded by a timeout,
and a failure becomes a :class:`CommandError` whose message names the command, its
exit status and the last lines it printed.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from mnic_ops.core.errors import CommandError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0


def which(name: str) -> str | None:
    """Absolute path of a command on PATH, or None."""
    return shutil.which(name)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    text: bool = True,
    pass_fds: Sequence[int] = (),
    errors: str = "strict",
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, capture its output and return it.

    With ``check`` a non-zero exit raises :class:`CommandError`; a missing program or a
    timeout always does. ``pass_fds`` are inherited by the child (a memfd handed over
    as ``/proc/self/fd/N``, so that a candidate file never touches the disk).
    ``errors`` is how output that is not UTF-8 is decoded (``surrogateescape`` for a
    command that prints paths or lines of a file, which may be in any encoding).
    """
    cmd = [str(a) for a in argv]
    printable = shlex.join(cmd)
    log.debug("run: %s", printable)
    data: str | bytes | None = input
    if text and isinstance(input, bytes):
        data = input.decode()
    try:
        proc = subprocess.run(
            cmd,
            input=data,
            capture_output=True,
            text=text,
            errors=errors if text else None,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{cmd[0]}: command not found (needed for: {printable})") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{printable}: timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise CommandError(f"{printable}: could not start: {exc.strerror}") from exc
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        tail = " | ".join(line for line in err.strip().splitlines()[-3:])
        raise CommandError(
            f"{printable}: exited with status {proc.returncode}" + (f": {tail}" if tail else "")
        )
    return proc
