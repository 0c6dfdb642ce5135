"""Unattended media: an answerfile inside install.img and on the installer's command line.

The answerfile (XML, root ``<installation>``, ``<upgrade>`` or ``<restore>``) goes
into install.img as ``/answerfile.xml``, in a newc segment appended to the image
(or, where that does not survive the boot, in a rebuilt image: see APPEND_OK); the install entries get
``answerfile=file:///answerfile.xml install`` after the dom0 kernel. The real
installer refuses ``no-repo-gpgcheck``/``no-gpgcheck`` on the command line
together with an answerfile: those words leave the boot lines and become
``repo-gpgcheck="false"``/``gpgcheck="false"`` on the answerfile's root element.

The probe initrd reports what it found (``xcpimg-answerfile: <path> <root>``, see
xcpimg.stages.ANSWERFILE_PREFIX); check_unattended() turns a boot's console into
a verdict, for the tests and the pytest plugin.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..stages import ANSWERFILE_PREFIX, clean
from . import initrd, menus

log = logging.getLogger("xcpimg.answerfile")

ROOTS = ("installation", "upgrade", "restore")
#: where the answerfile goes inside install.img, and the URL the installer is given
IMAGE_PATH = "answerfile.xml"
URL = f"file:///{IMAGE_PATH}"
BOOT_WORDS = f"answerfile={URL} install"
#: boot words the installer refuses with an answerfile -> the answerfile root attribute instead
GPG_WORDS = {"no-repo-gpgcheck": "repo-gpgcheck", "no-gpgcheck": "gpgcheck"}
#: compressions whose image takes an appended segment as is, checked by booting (see
#: tests/test_answerfile.py). Not gzip: Xen itself decompresses a gzip dom0 initrd before
#: handing it over, and only its first stream survives. Any other is rebuilt (decompressed,
#: extended, recompressed as one stream).
APPEND_OK = frozenset({"bzip2", "xz", "zstd"})
MAX_SIZE = 1 << 20
#: A minimal fresh-install answerfile (for the unattended matrix configuration and the tests).
SAMPLE = b"""<?xml version="1.0"?>
<installation mode="fresh">
  <keymap>us</keymap>
  <primary-disk>sda</primary-disk>
  <root-password>xcp-ng</root-password>
  <source type="local"/>
  <admin-interface name="eth0" proto="dhcp"/>
  <timezone>Europe/Paris</timezone>
</installation>
"""


@dataclass(frozen=True)
class Answerfile:
    """A validated answerfile."""

    data: bytes
    root: str


def load(path: Path) -> Answerfile:
    """Read and validate *path*: one-line UsageError unless XML with a known root."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read answerfile {path}: {exc.strerror}") from None
    return parse(data, str(path))


def parse(data: bytes, name: str = "") -> Answerfile:
    what = f"answerfile {name}" if name else "answerfile"
    if len(data) > MAX_SIZE:
        raise UsageError(f"{what} is larger than {MAX_SIZE >> 20} MiB")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise UsageError(f"{what} is not XML: {exc}") from None
    if root.tag not in ROOTS:
        expected = ", ".join(f"<{r}>" for r in ROOTS[:-1]) + f" or <{ROOTS[-1]}>"
        raise UsageError(f"{what} has root <{root.tag}>, expected {expected}")
    return Answerfile(data, root.tag)


def with_root_attributes(answer: Answerfile, attrs: dict[str, str]) -> Answerfile:
    """*answer* with *attrs* set on its root element (the rest of the text untouched)."""
    text = answer.data.decode("utf-8")
    start = re.compile(rf"<{answer.root}(?=[\s/>])([^>]*?)(/?)>")
    m = start.search(text)
    if m is None:  # pragma: no cover - parse() found this root
        raise UsageError(f"answerfile: cannot find the <{answer.root}> start tag")
    inner = m.group(1)
    for key, value in attrs.items():
        attr = re.compile(rf"""\s{re.escape(key)}\s*=\s*("[^"]*"|'[^']*')""")
        inner = attr.sub("", inner)
        inner += f' {key}="{value}"'
    text = text[:m.start()] + f"<{answer.root}{inner}{m.group(2)}>" + text[m.end():]
    return parse(text.encode("utf-8"))


def unattended_menu(text: str) -> tuple[str, set[str]]:
    """A boot menu with the gpg-check words removed and BOOT_WORDS added to every
    installer line (an earlier answerfile= word and its ``install`` replaced)."""
    text, removed = menus.remove_kernel_words(text, set(GPG_WORDS))
    if "answerfile=" in text:
        words = {w for w in menus.kernel_words(text) if w.startswith("answerfile=")}
        text, _ = menus.remove_kernel_words(text, words | {"install"})
    return menus.add_kernel_args(text, BOOT_WORDS), removed


def make_unattended(tree: Path, answer: Answerfile, install_img: Path, scratch: Path,
                    epoch: int, also_removed: set[str] | None = None) -> tuple[Answerfile, list[str]]:
    """Edit every boot menu of *tree* and write *tree*/install.img holding the answerfile
    (*install_img*: the image to start from; *also_removed*: gpg-check words already taken
    off menus outside the tree, such as efiboot.img's). Returns the answerfile as embedded
    and the notes to print."""
    removed: set[str] = set(also_removed or ())
    for menu in menus.menu_files(tree):
        text, gone = unattended_menu(menu.read_text())
        menu.write_text(text)
        removed |= gone
    notes = []
    if removed:
        attrs = {GPG_WORDS[w]: "false" for w in sorted(removed)}
        answer = with_root_attributes(answer, attrs)
        moved = ", ".join(f'{w} -> {GPG_WORDS[w]}="false"' for w in sorted(removed))
        notes.append(f"note: the installer refuses gpg-check words on the command line with an answerfile: "
                     f"moved them into the answerfile's <{answer.root}> ({moved})")
    embed(install_img, tree / "install.img", answer, scratch, epoch)
    return answer, notes


def embed(src: Path, dest: Path, answer: Answerfile, scratch: Path, epoch: int) -> None:
    """Write *src* with /answerfile.xml added to *dest* (may be the same path)."""
    method = initrd.compression(src)
    tmp = scratch / "install.img.answerfile"
    initrd.append_segment(src, tmp, {IMAGE_PATH: answer.data}, epoch, rebuild=method not in APPEND_OK)
    tmp.replace(dest)
    log.info("added /%s to install.img (%s)", IMAGE_PATH,
             "appended segment" if method in APPEND_OK else f"rebuilt {method} image")


# ---------------------------------------------------------------- what the installer saw

def parse_report(console: str) -> tuple[str, str] | None:
    """(path or URL, root element) from an ``xcpimg-answerfile:`` line, or None. The probe
    initrd and the fixture installer report the path they read for a ``file://`` answerfile,
    the URL for any other."""
    for line in clean(console).splitlines():
        idx = line.find(ANSWERFILE_PREFIX)
        if idx >= 0:
            words = line[idx + len(ANSWERFILE_PREFIX):].split()
            if len(words) >= 2:
                return words[0], words[1]
    return None


def check_unattended(console: str, cmdline: str | None, root: str | None = None) -> list[str]:
    """Problems with an unattended boot (empty: fine): the answerfile was not seen, or gpg-check
    words are on the command line."""
    problems = []
    report = parse_report(console)
    words = (cmdline or "").split()
    if report is None:
        problems.append("the installer reported no answerfile")
    elif report[0] not in ("/" + IMAGE_PATH, URL) or (root is not None and report[1] != root):
        problems.append(f"the installer found answerfile {report[0]} <{report[1]}>, expected "
                        f"/{IMAGE_PATH}" + (f" <{root}>" if root else ""))
    if f"answerfile={URL}" not in words:
        problems.append(f"answerfile={URL} is not on the command line")
    bad = sorted(w for w in GPG_WORDS if w in words)
    if bad:
        problems.append(f"gpg-check words on the command line: {' '.join(bad)}")
    return problems


def boot_unattended(iso: Path, mode: str, logdir: Path | None = None, root: str | None = None,
                    until: str = "init") -> list[str]:
    """Boot *iso* in *mode* (``bios-cd``...) to stage *until* and check_unattended() it.

    ``init`` suits the probe initrd (it reports before its marker); an install.img whose
    installer reports the answerfile on its first screen needs the stage that waits for it.
    Raises BootError when the boot itself fails. (The matrix's unattended configuration
    boots through the plugin's boot_and_check, which applies check_unattended too.)
    """
    from ..boot import boot_in_mode
    result = boot_in_mode(iso, mode, logdir, until)
    console = Path(result.serial_log).read_text(errors="replace")
    return check_unattended(console, result.cmdline, root)
