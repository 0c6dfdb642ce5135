"""tests/hostkit.py: a missing host prerequisite skips locally and fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hostkit
import pytest


def test_missing_tool_skips_without_ci_and_fails_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="host tool xcpimg-no-such-tool is not installed"):
        hostkit.need_tool("sh", "xcpimg-no-such-tool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI: host tool xcpimg-no-such-tool is not installed"):
        hostkit.need_tool("xcpimg-no-such-tool")
    with pytest.raises(pytest.fail.Exception, match="Debian package nothing"):
        hostkit.need_file(Path("/nonexistent/ldlinux.c32"), "nothing")
    assert hostkit.need_tool("sh").endswith("/sh")            # present: its path
    hostkit.need_file(Path("/"), "base-files")


def test_privilege_drops_really_drop() -> None:
    """Under root the wrapped commands are uid 65534, or uid 0 unable to read a mode-000 file."""
    probe = "import os, sys; print(os.geteuid(), os.access(sys.argv[1], os.R_OK))"
    locked = Path(__file__).parent / "hostkit.py"
    out = subprocess.run(hostkit.unprivileged([sys.executable, "-c", probe, str(locked)]),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(hostkit.NOBODY if os.geteuid() == 0 else os.geteuid())
    out = subprocess.run(hostkit.without_dac_override([sys.executable, "-c", "import os; print(os.geteuid())"]),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(os.geteuid())]


def test_without_dac_override_cannot_read_mode_000(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0)
    code = "import sys; open(sys.argv[1]).read()"
    proc = subprocess.run(hostkit.without_dac_override([sys.executable, "-c", code, str(secret)]),
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr
