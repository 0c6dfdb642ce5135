"""pytest plugin: options, markers, session fixtures and the build-and-boot matrix.

Build steps are session fixtures; each parametrized configuration builds one
ISO, which the boot tests start under BIOS and UEFI from CD and USB. Builds are
shared between xdist workers through a file lock on a directory above
``tmp_path_factory.getbasetemp()``, so ``pytest -n auto`` builds nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
from filelock import FileLock

from .boot import BOOT_MODES, DISK_BOOT_MODES, PXE_BOOT_MODES, BootResult
from .fsutil import remove_tree
from .layers import resolve
from .repos import RepoConfig, as_url

DEFAULT_CONFIGS = ("8.2:updates", "8.2:testing", "8.3:base", "8.3:testing", "8.3:testing@netinstall",
                   "8.3:testing@unattended")
EXPENSIVE_CONFIGS = ("8.2:updates", "8.3:testing")
EXPENSIVE_BOOT_MODES = ("bios-cd", "uefi-usb")
#: configurations the default matrix also network-boots (PXE_BOOT_MODES); the others get
#: the four disk modes only, which keeps the default matrix's boot count (and CI time) bounded
PXE_CONFIGS = ("8.3:testing", "8.3:testing@netinstall")
#: the default modes of unattended media: one BIOS and one UEFI path (the media differ from the
#: full ISO's only in install.img and the boot lines, which every mode reads the same way)
UNATTENDED_BOOT_MODES = ("bios-cd", "uefi-usb")


@dataclass(frozen=True)
class MatrixConfig:
    """One ISO of the matrix: a layer spec, full, netinstall or unattended (an answerfile in
    install.img), with the downstream overlay layers (--xcp-layer) laid over it."""

    spec: str
    netinstall: bool = False
    unattended: bool = False
    overlays: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, overlays: tuple[str, ...] = ()) -> MatrixConfig:
        spec, _, flavour = text.partition("@")
        if flavour not in ("", "netinstall", "unattended"):
            raise pytest.UsageError(f"--xcp-config {text!r}: unknown flavour {flavour!r} "
                                    "(@netinstall or @unattended)")
        return cls(spec, flavour == "netinstall", flavour == "unattended", overlays)

    @property
    def dist(self) -> str:
        return self.spec.split(":")[0]

    @property
    def flavour(self) -> str:
        return "netinstall" if self.netinstall else "unattended" if self.unattended else "full"

    @property
    def layer_spec(self) -> str:
        """The layer search path built: the overlays right after the dist, so their files win."""
        dist, _, rest = self.spec.partition(":")
        return ":".join([dist, *self.overlays, *([rest] if rest else [])])

    @property
    def base_label(self) -> str:
        """``SPEC[@flavour]``, as --xcp-config names it (without the overlays)."""
        return self.spec + ("" if self.flavour == "full" else f"@{self.flavour}")

    @property
    def label(self) -> str:
        return self.base_label + "".join(f"+{Path(o).name}" for o in self.overlays)

    @property
    def slug(self) -> str:
        return self.label.replace(":", "_").replace("@", "-").replace("/", "_").replace("+", "-")


@dataclass(frozen=True)
class RepoSource:
    """Where the matrix takes its packages: the fixture repository or a real mirror."""

    root: str
    layout: str  # "major" (<root>/8/8.3/...) or "flat" (<root>/8.3/..., as mirror-repos lays it out)
    gpgkey: str | None  # None: the layers' own key (XCP-ng's)
    linstor_root: str | None = None
    gpgcheck: bool = True

    def srcurl(self, dist: str) -> str:
        major, minor = dist.split(".")[:2]
        return f"{self.root}/{major}/{major}.{minor}" if self.layout == "major" else f"{self.root}/{dist}"

    def repo_config(self, spec: str) -> RepoConfig:
        """Repositories for the layer spec *spec* (a MatrixConfig's layer_spec), pointing at this source."""
        layers = resolve(spec)
        layer_urls = {}
        if self.linstor_root and "linstor" in layers.names:
            layer_urls["linstor"] = f"{self.linstor_root}/{layers.dist.split('.')[0]}/{layers.dist}"
        return RepoConfig(srcurl=self.srcurl(layers.dist), layer_srcurls=layer_urls, gpgkey=self.gpgkey,
                          gpgcheck=self.gpgcheck)


def detect_layout(root: str, dist: str = "8.3") -> str:
    """Tell ``<root>/8/8.3/...`` (updates.xcp-ng.org, fixture) from ``<root>/8.3/...`` (mirror-repos)."""
    from urllib.parse import urlparse
    major = dist.split(".")[0]
    probe = "base/x86_64/repodata/repomd.xml"
    url = urlparse(root)
    if url.scheme in ("", "file"):
        base = Path(url.path)
        if (base / major / dist / probe).is_file():
            return "major"
        if (base / dist / probe).is_file():
            return "flat"
        raise pytest.UsageError(f"--repo-root {root}: neither {major}/{dist}/{probe} nor {dist}/{probe} exists")
    import requests
    for layout, path in (("major", f"{major}/{dist}/{probe}"), ("flat", f"{dist}/{probe}")):
        try:
            if requests.head(f"{root.rstrip('/')}/{path}", timeout=20).ok:
                return layout
        except requests.RequestException:
            pass
    raise pytest.UsageError(f"--repo-root {root}: no {dist} base repository found in either layout")


# ---------------------------------------------------------------- options and markers

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xcpimg", "XCP-ng media build-and-boot matrix")
    group.addoption("--repo-root", default=os.environ.get("XCPTEST_REPOROOT"), metavar="URL",
                    help="root of an XCP-ng repository tree (env XCPTEST_REPOROOT; "
                         "default: the embedded fixture repository)")
    group.addoption("--repo-gpgkey", default=os.environ.get("XCPTEST_GPGKEY") or None, metavar="URL",
                    help="RPM signing key of the --repo-root packages (env XCPTEST_GPGKEY; default: the "
                         "layers' XCP-ng key; the fixture repository always uses its own)")
    group.addoption("--repo-nogpgcheck", action="store_true",
                    default=os.environ.get("XCPTEST_NOGPGCHECK", "") not in ("", "0"),
                    help="do not check the signatures of the --repo-root packages (env XCPTEST_NOGPGCHECK=1)")
    group.addoption("--xcp-config", action="append", default=[], metavar="SPEC[@netinstall|@unattended]",
                    help=f"layer spec to build and boot (repeatable; default {' '.join(DEFAULT_CONFIGS)})")
    group.addoption("--xcp-layer", action="append", default=[], metavar="PATH",
                    help="a downstream overlay layer laid over every configuration, right after its dist "
                         "(repeatable; env XCPTEST_LAYERS, paths separated by ':')")
    group.addoption("--xcp-report", default=None, metavar="FILE",
                    help="write the boot results (configuration, mode, outcome, stage times, logs) as JSON")
    group.addoption("--boot-modes", default=None, metavar="MODES",
                    help=f"comma-separated boot modes, each run for every configuration (known: "
                         f"{','.join(BOOT_MODES)}; default: {','.join(DISK_BOOT_MODES)}, plus "
                         f"{','.join(PXE_BOOT_MODES)} for {' and '.join(PXE_CONFIGS)})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "expensive: builds install.img (needs root, slow)")
    config.addinivalue_line("markers", "boot: boots media in QEMU")
    overlay_layers(config)  # a layer that does not exist is a usage error before collection
    report = config.getoption("xcp_report", None)
    if report and not hasattr(config, "workerinput"):  # the controller (xdist workers report to it)
        config.pluginmanager.register(ResultsReport(Path(report)), "xcpimg-results-report")


def overlay_layers(config: pytest.Config) -> tuple[str, ...]:
    """The --xcp-layer paths (else $XCPTEST_LAYERS), absolute; a path that is no directory is a usage error."""
    given = list(config.getoption("xcp_layer")) or [
        p for p in os.environ.get("XCPTEST_LAYERS", "").split(os.pathsep) if p]
    out = []
    for path in given:
        if not Path(path).is_dir():
            raise pytest.UsageError(f"--xcp-layer {path}: no such layer directory")
        out.append(str(Path(path).resolve()))
    return tuple(out)


def _configs(config: pytest.Config, overlays: tuple[str, ...]) -> list[MatrixConfig]:
    return [MatrixConfig.parse(c, overlays) for c in (config.getoption("xcp_config") or DEFAULT_CONFIGS)]


def _boot_modes(config: pytest.Config) -> list[str] | None:
    """The modes given with --boot-modes, or None for the default matrix."""
    option = config.getoption("boot_modes")
    if option is None:
        return None
    modes = [m.strip() for m in option.split(",") if m.strip()]
    bad = [m for m in modes if m not in BOOT_MODES]
    if bad:
        raise pytest.UsageError(f"--boot-modes: unknown mode {bad[0]!r} (known: {', '.join(BOOT_MODES)})")
    return modes


def matrix_modes(cfg: MatrixConfig, chosen: list[str] | None) -> list[str]:
    """Boot modes of *cfg*: all *chosen* ones, or by default the disk modes, plus PXE for PXE_CONFIGS."""
    if chosen is not None:
        return chosen
    if cfg.unattended:
        return list(UNATTENDED_BOOT_MODES)
    return list(BOOT_MODES if cfg.base_label in PXE_CONFIGS else DISK_BOOT_MODES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``xcp_config`` and ``boot_mode`` over the matrix."""
    expensive = metafunc.definition.get_closest_marker("expensive") is not None
    explicit = {name for m in metafunc.definition.iter_markers("parametrize")
                for name in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}
    overlays = overlay_layers(metafunc.config)
    configs = _configs(metafunc.config, overlays)
    if expensive:
        wanted = [MatrixConfig.parse(c, overlays) for c in EXPENSIVE_CONFIGS]
        configs = [c for c in configs if c in wanted] or wanted
    chosen = _boot_modes(metafunc.config)

    def modes(cfg: MatrixConfig) -> list[str]:
        found = matrix_modes(cfg, chosen)
        return [m for m in found if m in EXPENSIVE_BOOT_MODES] if expensive else found
    names = [n for n in metafunc.fixturenames if n not in explicit]
    if "xcp_config" in names and "boot_mode" in names:
        pairs = [(c, m) for c in configs for m in modes(c)]
        metafunc.parametrize(("xcp_config", "boot_mode"), pairs, ids=[f"{c.label}-{m}" for c, m in pairs],
                             scope="session")
    elif "xcp_config" in names:
        metafunc.parametrize("xcp_config", configs, ids=[c.label for c in configs], scope="session")
    elif "boot_mode" in names:
        metafunc.parametrize("boot_mode", chosen if chosen is not None else list(BOOT_MODES))


# ---------------------------------------------------------------- shared builds

def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory all xdist workers of this run share (the parent of the workers' base temps)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "xcpimg-shared"
    path.mkdir(exist_ok=True)
    return path


def shared_build(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """Build *name* once per test run, whatever the number of xdist workers.

    *build* gets a temporary path beside the final one; it is renamed into place
    when the build succeeds. A failed build is retried by the next worker that asks.
    """
    root = shared_dir(tmp_path_factory)
    final = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not final.exists():
            tmp = root / f".{name}.tmp"
            if tmp.exists():
                remove_tree(tmp)
            build(tmp)
            tmp.rename(final)
    return final


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def repo_source(request: pytest.FixtureRequest) -> RepoSource:
    """The repository tree the matrix builds from."""
    root = request.config.getoption("repo_root")
    if root:
        url = as_url(root)
        key = request.config.getoption("repo_gpgkey")
        return RepoSource(root=url, layout=detect_layout(url), gpgkey=as_url(key) if key else None,
                          gpgcheck=not request.config.getoption("repo_nogpgcheck"))
    from .fixture_repo import ensure_fixture_repo
    repo = ensure_fixture_repo()
    return RepoSource(root=repo.root.as_uri(), layout="major", gpgkey=repo.gpgkey_url,
                      linstor_root=(repo.root / "linstor").as_uri())


@pytest.fixture(scope="session")
def probe_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe initrd: the cheap tier's stand-in for install.img."""
    from .probe import build_probe_initrd
    return shared_build(tmp_path_factory, "probe-initrd.img", build_probe_initrd)


@pytest.fixture(scope="session")
def xcp_iso(xcp_config: MatrixConfig, repo_source: RepoSource, probe_initrd: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ISO of one matrix configuration, built once (with the probe initrd as install.img)."""
    return build_matrix_iso(xcp_config, repo_source, probe_initrd, tmp_path_factory, "probe")


def build_matrix_iso(cfg: MatrixConfig, source: RepoSource, install_img: Path,
                     tmp_path_factory: pytest.TempPathFactory, flavour: str) -> Path:
    from .iso.build import IsoOptions, build_iso

    def build(out: Path) -> None:
        volid = f"XCPNG_{cfg.dist.replace('.', '')}_{cfg.flavour[:4].upper()}"
        answerfile = None
        if cfg.unattended:
            from .media.answerfile import SAMPLE
            answerfile = shared_dir(tmp_path_factory) / "answerfile.xml"
            if not answerfile.exists():
                answerfile.write_bytes(SAMPLE)
        build_iso(IsoOptions(layers=resolve(cfg.layer_spec), install_img=install_img, output=out, volid=volid,
                             repo_config=source.repo_config(cfg.layer_spec),
                             netinstall=cfg.netinstall, answerfile=answerfile, force=True))
    return shared_build(tmp_path_factory, f"{cfg.slug}-{flavour}.iso", build)


def expected_cmdline_words(cfg: MatrixConfig) -> list[str]:
    """Words the installer's command line must hold for *cfg* (an unattended one must also lack
    the gpg-check words, which moved into its answerfile: see check_unattended)."""
    from .iso.build import installer_bootargs
    from .media.answerfile import URL
    words = {"full": ["no-repo-gpgcheck"], "netinstall": ["netinstall"],
             "unattended": [f"answerfile={URL}", "install"]}[cfg.flavour]
    return words + installer_bootargs(resolve(cfg.layer_spec)).split()


@pytest.fixture(scope="session")
def boot_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where serial logs, QEMU stderr and screendumps of failed boots are kept."""
    path = shared_dir(tmp_path_factory) / "boot-logs"
    path.mkdir(exist_ok=True)
    return path


def failure_details(logdir: Path) -> str:
    """QEMU's command line, its stderr tail and where the serial log and screendump are."""
    def tail(name: str, lines: int) -> str:
        path = logdir / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else "(none)"
    shots = sorted(str(p) for p in logdir.glob("*.png")) or ["(none)"]
    return (f"QEMU command line: {tail('qemu-argv.txt', 5)}\nQEMU stderr (tail):\n{tail('qemu-stderr.log', 10)}\n"
            f"serial log: {logdir / 'serial.log'}\nscreendump: {', '.join(shots)}")


@lru_cache(maxsize=16)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    from .media.reader import sha256_file
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """sha256 of *path* (computed once per version of the file)."""
    st = path.stat()
    return _sha256(path, st.st_size, st.st_mtime_ns)


def boot_and_check(iso: Path, mode: str, cfg: MatrixConfig, logdir: Path, label: str,
                   until: str = "init", record: Callable[[str, object], None] | None = None) -> BootResult:
    """Boot *iso* in *mode* to *until* (``init`` for the probe initrd, ``installer`` for a real
    install.img) and check the kernel command line the boot reported.

    *record* (pytest's ``record_property``) receives the ISO's sha256, the accel and the
    seconds to each stage reached, for ``--junitxml`` reports, whether the boot succeeds or not.
    """
    from .boot import BootFailure, boot_in_mode
    from .errors import BootError
    where = logdir / f"{label}-{mode}"
    if record:
        record("xcp_config", cfg.label)
        record("boot_mode", mode)
        record("logdir", str(where))
        record("iso_sha256", file_sha256(iso))
    try:
        result = boot_in_mode(iso, mode, where, until)
    except BootError as exc:
        if record and isinstance(exc, BootFailure):
            _record_stages(record, exc.result)
        pytest.fail(f"{cfg.label} {mode}: {exc}\n{failure_details(where)}", pytrace=False)
    if record:
        _record_stages(record, result)
    missing = [w for w in expected_cmdline_words(cfg) if w not in (result.cmdline or "").split()]
    assert not missing, f"{cfg.label} {mode}: kernel command line {result.cmdline!r} lacks {missing}"
    if cfg.unattended:
        from .media.answerfile import check_unattended
        problems = check_unattended(Path(result.serial_log).read_text(errors="replace"), result.cmdline,
                                    "installation")
        assert not problems, f"{cfg.label} {mode}: {'; '.join(problems)}"
    return result


def _record_stages(record: Callable[[str, object], None], result: BootResult) -> None:
    record("accel", result.accel)
    for stage, seconds in result.reached.items():
        record(f"stage_{stage}_s", seconds)
    record("boot_s", result.seconds)


# ---------------------------------------------------------------- host prerequisites

def need(ok: bool, what: str) -> None:
    """Skip the calling test unless *ok*; when the environment variable CI is set, fail it
    instead, so a CI run never silently tests less."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI: {what} (install what the tests need; CI must not skip tests)", pytrace=False)
    pytest.skip(what)


def need_root(why: str) -> None:
    """The test runs as root (building install.img needs it)."""
    need(os.geteuid() == 0, f"needs root: {why}")


# ---------------------------------------------------------------- the results report

#: properties a boot test records (record_property) that the report keeps
REPORT_KEYS = ("xcp_config", "boot_mode", "logdir", "iso_sha256", "accel", "boot_s")


class ResultsReport:
    """--xcp-report: the boot tests' results, written as JSON when the session ends. Registered on
    the controller only, which gets every test's report (and its recorded properties) from xdist."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, dict[str, object]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "xcp_config" not in props or (report.when != "call" and report.outcome == "passed"):
            return
        entry = self.results.setdefault(report.nodeid, {"test": report.nodeid})
        entry.update({k: props[k] for k in REPORT_KEYS if k in props})
        entry["stages"] = {k[len("stage_"):-len("_s")]: v for k, v in props.items()
                           if k.startswith("stage_") and k.endswith("_s")}
        if report.outcome != "passed" or "outcome" not in entry:
            entry["outcome"] = report.outcome
            if report.failed:
                entry["reason"] = str(report.longrepr).strip().splitlines()[0][:300] if report.longrepr else ""

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        import json
        self.path.write_text(json.dumps(sorted(self.results.values(), key=lambda e: str(e["test"])), indent=1)
                             + "\n")
