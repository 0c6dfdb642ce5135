"""Template rendering: StrictUndefined and the original's @@KEY@@ placeholders."""

from __future__ import annotations

from pathlib import Path

import pytest

from xcpimg.errors import ConfigError
from xcpimg.render import render_file, render_text


def test_jinja_variables() -> None:
    assert render_text("baseurl={{ srcurl }}/base/{{ arch }}/\n", {"srcurl": "http://x", "arch": "x86_64"}) \
        == "baseurl=http://x/base/x86_64/\n"


def test_strict_undefined_names_variable() -> None:
    with pytest.raises(ConfigError, match="'cachedir' is undefined"):
        render_text("cachedir={{ cachedir }}", {}, "yum.conf.tmpl")


def test_legacy_placeholders() -> None:
    text = ("[@@REPOID@@]\nbaseurl=@@REPOURL@@/@@RPMARCH@@/\nreposdir=@@YUMREPOSD@@\n"
            "cachedir=@@CACHEDIR@@\nplugins=@@ENABLE_PLUGINS@@\nsrc=@@SRCURL@@\n")
    out = render_text(text, {"repoid": "r", "repourl": "http://u", "arch": "x86_64", "reposdir": "/r",
                             "cachedir": "/c", "enable_plugins": 1, "srcurl": "http://s"})
    assert out == "[r]\nbaseurl=http://u/x86_64/\nreposdir=/r\ncachedir=/c\nplugins=1\nsrc=http://s\n"


def test_legacy_placeholder_missing_value(tmp_path: Path) -> None:
    tmpl = tmp_path / "old.tmpl"
    tmpl.write_text("x=@@NOPE@@\n")
    with pytest.raises(ConfigError, match="@@NOPE@@"):
        render_file(tmpl, {})


def test_syntax_error_is_config_error() -> None:
    with pytest.raises(ConfigError, match="syntax"):
        render_text("{% if %}", {}, "t")
