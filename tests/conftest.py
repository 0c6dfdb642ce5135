"""Make the test helpers (rpmkit, bootkit) importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))



import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _cli_logging_does_not_outlive_the_test():  # type: ignore[no-untyped-def]
    """Tests that run ``xcpimg.cli.main`` in-process leave its stderr handler on the root logger,
    bound to that test's captured (soon closed) stderr: remove it, and restore the level."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if type(handler) is logging.StreamHandler:  # basicConfig's; pytest's own handlers are subclasses
            root.removeHandler(handler)
    root.setLevel(level)
