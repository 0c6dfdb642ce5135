"""Configuration layers: the search path behind a spec such as ``8.3:testing``.

A layer is a directory under ``configs/`` (or an absolute path). Its ``INCLUDE``
file names further layers, pulled in right after it, recursively. ``base``
always ends the chain. The first layer of the spec names the dist.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UsageError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def configs_dir() -> Path:
    """Directory holding the standard layers (the checkout's configs/)."""
    return CONFIGS_DIR


@dataclass(frozen=True)
class Layers:
    """A resolved layer search path, first layer first."""

    dirs: tuple[Path, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dirs)

    @property
    def dist(self) -> str:
        """The dist named by the first layer, e.g. ``8.3``."""
        return self.dirs[0].name

    def find(self, name: str) -> Path:
        """The file *name* from the first layer that holds it."""
        for d in self.dirs:
            if (d / name).is_file():
                return d / name
        raise ConfigError(f"cannot find {name!r} in layers {' '.join(self.names)}")

    def find_optional(self, name: str) -> Path | None:
        matches = self.find_all(name)
        return matches[0] if matches else None

    def find_all(self, name: str) -> list[Path]:
        """Every layer's copy of *name*, in search order."""
        return [d / name for d in self.dirs if (d / name).is_file()]

    def merged_tree(self, subdir: str) -> dict[str, Path]:
        """Files of the template tree *subdir* across layers: relative path -> winning file.

        An overlay layer replaces a single file by holding the same relative path. A path
        that is a file in one layer and a directory in another is a ConfigError.
        """
        return {rel: path for rel, (_top, path) in self.merged_entries(subdir).items()}

    def merged_entries(self, subdir: str) -> dict[str, tuple[Path, Path]]:
        """Like merged_tree, with the tree each file comes from: rel -> (layer/subdir, file).

        Copy them with fsutil.copy_node(file, dest, top): links stay links, and one
        pointing outside its layer's tree is refused.
        """
        merged: dict[str, tuple[Path, Path]] = {}
        for d in self.dirs:
            top = d / subdir
            if top.is_symlink():
                raise ConfigError(f"template tree {top} is a symlink: it must be a directory of its layer")
            if not top.is_dir():
                continue
            for path in sorted(top.rglob("*")):
                if path.is_file() or path.is_symlink():
                    merged.setdefault(path.relative_to(top).as_posix(), (top, path))
        for rel, (_top, src) in merged.items():
            parent = rel.rpartition("/")[0]
            while parent:
                if parent in merged:
                    raise ConfigError(f"{merged[parent][1]} is a file, but {src} needs {subdir}/{parent} "
                                      "to be a directory")
                parent = parent.rpartition("/")[0]
        return dict(sorted(merged.items()))

    def text(self, name: str) -> str:
        """The text of file *name* from the first layer that holds it."""
        return read_layer_text(self.find(name))


def read_layer_text(path: Path) -> str:
    """The one way a layer file (INCLUDE, template, list, boot menu) is read: UTF-8 text.

    An unreadable file or one that is not UTF-8 is a ConfigError naming the file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start})") from None


def read_package_list(path: Path) -> list[str]:
    """Package names of a ``packages.lst`` (whitespace-separated, ``#`` starts a comment)."""
    text = read_layer_text(path)
    names = [name for line in text.splitlines() for name in line.split("#", 1)[0].split()]
    if not names:
        raise ConfigError(f"{path} lists no package")
    return names


def _layer_dir(name: str, base: Path, referrer: str | None) -> Path:
    name = name.strip()
    path = Path(name) if name.startswith("/") else base / name
    where = f" (included by {referrer})" if referrer else ""
    if not name or (not name.startswith("/") and ("/" in name or name in (".", ".."))):
        raise ConfigError(f"invalid layer name {name!r}{where}")
    if not path.exists():
        raise ConfigError(f"unknown layer {name!r}{where}: {path} does not exist")
    if not path.is_dir():
        raise ConfigError(f"layer {name!r}{where} is not a directory: {path}")
    return path.resolve()


def _includes(layer: Path) -> list[str]:
    inc = layer / "INCLUDE"
    if not inc.is_file():
        return []
    lines = read_layer_text(inc).splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def resolve(spec: str, base: Path | None = None) -> Layers:
    """Resolve *spec* (``8.3:testing``, ``/abs/layer:8.3`` ...) to a Layers search path."""
    base = base or configs_dir()
    parts = spec.split(":") if spec else []
    if not parts or any(not p.strip() for p in parts):
        raise UsageError(f"empty layer in spec {spec!r}" if spec else "empty layer spec")
    order: list[Path] = []

    def visit(name: str, stack: tuple[Path, ...], referrer: str | None) -> None:
        path = _layer_dir(name, base, referrer)
        if path in stack:
            cycle = " -> ".join(p.name for p in (*stack[stack.index(path):], path))
            raise ConfigError(f"INCLUDE cycle: {cycle}")
        if path in order:
            return  # included twice: searched once, first position wins
        order.append(path)
        for inc in _includes(path):
            visit(inc, (*stack, path), path.name)

    for part in parts:
        visit(part, (), None)
    base_layer = base / "base"
    if base_layer.is_dir() and base_layer.resolve() not in order:
        order.append(base_layer.resolve())
    return Layers(tuple(order))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="LAYERS", help="layer search path, e.g. 8.3:testing")
    parser.add_argument("--find", metavar="NAME", help="print the file that wins, then every match in order")


def command(args: argparse.Namespace) -> int:
    layers = resolve(args.spec)
    if args.find:
        print(layers.find(args.find))
        for path in layers.find_all(args.find):
            print(path)
    else:
        for d in layers.dirs:
            print(d)
    return 0
