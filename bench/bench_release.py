"""Release-sized benchmark: xcpimg at the size of a real XCP-ng 8.3 release, over a network-like link.

    .venv/bin/python bench/bench_release.py [--size-mb 600] [--img-mb 180] [--latency 0.02]
        [--bandwidth 20] [--repeat 1] [--skip boot,matrix,...]

1. Generates an XCP-ng-shaped repository tree (``8/8.3/{base,updates,candidates,testing}``):
   the boot packages with the files create-iso takes (kernel, kernel-alt, Xen debug build,
   memtest86+, branding, syslinux, grub-efi), a ``linux-firmware``-sized package and a few
   hundred packages of log-normally distributed sizes, about ``--size-mb`` in the ISO
   closure of ``xcp-ng-deps``. Payloads are seeded random bytes (they do not compress
   away); packages are signed with the fixture key. Built with rpmbuild from one spec per
   repository (uncompressed payloads, no dependency scanning) and kept under the xcpimg
   cache keyed by its parameters, so only the first run pays for it.
2. Serves it with xcpimg.httpserve: ``--latency`` per request, ``--bandwidth`` MB/s per
   connection.
3. Times, in one run: ``xcpimg iso`` with a cold and a warm package cache against the
   original pipeline's tool sequence on the same input (``dnf download`` of the boot
   packages, ``dnf download --resolve`` of the repository packages, ``createrepo_c``,
   ``genisoimage ... && isohybrid --uefi``; its dnf cache is per build, as upstream's);
   the bytes a 5-configuration matrix downloads against the unique bytes it needs (and a
   second matrix run); mastering the release tree (xcpimg, genisoimage+isohybrid,
   ``xorriso -as mkisofs`` with its own hybrid MBR/GPT, and ``cp -r`` of the same tree as
   the disk limit); install.img compression of a ``--img-mb`` cpio of real host files with
   xcpimg's compressors and ``bzip2 -9``, ``lbzip2 -9``, ``pigz -9``, ``xz -T0``,
   ``zstd -T0``; and, for each format, the time a dom0 under TCG takes to reach ``init``
   with that image (a probe-style initrd padded with the same files), under the shared
   QEMU lock ``/tmp/xcpimg-qemu.lock``.

Missing lbzip2/pigz are fetched with ``apt-get download`` into the xcpimg cache and run
from there (nothing is installed). Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_compress import ours, tool  # noqa: E402  (the same compressor runners as bench_compress)

from xcpimg import compress, cpio, debs  # noqa: E402
from xcpimg.debs import cache_root  # noqa: E402
from xcpimg.fixture_repo import _rpmbuild, createrepo, load_fixtures, sign  # noqa: E402
from xcpimg.fsutil import atomic_tree  # noqa: E402
from xcpimg.httpserve import TreeServer  # noqa: E402
from xcpimg.progress import human  # noqa: E402
from xcpimg.run import run  # noqa: E402

VERSION = "v1"
VOLID = "XCP-NG 8.3 BENCH"
KEY = HERE.parent / "fixtures" / "keys" / "RPM-GPG-KEY-xcpimg-fixture"
CONFIGS = ("8.3:base", "8.3:updates", "8.3:candidates", "8.3:testing", "8.3:testing@netinstall")
QEMU_LOCK = "/tmp/xcpimg-qemu.lock"
MB = 1_000_000


# ----------------------------------------------------------------------------------- the repository

def _package_plan(size_mb: int, count: int) -> list[tuple[str, list[tuple[str, int]]]]:
    """(name, [(path, size)]) for every base package; sizes seeded, summing to about *size_mb*."""
    rng = random.Random(13)
    boot: list[tuple[str, list[tuple[str, int]]]] = [
        ("kernel", [("/boot/vmlinuz-4.19.0+1", 7 * MB), ("/lib/modules/4.19.0+1/modules.img", 24 * MB)]),
        ("kernel-alt", [("/boot/vmlinuz-4.19.322+1", 7 * MB), ("/lib/modules/4.19.322+1/modules.img", 22 * MB)]),
        ("xen-hypervisor", [("/boot/xen-4.17.5-20-d.gz", 1_300_000), ("/boot/xen-4.17.5-20.gz", 1_200_000)]),
        ("memtest86+", [("/boot/memtest.bin", 150_000), ("/boot/memtest.efi", 160_000)]),
        ("grub-efi", [("/boot/efi/EFI/xenserver/grubx64.efi", 1_500_000), ("/usr/lib/grub/x86_64-efi/mods", 3 * MB)]),
        ("syslinux", [(f"/usr/share/syslinux/{f}", 0) for f in
                      ("isolinux.bin", "isohdpfx.bin", "mboot.c32", "menu.c32", "pxelinux.0")]),
        ("branding-xcp-ng", [("/usr/src/branding/branding", 0), ("/usr/src/branding/EULA", 20_000),
                             ("/usr/src/branding/LICENSES", 200_000)]),
        ("linux-firmware", [(f"/usr/lib/firmware/blob{i}.bin", 10 * MB) for i in range(8)]),
        ("glibc", [("/usr/lib64/libc.so.6", 4 * MB)]),
    ]
    fixed = sum(s for _n, files in boot for _p, s in files)
    left = max(size_mb * MB - fixed, count * 10_000)
    raw = [rng.lognormvariate(11.5, 1.4) for _ in range(count)]
    scale = left / sum(raw)
    fillers = [(f"xcp-pkg{i:03d}", [(f"/usr/share/xcp-pkg{i:03d}/data", max(2000, min(int(r * scale), 40 * MB)))])
               for i, r in enumerate(raw)]
    return boot + fillers


def _host_or_random(path: str, rng: random.Random) -> bytes:
    names = {"isolinux.bin": "/usr/lib/ISOLINUX/isolinux.bin", "isohdpfx.bin": "/usr/lib/ISOLINUX/isohdpfx.bin",
             "mboot.c32": "/usr/lib/syslinux/modules/bios/mboot.c32",
             "menu.c32": "/usr/lib/syslinux/modules/bios/menu.c32", "pxelinux.0": "/usr/lib/PXELINUX/pxelinux.0"}
    host = Path(names.get(Path(path).name, "/nonexistent"))
    return host.read_bytes() if host.is_file() else rng.randbytes(40_000)


def _spec(main: tuple[str, str], subs: list[tuple[str, str, list[str], list[str]]]) -> str:
    """A spec: main (name, version) with no files; subs: (name, version, paths, requires)."""
    lines = [f"Name: {main[0]}", f"Version: {main[1]}", "Release: 1.xcpng8.3", "Summary: bench", "License: MIT",
             "AutoReqProv: no"]
    for name, _v, _p, req in subs:
        if name == main[0]:
            lines += [f"Requires: {r}" for r in req]
    lines += ["", "%description", "bench", ""]
    for name, version, _paths, req in subs:
        if name == main[0]:
            continue
        lines += [f"%package -n {name}", f"Version: {version}", "Release: 1.xcpng8.3", f"Summary: {name}",
                  "AutoReqProv: no", *[f"Requires: {r}" for r in req], "", f"%description -n {name}", name, ""]
    lines += ["%install", 'mkdir -p "$RPM_BUILD_ROOT"', 'cp -a "$FIXTURE_PAYLOAD"/. "$RPM_BUILD_ROOT"/', ""]
    for name, _v, paths, _r in subs:
        lines += [f"%files -n {name}" if name != main[0] else "%files", *paths, ""]
    return "\n".join(lines)


def _build_repo(work: Path, repo_dir: Path, main: tuple[str, str],
                pkgs: list[tuple[str, str, list[tuple[str, int]], list[str]]], seed: int) -> None:
    rng = random.Random(seed)
    payload = work / f"payload-{seed}"
    for _name, _v, files, _r in pkgs:
        for path, size in files:
            dest = payload / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.endswith("/branding"):
                dest.write_text("PLATFORM_NAME=XCP\nPLATFORM_VERSION=3.4.0\nPRODUCT_BRAND=XCP-ng\n"
                                "PRODUCT_VERSION=8.3.0\nPRODUCT_VERSION_TEXT=8.3\n")
            elif size == 0:
                dest.write_bytes(_host_or_random(path, rng))
            else:
                with dest.open("wb") as f:
                    for off in range(0, size, 1 << 22):
                        f.write(rng.randbytes(min(1 << 22, size - off)))
    spec = work / f"{repo_dir.parent.name}.spec"
    spec.write_text(_spec(main, [(n, v, [p for p, _s in files], req) for n, v, files, req in pkgs]))
    top = work / f"top-{seed}"
    _rpmbuild(spec, payload, top, "w0.ufdio")
    (repo_dir / "Packages").mkdir(parents=True)
    rpms = sorted((top / "RPMS").glob("*/*.rpm"))
    for rpm in rpms:
        os.replace(rpm, repo_dir / "Packages" / rpm.name)
    sign(load_fixtures(), sorted((repo_dir / "Packages").glob("*.rpm")))
    createrepo(repo_dir, 1704067200)
    shutil.rmtree(payload)
    shutil.rmtree(top)


def release_repo(size_mb: int, count: int) -> Path:
    """The generated tree (built once per parameters, then reused from the cache)."""
    key = hashlib.sha256(f"{VERSION}-{size_mb}-{count}".encode()).hexdigest()[:12]
    root = cache_root() / "bench-release" / key
    if (root / "8").is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    plan = _package_plan(size_mb, count)
    with atomic_tree(root) as tmp, tempfile.TemporaryDirectory(prefix="bench-release-") as w:
        work = Path(w)
        ver = tmp / "8" / "8.3"
        names = [n for n, _f in plan]
        base = [("xcp-ng-deps", "8.3", [], names)] + [(n, "1.0", f, []) for n, f in plan]
        _build_repo(work, ver / "base" / "x86_64", ("xcp-ng-deps", "8.3"), base, 1)
        kalt = dict(plan)["kernel-alt"]
        _build_repo(work, ver / "updates" / "x86_64", ("kernel-alt", "1.1"), [("kernel-alt", "1.1", kalt, [])], 2)
        p0 = dict(plan)["xcp-pkg000"]
        _build_repo(work, ver / "candidates" / "x86_64", ("xcp-pkg000", "1.1"), [("xcp-pkg000", "1.1", p0, [])], 3)
        _build_repo(work, ver / "testing" / "x86_64", ("kernel-alt", "1.2"), [("kernel-alt", "1.2", kalt, [])], 4)
    print(f"generated {root} in {time.monotonic() - t0:.0f} s")
    return root


# ----------------------------------------------------------------------------------- measuring

@contextlib.contextmanager
def timer(into: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    into[name] = time.monotonic() - t0


def rpm_bytes(server: TreeServer, root: Path) -> tuple[int, int]:
    """(RPM bodies served, their bytes) since the last clear."""
    paths = server.gets(".rpm")
    return len(paths), sum((root / p.lstrip("/")).stat().st_size for p in paths)


def xcpimg_iso(url: str, img: Path, out: Path, env: dict[str, str], spec: str = "8.3:base",
               extra: list[str] | None = None) -> None:
    argv = [sys.executable, "-m", "xcpimg.cli", "iso", "-o", str(out), "-V", VOLID, "--srcurl", f"{url}8/8.3",
            "--gpgkey", KEY.as_uri(), *(extra or []), spec, str(img)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"xcpimg iso failed: {proc.stderr[-2000:]}")


def original_pipeline(url: str, img: Path, work: Path) -> Path:
    """The original create-iso.sh tool sequence on the same input; returns the staged tree."""
    from xcpimg.dnf import Dnf
    from xcpimg.iso import build, efiboot
    from xcpimg.layers import resolve
    from xcpimg.repos import RepoConfig
    layers = resolve("8.3:base")
    tree, scratch = work / "tree", work / "scratch"
    scratch.mkdir(parents=True)
    dnf = Dnf(layers, RepoConfig(srcurl=f"{url}8/8.3", gpgkey=KEY.as_uri()), work / "dnf")
    base = dnf._argv("yumdl.conf.tmpl", dnf.dirs["dlroot"])
    build.stage_templates(layers, tree)
    shutil.copyfile(img, tree / "install.img")
    run([*base, "download", f"--destdir={scratch / 'rpms'}", "--", *build.BOOT_PACKAGES], what="dnf download")
    rpms = build.BootRpms(sorted((scratch / "rpms").glob("*.rpm")))
    build.add_boot_files(rpms, tree)
    run([*base, "download", "--resolve", f"--destdir={tree / 'Packages'}", "--", "xcp-ng-deps", "kernel-alt"],
        what="dnf download --resolve")
    run(["createrepo_c", "--quiet", str(tree)], what="createrepo_c")
    isohdpfx = build.add_bios_loader(rpms, tree)
    (work / "isohdpfx.bin").write_bytes(isohdpfx)
    loader = build.efi_loader(rpms, "rpm", tree, scratch)
    efiboot.make_efiboot(tree / "boot/efiboot.img", {"EFI/BOOT/BOOTX64.EFI": loader,
                                                    "EFI/xenserver/grub.cfg": tree / "EFI/xenserver/grub.cfg"})
    iso = work / "original.iso"
    run(genisoimage(tree, iso), what="genisoimage")
    run(["isohybrid", "--uefi", str(iso)], what="isohybrid")
    return tree


def genisoimage(tree: Path, iso: Path) -> list[str]:
    return ["genisoimage", "-quiet", "-o", str(iso), "-r", "-J", "-joliet-long", "-V", VOLID,
            "-b", "boot/isolinux/isolinux.bin", "-c", "boot/isolinux/boot.cat", "-no-emul-boot",
            "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot", "-e", "boot/efiboot.img",
            "-no-emul-boot", str(tree)]


def xorriso(tree: Path, iso: Path, isohdpfx: Path) -> list[str]:
    return ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-r", "-J", "-joliet-long", "-V", VOLID,
            "-isohybrid-mbr", str(isohdpfx), "-b", "boot/isolinux/isolinux.bin", "-c", "boot/isolinux/boot.cat",
            "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot",
            "-e", "boot/efiboot.img", "-no-emul-boot", "-isohybrid-gpt-basdat", str(tree)]


def best_of(repeat: int, fn: Callable[[], None]) -> float:
    """Fastest of *repeat* runs after one warm-up (page cache)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.monotonic()
        fn()
        times.append(time.monotonic() - t0)
    return min(times)


def mastering(tree: Path, work: Path, isohdpfx: Path, repeat: int) -> dict[str, float]:
    code = ("import sys; from pathlib import Path; from xcpimg.iso.master import master_iso; "
            "master_iso(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], isohdpfx=Path(sys.argv[4]).read_bytes())")
    out = work / "m.iso"

    def clean() -> None:
        out.unlink(missing_ok=True)
        shutil.rmtree(work / "cp", ignore_errors=True)

    def go(cmds: list[list[str]]) -> Callable[[], None]:
        def f() -> None:
            clean()
            for c in cmds:
                subprocess.run(c, check=True, capture_output=True)
        return f
    res = {
        "xcpimg": best_of(repeat, go([[sys.executable, "-c", code, str(tree), str(out), VOLID, str(isohdpfx)]])),
        "genisoimage+isohybrid": best_of(repeat, go([genisoimage(tree, out), ["isohybrid", "--uefi", str(out)]])),
        "xorriso": best_of(repeat, go([xorriso(tree, out, isohdpfx)])),
        "cp": best_of(repeat, go([["cp", "-r", str(tree), str(work / "cp")]])),
    }
    clean()
    return res


# ----------------------------------------------------------------------------------- install.img

def host_files_tree(dest: Path, size_mb: int) -> int:
    """Copy real host files (binaries, libraries, Python, data) into *dest* up to *size_mb*."""
    total = 0
    for top in ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/sbin", "/usr/lib/python3", "/usr/share/perl",
                "/usr/lib/python3.11", "/usr/share/locale", "/usr/share/doc"):
        for dirpath, _dirs, files in os.walk(top):
            for name in sorted(files):
                src = Path(dirpath) / name
                if src.is_symlink() or not src.is_file() or src.stat().st_size > 8 * MB:
                    continue  # install.img holds no single huge library
                rel = dest / src.relative_to("/")
                rel.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(src, rel)
                except OSError:
                    continue
                total += rel.stat().st_size
                if total >= size_mb * MB:
                    return total
    return total


def tool_path(name: str, work: Path) -> str:
    """*name* on PATH, else its Debian package's binary unpacked into *work* (never installed)."""
    found = shutil.which(name)
    if found:
        return found
    debs.extract(debs.fetch(name), work / name)
    return str(work / name / "usr" / "bin" / name)


def compressors(work: Path) -> list[tuple[str, str, Callable[[Path, Path], None]]]:
    levels = compress.DEFAULT_LEVELS
    return [
        ("bzip2", f"xcpimg bzip2 -{levels['bzip2']}", ours("bzip2", levels["bzip2"], None)),
        ("bzip2", "bzip2 -9", tool(["bzip2", "-9"])),
        ("bzip2", "lbzip2 -9", tool([tool_path("lbzip2", work), "-9"])),
        ("gzip", f"xcpimg gzip -{levels['gzip']}", ours("gzip", levels["gzip"], None)),
        ("gzip", "pigz -9", tool([tool_path("pigz", work), "-9", "-n"])),
        ("xz", f"xcpimg xz -{levels['xz']}", ours("xz", levels["xz"], None)),
        ("xz", "xz -6 -T0 --check=crc32", tool(["xz", "-6", "-T0", "--check=crc32"])),
        ("zstd", f"xcpimg zstd -{levels['zstd']}", ours("zstd", levels["zstd"], None)),
        ("zstd", "zstd -15 -T0", tool(["zstd", "-15", "-T0", "-q"])),
    ]


def padded_probe_cpio(pad_tree: Path, dest: Path) -> int:
    """The probe initrd's archive followed by the padding tree under /pad, uncompressed."""
    from xcpimg.probe import busybox_binary, newc_archive, probe_entries
    with dest.open("wb") as f:
        f.write(newc_archive(probe_entries(busybox_binary()), 1704067200))
        cpio.write_newc(pad_tree, f, epoch=1704067200)
    return dest.stat().st_size


@contextlib.contextmanager
def qemu_lock() -> Iterator[None]:
    with open(QEMU_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def boot_to_init(iso: Path, logdir: Path) -> float:
    """Seconds from VM start to ``init`` (BIOS, CD) under the accelerator QEMU gets here."""
    try:
        from xcpimg.boot import boot  # the boot package
    except ImportError:
        from xcpimg.qemu import boot  # type: ignore[no-redef]  # before it
    result = boot(iso, "bios", "cd", until="init", logdir=logdir)
    return result.reached["init"]


def boot_times(images: dict[str, Path], work: Path) -> dict[str, float]:
    from xcpimg.fixture_repo import ensure_fixture_repo
    from xcpimg.iso.build import IsoOptions, build_iso
    from xcpimg.layers import resolve
    from xcpimg.repos import RepoConfig
    fx = ensure_fixture_repo()
    out = {}
    for fmt, img in images.items():
        iso = work / f"boot-{fmt}.iso"
        build_iso(IsoOptions(layers=resolve("8.3:base"), install_img=img, output=iso, volid="BENCH", netinstall=True,
                             repo_config=RepoConfig(srcurl=fx.srcurl("8.3"), gpgkey=fx.gpgkey_url), force=True))
        with qemu_lock():
            out[fmt] = boot_to_init(iso, work / f"boot-{fmt}")
        iso.unlink()
        print(f"  boot with {fmt} install.img ({human(img.stat().st_size)}): init at {out[fmt]:.1f} s", flush=True)
    return out


# ----------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=600, help="packages in the ISO closure, MB (default 600)")
    ap.add_argument("--packages", type=int, default=300, help="number of filler packages (default 300)")
    ap.add_argument("--install-img-mb", type=int, default=60, help="size of the ISO's install.img stand-in")
    ap.add_argument("--img-mb", type=int, default=180, help="uncompressed install.img tree for compression")
    ap.add_argument("--latency", type=float, default=0.02, help="seconds per request (default 0.02)")
    ap.add_argument("--bandwidth", type=float, default=20.0, help="MB/s per connection (default 20)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of each mastering tool (best of)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: iso,matrix,master,compress,boot")
    ap.add_argument("--tmp", type=Path, default=None, help="work directory parent (default: the temp dir)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.monotonic()
    root = release_repo(args.size_mb, args.packages)
    rows: list[tuple[str, str, str]] = []   # (measure, figures, ratio)
    with tempfile.TemporaryDirectory(prefix="bench-release-run-", dir=args.tmp) as w, \
            TreeServer(root, latency=args.latency, bandwidth=int(args.bandwidth * MB)) as server:
        work = Path(w)
        img = work / "install.img"
        with img.open("wb") as f:
            f.write(random.Random(7).randbytes(args.install_img_mb * MB))
        env = {**os.environ, "XCPIMG_CACHE": str(work / "cache"), "SOURCE_DATE_EPOCH": "1704067200"}
        t: dict[str, float] = {}
        print(f"repository {root}: link {args.latency * 1000:.0f} ms/request, {args.bandwidth:g} MB/s per connection",
              flush=True)
        tree = None
        if "iso" not in skip:
            server.clear()
            with timer(t, "original"):
                tree = original_pipeline(server.url, img, work / "orig")
            n_orig, b_orig = rpm_bytes(server, root)
            iso_size = (work / "orig" / "original.iso").stat().st_size
            server.clear()
            with timer(t, "cold"):
                xcpimg_iso(server.url, img, work / "cold.iso", env)
            n_cold, b_cold = rpm_bytes(server, root)
            server.clear()
            with timer(t, "warm"):
                xcpimg_iso(server.url, img, work / "warm.iso", env)
            n_warm, _ = rpm_bytes(server, root)
            same = (work / "cold.iso").read_bytes() == (work / "warm.iso").read_bytes()
            for p in ("cold.iso", "warm.iso"):
                (work / p).unlink()
            print(f"ISO {human(iso_size)}; original {t['original']:.1f} s ({n_orig} packages, {human(b_orig)}); "
                  f"xcpimg cold {t['cold']:.1f} s ({n_cold}, {human(b_cold)}), warm {t['warm']:.1f} s "
                  f"({n_warm} downloaded); cold and warm ISOs identical: {same}", flush=True)
            rows += [("xcpimg iso, cold cache / original pipeline",
                      f"{t['cold']:.1f} s / {t['original']:.1f} s", f"{t['cold'] / t['original']:.2f}"),
                     ("xcpimg iso, warm cache / original pipeline",
                      f"{t['warm']:.1f} s / {t['original']:.1f} s (0 packages downloaded)" if n_warm == 0 else
                      f"{t['warm']:.1f} s / {t['original']:.1f} s ({n_warm} downloaded)",
                      f"{t['warm'] / t['original']:.2f}")]
        if "matrix" not in skip:
            rows += matrix(server, root, img, work)
        if "master" not in skip and tree is not None:
            m = mastering(tree, work, work / "orig" / "isohdpfx.bin", args.repeat)
            size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
            print("mastering " + ", ".join(f"{k} {v:.2f} s" for k, v in m.items()), flush=True)
            rows += [(f"mastering {human(size)}: xcpimg / genisoimage+isohybrid",
                      f"{m['xcpimg']:.2f} s / {m['genisoimage+isohybrid']:.2f} s",
                      f"{m['xcpimg'] / m['genisoimage+isohybrid']:.2f}"),
                     ("mastering: xcpimg / xorriso -as mkisofs", f"{m['xcpimg']:.2f} s / {m['xorriso']:.2f} s",
                      f"{m['xcpimg'] / m['xorriso']:.2f}"),
                     ("mastering: xcpimg / cp -r (disk limit)", f"{m['xcpimg']:.2f} s / {m['cp']:.2f} s",
                      f"{m['xcpimg'] / m['cp']:.2f}")]
        if tree is not None:
            shutil.rmtree(work / "orig")
        if "compress" not in skip:
            rows += compression(work, args.img_mb, "boot" not in skip)
    print(f"\ntotal {time.monotonic() - t_start:.0f} s\n")
    print("| measure | figures | ratio |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


def matrix(server: TreeServer, root: Path, img: Path, work: Path) -> list[tuple[str, str, str]]:
    """Build the 5 configurations twice against one fresh cache; count what crossed the wire."""
    from xcpimg.dnf import Dnf
    from xcpimg.fetch import repo_expectations
    from xcpimg.iso.build import BOOT_PACKAGES
    from xcpimg.layers import resolve
    from xcpimg.repos import RepoConfig
    # what each configuration needs, resolved by dnf without downloading
    need: dict[str, int] = {}
    per_config = 0
    for i, cfg in enumerate(CONFIGS):
        spec, _, flavour = cfg.partition("@")
        d = Dnf(resolve(spec), RepoConfig(srcurl=f"{server.url}8/8.3", gpgkey=KEY.as_uri()), work / f"need{i}")
        argv = d._argv("yumdl.conf.tmpl", d.dirs["dlroot"])
        urls = d.package_urls(argv, list(BOOT_PACKAGES), resolve=False)
        if flavour != "netinstall":
            urls += d.package_urls(argv, ["xcp-ng-deps", "kernel-alt"], resolve=True)
        exp = repo_expectations(d.cachedir, d.repo_ids, d.baseurls())
        sizes = {exp[u].digest: exp[u].size or 0 for u in dict.fromkeys(urls)}
        per_config += sum(sizes.values())
        need.update(sizes)
        shutil.rmtree(work / f"need{i}")
    unique = sum(need.values())
    env = {**os.environ, "XCPIMG_CACHE": str(work / "matrix-cache"), "SOURCE_DATE_EPOCH": "1704067200"}
    got = []
    for rnd in range(2):
        server.clear()
        t0 = time.monotonic()
        for cfg in CONFIGS:
            spec, _, flavour = cfg.partition("@")
            out = work / "matrix.iso"
            xcpimg_iso(server.url, img, out, env, spec, ["--netinstall"] if flavour else [])
            out.unlink()
        n, b = rpm_bytes(server, root)
        got.append((n, b, time.monotonic() - t0))
        print(f"matrix run {rnd + 1}: {n} packages, {human(b)} downloaded in {got[-1][2]:.0f} s "
              f"(unique need {human(unique)}, {human(per_config)} without a shared cache)", flush=True)
    shutil.rmtree(work / "matrix-cache")
    return [("5-config matrix, 1st run: downloaded / unique bytes needed",
             f"{human(got[0][1])} / {human(unique)} (without a shared cache: {human(per_config)})",
             f"{got[0][1] / unique:.3f}"),
            ("5-config matrix, 2nd run: downloaded bytes", f"{human(got[1][1])} ({got[1][0]} packages)", "0" if
             got[1][1] == 0 else f"{got[1][1] / unique:.3f}")]


def compression(work: Path, img_mb: int, boot: bool) -> list[tuple[str, str, str]]:
    pad = work / "pad"
    host_files_tree(pad / "pad", img_mb)
    raw = work / "initrd.cpio"
    size = padded_probe_cpio(pad, raw)
    shutil.rmtree(pad)
    print(f"install.img stand-in: {human(size)} of cpio (probe initrd + real host files)", flush=True)
    results = []
    ours: dict[str, Path] = {}
    for fmt, label, fn in compressors(work):
        dst = work / f"img-{len(results)}.{fmt}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        fn(raw, dst)
        dt = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        results.append((fmt, label, dt, dst.stat().st_size, cpu))
        print(f"  {label:28} {dt:6.1f} s  {human(dst.stat().st_size)}", flush=True)
        if label.startswith("xcpimg"):
            ours[fmt] = dst
        else:
            dst.unlink()
    raw.unlink()
    boots = boot_times(ours, work) if boot else {}
    rows = []
    base = next(r for r in results if r[1] == "bzip2 -9")
    for fmt, label, dt, sz, _cpu in results:
        init = f"; init at {boots[fmt]:.1f} s" if fmt in boots and label.startswith("xcpimg") else ""
        rows.append((f"install.img {label}", f"{dt:.1f} s, {human(sz)}{init}",
                     f"time {dt / base[2]:.2f}, size {sz / base[3]:.2f} (vs bzip2 -9)"))
    if boots:
        b0 = boots.get("bzip2")
        for fmt, secs in boots.items():
            rows.append((f"boot to init under TCG, {fmt} install.img", f"{secs:.1f} s",
                         f"{secs / b0:.2f} (vs bzip2)" if b0 else "-"))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
