"""`xcpimg diff A.iso B.iso`: what changed between two installation ISOs.

Packages of the ``Packages/`` repository added, removed, upgraded and downgraded
(by name and arch, EVR compared as rpm does), boot-argument changes per menu
entry (Xen and dom0 kernel words), files added, removed or changed outside
``Packages/`` (with sizes), the volume id, boot layout and ``.treeinfo``, and with
``--installimg`` the packages of install.img. With ``--layers SPEC`` (and the
repository options of ``xcpimg iso``) each changed package is named with the
layer repository that holds it. Exit code 0 when equal, 1 when different, 2 on
trouble (like diff).
"""

from __future__ import annotations

import argparse
import configparser
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import XcpimgError
from ..fsutil import private_tempdir
from ..layers import resolve
from ..repos import RepoConfig, add_repo_arguments, repo_config_from_args, write_repo_files
from .inspect import inspect_iso
from .repodata import evrcmp, parse_nevra, read_repo


class DiffTrouble(XcpimgError):
    """diff could not compare (exit 2, as diff(1) does)."""

    exit_code = 2


def diff_packages(old: list[str], new: list[str]) -> dict[str, list[Any]]:
    """NEVRA lists compared by (name, arch)."""
    a = {(p.name, p.arch): p for p in map(parse_nevra, old)}
    b = {(p.name, p.arch): p for p in map(parse_nevra, new)}
    out: dict[str, list[Any]] = {"added": [], "removed": [], "upgraded": [], "downgraded": []}
    for key in sorted(a.keys() | b.keys()):
        pa, pb = a.get(key), b.get(key)
        if pa is None and pb is not None:
            out["added"].append(pb.nevra)
        elif pb is None and pa is not None:
            out["removed"].append(pa.nevra)
        elif pa is not None and pb is not None:
            order = evrcmp(pb, pa)
            if order > 0:
                out["upgraded"].append([pa.nevra, pb.nevra])
            elif order < 0:
                out["downgraded"].append([pa.nevra, pb.nevra])
    return out


def layer_repos(spec: str, cfg: RepoConfig) -> dict[str, str]:
    """NEVRA -> id of the first repository of the layers *spec* that holds it."""
    layers = resolve(spec)
    found: dict[str, str] = {}
    with private_tempdir("xcpimg-diff-repos-") as reposdir:
        write_repo_files(layers, cfg, reposdir)
        repos = []
        for layer in [d.name for d in layers.dirs]:
            path = reposdir / f"{layer}.repo"
            if path.is_file():
                parser = configparser.ConfigParser(interpolation=None)
                parser.read(path)
                repos += [(section, parser[section]["baseurl"]) for section in parser.sections()
                          if "baseurl" in parser[section]]
    for repo_id, baseurl in repos:
        for pkg in read_repo(baseurl):
            found.setdefault(pkg.nevra, repo_id)
    return found


def _words(image: dict[str, Any] | None) -> list[str]:
    return [image["path"], *image["args"]] if image else []


def _word_change(old: list[str], new: list[str]) -> dict[str, list[str]] | None:
    if old == new:
        return None
    return {"removed": [w for w in old if w not in new], "added": [w for w in new if w not in old],
            "old": old, "new": new}


def diff_menus(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per menu and entry: entries added/removed, Xen and kernel words changed."""
    out = []
    for menu in sorted(a.keys() | b.keys()):
        ea = {e["name"]: e for e in a.get(menu, [])}
        eb = {e["name"]: e for e in b.get(menu, [])}
        for name in sorted(ea.keys() | eb.keys()):
            if name not in eb:
                out.append({"menu": menu, "entry": name, "change": "removed"})
            elif name not in ea:
                out.append({"menu": menu, "entry": name, "change": "added"})
            else:
                xen = _word_change(_words(ea[name]["hypervisor"]), _words(eb[name]["hypervisor"]))
                kernel = _word_change(_words(ea[name]["kernel"]), _words(eb[name]["kernel"]))
                modules = [m["path"] for m in ea[name]["modules"]] != [m["path"] for m in eb[name]["modules"]]
                if xen or kernel or modules:
                    out.append({"menu": menu, "entry": name, "change": "changed", "xen": xen, "kernel": kernel,
                                "modules": [[m["path"] for m in e["modules"]] for e in (ea[name], eb[name])]
                                if modules else None})
    return out


def diff_files(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"added": [], "removed": [], "changed": []}
    for rel in sorted(a.keys() | b.keys()):
        if rel not in b:
            out["removed"].append({"path": rel, "size": a[rel]["size"]})
        elif rel not in a:
            out["added"].append({"path": rel, "size": b[rel]["size"]})
        elif a[rel]["sha256"] != b[rel]["sha256"]:
            out["changed"].append({"path": rel, "old_size": a[rel]["size"], "new_size": b[rel]["size"]})
    return out


def _layout_summary(report: dict[str, Any]) -> dict[str, Any]:
    lay = report["layout"]
    return {"eltorito": [f"{e['platform']}:{e['image']}" for e in lay["entries"]],
            "mbr": [p["type"] for p in lay["mbr"]], "gpt": [p["type"] for p in lay["gpt"] or []] or None}


def diff_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Every difference between two inspect reports (empty lists and None when equal)."""
    repo_a, repo_b = a["repository"] or {}, b["repository"] or {}
    sig_a = (repo_a.get("signature") or {}).get("fingerprint"), (repo_a.get("signature") or {}).get("signed")
    sig_b = (repo_b.get("signature") or {}).get("fingerprint"), (repo_b.get("signature") or {}).get("signed")
    out: dict[str, Any] = {
        "a": a["path"], "b": b["path"], "bytes_identical": a["sha256"] == b["sha256"],
        "volume_id": [a["volume_id"], b["volume_id"]] if a["volume_id"] != b["volume_id"] else None,
        "layout": [_layout_summary(a), _layout_summary(b)] if _layout_summary(a) != _layout_summary(b) else None,
        "repository": ([bool(repo_a), bool(repo_b)] if bool(repo_a) != bool(repo_b) else None),
        "signature": [sig_a, sig_b] if sig_a != sig_b else None,
        "packages": diff_packages(repo_a.get("nevras", []), repo_b.get("nevras", [])),
        "boot_args": diff_menus(a["menus"], b["menus"]),
        "files": diff_files(a["files"], b["files"]),
        "treeinfo": [a["treeinfo"], b["treeinfo"]] if a["treeinfo"] != b["treeinfo"] else None,
    }
    img_a, img_b = a["install_img"] or {}, b["install_img"] or {}
    keys = ("compression", "segments", "answerfile")
    summary_a, summary_b = ({k: img.get(k) for k in keys} for img in (img_a, img_b))
    out["install_img"] = [summary_a, summary_b] if summary_a != summary_b else None
    if img_a.get("packages") is not None and img_b.get("packages") is not None:
        out["installimg_packages"] = diff_packages(img_a["packages"], img_b["packages"])
    return out


def is_different(d: dict[str, Any]) -> bool:
    for key, value in d.items():
        if key in ("a", "b", "bytes_identical", "repos"):
            continue
        if isinstance(value, dict):
            if any(value.values()):
                return True
        elif value:
            return True
    return False


def render(d: dict[str, Any]) -> str:
    lines = [f"--- {d['a']}", f"+++ {d['b']}"]
    repos = d.get("repos") or {}

    def n(nevra: str) -> str:
        return f"{nevra} [{repos[nevra]}]" if nevra in repos else nevra
    if d["volume_id"]:
        lines.append(f"volume id: {d['volume_id'][0]!r} -> {d['volume_id'][1]!r}")
    if d["layout"]:
        lines.append(f"boot layout: {d['layout'][0]} -> {d['layout'][1]}")
    if d["repository"]:
        lines.append(f"repository present: {d['repository'][0]} -> {d['repository'][1]}")
    if d["signature"]:
        lines.append(f"repomd.xml signature (key, signed): {d['signature'][0]} -> {d['signature'][1]}")
    for title, pk in (("package", d["packages"]), ("install.img package", d.get("installimg_packages"))):
        if not pk:
            continue
        lines += [f"+ {title} {n(p)}" for p in pk["added"]] + [f"- {title} {n(p)}" for p in pk["removed"]]
        lines += [f"^ {title} {n(o)} -> {n(p)}" for o, p in pk["upgraded"]]
        lines += [f"v {title} {n(o)} -> {n(p)}" for o, p in pk["downgraded"]]
    for c in d["boot_args"]:
        if c["change"] != "changed":
            lines.append(f"{'+' if c['change'] == 'added' else '-'} boot entry {c['menu']}: {c['entry']}")
            continue
        for part in ("xen", "kernel"):
            if c[part]:
                change = " ".join([f"-{w}" for w in c[part]["removed"]] + [f"+{w}" for w in c[part]["added"]])
                lines.append(f"~ boot args {c['menu']}: {c['entry']}: {part} {change or '(order)'}")
        if c["modules"]:
            lines.append(f"~ boot modules {c['menu']}: {c['entry']}: {c['modules'][0]} -> {c['modules'][1]}")
    lines += [f"+ file {f['path']} ({f['size']} bytes)" for f in d["files"]["added"]]
    lines += [f"- file {f['path']} ({f['size']} bytes)" for f in d["files"]["removed"]]
    lines += [f"~ file {f['path']} ({f['old_size']} -> {f['new_size']} bytes)" for f in d["files"]["changed"]]
    if d["treeinfo"]:
        lines.append(".treeinfo changed")
    if d["install_img"]:
        lines.append(f"install.img: {d['install_img'][0]} -> {d['install_img'][1]}")
    if not is_different(d):
        lines.append("no differences" + ("" if d["bytes_identical"] else " (the images differ in bytes only)"))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A.iso", type=Path)
    parser.add_argument("b", metavar="B.iso", type=Path)
    parser.add_argument("--json", action="store_true", help="print the differences as JSON")
    parser.add_argument("--installimg", action="store_true", help="also compare install.img's packages")
    parser.add_argument("--layers", metavar="SPEC", help="name each changed package's layer repository "
                        "(the layers' repos, with the repository options below)")
    add_repo_arguments(parser)


def command(args: argparse.Namespace) -> int:
    try:
        d = diff_reports(inspect_iso(args.a, args.installimg), inspect_iso(args.b, args.installimg))
        if args.layers:
            known = layer_repos(args.layers, repo_config_from_args(args))
            changed = {nevra for pk in (d["packages"], d.get("installimg_packages") or {}) for key in pk
                       for item in pk[key] for nevra in ([item] if isinstance(item, str) else item)}
            d["repos"] = {nevra: known[nevra] for nevra in sorted(changed) if nevra in known}
    except XcpimgError as exc:
        raise DiffTrouble(str(exc)) from None
    sys.stdout.write((json.dumps(d, indent=2, sort_keys=True) if args.json else render(d)) + "\n")
    return 1 if is_different(d) else 0
