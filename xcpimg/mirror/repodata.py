"""Yum repodata: repomd.xml and primary.xml (any compression), and checking files against them."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..compress import decompressing

log = logging.getLogger("xcpimg.mirror")

_REPO_NS = "{http://linux.duke.edu/metadata/repo}"
_COMMON_NS = "{http://linux.duke.edu/metadata/common}"
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"


def decimal(text: str | None, what: str = "size") -> int | None:
    """A size written in ASCII digits (a header, repodata), None when absent or empty.

    Anything else (digits of other scripts such as '١٢', superscripts, signs) is a ValueError:
    ``int()`` would take some of them, ``str.isdigit()`` even more.
    """
    if text is None or not text.strip():
        return None
    if not re.fullmatch(r"[0-9]{1,20}", text.strip()):
        raise ValueError(f"bad {what} {text.strip()[:40]!r} (not a decimal number)")
    return int(text)


@dataclass(frozen=True)
class Expect:
    """What a file must be: its size and/or checksum, when known."""

    size: int | None = None
    algo: str | None = None
    digest: str | None = None


# ---------------------------------------------------------------------------------------------
# repodata

def _checksum(elem: ET.Element | None) -> tuple[str | None, str | None]:
    if elem is None or not (elem.text or "").strip():
        return None, None
    algo = (elem.get("type") or "").lower()
    algo = {"sha": "sha1"}.get(algo, algo)
    if algo not in hashlib.algorithms_available:
        return None, None
    return algo, elem.text.strip().lower()  # type: ignore[union-attr]


def _rel_href(href: str | None) -> str | None:
    """A metadata location href, if it is a plain relative path without "..": else None."""
    if not href or "://" in href or href.startswith("/") or "\\" in href:
        return None
    parts = href.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return href


def parse_repomd(data: bytes) -> dict[str, tuple[str, Expect]]:
    """type -> (href relative to the repo, Expect) for each metadata file of a repomd.xml."""
    root = ET.fromstring(data)
    out: dict[str, tuple[str, Expect]] = {}
    for d in root.findall(f"{_REPO_NS}data"):
        loc = d.find(f"{_REPO_NS}location")
        if loc is None or loc.get(_XML_BASE):
            continue
        href = _rel_href(loc.get("href"))
        if href is None:
            continue
        algo, digest = _checksum(d.find(f"{_REPO_NS}checksum"))
        size = decimal(d.findtext(f"{_REPO_NS}size"))
        out[d.get("type") or href] = (href, Expect(size, algo, digest))
    return out


def parse_primary(path: Path) -> dict[str, Expect]:
    """href relative to the repo -> Expect, for every package of a primary.xml (any compression)."""
    out: dict[str, Expect] = {}
    with open(path, "rb") as raw, decompressing(raw) as stream:
        for _event, elem in ET.iterparse(stream, events=("end",)):
            if elem.tag != f"{_COMMON_NS}package":
                continue
            loc = elem.find(f"{_COMMON_NS}location")
            href = _rel_href(loc.get("href")) if loc is not None and not loc.get(_XML_BASE) else None
            if href is not None:
                algo, digest = _checksum(elem.find(f"{_COMMON_NS}checksum"))
                size_el = elem.find(f"{_COMMON_NS}size")
                size = decimal(size_el.get("package")) if size_el is not None else None
                out[href] = Expect(size, algo, digest)
            elem.clear()
    return out


def _sized_file(path: Path, expect: Expect) -> os.stat_result | None:
    """lstat of *path* if it is a regular file (never a symlink) of the expected size."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or (expect.size is not None and st.st_size != expect.size):
        return None
    return st


def file_matches(path: Path, expect: Expect) -> bool:
    """Whether the regular file *path* (never a symlink) has the expected size and checksum."""
    return _sized_file(path, expect) is not None and _digest_matches(path, expect)


_file_matches = file_matches


def _digest_matches(path: Path, expect: Expect) -> bool:
    """Whether *path* hashes to the expected checksum (without one, only a known size counts)."""
    if not expect.algo:
        return expect.size is not None
    h = hashlib.new(expect.algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == expect.digest


@dataclass
class _Repo:
    rel: str                                   # "" or "base/x86_64/"
    packages: dict[str, Expect] = field(default_factory=dict)   # full rel path -> Expect (new)
    trusted: dict[str, Expect] = field(default_factory=dict)    # from the live local repodata
    trusted_until: float = 0.0                 # mtime of the live repomd.xml
    metadata: dict[str, Expect] = field(default_factory=dict)   # repodata files -> Expect (new)
    stage: Path | None = None                  # new repodata, to be swapped in
    failed: bool = False
