"""cpio newc writer: format details, determinism, and agreement with GNU cpio."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hostkit import need_root

from xcpimg import cpio
from xcpimg.errors import BuildError

EPOCH = 1_700_000_000


def make_tree(root: Path, *, future: int = EPOCH + 10_000) -> None:
    """A small tree with every kind of entry the writer handles."""
    (root / "bin").mkdir(parents=True)
    (root / "etc" / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o4755)
    (root / "etc" / "big").write_bytes(bytes(range(256)) * 9000 + b"tail")  # > 1 chunk, odd size
    (root / "etc" / "empty-file").write_bytes(b"")
    (root / "etc" / "sub" / "a").write_text("A")
    os.link(root / "etc" / "sub" / "a", root / "bin" / "a-link")
    os.link(root / "etc" / "sub" / "a", root / "z-last-link")
    os.symlink("../etc/sub/a", root / "bin" / "rel-link")
    os.symlink("/sbin/init", root / "init")
    os.mkfifo(root / "etc" / "fifo")
    if os.geteuid() == 0:
        os.mknod(root / "etc" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    os.utime(root / "etc" / "sub" / "a", (future, future))
    os.utime(root / "bin" / "tool", (1_000_000, 1_000_000))


def archive(root: Path, **kw: object) -> bytes:
    buf = io.BytesIO()
    n = cpio.write_newc(root, buf, epoch=EPOCH, **kw)  # type: ignore[arg-type]
    data = buf.getvalue()
    assert n == len(data)
    return data


def test_order_fields_and_padding(tmp_path: Path) -> None:
    make_tree(tmp_path / "r")
    data = archive(tmp_path / "r")
    assert len(data) % 512 == 0
    members = list(cpio.read_newc(io.BytesIO(data)))
    names = [m.name for m in members]
    assert names[0] == "."
    # pre-order, byte-wise sorted: a directory comes right before its contents
    expected = [".", "bin", "bin/a-link", "bin/rel-link", "bin/tool", "empty", "etc", "etc/big"]
    assert names[:len(expected)] == expected
    order = [names.index(n) for n in ("etc/sub", "etc/sub/a", "init", "z-last-link")]
    assert order == sorted(order)
    by = {m.name: m for m in members}
    assert by["bin/tool"].mode == stat.S_IFREG | 0o4755
    assert by["bin/tool"].mtime == 1_000_000           # older than the epoch: kept
    assert by["etc/sub/a"].mtime == EPOCH              # newer: clamped
    assert all(m.uid == 0 and m.gid == 0 for m in members)
    assert by["etc/big"].data == (tmp_path / "r/etc/big").read_bytes()
    assert by["etc/empty-file"].data == b""
    assert by["init"].is_symlink and by["init"].data == b"/sbin/init"
    assert by["bin/rel-link"].data == b"../etc/sub/a"
    assert stat.S_ISFIFO(by["etc/fifo"].mode)
    assert by["etc"].nlink == 3 and by["empty"].nlink == 2
    # inode numbers: unique per file, starting at 1, in walk order
    inos = [m.ino for m in members if m.nlink == 1 or not m.is_file]
    assert len(set(inos)) == len(inos)
    assert members[0].ino == 1
    # the archive ends with the trailer then zeros
    end = data.rstrip(b"\0")
    assert end.endswith(b"TRAILER!!!")


def test_device_node(tmp_path: Path) -> None:
    need_root("mknod")
    make_tree(tmp_path / "r")
    by = {m.name: m for m in cpio.read_newc(io.BytesIO(archive(tmp_path / "r")))}
    dev = by["etc/console"]
    assert stat.S_ISCHR(dev.mode) and (dev.rdevmajor, dev.rdevminor) == (5, 1)
    assert dev.data == b""


def test_hard_links_share_inode_data_on_last(tmp_path: Path) -> None:
    make_tree(tmp_path / "r")
    members = list(cpio.read_newc(io.BytesIO(archive(tmp_path / "r"))))
    links = [m for m in members if m.name in ("bin/a-link", "etc/sub/a", "z-last-link")]
    assert [m.name for m in links] == ["bin/a-link", "etc/sub/a", "z-last-link"]
    assert len({m.ino for m in links}) == 1
    assert all(m.nlink == 3 for m in links)
    assert [m.data for m in links] == [b"", b"", b"A"]


def test_deterministic_across_trees(tmp_path: Path) -> None:
    """Two trees made at different times (other inodes, other mtimes) give the same bytes."""
    make_tree(tmp_path / "one")
    first = archive(tmp_path / "one")
    os.utime(tmp_path / "one" / "bin", (EPOCH + 50, EPOCH + 50))
    (tmp_path / "pad").write_bytes(b"x")  # shift inode numbers of the second tree
    make_tree(tmp_path / "two")
    assert archive(tmp_path / "two") == first
    assert archive(tmp_path / "one") == first


def test_keep_owner(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    if os.geteuid() == 0:
        os.chown(root / "f", 123, 456)
    by = {m.name: m for m in cpio.read_newc(io.BytesIO(archive(root, keep_owner=True)))}
    st = os.lstat(root / "f")
    assert (by["f"].uid, by["f"].gid) == (st.st_uid, st.st_gid)
    by0 = {m.name: m for m in cpio.read_newc(io.BytesIO(archive(root)))}
    assert (by0["f"].uid, by0["f"].gid) == (0, 0)


def test_gnu_cpio_extracts_identical_tree(tmp_path: Path) -> None:
    """GNU cpio unpacks our archive into the same tree (contents, modes, links)."""
    src = tmp_path / "r"
    make_tree(src)
    data = archive(src)
    dest = tmp_path / "out"
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=dest, check=True)
    for name, path, st in cpio.walk(src):
        if name == b".":
            continue
        other = dest / os.fsdecode(name)
        ost = os.lstat(other)
        assert stat.S_IFMT(ost.st_mode) == stat.S_IFMT(st.st_mode), name
        assert stat.S_IMODE(ost.st_mode) == stat.S_IMODE(st.st_mode), name
        if stat.S_ISREG(st.st_mode):
            assert other.read_bytes() == Path(path).read_bytes(), name
        if stat.S_ISLNK(st.st_mode):
            assert os.readlink(other) == os.readlink(path)
    a = os.lstat(dest / "etc/sub/a")
    assert a.st_nlink == 3 and os.lstat(dest / "z-last-link").st_ino == a.st_ino
    assert int(os.lstat(dest / "etc/big").st_mtime) == EPOCH


def test_reads_gnu_cpio_archive(tmp_path: Path) -> None:
    """The reader understands what GNU cpio writes (cross-check of the format)."""
    src = tmp_path / "r"
    make_tree(src)
    names = "\n".join(os.fsdecode(n) for n, _p, _s in cpio.walk(src)) + "\n"
    out = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=names.encode(), cwd=src,
                         check=True, capture_output=True).stdout
    theirs = {m.name: m for m in cpio.read_newc(io.BytesIO(out))}
    ours = {m.name: m for m in cpio.read_newc(io.BytesIO(archive(src)))}
    assert set(theirs) == set(ours)
    for name, m in ours.items():
        assert m.mode == theirs[name].mode, name
        assert m.data == theirs[name].data, name


def test_concatenated_archives_read_as_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_text("1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two").write_text("2")
    data = archive(tmp_path / "a") + archive(tmp_path / "b")
    assert [m.name for m in cpio.read_newc(io.BytesIO(data))] == [".", "one", ".", "two"]


def test_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildError, match="not a directory"):
        cpio.write_newc(tmp_path / "file", io.BytesIO(), epoch=EPOCH)
    with pytest.raises(BuildError, match="truncated"):
        list(cpio.read_newc(io.BytesIO(archive(tmp_path)[:200])))
    with pytest.raises(BuildError, match="bad magic"):
        list(cpio.read_newc(io.BytesIO(b"070707" + b"0" * 200)))
