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
