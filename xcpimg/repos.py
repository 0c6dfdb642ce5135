"""Repository definitions: source URLs, per-layer overrides, custom repos, rendered .repo files."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .layers import Layers
from .render import render_file

ARCH = "x86_64"
UPDATES_ROOT = "https://updates.xcp-ng.org"


def default_srcurl(dist: str) -> str:
    """``https://updates.xcp-ng.org/<major>/<major.minor>`` for a dist like 8.3 or 8.2.1."""
    parts = dist.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"cannot derive a source URL from dist {dist!r}: give --srcurl")
    return f"{UPDATES_ROOT}/{parts[0]}/{parts[0]}.{parts[1]}"


def as_url(location: str) -> str:
    """A URL for *location*: URLs pass through, local paths become file:// URLs."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location):
        return location.rstrip("/")
    return Path(location).resolve().as_uri()


@dataclass(frozen=True)
class RepoConfig:
    """Where packages come from: the layers' repos plus command-line overrides."""

    srcurl: str | None = None
    layer_srcurls: Mapping[str, str] = field(default_factory=dict)
    custom: tuple[tuple[str, str], ...] = ()
    gpgkey: str | None = None
    gpgcheck: bool = True
    arch: str = ARCH
    package_cache: bool = True  # use the shared package cache (xcpimg.cache); --no-cache: not at all

    def srcurl_for(self, layer: str, dist: str) -> str:
        return self.layer_srcurls.get(layer) or self.srcurl or default_srcurl(dist)


def parse_define_repo(value: str) -> tuple[str, str]:
    """Parse ``-D NICK!URL``."""
    nick, bang, url = value.partition("!")
    if not bang or not nick.strip() or not url.strip():
        raise UsageError(f"-D/--define-repo expects NICK!URL, got {value!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", nick):
        raise UsageError(f"-D/--define-repo: invalid repo nickname {nick!r}")
    return nick, as_url(url)


def parse_layer_srcurl(value: str) -> tuple[str, str]:
    """Parse ``LAYER=URL`` (what ``--srcurl:LAYER URL`` becomes)."""
    layer, eq, url = value.partition("=")
    if not layer.strip():
        raise UsageError("--srcurl:LAYER names no layer")
    if not eq or not url.strip():
        raise UsageError(f"--srcurl:{layer} needs a URL")
    return layer, as_url(url)


def add_repo_arguments(parser: argparse.ArgumentParser) -> None:
    """The original scripts' repository options."""
    parser.add_argument("--srcurl", metavar="URL", help="source URL of the XCP-ng repos "
                        "(default https://updates.xcp-ng.org/<major>/<dist>); a local path works too")
    parser.add_argument("--srcurl-layer", metavar="LAYER=URL", action="append", default=[],
                        help="source URL for one layer's repo; also spelled --srcurl:LAYER URL")
    parser.add_argument("-D", "--define-repo", metavar="NICK!URL", action="append", default=[],
                        help="add a custom repository (rendered from CUSTOMREPO.tmpl)")
    parser.add_argument("--gpgkey", metavar="URL", help="RPM signing key for the layers' repos "
                        "(default: the XCP-ng key shipped in the base layer)")
    parser.add_argument("--nogpgcheck", action="store_true",
                        help="do not check package signatures (unsigned development repos)")
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor fill the shared package cache (~/.cache/xcpimg/packages)")


def repo_config_from_args(args: argparse.Namespace) -> RepoConfig:
    layer_urls = dict(parse_layer_srcurl(v) for v in getattr(args, "srcurl_layer", []) or [])
    custom = tuple(parse_define_repo(v) for v in getattr(args, "define_repo", []) or [])
    srcurl = getattr(args, "srcurl", None)
    gpgkey = getattr(args, "gpgkey", None)
    return RepoConfig(srcurl=as_url(srcurl) if srcurl else None, layer_srcurls=layer_urls,
                      custom=custom, gpgkey=as_url(gpgkey) if gpgkey else None,
                      gpgcheck=not getattr(args, "nogpgcheck", False),
                      package_cache=not getattr(args, "no_cache", False))


def _override_key(text: str, key: str, value: str) -> str:
    return re.sub(rf"(?m)^(\s*{key}\s*=).*$", lambda m: f"{m.group(1)}{value}", text)


def write_repo_files(layers: Layers, cfg: RepoConfig, reposdir: Path) -> list[str]:
    """Render one .repo file per repo layer and custom repo into *reposdir*; return repo ids."""
    reposdir.mkdir(parents=True, exist_ok=True)
    repo_layers = {t.parent.name: t for t in reversed(layers.find_all("yum-repos.conf.tmpl"))}
    unknown = sorted(set(cfg.layer_srcurls) - set(repo_layers))
    if unknown:
        raise UsageError(f"--srcurl:{unknown[0]} names no repo layer of {':'.join(layers.names)}")
    gpgkey = cfg.gpgkey or default_gpgkey(layers)
    base_vars = {"arch": cfg.arch, "dist": layers.dist, "gpgkey": gpgkey,
                 "gpgcheck": int(cfg.gpgcheck)}
    ids: list[str] = []
    for layer in [d.name for d in layers.dirs if d.name in repo_layers]:
        text = render_file(repo_layers[layer], {**base_vars, "layer": layer,
                                                "srcurl": cfg.srcurl_for(layer, layers.dist)})
        if cfg.gpgkey:
            text = _override_key(text, "gpgkey", cfg.gpgkey)
        if not cfg.gpgcheck:
            text = _override_key(text, "gpgcheck", "0")
        (reposdir / f"{layer}.repo").write_text(text)
        ids += re.findall(r"(?m)^\s*\[([^\]]+)\]", text)
    if cfg.custom:
        tmpl = layers.find("CUSTOMREPO.tmpl")
        for nick, url in cfg.custom:
            text = render_file(tmpl, {**base_vars, "repoid": nick, "repourl": url})
            (reposdir / f"custom-{nick}.repo").write_text(text)
            ids.append(nick)
    return ids


def default_gpgkey(layers: Layers) -> str:
    """URL of the XCP-ng key shipped in the layers (offline machines cannot fetch xcp-ng.org's)."""
    key = layers.find_optional("RPM-GPG-KEY-xcpng")
    return key.resolve().as_uri() if key else "https://xcp-ng.org/RPM-GPG-KEY-xcpng"
