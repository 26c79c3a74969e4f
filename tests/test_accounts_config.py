"""Several SkyHub accounts (skysync/accounts.py, issue #21): SKYSYNC_ACCOUNTS_FILE parsed and
checked, every problem named by file and field and never with a secret, the registry's reload
on change (keeping the last good accounts on a bad edit), check-config and the log masking.

Every test runs in an empty directory with no SKYSYNC_* inherited (conftest's clean_env).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from skysync.accounts import (
    ACCOUNT_NAME,
    DEFAULT_ACCOUNT,
    PRICE_GUARD_OFF,
    SINGLE_ACCOUNT_SOURCE,
    Account,
    AccountRegistry,
    Accounts,
    is_account_name,
    load_accounts,
)
from skysync.config import ConfigError, Settings, load_settings
from skysync.entrypoints.cli import cli
from skysync.logs import RedactingFilter

pytestmark = pytest.mark.usefixtures("clean_env")

EMULATOR = "http://127.0.0.1:8710"
SUL_KEY = "sk-live-sul-4f1e9a7c"
NORTE_KEY = "sk-live-norte-8b2d6e0a"
NORTE_ACCOUNT_KEY = "acct-norte-5c3a1f9e"
SHARED_ACCOUNT_KEY = "acct-shared-7d4b2e8f"
ALL_SECRETS = (SUL_KEY, NORTE_KEY, NORTE_ACCOUNT_KEY, SHARED_ACCOUNT_KEY)

GOOD = f"""
[accounts.loja-sul]
email = "sul@example.com"
api_key_file = "keys/sul.key"
stock_buffer = 3
price_drop_guard = false

[accounts.loja-norte]
email = "norte@example.com"
api_key = "{NORTE_KEY}"
account_key = "{NORTE_ACCOUNT_KEY}"
price_drop_guard = 12.5

[accounts.outlet_2]
email = "outlet@example.com"
api_key = "{NORTE_KEY}-outlet"
price_drop_guard = 0
stock_buffer = 0
"""


def write(directory: Path, text: str, name: str = "accounts.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def good_file(directory: Path) -> Path:
    write(directory, SUL_KEY + "\n", "keys/sul.key")
    return write(directory, GOOD)


def settings_for(path: Path | None, **values: Any) -> Settings:
    values.setdefault("skyhub_account_key", SHARED_ACCOUNT_KEY)
    return Settings(accounts_file=path, **values)


def problem_of(path: Path, **values: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        load_accounts(settings_for(path, **values))
    message = str(raised.value)
    for secret in ALL_SECRETS:
        assert secret not in message
    return message


# -- good files ------------------------------------------------------------------------------------


def test_several_accounts_with_a_key_file_overrides_and_the_account_key_fallback(
    clean_env: Path,
) -> None:
    path = good_file(clean_env)
    settings = settings_for(path, stock_buffer=5, price_drop_guard=30)
    accounts = load_accounts(settings)

    assert accounts.names() == [DEFAULT_ACCOUNT, "loja-sul", "loja-norte", "outlet_2"]
    assert accounts.source == f"SKYSYNC_ACCOUNTS_FILE={path}"
    sul, norte, outlet = accounts["loja-sul"], accounts["loja-norte"], accounts["outlet_2"]
    assert sul.email == "sul@example.com"
    assert sul.api_key is not None and sul.api_key.get_secret_value() == SUL_KEY  # stripped
    assert sul.account_key is not None
    assert sul.account_key.get_secret_value() == SHARED_ACCOUNT_KEY  # the variable's
    assert norte.account_key is not None
    assert norte.account_key.get_secret_value() == NORTE_ACCOUNT_KEY  # the file's own
    assert sul.has_credentials and norte.has_credentials

    assert (sul.stock_buffer, sul.effective_stock_buffer(settings)) == (3, 3)
    assert (norte.stock_buffer, norte.effective_stock_buffer(settings)) == (None, 5)
    assert (outlet.stock_buffer, outlet.effective_stock_buffer(settings)) == (0, 0)
    assert sul.price_drop_guard == PRICE_GUARD_OFF  # `false`: off for this account
    assert sul.effective_price_drop_guard(settings) is None
    assert outlet.price_drop_guard == PRICE_GUARD_OFF  # `0`: off too
    assert norte.effective_price_drop_guard(settings) == 12.5
    assert accounts[DEFAULT_ACCOUNT].effective_price_drop_guard(settings) == 30

    assert [account.name for account in accounts] == accounts.names()
    assert "loja-sul" in accounts and "loja-oeste" not in accounts and sul in accounts
    assert len(accounts) == 4
    assert set(accounts.secret_values()) == {
        SUL_KEY,
        NORTE_KEY,
        NORTE_ACCOUNT_KEY,
        SHARED_ACCOUNT_KEY,
        f"{NORTE_KEY}-outlet",
    }
    with pytest.raises(KeyError, match="loja-oeste"):
        accounts["loja-oeste"]


def test_without_a_file_the_default_account_is_the_single_account_settings() -> None:
    bare = load_accounts(Settings())
    assert bare.names() == [DEFAULT_ACCOUNT]
    assert bare.source == SINGLE_ACCOUNT_SOURCE
    assert bare[DEFAULT_ACCOUNT] == Account(DEFAULT_ACCOUNT, None, None, None)  # the emulator
    assert bare.secret_values() == []

    configured = load_accounts(
        Settings(
            skyhub_email="loja@example.com",
            skyhub_api_key=NORTE_KEY,
            skyhub_account_key=NORTE_ACCOUNT_KEY,
        )
    )
    default = configured[DEFAULT_ACCOUNT]
    assert default.email == "loja@example.com" and default.has_credentials
    assert configured.secret_values() == [NORTE_KEY, NORTE_ACCOUNT_KEY]


def test_the_settings_default_comes_first_beside_the_files_accounts(clean_env: Path) -> None:
    settings = settings_for(
        good_file(clean_env), skyhub_email="matriz@example.com", skyhub_api_key="sk-matriz-1"
    )
    accounts = load_accounts(settings)
    assert accounts.names()[0] == DEFAULT_ACCOUNT
    assert accounts[DEFAULT_ACCOUNT].email == "matriz@example.com"


def test_the_file_may_define_the_default_account_itself(clean_env: Path) -> None:
    path = write(
        clean_env,
        f'[accounts.loja-norte]\nemail = "norte@example.com"\napi_key = "{NORTE_KEY}"\n'
        f'[accounts.default]\nemail = "matriz@example.com"\napi_key = "{SUL_KEY}"\n',
    )
    accounts = load_accounts(settings_for(path))
    assert accounts.names() == [DEFAULT_ACCOUNT, "loja-norte"]  # default first all the same
    default = accounts[DEFAULT_ACCOUNT]
    assert default.email == "matriz@example.com"
    assert default.api_key is not None and default.api_key.get_secret_value() == SUL_KEY


def test_a_file_default_and_the_single_account_variables_together_are_ambiguous(
    clean_env: Path,
) -> None:
    path = write(clean_env, f'[accounts.default]\nemail = "m@example.com"\napi_key = "{SUL_KEY}"\n')
    message = problem_of(path, skyhub_email="loja@example.com", skyhub_api_key=NORTE_KEY)
    assert f"SKYSYNC_ACCOUNTS_FILE ({path}): accounts.default: is ambiguous" in message
    assert "SKYSYNC_SKYHUB_EMAIL and SKYSYNC_SKYHUB_API_KEY are set too" in message
    only_key = problem_of(path, skyhub_api_key=NORTE_KEY)
    assert (
        "accounts.default: is ambiguous" in only_key and "SKYSYNC_SKYHUB_API_KEY is set" in only_key
    )


def test_an_emulator_target_takes_placeholders_and_no_account_key(clean_env: Path) -> None:
    path = write(clean_env, '[accounts.demo]\nemail = "demo@example.com"\napi_key = "CHANGE_ME"\n')
    accounts = load_accounts(Settings(accounts_file=path, skyhub_url=EMULATOR))
    assert accounts["demo"].account_key is None
    assert not accounts["demo"].has_credentials


# -- bad files: each names the file and the field, never a secret ---------------------------------

ACCOUNT = '[accounts.loja-sul]\nemail = "sul@example.com"\n'
KEY = f'api_key = "{SUL_KEY}"\n'

BAD = {
    "placeholder api_key": (ACCOUNT + 'api_key = "CHANGE_ME"\n', "accounts.loja-sul.api_key: "),
    "placeholder account_key": (
        ACCOUNT + KEY + 'account_key = "<your account key>"\n',
        "accounts.loja-sul.account_key: is still a placeholder",
    ),
    "no api_key": (ACCOUNT, "accounts.loja-sul.api_key: is required"),
    "both api keys": (
        ACCOUNT + KEY + 'api_key_file = "sul.key"\n',
        "accounts.loja-sul: has both api_key and api_key_file",
    ),
    "empty api_key": (ACCOUNT + 'api_key = "  "\n', "accounts.loja-sul.api_key: must be a non-"),
    "api_key not a string": (ACCOUNT + "api_key = 12345\n", "accounts.loja-sul.api_key: must be"),
    "no email": (f'[accounts.loja-sul]\napi_key = "{SUL_KEY}"\n', "accounts.loja-sul.email: is"),
    "bad email": (
        f'[accounts.loja-sul]\nemail = "sul"\napi_key = "{SUL_KEY}"\n',
        "accounts.loja-sul.email: must be an e-mail address",
    ),
    "name with capitals and a space": (
        f'[accounts."Loja Sul"]\nemail = "sul@example.com"\n{KEY}',
        'accounts."Loja Sul": is not a valid account name: it must match ^[a-z0-9][a-z0-9_-]',
    ),
    "name too long": (
        f'[accounts.{"a" * 64}]\nemail = "sul@example.com"\n{KEY}',
        f"accounts.{'a' * 64}: is not a valid account name",
    ),
    "unknown keys": (
        ACCOUNT + KEY + "stock_bufer = 2\nemial = 1\n",
        "accounts.loja-sul: unknown key(s) emial, stock_bufer (allowed: email, api_key,",
    ),
    "unknown top-level key": (
        "[acounts.loja-sul]\n" + ACCOUNT + KEY,
        "unknown top-level key(s) acounts",
    ),
    "no accounts": ("# nothing yet\n", "accounts: defines no account"),
    "an account that is no table": ('accounts.loja-sul = "x"\n', "accounts.loja-sul: must be a"),
    "duplicate email": (
        ACCOUNT + KEY + f'[accounts.loja-2]\nemail = "SUL@example.com"\napi_key = "{NORTE_KEY}"\n',
        "accounts.loja-2.email: is the same e-mail as accounts.loja-sul.email: two accounts",
    ),
    "stock_buffer too big": (
        ACCOUNT + KEY + "stock_buffer = 1000001\n",
        "accounts.loja-sul.stock_buffer: must be a whole number from 0 to 1000000",
    ),
    "stock_buffer not whole": (
        ACCOUNT + KEY + "stock_buffer = 1.5\n",
        "accounts.loja-sul.stock_buffer: must be a whole number",
    ),
    "price_drop_guard 100": (
        ACCOUNT + KEY + "price_drop_guard = 100\n",
        "accounts.loja-sul.price_drop_guard: must be a percent above 0 and below 100, or false",
    ),
    "price_drop_guard true": (
        ACCOUNT + KEY + "price_drop_guard = true\n",
        "accounts.loja-sul.price_drop_guard: must be a percent",
    ),
    "price_drop_guard nan": (
        ACCOUNT + KEY + "price_drop_guard = nan\n",
        "accounts.loja-sul.price_drop_guard: must be a percent",
    ),
    "bad toml": (
        ACCOUNT + f"api_key = {SUL_KEY}\n",
        "is not valid TOML: Invalid value (at line 3, column 11)",
    ),
}


@pytest.mark.parametrize(("text", "expected"), BAD.values(), ids=BAD.keys())
def test_a_bad_file_is_refused_naming_the_file_and_the_field(
    clean_env: Path, text: str, expected: str
) -> None:
    path = write(clean_env, text)
    message = problem_of(path)
    assert message.startswith("invalid configuration:\n  SKYSYNC_ACCOUNTS_FILE (")
    assert f"SKYSYNC_ACCOUNTS_FILE ({path}): " in message
    assert expected in message, message
    assert SUL_KEY not in message and NORTE_KEY not in message


def test_a_duplicate_of_the_single_account_email_is_refused(clean_env: Path) -> None:
    path = write(clean_env, ACCOUNT + KEY)
    message = problem_of(path, skyhub_email="Sul@Example.com", skyhub_api_key=NORTE_KEY)
    assert (
        "accounts.loja-sul.email: is the same e-mail as the default account's "
        "SKYSYNC_SKYHUB_EMAIL" in message
    )


def test_an_account_key_missing_in_the_file_and_the_settings_is_refused_for_skyhub(
    clean_env: Path,
) -> None:
    path = write(clean_env, ACCOUNT + KEY)
    message = problem_of(path, skyhub_account_key=None)
    assert f"SKYSYNC_ACCOUNTS_FILE ({path}): accounts.loja-sul.account_key: is missing" in message
    assert "SKYSYNC_SKYHUB_ACCOUNT_KEY (its fallback) is unset" in message


def test_a_missing_or_unreadable_file_is_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = clean_env / "nowhere.toml"
    assert f"SKYSYNC_ACCOUNTS_FILE ({missing}): does not exist" in problem_of(missing)
    assert "is a directory" in problem_of(clean_env)

    path = write(clean_env, ACCOUNT + KEY)
    real_open = Path.open

    def refused(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refused)  # (chmod does not stop root, who runs CI)
    assert f"({path}): cannot be read (Permission denied)" in problem_of(path)


def test_a_key_file_missing_or_empty_is_named_with_its_path(clean_env: Path) -> None:
    path = write(clean_env, ACCOUNT + 'api_key_file = "keys/sul.key"\n')
    key = clean_env / "keys" / "sul.key"
    message = problem_of(path)
    assert (
        f"SKYSYNC_ACCOUNTS_FILE ({path}): accounts.loja-sul.api_key_file ({key}): does not exist"
        in message
    )
    write(clean_env, " \n", "keys/sul.key")
    assert f"accounts.loja-sul.api_key_file ({key}): is empty" in problem_of(path)
    write(clean_env, "CHANGE_ME\n", "keys/sul.key")
    assert "accounts.loja-sul.api_key_file: the key it holds is still a placeholder" in problem_of(
        path
    )
    write(clean_env, f"{SUL_KEY}\n{NORTE_KEY}\n", "keys/sul.key")
    assert "the key it holds must not contain spaces or line breaks" in problem_of(path)


def test_every_problem_of_a_file_is_named_at_once(clean_env: Path) -> None:
    path = write(
        clean_env,
        '[accounts.a]\nemail = "a@example.com"\napi_key = "xxx"\n'
        "[accounts.b]\nemail = 3\n" + KEY + "stock_buffer = -1\n",
    )
    lines = problem_of(path).splitlines()[1:]
    assert [line.split(": ", 2)[1] for line in lines] == [
        "accounts.a.api_key",
        "accounts.b.email",
        "accounts.b.stock_buffer",
    ]


def test_account_names_as_the_erp_writes_them() -> None:
    for good in ("default", "loja-sul", "outlet_2", "9", "a" * 63):
        assert is_account_name(good) and ACCOUNT_NAME.match(good)
    for bad in ("", "Loja", "-sul", "_sul", "loja sul", "a" * 64, "loja\n", "loja.sul"):
        assert not is_account_name(bad)


def test_load_settings_refuses_a_bad_accounts_file(clean_env: Path) -> None:
    path = write(clean_env, ACCOUNT + 'api_key = "CHANGE_ME"\n')
    with pytest.raises(ConfigError, match=r"accounts\.loja-sul\.api_key: is still a placeholder"):
        load_settings(accounts_file=path, skyhub_account_key=SHARED_ACCOUNT_KEY)


# -- secrets: reprs and logs -----------------------------------------------------------------------


def test_no_secret_in_any_repr(clean_env: Path) -> None:
    accounts = load_accounts(settings_for(good_file(clean_env)))
    shown = repr(accounts) + str(accounts) + "".join(repr(a) + str(a) for a in accounts)
    shown += json.dumps(accounts.masked(settings_for(None)))
    for secret in ALL_SECRETS:
        assert secret not in shown
    assert "SecretStr('**********')" in repr(accounts["loja-sul"])


def test_the_settings_secret_values_hold_the_files_keys(clean_env: Path) -> None:
    """Every entrypoint hands settings.secret_values() to configure_logging."""
    settings = settings_for(good_file(clean_env))
    values = settings.secret_values()
    assert {SUL_KEY, NORTE_KEY, NORTE_ACCOUNT_KEY} <= set(values)
    record = logging.makeLogRecord({"msg": "sent with %s", "args": (SUL_KEY,)})
    RedactingFilter(values).filter(record)
    assert SUL_KEY not in record.getMessage()


# -- the registry: reload on change, a bad edit keeps the last good accounts -----------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def touch(path: Path, text: str, mtime: float) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


NORTE = f'[accounts.loja-norte]\nemail = "norte@example.com"\napi_key = "{NORTE_KEY}"\n'


def test_the_registry_rereads_a_changed_file_at_most_every_check_every(clean_env: Path) -> None:
    path = write(clean_env, NORTE)
    os.utime(path, (1_000_000, 1_000_000))
    clock = Clock()
    registry = AccountRegistry(settings_for(path), check_every=5, clock=clock)
    assert registry.current().names() == [DEFAULT_ACCOUNT, "loja-norte"]

    touch(path, NORTE + "[accounts.loja-sul]\nemail = 's@example.com'\n" + KEY, 1_000_100)
    clock.now += 4.9
    assert registry.current().names() == [DEFAULT_ACCOUNT, "loja-norte"]  # not looked yet
    clock.now += 0.2
    assert registry.current().names() == [DEFAULT_ACCOUNT, "loja-norte", "loja-sul"]
    assert registry.last_error is None


def test_a_rotated_key_file_is_reread_too(clean_env: Path) -> None:
    path = good_file(clean_env)
    clock = Clock()
    registry = AccountRegistry(settings_for(path), check_every=1, clock=clock)
    touch(clean_env / "keys" / "sul.key", "sk-live-sul-rotated-2\n", 2_000_000)
    clock.now += 1
    key = registry.current()["loja-sul"].api_key
    assert key is not None and key.get_secret_value() == "sk-live-sul-rotated-2"


def test_a_bad_edit_keeps_the_last_good_accounts_and_logs_one_error(
    clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="skysync")
    path = write(clean_env, NORTE)
    clock = Clock()
    registry = AccountRegistry(settings_for(path), check_every=5, clock=clock)
    good = registry.current()

    touch(path, NORTE.replace(NORTE_KEY, "CHANGE_ME") + "stock_buffer = 1.5\n", 3_000_000)
    for _ in range(3):  # looked at three times: still bad, one ERROR
        clock.now += 5
        assert registry.current() is good
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert registry.last_error is not None
    for field in ("accounts.loja-norte.api_key: is still a placeholder", "stock_buffer"):
        assert field in errors[0].getMessage() and field in registry.last_error
    assert "keeping the last good accounts (default, loja-norte)" in errors[0].getMessage()

    touch(path, NORTE.replace("norte@", "norte2@"), 3_000_100)  # fixed
    clock.now += 5
    assert registry.current()["loja-norte"].email == "norte2@example.com"
    assert registry.last_error is None
    assert "accounts reloaded from SKYSYNC_ACCOUNTS_FILE=" in caplog.text
    for secret in ALL_SECRETS:
        assert secret not in caplog.text


def test_a_deleted_file_keeps_the_last_good_accounts(clean_env: Path) -> None:
    path = write(clean_env, NORTE)
    clock = Clock()
    registry = AccountRegistry(settings_for(path), check_every=5, clock=clock)
    path.unlink()
    clock.now += 5
    assert registry.current().names() == [DEFAULT_ACCOUNT, "loja-norte"]
    assert registry.last_error == f"SKYSYNC_ACCOUNTS_FILE ({path}): does not exist"


def test_a_registry_refuses_to_start_on_a_bad_file(clean_env: Path) -> None:
    path = write(clean_env, ACCOUNT + 'api_key = "xxx"\n')
    with pytest.raises(ConfigError, match=r"accounts\.loja-sul\.api_key: is still a placeholder"):
        AccountRegistry(settings_for(path))


def test_new_keys_from_a_reload_are_masked_by_the_installed_log_filter(clean_env: Path) -> None:
    path = write(clean_env, NORTE)
    installed = RedactingFilter(settings_for(path).secret_values())  # as configure_logging does
    clock = Clock()
    registry = AccountRegistry(settings_for(path), check_every=5, clock=clock)
    fresh = "sk-live-fresh-0e5d7c3b"
    touch(path, NORTE + f'[accounts.nova]\nemail = "n@example.com"\napi_key = "{fresh}"\n', 4e6)
    clock.now += 5
    assert "nova" in registry.current()
    record = logging.makeLogRecord({"msg": f"PUT with X {fresh} and {NORTE_KEY}"})
    installed.filter(record)
    assert fresh not in record.getMessage() and NORTE_KEY not in record.getMessage()


def test_the_registry_is_safe_across_threads(clean_env: Path) -> None:
    path = write(clean_env, NORTE)
    registry = AccountRegistry(settings_for(path), check_every=0)
    seen: list[Accounts] = []

    def read() -> None:
        for _ in range(50):
            seen.append(registry.current())

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 200 and all("loja-norte" in accounts for accounts in seen)


def test_without_a_file_the_registry_never_looks(clean_env: Path) -> None:
    registry = AccountRegistry(Settings(), check_every=0)
    assert registry.current().names() == [DEFAULT_ACCOUNT]
    assert registry.reload().source == SINGLE_ACCOUNT_SOURCE


# -- check-config ----------------------------------------------------------------------------------


def run(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def test_check_config_shows_the_accounts_and_never_their_keys(clean_env: Path) -> None:
    path = good_file(clean_env)
    result = run(
        ["check-config"],
        SKYSYNC_ACCOUNTS_FILE=str(path),
        SKYSYNC_SKYHUB_ACCOUNT_KEY=SHARED_ACCOUNT_KEY,
        SKYSYNC_STOCK_BUFFER="4",
    )
    assert result.exit_code == 0, result.output
    for secret in ALL_SECRETS:
        assert secret not in result.output
    shown = json.loads(result.stdout)
    assert shown["accounts_file"] == str(path)
    assert shown["accounts"]["source"] == f"SKYSYNC_ACCOUNTS_FILE={path}"
    by_name = {a["name"]: a for a in shown["accounts"]["accounts"]}
    assert list(by_name) == [DEFAULT_ACCOUNT, "loja-sul", "loja-norte", "outlet_2"]
    assert by_name["loja-sul"] == {
        "name": "loja-sul",
        "email": "sul@example.com",
        "api_key": "**********",
        "account_key": "**********",
        "stock_buffer": 3,
        "price_drop_guard": False,
        "effective_stock_buffer": 3,
        "effective_price_drop_guard": None,
    }
    assert by_name["loja-norte"]["effective_stock_buffer"] == 4
    assert by_name["loja-norte"]["price_drop_guard"] == 12.5


def test_check_config_without_a_file_shows_the_single_account() -> None:
    shown = json.loads(run(["check-config"]).stdout)
    assert shown["accounts_file"] is None
    assert shown["accounts"]["source"] == SINGLE_ACCOUNT_SOURCE
    assert [a["name"] for a in shown["accounts"]["accounts"]] == [DEFAULT_ACCOUNT]
    blank = run(["check-config"], SKYSYNC_ACCOUNTS_FILE="  ")
    assert blank.exit_code == 0 and json.loads(blank.stdout)["accounts_file"] is None


def test_check_config_names_the_bad_field_and_exits_2(clean_env: Path) -> None:
    path = write(clean_env, ACCOUNT + f'api_key = "{SUL_KEY}"\napi_key_file = "k"\n')
    result = run(["check-config"], SKYSYNC_ACCOUNTS_FILE=str(path))
    assert result.exit_code == 2 and result.stdout == ""
    assert f"SKYSYNC_ACCOUNTS_FILE ({path}): accounts.loja-sul: has both" in result.stderr
    assert SUL_KEY not in result.output


def test_check_config_as_a_real_process(clean_env: Path) -> None:
    path = write(clean_env, ACCOUNT + 'api_key = "CHANGE_ME"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")}
    env |= {"SKYSYNC_ACCOUNTS_FILE": "accounts.toml", "SKYSYNC_SKYHUB_ACCOUNT_KEY": "acct-9z8y"}
    command = [sys.executable, "-m", "skysync", "check-config"]
    bad = subprocess.run(command, env=env, cwd=clean_env, capture_output=True, text=True)
    assert bad.returncode == 2, bad.stderr
    assert (
        "SKYSYNC_ACCOUNTS_FILE (accounts.toml): accounts.loja-sul.api_key: is still" in bad.stderr
    )
    path.write_text(ACCOUNT + KEY, encoding="utf-8")
    good = subprocess.run(command, env=env, cwd=clean_env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert SUL_KEY not in good.stdout + good.stderr
    names = [a["name"] for a in json.loads(good.stdout)["accounts"]["accounts"]]
    assert names == [DEFAULT_ACCOUNT, "loja-sul"]


def test_the_documented_example_file_loads(clean_env: Path) -> None:
    docs = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    section = docs.read_text(encoding="utf-8").split("## Several SkyHub accounts", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    write(clean_env, "sk-live-sul-1234\n", "loja-sul.key")
    accounts = load_accounts(settings_for(write(clean_env, example)))
    assert accounts.names() == [DEFAULT_ACCOUNT, "loja-sul", "loja-norte"]
    assert accounts["loja-sul"].price_drop_guard == PRICE_GUARD_OFF
    assert accounts["loja-norte"].price_drop_guard == 15
