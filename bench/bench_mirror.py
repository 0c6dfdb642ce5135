"""Benchmark: `xcpimg mirror` against `lftp -c mirror`, cold and no-change rerun.

Both mirror the same tree, served on 127.0.0.1 by xcpimg.httpserve with a
per-request latency and a per-connection bandwidth cap, so that the loopback
server behaves like a remote mirror rather than a memory copy. Both run as
subprocesses with the same parallelism and the same exclusions.

    .venv/bin/python bench/bench_mirror.py                 # the fixture tree (8/8.3), else synthetic
    .venv/bin/python bench/bench_mirror.py --synthetic     # ~150 MB of RPMs with real repodata

Prints one line per tool and run kind, then the ratios (lftp time / xcpimg time;
above 1 means xcpimg is faster). Run on demand, never in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from xcpimg.debs import cache_root  # noqa: E402
from xcpimg.httpserve import TreeServer  # noqa: E402
from xcpimg.mirror import UPSTREAM_EXCLUDES  # noqa: E402
from xcpimg.run import run, which  # noqa: E402

LFTP_EXCLUDE = "|".join(UPSTREAM_EXCLUDES)


def synthetic_tree(count: int, size: int) -> Path:
    """ROOT/8/8.3/base/x86_64 with *count* RPMs of about *size* bytes, decoys and repodata (cached)."""
    key = hashlib.sha256(f"v1-{count}-{size}".encode()).hexdigest()[:12]
    root = cache_root() / "bench-mirror" / key
    if (root / "done").exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    try:
        rng = random.Random(1)
        names = [f"pkg{i:03d}" for i in range(count)]
        decoys = ["pkg000-devel", "pkg000-debuginfo", "ocaml-pkg", "golang-pkg", "xs-opam-repo"]
        payload = work / "payload"
        payload.mkdir()
        for n in names + decoys:
            (payload / n).write_bytes(rng.randbytes(size if n in names else size // 10))
        lines = ["%define debug_package %{nil}", "%define _binary_payload w0.ufdio", "Name: pkg000",
                 "Version: 1.0", "Release: 1", "Summary: bench", "License: MIT", "BuildArch: noarch",
                 "%description", "bench"]
        for n in names[1:] + decoys:
            lines += [f"%package -n {n}", f"Summary: {n}", f"%description -n {n}", n]
        lines += ["%install", "mkdir -p %{buildroot}/usr/share/bench",
                  f"cp {payload}/* %{{buildroot}}/usr/share/bench/", "%files", "/usr/share/bench/pkg000"]
        for n in names[1:] + decoys:
            lines += [f"%files -n {n}", f"/usr/share/bench/{n}"]
        spec = work / "bench.spec"
        spec.write_text("\n".join(lines) + "\n")
        run(["rpmbuild", "-ba", "--define", f"_topdir {work / 'top'}", spec], what="build bench RPMs")
        ver = root / "8" / "8.3"
        pkgs = ver / "base" / "x86_64" / "Packages"
        pkgs.mkdir(parents=True)
        for rpm in sorted((work / "top" / "RPMS" / "noarch").glob("*.rpm")):
            shutil.move(rpm, pkgs / rpm.name)
        src = ver / "base" / "Source" / "SPackages"
        src.mkdir(parents=True)
        for rpm in (work / "top" / "SRPMS").glob("*.rpm"):
            shutil.move(rpm, src / rpm.name)
        run(["createrepo_c", "--no-database", ver / "base" / "x86_64"])
        (root / "done").write_text("ok\n")
        return root
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fixture_tree() -> Path | None:
    try:
        from xcpimg.fixture_repo import ensure_fixture_repo
    except ImportError:
        return None
    return Path(ensure_fixture_repo().root)


def tree_size(top: Path) -> tuple[int, int]:
    files = [p for p in top.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def listing(top: Path) -> dict[str, int]:
    return {str(p.relative_to(top)): p.stat().st_size for p in sorted(top.rglob("*")) if p.is_file()}


def xcpimg_cmd(url: str, dest: Path, jobs: int) -> list[str]:
    return [sys.executable, "-m", "xcpimg.cli", "mirror", url, str(dest), "-j", str(jobs)]


def lftp_cmd(url: str, dest: Path, jobs: int) -> list[str]:
    script = (f"set net:max-retries 3; set net:reconnect-interval-base 1; "
              f"mirror --parallel={jobs} --delete -x '{LFTP_EXCLUDE}' {url} {dest}")
    return [which("lftp"), "-c", script]


def timed(argv: list[str], server: TreeServer) -> tuple[float, int, int]:
    """(seconds, requests, file GETs with a body) of one run."""
    server.clear()
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=HERE.parent, capture_output=True, timeout=1800)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    gets = [r for r in server.requests if r.method == "GET" and r.status == 200 and not r.path.endswith("/")]
    return dt, len(server.requests), len(gets)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic tree, not the fixture")
    ap.add_argument("--count", type=int, default=300, help="synthetic: number of RPMs")
    ap.add_argument("--size", type=int, default=500_000, help="synthetic: bytes per RPM")
    ap.add_argument("--latency", type=float, default=0.020, help="seconds added to every request")
    ap.add_argument("--bandwidth", type=float, default=20.0, help="MB/s per connection")
    ap.add_argument("-j", "--jobs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    root = None if args.synthetic else fixture_tree()
    kind = "fixture"
    if root is None:
        root, kind = synthetic_tree(args.count, args.size), "synthetic"
    path = "8/8.3/"
    nfiles, nbytes = tree_size(root / path)
    print(f"tree: {kind} {root / path}: {nfiles} files, {nbytes / 1e6:.1f} MB upstream; "
          f"latency {args.latency * 1000:.0f} ms/request, {args.bandwidth:g} MB/s per connection, "
          f"-j {args.jobs}, {args.rounds} rounds (median)")
    results: dict[tuple[str, str], list[float]] = {}
    info: dict[tuple[str, str], tuple[int, int]] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-run-"))
    try:
        with TreeServer(root, latency=args.latency, bandwidth=int(args.bandwidth * 1e6)) as server:
            url = server.url + path
            tools = {"xcpimg": xcpimg_cmd, "lftp": lftp_cmd}
            dests = {}
            for rnd in range(args.rounds):
                for tool, cmd in (tools.items() if rnd % 2 == 0 else reversed(tools.items())):
                    dest = work / f"{tool}-{rnd}"
                    dests[tool] = dest
                    for what in ("cold", "rerun"):
                        dt, nreq, ngets = timed(cmd(url, dest, args.jobs), server)
                        results.setdefault((tool, what), []).append(dt)
                        info[(tool, what)] = (nreq, ngets)
            got = {tool: listing(d) for tool, d in dests.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mirrored = got["xcpimg"]
    print(f"mirrored: {len(mirrored)} files, {sum(mirrored.values()) / 1e6:.1f} MB"
          + ("" if got["xcpimg"] == got["lftp"] else
             f"  (lftp's tree differs: {len(got['lftp'])} files, "
             f"only in lftp: {sorted(set(got['lftp']) - set(mirrored))[:5]}, "
             f"only in xcpimg: {sorted(set(mirrored) - set(got['lftp']))[:5]})"))
    for what in ("cold", "rerun"):
        for tool in ("xcpimg", "lftp"):
            times = results[(tool, what)]
            nreq, ngets = info[(tool, what)]
            print(f"{what:6} {tool:7} median {statistics.median(times):6.2f} s  "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times)}; {nreq} requests, {ngets} file bodies)")
    for what in ("cold", "rerun"):
        ratio = statistics.median(results[("lftp", what)]) / statistics.median(results[("xcpimg", what)])
        print(f"ratio {what}: lftp/xcpimg = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
