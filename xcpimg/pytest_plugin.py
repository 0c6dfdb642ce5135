"""pytest plugin: options, markers and session fixtures for the build-and-boot matrix."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "expensive: builds install.img (needs root, slow)")
    config.addinivalue_line("markers", "boot: boots media in QEMU")
