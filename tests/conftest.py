"""Make the test helpers (rpmkit, bootkit) importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import os  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def need_tool():  # type: ignore[no-untyped-def]
    """need_tool(NAME): skip the test when the host tool is missing, or fail it when CI is set."""
    def need(name: str) -> str:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
        if path is None:
            message = f"host tool {name} is not installed"
            if os.environ.get("CI"):
                pytest.fail(f"{message} (CI must install it)")
            pytest.skip(message)
        return path
    return need
