"""`xcpimg inspect`: what is in an installation ISO (any ISO, not only xcpimg's).

Volume id, El Torito entries and the hybrid MBR/GPT, every boot menu entry with
its Xen and dom0 kernel arguments (isolinux.cfg, the GRUB configurations and the
one inside efiboot.img), ``.treeinfo``, install.img (size, compression; with
``--installimg`` its segments, answerfile and rpm database packages), the
``Packages/`` repository (every NEVRA from repodata) and the signature of
``repomd.xml``, every other file with its size and sha256, and the ISO's sha256.
"""

from __future__ import annotations

import argparse
import configparser
import json
import sys
from pathlib import Path
from typing import Any

from .. import compress
from ..errors import BuildError, XcpimgError
from ..fsutil import private_tempdir
from ..run import output, run
from . import initrd, layout, menus, repodata
from .reader import IsoReader, sha256_file

INSTALL_IMG = "install.img"
EFIBOOT_DEFAULT = "boot/efiboot.img"
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def efiboot_cfgs(image: Path, scratch: Path) -> dict[str, str]:
    """The GRUB configurations (``EFI/*/grub*.cfg``) inside a FAT image, by path."""
    listing = output(["mdir", "-/", "-b", "-i", image, "::/"], env=MTOOLS_ENV, what="list efiboot.img")
    out: dict[str, str] = {}
    for line in listing.splitlines():
        rel = line.strip().removeprefix("::/")
        if rel.endswith("/") or not menus.is_menu_path(rel) or not rel.upper().startswith("EFI/"):
            continue
        local = scratch / f"efiboot-cfg-{len(out)}"
        run(["mcopy", "-n", "-i", image, f"::/{rel}", local], env=MTOOLS_ENV, what="read efiboot.img")
        out[rel] = local.read_text(errors="replace")
    return out


def _treeinfo(text: str) -> dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        return {"error": str(exc).splitlines()[0]}
    return {s: dict(parser[s]) for s in parser.sections()}


def _signature(iso: IsoReader, scratch: Path) -> dict[str, Any]:
    from ..sign import check_repo_signature, signature_info
    asc = iso.read_optional("repodata/repomd.xml.asc")
    if asc is None:
        return {"signed": False}
    tree = scratch / "sig"
    (tree / "repodata").mkdir(parents=True)
    (tree / "repodata/repomd.xml").write_bytes(iso.read("repodata/repomd.xml"))
    (tree / "repodata/repomd.xml.asc").write_bytes(asc)
    for path in iso.files():
        if "/" not in path and path.startswith("RPM-GPG-KEY-"):
            (tree / path).write_bytes(iso.read(path))
    out: dict[str, Any] = {"signed": True}
    try:
        info = signature_info(tree / "repodata/repomd.xml.asc")
        out.update(key_ids=info.key_ids, digest=info.hash_names)
        info = check_repo_signature(tree)
        out.update(valid=True, fingerprint=info.fingerprint)
    except XcpimgError as exc:
        out.update(valid=False, error=str(exc))
    return out


def inspect_iso(path: Path, installimg: bool = False) -> dict[str, Any]:
    """Everything `xcpimg inspect` reports, as plain data."""
    path = Path(path)
    with IsoReader(path) as iso, private_tempdir("xcpimg-inspect-") as scratch:
        lay = layout.read_layout(path)
        for entry in lay.entries:
            entry.image = iso.path_at_extent(entry.lba)
        if lay.catalog_lba is not None:
            lay.catalog = iso.path_at_extent(lay.catalog_lba)
        report: dict[str, Any] = {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path),
                                  "volume_id": iso.volume_id, "layout": lay.to_dict()}
        found_menus: dict[str, list[dict[str, Any]]] = {}
        for rel in iso.files():
            if menus.is_menu_path(rel):
                found_menus[rel] = [e.to_dict() for e in menus.parse_menu(rel, iso.read(rel).decode(errors="replace"))]
        efi = lay.efi.image if lay.efi and lay.efi.image else (EFIBOOT_DEFAULT if iso.exists(EFIBOOT_DEFAULT)
                                                               else None)
        if efi:
            image = scratch / "efiboot.img"
            image.write_bytes(iso.read(efi))
            for rel, text in efiboot_cfgs(image, scratch).items():
                found_menus[f"{efi}:{rel}"] = [e.to_dict() for e in menus.parse_menu(rel, text)]
        report["menus"] = found_menus
        treeinfo = iso.read_optional(".treeinfo")
        report["treeinfo"] = _treeinfo(treeinfo.decode(errors="replace")) if treeinfo is not None else None
        report["install_img"] = _install_img(iso, scratch, installimg)
        report["repository"] = _repository(iso, scratch)
        report["files"] = _files(iso, lay)
    return report


def _files(iso: IsoReader, lay: layout.Layout) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file outside Packages/ but the boot catalog (a mastering
    artifact, described by the layout); the BIOS boot image is hashed with its boot info
    table (bytes 8-63, which the mastering tool writes) zeroed."""
    import hashlib
    bios = lay.bios.image if lay.bios else None
    out = {}
    for rel, node in iso.files().items():
        if rel.startswith("Packages/") or rel == lay.catalog:
            continue
        if rel == bios:
            data = bytearray(iso.read(rel))
            data[8:64] = bytes(len(data[8:64]))
            digest = hashlib.sha256(data).hexdigest()
        else:
            digest = iso.sha256(rel)
        out[rel] = {"size": node.size, "sha256": digest}
    return out


def _install_img(iso: IsoReader, scratch: Path, installimg: bool) -> dict[str, Any] | None:
    node = iso.files().get(INSTALL_IMG)
    if node is None:
        return None
    with open(iso.path, "rb") as f:  # the magic bytes, straight from the file's extent
        f.seek(node.extent * 2048)
        head = f.read(8)
    out: dict[str, Any] = {"size": node.size, "compression": compress.detect(head)}
    if installimg:
        from . import answerfile
        local = scratch / INSTALL_IMG
        with open(local, "wb") as f:
            iso.copy_to(INSTALL_IMG, f)
        out["segments"] = []
        for method, found in initrd.segments(local):
            for _member in found:
                pass
            out["segments"].append(method or "none")
        data = initrd.file_data(local, answerfile.IMAGE_PATH)
        out["answerfile"] = answerfile.parse(data).root if data is not None else None
        try:
            out["packages"] = [p.nevra for p in initrd.packages(local)]
        except BuildError as exc:
            out["packages"] = None
            out["packages_error"] = str(exc)
    return out


def _repository(iso: IsoReader, scratch: Path) -> dict[str, Any] | None:
    repomd = iso.read_optional("repodata/repomd.xml")
    if repomd is None:
        return None
    href = repodata.primary_href(repomd)
    primary = iso.read_optional(href)
    if primary is None:
        raise BuildError(f"repodata/repomd.xml names {href}, which is not on the ISO")
    pkgs = repodata.parse_primary(primary)
    return {"count": len(pkgs), "size": sum(p.size for p in pkgs), "nevras": [p.nevra for p in pkgs],
            "missing": sorted(p.href for p in pkgs if not iso.exists(p.href)),
            "signature": _signature(iso, scratch)}


# ---------------------------------------------------------------- text

def _args(image: dict[str, Any] | None) -> str:
    return f"{image['path']} {' '.join(image['args'])}".rstrip() if image else "-"


def render(report: dict[str, Any]) -> str:
    """The report as text for people."""
    lay = report["layout"]
    lines = [f"ISO         {report['path']}", f"size        {report['size']}", f"sha256      {report['sha256']}",
             f"volume id   {report['volume_id']!r}", f"boot catalog {lay['catalog'] or '-'}"]
    for e in lay["entries"]:
        lines.append(f"El Torito   {e['platform']:<4} {e['media']} lba {e['lba']} sectors {e['sectors']} "
                     f"{e['image'] or '(not a file)'}{'' if e['bootable'] else ' (not bootable)'}")
    for p in lay["mbr"]:
        lines.append(f"MBR         {p['index']} type {p['type']} start {p['start']} sectors {p['sectors']}"
                     f"{' active' if p['active'] else ''}")
    if not lay["mbr"]:
        lines.append("MBR         none (not hybrid)")
    for p in lay["gpt"] or []:
        lines.append(f"GPT         {p['index']} {p['type']} {p['name']!r} start {p['start']} sectors {p['sectors']}")
    for menu, entries in report["menus"].items():
        lines.append(f"menu        {menu}")
        for e in entries:
            lines.append(f"  {e['name']}")
            if e["hypervisor"]:
                lines.append(f"    xen     {_args(e['hypervisor'])}")
            if e["kernel"]:
                lines.append(f"    kernel  {_args(e['kernel'])}")
    if report["treeinfo"]:
        for section, values in report["treeinfo"].items():
            lines.append(f".treeinfo   [{section}] " + " ".join(f"{k}={v}" for k, v in values.items()))
    img = report["install_img"]
    if img:
        lines.append(f"install.img {img['size']} bytes, {img['compression'] or 'uncompressed'}")
        if "segments" in img:
            lines.append(f"  segments  {' + '.join(img['segments'])}; answerfile: {img['answerfile'] or 'none'}")
            if img["packages"] is not None:
                lines.append(f"  packages  {len(img['packages'])}")
                lines += [f"    {n}" for n in img["packages"]]
            else:
                lines.append(f"  packages  unknown: {img['packages_error']}")
    repo = report["repository"]
    if repo:
        sig = repo["signature"]
        if not sig["signed"]:
            state = "unsigned"
        elif sig.get("valid"):
            state = f"signed, valid, key {sig['fingerprint']} ({'/'.join(sig['digest'])})"
        else:
            state = f"signed, INVALID: {sig['error']}"
        lines.append(f"Packages/   {repo['count']} packages, {repo['size']} bytes; repomd.xml {state}")
        lines += [f"    {n}" for n in repo["nevras"]]
    else:
        lines.append("Packages/   none (netinstall)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("iso", metavar="ISO", type=Path, help="the ISO image")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--installimg", action="store_true",
                        help="also read install.img's segments and rpm database (package list)")


def command(args: argparse.Namespace) -> int:
    report = inspect_iso(args.iso, args.installimg)
    sys.stdout.write((json.dumps(report, indent=2, sort_keys=True) if args.json else render(report)) + "\n")
    return 0
