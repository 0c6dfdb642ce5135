"""Template rendering: jinja2 with StrictUndefined, plus the original's @@KEY@@ placeholders.

Layers written for the bash tools use ``@@SRCURL@@``-style placeholders; they are
filled from the same variables, so such a layer keeps working unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import jinja2

from .errors import ConfigError

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
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
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
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{source}:{exc.lineno}: template syntax error: {exc.message}") from None
    return _legacy(rendered, variables, source)


def render_file(path: Path, variables: Mapping[str, object]) -> str:
    """Render the template file at *path*."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read template {path}: {exc.strerror}") from None
    return render_text(text, variables, str(path))
