"""Boot menus: parse isolinux and GRUB entries, edit the dom0 kernel's arguments.

An installer entry is one whose dom0 kernel (a path ending in ``/vmlinuz``)
is started by Xen: isolinux ``APPEND xen.gz ARGS --- /boot/vmlinuz ARGS ---
/install.img`` through mboot.c32, GRUB ``multiboot2``/``module2`` lines. The
edits apply to the first ``/vmlinuz`` word of each line, as the ISO build does.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ISOLINUX_CFG = "boot/isolinux/isolinux.cfg"
_VMLINUZ = re.compile(r"(?m)^(.*?/vmlinuz)(?=\s|$)(.*)$")


@dataclass
class Image:
    """A file a boot entry loads, with its arguments."""

    path: str
    args: list[str] = field(default_factory=list)


@dataclass
class Entry:
    """One boot menu entry."""

    name: str
    loader: str = ""
    hypervisor: Image | None = None
    kernel: Image | None = None
    modules: list[Image] = field(default_factory=list)

    @property
    def installer(self) -> bool:
        return self.kernel is not None and self.kernel.path.endswith("/vmlinuz")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def menu_files(tree: Path) -> list[Path]:
    """isolinux.cfg and every ``*/*/grub*.cfg`` (EFI/xenserver/grub.cfg, grub-usb.cfg...) of a tree."""
    return [p for p in (tree / ISOLINUX_CFG, *sorted(tree.glob("*/*/grub*.cfg"))) if p.is_file()]


def is_menu_path(path: str) -> bool:
    """Whether a path inside an ISO is one of the boot menus menu_files() finds."""
    parts = path.strip("/").split("/")
    return path.strip("/") == ISOLINUX_CFG or (
        len(parts) == 3 and parts[2].startswith("grub") and parts[2].endswith(".cfg"))


def _image(words: list[str]) -> Image | None:
    return Image(words[0], words[1:]) if words else None


def parse_isolinux(text: str) -> list[Entry]:
    entries: list[Entry] = []
    for raw in text.splitlines():
        key, _, rest = raw.strip().partition(" ")
        key, rest = key.upper(), rest.strip()
        if key == "LABEL":
            entries.append(Entry(rest))
        elif not entries:
            continue
        elif key in ("KERNEL", "LINUX", "COM32"):
            entries[-1].loader = rest
        elif key == "APPEND":
            entry = entries[-1]
            if entry.loader.endswith("mboot.c32"):
                parts = [p.split() for p in re.split(r"\s---(?:\s|$)", " " + rest + " ")]
                entry.hypervisor = _image(parts[0])
                entry.kernel = _image(parts[1]) if len(parts) > 1 else None
                entry.modules = [m for m in (_image(p) for p in parts[2:]) if m]
            else:
                entry.kernel = Image(entry.loader, rest.split())
    for entry in entries:
        if entry.kernel is None and entry.loader and not entry.loader.endswith(".c32"):
            entry.kernel = Image(entry.loader)
    return entries


def parse_grub(text: str) -> list[Entry]:
    entries: list[Entry] = []
    current: Entry | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("menuentry"):
            try:
                words = shlex.split(line.rstrip("{").strip())
            except ValueError:
                words = line.split()
            current = Entry(words[1] if len(words) > 1 else "")
            entries.append(current)
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        words = line.split()
        if not words:
            continue
        cmd, rest = words[0], words[1:]
        if cmd in ("multiboot2", "multiboot"):
            current.loader, current.hypervisor = cmd, _image(rest)
        elif cmd in ("module2", "module") and rest:
            if current.kernel is None:
                current.kernel = _image(rest)
            else:
                current.modules.append(Image(rest[0], rest[1:]))
        elif cmd in ("linux", "linuxefi"):
            current.loader, current.kernel = cmd, _image(rest)
        elif cmd in ("initrd", "initrdefi"):
            current.modules += [Image(p) for p in rest]
        elif cmd == "chainloader":
            current.loader = " ".join(words)
    return entries


def parse_menu(path: str, text: str) -> list[Entry]:
    """The entries of the menu *path* (isolinux.cfg or a GRUB configuration)."""
    return parse_isolinux(text) if path.endswith("isolinux.cfg") else parse_grub(text)


def add_kernel_args(text: str, args: str) -> str:
    """*text* with *args* inserted right after the first ``/vmlinuz`` of every line."""
    if not args.strip():
        return text
    return _VMLINUZ.sub(lambda m: f"{m.group(1)} {args.strip()}{m.group(2)}", text)


def remove_kernel_words(text: str, words: set[str]) -> tuple[str, set[str]]:
    """*text* without *words* after the first ``/vmlinuz`` of each line; the words removed."""
    removed: set[str] = set()

    def edit(m: re.Match[str]) -> str:
        rest = m.group(2)
        tail = ""
        if " ---" in rest:  # isolinux: stop at the next module
            rest, sep, after = rest.partition(" ---")
            tail = sep + after
        kept = []
        for word in rest.split():
            if word in words:
                removed.add(word)
            else:
                kept.append(word)
        return m.group(1) + "".join(" " + w for w in kept) + tail
    return _VMLINUZ.sub(edit, text), removed


def kernel_words(text: str) -> set[str]:
    """Every word following the first ``/vmlinuz`` of a line, up to the next isolinux module."""
    out: set[str] = set()
    for m in _VMLINUZ.finditer(text):
        out.update(m.group(2).partition(" ---")[0].split())
    return out
