"""What to mirror: the source URL, the exclusions, the children a directory listing links to."""

from __future__ import annotations

import html.parser
import logging
import os
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from ..errors import UsageError, XcpimgError
from .transfer import TEMP_PREFIX, MalformedURL, join_url, split_url

log = logging.getLogger("xcpimg.mirror")

#: Where ``xcpimg mirror <version>`` mirrors from.
UPDATES_URL = "https://updates.xcp-ng.org"

#: The exclusions of the original mirror-repos.sh, matched against "/" + the relative path.
UPSTREAM_EXCLUDES = (r"/Source/", r"-debuginfo-", r"-debug-", r"-devel[-_]", r"/xs-opam-repo", r"/ocaml",
                     r"/golang")

MAX_DEPTH = 24         # directory levels below the source
NAME_MAX = 255         # bytes of a file name on Linux file systems

# ---------------------------------------------------------------------------------------------
# source, destination, exclusions

def resolve_source(source: str, dest: Path) -> tuple[str, Path]:
    """(base URL, local directory) for a version like 8.3 or a URL."""
    if "://" in source:
        try:
            u = split_url(source)
        except ValueError as exc:
            raise UsageError(f"source: {exc}") from None
        if u.query or u.fragment:
            raise UsageError(f"source URL {source!r} must not have a query or fragment")
        return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path or "/", "", "")), Path(dest)
    m = re.fullmatch(r"(\d+)\.(\d+)(\.\d+)?", source)
    if not m:
        raise UsageError(f"expected an XCP-ng version like 8.3 or a URL, got {source!r}")
    major, minor = m.group(1), m.group(2)
    return f"{UPDATES_URL.rstrip('/')}/{major}/{major}.{minor}/", Path(dest) / source


def compile_excludes(extra: Iterable[str] = ()) -> list[re.Pattern[str]]:
    """The upstream exclusions plus *extra* regexes."""
    out = []
    for rx in (*UPSTREAM_EXCLUDES, *extra):
        try:
            out.append(re.compile(rx))
        except re.error as exc:
            raise UsageError(f"bad --exclude regex {rx!r}: {exc}") from None
    return out


def is_excluded(rel: str, excludes: list[re.Pattern[str]]) -> bool:
    """Whether relative path *rel* (directories end in "/") is excluded."""
    probe = "/" + rel
    return any(rx.search(probe) for rx in excludes)


def _check_dest(dest: Path) -> None:
    """Fail early when *dest* cannot be created or written."""
    p = dest
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    if not p.is_dir():
        where = "" if p == dest else f" ({p} is not a directory)"
        raise XcpimgError(f"destination {dest} is not a directory{where}")
    if not os.access(p, os.W_OK | os.X_OK):
        raise XcpimgError(f"destination {dest} is not writable")


# ---------------------------------------------------------------------------------------------
# listings

class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for k, v in attrs:
                if k == "href" and v:
                    self.hrefs.append(v)


def _safe_name(name: str) -> bool:
    return (name not in ("", ".", "..") and not name.startswith(TEMP_PREFIX)
            and not any(c in name for c in "/\\") and all(ord(c) >= 0x20 and c != "\x7f" for c in name))


def child_links(dir_url: str, text: str, malformed: list[str] | None = None) -> list[tuple[str, bool]]:
    """(name, is_dir) of the direct children a listing page links to; everything else is dropped.

    Hrefs that are no URL at all (a broken or hostile server) are added to *malformed*.
    """
    parser = _Links()
    parser.feed(text)
    base = urllib.parse.urlsplit(dir_url)
    out: dict[str, bool] = {}
    for href in parser.hrefs:
        try:
            u = urllib.parse.urlsplit(join_url(dir_url, href))
        except MalformedURL as exc:
            if malformed is not None:
                malformed.append(str(exc))
            continue
        except ValueError:  # another scheme (mailto:, ftp:): not a child
            log.debug("ignoring listing entry %r of %s", href, dir_url)
            continue
        if (u.scheme, u.netloc) != (base.scheme, base.netloc) or u.query or u.fragment:
            continue
        if not u.path.startswith(base.path):
            continue
        rest = u.path[len(base.path):]
        is_dir = rest.endswith("/")
        seg = rest[:-1] if is_dir else rest
        if not seg or "/" in seg:
            continue
        name = urllib.parse.unquote(seg)
        if not _safe_name(name):
            log.debug("ignoring listing entry %r of %s", href, dir_url)
            continue
        out[name] = is_dir
    return sorted(out.items())
