"""Build install.img, the installer's root filesystem (create-installimg.sh).

Steps, as the original: ``dnf --installroot`` of the dist's ``packages.lst``;
``rpm --erase --nodeps`` of packages the installer does not need; removal of
large unneeded files; ``/init``; the layers' ``installimg`` template tree
(owned by root); ``depmod`` per kernel; the installer's branding links;
systemd units enabled/disabled; dnf/rpm leftovers removed; then the tree is
packed as a deterministic newc cpio and compressed (xz by default; bzip2, as
the original, on request).

Everything happens in a private temporary directory that is removed on any
exit (no mounts are used), and the output appears atomically. Runs as root:
rpm and dnf must create files of any owner and run scriptlets in a chroot.

Reproducibility: every tool runs with ``SOURCE_DATE_EPOCH``: rpm (4.18) then
uses it as install time and transaction id, so ``rpmdb.sqlite`` comes out
identical; depmod's output is stable for the same modules. cpio mtimes are
clamped to the epoch and owners are the numeric ones the RPMs gave. What still
varies is removed: dnf's history, caches and logs (kept inside the root, in
their standard places, while dnf runs), rpmdb lock/WAL/``__db.*`` files, ``/var/lib/systemd/random-seed``,
dbus's machine id; ``/etc/machine-id`` is emptied (systemd makes one at boot).
Two builds with the same epoch and repositories give the same bytes (checked
by the expensive tests).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from . import compat, compress, cpio, progress
from .dnf import RPMDB_PATH, Dnf
from .errors import BuildError, XcpimgError, describe_os_error
from .fsutil import atomic_output, check_output_path, copy_node, private_tempdir, remove_tree
from .layers import Layers, read_package_list, resolve
from .repos import RepoConfig, add_repo_arguments, repo_config_from_args
from .run import build_epoch, output, run

log = logging.getLogger("xcpimg.installimg")

#: packages pulled in by dependencies that the installer does not need (gpg-pubkey: every imported key)
ERASE = ("binutils", "dracut", "gpg-pubkey", "pkgconfig", "xen-hypervisor")

_BINS = ("systemd-analyze systemd-nspawn journalctl machinectl dgawk loginctl ssh-keyscan pgawk busctl "
         "systemd-run ssh-agent timedatectl systemd-cgls localectl hostnamectl systemd-inhibit info "
         "oldfind coredumpctl").split()
_SBINS = ("pdata_tools oxenstored ldconfig build-locale-archive glibc_post_upgrade.x86_64 sln "
          "install-info").split()
#: large files the installer does not need (paths relative to the root)
PRUNE = (tuple(f"usr/bin/{b}" for b in _BINS) + tuple(f"usr/sbin/{s}" for s in _SBINS)
         + ("boot", "usr/share/locale", "usr/lib/locale", "usr/share/i18n/locales", "usr/libexec/xen/boot",
            "usr/share/bash-completion", "usr/share/cracklib", "usr/lib/udev/hwdb.d"))

#: units disabled in the installer (only those that exist)
DISABLE = ("getty@tty1", "fcoe", "lldpad", "xen-init-dom0", "xenconsoled", "xenstored", "chronyd",
           "chrony-wait")

#: dnf/yum/rpm state and logs: removed (history databases carry timestamps and transaction ids)
CLEANUP = ("var/lib/yum/yumdb", "var/lib/yum/history", "var/cache/yum", "var/cache/dnf", "var/lib/dnf",
           "var/log/dnf.log", "var/log/dnf.librepo.log", "var/log/dnf.rpm.log", "var/log/hawkey.log",
           "var/log/yum.log", f"{RPMDB_PATH.lstrip('/')}/.rpm.lock", f"{RPMDB_PATH.lstrip('/')}/.dbenv.lock",
           f"{RPMDB_PATH.lstrip('/')}/rpmdb.sqlite-shm", f"{RPMDB_PATH.lstrip('/')}/rpmdb.sqlite-wal")
#: files whose content differs on every build (random ids and seeds): removed, or emptied if kept
VOLATILE = {"etc/machine-id": "empty", "var/lib/systemd/random-seed": "remove",
            "var/lib/dbus/machine-id": "remove"}

#: relative links created for the installer's branding (host-installer expects them)
BRANDING_LINKS = {
    "opt/xensource/installer/EULA": "../../../EULA",
    "opt/xensource/installer/version.py": "../../../usr/lib/python2.7/site-packages/xcp/branding.py",
}
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")


def require_root() -> None:
    """Refuse to start unless running as root."""
    if os.geteuid() != 0:
        raise XcpimgError("building install.img needs root (dnf --installroot and rpm create files "
                          "owned by any user and run package scriptlets): run it as root")


def installer_getty(dist: str) -> str:
    """The getty unit the installer runs on tty2: 8.2 uses the stock one."""
    if dist == "8.2" or dist.startswith("8.2."):
        return "getty@tty2.service"
    return "installer-getty@tty2.service"


# ---------------------------------------------------------------- paths inside the root, safely

def in_root(root: Path, rel: str, follow_last: bool = False) -> Path:
    """*rel* inside *root*, resolving symlinks as if *root* were ``/`` (never escaping it).

    The last component is not followed unless *follow_last* (so a link can be removed
    or replaced as a link).
    """
    parts = [p for p in rel.strip("/").split("/") if p not in ("", ".")]
    current: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if (parts or follow_last) and candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise BuildError(f"too many levels of symbolic links resolving /{rel} in the root")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current.append(part)
    return root.joinpath(*current)


def _remove(path: Path) -> bool:
    if not (path.exists() or path.is_symlink()):
        return False
    remove_tree(path)
    return True


def _symlink(root: Path, rel: str, target: str) -> None:
    """Create (or replace) the link /*rel* -> *target* in *root*."""
    path = in_root(root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        raise BuildError(f"cannot create link /{rel}: a directory is in the way")
    _remove(path)
    os.symlink(target, path)


# ---------------------------------------------------------------- steps

def erase_packages(root: Path) -> list[str]:
    """``rpm --erase --nodeps`` of the ERASE packages that are installed; return their names."""
    rpm = ["rpm", f"--root={root}", f"--dbpath={RPMDB_PATH}"]
    installed = set(output([*rpm, "-qa", "--qf", "%{NAME}\\n"], what="list installed packages").split())
    names = [n for n in ERASE if n in installed]
    if names:
        run([*rpm, "--nodeps", "--erase", "--allmatches", "--", *names], what="erase unneeded packages")
    return names


def prune(root: Path) -> None:
    """Remove the PRUNE paths and every compiled Python file under /usr."""
    for rel in PRUNE:
        if _remove(in_root(root, rel)):
            log.debug("pruned /%s", rel)
    usr = in_root(root, "usr", follow_last=True)
    for dirpath, _dirs, files in os.walk(usr):
        for name in files:
            if name.endswith((".pyc", ".pyo")):
                os.unlink(os.path.join(dirpath, name))


def overlay(root: Path, layers: Layers) -> int:
    """Copy the merged ``installimg`` template tree into *root*, owned by root, modes kept."""
    tree = layers.merged_entries("installimg")
    for rel, (top, src) in tree.items():
        dest = in_root(root, rel)
        parent = dest.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, mode=0o755)
        if dest.is_dir() and not dest.is_symlink():
            raise BuildError(f"template file {src} would replace the directory /{rel}")
        _remove(dest)  # never write through an existing link
        # links stay links; absolute targets are the image's own paths (``-> /dev/null`` masks a unit)
        copy_node(src, dest, top, rooted=True)
        os.lchown(dest, 0, 0)
    return len(tree)


def run_depmod(root: Path) -> list[str]:
    """``depmod -a`` for every kernel under /lib/modules, with the root's own configuration."""
    moddir = in_root(root, "lib/modules", follow_last=True)
    versions = sorted(p.name for p in moddir.iterdir() if p.is_dir()) if moddir.is_dir() else []
    confdir = in_root(root, "etc/depmod.d", follow_last=True)
    for ver in versions:
        argv = ["depmod", "-a", "-b", str(root)]
        # depmod reads the host's /etc/depmod.d unless told otherwise
        argv += ["-C", str(confdir) if confdir.is_dir() else os.devnull]
        run([*argv, "--", ver], what=f"depmod {ver}")
    return versions


def _unit_exists(root: Path, unit: str) -> bool:
    name = unit if "." in unit else f"{unit}.service"
    candidates = [name]
    if "@" in name:
        prefix, _, rest = name.partition("@")
        candidates.append(f"{prefix}@.{rest.rpartition('.')[2]}")
    for d in UNIT_DIRS:
        for c in candidates:
            p = in_root(root, f"{d}/{c}")
            if p.exists() or p.is_symlink():
                return True
    return False


def configure_units(root: Path, dist: str) -> list[str]:
    """Enable the installer units, disable the DISABLE units that exist; return the disabled ones."""
    systemctl = ["systemctl", f"--root={root}", "--no-reload", "-q"]
    run([*systemctl, "enable", "--", "installer", installer_getty(dist)], what="enable installer units")
    present = [u for u in DISABLE if _unit_exists(root, u)]
    if present:
        run([*systemctl, "disable", "--", *present], what="disable units")
    return present


def clean_state(root: Path) -> None:
    """Remove package-manager history, caches, logs and per-build random state."""
    for rel in CLEANUP:
        _remove(in_root(root, rel))
    rpmdb = in_root(root, RPMDB_PATH, follow_last=True)
    if rpmdb.is_dir():
        for p in rpmdb.glob("__db.*"):
            p.unlink()
    for rel, action in VOLATILE.items():
        path = in_root(root, rel)
        if path.is_file() and not path.is_symlink():
            if action == "empty":
                path.write_bytes(b"")
            else:
                path.unlink()


def populate(root: Path, layers: Layers, repo_config: RepoConfig, dnf_dir: Path) -> None:
    """Every step up to a finished root tree (*dnf_dir*: dnf's private dir, outside *root*)."""
    names = read_package_list(layers.find("packages.lst"))
    t0 = time.monotonic()
    log.info("installing %d packages into the install.img root", len(names))
    Dnf(layers, repo_config, dnf_dir).install(root, names)
    log.info("installed in %.1f s", time.monotonic() - t0)
    erased = erase_packages(root)
    log.info("erased %s", " ".join(erased) or "nothing")
    prune(root)
    _symlink(root, "init", "/sbin/init")
    log.info("overlaid %d template file(s)", overlay(root, layers))
    kernels = run_depmod(root)
    if kernels:
        log.info("depmod for %s", " ".join(kernels))
    yum_conf = in_root(root, "etc/yum/yum.conf", follow_last=True)
    if yum_conf.is_file():
        yum_conf.write_bytes(b"")
    for rel, target in BRANDING_LINKS.items():
        _symlink(root, rel, target)
    disabled = configure_units(root, layers.dist)
    log.info("units: enabled installer %s; disabled %s", installer_getty(layers.dist),
             " ".join(disabled) or "none")
    clean_state(root)


def pack(root: Path, output_file: Path, compression: str, *, epoch: int) -> None:
    """Write *root* as a compressed newc cpio into *output_file* (not atomic by itself)."""
    t0 = time.monotonic()
    with output_file.open("wb") as f, compress.open_compressor(f, compression) as stream, \
            progress.bar(f"packing install.img ({compression})") as counter:
        size = cpio.write_newc(root, progress.CountingWriter(stream, counter),  # type: ignore[arg-type]
                               epoch=epoch, keep_owner=True)
    log.info("packed %.1f MB of cpio into %.1f MB (%s) in %.1f s", size / 1e6,
             output_file.stat().st_size / 1e6, compression, time.monotonic() - t0)


def build_installimg(layers: Layers, repo_config: RepoConfig, output: Path, *,
                     compression: str = compress.DEFAULT_METHOD,
                     force: bool = False, workdir: Path | None = None) -> None:
    """Build install.img for *layers* into *output* (atomically).

    *workdir* is where the private build directory is made (default: the system
    temp dir); it is removed whatever happens.
    """
    require_root()
    compress.check_method(compression)
    output = Path(output)
    check_output_path(output, force)
    layers.find("packages.lst")
    epoch = build_epoch()
    # the root tree is removed (uninterruptibly) before the image is published
    with atomic_output(output, force) as part, private_tempdir("xcpimg-installimg-", parent=workdir) as tmp:
        root = tmp / "root"
        root.mkdir(mode=0o755)
        try:
            populate(root, layers, repo_config, tmp / "dnf")
        except OSError as exc:
            raise BuildError(f"building the install.img root in {tmp} failed: {describe_os_error(exc)}") from None
        try:
            pack(root, part, compression, epoch=epoch)
        except OSError as exc:
            raise BuildError(f"cannot write {output}: {describe_os_error(exc)}") from None
    log.info("wrote %s", output)


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="OUTPUT.IMG", required=True, type=Path,
                        help="output install.img")
    add_repo_arguments(parser)
    parser.add_argument("--compression", choices=compress.METHODS, default=compress.DEFAULT_METHOD,
                        help="compression of the cpio archive (default xz: smaller than bzip2, the "
                             "original's, and unpacked faster at boot; the XCP-ng 4.19 kernel cannot "
                             "unpack zstd)")
    parser.add_argument("--force-overwrite", action="store_true", help="replace an existing output")
    compat.add_arguments(parser)
    parser.add_argument("spec", metavar="LAYERS", help="layer search path, e.g. 8.3:testing")


def command(args: argparse.Namespace) -> int:
    compat.check(args)
    require_root()
    layers = resolve(args.spec)
    cfg = repo_config_from_args(args)
    build_installimg(layers, cfg, args.output, compression=args.compression, force=args.force_overwrite)
    return 0


