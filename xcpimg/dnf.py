"""dnf, isolated: downloads and installroot installs from the layers' repositories.

dnf runs with configuration rendered from the layers (``yumdl.conf.tmpl`` for
downloads, ``yum.conf.tmpl`` for installs), its own repos dir, cache, log and
persist dirs, and an empty plugin-config and vars dir: nothing of the host's
dnf/yum state is read or written.

Package names are validated (`check_package_names`) and always passed after
``--``, so no name becomes an option. ``dnf download`` does not check
signatures: every downloaded RPM goes through the private keyring of
xcpimg.verify before the caller sees it (unless ``--nogpgcheck``).

Packages come through the shared package cache (xcpimg.cache, unless the
repository configuration says ``--no-cache``): dnf resolves and prints the URLs
(``dnf download --url``), xcpimg.fetch gets the files from the cache or the
network. An installroot install is pre-seeded the same way: the packages are put
where dnf keeps its downloads (``<cachedir>/<repo>-<hash>/packages``), and dnf,
finding them whole (it checks their checksums), downloads nothing.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .cache import PackageCache
from .errors import BuildError, ToolError, UsageError
from .fetch import FetchStats, fetch_packages, repo_expectations
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

_URL_RE = re.compile(r"(?:https?|file)://\S+\.rpm")

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
        self.cache = PackageCache() if cfg.package_cache else None
        self.fetched = FetchStats()  # what the last download or install pre-seed fetched
        self._resolved: dict[tuple[tuple[str, ...], tuple[str, ...], bool], list[str]] = {}

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

    def package_urls(self, argv: Sequence[str], names: Sequence[str], resolve: bool) -> list[str]:
        """The URLs of the packages dnf picks for *names* (with *resolve*: and their dependencies)."""
        key = (tuple(argv), tuple(names), resolve)
        if key in self._resolved:
            return self._resolved[key]
        cmd = [*argv, "download", "--url", *(["--resolve"] if resolve else []), "--", *names]
        out = self._run(cmd, f"resolve {' '.join(names)}" if len(names) < 8 else f"resolve {len(names)} packages")
        urls = [line.strip() for line in out.splitlines() if _URL_RE.fullmatch(line.strip())]
        if not urls:
            raise BuildError(f"dnf resolved {' '.join(names)} to no package URL")
        self._resolved[key] = list(dict.fromkeys(urls))
        return self._resolved[key]

    def prefetch(self, wanted: Sequence[tuple[Sequence[str], bool]]) -> None:
        """Resolve each (names, resolve) of *wanted* and fetch all their packages into the cache in
        one batch (largest first, every connection busy), so that the :meth:`download` calls that
        follow find them there. Nothing to do without the cache."""
        if self.cache is None:
            return
        argv = self._argv("yumdl.conf.tmpl", self.dirs["dlroot"])
        urls: list[str] = []
        try:
            for names, resolve in wanted:
                urls += self.package_urls(argv, check_package_names(names), resolve)
        except BuildError as exc:  # the download that needs it reports it, in the build's order
            log.debug("prefetch skipped: %s", exc)
            return
        expects = repo_expectations(self.cachedir, self.repo_ids, self.baseurls())
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix="prefetch-") as tmp:
            self.fetched = fetch_packages(list(dict.fromkeys(urls)), expects, Path(tmp), self.cache)
        self._prune()

    def download(self, names: Iterable[str], dest: Path, resolve: bool = False) -> list[Path]:
        """Download *names* (and with *resolve* their dependency closure) into *dest*.

        Every RPM in *dest* is then checked against the repositories' keys (BuildError
        naming the first bad one) unless signatures are off.
        """
        names = check_package_names(names)
        dest.mkdir(parents=True, exist_ok=True)
        urls = self.package_urls(self._argv("yumdl.conf.tmpl", self.dirs["dlroot"]), names, resolve)
        expects = repo_expectations(self.cachedir, self.repo_ids, self.baseurls())
        self.fetched = fetch_packages(urls, expects, dest, self.cache)
        self._prune()
        if self.keyring is not None:
            self.keyring.check(sorted(dest.glob("*.rpm")))
        got = sorted(self.fetched.paths)
        log.info("got %d package(s) into %s", len(got), dest)
        return got

    def _prune(self) -> None:
        if self.cache is not None and self.fetched.downloaded:
            from .cache import DEFAULT_MAX_SIZE
            self.cache.prune(DEFAULT_MAX_SIZE)

    def preseed(self, argv: Sequence[str], names: Sequence[str], cachedir: Path) -> None:
        """Put the packages an install of *names* needs into dnf's package dirs under *cachedir*
        (from the cache, or downloaded into it); ``file://`` repositories are left to dnf."""
        assert self.cache is not None
        urls = self.package_urls(argv, names, resolve=True)
        baseurls = {repo: url.rstrip("/") + "/" for repo, url in self.baseurls().items()}
        expects = repo_expectations(cachedir, self.repo_ids, self.baseurls())
        by_dir: dict[Path, list[str]] = {}
        for url in urls:
            if url.startswith("file:"):
                continue
            repo = next((r for r, base in baseurls.items() if url.startswith(base)), None)
            dirs = sorted(cachedir.glob(f"{repo}-*/repodata")) if repo else []
            if dirs:
                by_dir.setdefault(dirs[0].parent / "packages", []).append(url)
        total = FetchStats()
        for pkgdir, group in by_dir.items():
            got = fetch_packages(group, expects, pkgdir, self.cache)
            total.downloaded += got.downloaded
            total.downloaded_bytes += got.downloaded_bytes
            total.cached += got.cached
            total.paths += got.paths
        self.fetched = total
        self._prune()

    def install(self, root: Path, names: Iterable[str]) -> None:
        """Install *names* into the root tree *root* (``dnf --installroot``).

        dnf keeps its cache, logs and history inside the installroot, in their standard
        places (``/var/cache/dnf``, ``/var/log``, ``/var/lib/dnf``): a caller that packs the
        root removes them.
        """
        names = check_package_names(names)
        argv = self._argv("yum.conf.tmpl", root, state_in_root=True)
        if self.cache is not None and any(u.startswith(("http:", "https:")) for u in self.baseurls().values()):
            self.preseed(argv, names, root / IN_ROOT_DIRS["cachedir"].lstrip("/"))
        argv = [*argv, "install", "--setopt=install_weak_deps=False"]
        self._run([*argv, "--", *names], f"install {len(names)} package(s) into {root}")
