"""The shared package cache: concurrent inserts, damaged entries, pruning, --no-cache, the plugin's builds."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xcpimg.cache import PackageCache, parse_size
from xcpimg.fetch import fetch_packages
from xcpimg.fixture_repo import FixtureRepo, ensure_fixture_repo
from xcpimg.httpserve import TreeServer
from xcpimg.mirror.repodata import Expect


def expect_of(data: bytes) -> Expect:
    return Expect(len(data), "sha256", hashlib.sha256(data).hexdigest())


def _slow_insert(root: str, data: bytes, start: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Insert *data* as pkg-1-1.x86_64.rpm, writing it in pieces, from a separate process."""
    cache = PackageCache(Path(root))

    def fill(path: Path) -> None:
        with open(path, "wb") as f:
            for i in range(0, len(data), len(data) // 8):
                f.write(data[i:i + len(data) // 8])
                f.flush()
                time.sleep(0.05)

    while time.time() < start:
        time.sleep(0.005)
    out.put(str(cache.put("pkg-1-1.x86_64.rpm", expect_of(data), fill)))


def test_concurrent_inserts_give_one_intact_entry(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    start = time.time() + 1.5
    procs = [ctx.Process(target=_slow_insert, args=(str(tmp_path), data, start, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    paths = {q.get(timeout=5), q.get(timeout=5)}
    assert len(paths) == 1                                     # both use the same entry
    entries = PackageCache(tmp_path).entries()
    assert len(entries) == 1 and entries[0].path.read_bytes() == data
    shard = entries[0].path.parent.parent
    assert sorted(os.listdir(shard)) == [hashlib.sha256(data).hexdigest()]   # no .part left


@pytest.fixture
def served(tmp_path: Path) -> tuple[TreeServer, Path, dict[str, bytes]]:
    root = tmp_path / "srv"
    (root / "Packages").mkdir(parents=True)
    files = {f"p{i}-1.0-1.x86_64.rpm": os.urandom(20000 + i) for i in range(3)}
    for name, data in files.items():
        (root / "Packages" / name).write_bytes(data)
    with TreeServer(root) as srv:
        yield srv, root, files


def test_damaged_entry_is_detected_and_fetched_again(tmp_path: Path, served: tuple[TreeServer, Path, dict]) -> None:
    srv, _root, files = served
    cache = PackageCache(tmp_path / "cache")
    urls = [f"{srv.url}Packages/{n}" for n in files]
    expects = {f"{srv.url}Packages/{n}": expect_of(d) for n, d in files.items()}
    first = fetch_packages(urls, expects, tmp_path / "a", cache)
    assert first.downloaded == 3 and first.cached == 0
    victim = expects[urls[0]]
    entry = cache.get(victim)
    assert entry is not None
    os.chmod(entry, 0o644)
    with open(entry, "r+b") as f:  # same size, one flipped byte
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    srv.clear()
    second = fetch_packages(urls, expects, tmp_path / "b", cache)
    assert (second.downloaded, second.cached) == (1, 2)
    assert srv.gets(".rpm") == [f"/Packages/{list(files)[0]}"]   # only the damaged one again
    for name, data in files.items():
        assert (tmp_path / "b" / name).read_bytes() == data
    fresh = cache.get(victim)
    assert fresh is not None and fresh.read_bytes() == files[list(files)[0]]


def test_pruning_keeps_the_most_recently_used(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path)
    blobs = [os.urandom(1000) for _ in range(4)]
    for i, data in enumerate(blobs):
        cache.put(f"p{i}-1-1.noarch.rpm", expect_of(data), lambda p, d=data: p.write_bytes(d))
        entry = cache.entry_dir(expect_of(data))
        os.utime(entry, (1000 + i, 1000 + i))        # inserted in order: p0 oldest
    assert cache.get(expect_of(blobs[0])) is not None  # p0 used now: the most recent
    removed, freed = cache.prune(2500)
    assert (removed, freed) == (2, 2000)
    left = sorted(e.path.name for e in cache.entries())
    assert left == ["p0-1-1.noarch.rpm", "p3-1-1.noarch.rpm"]
    assert cache.prune(0) == (2, 2000) and cache.entries() == []


def test_parse_size() -> None:
    assert parse_size("500M") == 500_000_000
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("0") == 0
    with pytest.raises(Exception, match="invalid size"):
        parse_size("-3G")


# ----------------------------------------------------------------------- builds over HTTP

@pytest.fixture(scope="module")
def fx() -> FixtureRepo:
    return ensure_fixture_repo()


@pytest.fixture
def fx_http(fx: FixtureRepo) -> TreeServer:
    with TreeServer(fx.root) as srv:
        yield srv


def test_no_cache_build_does_not_touch_the_cache(tmp_path: Path, fx: FixtureRepo, fx_http: TreeServer) -> None:
    img = tmp_path / "install.img"
    img.write_bytes(b"\0" * 4096)
    cache_home = tmp_path / "xcache"
    env = {**os.environ, "XCPIMG_CACHE": str(cache_home)}
    argv = [sys.executable, "-m", "xcpimg.cli", "iso", "-o", str(tmp_path / "a.iso"), "-V", "X",
            "--srcurl", f"{fx_http.url}8/8.3", "--gpgkey", fx.gpgkey_url, "--netinstall", "--no-cache",
            "8.3:base", str(img)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.iso").is_file()
    assert not cache_home.exists()
    assert len(fx_http.gets(".rpm")) == 7                 # the boot packages, downloaded directly
    # the same build with the cache fills it
    argv[argv.index(str(tmp_path / "a.iso"))] = str(tmp_path / "b.iso")
    argv.remove("--no-cache")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(PackageCache(cache_home / "packages").entries()) == 7
    assert (tmp_path / "a.iso").read_bytes() == (tmp_path / "b.iso").read_bytes()


def test_plugin_builds_fetch_each_package_once(tmp_path: Path, fx: FixtureRepo, fx_http: TreeServer,
                                               tmp_path_factory: pytest.TempPathFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from xcpimg.pytest_plugin import MatrixConfig, RepoSource, build_matrix_iso
    monkeypatch.setenv("XCPIMG_CACHE", str(tmp_path / "xcache"))
    img = tmp_path / "install.img"
    img.write_bytes(b"\0" * 4096)
    source = RepoSource(root=fx_http.url.rstrip("/"), layout="major", gpgkey=fx.gpgkey_url)
    configs = [MatrixConfig("8.3:base"), MatrixConfig("8.3:testing"), MatrixConfig("8.3:testing", netinstall=True)]
    for cfg in configs:
        assert build_matrix_iso(cfg, source, img, tmp_path_factory, "cachetest").is_file()
    gets = fx_http.gets(".rpm")
    assert gets and len(gets) == len(set(gets))           # every package crossed the wire once
    fx_http.clear()
    again = tmp_path_factory.mktemp("again")
    from xcpimg.iso.build import IsoOptions, build_iso
    from xcpimg.layers import resolve
    build_iso(IsoOptions(layers=resolve("8.3:testing"), install_img=img, output=again / "x.iso", volid="X",
                         repo_config=source.repo_config("8.3:testing")))
    assert fx_http.gets(".rpm") == []                     # a second build downloads nothing


@pytest.mark.expensive
def test_installimg_second_build_downloads_nothing(tmp_path: Path, fx: FixtureRepo, fx_http: TreeServer) -> None:
    """dnf install finds the pre-seeded packages whole and downloads none itself; the cache serves the second build."""
    if os.geteuid() != 0:
        pytest.skip("building install.img needs root") if not os.environ.get("CI") else pytest.fail("needs root")
    env = {**os.environ, "XCPIMG_CACHE": str(tmp_path / "xcache")}
    outs = []
    for i in range(2):
        out = tmp_path / f"install-{i}.img"
        proc = subprocess.run([sys.executable, "-m", "xcpimg.cli", "installimg", "-o", str(out), "--srcurl",
                               f"{fx_http.url}8/8.3", "--gpgkey", fx.gpgkey_url, "8.3"], env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stderr
        gets = fx_http.gets(".rpm")
        if i == 0:
            assert gets and len(gets) == len(set(gets))   # each package once: dnf fetched none again
        else:
            assert gets == []
        fx_http.clear()
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_cache_cli_info_and_prune(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "packages")
    for i in range(3):
        data = os.urandom(1000 + i)
        cache.put(f"q{i}-1-1.noarch.rpm", expect_of(data), lambda p, d=data: p.write_bytes(d))
    env = {**os.environ, "XCPIMG_CACHE": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xcpimg.cli", "cache", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
    info = cli("info")
    assert info.returncode == 0 and "packages: 3, size: 3.0 kB" in info.stdout
    assert cli("prune", "--max-size", "2k").returncode == 0
    assert len(cache.entries()) == 1
    bad = cli("prune", "--max-size", "lots")
    assert bad.returncode == 2 and "invalid size 'lots'" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("prune", "--max-size", "0").stdout.startswith("pruned 1 package(s)")
    assert cache.entries() == []


def test_url_lookup_falls_back_to_the_repository_path() -> None:
    from xcpimg.fetch import _lookup
    a, b = expect_of(b"a"), expect_of(b"b")
    expects = {"http://m/8/8.3/base/x86_64/Packages/a-1-1.x86_64.rpm": a,
               "http://m/8/8.3/updates/x86_64/Packages/b-1-1.x86_64.rpm": b,
               "http://m/8/8.3/testing/x86_64/Packages/b-1-1.x86_64.rpm": a}
    assert _lookup(expects, "http://m/8/8.3/base/x86_64/Packages/a-1-1.x86_64.rpm") is a
    assert _lookup(expects, "http://mirror2/xcp/base/x86_64/Packages/a-1-1.x86_64.rpm") is a
    assert _lookup(expects, "http://mirror2/xcp/x/Packages/b-1-1.x86_64.rpm") is None   # two candidates differ
    assert _lookup(expects, "http://m/other/c-1-1.x86_64.rpm") is None
