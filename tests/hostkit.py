"""Host prerequisites of the tests: the one place a test may skip, and never in CI.

``need_tool``, ``need_file`` and ``need_root`` skip a test whose host lacks
something; when the environment variable ``CI`` is set they fail it instead, so
a CI run never silently tests less (``quickstart`` installs everything the tests
need). Tests that must run unprivileged use ``unprivileged(argv)``: under root
the command drops to uid/gid 65534 with ``setpriv``, so they run either way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from xcpimg.pytest_plugin import need, need_root  # noqa: F401 - one skip-or-fail mechanism, shared with the matrix

NOBODY = 65534


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def need_tool(*tools: str) -> str:
    """Every one of *tools* is on PATH (or in /usr/sbin, /sbin); the path of the last one."""
    path = ""
    for tool in tools:
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin") or ""
        need(bool(path), f"host tool {tool} is not installed")
    return path


def need_file(path: Path, package: str) -> None:
    """*path* exists (it comes from the Debian package *package*)."""
    need(path.exists(), f"{path} is missing (Debian package {package})")


def unprivileged(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """*argv* run as an unprivileged user: as is when not root, else under uid/gid 65534."""
    args = [os.fspath(a) for a in argv]
    if os.geteuid() != 0:
        return args
    need_tool("setpriv")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *args]


def without_dac_override(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """*argv* unable to bypass file permissions: under root, without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (still uid 0, so it reads what it owns); as is otherwise."""
    args = [os.fspath(a) for a in argv]
    if os.geteuid() != 0:
        return args
    need_tool("setpriv")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--", *args]
