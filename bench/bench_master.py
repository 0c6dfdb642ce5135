#!/usr/bin/env python3
"""Benchmark: ISO mastering by xcpimg (pycdlib + own hybrid tables) vs genisoimage && isohybrid --uefi.

Builds staging trees of seeded random bytes in a private temp dir (removed at
the end), masters each with both tools a few times (warm page cache) and
prints wall time, peak RSS and the xcpimg/peer ratios. Run on demand:

    .venv/bin/python bench/bench_master.py [--repeat 3] [--large-mb 600] [--tmp DIR]

Peak RSS is measured per run in a fresh wrapper process (``--measure``), as the
largest ru_maxrss of the children it waited for.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xcpimg.fsutil import private_tempdir  # noqa: E402
from xcpimg.iso.efiboot import make_efiboot  # noqa: E402
from xcpimg.run import output, run  # noqa: E402

ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOHDPFX = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
VOLID = "XCPIMG_BENCH"
CHUNK = 1 << 20


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as fp:
        left = size
        while left > 0:
            n = min(left, CHUNK)
            fp.write(rng.randbytes(n))
            left -= n


def make_tree(root: Path, *, payload: int, files: int) -> Path:
    """A staging tree shaped like an install ISO: boot files plus *files* packages totalling *payload*."""
    tree = root / "tree"
    (tree / "boot" / "isolinux").mkdir(parents=True)
    shutil.copyfile(ISOLINUX, tree / "boot" / "isolinux" / "isolinux.bin")
    shutil.copyfile(LDLINUX, tree / "boot" / "isolinux" / "ldlinux.c32")
    (tree / "boot" / "isolinux" / "isolinux.cfg").write_text("DEFAULT install\n")
    (tree / "EFI" / "xenserver").mkdir(parents=True)
    (tree / "EFI" / "xenserver" / "grub.cfg").write_text("set timeout=5\n")
    write_random(root / "bootx64.efi", 900_000, 1)
    make_efiboot(tree / "boot" / "efiboot.img", {"EFI/BOOT/BOOTX64.EFI": root / "bootx64.efi",
                                                  "EFI/xenserver/grub.cfg": tree / "EFI/xenserver/grub.cfg"})
    write_random(tree / "boot" / "vmlinuz", 7_000_000, 2)
    write_random(tree / "install.img", payload // 10, 3)
    packages = tree / "Packages"
    packages.mkdir()
    per_file = max(1, (payload - payload // 10) // files)
    for i in range(files):
        write_random(packages / f"package-{i:05d}-1.0-1.xcpng8.3.x86_64.rpm", per_file, 100 + i)
    return tree


def tree_size(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def measure(commands: list[list[str]]) -> None:
    """Wrapper mode: run *commands* one after the other, print wall time and peak RSS as JSON."""
    start = time.perf_counter()
    for argv in commands:
        run(argv, what="benchmark")
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_kib": usage.ru_maxrss}))


def timed(commands: list[list[str]]) -> dict[str, float]:
    out = output([sys.executable, __file__, "--measure", json.dumps(commands)])
    return json.loads(out.strip().splitlines()[-1])


def xcpimg_cmd(tree: Path, iso: Path) -> list[list[str]]:
    code = ("import sys; from pathlib import Path; from xcpimg.iso.master import master_iso; "
            "master_iso(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], "
            "isohdpfx=Path(sys.argv[4]).read_bytes())")
    return [[sys.executable, "-c", code, str(tree), str(iso), VOLID, str(ISOHDPFX)]]


def peer_cmd(tree: Path, iso: Path) -> list[list[str]]:
    return [["genisoimage", "-quiet", "-o", str(iso), "-r", "-J", "-joliet-long", "-V", VOLID,
             "-b", "boot/isolinux/isolinux.bin", "-c", "boot/isolinux/boot.cat", "-no-emul-boot",
             "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot", "-e", "boot/efiboot.img",
             "-no-emul-boot", str(tree)],
            ["isohybrid", "--uefi", str(iso)]]


def bench(name: str, tree: Path, work: Path, repeat: int) -> dict[str, object]:
    results: dict[str, list[dict[str, float]]] = {"xcpimg": [], "peer": []}
    for i in range(repeat + 1):  # the first round warms the page cache and is dropped
        for tool, make in (("xcpimg", xcpimg_cmd), ("peer", peer_cmd)):
            iso = work / f"{tool}.iso"
            iso.unlink(missing_ok=True)
            r = timed(make(tree, iso))
            if i:
                results[tool].append(r)
    sizes = {tool: (work / f"{tool}.iso").stat().st_size for tool in results}
    row: dict[str, object] = {"tree": name, "tree_mb": tree_size(tree) / 1e6,
                              "files": sum(1 for p in tree.rglob("*") if p.is_file())}
    for tool, runs in results.items():
        row[f"{tool}_s"] = statistics.median(r["wall"] for r in runs)
        row[f"{tool}_cpu"] = statistics.median(r["cpu"] for r in runs)
        row[f"{tool}_rss_mb"] = max(r["rss_kib"] for r in runs) / 1024
        row[f"{tool}_iso_mb"] = sizes[tool] / 1e6
    row["time_ratio"] = row["xcpimg_s"] / row["peer_s"]  # type: ignore[operator]
    row["cpu_ratio"] = row["xcpimg_cpu"] / row["peer_cpu"]  # type: ignore[operator]
    row["rss_ratio"] = row["xcpimg_rss_mb"] / row["peer_rss_mb"]  # type: ignore[operator]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--large-mb", type=int, default=600)
    ap.add_argument("--tmp", type=Path, default=None, help="where the trees and ISOs go (default: $TMPDIR)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(json.loads(args.measure))
        return 0
    os.chdir(Path(__file__).resolve().parent.parent)
    cases = [("small", 10 << 20, 20), ("many-small", 5000 * 4096, 5000), ("large", args.large_mb << 20, 300)]
    rows = []
    for name, payload, files in cases:
        with private_tempdir("xcpimg-bench-", parent=args.tmp) as work:
            tree = make_tree(work, payload=payload, files=files)
            rows.append(bench(name, tree, work, args.repeat))
            print(f"done: {name}", file=sys.stderr)
    header = (f"{'tree':<11} {'MB':>6} {'files':>5} | {'wall s':>6} {'peer':>6} {'ratio':>5} | "
              f"{'CPU s':>6} {'peer':>6} {'ratio':>5} | {'RSS MB':>6} {'peer':>6} {'ratio':>5}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['tree']:<11} {r['tree_mb']:6.0f} {r['files']:5d} | "
              f"{r['xcpimg_s']:6.2f} {r['peer_s']:6.2f} {r['time_ratio']:5.2f} | "
              f"{r['xcpimg_cpu']:6.2f} {r['peer_cpu']:6.2f} {r['cpu_ratio']:5.2f} | "
              f"{r['xcpimg_rss_mb']:6.1f} {r['peer_rss_mb']:6.1f} {r['rss_ratio']:5.2f}")
    print(f"(median of {args.repeat} warm runs; peer = genisoimage + isohybrid --uefi; ratio = xcpimg / peer;"
          " xcpimg includes starting Python and importing pycdlib, ~0.2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
