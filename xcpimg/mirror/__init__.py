"""Mirror XCP-ng yum repositories over HTTP(S) (mirror-repos.sh).

``xcpimg mirror 8.3 DEST`` mirrors ``https://updates.xcp-ng.org/8/8.3`` into
``DEST/8.3``; ``xcpimg mirror URL DEST`` mirrors any browsable tree into DEST.

How it works: the directory listings are crawled (only links to direct
children are followed, so ``..``, absolute paths, other hosts and query strings
are never taken), the upstream exclusions and ``--exclude`` filter the tree,
then every file is synced by a pool of threads, each with its own HTTP session.
Inside a yum repository (a directory holding ``repodata/repomd.xml``) packages
are verified against the sizes and checksums of ``primary.xml``; other files are
compared by size and Last-Modified time. A download goes to a hidden temporary
name (``.xcpimg-*``) and is renamed into place once whole and verified. New
repodata is staged beside the repo and swapped in only after all the repo's
packages are in place; files gone upstream are deleted last.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .listing import (
    MAX_DEPTH,
    TEMP_PREFIX,
    UPDATES_URL,
    UPSTREAM_EXCLUDES,
    child_links,
    compile_excludes,
    is_excluded,
    resolve_source,
)
from .repodata import Expect, decimal, parse_primary, parse_repomd
from .sync import MirrorError, MirrorStats, _locked, mirror
from .transfer import join_url, split_url

# ---------------------------------------------------------------------------------------------
# CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="an XCP-ng version (8.3: mirrors updates.xcp-ng.org/8/8.3 into DEST/8.3) "
                                  "or the URL of a browsable tree (mirrored into DEST)")
    p.add_argument("dest", type=Path, help="destination directory")
    p.add_argument("-j", "--jobs", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="also skip paths matching REGEX (matched against /RELATIVE/PATH; repeatable)")
    p.add_argument("--no-delete", action="store_true", help="keep local files that are gone upstream")
    p.add_argument("--dry-run", action="store_true", help="list what would change, change nothing")
    p.add_argument("-4", "--ipv4", action="store_true", help="connect over IPv4 only")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every local package against the repodata checksums; fetch corrupt ones "
                        "again (with --dry-run: list them)")


def command(args: argparse.Namespace) -> int:
    try:
        stats = mirror(args.source, args.dest, jobs=args.jobs, excludes=args.exclude,
                       delete=not args.no_delete, dry_run=args.dry_run, ipv4=args.ipv4, verify=args.verify)
    except MirrorError as exc:  # the report on stdout, the error as one line on stderr
        for line in exc.stats.failed:
            print(f"failed {line}")
        print(f"mirror: {exc.stats.summary()} (nothing deleted)")
        raise
    if args.dry_run:
        for line in stats.changes:
            print(line)
    for rel in stats.corrupt:
        print(f"corrupt {rel}")
    print(f"mirror: {stats.summary()}")
    return 0


__all__ = ["MirrorStats", "MirrorError", "Expect", "mirror", "resolve_source", "compile_excludes",
           "is_excluded", "child_links", "parse_repomd", "parse_primary", "UPSTREAM_EXCLUDES", "UPDATES_URL",
           "TEMP_PREFIX", "MAX_DEPTH", "decimal", "split_url", "join_url", "_locked"]
