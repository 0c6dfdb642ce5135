"""fsutil.copy_tree / copy_node / tree_link_target: untrusted trees are copied without following links out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xcpimg.errors import BuildError
from xcpimg.fsutil import copy_node, copy_tree, tree_link_target


def make_tree(top: Path, links: dict[str, str]) -> Path:
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "file").write_bytes(b"payload\n")
    (top / "sub" / "exec").write_bytes(b"#!/bin/sh\n")
    (top / "sub" / "exec").chmod(0o750)
    for name, target in links.items():
        os.symlink(target, top / name)
    return top


INSIDE = {"to-file": "file", "loop": ".", "to-sub": "sub/deeper", "dangling": "no-such-file",
          "sub/up": "../file", "via-link": "to-sub/../file"}


def test_inside_links_are_copied_as_links(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", INSIDE)
    n = copy_tree(src, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert n == 4 + len(INSIDE)
    for name, target in INSIDE.items():
        assert (dest / name).is_symlink() and os.readlink(dest / name) == target, name
    assert (dest / "file").read_bytes() == b"payload\n" and not (dest / "file").is_symlink()
    assert (dest / "sub" / "exec").stat().st_mode & 0o777 == 0o750
    assert not (dest / "to-sub" / "x").exists() and (dest / "sub" / "deeper").is_dir()


@pytest.mark.parametrize("name,target,why", [
    ("zz-leak", "/etc/shadow", "is absolute"),
    ("zz-etc", "/etc", "is absolute"),
    ("zz-up", "../../etc/passwd", "points outside"),
    ("sub/zz-up", "../..", "points outside"),
    ("zz-dot-up", "./sub/../..", "points outside"),
])
def test_escaping_links_are_refused(tmp_path: Path, name: str, target: str, why: str) -> None:
    src = make_tree(tmp_path / "src", {name: target})
    with pytest.raises(BuildError) as err:
        copy_tree(src, tmp_path / "dest", what="grub-efi modules")
    msg = str(err.value)
    assert msg.startswith("grub-efi modules: symlink ") and f"{name} -> {target}" in msg and why in msg, msg
    assert "\n" not in msg


def test_link_chain_resolved_in_tree_not_lexically(tmp_path: Path) -> None:
    """here -> . makes here/.. the tree's parent: lexically inside, really outside."""
    src = make_tree(tmp_path / "src", {"here": ".", "out": "here/../escaped"})
    with pytest.raises(BuildError, match=r"symlink out -> here/../escaped points outside"):
        copy_tree(src, tmp_path / "dest")
    # and a link through a link that stays inside is fine
    src2 = make_tree(tmp_path / "src2", {"d": "sub/deeper", "ok": "d/../exec"})
    assert tree_link_target(src2 / "ok", src2) == "d/../exec"


def test_loop_is_refused(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": "b/x", "b": "a"})
    with pytest.raises(BuildError, match="symlink loop"):
        copy_tree(src, tmp_path / "dest")


def test_rooted_tree_allows_absolute_targets(tmp_path: Path) -> None:
    """An install.img template tree is a root filesystem: /dev/null means its own /dev/null."""
    src = make_tree(tmp_path / "src", {"sub/masked.service": "/dev/null", "sub/key": "../../../file"})
    with pytest.raises(BuildError, match="points outside"):
        copy_tree(src, tmp_path / "dest", rooted=True)
    src2 = make_tree(tmp_path / "src2", {"sub/masked.service": "/dev/null", "sub/deeper/key": "../../file"})
    copy_tree(src2, tmp_path / "dest2", rooted=True)
    assert os.readlink(tmp_path / "dest2" / "sub" / "masked.service") == "/dev/null"
    with pytest.raises(BuildError, match="is absolute"):
        copy_tree(src2, tmp_path / "dest3")


def test_special_files_refused_and_dest_links_not_written_through(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    with pytest.raises(BuildError, match="fifo is not a regular file"):
        copy_tree(src, tmp_path / "dest")
    (src / "fifo").unlink()
    (src / "f").write_bytes(b"new\n")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\n")
    dest = tmp_path / "d2"
    dest.mkdir()
    os.symlink(victim, dest / "f")
    copy_node(src / "f", dest / "f", src)
    assert victim.read_bytes() == b"keep\n" and (dest / "f").read_bytes() == b"new\n"


def test_tree_that_is_a_link_is_refused(tmp_path: Path) -> None:
    os.symlink("/etc", tmp_path / "moddir")
    with pytest.raises(BuildError, match="not a directory"):
        copy_tree(tmp_path / "moddir", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
