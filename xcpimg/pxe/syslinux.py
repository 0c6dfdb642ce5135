"""BIOS: ``pxelinux.cfg/default`` generated from the ISO's isolinux config.

Same labels and arguments; modules (``*.c32``) at the tree root next to ``pxelinux.0``,
every other file named by the config placed under the prefix. Paths are relative to the
directory of pxelinux.0, as pxelinux reads them.
"""

from __future__ import annotations

import posixpath
import re

from .plan import PXELINUX_DIRS, Plan, PxeOptions, edit_kernel_args, log, resolve

#: directives naming a text file shown on screen (which may name an image: ``^X file``)
_DISPLAY_KEYS = {"display"} | {f"f{i}" for i in range(1, 13)}


def _module(plan: Plan, name: str, cfg_dir: str) -> str:
    """Place a syslinux module at the tree root; returns the name pxelinux loads it by."""
    base = posixpath.basename(name)
    for directory in (*PXELINUX_DIRS, cfg_dir):
        if plan.iso.is_file(f"{directory}/{base}"):
            return plan.place(f"{directory}/{base}", base)
    return plan.place(resolve(name, cfg_dir), base)


def _display_file(plan: Plan, iso_path: str, generated: dict[str, bytes], cfg_dir: str) -> str:
    """Place a DISPLAY/Fn text file (into *generated*), rewriting the ``^X`` image names in it."""
    target = plan.boot_file(iso_path)
    if target in plan.files:  # on the ISO: written rewritten, not copied
        text = plan.iso.read(plan.files.pop(target))

        def image(m: re.Match[bytes]) -> bytes:
            return b"\x18" + plan.boot_file(resolve(m.group(1).decode("latin-1"), cfg_dir)).encode()
        generated[target] = re.sub(rb"\x18([^\s\x00-\x1f]+)", image, text)
    return target


def pxelinux_config(plan: Plan, cfg_path: str, options: PxeOptions, generated: dict[str, bytes]) -> str:
    """``pxelinux.cfg/default`` for the ISO's isolinux config at *cfg_path* (the display
    files it names go to *generated*, the other files to *plan*)."""
    cfg_dir = posixpath.dirname(cfg_path)
    text = plan.iso.read(cfg_path).decode("utf-8", errors="replace")
    out = [f"# Made by xcpimg pxe-tree from {options.iso.name}:{cfg_path}; paths are relative",
           "# to the directory of pxelinux.0, boot files live in its prefix directory."]
    kernel = ""
    for line in text.splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        words = line.split()
        key = words[0].lower() if words else ""
        args = words[1:]
        if key == "label":
            kernel = ""
        elif key in ("kernel", "linux", "com32") and args:
            kernel = posixpath.basename(args[0]).lower()
            path = _module(plan, args[0], cfg_dir) if kernel.endswith(".c32") \
                else plan.boot_file(resolve(args[0], cfg_dir))
            line = f"{indent}{words[0]} {path} {' '.join(args[1:])}".rstrip()
        elif key in ("ui", "default") and args and args[0].lower().endswith(".c32"):
            line = f"{indent}{words[0]} {_module(plan, args[0], cfg_dir)} {' '.join(args[1:])}".rstrip()
        elif key == "menu" and len(args) >= 2 and args[0].lower() == "background":
            line = f"{indent}{words[0]} {args[0]} {plan.boot_file(resolve(args[1], cfg_dir))}"
        elif key in _DISPLAY_KEYS and args:
            line = f"{indent}{words[0]} {_display_file(plan, resolve(args[0], cfg_dir), generated, cfg_dir)}"
        elif key in ("font", "kbdmap") and args:
            line = f"{indent}{words[0]} {plan.boot_file(resolve(args[0], cfg_dir))}"
        elif key == "initrd" and args:
            line = f"{indent}{words[0]} " + ",".join(plan.boot_file(resolve(p, cfg_dir))
                                                   for p in args[0].split(","))
        elif key == "append" and args:
            line = f"{indent}{words[0]} {_append(plan, kernel, args, cfg_dir)}"
        elif key in ("include", "config") or (key == "menu" and args[:1] == ["include"]):
            log.warning("pxe-tree: %s: %r is not supported in a generated config; left out", cfg_path, line.strip())
            line = f"{indent}# (left out by xcpimg pxe-tree) {line.strip()}"
        out.append(line)
    return edit_kernel_args("\n".join(out) + "\n", options)


def _append(plan: Plan, kernel: str, args: list[str], cfg_dir: str) -> str:
    if kernel == "mboot.c32":  # Xen --- dom0 kernel --- modules: each segment starts with a file
        segments: list[list[str]] = [[]]
        for word in args:
            if word == "---":
                segments.append([])
            else:
                segments[-1].append(word)
        for seg in segments:
            if seg:
                seg[0] = plan.boot_file(resolve(seg[0], cfg_dir))
        return " --- ".join(" ".join(seg) for seg in segments)
    out = []
    for word in args:
        if word.startswith("initrd="):
            word = "initrd=" + ",".join(plan.boot_file(resolve(p, cfg_dir)) for p in word[7:].split(","))
        out.append(word)
    return " ".join(out)
