"""Helpers for the release-tooling tests: fixture ISOs built once per run, the CLI in a
subprocess with a private TMPDIR, and a one-line-error check."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xcpimg import compress
from xcpimg.fixture_repo import ensure_fixture_repo
from xcpimg.iso.build import IsoOptions, build_iso
from xcpimg.layers import resolve
from xcpimg.media.answerfile import SAMPLE
from xcpimg.pytest_plugin import shared_build
from xcpimg.repos import RepoConfig

#: the sample answerfile with a comment (kept through the root-attribute rewrite, see test_answerfile)
ANSWERFILE = SAMPLE.replace(b"?>\n", b"?>\n<!-- test answerfile -->\n", 1)
assert ANSWERFILE != SAMPLE


def fixture_iso(tmp_path_factory: pytest.TempPathFactory, probe: Path, spec: str, **kwargs: Any) -> Path:
    """An ISO of *spec* built from the fixture repository with the probe initrd, once per run."""
    fx = ensure_fixture_repo()
    dist = spec.split(":")[0]
    flavour = "-".join(f"{k}" for k in sorted(kwargs))
    name = f"media-{spec.replace(':', '_')}{'-' + flavour if flavour else ''}.iso"

    def build(out: Path) -> None:
        build_iso(IsoOptions(layers=resolve(spec), install_img=probe, output=out, volid=f"XCP-ng {dist}",
                             repo_config=RepoConfig(srcurl=fx.srcurl(dist), gpgkey=fx.gpgkey_url),
                             force=True, **kwargs))
    return shared_build(tmp_path_factory, name, build)


def probe_with(tmp_path_factory: pytest.TempPathFactory, probe: Path, method: str) -> Path:
    """The probe initrd recompressed with *method* (one stream), once per run."""
    def build(out: Path) -> None:
        with open(out, "wb") as f, compress.open_compressor(f, method) as stream:
            stream.write(gzip.decompress(probe.read_bytes()))
    return shared_build(tmp_path_factory, f"probe-{method}.img", build)


def cli(command: str, args: list[str | Path], tmpdir: Path, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``xcpimg COMMAND ARGS`` in a subprocess (venv bin first on PATH, TMPDIR=*tmpdir*)."""
    base = {k: v for k, v in os.environ.items() if k not in ("XCPIMG_DEBUG",)}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    base["TMPDIR"] = str(tmpdir)
    return subprocess.run([sys.executable, "-m", "xcpimg.cli", command, *map(str, args)],
                          env={**base, **(env or {})}, cwd=cwd, capture_output=True, text=True, timeout=900,
                          check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], command: str, code: int,
                          *words: str) -> str:
    """A failed run: exit *code*, nothing on stdout, one error line naming *words*, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stdout == "", proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"xcpimg {command}: error:")]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def inspect_json(iso: Path, tmpdir: Path, *extra: str) -> dict[str, Any]:
    proc = cli("inspect", [iso, "--json", *extra], tmpdir)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def diff_json(a: Path, b: Path, tmpdir: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = cli("diff", [a, b, "--json", *extra], tmpdir)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)
