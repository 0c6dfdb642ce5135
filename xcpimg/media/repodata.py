"""A yum repository's packages, read from repodata (repomd.xml -> primary.xml), and EVR order."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from .. import compress
from ..errors import BuildError

NS = {"repo": "http://linux.duke.edu/metadata/repo", "c": "http://linux.duke.edu/metadata/common"}


@dataclass(frozen=True, order=True)
class Package:
    """One package of primary.xml."""

    name: str
    arch: str
    epoch: str
    version: str
    release: str
    size: int = 0
    href: str = ""

    @property
    def evr(self) -> str:
        return f"{self.epoch + ':' if self.epoch not in ('', '0') else ''}{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"


def _decompress(data: bytes, what: str) -> bytes:
    method = compress.detect(data[:8])
    openers: dict[str | None, Callable[[bytes], bytes]] = {
        None: lambda d: d, "gzip": gzip.decompress, "bzip2": bz2.decompress, "xz": lzma.decompress}
    if method == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    try:
        return openers[method](data)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise BuildError(f"{what} is corrupt: {exc}") from None


def primary_href(repomd: bytes) -> str:
    """Location of primary.xml(.gz) named by repomd.xml."""
    try:
        root = ET.fromstring(repomd)
    except ET.ParseError as exc:
        raise BuildError(f"repodata/repomd.xml is not XML: {exc}") from None
    loc = root.find("repo:data[@type='primary']/repo:location", NS)
    href = loc.get("href") if loc is not None else None
    if not href or href.startswith("/") or ".." in href.split("/"):
        raise BuildError("repodata/repomd.xml names no usable primary metadata")
    return href


def parse_primary(data: bytes) -> list[Package]:
    """The packages of a (compressed) primary.xml, sorted."""
    try:
        root = ET.fromstring(_decompress(data, "primary.xml"))
    except ET.ParseError as exc:
        raise BuildError(f"primary.xml is not XML: {exc}") from None
    out = []
    for pkg in root.findall("c:package", NS):
        ver = pkg.find("c:version", NS)
        size = pkg.find("c:size", NS)
        loc = pkg.find("c:location", NS)
        if ver is None:
            continue
        out.append(Package(pkg.findtext("c:name", "", NS), pkg.findtext("c:arch", "", NS),
                           ver.get("epoch", "0"), ver.get("ver", ""), ver.get("rel", ""),
                           int(size.get("package", "0")) if size is not None else 0,
                           loc.get("href", "") if loc is not None else ""))
    return sorted(out)


def read_url(url: str) -> bytes:
    """The bytes at a file:// or http(s):// URL."""
    if url.startswith("file://"):
        from urllib.parse import unquote, urlparse
        path = unquote(urlparse(url).path)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise BuildError(f"cannot read {url}: {exc.strerror}") from None
    import requests
    try:
        resp = requests.get(url, timeout=60)
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise BuildError(f"cannot fetch {url}: {exc}") from None
    return resp.content


def read_repo(baseurl: str) -> list[Package]:
    """The packages of the yum repository at *baseurl* (its repodata/repomd.xml, then primary)."""
    base = baseurl.rstrip("/")
    href = primary_href(read_url(f"{base}/repodata/repomd.xml"))
    return parse_primary(read_url(f"{base}/{href}"))


# ---------------------------------------------------------------- version order (rpm's rules)

_SEGMENT = re.compile(r"(~|\^|[0-9]+|[A-Za-z]+)")


def vercmp(a: str, b: str) -> int:
    """Compare two version (or release) strings as rpm does: -1, 0 or 1."""
    if a == b:
        return 0
    sa, sb = _SEGMENT.findall(a), _SEGMENT.findall(b)
    while sa or sb:
        x = sa.pop(0) if sa else None
        y = sb.pop(0) if sb else None
        if x == "~" or y == "~":
            if x != y:
                return -1 if x == "~" else 1
            continue
        if x == "^" or y == "^":
            if x is None:
                return -1
            if y is None:
                return 1
            if x != y:
                return -1 if x == "^" else 1
            continue
        if x is None:
            return -1
        if y is None:
            return 1
        if x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1
        if x.isdigit():
            xi, yi = int(x), int(y)
            if xi != yi:
                return 1 if xi > yi else -1
        elif x != y:
            return 1 if x > y else -1
    return 0


def evrcmp(a: Package, b: Package) -> int:
    """Compare the epoch:version-release of two packages."""
    for x, y in ((a.epoch or "0", b.epoch or "0"), (a.version, b.version), (a.release, b.release)):
        if x.isdigit() and y.isdigit() and int(x) != int(y):
            return 1 if int(x) > int(y) else -1
        c = vercmp(x, y)
        if c:
            return c
    return 0


def parse_nevra(text: str) -> Package:
    """``name-[epoch:]version-release.arch`` (as ``rpm -qa`` prints with NEVRA) to a Package."""
    rest, _, arch = text.rpartition(".")
    rest, _, release = rest.rpartition("-")
    name, _, version = rest.rpartition("-")
    epoch = "0"
    if ":" in version:
        epoch, _, version = version.partition(":")
    return Package(name, arch, epoch, version, release)
