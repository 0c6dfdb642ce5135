"""The layers' template trees against upstream's (REFERENCE 4.2, 4.3): paths, link targets,
key unit lines, the LSS16 splash, .treeinfo sections."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
from pathlib import Path

import pytest
from hostkit import need_tool

from xcpimg import lss16
from xcpimg.layers import configs_dir

CONFIGS = configs_dir()
MASKS = ("ldconfig.service", "proc-fs-nfsd.mount", "serial-getty@hvc0.service",
         "systemd-journal-catalog-update.service", "systemd-journal-flush.service", "xenstored.service")
STARTUP_UNITS = "systemd-udev-settle.service interface-rename-sideway.service early-blacklist.service"

INSTALLIMG_FILES = {
    "8.2": {"etc/sysconfig/network", "etc/systemd/system/installer.service",
            "etc/systemd/system/getty@tty2.service", "etc/systemd/system/sshd.service.d/installer.conf",
            "etc/depmod.d/00-xcpng-override.conf"},
    "8.3": {"etc/sysconfig/network", "etc/systemd/system/installer.service",
            "etc/systemd/system/installer-getty@.service",
            "etc/systemd/system/sshd.service.d/sshd_installer.conf"},
}
INSTALLIMG_LINKS = {
    "8.2": {**{f"etc/systemd/system/{m}": "/dev/null" for m in MASKS},
            "opt/xensource/installer/RPM-GPG-KEY-xcpng": "../../../etc/pki/rpm-gpg/RPM-GPG-KEY-xcpng"},
    "8.3": {f"etc/systemd/system/{m}": "/dev/null" for m in MASKS},
}


def tree(top: Path) -> tuple[set[str], dict[str, str]]:
    files, links = set(), {}
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top).as_posix()
        if path.is_symlink():
            links[rel] = os.readlink(path)
        elif path.is_file():
            files.add(rel)
    return files, links


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("dist", ["8.2", "8.3"])
def test_installimg_tree_is_upstreams(dist: str) -> None:
    files, links = tree(CONFIGS / dist / "installimg")
    assert files == INSTALLIMG_FILES[dist]
    assert links == INSTALLIMG_LINKS[dist]


@pytest.mark.parametrize(("dist", "getty"), [("8.2", "getty@tty2.service"), ("8.3", "installer-getty@tty2.service")])
def test_installer_service_lines(dist: str, getty: str) -> None:
    u = unit(CONFIGS / dist / "installimg/etc/systemd/system/installer.service")
    assert u["Unit"]["Requires"].split() == STARTUP_UNITS.split()
    assert u["Unit"]["After"].split() == [*STARTUP_UNITS.split(), getty]
    assert u["Service"]["Type"] == "forking"
    assert u["Service"]["SendSIGHUP"] == "yes"
    assert u["Service"]["ExecStart"] == "/opt/xensource/installer/preinit --"
    assert u["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize(("dist", "name"), [("8.2", "installer.conf"), ("8.3", "sshd_installer.conf")])
def test_sshd_dropin(dist: str, name: str) -> None:
    u = unit(CONFIGS / dist / f"installimg/etc/systemd/system/sshd.service.d/{name}")
    assert u["Unit"]["ConditionKernelCommandLine"] == "sshpassword"
    assert "sshpassword" in u["Service"]["ExecStartPre"] and "chpasswd" in u["Service"]["ExecStartPre"]


def test_82_depmod_override() -> None:
    assert (CONFIGS / "8.2/installimg/etc/depmod.d/00-xcpng-override.conf").read_text().split() == \
        ["search", "override"]


@pytest.mark.parametrize("dist", ["8.2", "8.3"])
def test_splash_is_valid_lss16_and_shown_by_the_menus(dist: str) -> None:
    data = (CONFIGS / dist / "iso/boot/isolinux/splash.lss").read_bytes()
    width, height, palette, pixels = lss16.decode(data)
    assert (width, height) == (640, 320) and len(palette) == 16
    assert len(set(pixels)) > 2  # a picture, not a blank field
    assert data == lss16.splash()  # the committed file is what xcpimg draws
    for page in ("pg_main", "pg_help"):
        first = (CONFIGS / dist / f"iso/boot/isolinux/{page}").read_bytes().split(b"\n", 1)[0]
        assert first == b"\x18splash.lss"


def test_splash_decodes_with_syslinux_own_tool() -> None:
    need_tool("lss16toppm")
    ppm = subprocess.run(["lss16toppm"], input=(CONFIGS / "8.3/iso/boot/isolinux/splash.lss").read_bytes(),
                         capture_output=True, check=True).stdout
    assert ppm.startswith(b"P6\n640 320\n255\n")
    assert len(ppm) == len(b"P6\n640 320\n255\n") + 640 * 320 * 3


def test_lss16_round_trip_and_rejects_garbage() -> None:
    pixels = [0] * 20 + [3] * 300 + [15, 0, 0, 1] * 10 + [2] * 16
    data = lss16.encode(len(pixels), 1, lss16.SPLASH_PALETTE, pixels)
    assert lss16.decode(data)[3] == pixels
    with pytest.raises(lss16.Lss16Error):
        lss16.decode(b"\x3d\xf3\x13\x14" + b"\x10\x00\x01\x00" + bytes(48))  # row data missing
    with pytest.raises(lss16.Lss16Error):
        lss16.decode(b"not an image" * 8)


SECTIONS_83 = ["platform", "branding", "system-v1", "build", "keys", "general", "images-x86_64", "images-xen"]
SECTIONS_82 = ["platform", "branding", "build", "keys", "general", "images-x86_64", "images-xen"]


@pytest.mark.parametrize(("dist", "sections"), [("8.3", SECTIONS_83), ("8.2", SECTIONS_82)])
def test_treeinfo_sections(dist: str, sections: list[str]) -> None:
    text = (CONFIGS / dist / "iso/.treeinfo").read_text()
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(text)
    assert parsed.sections() == sections
    assert parsed["platform"]["name"] == "{{ PLATFORM_NAME }}"
    assert parsed["platform"]["version"] == "{{ PLATFORM_VERSION }}"
    assert parsed["branding"]["name"] == "{{ PRODUCT_BRAND }}"
    assert parsed["branding"]["version"] == "{{ PRODUCT_VERSION }}"
    assert parsed["images-x86_64"]["kernel"] == "boot/pxelinux/mboot.c32"
    assert re.search(r"(?m)^timestamp = \{\{ timestamp \}\}$", text)
