"""Build the embedded fixture repository: an XCP-ng-shaped, signed yum tree.

The packages are described as data in ``fixtures/`` (``repo.toml``, ``packages.toml``);
boot packages carry real bytes from Debian packages (fetched, never installed), the
rest are small stubs. RPMs are made by ``rpmbuild`` (one spec per repository, every
package a sub-package), signed with the fixture key by ``rpmsign`` and indexed by
``createrepo_c``. Layout::

    ROOT/RPM-GPG-KEY-xcpimg-fixture
    ROOT/8/<ver>/<repo>/x86_64/{Packages,repodata}
    ROOT/8/<ver>/<repo>/Source/{SPackages,repodata}
    ROOT/linstor/8/<ver>/linstor/x86_64/{Packages,repodata}

The tree is built once into ``<cache>/fixture-repo/<hash>``, where the hash covers
``fixtures/``, this module, the install.img package lists and the Debian versions used.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import fnmatch
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from . import debs, elf
from .errors import BuildError, ConfigError, ToolError
from .fsutil import atomic_tree, check_tree_output, private_tempdir, remove_tree
from .layers import read_package_list
from .run import build_epoch, output, run
from .sign import private_gnupghome

log = logging.getLogger("xcpimg.fixture_repo")

CHECKOUT = Path(__file__).resolve().parent.parent
FIXTURES = CHECKOUT / "fixtures"
ARCH = "x86_64"
MANIFEST = "FIXTURE-MANIFEST.json"
_VAR_RE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)@")


# ------------------------------------------------------------------------------------------ result


@dataclass(frozen=True)
class FixtureRepo:
    """A built fixture repository."""

    root: Path
    versions: tuple[str, ...] = ("8.2", "8.3")
    key_name: str = "RPM-GPG-KEY-xcpimg-fixture"

    def srcurl(self, ver: str) -> str:
        """Source URL of version *ver* (``file://ROOT/8/<ver>``), for ``--srcurl``."""
        return (self.root / ver.split(".")[0] / ver).as_uri()

    def linstor_srcurl(self, ver: str) -> str:
        """Source URL of the linstor repo of *ver*, for ``--srcurl:linstor``."""
        return (self.root / "linstor" / ver.split(".")[0] / ver).as_uri()

    @property
    def gpgkey_path(self) -> Path:
        return self.root / self.key_name

    @property
    def gpgkey_url(self) -> str:
        return self.gpgkey_path.as_uri()

    def repo_dir(self, ver: str, repo: str) -> Path:
        """``ROOT/8/<ver>/<repo>/x86_64`` (linstor: under ``ROOT/linstor``)."""
        top = self.root / "linstor" if repo == "linstor" else self.root
        return top / ver.split(".")[0] / ver / repo / ARCH

    def manifest(self) -> dict[str, Any]:
        """``{ver: {repo: {name: "version-release.arch"}}}`` as built."""
        return json.loads((self.root / MANIFEST).read_text())["packages"]


# ------------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class FileSpec:
    """One entry of a package: where it goes and where its bytes come from."""

    path: str
    kind: str  # text, file, deb, tree, select, libs, symlink, generate, dir
    source: str = ""  # text, fixture file, deb alias, symlink target, generator name
    pattern: str = ""  # glob in the unpacked deb (deb, tree)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    mode: int | None = None


@dataclass(frozen=True)
class Package:
    """One binary RPM to build."""

    name: str
    version: str
    release: str  # without the dist tag
    dist: str
    arch: str
    summary: str
    repo: str
    requires: tuple[str, ...] = ()
    files: tuple[FileSpec, ...] = ()
    vars: Mapping[str, str] = field(default_factory=dict)

    @property
    def full_release(self) -> str:
        return f"{self.release}.{self.dist}"

    @property
    def evr_arch(self) -> str:
        return f"{self.version}-{self.full_release}.{self.arch}"


@dataclass
class Fixtures:
    """The parsed ``fixtures/`` directory."""

    dir: Path
    repo: dict[str, Any]
    packages: list[dict[str, Any]]
    newer: list[dict[str, Any]]

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(sorted(self.repo["version"]))

    @property
    def repos(self) -> list[str]:
        return list(self.repo["repo"]["repos"])

    @property
    def apart(self) -> list[str]:
        return list(self.repo["repo"].get("apart", []))


def load_fixtures(directory: Path = FIXTURES) -> Fixtures:
    """Read ``repo.toml`` and ``packages.toml`` of *directory*."""
    try:
        repo = tomllib.loads((directory / "repo.toml").read_text())
        pkgs = tomllib.loads((directory / "packages.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the fixture definitions in {directory}: {exc}") from None
    return Fixtures(directory, repo, pkgs.get("package", []), pkgs.get("newer", []))


def _subst(text: str, variables: Mapping[str, str]) -> str:
    """Replace the ``@name@`` of known *variables* (repeatedly: values may refer to others)."""
    for _ in range(8):
        new = _VAR_RE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)
        if new == text:
            return new
        text = new
    return text


def _pick(value: Any, ver: str, versions: tuple[str, ...]) -> Any:
    """*value*, or its entry for *ver* when it is given per version."""
    if isinstance(value, dict) and value and set(value) <= set(versions):
        return value.get(ver)
    return value


def _file_specs(entries: list[dict[str, Any]], variables: Mapping[str, str], where: str) -> list[FileSpec]:
    specs: list[FileSpec] = []
    for entry in entries:
        mode = int(entry["mode"], 8) if "mode" in entry else None
        if "select" in entry:
            specs.append(FileSpec("/", "select", entry["deb"], include=tuple(entry["select"]),
                                  exclude=tuple(entry.get("exclude", ()))))
            continue
        if entry.get("libs"):
            specs.append(FileSpec("/", "libs", include=tuple(entry.get("also", ()))))
            continue
        if "links_to" in entry:
            target = _subst(entry["links_to"], variables)
            for path in entry["paths"]:
                path = _subst(path, variables)
                rel = os.path.relpath(target, os.path.dirname(path))
                specs.append(FileSpec(path, "symlink", rel))
            continue
        path = _subst(entry["path"], variables)
        if not path.startswith("/") or ".." in path.split("/"):
            raise ConfigError(f"{where}: file path {path!r} must be absolute, without '..'")
        if "text" in entry:
            specs.append(FileSpec(path, "text", _subst(entry["text"].lstrip("\n"), variables), mode=mode))
        elif "file" in entry:
            specs.append(FileSpec(path, "file", entry["file"], mode=mode))
        elif "deb" in entry and "glob" in entry:
            specs.append(FileSpec(path, "deb", entry["deb"], entry["glob"], mode=mode))
        elif "deb" in entry and "tree" in entry:
            specs.append(FileSpec(path, "tree", entry["deb"], entry["tree"],
                                  tuple(entry.get("include", ())), tuple(entry.get("exclude", ())), mode))
        elif "symlink" in entry:
            specs.append(FileSpec(path, "symlink", _subst(entry["symlink"], variables)))
        elif "generate" in entry:
            specs.append(FileSpec(path, "generate", entry["generate"], mode=mode))
        elif entry.get("dir"):
            specs.append(FileSpec(path, "dir", mode=mode))
        else:
            raise ConfigError(f"{where}: file entry {entry!r} has no byte source")
    return specs


def plan(fx: Fixtures, ver: str, listed: list[str]) -> dict[str, list[Package]]:
    """The packages of version *ver*, by repository: every name of *listed*, the defined
    packages, stubs for every other name a Requires mentions, and the newer releases."""
    versions = fx.versions
    settings = fx.repo["repo"]
    dist = fx.repo["version"][ver]["dist"]
    defs: dict[str, dict[str, Any]] = {}
    for d in fx.packages:
        if ver in d.get("only", versions):
            if d["name"] in defs:
                raise ConfigError(f"fixtures: package {d['name']} defined twice for {ver}")
            defs[d["name"]] = d

    def make(name: str, newer_release: str | None = None) -> Package:
        d = defs.get(name, {"name": name, "stub": True})
        where = f"fixtures: package {name} ({ver})"
        raw_vars = {k: str(_pick(v, ver, versions)) for k, v in d.get("vars", {}).items()}
        base = {"ver": ver, "dist": dist, "name": name, **raw_vars}
        version = _subst(str(_pick(d.get("version", settings["stub_version"]), ver, versions)), base)
        release = newer_release or _subst(str(_pick(d.get("release", settings["stub_release"]), ver,
                                                     versions)), base)
        variables = {**base, "version": version, "release": release}
        variables = {k: _subst(v, variables) for k, v in variables.items()}
        entries = _pick(d.get("files"), ver, versions)
        if entries is None and not d.get("stub"):
            raise ConfigError(f"{where}: no files (use files = [] for none, or stub = true)")
        files = _file_specs(list(entries or []), variables, where)
        if d.get("stub"):
            files.insert(0, FileSpec(f"/usr/share/xcpimg-fixture/{name}", "text",
                                     f"{name} {version}-{release}: a stub package of the xcpimg "
                                     "fixture repository.\n"))
        return Package(name=name, version=version, release=release, dist=dist,
                       arch=_pick(d.get("arch", ARCH), ver, versions),
                       summary=d.get("summary", f"Stub of {name} (xcpimg fixture)"),
                       repo=d.get("repo", "base"),
                       requires=tuple(_subst(r, variables)
                                      for r in _pick(d.get("requires", []), ver, versions)),
                       files=tuple(files), vars=variables)

    pkgs: dict[str, Package] = {}
    todo = list(listed) + sorted(defs)
    while todo:
        name = todo.pop(0)
        if name not in pkgs:
            pkgs[name] = make(name)
            todo.extend(pkgs[name].requires)
    by_repo: dict[str, list[Package]] = {r: [] for r in fx.repos + fx.apart}
    for pkg in pkgs.values():
        if pkg.repo not in by_repo:
            raise ConfigError(f"fixtures: package {pkg.name} is in unknown repository {pkg.repo!r}")
        by_repo[pkg.repo].append(pkg)
    for n in fx.newer:
        if ver not in n.get("only", versions):
            continue
        if n["name"] not in pkgs or n["repo"] not in by_repo:
            raise ConfigError(f"fixtures: newer release of {n['name']} in {n['repo']}: "
                              "unknown package or repository")
        if pkgs[n["name"]].repo != "base":
            raise ConfigError(f"fixtures: newer releases are of base packages only ({n['name']})")
        by_repo[n["repo"]].append(replace(make(n["name"], str(n["release"])), repo=n["repo"]))
    _check_paths(ver, by_repo)
    return {r: sorted(p, key=lambda p: p.name) for r, p in by_repo.items()}


def _check_paths(ver: str, by_repo: Mapping[str, list[Package]]) -> None:
    """Two packages of one repository must not ship the same path (rpm would refuse to install both)."""
    for repo, pkgs in by_repo.items():
        owner: dict[str, str] = {}
        for pkg in pkgs:
            for spec in pkg.files:
                if spec.kind in ("dir", "select", "libs"):
                    continue
                if owner.setdefault(spec.path, pkg.name) != pkg.name:
                    raise ConfigError(f"fixtures: {spec.path} is in both {owner[spec.path]} and {pkg.name} "
                                      f"({ver} {repo})")


# ------------------------------------------------------------------------------------------ Debian


def _apt_fingerprint() -> str:
    """A cheap digest of apt's state (package lists and configuration): stat data only."""
    h = hashlib.sha256()
    for top in (Path("/var/lib/apt/lists"), Path("/etc/apt")):
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            if path.is_file() and "partial" not in path.parts and path.name != "lock":
                st = path.stat()
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _apt_lookup(aliases: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """alias -> [Debian package, candidate version], asking apt (about 1-2 s)."""
    names: dict[str, str] = {}
    for alias, src in sorted(aliases.items()):
        if "meta" in src:
            text = output(["apt-cache", "show", "--no-all-versions", src["meta"]], check=False,
                          what=f"look up Debian package {src['meta']}")
            deps = re.search(r"^(?:Pre-)?Depends:\s*([^\s,(]+)", text, re.M)
            if not deps:
                raise ToolError(f"Debian package {src['meta']} is unknown to apt or has no dependency "
                                "(run 'apt-get update' first?)", ["apt-cache"])
            names[alias] = deps.group(1)
        else:
            names[alias] = src["package"]
    candidates = debs.candidate_versions(sorted(set(names.values())))
    result: dict[str, list[str]] = {}
    for alias, name in sorted(names.items()):
        if name not in candidates:
            raise ToolError(f"Debian package {name} is unknown to apt (run 'apt-get update' first?)",
                            ["apt-cache"])
        result[alias] = [name, candidates[name]]
    return result


def debian_versions(fx: Fixtures, cache_dir: Path) -> dict[str, list[str]]:
    """alias -> [Debian package, version] of the boot payload sources.

    apt is asked only when its lists or configuration changed since the last lookup
    (a stamp in *cache_dir* keyed by their stat data), so a cache hit costs no apt call.
    """
    aliases = fx.repo.get("debian", {})
    wanted = hashlib.sha256(json.dumps(aliases, sort_keys=True).encode()).hexdigest()
    key = hashlib.sha256((_apt_fingerprint() + wanted).encode()).hexdigest()
    stamp = cache_dir / f"debian-versions-{wanted[:12]}.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(stamp.read_text())
        if data.get("key") == key:
            return dict(data["versions"])
    versions = _apt_lookup(aliases)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "versions": versions}, sort_keys=True))
    os.replace(tmp, stamp)
    return versions


# ------------------------------------------------------------------------------------------ cache key


def _fixture_hash(fx: Fixtures, lists: Mapping[str, list[str]], deb_versions: Mapping[str, list[str]]) -> str:
    h = hashlib.sha256()
    for path in sorted(fx.dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(f"{path.relative_to(fx.dir)}\0".encode() + path.read_bytes() + b"\0")
    h.update(Path(__file__).read_bytes())
    h.update((Path(__file__).parent / "elf.py").read_bytes())
    h.update(json.dumps({"lists": lists, "debian": deb_versions, "epoch": build_epoch()},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def package_lists(fx: Fixtures) -> dict[str, list[str]]:
    """ver -> the package names of its ``packages.lst`` (``packages_lst``: relative to the checkout)."""
    return {ver: read_package_list(CHECKOUT / fx.repo["version"][ver]["packages_lst"])
            if "packages_lst" in fx.repo["version"][ver] else [] for ver in fx.versions}


# ------------------------------------------------------------------------------------------ build


class _Payloads:
    """Unpacked Debian packages and generated files. Prepared before the per-version
    builds start (they run in threads), which then only read them."""

    def __init__(self, fx: Fixtures, work: Path, deb_versions: Mapping[str, list[str]]):
        self.fx = fx
        self.work = work
        self.deb_versions = deb_versions
        self.unpacked: dict[str, Path] = {}
        self.generated: dict[str, Path] = {}

    def prepare(self, needed: set[str]) -> None:
        for alias in sorted(needed):
            if alias not in self.deb_versions:
                raise ConfigError(f"fixtures: unknown Debian source {alias!r} (see [debian] in repo.toml)")
            name, version = self.deb_versions[alias]
            # the version is known already: take the cached .deb without asking apt again
            cached = sorted((debs.cache_root() / "debs").glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
            deb = cached[0] if cached else debs.fetch(name)
            log.info("fixture repo: unpacking %s", deb.name)
            self.unpacked[alias] = debs.extract(deb, self.work / "debs" / alias)

    def deb_root(self, alias: str) -> Path:
        return self.unpacked[alias]

    def generate(self, what: str, ver: str) -> Path:
        """The generated file *what* for version *ver* (made once per version where it differs)."""
        key = f"{what}-{ver}" if what == "grub-efi-image" else what
        if key in self.generated:
            return self.generated[key]
        if what == "xen-release-image":
            out = self._xen_release_image()
        elif what == "grub-efi-image":
            out = self._grub_image(ver)
        else:
            raise ConfigError(f"fixtures: unknown generator {what!r}")
        self.generated[key] = out
        return out

    def _xen_release_image(self) -> Path:
        """Debian's Xen, gzipped anew at another level: it boots, yet its bytes differ from the
        debug build's, so a builder that takes the wrong one is caught."""
        src = _one_match(self.deb_root("xen"), "boot/xen-*.gz", "fixture xen-hypervisor")
        out = self.work / "xen-release.gz"
        with gzip.open(src, "rb") as fin, open(out, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0, filename="") as fout:
                shutil.copyfileobj(fin, fout)
        return out

    def _grub_image(self, ver: str) -> Path:
        img = self.fx.repo["grub_image"]
        omit = set(img.get("omit", {}).get(ver, ()))
        moddir = self.deb_root("grub") / "usr/lib/grub" / img["format"]
        out = self.work / f"grubx64-{ver}.efi"
        run(["grub-mkimage", "-O", img["format"], "-p", img["prefix"], "-d", moddir, "-o", out,
             *[m for m in img["modules"] if m not in omit]], what="build the fixture GRUB image")
        return out


def library_sources(fx: Fixtures) -> list[str]:
    """The Debian aliases whose libraries the ``libs`` entries draw from, in repo.toml order."""
    return [alias for alias, src in fx.repo.get("debian", {}).items() if src.get("libs")]


def _deb_entry(alias: str, root: Path, rel: str) -> FileSpec:
    """The file or link *rel* of the unpacked deb *alias* (at *root*), at the same path, mode or target."""
    path = root / rel
    if path.is_symlink():
        return FileSpec("/" + rel, "symlink", os.readlink(path))
    return FileSpec("/" + rel, "debfile", alias, rel, mode=stat.S_IMODE(path.stat().st_mode))


def _selected(root: Path, spec: FileSpec) -> list[FileSpec]:
    """The files and links of the unpacked deb *root* that *spec* (kind select) names."""
    out: list[FileSpec] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if not any(fnmatch.fnmatchcase(rel, g) for g in spec.include):
            continue
        if any(fnmatch.fnmatchcase(rel, g) for g in spec.exclude):
            continue
        out.append(_deb_entry(spec.source, root, rel))
    if not out:
        raise ConfigError(f"fixtures: select {list(spec.include)} of Debian package {spec.source} matches nothing")
    return out


#: where the dynamic loader looks when an ELF file has no RUNPATH of its own (Debian multiarch)
_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib")


class _LibraryIndex:
    """Paths of the library packages (alias, relative path), resolving links inside their trees."""

    def __init__(self, payloads: _Payloads, aliases: list[str]) -> None:
        self.roots = {a: payloads.deb_root(a) for a in aliases}  # in search order

    def find(self, path: str) -> tuple[str, str] | None:
        """(alias, relative path) of the first library package holding *path* (file or link)."""
        for alias, root in self.roots.items():
            p = root / path.lstrip("/")
            if p.is_symlink() or p.is_file():
                return alias, path.lstrip("/")
        return None

    def chain(self, path: str) -> list[tuple[str, str]]:
        """*path* and every link hop to the file it names, each as (alias, relative path)."""
        out: list[tuple[str, str]] = []
        for _ in range(16):
            found = self.find(path)
            if found is None:
                raise BuildError(f"fixtures: shared library {path} is in none of the `libs` Debian packages "
                                 "(add the package that has it to repo.toml's [debian] with libs = true)")
            out.append(found)
            alias, rel = found
            p = self.roots[alias] / rel
            if not p.is_symlink():
                return out
            target = os.readlink(p)
            path = target if target.startswith("/") else os.path.normpath(os.path.join("/", os.path.dirname(rel),
                                                                                       target))
        raise BuildError(f"fixtures: too many links resolving {path}")

    def locate(self, name: str, runpath: tuple[str, ...]) -> str | None:
        for d in (*runpath, *_LIB_DIRS):
            if self.find(f"{d}/{name}"):
                return f"{d}/{name}"
        return None


def library_closure(elf_files: list[Path], index: _LibraryIndex, also: list[str]) -> list[tuple[str, str]]:
    """(alias, relative path) of every library, link and loader the *elf_files* need, recursively,
    plus the ``also`` files (``ALIAS:path``) and their links."""
    wanted: dict[tuple[str, str], None] = {}
    for item in also:
        for hop in index.chain(item.partition(":")[2]):
            wanted[hop] = None
    todo = collections.deque((p, str(p)) for p in elf_files)  # breadth first: programs before libraries
    seen: set[str] = set()
    located: dict[str, str] = {}  # library name -> path: the loader reuses a library loaded by name
    while todo:
        path, what = todo.popleft()
        dyn = elf.read_dynamic(path)
        if dyn is None:
            continue
        paths = [dyn.interpreter] if dyn.interpreter else []
        for name in dyn.needed:
            found = located.get(name) or index.locate(name, dyn.runpath)
            if found is None:
                raise BuildError(f"fixtures: {what} needs {name}, which none of the `libs` Debian packages has "
                                 "(add the package that has it to repo.toml's [debian] with libs = true)")
            located[name] = found
            paths.append(found)
        for lib in paths:
            hops = index.chain(lib)
            wanted.update(dict.fromkeys(hops))
            alias, rel = hops[-1]
            if rel not in seen:
                seen.add(rel)
                todo.append((index.roots[alias] / rel, rel))
    return sorted(wanted, key=lambda x: x[1])


def expand(by_repo: Mapping[str, list[Package]], payloads: _Payloads, lib_aliases: list[str],
           ver: str) -> dict[str, list[Package]]:
    """*by_repo* with its ``select`` entries replaced by the files they name, then its ``libs``
    entries by the shared-library closure of every ELF file of the version."""
    selected: dict[str, list[Package]] = {}
    for repo, pkgs in by_repo.items():
        selected[repo] = []
        for pkg in pkgs:
            files: list[FileSpec] = []
            for spec in pkg.files:
                files += _selected(payloads.deb_root(spec.source), spec) if spec.kind == "select" else [spec]
            selected[repo].append(replace(pkg, files=tuple(files)))
    elf_files = [payloads.deb_root(s.source) / s.pattern for pkgs in selected.values() for p in pkgs
                 for s in p.files if s.kind == "debfile"]
    elf_files = [f for f in elf_files if elf.is_elf(f)]
    out: dict[str, list[Package]] = {}
    index: _LibraryIndex | None = None
    for repo, pkgs in selected.items():
        out[repo] = []
        for pkg in pkgs:
            files = []
            for spec in pkg.files:
                if spec.kind != "libs":
                    files.append(spec)
                    continue
                index = index or _LibraryIndex(payloads, lib_aliases)
                files += [_deb_entry(alias, index.roots[alias], rel)
                          for alias, rel in library_closure(elf_files, index, list(spec.include))]
            out[repo].append(replace(pkg, files=tuple(files)))
    _check_paths(ver, out)
    return out


def _one_match(root: Path, pattern: str, what: str) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise BuildError(f"{what}: {pattern!r} matches {len(found)} paths in the unpacked Debian package "
                         f"(expected exactly one)")
    return found[0]


def stage(pkg: Package, dest: Path, fx: Fixtures, payloads: _Payloads) -> None:
    """Write the files of *pkg* under *dest* (a build root)."""
    what = f"fixture package {pkg.name}"
    for spec in pkg.files:
        target = dest / spec.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if spec.kind == "dir":
            target.mkdir(exist_ok=True)
        elif spec.kind == "symlink":
            target.unlink(missing_ok=True)
            os.symlink(spec.source, target)
            continue
        elif spec.kind == "text":
            target.write_text(spec.source)
        elif spec.kind == "file":
            text = (fx.dir / spec.source).read_text()
            target.write_text(_subst(text, pkg.vars))
        elif spec.kind == "deb":
            shutil.copyfile(_one_match(payloads.deb_root(spec.source), spec.pattern, what), target)
        elif spec.kind == "debfile":
            shutil.copyfile(payloads.deb_root(spec.source) / spec.pattern, target)
        elif spec.kind == "generate":
            shutil.copyfile(payloads.generate(spec.source, pkg.vars["ver"]), target)
        elif spec.kind == "tree":
            src = _one_match(payloads.deb_root(spec.source), spec.pattern, what)
            if spec.include:
                for rel in spec.include:
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(_one_match(src, rel, what), target / rel)
            else:
                shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True,
                                ignore=_excluder(src, spec.exclude))
        else:  # pragma: no cover - _file_specs makes only the kinds above
            raise BuildError(f"{what}: unknown file kind {spec.kind}")
        os.chmod(target, spec.mode if spec.mode is not None else (0o755 if target.is_dir() else 0o644))


def _excluder(top: Path, exclude: tuple[str, ...]) -> Any:
    """A copytree ignore function dropping the *exclude* paths (relative to *top*)."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if os.path.relpath(os.path.join(directory, n), top) in exclude]
    return ignore


def _rpm_quote(path: str) -> str:
    if re.search(r'[\[\]*?{}"\\\s]', path):
        raise ConfigError(f"fixtures: path {path!r} has characters rpm %files would misread")
    return '"' + path.replace("%", "%%") + '"'


def write_spec(repo: str, pkgs: list[Package], settings: Mapping[str, Any]) -> str:
    """One spec whose sub-packages are *pkgs*; ``%install`` copies the staged payload."""
    lines = [f"Name: xcpimg-fixture-{repo}", "Version: 1", "Release: 1",
             f"Summary: xcpimg fixture packages of the {repo} repository",
             f"License: {settings['license']}", f"Vendor: {settings['vendor']}", "AutoReqProv: no", "",
             "%description", f"Sources of the xcpimg fixture packages of the {repo} repository.", ""]
    for p in pkgs:
        lines += [f"%package -n {p.name}", f"Version: {p.version}", f"Release: {p.full_release}",
                  f"Summary: {p.summary}", "AutoReqProv: no"]
        if p.arch == "noarch":
            lines.append("BuildArch: noarch")
        lines += [f"Requires: {r}" for r in p.requires]
        lines += ["", f"%description -n {p.name}", f"{p.summary}.", ""]
    # shell variables, not macros: the expanded spec stored in the headers must not name temp dirs
    lines += ["%install", 'mkdir -p "$RPM_BUILD_ROOT"', 'cp -a "$FIXTURE_PAYLOAD"/. "$RPM_BUILD_ROOT"/', ""]
    for p in pkgs:
        lines += [f"%files -n {p.name}", "%defattr(-,root,root,-)"]
        trees = [s.path for s in p.files if s.kind == "tree"]
        for s in p.files:
            if any(s.path.startswith(t + "/") for t in trees):
                continue  # inside a directory the package owns whole
            lines.append(("%dir " if s.kind == "dir" else "") + _rpm_quote(s.path))
        lines.append("")
    return "\n".join(lines)


def _rpmbuild(spec: Path, payload: Path, top: Path, compression: str) -> None:
    defines = {
        "_topdir": str(top), "_tmppath": str(top / "tmp"), "_dbpath": str(top / "rpmdb"),
        "_binary_payload": compression, "_source_payload": "w9.gzdio",
        "__os_install_post": "%{nil}", "__arch_install_post": "%{nil}", "debug_package": "%{nil}",
        "_build_id_links": "none", "_buildhost": "xcpimg-fixture",
        "use_source_date_epoch_as_buildtime": "1", "clamp_mtime_to_source_date_epoch": "1",
        "source_date_epoch_from_changelog": "0",
    }
    (top / "tmp").mkdir(parents=True, exist_ok=True)
    argv: list[str | Path] = ["rpmbuild", "-ba", "--nodeps", "--target", ARCH, "--quiet"]
    for k, v in defines.items():
        argv += ["--define", f"{k} {v}"]
    run([*argv, spec], env={"FIXTURE_PAYLOAD": str(payload)}, what=f"rpmbuild {spec.name}")


def build_version(fx: Fixtures, ver: str, by_repo: Mapping[str, list[Package]], tree: Path, work: Path,
                  payloads: _Payloads) -> None:
    """Build every repository of *ver* into *tree* (unsigned, no metadata yet)."""
    compression = fx.repo["version"][ver]["payload"]
    major = ver.split(".")[0]
    for repo, pkgs in by_repo.items():
        if not pkgs:
            continue
        top = (tree / "linstor" if repo in fx.apart else tree) / major / ver / repo
        bdir = work / f"{ver}-{repo}"
        payload = bdir / "payload"
        payload.mkdir(parents=True)
        for p in pkgs:
            stage(p, payload, fx, payloads)
        spec = bdir / f"xcpimg-fixture-{repo}.spec"
        spec.write_text(write_spec(repo, pkgs, fx.repo["repo"]))
        log.info("fixture repo: %s %s: rpmbuild of %d packages", ver, repo, len(pkgs))
        _rpmbuild(spec, payload, bdir / "rpmbuild", compression)
        (top / ARCH / "Packages").mkdir(parents=True)
        for rpm in sorted((bdir / "rpmbuild" / "RPMS").glob("*/*.rpm")):
            os.replace(rpm, top / ARCH / "Packages" / rpm.name)
        if repo not in fx.apart:
            (top / "Source" / "SPackages").mkdir(parents=True)
            for srpm in sorted((bdir / "rpmbuild" / "SRPMS").glob("*.src.rpm")):
                os.replace(srpm, top / "Source" / "SPackages" / srpm.name)
        remove_tree(bdir)


@contextlib.contextmanager
def _gnupg_home(fx: Fixtures) -> Iterator[Path]:
    """A private GNUPGHOME holding the fixture secret key; the agent is stopped and the dir removed."""
    with private_gnupghome(prefix="xcpimg-gpg-") as home:
        run(["gpg", "--homedir", home, "--batch", "--quiet", "--import",
             fx.dir / fx.repo["key"]["secret"]], what="import the fixture signing key")
        yield home


def sign(fx: Fixtures, rpms: list[Path]) -> None:
    """Sign *rpms* in place with the fixture key (SHA256, signature time pinned)."""
    key = fx.repo["key"]
    when = max(build_epoch(), int(key["created"]) + 1)
    with _gnupg_home(fx) as home:
        extra = f"--batch --no-tty --faked-system-time {when}! --homedir {home}"
        argv: list[str | Path] = ["rpmsign", "--addsign", "--rpmv3", "--define", f"_gpg_name {key['uid']}",
                                  "--define", f"_gpg_path {home}", "--define", "__gpg /usr/bin/gpg",
                                  "--define", "_gpg_digest_algo sha256",
                                  "--define", f"_gpg_sign_cmd_extra_args {extra}"]
        chunks = [rpms[i::2] for i in range(2)]  # two signers: gpg and rpm each use one core
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(run, [*argv, *chunk], env={"GNUPGHOME": str(home)}, what="sign fixture RPMs")
                    for chunk in chunks if chunk]
            for job in jobs:
                job.result()


def createrepo(directory: Path, revision: int) -> None:
    """Index *directory* with createrepo_c, deterministically (pinned revision, timestamps, mtimes)."""
    for rpm in directory.rglob("*.rpm"):
        os.utime(rpm, (revision, revision))
    run(["createrepo_c", "--quiet", "--no-database", "--revision", str(revision),
         "--set-timestamp-to-revision", "--general-compress-type", "gz", "--workers", "1", directory],
        what=f"createrepo_c {directory.name}")


def build_tree(dest: Path, fx: Fixtures | None = None, lists: Mapping[str, list[str]] | None = None,
               deb_versions: Mapping[str, list[str]] | None = None, work_parent: Path | None = None) -> None:
    """Build the whole fixture tree into *dest* (which must not exist)."""
    fx = fx or load_fixtures()
    lists = lists or package_lists(fx)
    plans = {ver: plan(fx, ver, lists[ver]) for ver in fx.versions}
    with private_tempdir(prefix="xcpimg-fixture-work-", parent=work_parent) as work:
        deb_versions = deb_versions or debian_versions(fx, work)
        payloads = _Payloads(fx, work, deb_versions)
        specs = [s for p in plans.values() for ps in p.values() for pkg in ps for s in pkg.files]
        needed = {s.source for s in specs if s.kind in ("deb", "tree", "select")}
        lib_aliases = library_sources(fx)
        if any(s.kind == "libs" for s in specs):
            needed |= set(lib_aliases)
        payloads.prepare(needed)
        plans = {ver: expand(plans[ver], payloads, lib_aliases, ver) for ver in fx.versions}
        for ver in fx.versions:
            for generator in sorted({s.source for p in plans[ver].values() for pkg in p for s in pkg.files
                                     if s.kind == "generate"}):
                payloads.generate(generator, ver)
        dest.mkdir()
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(build_version, fx, ver, plans[ver], dest, work / ver, payloads)
                    for ver in fx.versions]
            for job in jobs:
                job.result()
    rpms = sorted(dest.rglob("*.rpm"))
    log.info("fixture repo: signing %d RPMs", len(rpms))
    sign(fx, rpms)
    revision = int(fx.repo["repo"]["metadata_revision"])
    for repodir in sorted({p.parent.parent for p in rpms}):
        createrepo(repodir, revision)
    shutil.copyfile(fx.dir / fx.repo["key"]["public"], dest / fx.repo["key"]["public_name"])
    manifest = {"packages": {ver: {repo: {p.name: p.evr_arch for p in pkgs} for repo, pkgs in plan_.items()}
                             for ver, plan_ in plans.items()},
                "debian": dict(deb_versions)}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    epoch = build_epoch()
    for path in [*sorted(dest.rglob("*")), dest]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


# ------------------------------------------------------------------------------------------ cache


def ensure_fixture_repo(cache: Path | None = None, fixtures: Path = FIXTURES) -> FixtureRepo:
    """The fixture repository, built at most once into ``<cache>/fixture-repo/<hash>``.

    *cache* defaults to :func:`xcpimg.debs.cache_root`; *fixtures* is the definitions
    directory (tests use small ones). Concurrent callers (xdist workers,
    several processes) wait on a file lock; one builds, in a temporary directory beside
    the result that is renamed into place, so a failure leaves nothing behind.
    """
    fx = load_fixtures(fixtures)
    base = (cache or debs.cache_root()) / "fixture-repo"
    base.mkdir(parents=True, exist_ok=True)
    lists = package_lists(fx)
    deb_versions = debian_versions(fx, base)
    digest = _fixture_hash(fx, lists, deb_versions)
    final = base / digest
    repo = FixtureRepo(final, fx.versions, fx.repo["key"]["public_name"])
    if (final / MANIFEST).is_file():
        return repo
    with FileLock(str(base / f"{digest}.lock")):
        if (final / MANIFEST).is_file():
            return repo
        for stale in base.glob(f".build-{digest}-*"):
            remove_tree(stale)  # left by a killed build (we hold the lock: nobody else builds)
        started = time.monotonic()
        log.info("fixture repo: building %s (once; later calls reuse it)", final)
        with private_tempdir(prefix=f".build-{digest}-", parent=base) as tmp:
            build_tree(tmp / "tree", fx, lists, deb_versions, work_parent=tmp)
            os.rename(tmp / "tree", final)
        log.info("fixture repo: built in %.0f s", time.monotonic() - started)
    return repo


# ------------------------------------------------------------------------------------------ CLI


def copy_tree(src: Path, dest: Path, force: bool) -> None:
    """Copy *src* to *dest* atomically; an existing *dest* is replaced only with *force* (never lost)."""
    with atomic_tree(dest, force) as tmp:
        shutil.copytree(src, tmp, symlinks=True, dirs_exist_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", type=Path, metavar="DEST", help="directory to write the repository tree to")
    parser.add_argument("--force-overwrite", action="store_true", help="replace DEST if it exists")


def command(args: argparse.Namespace) -> int:
    dest = Path(args.dest).absolute()
    check_tree_output(dest, args.force_overwrite)  # before a possibly long build
    repo = ensure_fixture_repo()
    copy_tree(repo.root, dest, args.force_overwrite)
    out = FixtureRepo(dest.resolve(), repo.versions, repo.key_name)
    print(f"fixture repository written to {dest}")
    for ver in out.versions:
        print(f"  --srcurl {out.srcurl(ver)}  --srcurl:linstor {out.linstor_srcurl(ver)}")
    print(f"  gpg key: {out.gpgkey_url}")
    return 0
