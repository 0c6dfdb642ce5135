"""Fetch Debian packages (never installed) and unpack them, for real boot payloads.

Packages are fetched with ``apt-get download`` into a cache keyed by the exact
version the host's apt knows, and unpacked with ``dpkg-deb -x``: no maintainer
script runs, nothing on the host changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from .errors import ToolError
from .run import output, run


def cache_root() -> Path:
    """xcpimg's cache directory ($XCPIMG_CACHE, else $XDG_CACHE_HOME/xcpimg, else ~/.cache/xcpimg)."""
    env = os.environ.get("XCPIMG_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xcpimg"


def candidate_versions(names: list[str]) -> dict[str, str]:
    """name -> the version apt would download, for each of *names* apt knows (one ``apt-cache policy``)."""
    text = output(["apt-cache", "policy", "--", *names], check=False,
                  what=f"look up Debian package{'s' if len(names) > 1 else ''} {' '.join(names)}")
    found: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                found[current] = version
    return found


def candidate_version(name: str) -> str:
    """The version apt would download for *name* (error if apt does not know it)."""
    version = candidate_versions([name]).get(name)
    if version is None:
        raise ToolError(f"Debian package {name} is unknown to apt (run 'apt-get update' first?)", ["apt-cache"])
    return version


def fetch(name: str, cache: Path | None = None) -> Path:
    """Path of the .deb for *name* in the cache, downloading it when missing."""
    version = candidate_version(name)
    dest = (cache or cache_root() / "debs")
    dest.mkdir(parents=True, exist_ok=True)
    safe_version = version.replace(":", "%3a")
    with FileLock(str(dest / ".lock")):
        found = sorted(dest.glob(f"{name}_{safe_version}_*.deb"))
        if found:
            return found[0]
        tmp = dest / f".dl-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        try:
            run(["apt-get", "download", "-q", f"{name}={version}"], cwd=tmp,
                what=f"download Debian package {name} {version}")
            debs = sorted(tmp.glob("*.deb"))
            if not debs:
                raise ToolError(f"apt-get download of {name} {version} produced no file", ["apt-get"])
            final = dest / debs[0].name
            os.replace(debs[0], final)
            return final
        finally:
            for leftover in tmp.glob("*"):
                leftover.unlink()
            tmp.rmdir()


def extract(deb: Path, dest: Path) -> Path:
    """Unpack the data of *deb* into *dest* (created) and return *dest*."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", deb, dest], what=f"unpack {deb.name}")
    return dest
