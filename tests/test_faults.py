"""No traceback, ever: faults and bad layers through the real CLI, in a subprocess.

Each case asserts: a non-zero exit, exactly one error line on stderr (the last line; any
lines before it are the build's progress log), no 'Traceback', no output left (nor a
temporary file beside it, nor a temp dir). Full disks are small tmpfs mounts made by the
test (root only: CI runs as root, elsewhere the test skips unless CI is set).
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xcpimg.fixture_repo import FixtureRepo, ensure_fixture_repo

PY = sys.executable
NOT_UTF8 = b"caf\xe9 \xff\xfe\n"  # latin-1, not UTF-8


@pytest.fixture(scope="module")
def fx() -> FixtureRepo:
    return ensure_fixture_repo()


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test mounts a tmpfs: CI must run it as root")
        pytest.skip("mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: int | str) -> Iterator[Path]:
    need_root()
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "xcpimg-test-full", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@dataclass
class Run:
    """One command line, the output it must not leave and the words its error line must hold."""

    args: list[str]
    output: Path
    words: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    code: int | None = None  # None: any non-zero


def check(run: Run, tmpdir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "XCPIMG_DEBUG")}
    env.update({"TMPDIR": str(tmpdir), "PATH": f"{Path(PY).parent}:{os.environ['PATH']}", **run.env})
    parent = run.output.parent
    before = sorted(p.name for p in parent.iterdir()) if parent.is_dir() and parent != Path("/proc") else None
    proc = subprocess.run([PY, "-m", "xcpimg.cli", *run.args], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    cmd = run.args[0]
    assert proc.returncode != 0 and (run.code is None or proc.returncode == run.code), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert errors == lines[-1:] and lines[-1].startswith(f"xcpimg {cmd}: error: "), proc.stderr
    for word in run.words:
        assert word in lines[-1], lines[-1]
    assert not os.path.lexists(run.output)
    if before is not None and parent.is_dir():
        assert sorted(p.name for p in parent.iterdir()) == before  # no .part, nothing else
    assert [p.name for p in tmpdir.iterdir()] == []
    return lines[-1]


def iso_args(fx: FixtureRepo, out: Path, img: Path, spec: str = "8.3", *extra: str) -> list[str]:
    return ["iso", "-o", str(out), "-V", "X", "--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url,
            *extra, spec, str(img)]


@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(output dir, TMPDIR, install.img)"""
    out, tmp = tmp_path / "out", tmp_path / "TMP"
    out.mkdir()
    tmp.mkdir()
    img = tmp_path / "install.img"
    img.write_bytes(b"\0" * 4096)
    return out, tmp, img


def overlay(where: Path, files: dict[str, bytes], name: str = "overlay") -> Path:
    """A layer directory *name* under *where* holding *files* (relative path -> bytes)."""
    top = where / name
    for rel, data in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    return top


# ------------------------------------------------------------------------------------ bad layers

LayerCase = Callable[[Path], tuple[str, tuple[str, ...]]]


def _include(t: Path) -> tuple[str, tuple[str, ...]]:
    return f"8.3:{overlay(t, {'INCLUDE': NOT_UTF8})}", ("INCLUDE", "not UTF-8")


def _template(t: Path) -> tuple[str, tuple[str, ...]]:  # a layer named 8.3, first, overrides the dnf template
    return f"{overlay(t, {'yumdl.conf.tmpl': NOT_UTF8}, '8.3')}:8.3", ("yumdl.conf.tmpl", "not UTF-8")


def _bootargs(t: Path) -> tuple[str, tuple[str, ...]]:
    return f"8.3:{overlay(t, {'installer-bootargs.lst': NOT_UTF8})}", ("installer-bootargs.lst", "not UTF-8")


def _menu(t: Path) -> tuple[str, tuple[str, ...]]:
    return (f"{overlay(t, {'iso/boot/isolinux/isolinux.cfg': NOT_UTF8}, '8.3')}:8.3",
            ("isolinux.cfg", "not UTF-8"))


def _zero_division(t: Path) -> tuple[str, tuple[str, ...]]:
    layer = overlay(t, {"yumdl.conf.tmpl": b"[main]\n{{ 1/0 }}\n"}, "8.3")
    return f"{layer}:8.3", ("yumdl.conf.tmpl:2", "ZeroDivisionError")


def _missing_include(t: Path) -> tuple[str, tuple[str, ...]]:
    layer = overlay(t, {"yumdl.conf.tmpl": b'{% include "nope.tmpl" %}'}, "8.3")
    return f"{layer}:8.3", ("yumdl.conf.tmpl:1", "template error")


def _sandbox(t: Path) -> tuple[str, tuple[str, ...]]:
    return (f"{overlay(t, {'yumdl.conf.tmpl': b'{{ cycler.__init__.__globals__.os }}'}, '8.3')}:8.3",
            ("yumdl.conf.tmpl", "unsafe"))


def _efi_is_a_file(t: Path) -> tuple[str, tuple[str, ...]]:
    return f"8.3:{overlay(t, {'iso/EFI': b'not a directory'})}", ("iso/EFI", "is a file", "directory")


LAYER_CASES: dict[str, LayerCase] = {f.__name__.strip("_").replace("_", "-"): f for f in (
    _include, _template, _bootargs, _menu, _zero_division, _missing_include, _sandbox, _efi_is_a_file)}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_bad_layer(case: str, fx: FixtureRepo, work: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, tmp, img = work
    spec, words = LAYER_CASES[case](tmp_path / "layers")
    check(Run(iso_args(fx, out / "x.iso", img, spec), out / "x.iso", words, code=1), tmp)


def test_packages_lst_not_utf8(fx: FixtureRepo, work: tuple[Path, Path, Path], tmp_path: Path) -> None:
    need_root()  # installimg runs as root only
    out, tmp, _img = work
    layer = overlay(tmp_path / "layers", {"packages.lst": NOT_UTF8}, "8.3")
    args = ["installimg", "-o", str(out / "install.img"), "--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url,
            f"{layer}:8.3"]
    check(Run(args, out / "install.img", ("packages.lst", "not UTF-8"), code=1), tmp)


# ------------------------------------------------------------------------------------ epoch, /proc

@pytest.mark.parametrize("epoch", ["99999999999999", "4294967296", "-1", "١٢٣٤٥٦٧٨٩٠"])
def test_source_date_epoch_out_of_range(epoch: str, fx: FixtureRepo, work: tuple[Path, Path, Path]) -> None:
    out, tmp, img = work
    check(Run(iso_args(fx, out / "x.iso", img), out / "x.iso", ("SOURCE_DATE_EPOCH",),
              env={"SOURCE_DATE_EPOCH": epoch}, code=2), tmp)
    check(Run(["probe-initrd", "-o", str(out / "p.img")], out / "p.img", ("SOURCE_DATE_EPOCH",),
              env={"SOURCE_DATE_EPOCH": epoch}, code=2), tmp)


def test_largest_epoch_builds(fx: FixtureRepo, work: tuple[Path, Path, Path]) -> None:
    """The bound is the real one: the last second it names still gives a valid ISO and initrd."""
    out, tmp, img = work
    env = {**os.environ, "TMPDIR": str(tmp), "SOURCE_DATE_EPOCH": "4294967295"}
    for args in (iso_args(fx, out / "x.iso", img, "8.3", "--netinstall"), ["probe-initrd", "-o", str(out / "p")]):
        proc = subprocess.run([PY, "-m", "xcpimg.cli", *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p", "x.iso"]


@pytest.mark.parametrize("cmd", ["iso", "probe-initrd", "fixture-repo"])
def test_output_under_proc(cmd: str, fx: FixtureRepo, work: tuple[Path, Path, Path]) -> None:
    _out, tmp, img = work
    target = Path("/proc/xcpimg-test-output")
    args = {"iso": iso_args(fx, target, img, "8.3", "--netinstall"),
            "probe-initrd": ["probe-initrd", "-o", str(target)], "fixture-repo": ["fixture-repo", str(target)]}[cmd]
    check(Run(args, target, (str(target),)), tmp)


# ------------------------------------------------------------------------------------ full disks

def test_disk_full_while_staging(fx: FixtureRepo, work: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out, _tmp, img = work
    with tmpfs(tmp_path / "small-tmp", "8m") as small:
        check(Run(iso_args(fx, out / "x.iso", img), out / "x.iso", ("No space left on device",)), small)
        assert list(small.iterdir()) == []


def test_disk_full_while_mastering(fx: FixtureRepo, work: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _out, tmp, img = work
    with tmpfs(tmp_path / "small-out", "8m") as small:
        check(Run(iso_args(fx, small / "x.iso", img), small / "x.iso", ("cannot master", "x.iso",
                                                                        "No space left on device")), tmp)
        assert list(small.iterdir()) == []


def test_disk_full_writing_the_hybrid_table(fx: FixtureRepo, work: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """A tmpfs exactly the size of the mastered volume: mastering fits, the padded hybrid image does not."""
    out, tmp, img = work
    ref = out / "ref.iso"
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run([PY, "-m", "xcpimg.cli", *iso_args(fx, ref, img)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with ref.open("rb") as f:
        f.seek(16 * 2048 + 80)
        volume = struct.unpack("<I", f.read(4))[0] * 2048
    assert ref.stat().st_size > volume  # the hybrid padding and backup GPT come after the volume
    ref.unlink()
    with tmpfs(tmp_path / "exact", -(-volume // 4096) * 4096) as small:
        line = check(Run(iso_args(fx, small / "x.iso", img), small / "x.iso", ("No space left on device",)), tmp)
        assert "cannot master" not in line  # mastering itself fitted
        assert list(small.iterdir()) == []


def test_disk_full_probe_initrd(work: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _out, tmp, _img = work
    with tmpfs(tmp_path / "small", "64k") as small:
        check(Run(["probe-initrd", "-o", str(small / "p.img")], small / "p.img",
                  ("No space left on device", str(small / "p.img"))), tmp)
        assert list(small.iterdir()) == []


def test_disk_full_fixture_repo(fx: FixtureRepo, work: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _out, tmp, _img = work
    with tmpfs(tmp_path / "small", "8m") as small:
        check(Run(["fixture-repo", str(small / "repo")], small / "repo", ("No space left on device",)), tmp)
        assert list(small.iterdir()) == []
