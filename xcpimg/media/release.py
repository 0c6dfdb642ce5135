"""`xcpimg release SPEC`: one command for a release's media, like upstream's build-8.3.sh.

Builds install.img (root; or takes ``--install-img``), the full ISO, the netinstall
ISO and with ``--linstor URL`` the LINSTOR upgrade-only ISO (layers SPEC:linstor,
extra packages ``--linstor-packages`` plus every package of the linstor repository),
named ``xcp-ng-<ver>-<YMD>[-linstor-upgradeonly|-netinstall].<target>.iso`` with
volume ids ``XCP-NG <ver> <YMD>`` (``... LINSTOR``), YMD from the build epoch. The
directory also gets ``SHA256SUMS`` (``sha256sum -c`` checks it) and ``manifest.json``
(per medium: volume id, sha256, size, NEVRA list; with ``--boot`` the result of a
boot in every matrix mode). Everything is built in a temporary directory beside
the output, which appears by one rename; an existing output is never replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import compress
from ..errors import BootError, BuildError, UsageError
from ..fsutil import private_tempdir
from ..iso.build import IsoOptions, build_iso, sign_script_path
from ..layers import Layers, resolve
from ..repos import RepoConfig, add_repo_arguments, as_url, repo_config_from_args
from ..run import build_epoch
from . import initrd, repodata
from .inspect import inspect_iso
from .reader import sha256_file

log = logging.getLogger("xcpimg.release")

LINSTOR_PACKAGES = ("xcp-ng-release-linstor",)
LINSTOR_LAYER = "linstor"


@dataclass
class ReleaseOptions:
    spec: str
    output: Path
    repo_config: RepoConfig
    sign_script: Path | None = None
    linstor: str | None = None
    linstor_packages: list[str] = field(default_factory=lambda: list(LINSTOR_PACKAGES))
    install_img: Path | None = None
    compression: str = compress.DEFAULT_METHOD
    target: str | None = None
    boot: bool = False


@dataclass
class Medium:
    kind: str  # install.img, full, netinstall, linstor
    file: str
    volume_id: str | None = None


def ymd(epoch: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(epoch))


def target_of(spec: str) -> str:
    """The <target> of the file names: the layers after the dist (``8.3:testing`` -> ``testing``)."""
    rest = [p for p in spec.split(":")[1:] if p]
    return "-".join(Path(p).name for p in rest) or "base"


def media_plan(layers: Layers, opts: ReleaseOptions, epoch: int) -> list[Medium]:
    ver, day = layers.dist, ymd(epoch)
    target = opts.target or target_of(opts.spec)
    volid = f"XCP-NG {ver} {day}"
    plan = [Medium("install.img", f"install-{ver}-{day}.{target}.img"),
            Medium("full", f"xcp-ng-{ver}-{day}.{target}.iso", volid),
            Medium("netinstall", f"xcp-ng-{ver}-{day}-netinstall.{target}.iso", volid)]
    if opts.linstor:
        plan.append(Medium("linstor", f"xcp-ng-{ver}-{day}-linstor-upgradeonly.{target}.iso", f"{volid} LINSTOR"))
    return plan


def linstor_repo_packages(url: str, arch: str) -> list[str]:
    """Names of every package of the linstor repository at *url* (``URL/linstor/<arch>/``)."""
    base = f"{url.rstrip('/')}/{LINSTOR_LAYER}/{arch}"
    return sorted({p.name for p in repodata.read_repo(base)})


def validate(opts: ReleaseOptions) -> Layers:
    layers = resolve(opts.spec)
    out = opts.output
    if out.exists() or out.is_symlink():
        raise UsageError(f"output {out} already exists (release never replaces a directory)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"directory of output {out} does not exist or is not writable")
    if opts.install_img is not None and not opts.install_img.is_file():
        raise UsageError(f"--install-img {opts.install_img} is not a file")
    if opts.install_img is None and os.geteuid() != 0:
        raise UsageError("building install.img needs root: run as root or give --install-img")
    compress.check_method(opts.compression)
    return layers


def build_release(opts: ReleaseOptions) -> dict[str, Any]:
    """Build every medium into opts.output; returns the manifest."""
    layers = validate(opts)
    epoch = build_epoch()
    plan = media_plan(layers, opts, epoch)
    linstor_extra: list[str] = []
    linstor_cfg = opts.repo_config
    if opts.linstor:
        url = as_url(opts.linstor)
        linstor_cfg = RepoConfig(srcurl=opts.repo_config.srcurl,
                                 layer_srcurls={**opts.repo_config.layer_srcurls, LINSTOR_LAYER: url},
                                 custom=opts.repo_config.custom, gpgkey=opts.repo_config.gpgkey,
                                 gpgcheck=opts.repo_config.gpgcheck, arch=opts.repo_config.arch)
        linstor_extra = [*opts.linstor_packages, *linstor_repo_packages(url, opts.repo_config.arch)]
    with private_tempdir(f".{opts.output.name}.", parent=opts.output.parent or Path(".")) as work:
        staging = work / opts.output.name
        staging.mkdir()
        media: list[dict[str, Any]] = []
        img = staging / plan[0].file
        if opts.install_img is not None:
            shutil.copyfile(opts.install_img, img)
        else:
            from ..installimg import build_installimg
            build_installimg(layers, opts.repo_config, img, compression=opts.compression, workdir=work)
        for medium in plan[1:]:
            log.info("building %s (%s)", medium.file, medium.kind)
            build_iso(IsoOptions(
                layers=resolve(f"{opts.spec}:{LINSTOR_LAYER}") if medium.kind == "linstor" else layers,
                install_img=img, output=staging / medium.file, volid=medium.volume_id or "",
                repo_config=linstor_cfg if medium.kind == "linstor" else opts.repo_config,
                extra_packages=linstor_extra if medium.kind == "linstor" else [],
                netinstall=medium.kind == "netinstall",
                sign_script=None if medium.kind == "netinstall" else opts.sign_script))
        for medium in plan:
            media.append(describe(staging / medium.file, medium))
        if opts.boot:
            boot_all(staging, media)
        manifest = {"spec": opts.spec, "version": layers.dist, "date": ymd(epoch), "epoch": epoch,
                    "target": opts.target or target_of(opts.spec), "media": media}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        sums = "".join(f"{m['sha256']}  {m['file']}\n" for m in sorted(media, key=lambda m: m["file"]))
        (staging / "SHA256SUMS").write_text(sums)
        for path in (staging, *staging.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if opts.output.exists() or opts.output.is_symlink():
            raise UsageError(f"output {opts.output} appeared during the build; not replacing it")
        os.rename(staging, opts.output)
    log.info("wrote %s: %s", opts.output, ", ".join(m["file"] for m in media))
    return manifest


def describe(path: Path, medium: Medium) -> dict[str, Any]:
    """The manifest entry of one medium."""
    entry: dict[str, Any] = {"file": medium.file, "kind": medium.kind, "size": path.stat().st_size,
                             "sha256": sha256_file(path), "volume_id": medium.volume_id}
    if medium.kind == "install.img":
        try:
            entry["packages"] = [p.nevra for p in initrd.packages(path)]
        except BuildError as exc:  # the probe initrd of the cheap tests has no rpm database
            entry["packages"] = []
            entry["packages_note"] = str(exc).replace(str(path), medium.file)
    else:
        report = inspect_iso(path)
        entry["volume_id"] = report["volume_id"]
        repo = report["repository"]
        entry["packages"] = repo["nevras"] if repo else []
        entry["signed"] = bool(repo and repo["signature"].get("valid"))
    return entry


def boot_all(staging: Path, media: list[dict[str, Any]]) -> None:
    """Boot every ISO in every matrix mode; record the results in *media*. The boot logs
    are kept (and named in the manifest) only when a boot fails."""
    import tempfile

    from ..boot import BOOT_MODES, boot_in_mode
    from ..fsutil import remove_tree
    logdir = Path(tempfile.mkdtemp(prefix="xcpimg-release-boot-"))
    failed = []
    for entry in media:
        if entry["kind"] == "install.img":
            continue
        entry["boot"] = {}
        for mode in BOOT_MODES:
            try:
                result = boot_in_mode(staging / entry["file"], mode, logdir / f"{entry['kind']}-{mode}")
                entry["boot"][mode] = {"ok": True, "seconds": result.seconds, "cmdline": result.cmdline}
            except BootError as exc:
                entry["boot"][mode] = {"ok": False, "error": str(exc).splitlines()[0]}
                failed.append(f"{entry['file']} {mode}")
            log.info("boot %s %s: %s", entry["file"], mode, "ok" if entry["boot"][mode]["ok"] else "FAILED")
    if failed:
        log.warning("warning: %d boot(s) failed: %s (logs in %s)", len(failed), ", ".join(failed), logdir)
    else:
        remove_tree(logdir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="layer search path, e.g. 8.3:testing")
    parser.add_argument("-o", "--output", metavar="DIR", required=True, type=Path, help="new output directory")
    add_repo_arguments(parser)
    parser.add_argument("--sign-script", metavar="S", help="sign the full ISOs' repodata with S ISO_DIR")
    parser.add_argument("--linstor", metavar="URL", help="also build the LINSTOR upgrade-only ISO from this "
                        "linstor repository root (URL/linstor/x86_64/)")
    parser.add_argument("--linstor-packages", metavar='"A B"', default=" ".join(LINSTOR_PACKAGES),
                        help=f"packages the LINSTOR ISO adds besides the linstor repository's "
                             f"(default {' '.join(LINSTOR_PACKAGES)})")
    parser.add_argument("--install-img", metavar="IMG", type=Path, help="use IMG instead of building install.img")
    parser.add_argument("--compression", choices=compress.METHODS, default=compress.DEFAULT_METHOD,
                        help="install.img compression")
    parser.add_argument("--target", metavar="NAME", help="the <target> of the file names (default: from SPEC)")
    parser.add_argument("--boot", action="store_true", help="boot every ISO in every matrix mode")


def command(args: argparse.Namespace) -> int:
    opts = ReleaseOptions(spec=args.spec, output=args.output, repo_config=repo_config_from_args(args),
                          sign_script=sign_script_path(args.sign_script), linstor=args.linstor,
                          linstor_packages=args.linstor_packages.split(), install_img=args.install_img,
                          compression=args.compression, target=args.target, boot=args.boot)
    manifest = build_release(opts)
    failed = [f"{m['file']} {mode}" for m in manifest["media"] for mode, r in m.get("boot", {}).items()
              if not r["ok"]]
    if failed:
        raise BootError(f"{len(failed)} boot(s) failed (recorded in {opts.output}/manifest.json): "
                        f"{', '.join(failed)}")
    return 0
