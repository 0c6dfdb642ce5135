"""PXE trees: a network boot tree (a TFTP/HTTP root) made from an installation ISO.

The layout follows the XCP-ng documentation (REFERENCE 4.4). BIOS: ``pxelinux.0`` and the
syslinux modules at the root, ``pxelinux.cfg/default`` generated from the ISO's own
``isolinux.cfg`` (same labels and arguments, file paths rewritten into the prefix). UEFI:
``EFI/xenserver/grubx64.efi`` and an ``EFI/xenserver/grub.cfg`` generated from the ISO's
grub.cfg (paths rewritten, CD root searches dropped: over TFTP, GRUB's root already is the
server). Boot files (Xen, the dom0 kernels, install.img, memtest, ``.treeinfo``) go under
the prefix: ``/boot/`` is dropped from their ISO path (``/boot/xen.gz`` ->
``xcp-ng/xen.gz``, ``/boot/alt/vmlinuz`` -> ``xcp-ng/alt/vmlinuz``).

Any ISO 9660 image is read (pycdlib; Rock Ridge, else Joliet, else plain names), not only
ones xcpimg built. The tree is written beside DEST and published in one step, never over
an existing DEST unless ``--force-overwrite``.
"""

from __future__ import annotations

from .plan import BOOTFILES, DEFAULT_PREFIX, IsoFiles, PxeOptions
from .tree import build_tree, make_pxe_tree

__all__ = ["BOOTFILES", "DEFAULT_PREFIX", "IsoFiles", "PxeOptions", "build_tree", "make_pxe_tree"]
