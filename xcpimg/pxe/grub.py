"""UEFI: ``EFI/xenserver/grub.cfg`` generated from the ISO's grub.cfg.

File paths of the loader commands go under ``/<prefix>``; ``search`` and ``set root=``
lines (CD tricks) are dropped: GRUB loaded over the network has the TFTP server as its
root already.
"""

from __future__ import annotations

import re

from .plan import Plan, PxeOptions, edit_kernel_args, log, resolve

_GRUB_LOADERS = {"multiboot2", "multiboot", "module2", "module", "linux", "linuxefi", "linux16",
                 "initrd", "initrdefi", "initrd16", "chainloader"}


def grub_config(plan: Plan, cfg_path: str, options: PxeOptions) -> str:
    """The ISO's grub.cfg for a TFTP root: file paths under ``/<prefix>``, CD root searches
    and ``set root=`` dropped, the requested words on each Xen entry's dom0 kernel."""
    text = plan.iso.read(cfg_path).decode("utf-8", errors="replace")
    out = [f"# Made by xcpimg pxe-tree from {options.iso.name}:{cfg_path} for a network boot:",
           "# GRUB's root is the TFTP server it was loaded from; boot files are under the prefix."]
    for line in text.splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        words = line.split()
        cmd = words[0] if words else ""
        if cmd == "search" or re.match(r"set\s+root=", line.strip()):
            out.append(f"{indent}# (dropped by xcpimg pxe-tree: the root is the TFTP server) {line.strip()}")
            continue
        if cmd in _GRUB_LOADERS and len(words) > 1:
            opts = [w for w in words[1:] if w.startswith("--")]
            rest = words[1 + len(opts):]
            if rest:
                if "$" in rest[0]:
                    log.warning("pxe-tree: %s: cannot rewrite %r (a variable in the path)", cfg_path, rest[0])
                else:
                    files = rest if cmd.startswith("initrd") else rest[:1]
                    new = ["/" + plan.boot_file(resolve(p, "/")) for p in files]
                    rest = new + rest[len(files):]
                line = indent + " ".join([cmd, *opts, *rest])
        out.append(line)
    return edit_kernel_args("\n".join(out) + "\n", options)
