"""Typed errors. Each carries one message a user can act on."""

from __future__ import annotations


class XcpimgError(Exception):
    """Base class: a failure the CLI reports as one line and exit code 1."""

    exit_code = 1


class UsageError(XcpimgError):
    """The command line or its arguments are wrong (exit code 2)."""

    exit_code = 2


class ConfigError(XcpimgError):
    """A layer, template or configuration file is missing or malformed."""


class ToolError(XcpimgError):
    """An external program failed or could not be started."""

    def __init__(self, message: str, argv: list[str] | None = None, returncode: int | None = None,
                 stderr_tail: str = "") -> None:
        super().__init__(message)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class BuildError(XcpimgError):
    """A build step found its inputs inconsistent (missing file in an RPM, bad signature...)."""


class BootError(XcpimgError):
    """A VM did not reach the requested boot stage."""


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what went wrong and on which path (temporary names shown as their target)."""
    import re
    import shutil

    from .fsutil import shown_path
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        first = exc.args[0][0]
        if isinstance(first, tuple) and len(first) == 3:
            src, dst, why = first
            reason = re.match(r"(?:\[Errno \d+\] )?([^:]*)", str(why)).group(1)  # type: ignore[union-attr]
            return f"{reason}: {shown_path(dst)} (copying {src})"
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        text += f": {shown_path(exc.filename)}"
        if exc.filename2 is not None:
            text += f" -> {shown_path(exc.filename2)}"
    return text
