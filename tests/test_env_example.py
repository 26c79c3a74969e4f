"""`.env.example` lists every setting, and its values as written are valid: `skysync check-config`
accepts them, as environment variables and as a `.env` copied from it. (tests/test_compose.py
holds it to the compose file.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from click.testing import CliRunner

from skysync.config import Settings
from skysync.entrypoints.cli import cli

EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def _set_values() -> dict[str, str]:
    """The variables the file sets (not the commented-out ones), as written."""
    text = EXAMPLE.read_text(encoding="utf-8")
    return dict(re.findall(r"^(SKYSYNC_[A-Z0-9_]+)=(.*)$", text, re.M))


def test_every_setting_is_listed() -> None:
    listed = set(re.findall(r"^#?(SKYSYNC_[A-Z0-9_]+)=", EXAMPLE.read_text(), re.M))
    settings = {f"SKYSYNC_{name.upper()}" for name in Settings.model_fields}
    assert settings <= listed, f"not in .env.example: {sorted(settings - listed)}"


def test_check_config_accepts_the_example_values(clean_env: Path) -> None:
    values = _set_values()
    assert values["SKYSYNC_PRICE_DROP_GUARD"] == ""  # empty: the guard is off
    as_env = CliRunner().invoke(cli, ["check-config"], env=values)
    assert as_env.exit_code == 0, as_env.output
    shown = json.loads(as_env.stdout)
    assert shown["price_drop_guard"] is None
    assert shown["stock_buffer"] == 0
    shutil.copy(EXAMPLE, clean_env / ".env")  # `cp .env.example .env`
    as_file = CliRunner().invoke(cli, ["check-config"])
    assert as_file.exit_code == 0, as_file.output
    assert json.loads(as_file.stdout) == shown
