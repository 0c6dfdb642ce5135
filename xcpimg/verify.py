"""Package signatures: every RPM is checked against the repositories' keys before use.

The keys (``gpgkey=`` of the rendered repositories, or ``--gpgkey``) are read
from ``file://`` or ``http(s)://`` URLs or paths and imported into a private rpm
database (``rpmkeys --root DIR``), so the host's keyring counts for nothing.
``rpmkeys --checksig`` then runs with ``_pkgverify_level all``: a package must
carry a signature, made by one of those keys, over the bytes it holds.
Unsigned, foreign-key and tampered packages are refused, one line naming the
package.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import BuildError, ToolError, UsageError
from .run import run

log = logging.getLogger("xcpimg.verify")

#: (connect, read) timeouts for fetching a key over HTTP, in seconds
KEY_TIMEOUT = (10, 30)
#: a key file larger than this is refused (real ones are a few KiB)
MAX_KEY_SIZE = 1 << 20
#: where the private rpm database lives inside the keyring directory
DBPATH = "/rpmdb"

_BLOCK_RE = re.compile(r"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----", re.S)
_NOKEY_RE = re.compile(r"key ID ([0-9a-fA-F]+): NOKEY")
_FILE_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*\.rpm")


def key_urls(text: str) -> list[str]:
    """The URLs of every ``gpgkey=`` line of a .repo file (whitespace- or comma-separated)."""
    urls: list[str] = []
    for value in re.findall(r"(?m)^\s*gpgkey\s*=(.*)$", text):
        urls += [u for u in re.split(r"[\s,]+", value) if u]
    return urls


def read_key(url: str) -> bytes:
    """The bytes of the key at *url* (``file://``, ``http(s)://`` or a path); UsageError if unreadable."""
    parsed = urlparse(url)
    try:
        if parsed.scheme in ("http", "https"):
            return _fetch(url)
        if parsed.scheme not in ("", "file"):
            raise UsageError(f"cannot read gpgkey {url}: unsupported URL scheme {parsed.scheme!r}")
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
        with path.open("rb") as f:
            data = f.read(MAX_KEY_SIZE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read gpgkey {url}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_SIZE:
        raise UsageError(f"gpgkey {url} is larger than {MAX_KEY_SIZE >> 10} KiB: not a key file")
    return data


def _fetch(url: str) -> bytes:
    import requests
    try:
        with requests.get(url, timeout=KEY_TIMEOUT, stream=True) as resp:
            if resp.status_code != 200:
                raise UsageError(f"cannot read gpgkey {url}: HTTP {resp.status_code}")
            data = b""
            for chunk in resp.iter_content(65536):
                data += chunk
                if len(data) > MAX_KEY_SIZE:
                    raise UsageError(f"gpgkey {url} is larger than {MAX_KEY_SIZE >> 10} KiB: not a key file")
            return data
    except requests.RequestException as exc:
        raise UsageError(f"cannot read gpgkey {url}: {type(exc).__name__}") from None


def key_blocks(data: bytes, url: str) -> list[str]:
    """The ASCII-armoured public key blocks of *data* (a file may hold several)."""
    blocks = _BLOCK_RE.findall(data.decode("ascii", "replace"))
    if not blocks:
        raise UsageError(f"gpgkey {url} holds no ASCII-armoured OpenPGP public key")
    return blocks


class Keyring:
    """A private rpm keyring in *workdir* holding the keys at *urls*."""

    def __init__(self, urls: Sequence[str], workdir: Path) -> None:
        self.urls = list(dict.fromkeys(urls))
        if not self.urls:
            raise BuildError("no gpgkey is configured to check package signatures "
                             "(give --gpgkey, or --nogpgcheck for an unsigned repository)")
        self.root = workdir.resolve()
        (self.root / "keys").mkdir(parents=True, exist_ok=True)
        n = 0
        for url in self.urls:
            for block in key_blocks(read_key(url), url):
                n += 1
                key_file = self.root / "keys" / f"key{n}.asc"
                key_file.write_text(block + "\n")
                try:
                    self._rpmkeys(["--import", str(key_file)], f"import gpgkey {url}")
                except ToolError as exc:
                    raise UsageError(f"gpgkey {url} is not a usable OpenPGP key: {exc}") from None
        log.debug("keyring %s: %d key(s) from %s", self.root, n, " ".join(self.urls))

    def argv(self, args: Sequence[str]) -> list[str]:
        """rpmkeys' argv on the private database, signatures required."""
        return ["rpmkeys", f"--root={self.root}", f"--dbpath={DBPATH}",
                "--define=_pkgverify_level all", *args]

    def _rpmkeys(self, args: Sequence[str], what: str, check: bool = True) -> tuple[int, str]:
        # HOME: no ~/.rpmmacros of the caller changes what is checked
        proc = run(self.argv(args), env={"HOME": str(self.root)}, what=what, check=check)
        return proc.returncode, proc.stdout.decode(errors="replace")

    def check(self, rpms: Sequence[Path]) -> None:
        """Refuse (BuildError naming the package) any of *rpms* that is not validly signed by a key."""
        rpms = sorted(rpms)
        if not rpms:
            return
        for rpm in rpms:  # names come from repodata: nothing that could garble rpmkeys' report
            if not _FILE_RE.fullmatch(rpm.name):
                raise BuildError(f"package file {rpm.name!r} has an unexpected name: refusing it")
        paths = [os.fspath(p.resolve()) for p in rpms]
        rc, out = self._rpmkeys(["--checksig", "--verbose", "--", *paths], "check package signatures",
                                check=False)
        verdicts = self._verdicts(paths, out)
        problems = [(Path(p).name, why) for p, why in zip(paths, verdicts, strict=True) if why]
        if problems:
            name, why = problems[0]
            more = f" (and {len(problems) - 1} more package(s))" if len(problems) > 1 else ""
            raise BuildError(f"package {name} {why}{more}")
        if rc != 0:
            raise BuildError(f"rpmkeys --checksig failed (exit {rc}) on {len(paths)} package(s) in "
                             f"{rpms[0].parent} without naming one")
        log.info("signatures of %d package(s) verified", len(rpms))

    def _verdicts(self, paths: Sequence[str], out: str) -> list[str]:
        """For each path, why it is refused ('' if its signatures and digests are good)."""
        blocks: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in out.splitlines():
            if line.endswith(":") and line[:-1] in paths:
                current = blocks.setdefault(line[:-1], [])
            elif current is not None and line.startswith((" ", "\t")):
                current.append(line.strip())
        verdicts = []
        for path in paths:
            lines = blocks.get(path)
            if not lines:
                verdicts.append("is not a readable RPM package (truncated or damaged)")
            elif bad := [ln for ln in lines if ln.endswith(": BAD") or ": BAD " in ln]:
                verdicts.append(f"does not match its signature (tampered or damaged): {bad[0]}")
            elif nokey := [m.group(1) for ln in lines if (m := _NOKEY_RE.search(ln))]:
                verdicts.append(f"is signed by key ID {nokey[0]}, which is not among the repository "
                                f"keys ({' '.join(self.urls)}): give its key with --gpgkey")
            elif not any("ignature" in ln and ln.endswith(": OK") for ln in lines):
                verdicts.append("is not signed (give --nogpgcheck to accept unsigned packages)")
            elif not all(ln.endswith(": OK") or ln.endswith(": NOTFOUND") for ln in lines):
                verdicts.append(f"fails the signature check: {lines[0]}")
            else:
                verdicts.append("")
        return verdicts
