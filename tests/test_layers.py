"""Layer resolution: standard chains, overlays, find order, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xcpimg.errors import ConfigError, UsageError
from xcpimg.layers import configs_dir, resolve


@pytest.mark.parametrize("spec, expected", [
    ("8.3", "8.3 base"),
    ("8.3:base", "8.3 base"),
    ("8.3:updates", "8.3 updates base"),
    ("8.3:testing", "8.3 testing candidates updates base"),
    ("8.2:testing", "8.2 testing candidates updates base"),
    ("8.2:ci", "8.2 ci testing candidates updates base"),
    ("8.3:incoming", "8.3 incoming ci testing candidates updates base"),
    ("8.3:candidates", "8.3 candidates updates base"),
    ("8.3:linstor:testing", "8.3 linstor testing candidates updates base"),
    ("8.3:testing:updates", "8.3 testing candidates updates base"),
])
def test_standard_chains(spec: str, expected: str) -> None:
    layers = resolve(spec)
    assert " ".join(layers.names) == expected
    assert all(d.parent == configs_dir() for d in layers.dirs)
    assert layers.dist == spec.split(":")[0]


def _layer(root: Path, name: str, include: str | None = None, files: dict[str, str] | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if include is not None:
        (d / "INCLUDE").write_text(include)
    for rel, text in (files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def test_absolute_overlay_and_find_order(tmp_path: Path) -> None:
    overlay = _layer(tmp_path, "mine", files={"packages.lst": "foo\n", "iso/EFI/xenserver/grub.cfg": "x"})
    layers = resolve(f"8.3:{overlay}:testing")
    assert layers.names == ("8.3", "mine", "testing", "candidates", "updates", "base")
    assert layers.dirs[1] == overlay
    assert layers.find("packages.lst") == configs_dir() / "8.3" / "packages.lst"
    assert layers.find_all("packages.lst") == [configs_dir() / "8.3" / "packages.lst", overlay / "packages.lst"]
    assert [p.parent.name for p in layers.find_all("yum-repos.conf.tmpl")] == [
        "testing", "candidates", "updates", "base"]
    with pytest.raises(ConfigError, match="cannot find 'nope'"):
        layers.find("nope")


def test_overlay_replaces_single_template_file(tmp_path: Path) -> None:
    overlay = _layer(tmp_path, "mine", files={"iso/EFI/xenserver/grub.cfg": "mine"})
    tree = resolve(f"{overlay}:8.3").merged_tree("iso")
    assert tree["EFI/xenserver/grub.cfg"] == overlay / "iso/EFI/xenserver/grub.cfg"
    assert tree["boot/isolinux/isolinux.cfg"] == configs_dir() / "8.3/iso/boot/isolinux/isolinux.cfg"


def test_template_tree_links_carry_their_layer_and_never_escape(tmp_path: Path) -> None:
    """merged_entries names the tree each file comes from, so its links are judged inside that tree."""
    from xcpimg.errors import BuildError
    from xcpimg.fsutil import copy_node
    overlay = _layer(tmp_path, "mine", files={"iso/EFI/xenserver/grub.cfg": "mine"})
    (overlay / "iso/EFI/grub.cfg").symlink_to("xenserver/grub.cfg")
    (overlay / "iso/passwd").symlink_to("../../../../../../etc/passwd")
    entries = resolve(f"{overlay}:8.3").merged_entries("iso")
    assert entries["EFI/grub.cfg"] == (overlay / "iso", overlay / "iso/EFI/grub.cfg")
    assert entries["boot/isolinux/isolinux.cfg"][0] == configs_dir() / "8.3/iso"
    dest = tmp_path / "dest"
    dest.mkdir()
    top, src = entries["EFI/grub.cfg"]
    copy_node(src, dest / "grub.cfg", top)
    assert os.readlink(dest / "grub.cfg") == "xenserver/grub.cfg"
    with pytest.raises(BuildError, match="symlink passwd -> .*points outside its tree"):
        copy_node(entries["passwd"][1], dest / "passwd", entries["passwd"][0])
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "iso").symlink_to("/etc")
    with pytest.raises(ConfigError, match="iso is a symlink"):
        resolve(f"{tmp_path / 'linked'}:8.3").merged_entries("iso")


def test_layer_included_twice_is_searched_once(tmp_path: Path) -> None:
    _layer(tmp_path, "a", include="c\nb\n")
    _layer(tmp_path, "b", include="c\n")
    _layer(tmp_path, "c")
    _layer(tmp_path, "base")
    assert resolve("a:b", base=tmp_path).names == ("a", "c", "b", "base")


def test_include_cycle_is_named(tmp_path: Path) -> None:
    _layer(tmp_path, "x", include="y\n")
    _layer(tmp_path, "y", include="z\n")
    _layer(tmp_path, "z", include="x\n")
    with pytest.raises(ConfigError, match="INCLUDE cycle: x -> y -> z -> x"):
        resolve("x", base=tmp_path)


def test_self_include_is_a_cycle(tmp_path: Path) -> None:
    _layer(tmp_path, "x", include="x\n")
    with pytest.raises(ConfigError, match="cycle: x -> x"):
        resolve("x", base=tmp_path)


def test_bad_layers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown layer 'nosuch'"):
        resolve("8.3:nosuch")
    _layer(tmp_path, "a", include="ghost\n")
    with pytest.raises(ConfigError, match="unknown layer 'ghost' \\(included by a\\)"):
        resolve("a", base=tmp_path)
    with pytest.raises(UsageError, match="empty layer spec"):
        resolve("")
    with pytest.raises(UsageError, match="empty layer"):
        resolve("8.3::testing")
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        resolve(f"8.3:{afile}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xcpimg.cli", *args], capture_output=True, text=True)


def test_cli_layers_prints_dirs() -> None:
    proc = _cli("layers", "8.2:ci")
    assert proc.returncode == 0, proc.stderr
    assert [Path(p).name for p in proc.stdout.split()] == ["8.2", "ci", "testing", "candidates", "updates", "base"]


def test_cli_layers_find() -> None:
    proc = _cli("layers", "8.3:testing", "--find", "yum-repos.conf.tmpl")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0
    assert [Path(p).parent.name for p in lines] == ["testing", "testing", "candidates", "updates", "base"]


@pytest.mark.parametrize("args, code, message", [
    (("layers", "8.3:nosuch"), 1, "unknown layer 'nosuch'"),
    (("layers", ""), 2, "empty layer spec"),
    (("layers", "8.3", "--find", "nope"), 1, "cannot find 'nope'"),
    (("nosuchcommand",), 2, "invalid choice"),
])
def test_cli_errors_are_one_line(args: tuple[str, ...], code: int, message: str) -> None:
    proc = _cli(*args)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_cycle_returns_at_once(tmp_path: Path) -> None:
    _layer(tmp_path, "x", include=f"{tmp_path}/y\n")
    _layer(tmp_path, "y", include=f"{tmp_path}/x\n")
    proc = subprocess.run([sys.executable, "-m", "xcpimg.cli", "layers", f"{tmp_path}/x"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "INCLUDE cycle: x -> y -> x" in proc.stderr
