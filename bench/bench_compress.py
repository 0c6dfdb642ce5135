"""Benchmark: xcpimg's compressors against the usual command-line tools on one cpio.

Builds a cpio (newc) of realistic content (by default ~250 MB of Python
modules, binaries, Perl and QEMU firmware from this machine), then compresses
it with each variant, reporting wall time, CPU time (the fair figure on a busy machine), size,
ratio, and the time
``<tool> -dc`` needs to unpack it (a proxy for boot-time unpacking); every
output is checked to decompress to the original bytes.

    .venv/bin/python bench/bench_compress.py                 # every method
    .venv/bin/python bench/bench_compress.py --methods bzip2 # just bzip2 vs bzip2/pbzip2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xcpimg import compress, cpio  # noqa: E402
from xcpimg.run import run  # noqa: E402

DEFAULT_ROOTS = ["/usr/lib/python3.11", "/usr/lib/python3", "/usr/sbin", "/usr/share/perl",
                 "/usr/lib/x86_64-linux-gnu/perl", "/usr/libexec", "/usr/share/qemu"]
DECOMPRESS = {"bzip2": ["bzip2", "-dc"], "xz": ["xz", "-dc"], "gzip": ["gzip", "-dc"],
              "zstd": ["zstd", "-dcq"]}


def make_cpio(roots: list[str], dest: Path) -> None:
    """Concatenated newc archives of *roots* (the kernel and our reader take them as one)."""
    with dest.open("wb") as f:
        for root in roots:
            if Path(root).is_dir():
                cpio.write_newc(Path(root), f, epoch=1704067200)


def sha256_of_output(argv: list[str]) -> str:
    with tempfile.TemporaryFile() as tmp:
        run(argv, stdout=tmp.fileno())
        tmp.seek(0)
        h = hashlib.sha256()
        while block := tmp.read(1 << 20):
            h.update(block)
        return h.hexdigest()


def ours(method: str, level: int, threads: int | None) -> Callable[[Path, Path], None]:
    def go(src: Path, dst: Path) -> None:
        with src.open("rb") as fin, dst.open("wb") as fout, \
                compress.open_compressor(fout, method, level, threads) as c:
            while block := fin.read(1 << 20):
                c.write(block)
    return go


def tool(argv: list[str]) -> Callable[[Path, Path], None]:
    def go(src: Path, dst: Path) -> None:
        with dst.open("wb") as fout:
            run([*argv, "-c", str(src)], stdout=fout.fileno())
    return go


def variants(methods: list[str], cores: int) -> list[tuple[str, str, Callable[[Path, Path], None]]]:
    out: list[tuple[str, str, Callable[[Path, Path], None]]] = []
    if "bzip2" in methods:
        out += [("bzip2", f"xcpimg bzip2 -9 ({cores} threads)", ours("bzip2", 9, None)),
                ("bzip2", "xcpimg bzip2 -9 (1 thread)", ours("bzip2", 9, 1)),
                ("bzip2", "bzip2 -9", tool(["bzip2", "-9"]))]
        if shutil.which("pbzip2"):
            out.append(("bzip2", f"pbzip2 -9 -p{cores}", tool(["pbzip2", "-9", f"-p{cores}"])))
    if "xz" in methods:
        out += [("xz", f"xcpimg xz -6 ({cores} threads)", ours("xz", 6, None)),
                ("xz", "xz -6 -T0 --check=crc32", tool(["xz", "-6", "-T0", "--check=crc32"]))]
    if "zstd" in methods:
        out += [("zstd", f"xcpimg zstd -15 ({cores} threads)", ours("zstd", 15, None)),
                ("zstd", "zstd -15 -T0", tool(["zstd", "-15", "-T0", "-q"]))]
    if "gzip" in methods:
        out += [("gzip", f"xcpimg gzip -9 ({cores} threads)", ours("gzip", 9, None)),
                ("gzip", "gzip -9 -n", tool(["gzip", "-9", "-n"]))]
    return out


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roots", nargs="+", default=DEFAULT_ROOTS, help="directories to archive")
    ap.add_argument("--cpio", type=Path, help="use this existing cpio instead of building one")
    ap.add_argument("--methods", nargs="+", default=list(compress.METHODS), choices=compress.METHODS)
    args = ap.parse_args()
    cores = compress.default_threads()
    with tempfile.TemporaryDirectory(prefix="xcpimg-bench-") as tmpdir:
        tmp = Path(tmpdir)
        src = args.cpio or tmp / "input.cpio"
        if not args.cpio:
            t0 = time.monotonic()
            make_cpio(args.roots, src)
            print(f"cpio of {' '.join(args.roots)}: {time.monotonic() - t0:.1f} s")
        size = src.stat().st_size
        want = hashlib.sha256(src.read_bytes()).hexdigest()
        print(f"input: {size / 1e6:.1f} MB, {cores} cores, load {os.getloadavg()[0]:.2f}\n")
        print(f"{'variant':34} {'time s':>7} {'cpu s':>6} {'MB/s':>6} {'size MB':>8} {'ratio':>6} "
              f"{'unpack s':>8}")
        for method, name, fn in variants(args.methods, cores):
            dst = tmp / "out"
            t0, c0 = time.monotonic(), cpu_seconds()
            fn(src, dst)
            elapsed, cpu = time.monotonic() - t0, cpu_seconds() - c0
            t1 = time.monotonic()
            ok = sha256_of_output([*DECOMPRESS[method], str(dst)]) == want
            unpack = time.monotonic() - t1
            out_size = dst.stat().st_size
            print(f"{name:34} {elapsed:7.1f} {cpu:6.1f} {size / 1e6 / elapsed:6.1f} {out_size / 1e6:8.2f} "
                  f"{size / out_size:6.2f} {unpack:8.1f}{'' if ok else '  MISMATCH'}", flush=True)
            dst.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
