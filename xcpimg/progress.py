"""Progress display for the long steps (download, mirror, createrepo, compression, mastering).

One mechanism: tqdm bars on stderr, shown only when stderr is a terminal (never in
logs, CI or tests). :func:`bar` counts bytes or items towards a total (or without
one); :func:`activity` shows the elapsed time of a step that reports nothing while
it runs (an external tool such as createrepo_c).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import BinaryIO

from tqdm import tqdm


def human(n: float) -> str:
    """Bytes as ``12.3 MB`` (decimal units, as the bars show them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def enabled() -> bool:
    """Whether progress is shown: stderr is a terminal."""
    return sys.stderr.isatty()


def bar(desc: str, total: int | None = None, *, unit: str = "B", show: bool | None = None,
        bar_format: str | None = None, ascii: str | None = None, leave: bool = False) -> tqdm:
    """A progress bar on stderr: shown when *show* is true, or (None) when stderr is a terminal.

    ``unit="B"`` scales bytes (kB, MB); any other unit counts items. *bar_format* and
    *ascii* are tqdm's (a fixed layout, the bar's characters). Close it (or use it as a
    context manager) to finish the line; *leave* keeps the last state on screen.
    """
    on = enabled() if show is None else show
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1000,
                disable=not on, leave=leave, dynamic_ncols=True, file=sys.stderr, mininterval=0.2,
                bar_format=bar_format, ascii=ascii)


@contextlib.contextmanager
def activity(desc: str, show: bool | None = None) -> Iterator[None]:
    """Show *desc* and the elapsed seconds until the block ends (for a silent external tool)."""
    with bar(desc, unit="s", show=show) as b:
        if b.disable:
            yield
            return
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(0.5):
                b.refresh()

        t = threading.Thread(target=tick, name=f"progress-{desc}", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


class CountingWriter:
    """A write-only stream passing bytes to *out* and counting them on a progress *bar*."""

    def __init__(self, out: BinaryIO, progress_bar: tqdm) -> None:
        self._out = out
        self._bar = progress_bar

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._out.write(data)
        self._bar.update(len(data))
        return n
