"""Template rendering: jinja2 with StrictUndefined, plus the original's @@KEY@@ placeholders.

Layers written for the bash tools use ``@@SRCURL@@``-style placeholders; they are
filled from the same variables, so such a layer keeps working unchanged.

A layer is not trusted: templates run in jinja2's sandbox, have no loader (so no
``include``/``import`` of other files), and any error they raise while rendering
(``{{ 1/0 }}``, a missing include, an undefined name) is a ConfigError naming the
template and line. Template files are read through :func:`xcpimg.layers.read_layer_text`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import jinja2
import jinja2.sandbox

from .errors import ConfigError
from .layers import read_layer_text

#: legacy placeholder -> variable name
LEGACY_KEYS = {
    "SRCURL": "srcurl",
    "RPMARCH": "arch",
    "YUMREPOSD": "reposdir",
    "CACHEDIR": "cachedir",
    "ENABLE_PLUGINS": "enable_plugins",
    "REPOID": "repoid",
    "REPOURL": "repourl",
}

_LEGACY_RE = re.compile(r"@@([A-Z_][A-Z0-9_]*)@@")
_ENV = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                          autoescape=False)


def _legacy(text: str, variables: Mapping[str, object], source: str) -> str:
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        name = LEGACY_KEYS.get(key, key)
        for candidate in (name, key):
            if candidate in variables:
                return str(variables[candidate])
        raise ConfigError(f"{source}: no value for placeholder @@{key}@@")

    return _LEGACY_RE.sub(fill, text)


def render_text(text: str, variables: Mapping[str, object], source: str = "<template>") -> str:
    """Render *text*: jinja2 (undefined variables are errors), then legacy placeholders."""
    try:
        rendered = _ENV.from_string(text).render(**variables)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{source}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"{source}{_line(exc.__traceback__)}: {exc.message}") from None
    except Exception as exc:  # the template's own code failed: 1/0, include without a loader...
        what = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        raise ConfigError(f"{source}{_line(exc.__traceback__)}: template error: {type(exc).__name__}: "
                          f"{' '.join(what.split())[:200]}") from None
    return _legacy(rendered, variables, source)


def _line(tb: TracebackType | None) -> str:
    """":N" for the deepest template line of a rendering traceback (jinja2 maps frames to it)."""
    line = ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


def render_file(path: Path, variables: Mapping[str, object]) -> str:
    """Render the template file at *path*."""
    return render_text(read_layer_text(path), variables, str(path))
