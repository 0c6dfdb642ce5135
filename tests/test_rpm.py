"""xcpimg.rpm against real rpmbuild output (headers, file lists, payloads) and hostile payloads."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest

from xcpimg import rpm as R
from xcpimg.errors import BuildError
from xcpimg.rpm import RpmPackage
from xcpimg.run import output, run

pytestmark = pytest.mark.timeout(120)

SPEC = r"""
Name: xtest
Version: 1.2
Release: 3.xcpng8.3
Epoch: 4
Summary: xcpimg rpm reader test
License: MIT
BuildArch: noarch
Requires: bash >= 4
%description
test
%install
d=%{buildroot}
mkdir -p $d/usr/share/xtest/empty $d/usr/bin $d/boot $d/usr/src/branding $d/usr/sbin
printf 'hello\n' > $d/usr/share/xtest/file.txt
printf '#!/bin/sh\necho hi\n' > $d/usr/bin/xtest
chmod 755 $d/usr/bin/xtest
printf 'suid\n' > $d/usr/sbin/xsuid
ln -s ../share/xtest/file.txt $d/usr/bin/xtest-link
ln -s /usr/share/xtest $d/usr/bin/abs-link
printf 'shared data\n' > $d/usr/share/xtest/hard1
ln $d/usr/share/xtest/hard1 $d/usr/share/xtest/hard2
printf 'xen debug\n' > $d/boot/xen-4.17.5-1-d.gz
printf 'xen\n' > $d/boot/xen-4.17.5-1.gz
printf 'xen map\n' > $d/boot/xen-4.17.5-1-d.map
printf 'PRODUCT_BRAND=XCP-ng\nPRODUCT_VERSION=8.3.0\n' > $d/usr/src/branding/branding
head -c 300000 /dev/zero | tr '\0' 'x' > $d/usr/share/xtest/big
%files
/usr/share/xtest
/usr/bin/xtest
/usr/bin/xtest-link
/usr/bin/abs-link
%attr(4755,root,root) /usr/sbin/xsuid
/boot/xen-4.17.5-1-d.gz
/boot/xen-4.17.5-1.gz
/boot/xen-4.17.5-1-d.map
/usr/src/branding
%ghost /var/log/xtest.log
"""

PAYLOADS = {"gzip": "w9.gzdio", "xz": "w2.xzdio", "zstd": "w19.zstdio", "bzip2": "w9.bzdio",
            "lzma": "w6.lzdio"}


def rpmbuild(top: Path, spec_text: str, payload: str, mode: str = "-bb") -> Path:
    top.mkdir(parents=True)
    spec = top / "t.spec"
    spec.write_text(spec_text)
    run(["rpmbuild", mode, "--quiet", f"--define=_topdir {top}", f"--define=_binary_payload {payload}",
         f"--define=_source_payload {payload}", "--define=_build_id_links none",
         "--define=__os_install_post %{nil}", spec])
    return next((top / ("SRPMS" if mode == "-bs" else "RPMS")).rglob("*.rpm"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rpms")
    return {comp: rpmbuild(base / comp, SPEC, payload) for comp, payload in PAYLOADS.items()}


@pytest.fixture(params=sorted(PAYLOADS))
def pkg(request: pytest.FixtureRequest, built: dict[str, Path]) -> RpmPackage:
    return RpmPackage(built[request.param])


def qf(path: Path, fmt: str) -> str:
    return output(["rpm", "-qp", "--nosignature", "--nodigest", "--qf", fmt, path])


# -- headers and file lists -------------------------------------------------------

def test_header_matches_rpm(pkg: RpmPackage) -> None:
    fields = ["NAME", "VERSION", "RELEASE", "EPOCH", "ARCH", "BUILDTIME", "SOURCERPM", "PAYLOADCOMPRESSOR"]
    want = qf(pkg.path, "\t".join(f"%{{{f}}}" for f in fields)).split("\t")
    got = [pkg.name, pkg.version, pkg.release, str(pkg.epoch), pkg.arch, str(pkg.buildtime),
           pkg.sourcerpm, pkg.payload_compressor]
    assert got == want
    assert pkg.nevra == "xtest-4:1.2-3.xcpng8.3.noarch"
    assert pkg.nevra == qf(pkg.path, "%{NAME}-%{EPOCH}:%{VERSION}-%{RELEASE}.%{ARCH}")
    assert qf(pkg.path, "[%{REQUIRENAME}\n]").splitlines() == pkg.requires
    assert "bash" in pkg.requires


def test_compressor_is_the_one_asked(built: dict[str, Path]) -> None:
    for comp, path in built.items():
        assert RpmPackage(path).payload_compressor == comp


def test_file_list_matches_rpm(pkg: RpmPackage) -> None:
    want = qf(pkg.path, "[%{FILENAMES}\t%{FILEMODES}\t%{FILESIZES}\t%{FILELINKTOS}\t%{FILEFLAGS}\n]")
    got = "".join(f"{f.path}\t{f.mode}\t{f.size}\t{f.linkto}\t{f.flags}\n" for f in pkg.files())
    assert got == want
    listed = output(["rpm", "-qlp", "--nosignature", pkg.path]).split("\n")[:-1]
    assert [f.path for f in pkg.files()] == listed
    by_path = {f.path: f for f in pkg.files()}
    assert by_path["/usr/bin/xtest-link"].is_symlink and by_path["/usr/bin/xtest-link"].linkto == \
        "../share/xtest/file.txt"
    assert by_path["/usr/share/xtest/empty"].is_dir
    assert by_path["/var/log/xtest.log"].is_ghost
    assert by_path["/usr/sbin/xsuid"].mode & 0o7777 == 0o4755


def test_glob(pkg: RpmPackage) -> None:
    assert pkg.glob("/boot/xen-*-d.gz") == ["/boot/xen-4.17.5-1-d.gz"]
    assert pkg.glob("/boot/xen-*.gz") == ["/boot/xen-4.17.5-1-d.gz", "/boot/xen-4.17.5-1.gz"]
    assert pkg.glob("/usr/src/*") == ["/usr/src/branding"]
    assert pkg.glob("/usr/*/xtest") == ["/usr/bin/xtest", "/usr/share/xtest"]   # '*' stays in one component
    assert pkg.glob("/nothing/*") == []


def test_source_rpm(tmp_path: Path) -> None:
    srpm = RpmPackage(rpmbuild(tmp_path / "src", SPEC, "w9.gzdio", mode="-bs"))
    assert srpm.is_source and srpm.arch == "src"
    assert srpm.nevra == "xtest-4:1.2-3.xcpng8.3.src"
    assert [f.path for f in srpm.files()] == ["/t.spec"]
    assert srpm.extract_file("/t.spec") == SPEC.encode()


# -- payload ------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """path -> (kind, perms, content or target) for everything under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = "/" + str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode) & 0o777, p.read_bytes(), st.st_mtime)
    return out


def test_extract_all_matches_rpm2cpio(pkg: RpmPackage, tmp_path: Path) -> None:
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    ref.mkdir()
    written = pkg.extract(ours)
    listing = output(["sh", "-c", 'rpm2cpio "$1" | cpio -t --quiet', "sh", pkg.path]).split()
    assert sorted(str(p.relative_to(ours)) for p in written) == sorted(x.lstrip("./") for x in listing)
    run(["sh", "-c", 'rpm2cpio "$1" | cpio -idm --quiet --no-absolute-filenames', "sh", pkg.path], cwd=ref)
    assert snapshot(ours) == snapshot(ref)
    # what the reference tools would not tell apart
    assert (ours / "usr/bin/xtest").stat().st_mode & 0o777 == 0o755
    assert (ours / "usr/sbin/xsuid").stat().st_mode & 0o7777 == 0o755          # set-uid bit dropped
    assert (ours / "usr/share/xtest/hard1").stat().st_ino == (ours / "usr/share/xtest/hard2").stat().st_ino
    assert (ours / "usr/share/xtest/hard1").read_bytes() == b"shared data\n"
    assert os.readlink(ours / "usr/bin/abs-link") == "/usr/share/xtest"
    assert (ours / "usr/share/xtest/empty").is_dir()
    assert not (ours / "var").exists()                                          # %ghost: not in payload
    mtime = {f.path: f.mtime for f in pkg.files()}["/usr/bin/xtest"]
    assert (ours / "usr/bin/xtest").stat().st_mtime == mtime


def test_extract_selected(pkg: RpmPackage, tmp_path: Path) -> None:
    # hard1 carries no data in the archive (rpm stores it with hard2, which is not asked for)
    wanted = ["/boot/xen-4.17.5-1-d.gz", "/usr/share/xtest/hard1", "usr/bin/xtest-link"]
    written = pkg.extract(tmp_path, wanted)
    assert sorted(written) == sorted(tmp_path / w.lstrip("/") for w in wanted)
    assert (tmp_path / "boot/xen-4.17.5-1-d.gz").read_bytes() == b"xen debug\n"
    assert (tmp_path / "usr/share/xtest/hard1").read_bytes() == b"shared data\n"
    assert os.readlink(tmp_path / "usr/bin/xtest-link") == "../share/xtest/file.txt"
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir())
    assert files == ["boot/xen-4.17.5-1-d.gz", "usr/bin/xtest-link", "usr/share/xtest/hard1"]
    assert pkg.extract(tmp_path / "nothing", []) == []


def test_extract_file(pkg: RpmPackage) -> None:
    assert pkg.extract_file("/usr/src/branding/branding") == b"PRODUCT_BRAND=XCP-ng\nPRODUCT_VERSION=8.3.0\n"
    assert pkg.extract_file("/usr/share/xtest/hard1") == b"shared data\n"
    assert pkg.extract_file("/usr/share/xtest/big") == b"x" * 300000
    with pytest.raises(BuildError, match="is not a regular file"):
        pkg.extract_file("/usr/bin/xtest-link")


def test_missing_file_names_package_and_path(pkg: RpmPackage, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"xtest-4:1.2-3.xcpng8.3.noarch .*has no file /boot/xen-9-d.gz"):
        pkg.extract(tmp_path, ["/boot/xen-4.17.5-1.gz", "/boot/xen-9-d.gz"])
    assert not (tmp_path / "boot").exists()          # checked before anything is written
    with pytest.raises(BuildError, match="has no file /var/log/xtest.log"):   # ghost: not in the payload
        pkg.extract_file("/var/log/xtest.log")
    with pytest.raises(BuildError, match="invalid path"):
        pkg.extract(tmp_path, ["/usr/../etc/passwd"])


def test_not_an_rpm_and_truncated(built: dict[str, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.rpm"
    junk.write_bytes(b"not an rpm at all" * 10)
    with pytest.raises(BuildError, match="is not an RPM package"):
        RpmPackage(junk)
    data = built["xz"].read_bytes()
    pkg = RpmPackage(built["xz"])
    short = tmp_path / "short.rpm"
    short.write_bytes(data[:pkg.payload_offset + 200])
    with pytest.raises(BuildError, match="truncated|corrupt"):
        RpmPackage(short).extract(tmp_path / "out")
    header_cut = tmp_path / "cut.rpm"
    header_cut.write_bytes(data[:pkg.payload_offset - 10])
    with pytest.raises(BuildError, match="truncated"):
        RpmPackage(header_cut)
    evil = tmp_path / "evil.rpm"
    make_rpm(evil, newc([]), [("/../etc/passwd", REG, 1, "")])
    with pytest.raises(BuildError, match="unsafe file list"):
        RpmPackage(evil).files()
    flipped = bytearray(data)
    flipped[pkg.payload_offset - 20] ^= 0x01       # inside the main header's data store
    bad = tmp_path / "bad.rpm"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(BuildError, match="digest mismatch"):
        RpmPackage(bad)


# -- handcrafted packages: hostile payloads, stripped cpio, payload digest --------------

def newc(entries: list[tuple[str, int, bytes]], *, nlinks: dict[str, tuple[int, int]] | None = None) -> bytes:
    """A cpio newc archive of (name, mode, data) with optional name -> (ino, nlink)."""
    out = bytearray()
    for i, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")]):
        ino, nlink = (nlinks or {}).get(name, (i + 1, 1))
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, nlink, 1700000000, len(data), 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def header(tags: dict[int, tuple[int, object]]) -> bytes:
    """An RPM header structure from tag -> (type, value)."""
    index, store = bytearray(), bytearray()
    align = {R._INT16: 2, R._INT32: 4, R._INT64: 8}
    fmt = {R._INT16: "H", R._INT32: "I", R._INT64: "Q"}
    for tag in sorted(tags):
        typ, value = tags[tag]
        store += b"\0" * (-len(store) % align.get(typ, 1))
        if typ in fmt:
            values = list(value)  # type: ignore[call-overload]
            data, count = struct.pack(f">{len(values)}{fmt[typ]}", *values), len(values)
        elif typ == R._STRING:
            data, count = str(value).encode() + b"\0", 1
        elif typ == R._STRING_ARRAY:
            data = b"".join(s.encode() + b"\0" for s in value)  # type: ignore[attr-defined]
            count = len(value)  # type: ignore[arg-type]
        else:
            raise AssertionError(typ)
        index += struct.pack(">IIiI", tag, typ, len(store), count)
        store += data
    intro = R.HEADER_MAGIC + b"\0" * 4 + struct.pack(">II", len(tags), len(store))
    return intro + bytes(index) + bytes(store)


def make_rpm(path: Path, payload: bytes, files: list[tuple[str, int, int, str]] = (),  # type: ignore[assignment]
             extra: Mapping[int, tuple[int, object]] | None = None) -> Path:
    """A minimal binary RPM: files are (path, mode, size, linkto) in header order."""
    tags: dict[int, tuple[int, object]] = {
        R.NAME: (R._STRING, "evil"), R.VERSION: (R._STRING, "1"), R.RELEASE: (R._STRING, "1"),
        R.ARCH: (R._STRING, "x86_64"), R.PAYLOADFORMAT: (R._STRING, "cpio"),
        R.PAYLOADCOMPRESSOR: (R._STRING, "none")}
    if files:
        dirs = sorted({p.rsplit("/", 1)[0] + "/" for p, *_ in files})
        tags.update({
            R.BASENAMES: (R._STRING_ARRAY, [p.rsplit("/", 1)[1] for p, *_ in files]),
            R.DIRNAMES: (R._STRING_ARRAY, dirs),
            R.DIRINDEXES: (R._INT32, [dirs.index(p.rsplit("/", 1)[0] + "/") for p, *_ in files]),
            R.FILEMODES: (R._INT16, [m for _, m, _, _ in files]),
            R.FILESIZES: (R._INT32, [s for _, _, s, _ in files]),
            R.FILELINKTOS: (R._STRING_ARRAY, [t for *_, t in files]),
        })
    tags.update(extra or {})
    lead = R.LEAD_MAGIC + bytes([3, 0]) + struct.pack(">HH", 0, 1) + b"evil".ljust(66, b"\0") + \
        struct.pack(">HH", 1, 5) + b"\0" * 16
    path.write_bytes(lead + header({}) + header(tags) + payload)
    return path


REG, DIR, LNK = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777


def test_hostile_dotdot(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "dest"
    pkg = RpmPackage(make_rpm(tmp_path / "e.rpm", newc([("./ok", REG, b"ok"), ("../x", REG, b"evil"),
                                                        ("./sub/../../y", REG, b"evil")])))
    with pytest.raises(BuildError, match=r"unsafe path '\.\./x'"):
        pkg.extract(dest)
    assert not (tmp_path / "a" / "x").exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["dest"]


def test_hostile_absolute_stays_inside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    outside = tmp_path / "abs"
    pkg = RpmPackage(make_rpm(tmp_path / "e.rpm", newc([(f"{outside}/file", REG, b"in")])))
    pkg.extract(dest)
    assert not outside.exists()
    assert (dest / str(outside).lstrip("/") / "file").read_bytes() == b"in"


def test_hostile_write_through_symlink(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    pkg = RpmPackage(make_rpm(tmp_path / "e.rpm", newc([("./link", LNK, str(outside).encode()),
                                                        ("./link/file", REG, b"evil")])))
    with pytest.raises(BuildError, match=r"/link is a symlink \(refusing to write through it\)"):
        pkg.extract(dest)
    assert list(outside.iterdir()) == []
    assert os.readlink(dest / "link") == str(outside)


def test_hostile_symlink_dir_via_hardlink_and_dirs(tmp_path: Path) -> None:
    """Directory entry and hardlink members through a symlink placed earlier: refused too."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for i, second in enumerate([("./l/sub", DIR, b""), ("./l/h", REG, b"")]):
        pkg = RpmPackage(make_rpm(tmp_path / f"e{i}.rpm",
                                  newc([("./l", LNK, str(outside).encode()), ("./h0", REG, b""), second],
                                       nlinks={"./h0": (9, 2), "./l/h": (9, 2)})))
        with pytest.raises(BuildError, match="symlink"):
            pkg.extract(tmp_path / f"dest{i}")
    assert list(outside.iterdir()) == []


def test_preexisting_symlink_in_dest_is_not_followed(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "usr").symlink_to(outside)
    (dest / "victim").symlink_to(outside / "victim")
    pkg = RpmPackage(make_rpm(tmp_path / "e.rpm", newc([("./victim", REG, b"replaced"),
                                                        ("./usr/bin/x", REG, b"evil")])))
    with pytest.raises(BuildError, match="/usr is a symlink"):
        pkg.extract(dest)
    assert list(outside.iterdir()) == []
    assert not (dest / "victim").is_symlink() and (dest / "victim").read_bytes() == b"replaced"


def test_setid_bits_dropped_and_specials_skipped(tmp_path: Path) -> None:
    pkg = RpmPackage(make_rpm(tmp_path / "e.rpm", newc([
        ("./suid", stat.S_IFREG | 0o6755, b"x"), ("./sticky", stat.S_IFDIR | 0o1777, b""),
        ("./fifo", stat.S_IFIFO | 0o644, b""), ("./ro", stat.S_IFDIR | 0o555, b""),
        ("./ro/inner", REG, b"in")])))
    written = pkg.extract(tmp_path / "d")
    assert [p.name for p in written] == ["suid", "sticky", "ro", "inner"]
    assert stat.S_IMODE((tmp_path / "d/suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "d/sticky").stat().st_mode) == 0o1777
    assert stat.S_IMODE((tmp_path / "d/ro").stat().st_mode) == 0o555
    assert (tmp_path / "d/ro/inner").read_bytes() == b"in"
    assert not (tmp_path / "d/fifo").exists()
    os.chmod(tmp_path / "d/ro", 0o755)


def test_payload_digest_checked(tmp_path: Path) -> None:
    payload = newc([("./a", REG, b"hello")])
    good = hashlib.sha256(payload).hexdigest()
    for name, digest in (("good", good), ("bad", "0" * 64)):
        extra = {R.PAYLOADDIGEST: (R._STRING_ARRAY, [digest]), R.PAYLOADDIGESTALGO: (R._INT32, [8])}
        pkg = RpmPackage(make_rpm(tmp_path / f"{name}.rpm", payload, extra=extra))
        if name == "good":
            assert [p.name for p in pkg.extract(tmp_path / name)] == ["a"]
        else:
            with pytest.raises(BuildError, match="payload digest mismatch"):
                pkg.extract(tmp_path / name)


def stripped(entries: list[tuple[int, bytes]]) -> bytes:
    """A stripped cpio (rpm >= 4.12 large-file payloads): file index + data, newc trailer."""
    out = bytearray()
    for fx, data in entries:
        out += b"07070X" + b"%08x" % fx
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out) + newc([])


def test_stripped_cpio(tmp_path: Path) -> None:
    files = [("/opt/big/a", REG, 5, ""), ("/opt/big/h1", REG, 3, ""), ("/opt/big/h2", REG, 3, ""),
             ("/opt/big/link", LNK, 1, "a"), ("/opt/big", DIR, 0, "")]
    extra = {R.LONGFILESIZES: (R._INT64, [5, 3, 3, 1, 0]), R.FILEINODES: (R._INT32, [1, 2, 2, 3, 4]),
             R.FILEDEVICES: (R._INT32, [1] * 5), R.FILEMTIMES: (R._INT32, [1700000000] * 5)}
    payload = stripped([(4, b""), (0, b"aaaaa"), (1, b""), (2, b"hhh"), (3, b"a")])
    pkg = RpmPackage(make_rpm(tmp_path / "big.rpm", payload, files, extra))
    pkg.extract(tmp_path / "d")
    big = tmp_path / "d/opt/big"
    assert (big / "a").read_bytes() == b"aaaaa"
    assert (big / "h1").read_bytes() == b"hhh" and (big / "h1").stat().st_ino == (big / "h2").stat().st_ino
    assert os.readlink(big / "link") == "a"
    assert pkg.extract_file("/opt/big/h1") == b"hhh"
    bad = RpmPackage(make_rpm(tmp_path / "bad.rpm", stripped([(7, b"")]), files, extra))
    with pytest.raises(BuildError, match="payload names file #7"):
        bad.extract(tmp_path / "bad")
