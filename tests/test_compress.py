"""Parallel streamed compression: valid single streams, same bytes whatever the thread count."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard

from xcpimg import compress, cpio
from xcpimg.errors import UsageError

TOOLS = {"bzip2": ["bzip2", "-dc"], "xz": ["xz", "-dc"], "gzip": ["gzip", "-dc"], "zstd": ["zstd", "-dc"]}
# small levels keep the chunks small, so a few MB of input spans many chunks
LEVELS = {"bzip2": 1, "xz": 0, "gzip": 6, "zstd": 3}


def sample(size: int) -> bytes:
    """Compressible but not trivial data: text, binary, long runs and runs of exactly four."""
    parts = [Path(compress.__file__).read_bytes() * 20, bytes(range(256)) * 400, b"\0" * 300_000,
             b"abcd" * 50_000, b"xxxxyyyyzzzz" * 40_000]
    base = b"".join(parts)
    return (base * (size // len(base) + 1))[:size]


def squeeze(data: bytes, method: str, threads: int, *, level: int | None = None, step: int = 65_537) -> bytes:
    out = io.BytesIO()
    with compress.open_compressor(out, method, level=level, threads=threads) as c:
        for i in range(0, len(data), step):
            c.write(data[i:i + step])
    return out.getvalue()


def decompress(blob: bytes, method: str) -> bytes:
    if method == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    return {"bzip2": bz2.decompress, "xz": lzma.decompress, "gzip": gzip.decompress}[method](blob)


@pytest.mark.parametrize("method", compress.METHODS)
def test_roundtrip_tool_and_thread_independence(method: str) -> None:
    data = sample(3_000_000)
    one = squeeze(data, method, 1, level=LEVELS[method])
    three = squeeze(data, method, 3, level=LEVELS[method], step=1_000_003)
    assert one == three
    assert one.startswith(compress.MAGICS[method])
    assert len(one) < len(data) // 3
    assert decompress(one, method) == data
    res = subprocess.run(TOOLS[method], input=one, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data


def test_bzip2_is_one_stream_of_many_blocks(tmp_path: Path) -> None:
    data = sample(2_000_000)
    blob = squeeze(data, "bzip2", 2, level=1)
    assert blob.count(b"BZh1") == 1  # one stream header, not pbzip2-style concatenation
    # bz2's one-shot decompressor stops at the end of the first stream: it must see everything
    d = bz2.BZ2Decompressor()
    assert d.decompress(blob) == data and d.eof and d.unused_data == b""
    (tmp_path / "x.bz2").write_bytes(blob)
    res = subprocess.run(["bzip2", "-tvv", str(tmp_path / "x.bz2")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("huff+mtf") >= 2000000 // compress.bzip2_chunk_size(1)


def test_bzip2_chunk_grown_by_rle_is_split() -> None:
    """Runs of exactly four bytes grow by 5/4 in bzip2's first stage: such a chunk is split in two."""
    size = compress.bzip2_chunk_size(1)
    data = b"".join(bytes([i % 251]) * 4 for i in range(size // 4 + 1))[:size]
    assert len(compress._bzip2_blocks(data, 1)) == 2
    assert len(compress._bzip2_blocks(sample(size), 1)) == 1
    blob = squeeze(data * 2 + b"tail", "bzip2", 2, level=1)
    assert bz2.decompress(blob) == data * 2 + b"tail"
    assert subprocess.run(["bzip2", "-t"], input=blob).returncode == 0


def test_crc32_bzip2_check_value() -> None:
    assert compress.crc32_bzip2(b"123456789") == 0xFC891918


def test_xz_is_one_stream_with_crc32(tmp_path: Path) -> None:
    blob = squeeze(sample(3_000_000), "xz", 2, level=0)
    (tmp_path / "x.xz").write_bytes(blob)
    listing = subprocess.run(["xz", "--robot", "-lv", str(tmp_path / "x.xz")], capture_output=True,
                             text=True, check=True).stdout
    totals = next(line.split("\t") for line in listing.splitlines() if line.startswith("totals"))
    assert totals[1] == "1"          # streams
    assert int(totals[2]) >= 3       # blocks
    assert "CRC32" in listing         # the check the kernel's unxz understands


def test_gzip_header_has_no_time_or_name() -> None:
    blob = squeeze(b"hello" * 1000, "gzip", 2)
    assert blob[3] == 0 and blob[4:8] == b"\0\0\0\0"


@pytest.mark.parametrize("method", compress.METHODS)
@pytest.mark.parametrize("size", [0, 1, "chunk", "chunk+1"])
def test_edges(method: str, size: int | str) -> None:
    level = LEVELS[method]
    chunk = {"bzip2": compress.bzip2_chunk_size(level), "xz": compress.xz_chunk_size(level),
             "gzip": compress.GZIP_CHUNK, "zstd": 1 << 20}[method]
    n = {"chunk": chunk, "chunk+1": chunk + 1}.get(size, size)  # type: ignore[call-overload]
    data = sample(n)
    blob = squeeze(data, method, 2, level=level, step=max(1, n))
    assert decompress(blob, method) == data
    assert subprocess.run(TOOLS[method], input=blob, capture_output=True).stdout == data


def test_cpio_through_compressor(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "data").write_bytes(sample(1_500_000))
    img = tmp_path / "img"
    with img.open("wb") as f, compress.open_compressor(f, "bzip2", level=1) as c:
        cpio.write_newc(root, c, epoch=0)  # type: ignore[arg-type]
    assert compress.detect(img.read_bytes()[:8]) == "bzip2"
    with compress.open_decompressed(img) as f:
        members = {m.name: m for m in cpio.read_newc(f)}
    assert members["etc/data"].data == (root / "etc" / "data").read_bytes()


def test_error_aborts_and_stops_workers() -> None:
    before = threading.active_count()
    out = io.BytesIO()
    with pytest.raises(RuntimeError), compress.open_compressor(out, "bzip2", level=1, threads=2) as c:
        c.write(sample(500_000))
        raise RuntimeError("interrupted")
    assert threading.active_count() == before
    with pytest.raises(ValueError):
        c.write(b"more")


def test_bad_method_and_level() -> None:
    with pytest.raises(UsageError, match="unknown compression 'lz4'"):
        compress.open_compressor(io.BytesIO(), "lz4")
    with pytest.raises(UsageError, match="between 1 and 9"):
        compress.open_compressor(io.BytesIO(), "bzip2", level=0)


@pytest.mark.boot
@pytest.mark.parametrize("method", ["bzip2", "xz", "gzip"])
def test_linux_unpacks_multi_block_initramfs(method: str, tmp_path: Path) -> None:
    """A real kernel (Debian's, under QEMU/TCG) unpacks our spliced multi-block streams.

    The initramfs holds a 2.6 MB file (several bzip2 blocks / xz blocks / gzip chunks) and a
    hard link to it; /init checks the link's SHA-256 and prints the result.
    """
    import hashlib
    import os

    from bootkit import kernel_package

    from xcpimg import debs
    from xcpimg.probe import busybox_binary
    from xcpimg.run import run

    kernel_root = tmp_path / "kernel"
    debs.extract(debs.fetch(kernel_package()), kernel_root)
    vmlinuz = next(kernel_root.glob("boot/vmlinuz-*"))
    root = tmp_path / "root"
    for d in ("bin", "proc", "data/sub"):
        (root / d).mkdir(parents=True)
    (root / "bin/busybox").write_bytes(busybox_binary())
    (root / "bin/busybox").chmod(0o755)
    for applet in ("sh", "sha256sum", "mount", "poweroff", "echo", "stat"):
        os.symlink("busybox", root / "bin" / applet)
    big = sample(2_600_000)  # 4 bzip2 blocks, 3 xz blocks, 3 gzip chunks
    (root / "data/big").write_bytes(big)
    os.link(root / "data/big", root / "data/sub/link")
    (root / "init").write_text(f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
set -- $(sha256sum /data/sub/link)
[ "$1" = "{hashlib.sha256(big).hexdigest()}" ] && echo XCPIMG-UNPACK-OK links=$(stat -c %h /data/big)
poweroff -f
""")
    (root / "init").chmod(0o755)
    img = tmp_path / "initrd"
    with img.open("wb") as f, compress.open_compressor(f, method, level={"xz": 0}.get(method)) as c:
        cpio.write_newc(root, c, epoch=0)  # type: ignore[arg-type]
    proc = run(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-m", "512",
                "-nographic", "-no-reboot", "-kernel", vmlinuz, "-initrd", img,
                "-append", "console=ttyS0 panic=-1 quiet"], timeout=900, check=False)
    console = proc.stdout.decode(errors="replace")
    assert "XCPIMG-UNPACK-OK links=2" in console, console[-2000:]


def test_detect() -> None:
    assert compress.detect(b"070701...") is None
    assert compress.detect(b"\xfd7zXZ\x00\x00") == "xz"
