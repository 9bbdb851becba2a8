"""Per-install failures: one user's bad file fails that install, never the whole run.

A root pass reads files that each install's owner can write. When one of them cannot be
used (JSON that is malformed or out of bounds, a symlink in the way, a folder that cannot
be read), that install is reported with the reason, nothing more is done for it, every
other install is processed, and the command exits 1 at the end. It never becomes an
internal error, and it never stops the other installs.

How a command takes part (the same in every command):

- the data map marks an install it could not build: ``Project.failure``;
  :func:`usable` drops those from a list of installs and records them;
- work on one install runs inside :func:`guard`, which records an
  :class:`~mnic_ops.core.errors.OpsError` or :class:`OSError` as that install's failure (or
  a command calls ``app.failures.add`` itself); a plan shows the install as one failed
  item (:func:`mnic_ops.changes.model.failed_item`) that does not stop the other installs' items;
- the failures of a run live on the :class:`~mnic_ops.core.app.AppContext`
  (``app.failures``): ``emit`` adds them to the JSON document of every command that
  works over installs as ``failed_installs`` (``[{"install", "stage", "error"}]``,
  empty when none failed), and the CLI prints one ``mnic-ops: error:`` line
  per failed install on stderr and turns exit 0 or 3 into 1. A long-running command
  (the watcher) takes them with ``app.failures.drain()`` and logs them instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from mnic_ops.core.errors import EXIT_FAILURE, EXIT_OK, EXIT_PENDING, OpsError

if TYPE_CHECKING:
    from mnic_ops.core.app import AppContext

# What fails one install rather than the run: errors a user's files can cause. ValueError
# (UnicodeError among them) is the backstop: a value the bounded parsers let through that
# a path or an encoder then refuses is still that install's failure, never an internal
# error that stops every install.
INSTALL_ERRORS: tuple[type[BaseException], ...] = (OpsError, OSError, ValueError)
ITEM_PREFIX = "install:"


def reason(exc: BaseException | str) -> str:
    """The message of an install's failure: an OpsError's own text (it names the file,
    line and column), an OSError's file and strerror."""
    if isinstance(exc, str):
        return _text(exc)
    if isinstance(exc, OpsError):
        return _text(exc.message)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return _text(f"{where}{exc.strerror or exc}")
    return _text(f"{type(exc).__name__}: {exc}")


def _text(s: str) -> str:
    """Text any output can carry: a lone surrogate (from a user's file) as an escape."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class InstallFailure:
    install: str  # host path of the install root
    stage: str    # what was being done: "data map", "render", "clean", ...
    error: str    # names the file (and line:column) and why

    def to_json(self) -> dict[str, str]:
        return {"install": self.install, "stage": self.stage, "error": self.error}

    def text(self) -> str:
        from mnic_ops.core.quoting import printable

        done = "; nothing done for it" if self.stage == "data map" else ""
        return (f"install {printable(self.install)} failed ({self.stage}): "
                f"{printable(self.error)}{done}")


class InstallFailures:
    """The failed installs of one run, in the order found, each (install, error) once."""

    def __init__(self) -> None:
        self._items: list[InstallFailure] = []
        # set once the command works over installs: its JSON then always carries
        # failed_installs (empty or not), a stable key for scripts
        self.active = False

    def add(self, install: str, error: BaseException | str, stage: str) -> InstallFailure:
        self.active = True
        msg = reason(error)
        for f in self._items:
            if f.install == install and f.error == msg:
                return f
        f = InstallFailure(install, stage, msg)
        self._items.append(f)
        return f

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[InstallFailure]:
        return iter(list(self._items))

    def __contains__(self, install: object) -> bool:
        return any(f.install == install for f in self._items)

    def to_json(self) -> list[dict[str, str]]:
        return [f.to_json() for f in self._items]

    def drain(self) -> list[InstallFailure]:
        """Take the failures recorded so far: a long-running command (the watcher) logs
        them as they come instead of exiting 1 at the end."""
        out, self._items = self._items, []
        return out

    def exit_code(self, rc: int) -> int:
        """1 when an install failed and the command would otherwise succeed (0) or
        report pending changes (3); any other code stands."""
        return EXIT_FAILURE if self._items and rc in (EXIT_OK, EXIT_PENDING) else rc


P = TypeVar("P")


def usable(app: AppContext, projects: Iterable[P]) -> list[P]:
    """The installs whose data map was built; the others recorded as failed."""
    app.failures.active = True
    out: list[P] = []
    for p in projects:
        failure = getattr(p, "failure", None)
        if failure:
            app.failures.add(getattr(p, "host_path", "?"), failure, "data map")
        else:
            out.append(p)
    return out


@contextmanager
def guard(app: AppContext, install: str, stage: str) -> Iterator[None]:
    """Run one install's part: an OpsError or OSError becomes that install's failure
    and the run goes on with the next install."""
    try:
        yield
    except INSTALL_ERRORS as exc:
        app.failures.add(install, exc, stage)


def is_failed_install(item: Any) -> bool:
    """True for the item of a failed install (which must not stop the other installs'
    changes), False for a failed change or step."""
    return str(getattr(item, "id", "")).startswith(ITEM_PREFIX) and \
        getattr(item, "state", "") == "failed"
