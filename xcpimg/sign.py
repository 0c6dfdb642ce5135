"""Sample sign script: sign an ISO tree's repodata with gpg (test keys only).

Also the signing hook of `xcpimg iso`: `run_sign_script` runs the user's
script on the staging tree, then `check_repo_signature` accepts the result
only if `repodata/repomd.xml.asc` is a detached OpenPGP signature over
`repomd.xml` that gpg verifies with a key shipped at the ISO root as
`RPM-GPG-KEY-*`, with a SHA256, SHA384 or SHA512 digest (hash ids 8, 9, 10) as
gpg itself reports it (its VALIDSIG status line), not as a parse of the file says.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BuildError, ToolError, UsageError
from .fsutil import atomic_output, owner_token, private_tempdir
from .run import run, tool_env, which

log = logging.getLogger("xcpimg.sign")

#: OpenPGP hash algorithm ids (RFC 4880 9.4, RFC 9580 9.5).
HASH_NAMES = {1: "MD5", 2: "SHA1", 3: "RIPEMD160", 8: "SHA256", 9: "SHA384", 10: "SHA512",
              11: "SHA224", 12: "SHA3-256", 14: "SHA3-512"}
#: Digests accepted on repomd.xml.asc: SHA256, SHA384, SHA512 (SHA224 and weaker are refused).
ACCEPTED_HASHES = frozenset({8, 9, 10})
#: Digests the sample signer offers.
SIGN_DIGESTS = ("SHA256", "SHA384", "SHA512")

_PACKET_NAMES = {1: "public-key encrypted session key", 3: "symmetric-key encrypted session key",
                 4: "one-pass signature", 5: "secret key", 6: "public key", 7: "secret subkey",
                 8: "compressed data", 9: "encrypted data", 11: "literal data", 13: "user id",
                 14: "public subkey", 17: "user attribute", 18: "encrypted data"}
_MARKER_PACKET = 10
_SIGNATURE_PACKET = 2
_DOCUMENT_SIG_TYPES = (0x00, 0x01)   # signature of a binary document / canonical text document
_MAX_SOCKET = 100
_NICK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class SignatureInfo:
    """What check_repo_signature found in repomd.xml.asc."""

    hash_ids: list[int]                                   # as gpg verified them (VALIDSIG)
    key_ids: list[str] = field(default_factory=list)     # issuer key ids from the packets
    fingerprint: str = ""                                 # of the key gpg verified with

    @property
    def hash_names(self) -> list[str]:
        return [HASH_NAMES.get(h, f"hash algorithm {h}") for h in self.hash_ids]


# -- OpenPGP parsing -----------------------------------------------------------

def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(text: str, what: str = "signature") -> bytes:
    """The binary packets of the first ASCII-armoured PGP SIGNATURE block of *text*."""
    lines = [line.strip() for line in text.splitlines()]
    begin = next((i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP ")), None)
    if begin is None:
        raise BuildError(f"{what} is not an ASCII-armoured OpenPGP signature (no BEGIN PGP line)")
    kind = lines[begin][len("-----BEGIN "):].rstrip("-")
    if kind != "PGP SIGNATURE":
        raise BuildError(f"{what} is a {kind} block, not a detached signature")
    end = next((i for i in range(begin + 1, len(lines)) if lines[i] == "-----END PGP SIGNATURE-----"), None)
    if end is None:
        raise BuildError(f"{what}: armour has no END PGP SIGNATURE line")
    body = lines[begin + 1:end]
    if "" in body:                      # armour headers (Version:, Comment:...) end at a blank line
        body = body[body.index("") + 1:]
    crc = None
    if body and body[-1].startswith("=") and len(body[-1]) == 5:
        crc = body.pop()[1:]
    try:
        data = base64.b64decode("".join(body), validate=True)
        want = int.from_bytes(base64.b64decode(crc, validate=True), "big") if crc else None
    except (binascii.Error, ValueError):
        raise BuildError(f"{what}: armour is not valid base64") from None
    if want is not None and _crc24(data) != want:
        raise BuildError(f"{what}: armour checksum mismatch (damaged signature)")
    return data


def packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, body) of each OpenPGP packet, old and new header formats, partial lengths included."""
    i, n = 0, len(data)

    def take(count: int) -> bytes:
        nonlocal i
        if count < 0 or i + count > n:
            raise BuildError("OpenPGP data is truncated")
        chunk = data[i:i + count]
        i += count
        return chunk

    while i < n:
        ctb = take(1)[0]
        if not ctb & 0x80:
            raise BuildError("not OpenPGP data (bad packet header)")
        if ctb & 0x40:                                   # new format
            tag, body = ctb & 0x3F, bytearray()
            while True:
                first = take(1)[0]
                if first < 192:
                    body += take(first)
                elif first < 224:
                    body += take(((first - 192) << 8) + take(1)[0] + 192)
                elif first == 255:
                    body += take(int.from_bytes(take(4), "big"))
                else:                                    # partial body length: more follows
                    body += take(1 << (first & 0x1F))
                    continue
                break
            yield tag, bytes(body)
        else:                                            # old format
            tag, ltype = (ctb >> 2) & 0x0F, ctb & 0x03
            length = n - i if ltype == 3 else int.from_bytes(take(1 << ltype), "big")
            yield tag, take(length)


def _subpacket_issuers(area: bytes) -> list[str]:
    """Issuer key ids / fingerprints named in a signature subpacket area."""
    out, i = [], 0
    while i < len(area):
        first = area[i]
        if first < 192:
            length, i = first, i + 1
        elif first < 255:
            length, i = ((first - 192) << 8) + area[i + 1] + 192, i + 2
        else:
            length, i = int.from_bytes(area[i + 1:i + 5], "big"), i + 5
        sub = area[i:i + length]
        i += length
        if sub and sub[0] & 0x7F == 16:          # issuer key id
            out.append(sub[1:].hex().upper())
        elif sub and sub[0] & 0x7F == 33:        # issuer fingerprint (version byte first)
            out.append(sub[2:].hex().upper())
    return out


def parse_signature(body: bytes) -> tuple[int, int, list[str]]:
    """(signature type, hash id, issuers) of a signature packet, versions 3 to 6."""
    if not body:
        raise BuildError("empty signature packet")
    version = body[0]
    try:
        if version in (2, 3):
            if body[1] != 5:
                raise BuildError("malformed v3 signature packet")
            return body[2], body[16], [body[7:15].hex().upper()]
        if version in (4, 5, 6):
            sig_type, hash_id = body[1], body[3]
            width = 4 if version == 6 else 2
            hashed_len = int.from_bytes(body[4:4 + width], "big")
            hashed = body[4 + width:4 + width + hashed_len]
            rest = body[4 + width + hashed_len:]
            unhashed = rest[width:width + int.from_bytes(rest[:width], "big")]
            return sig_type, hash_id, _subpacket_issuers(hashed) + _subpacket_issuers(unhashed)
    except IndexError:
        raise BuildError("truncated signature packet") from None
    raise BuildError(f"unsupported OpenPGP signature version {version}")


def signature_info(asc: Path) -> SignatureInfo:
    """Parse *asc* (armoured, or binary packets): only detached document signatures, please.

    This is a shape check with readable errors; the digest is judged from what gpg
    verified (check_repo_signature), never from these parsed hash ids.
    """
    raw = asc.read_bytes()
    name = asc.name
    if raw[:1] and raw[0] & 0x80:
        data = raw
    else:
        data = dearmor(raw.decode("ascii", "replace"), name)
    info = SignatureInfo(hash_ids=[])
    try:
        for tag, body in packets(data):
            if tag == _MARKER_PACKET:
                continue
            if tag != _SIGNATURE_PACKET:
                kind = _PACKET_NAMES.get(tag, f"type {tag}")
                raise BuildError(f"{name} holds a {kind} packet: it is not a detached signature")
            sig_type, hash_id, issuers = parse_signature(body)
            if sig_type not in _DOCUMENT_SIG_TYPES:
                raise BuildError(f"{name} holds a signature of type 0x{sig_type:02x}, "
                                 f"not a document signature")
            info.hash_ids.append(hash_id)
            info.key_ids += issuers
    except BuildError as exc:
        if str(exc).startswith(name):
            raise
        raise BuildError(f"{name}: {exc}") from None
    if not info.hash_ids:
        raise BuildError(f"{name} holds no signature packet")
    return info


# -- gpg -------------------------------------------------------------------------

def _gpg(home: Path):  # type: ignore[no-untyped-def]
    import gnupg  # imported lazily: only the signing paths need it

    logging.getLogger("gnupg").setLevel(logging.WARNING)   # its debug output drowns -v

    try:
        return gnupg.GPG(gpgbinary=which("gpg"), gnupghome=str(home), env=tool_env())
    except (OSError, ValueError) as exc:
        raise ToolError(f"cannot use gpg with GNUPGHOME {home}: {exc}", ["gpg"]) from None


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines()
             if line.strip() and not line.startswith("[GNUPG:]")]
    last = lines[-1].strip() if lines else "no message"
    if "No agent running" in last:
        last += " (is the GNUPGHOME path too long for gpg-agent's socket?)"
    return last


def kill_agent(home: Path) -> None:
    """Stop the gpg-agent (and any other daemon) gpg may have started for *home*."""
    with contextlib.suppress(ToolError):
        run(["gpgconf", "--homedir", home, "--kill", "all"], what="stop gpg-agent", timeout=30)


@contextlib.contextmanager
def private_gnupghome(prefix: str = "xcpimg-gnupg-") -> Iterator[Path]:
    """A throwaway GNUPGHOME (0700), its agent stopped and the directory removed on exit.

    gpg-agent puts its sockets in the home directory when /run/user/UID does not
    exist; a socket path must stay under ~107 bytes, so a long $TMPDIR gives way to /tmp.
    """
    parent = None
    if len(os.path.join(tempfile.gettempdir(), prefix + owner_token(), "S.gpg-agent.browser")) > _MAX_SOCKET:
        parent = Path("/tmp")
    with private_tempdir(prefix, parent) as home:
        os.chmod(home, 0o700)
        try:
            yield home
        finally:
            kill_agent(home)


def check_repo_signature(iso_dir: Path) -> SignatureInfo:
    """Accept `repodata/repomd.xml.asc` only if it is a SHA-2 detached signature over
    `repomd.xml` that gpg verifies with the `RPM-GPG-KEY-*` keys at the ISO root."""
    iso_dir = Path(iso_dir)
    repomd = iso_dir / "repodata" / "repomd.xml"
    asc = repomd.with_name("repomd.xml.asc")
    if not repomd.is_file():
        raise BuildError(f"{iso_dir} has no repodata/repomd.xml to check a signature against")
    if not asc.is_file():
        raise BuildError("the sign script left no signature: repodata/repomd.xml.asc is missing")
    info = signature_info(asc)
    keys = sorted(iso_dir.glob("RPM-GPG-KEY-*"))
    if not keys:
        raise BuildError("repodata/repomd.xml is signed but no RPM-GPG-KEY-* file at the ISO root "
                         "holds the key to verify it")
    with private_gnupghome("xcpimg-verify-") as home:
        for key in keys:
            status, err, _rc = _gpg_status(home, "--import", key)
            if not any(f[0] in ("IMPORT_OK", "IMPORTED") for f in status):
                raise BuildError(f"{key.name} holds no OpenPGP public key: {_last_line(err)}")
        status, err, rc = _gpg_status(home, "--verify", asc, repomd)
    valid = [f for f in status if f[0] == "VALIDSIG" and len(f) >= 9]
    for fields in status:
        if fields[0] == "ERRSIG" and len(fields) >= 4 and _int(fields[3]) not in ACCEPTED_HASHES:
            raise BuildError(_weak(_int(fields[3])))
    bad = [f for f in status if f[0] in ("BADSIG", "ERRSIG", "NO_PUBKEY", "EXPSIG", "EXPKEYSIG", "REVKEYSIG")]
    if bad or not valid or rc != 0:
        why = _last_line(err)
        if any(f[0] == "BADSIG" for f in bad):
            why = "signature bad"
        elif any(f[0] == "NO_PUBKEY" for f in bad):
            why = (f"signed by key {', '.join(info.key_ids) or 'unknown key'}, which is not among "
                   f"{', '.join(k.name for k in keys)}")
        raise BuildError(f"repodata/repomd.xml.asc does not verify: {why}")
    info.hash_ids = [_int(f[8]) for f in valid]
    for hash_id in info.hash_ids:
        if hash_id not in ACCEPTED_HASHES:
            raise BuildError(_weak(hash_id))
    info.fingerprint = valid[0][10] if len(valid[0]) > 10 else valid[0][1]
    log.info("repodata signature verified: %s, key %s", "/".join(info.hash_names), info.fingerprint)
    return info


def _int(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _weak(hash_id: int) -> str:
    algo = HASH_NAMES.get(hash_id, f"hash algorithm {hash_id}")
    return (f"repodata/repomd.xml.asc uses digest {algo} (id {hash_id}); "
            f"SHA256 or stronger (SHA256, SHA384 or SHA512) is required")


def _gpg_status(home: Path, *args: str | Path) -> tuple[list[list[str]], str, int]:
    """Run gpg on the keyring *home*; its ``[GNUPG:]`` status lines (split), stderr and exit code."""
    proc = run(["gpg", "--homedir", home, "--batch", "--no-tty", "--status-fd", "1", *args], check=False,
               what="gpg")
    status = [line.split()[1:] for line in proc.stdout.decode(errors="replace").splitlines()
              if line.startswith("[GNUPG:] ") and len(line.split()) > 1]
    return status, proc.stderr.decode(errors="replace"), proc.returncode


def run_sign_script(script: Path | str, iso_dir: Path) -> SignatureInfo:
    """Run `script ISO_DIR` (the original's --sign-script semantics), then check its signature.

    A *script* without a slash is looked up on PATH, like the shell would.
    """
    script_s = os.fspath(script)
    if "/" in script_s:
        path = Path(script_s)
        if not path.is_file():
            raise UsageError(f"sign script {script_s} does not exist")
        if not os.access(path, os.X_OK):
            raise UsageError(f"sign script {script_s} is not executable")
        script_s = str(path.resolve())
    proc = run([script_s, Path(iso_dir).resolve()], check=False, what="sign script")
    if proc.stdout:
        log.debug("sign script output:\n%s", proc.stdout.decode(errors="replace").rstrip())
    if proc.returncode != 0:
        last = _last_line(proc.stderr.decode(errors="replace") if proc.stderr else "")
        status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exit {proc.returncode}")
        raise BuildError(f"sign script {script} failed ({status}): {last}")
    return check_repo_signature(iso_dir)


# -- sample signer -----------------------------------------------------------------

def _write_atomic(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace *target* with *data* atomically (the signer's own files in the ISO tree)."""
    with atomic_output(target, force=True, mode=mode) as tmp:
        tmp.write_bytes(data)


def set_treeinfo_key(treeinfo: Path, key_file: str) -> None:
    """Make `.treeinfo` name *key_file* as key1: replace a `key1`/`#key1` line, else add it to [keys]."""
    text = treeinfo.read_text()
    lines = text.splitlines()
    new = f"key1 = {key_file}"
    for i, line in enumerate(lines):
        if re.match(r"^\s*[#;]?\s*key1\s*=", line):
            lines[i] = new
            break
    else:
        section = next((i for i, line in enumerate(lines) if line.strip().lower() == "[keys]"), None)
        if section is None:
            if lines and lines[-1].strip():
                lines.append("")
            lines += ["[keys]", new]
        else:
            lines.insert(section + 1, new)
    _write_atomic(treeinfo, ("\n".join(lines) + "\n").encode(), treeinfo.stat().st_mode & 0o777)


def _generate_key(gpg, key_id: str) -> str:  # type: ignore[no-untyped-def]
    """A passphrase-less RSA signing key for *key_id*; its fingerprint."""
    params = {"key_type": "RSA", "key_length": 3072, "key_usage": "sign", "expire_date": 0,
              "no_protection": True}
    if "@" in key_id:
        params.update(name_real="xcpimg sample signing key", name_email=key_id)
    else:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", key_id).strip("-") or "key"
        params.update(name_real=key_id, name_email=f"{slug}@xcpimg.invalid")
    result = gpg.gen_key(gpg.gen_key_input(**params))
    if not result.fingerprint:
        raise BuildError(f"cannot generate a test key: {_last_line(result.stderr)}")
    return str(result.fingerprint)


def _secret_key(gpg, key_id: str, home: Path) -> str:  # type: ignore[no-untyped-def]
    keys = gpg.list_keys(secret=True, keys=[key_id])
    if not keys:
        raise BuildError(f"no secret key matching {key_id!r} in GNUPGHOME {home}")
    return str(keys[0]["fingerprint"])


def sample_sign(iso_dir: Path, *, key_id: str = "test@example.com", nick: str = "xcpimg-test",
                gnupghome: Path | None = None, digest: str = "SHA512") -> None:
    """Sign `repodata/repomd.xml` (detached, armoured), export `RPM-GPG-KEY-<nick>`, set key1.

    The key comes from *gnupghome*, else `$GNUPGHOME`, else a throwaway key is
    generated in a private GNUPGHOME that is removed afterwards.
    """
    iso_dir = Path(iso_dir)
    repomd = iso_dir / "repodata" / "repomd.xml"
    if not repomd.is_file():
        raise UsageError(f"{iso_dir} does not contain a yum repository (no repodata/repomd.xml)")
    if not _NICK_RE.match(nick):
        raise UsageError(f"key nickname {nick!r} must be letters, digits, '.', '_', '+' or '-'")
    digest = digest.upper()
    if digest not in SIGN_DIGESTS:
        raise UsageError(f"digest {digest} is not one of {', '.join(SIGN_DIGESTS)}")
    home = gnupghome or (Path(os.environ["GNUPGHOME"]) if os.environ.get("GNUPGHOME") else None)
    if home is not None:
        if not home.is_dir():
            raise UsageError(f"GNUPGHOME {home} is not a directory")
        gpg = _gpg(home)
        _sign_and_export(gpg, _secret_key(gpg, key_id, home), iso_dir, nick, digest)
    else:
        with private_gnupghome() as tmp_home:
            gpg = _gpg(tmp_home)
            _sign_and_export(gpg, _generate_key(gpg, key_id), iso_dir, nick, digest)
    treeinfo = iso_dir / ".treeinfo"
    if treeinfo.is_file():
        set_treeinfo_key(treeinfo, f"RPM-GPG-KEY-{nick}")
    else:
        log.warning("%s has no .treeinfo: key1 not set", iso_dir)


def _sign_and_export(gpg, fingerprint: str, iso_dir: Path, nick: str,  # type: ignore[no-untyped-def]
                     digest: str) -> None:
    repomd = iso_dir / "repodata" / "repomd.xml"
    asc = repomd.with_name("repomd.xml.asc")
    with atomic_output(asc, force=True) as tmp:
        result = gpg.sign_file(str(repomd), keyid=fingerprint, detach=True, clearsign=False,
                               output=str(tmp), extra_args=["--digest-algo", digest])
        if result.returncode != 0 or not result.fingerprint or os.path.getsize(tmp) == 0:
            raise BuildError(f"gpg could not sign {repomd}: {_last_line(result.stderr)}")
    public = gpg.export_keys(fingerprint, armor=True, minimal=True)
    if "BEGIN PGP PUBLIC KEY BLOCK" not in public:
        raise BuildError(f"gpg could not export the public key {fingerprint}")
    _write_atomic(iso_dir / f"RPM-GPG-KEY-{nick}", public.encode("ascii"))
    log.info("signed %s with key %s (%s); public key in RPM-GPG-KEY-%s",
             repomd.relative_to(iso_dir), fingerprint, digest, nick)


# -- command line -----------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("iso_dir", metavar="ISO_DIR", type=Path,
                        help="ISO staging tree holding repodata/repomd.xml")
    parser.add_argument("--key-id", default="test@example.com",
                        help="signing key (user id or fingerprint; default %(default)s)")
    parser.add_argument("--nick", default="xcpimg-test",
                        help="the public key goes to RPM-GPG-KEY-NICK (default %(default)s)")
    parser.add_argument("--gnupghome", type=Path, default=None,
                        help="keyring holding the key (default: $GNUPGHOME, else a throwaway test key)")
    parser.add_argument("--digest", default="SHA512", choices=SIGN_DIGESTS, type=str.upper,
                        help="digest algorithm (default %(default)s)")


def command(args: argparse.Namespace) -> int:
    if not args.iso_dir.is_dir():
        raise UsageError(f"{args.iso_dir} is not a directory")
    sample_sign(args.iso_dir, key_id=args.key_id, nick=args.nick, gnupghome=args.gnupghome,
                digest=args.digest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for a standalone `xcpimg-sample-sign ISO_DIR` (usable as --sign-script)."""
    import sys

    from .cli import main as cli_main
    return cli_main(["sample-sign", *(sys.argv[1:] if argv is None else argv)])
