"""Publishing outputs without clobbering, cleanup under signals, leftovers of killed runs.

In-process tests pin each mechanism (a file created between check and publish, the
fallbacks without renameat2 or hard links, a kill between the two renames of a forced
tree swap, an interrupt during cleanup); subprocess tests race real ``xcpimg`` builds and
SIGKILL one mid-build.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xcpimg import fsutil
from xcpimg.errors import UsageError
from xcpimg.fixture_repo import FixtureRepo, ensure_fixture_repo

PY = sys.executable
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private TMPDIR for this process (and the subprocesses it starts)."""
    tmp = tmp_path / "TMP"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    return tmp


def dead_owner() -> str:
    """An owner tag of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([PY, "-c", "from xcpimg.fsutil import owner_token; print(owner_token())"],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    return out.strip()


def beside(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------ files

def test_file_created_between_check_and_publish_is_not_replaced(tmp_path: Path, tmpdir_env: Path) -> None:
    out = tmp_path / "out.iso"
    with pytest.raises(UsageError, match="already exists"), fsutil.atomic_output(out) as part:
        part.write_bytes(b"new")
        out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's"
    assert beside(tmp_path) == ["TMP", "out.iso"] and list(tmpdir_env.iterdir()) == []


def test_force_replaces_and_success_publishes_mode(tmp_path: Path, tmpdir_env: Path) -> None:
    out = tmp_path / "out.img"
    out.write_bytes(b"old")
    with fsutil.atomic_output(out, force=True, mode=0o640) as part:
        part.write_bytes(b"new")
    assert out.read_bytes() == b"new" and (out.stat().st_mode & 0o777) == 0o640
    assert beside(tmp_path) == ["TMP", "out.img"] and list(tmpdir_env.iterdir()) == []


@pytest.mark.parametrize("missing", ["renameat2", "renameat2+link"])
def test_no_replace_fallbacks(missing: str, tmp_path: Path, tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without renameat2 (old kernel/libc) link+unlink is used; without hard links an exclusive create."""
    monkeypatch.setattr(fsutil, "_renameat2", lambda *_a: False)
    if "link" in missing:
        def no_link(*_a: object, **_k: object) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    out = tmp_path / "a"
    with fsutil.atomic_output(out) as part:
        part.write_bytes(b"one")
    assert out.read_bytes() == b"one"
    with pytest.raises(UsageError, match="already exists"), fsutil.atomic_output(tmp_path / "b") as part:
        part.write_bytes(b"two")
        (tmp_path / "b").write_bytes(b"theirs")
    assert (tmp_path / "b").read_bytes() == b"theirs"
    assert beside(tmp_path) == ["TMP", "a", "b"]


# ------------------------------------------------------------------------------------ trees

def make_tree(top: Path, marker: str) -> None:
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "f").write_text(marker)


def test_tree_created_meanwhile_is_not_replaced(tmp_path: Path, tmpdir_env: Path) -> None:
    dest = tmp_path / "repo"
    with pytest.raises(UsageError, match="already exists"), fsutil.atomic_tree(dest) as tmp:
        make_tree(tmp, "mine")
        make_tree(dest, "theirs")
    assert (dest / "sub" / "f").read_text() == "theirs"
    assert beside(tmp_path) == ["TMP", "repo"] and list(tmpdir_env.iterdir()) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_forced_tree_swap(exchange: bool, tmp_path: Path, tmpdir_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:
        real = fsutil._renameat2
        monkeypatch.setattr(fsutil, "_renameat2", lambda a, b, flags: flags != fsutil._RENAME_EXCHANGE
                            and real(a, b, flags))
    dest = tmp_path / "repo"
    make_tree(dest, "old")
    with fsutil.atomic_tree(dest, force=True) as tmp:
        make_tree(tmp, "new")
    assert (dest / "sub" / "f").read_text() == "new" and (dest.stat().st_mode & 0o777) == 0o755
    assert beside(tmp_path) == ["TMP", "repo"] and list(tmpdir_env.iterdir()) == []


def test_kill_between_the_two_renames_keeps_the_old_tree(tmp_path: Path, tmpdir_env: Path) -> None:
    """No RENAME_EXCHANGE: the old tree is set aside; SIGKILL before the new one lands; the next run
    puts the old one back."""
    dest = tmp_path / "repo"
    make_tree(dest, "old")
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from xcpimg import fsutil
        fsutil._renameat2 = lambda a, b, flags: False
        real = os.rename
        def rename(a, b):
            real(a, b)
            if str(b).endswith(".old"):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
        with fsutil.atomic_tree(Path({str(dest)!r}), force=True) as tmp:
            (tmp / "f").write_text("new")
    """)
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not dest.exists()  # killed in between: the old tree is aside, the new one still a .part
    assert len([n for n in beside(tmp_path) if n.endswith(".old")]) == 1
    fsutil.sweep_leftovers()
    assert (dest / "sub" / "f").read_text() == "old"
    assert beside(tmp_path) == ["TMP", "repo"] and list(tmpdir_env.iterdir()) == []


# ------------------------------------------------------------------------------------ interrupts

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_cleanup_still_removes_the_tree(sig: signal.Signals, tmpdir_env: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The signal arrives as the staging tree is being removed: removal finishes, then the interrupt."""
    from xcpimg import cli
    old_term = signal.signal(signal.SIGTERM, cli._sigterm)  # the CLI turns SIGTERM into KeyboardInterrupt
    real = fsutil.remove_tree
    seen: list[Path] = []

    def remove_tree(path: Path) -> None:
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler runs here, in the middle of the removal
        seen.append(path)
        real(path)

    monkeypatch.setattr(fsutil, "remove_tree", remove_tree)
    try:
        with pytest.raises(KeyboardInterrupt), fsutil.private_tempdir() as work:
            for i in range(200):
                (work / f"d{i % 10}").mkdir(exist_ok=True)
                (work / f"d{i % 10}" / f"f{i}").write_bytes(b"x" * 1000)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    assert seen == [work] and not work.exists()
    assert list(tmpdir_env.iterdir()) == []


# ------------------------------------------------------------------------------------ sweeping

def test_sweep_removes_only_dead_owners_names(tmp_path: Path, tmpdir_env: Path) -> None:
    dead = dead_owner()
    live = fsutil.owner_token()
    out = tmp_path / "out"
    out.mkdir()
    for owner in (dead, live):
        (tmpdir_env / f"xcpimg-iso-{owner}").mkdir()
        (tmpdir_env / f"xcpimg-iso-{owner}" / "big").write_bytes(b"x")
        part = out / f".x.iso.{owner}.part"
        part.write_bytes(b"half")
        os.symlink(part, tmpdir_env / f"xcpimg-reg-{owner}")
    (tmpdir_env / "xcpimg-not-ours").mkdir()             # no owner tag: never touched
    elsewhere = re.sub(r"h[0-9a-f]{6}-", "h000000-", dead)
    (tmpdir_env / f"xcpimg-iso-{elsewhere}").mkdir()    # another container's or host's pid: never touched
    (tmpdir_env / f"other-{dead}").mkdir()              # not an xcpimg- name
    forged = tmp_path / "precious"
    forged.write_text("keep")
    os.symlink(forged, tmpdir_env / f"xcpimg-reg-{dead_owner()}")
    fsutil.sweep_leftovers()
    left = beside(tmpdir_env)
    assert f"xcpimg-iso-{dead}" not in left and f"xcpimg-reg-{dead}" not in left
    assert {f"xcpimg-iso-{live}", f"xcpimg-reg-{live}", "xcpimg-not-ours", f"other-{dead}",
            f"xcpimg-iso-{elsewhere}"} <= set(left)
    assert beside(out) == [f".x.iso.{live}.part"]
    assert forged.read_text() == "keep"  # a registry link to a name we never make


def test_shown_path() -> None:
    owner = fsutil.owner_token()
    assert fsutil.shown_path(f"/d/.x.iso.{owner}.part") == "/d/x.iso"
    assert fsutil.shown_path(f"/d/..x.iso.{owner}.part.{owner}.part") == "/d/x.iso"
    assert fsutil.shown_path("/d/x.iso") == "/d/x.iso"
    assert fsutil.shown_path(f"/d/.repo.{owner}.part/8/a.rpm") == "/d/repo/8/a.rpm"


# ------------------------------------------------------------------------------------ real CLI runs

@pytest.fixture(scope="module")
def fx() -> FixtureRepo:
    return ensure_fixture_repo()


def iso_argv(fx: FixtureRepo, out: Path, img: Path, *extra: str | Path) -> list[str]:
    return [PY, "-m", "xcpimg.cli", "iso", "-o", str(out), "-V", "X", "--srcurl", fx.srcurl("8.3"),
            "--gpgkey", fx.gpgkey_url, *map(str, extra), "8.3", str(img)]


@pytest.fixture
def install_img(tmp_path: Path) -> Path:
    img = tmp_path / "install.img"
    img.write_bytes(b"\0" * 4096)
    return img


def sign_script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\nset -e\n" + body + 'exec xcpimg-sample-sign "$1"\n')
    path.chmod(0o755)
    return path


def env_with_bin(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmpdir), "PATH": f"{Path(PY).parent}:{os.environ['PATH']}"}


def test_two_concurrent_builds_to_one_path(fx: FixtureRepo, tmp_path: Path, tmpdir_env: Path,
                                           install_img: Path) -> None:
    """Both pass the early check (a barrier in the sign script holds them there); one publishes."""
    out = tmp_path / "out" / "x.iso"
    out.parent.mkdir()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    script = sign_script(tmp_path, "sign.sh", f'touch {barrier}/$$\n'
                         f'n=0; while [ $(ls {barrier} | wc -l) -lt 2 ] && [ $n -lt 600 ]; do sleep 0.05; '
                         'n=$((n+1)); done\n')
    procs = [subprocess.Popen(iso_argv(fx, out, install_img, "--sign-script", script),
                              env=env_with_bin(tmpdir_env), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert len(list(barrier.iterdir())) == 2  # both were past the check at the same time
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lines = loser.strip().splitlines()
    assert lines[-1] == f"xcpimg iso: error: output {out} already exists (use --force-overwrite to replace it)"
    assert [ln for ln in lines if "error" in ln] == lines[-1:] and "Traceback" not in loser
    assert beside(out.parent) == ["x.iso"] and list(tmpdir_env.iterdir()) == []


def test_output_created_during_the_build_is_kept(fx: FixtureRepo, tmp_path: Path, tmpdir_env: Path,
                                                 install_img: Path) -> None:
    out = tmp_path / "x.iso"
    script = sign_script(tmp_path, "sign.sh", f"echo precious > {out}\n")
    argv = iso_argv(fx, out, install_img, "--sign-script", script)
    proc = subprocess.run(argv, env=env_with_bin(tmpdir_env), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(f"output {out} already exists "
                                                         "(use --force-overwrite to replace it)")
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TMP", "install.img", "sign.sh", "x.iso"]
    assert list(tmpdir_env.iterdir()) == []


def test_two_concurrent_fixture_repo_copies(fx: FixtureRepo, tmp_path: Path, tmpdir_env: Path) -> None:
    dest = tmp_path / "out" / "repo"
    dest.parent.mkdir()
    argv = [PY, "-m", "xcpimg.cli", "fixture-repo", str(dest)]
    procs = [subprocess.Popen(argv, env=env_with_bin(tmpdir_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for code, e in results if code == 2)
    assert err.strip() == f"xcpimg fixture-repo: error: output {dest} already exists " \
                          "(use --force-overwrite to replace it)"
    assert beside(dest.parent) == ["repo"] and (dest / "FIXTURE-MANIFEST.json").is_file()
    assert list(tmpdir_env.iterdir()) == []


def test_sigkilled_build_leftovers_go_with_the_next_command(fx: FixtureRepo, tmp_path: Path, tmpdir_env: Path,
                                                            install_img: Path) -> None:
    out = tmp_path / "out" / "x.iso"
    out.parent.mkdir()
    ready = tmp_path / "ready"
    script = sign_script(tmp_path, "sign.sh", f"touch {ready}\nsleep 60\n")
    argv = iso_argv(fx, out, install_img, "--sign-script", script)
    proc = subprocess.Popen(argv, env=env_with_bin(tmpdir_env), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while not ready.exists():
            assert time.monotonic() < end and proc.poll() is None, "the build never reached the sign script"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    staging = [p.name for p in tmpdir_env.iterdir() if p.name.startswith("xcpimg-iso-")]
    parts = [n for n in beside(out.parent) if n.startswith(".x.iso.") and n.endswith(".part")]
    assert len(staging) == 1 and len(parts) == 1  # what the killed run left
    done = subprocess.run([PY, "-m", "xcpimg.cli", "layers", "8.3"], env=env_with_bin(tmpdir_env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert list(tmpdir_env.iterdir()) == [] and beside(out.parent) == []


@pytest.fixture
def live_holder(tmpdir_env: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    code = ("import sys; from xcpimg.fsutil import private_tempdir\n"
            "with private_tempdir('xcpimg-held-') as d:\n    print(d, flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        yield proc, held
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)


def test_live_owners_temp_dir_is_kept(live_holder: tuple[subprocess.Popen[str], Path], tmpdir_env: Path) -> None:
    proc, held = live_holder
    assert held.is_dir() and held.parent == tmpdir_env
    done = subprocess.run([PY, "-m", "xcpimg.cli", "layers", "8.3"], env=env_with_bin(tmpdir_env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert held.is_dir() and proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_at_any_moment_leaves_an_iso_or_nothing(sig: signal.Signals, fx: FixtureRepo, tmp_path: Path,
                                                           tmpdir_env: Path, install_img: Path) -> None:
    """Signals sent across a whole build (staging, mastering, cleanup): exit 130 and nothing, or 0
    and the ISO; never a staging tree or a .part left behind."""
    env = env_with_bin(tmpdir_env)
    t0 = time.monotonic()
    first = subprocess.run(iso_argv(fx, tmp_path / "ref.iso", install_img), env=env, capture_output=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    duration = time.monotonic() - t0
    outcomes = []
    for i in range(8):
        out = tmp_path / f"run{i}" / "x.iso"
        out.parent.mkdir()
        proc = subprocess.Popen(iso_argv(fx, out, install_img), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        first_line = proc.stderr.readline()  # the build runs (a signal during interpreter start-up is
        time.sleep(duration * (0.15 + 0.8 * i / 7))  # not xcpimg's to handle)
        proc.send_signal(sig)
        _o, rest = proc.communicate(timeout=120)
        err = first_line + rest
        outcomes.append(proc.returncode)
        assert "Traceback" not in err
        if proc.returncode == 130:
            assert err.strip().splitlines()[-1] == "xcpimg iso: interrupted" and beside(out.parent) == []
        else:
            assert proc.returncode == 0, err
            assert beside(out.parent) == ["x.iso"] and out.read_bytes()[:32768] == \
                (tmp_path / "ref.iso").read_bytes()[:32768]
        assert list(tmpdir_env.iterdir()) == [], (i, err)
    assert 130 in outcomes, outcomes
