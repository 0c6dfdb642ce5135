"""Streamed, parallel and deterministic compression of an initramfs.

``open_compressor(out, method)`` returns a writable stream. Input is cut into
fixed-size chunks (the size depends on the method and level, never on the
number of cores), the chunks are compressed in a thread pool (the compression
libraries release the GIL) and the results are written in order, so the
output is byte-identical whatever the thread count, and memory stays bounded
(a few chunks per thread).

Every method produces ONE stream of its format, not a concatenation of
streams: the kernel's initramfs unpacker requires each compressed member to
end exactly on a cpio trailer ("junk at the end of compressed archive"), and
``bzcat | cpio -i`` stops at the first trailer, so independent streams of
arbitrary chunks would not do.

- bzip2: each chunk (one block's worth of input) is compressed alone into a
  one-block bzip2 stream; the blocks are spliced bit by bit into one stream and
  the stream CRC is recombined (what lbzip2 does). A chunk that bzip2's first
  RLE stage grows past one block (rare: many runs of exactly four bytes) is
  compressed as two halves instead; each block is checked against the CRC of
  its input before it is used.
- gzip: raw deflate per chunk, primed with the previous 32 KiB as dictionary,
  ended by a sync flush (byte aligned), then one final empty block; CRC32 and
  size in the trailer; mtime 0 and no name in the header (what pigz does).
- xz: each chunk becomes one LZMA2 block (CRC32 check, which the kernel's
  unxz supports); blocks, index and footer are assembled into one .xz stream.
- zstd: zstandard's own multi-threaded compressor (its job size is fixed, its
  output does not depend on the worker count as long as there is at least one).
"""

from __future__ import annotations

import bz2
import collections
import concurrent.futures as cf
import lzma
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol, Self

from .errors import BuildError, UsageError

METHODS = ("bzip2", "xz", "zstd", "gzip")
#: install.img's default: measured by bench/bench_release.py (a 184 MB cpio of real files, dom0 under
#: TCG): xz is 0.73x bzip2's size and reaches init in 0.67x its time; gzip boots a little faster but is
#: 1.09x bzip2's size; zstd is better on both but the XCP-ng 4.19 kernel cannot unpack it
DEFAULT_METHOD = "xz"
DEFAULT_LEVELS = {"bzip2": 9, "xz": 6, "zstd": 15, "gzip": 9}
LEVEL_RANGES = {"bzip2": (1, 9), "xz": (0, 9), "zstd": (1, 22), "gzip": (1, 9)}
#: Magic bytes at the start of each format.
MAGICS = {"bzip2": b"BZh", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd", "gzip": b"\x1f\x8b"}


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...
    def close(self) -> None: ...


class _StreamContext:
    """``with`` support for the compressing writers: finish on success, abort on error."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def default_threads() -> int:
    """Number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------- generic ordered chunk pipeline

class ChunkedCompressor(_StreamContext):
    """Cut input into *chunk_size* pieces, compress them in a pool, emit results in order.

    *compress_chunk(chunk, previous_chunk)* runs in a worker thread and returns
    bytes; *start* / *finish* write the container's header and trailer; *account*
    sees each input chunk in order in the calling thread (for checksums).
    """

    def __init__(self, out: BinaryIO, chunk_size: int, threads: int,
                 compress_chunk: Callable[[bytes, bytes], Any],
                 emit: Callable[[Any], object] | None = None) -> None:
        self.out = out
        self.chunk_size = chunk_size
        self.threads = threads
        self.compress_chunk = compress_chunk
        self.emit = emit or out.write
        self.buf = bytearray()
        self.prev = b""
        self.pending: collections.deque[cf.Future[Any]] = collections.deque()
        self.pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="xcpimg-compress")
        self.closed = False
        self.started = False
        self.total_in = 0

    def account(self, chunk: bytes) -> None:
        """Hook: every input chunk, in order, in the caller's thread."""

    def start(self) -> None:
        """Hook: write the header."""

    def finish(self) -> None:
        """Hook: write the trailer."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed compressor")
        if not self.started:
            self.started = True
            self.start()
        self.buf += data
        while len(self.buf) >= self.chunk_size:
            chunk = bytes(self.buf[:self.chunk_size])
            del self.buf[:self.chunk_size]
            self._submit(chunk)
        return len(data)

    def _submit(self, chunk: bytes) -> None:
        self.account(chunk)
        self.total_in += len(chunk)
        self.pending.append(self.pool.submit(self.compress_chunk, chunk, self.prev))
        self.prev = chunk
        while len(self.pending) > 2 * self.threads:
            self.emit(self.pending.popleft().result())

    def close(self) -> None:
        """Compress what is left, write the trailer. Does not close *out*."""
        if self.closed:
            return
        try:
            if not self.started:
                self.started = True
                self.start()
            if self.buf:
                self._submit(bytes(self.buf))
                self.buf.clear()
            while self.pending:
                self.emit(self.pending.popleft().result())
            self.finish()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop without finishing (after an error): drop pending work."""
        self.closed = True
        for fut in self.pending:
            fut.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- bzip2: one stream of spliced blocks

_BZ_BLOCK_MAGIC = 0x314159265359
_BZ_EOS_MAGIC = 0x177245385090
_BITREV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def crc32_bzip2(data: bytes) -> int:
    """CRC-32/BZIP2 (the non-reflected CRC-32) via zlib's reflected one on bit-reversed bytes."""
    crc = zlib.crc32(data.translate(_BITREV))
    return int(f"{crc:032b}"[::-1], 2)


def bzip2_chunk_size(level: int) -> int:
    """Input per chunk: one block's worth at *level* (bzip2's nblockMAX)."""
    return 100_000 * level - 19


def _bzip2_block(chunk: bytes, level: int) -> tuple[int, int, int] | None:
    """Compress *chunk* into one bzip2 block: (bits as int, bit length, block CRC).

    None when bzip2 needed more than one block (its first RLE stage made the data
    grow past the block size).
    """
    stream = bz2.compress(chunk, level)
    crc = crc32_bzip2(chunk)
    total = 8 * len(stream)
    value = int.from_bytes(stream, "big")
    first_magic = int.from_bytes(stream[4:10], "big")
    if first_magic != _BZ_BLOCK_MAGIC or int.from_bytes(stream[10:14], "big") != crc:
        return None  # the first block does not cover the whole chunk
    # the stream ends with EOS magic (48 bits), stream CRC (32 bits), 0-7 zero padding bits
    for pad in range(8):
        tail = value >> pad
        if (tail & 0xFFFFFFFF == crc and (tail >> 32) & ((1 << 48) - 1) == _BZ_EOS_MAGIC
                and not value & ((1 << pad) - 1)):
            end = total - pad - 80  # bit offset of the EOS marker
            break
    else:
        raise BuildError("bzip2: cannot find the end of a compressed chunk")
    nbits = end - 32
    bits = (value >> (total - end)) & ((1 << nbits) - 1)
    return bits, nbits, crc


def _bzip2_blocks(chunk: bytes, level: int) -> list[tuple[int, int, int]]:
    """One block for *chunk*, or (rarely: data that bzip2's RLE stage grows) blocks of its halves."""
    block = _bzip2_block(chunk, level)
    if block is not None:
        return [block]
    if len(chunk) < 2:
        raise BuildError("bzip2: a one-byte chunk did not fit one block")
    half = len(chunk) // 2
    return _bzip2_blocks(chunk[:half], level) + _bzip2_blocks(chunk[half:], level)


class _Bzip2Writer(ChunkedCompressor):
    def __init__(self, out: BinaryIO, level: int, threads: int) -> None:
        super().__init__(out, bzip2_chunk_size(level), threads,
                         lambda chunk, _prev: _bzip2_blocks(chunk, level), emit=self._splice)
        self.level = level
        self.acc = 0      # pending bits not yet written (fewer than 8)
        self.nacc = 0
        self.combined = 0

    def start(self) -> None:
        self.out.write(b"BZh%d" % self.level)

    def _put_bits(self, value: int, nbits: int) -> None:
        acc = (self.acc << nbits) | value
        n = self.nacc + nbits
        keep = n & 7
        if n >= 8:
            self.out.write((acc >> keep).to_bytes(n >> 3, "big"))
        self.acc = acc & ((1 << keep) - 1)
        self.nacc = keep

    def _splice(self, blocks: list[tuple[int, int, int]]) -> None:
        for bits, nbits, crc in blocks:
            self.combined = (((self.combined << 1) | (self.combined >> 31)) & 0xFFFFFFFF) ^ crc
            self._put_bits(bits, nbits)

    def finish(self) -> None:
        self._put_bits(_BZ_EOS_MAGIC, 48)
        self._put_bits(self.combined, 32)
        if self.nacc:
            self._put_bits(0, 8 - self.nacc)


# ---------------------------------------------------------------- gzip: pigz-style sync-flushed chunks

GZIP_CHUNK = 1 << 20


class _GzipWriter(ChunkedCompressor):
    def __init__(self, out: BinaryIO, level: int, threads: int) -> None:
        def deflate(chunk: bytes, prev: bytes) -> bytes:
            kwargs = {"zdict": prev[-32768:]} if prev else {}
            c = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, **kwargs)
            return c.compress(chunk) + c.flush(zlib.Z_SYNC_FLUSH)
        super().__init__(out, GZIP_CHUNK, threads, deflate)
        self.level = level
        self.crc = 0

    def account(self, chunk: bytes) -> None:
        self.crc = zlib.crc32(chunk, self.crc)

    def start(self) -> None:
        xfl = 2 if self.level == 9 else 4 if self.level == 1 else 0
        # magic, deflate, no flags, mtime 0, xfl, OS unknown (255)
        self.out.write(b"\x1f\x8b\x08\x00" + b"\0\0\0\0" + bytes([xfl, 255]))

    def finish(self) -> None:
        self.out.write(b"\x03\x00")  # final empty fixed-Huffman block
        self.out.write(struct.pack("<II", self.crc, self.total_in & 0xFFFFFFFF))


# ---------------------------------------------------------------- xz: one stream, one LZMA2 block per chunk

XZ_CHECK_CRC32 = 0x01


def xz_chunk_size(level: int) -> int:
    """Block size: three dictionaries, as xz's own multi-threaded mode (>= 1 MiB)."""
    dict_size = {0: 256 << 10, 1: 1 << 20, 2: 2 << 20, 3: 4 << 20, 4: 4 << 20, 5: 8 << 20,
                 6: 8 << 20, 7: 16 << 20, 8: 32 << 20, 9: 64 << 20}[level]
    return max(1 << 20, 3 * dict_size)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def _xz_block(chunk: bytes, level: int) -> tuple[int, int, bytes]:
    """Compress *chunk* as a one-block .xz stream: (unpadded size, size, block bytes)."""
    stream = lzma.compress(chunk, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level)
    backward = (struct.unpack_from("<I", stream, len(stream) - 8)[0] + 1) * 4
    index = stream[len(stream) - 12 - backward: len(stream) - 12]
    count, pos = _read_varint(index, 1)
    if index[0] != 0 or count != 1:
        raise BuildError("xz: unexpected stream layout from liblzma")
    unpadded, pos = _read_varint(index, pos)
    size, _ = _read_varint(index, pos)
    block = stream[12: len(stream) - 12 - backward]
    return unpadded, size, block


class _XzWriter(ChunkedCompressor):
    def __init__(self, out: BinaryIO, level: int, threads: int) -> None:
        super().__init__(out, xz_chunk_size(level), threads,
                         lambda chunk, _prev: _xz_block(chunk, level), emit=self._block)
        self.records: list[tuple[int, int]] = []
        self.flags = bytes([0, XZ_CHECK_CRC32])

    def start(self) -> None:
        self.out.write(b"\xfd7zXZ\x00" + self.flags + struct.pack("<I", zlib.crc32(self.flags)))

    def _block(self, result: tuple[int, int, bytes]) -> None:
        unpadded, size, block = result
        self.records.append((unpadded, size))
        self.out.write(block)

    def finish(self) -> None:
        body = b"\0" + _varint(len(self.records))
        body += b"".join(_varint(u) + _varint(s) for u, s in self.records)
        body += b"\0" * ((-len(body)) & 3)
        index = body + struct.pack("<I", zlib.crc32(body))
        self.out.write(index)
        footer = struct.pack("<I", len(index) // 4 - 1) + self.flags
        self.out.write(struct.pack("<I", zlib.crc32(footer)) + footer + b"YZ")


# ---------------------------------------------------------------- zstd

class _ZstdWriter(_StreamContext):
    def __init__(self, out: BinaryIO, level: int, threads: int) -> None:
        import zstandard
        # threads >= 1 always: the output of zstd's worker mode does not depend on the count,
        # but it differs from the single-threaded (threads=0) mode
        cctx = zstandard.ZstdCompressor(level=level, threads=max(1, threads), write_checksum=True)
        self._w = cctx.stream_writer(out, closefd=False)
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._w.write(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._w.close()

    def abort(self) -> None:
        self.closed = True


# ---------------------------------------------------------------- public API

def check_method(method: str, level: int | None = None) -> int:
    """Validate *method* and *level*; return the level to use."""
    if method not in METHODS:
        raise UsageError(f"unknown compression {method!r} (choose from {', '.join(METHODS)})")
    if level is None:
        return DEFAULT_LEVELS[method]
    lo, hi = LEVEL_RANGES[method]
    if not lo <= level <= hi:
        raise UsageError(f"{method} level must be between {lo} and {hi}, got {level}")
    return level


def open_compressor(out: BinaryIO, method: str = DEFAULT_METHOD, level: int | None = None,
                    threads: int | None = None) -> ChunkedCompressor | _ZstdWriter:
    """A writable stream compressing into *out* with *method* (bzip2, xz, zstd, gzip).

    Use it as a context manager, or call ``close()`` to write the end of the
    stream (``out`` itself is left open). The bytes written to *out* depend on
    the input, method and level only, never on *threads* (default: all cores).
    """
    level = check_method(method, level)
    threads = threads or default_threads()
    if method == "bzip2":
        return _Bzip2Writer(out, level, threads)
    if method == "gzip":
        return _GzipWriter(out, level, threads)
    if method == "xz":
        return _XzWriter(out, level, threads)
    return _ZstdWriter(out, level, threads)


def detect(head: bytes) -> str | None:
    """The compression of data starting with *head*, or None (e.g. a plain cpio).

    Besides METHODS, ``lzma`` is the legacy .lzma format (properties byte 0x5d, as
    old RPM payloads use)."""
    for method, magic in MAGICS.items():
        if head.startswith(magic):
            return method
    if head[:3] == b"\x5d\0\0":
        return "lzma"
    return None


def decompressing(raw: BinaryIO, head: bytes | None = None) -> BinaryIO:
    """A reader of the decompressed bytes of *raw* (positioned at the start of the data),
    the decompressor chosen by magic bytes; *raw* itself when they name no compression.

    *head*: the first bytes, when the caller has already read them (and seeked back)
    or *raw* cannot seek. Closing the reader does not close *raw*.
    """
    if head is None:
        pos = raw.tell()
        head = raw.read(8)
        raw.seek(pos)
    method = detect(head)
    if method == "gzip":
        import gzip
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if method == "bzip2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if method in ("xz", "lzma"):
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if method == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,  # type: ignore[return-value]
                                                         closefd=False)
    return raw


class _Closing:
    """A decompressing reader that also closes the file it reads."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dec = decompressing(raw)

    def read(self, n: int = -1) -> bytes:
        return self._dec.read(n)

    def close(self) -> None:
        try:
            if self._dec is not self._raw:
                self._dec.close()
        finally:
            self._raw.close()

    def __enter__(self) -> _Closing:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_decompressed(path: str | os.PathLike[str]) -> BinaryIO:
    """Open *path* for reading its decompressed content (any of METHODS, or uncompressed)."""
    return _Closing(open(path, "rb"))  # type: ignore[return-value]
