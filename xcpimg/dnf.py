"""dnf, isolated: downloads and installroot installs from the layers' repositories.

dnf runs with configuration rendered from the layers (``yumdl.conf.tmpl`` for
downloads, ``yum.conf.tmpl`` for installs), its own repos dir, cache, log and
persist dirs, and an empty plugin-config and vars dir: nothing of the host's
dnf/yum state is read or written.

Package names are validated (`check_package_names`) and always passed after
``--``, so no name becomes an option. ``dnf download`` does not check
signatures: every downloaded RPM goes through the private keyring of
xcpimg.verify before the caller sees it (unless ``--nogpgcheck``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import BuildError, ToolError, UsageError
from .layers import Layers
from .render import render_file
from .repos import RepoConfig, write_repo_files
from .run import run
from .verify import Keyring, key_urls

log = logging.getLogger("xcpimg.dnf")

#: where the rpm database lives inside an installroot (as on XCP-ng hosts)
RPMDB_PATH = "/var/lib/rpm"

#: dnf state inside an installroot: given in the config file, dnf prefixes them with the installroot
IN_ROOT_DIRS = {"cachedir": "/var/cache/dnf", "logdir": "/var/log", "persistdir": "/var/lib/dnf"}

#: a package name, ``name.arch``, ``name-version``, a provide like ``perl(Foo::Bar)`` or a file path
_NAME_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^:-]*(\([A-Za-z0-9._+:/-]*\))?|/[A-Za-z0-9._+/-]+")

_MISSING_RE = re.compile(r"No (?:package|match for argument:?) ([^\s]+)(?: available)?", re.I)


def check_package_names(names: Iterable[str], where: str = "package name") -> list[str]:
    """*names* as a list; UsageError for one that could be taken as an option or holds odd characters."""
    names = list(names)
    for name in names:
        if not _NAME_RE.fullmatch(name):
            raise UsageError(f"invalid {where} {name!r}: a package name starts with a letter, digit, '_' "
                             f"or '+' and holds no whitespace or shell characters")
    return names


class Dnf:
    """dnf bound to one layer search path and repo configuration, working in *workdir*."""

    def __init__(self, layers: Layers, cfg: RepoConfig, workdir: Path):
        self.layers = layers
        self.cfg = cfg
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.dirs = {name: workdir / name for name in ("repos.d", "log", "persist", "empty", "dlroot", "home", "tmp")}
        for d in self.dirs.values():
            d.mkdir(exist_ok=True)
        # Debian's rpm keeps its database in ~/.rpmdb; an installroot needs the standard place
        (self.dirs["home"] / ".rpmmacros").write_text(f"%_dbpath {RPMDB_PATH}\n")
        self.cachedir = workdir / "cache"
        self.cachedir.mkdir(exist_ok=True)
        self.variables = {
            "arch": cfg.arch, "dist": layers.dist, "reposdir": self.dirs["repos.d"],
            "cachedir": self.cachedir, "logdir": self.dirs["log"], "persistdir": self.dirs["persist"],
            "enable_plugins": 1, "gpgcheck": int(cfg.gpgcheck),
        }
        self.repo_ids = write_repo_files(layers, cfg, self.dirs["repos.d"])
        if not self.repo_ids:
            raise BuildError(f"layers {':'.join(layers.names)} define no repository")
        self.keyring: Keyring | None = None
        if cfg.gpgcheck:
            self.keyring = Keyring(self.gpgkeys(), workdir / "keyring")
        else:
            log.warning("warning: package signatures are not checked (--nogpgcheck)")

    def _config(self, template: str, state_in_root: bool = False) -> Path:
        conf = self.workdir / template.removesuffix(".tmpl")
        if not conf.exists():
            variables = {**self.variables, **(IN_ROOT_DIRS if state_in_root else {})}
            conf.write_text(render_file(self.layers.find(template), variables))
        return conf

    def _argv(self, template: str, installroot: Path, state_in_root: bool = False) -> list[str]:
        """dnf's argv; with *state_in_root*, cache, logs and history go inside the installroot."""
        argv = ["dnf", "-y", f"--config={self._config(template, state_in_root)}",
                f"--releasever={self.layers.dist}", f"--installroot={installroot}", f"--forcearch={self.cfg.arch}",
                f"--setopt=reposdir={self.variables['reposdir']}"]
        if not state_in_root:
            # command-line values are taken as they are; config-file values get the installroot prefixed
            argv += [f"--setopt={key}={self.variables[key]}" for key in IN_ROOT_DIRS]
        argv += [f"--setopt=varsdir={self.dirs['empty']}", f"--setopt=pluginconfpath={self.dirs['empty']}",
                 "--setopt=skip_if_unavailable=False",
                 # only the download plugin: others (completion cache...) write host state
                 "--disableplugin=*", "--enableplugin=download"]
        if not self.cfg.gpgcheck:
            argv.append("--nogpgcheck")
        return argv

    def _run(self, argv: Sequence[str], what: str) -> str:
        # TMPDIR: what a killed dnf leaves behind goes away with the work dir
        env = {"HOME": str(self.dirs["home"]), "TMPDIR": str(self.dirs["tmp"])}
        try:
            proc = run(argv, what=what, env=env)
        except ToolError as exc:
            raise self._explain(exc, what) or exc from None
        return proc.stdout.decode(errors="replace")

    def _explain(self, exc: ToolError, what: str) -> BuildError | None:
        """A one-line error for the failures dnf words poorly: missing package, bad signature."""
        missing = _MISSING_RE.findall(exc.stderr_tail)
        if missing:
            return BuildError(f"{what}: package {missing[0]} is not in the repositories "
                              f"({', '.join(self.repo_ids)})")
        unreadable = re.findall(r"Failed to download metadata for repo '([^']+)'", exc.stderr_tail)
        if unreadable:
            url = self.baseurls().get(unreadable[0], "?")
            return BuildError(f"{what}: cannot read repository {unreadable[0]} at {url} "
                              f"(no repodata/repomd.xml there, or the host is unreachable)")
        failing = sorted(set(re.findall(r"Failing package is: (\S+)", exc.stderr_tail)))
        if failing:
            keys = re.findall(r"GPG Keys are configured as: (\S+)", exc.stderr_tail)
            more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
            return BuildError(f"signature check failed for package {failing[0]}{more}: not signed by "
                              f"{keys[0] if keys else 'the configured key'} (give the right --gpgkey, "
                              f"or --nogpgcheck for an unsigned repository)")
        return None

    def baseurls(self) -> dict[str, str]:
        """repo id -> baseurl, from the rendered .repo files."""
        urls: dict[str, str] = {}
        for repo_file in sorted(self.dirs["repos.d"].glob("*.repo")):
            current = None
            for line in repo_file.read_text().splitlines():
                section = re.match(r"\s*\[([^\]]+)\]", line)
                if section:
                    current = section.group(1)
                elif current and (m := re.match(r"\s*baseurl\s*=\s*(\S+)", line)):
                    urls.setdefault(current, m.group(1))
        return urls

    def gpgkeys(self) -> list[str]:
        """Key URLs named by the rendered .repo files (``--gpgkey`` replaces them all)."""
        return [url for repo_file in sorted(self.dirs["repos.d"].glob("*.repo"))
                for url in key_urls(repo_file.read_text())]

    def download(self, names: Iterable[str], dest: Path, resolve: bool = False) -> list[Path]:
        """Download *names* (and with *resolve* their dependency closure) into *dest*.

        Every RPM in *dest* is then checked against the repositories' keys (BuildError
        naming the first bad one) unless signatures are off.
        """
        names = check_package_names(names)
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.rpm"))
        argv = [*self._argv("yumdl.conf.tmpl", self.dirs["dlroot"]), "download", f"--destdir={dest}"]
        if resolve:
            argv.append("--resolve")
        self._run([*argv, "--", *names], f"download {' '.join(names)}")
        if self.keyring is not None:
            self.keyring.check(sorted(dest.glob("*.rpm")))
        got = sorted(set(dest.glob("*.rpm")) - before)
        log.info("downloaded %d package(s) into %s", len(got), dest)
        return got

    def install(self, root: Path, names: Iterable[str]) -> None:
        """Install *names* into the root tree *root* (``dnf --installroot``).

        dnf keeps its cache, logs and history inside the installroot, in their standard
        places (``/var/cache/dnf``, ``/var/log``, ``/var/lib/dnf``): a caller that packs the
        root removes them.
        """
        names = check_package_names(names)
        argv = [*self._argv("yum.conf.tmpl", root, state_in_root=True), "install",
                "--setopt=install_weak_deps=False"]
        self._run([*argv, "--", *names], f"install {len(names)} package(s) into {root}")
