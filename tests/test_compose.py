"""docker-compose.yml, tested without a Docker engine (none runs where these tests run).

What can be checked honestly here:

- the file is valid Compose: after compose's ``${...}`` substitution it validates against the
  Compose Specification's JSON schema (``tests/data/compose-spec.schema.json``, as shipped in
  docker-compose 1.29's ``compose/config/compose_spec.json``, Apache-2.0), with ``jsonschema``
  from the dev extra, so no Docker tool is needed (the real ``docker-compose up`` runs in
  ``make compose-test``, .ci/compose_test.py);
- every skysync service's ``command`` and ``environment``, read from the file, work: each command
  runs on this machine from the venv, with the environment compose would give the container and
  only what is specific to the container's network rewritten:

  ===========================================  ================================================
  in the compose file                          here
  ===========================================  ================================================
  ``postgresql+psycopg://skysync:PW@postgres``  a fresh database on the local PostgreSQL (its
  ``:5432/skysync``                            admin role: there is no ``skysync`` role here)
  ``redis://redis:6379/0`` and ``/1``          ``redis://127.0.0.1:6379/14`` and ``/15``
                                               (flushed before and after)
  ``http://sandbox:8710``                      a SkyHub emulator started by this test
  ``--port N`` (5555, 9108, 8710)              a free port
  ``--host 0.0.0.0``, flower's address         127.0.0.1
  ``--schedule=/tmp/celerybeat-schedule``      the same file name in this test's directory
  ===========================================  ================================================

The compose environment used is the demo one (``--profile sandbox``): POSTGRES_PASSWORD and
SKYSYNC_FLOWER_BASIC_AUTH set, SKYSYNC_SKYHUB_URL=http://sandbox:8710, no SkyHub credentials,
every tuning variable left to the file's defaults.

Every process started here runs in its own process group, which teardown terminates (then kills).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from celery_helpers import flush_redis, wait_for
from conftest import create_pg_database, drop_pg_database, free_port

from skysync.emulator import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
SKYSYNC_SERVICES = ("migrate", "worker", "beat", "flower", "console", "metrics", "sandbox")
LONG_RUNNING = ("worker", "beat", "flower", "console", "sandbox")
REDIS_DBS = {0: 14, 1: 15}  # compose's broker and limiter databases -> this machine's
POLL = 0.1  # seconds between looks at a process started here

# The environment `docker compose --profile sandbox up` would be run with (shell or .env).
FLOWER_USER, FLOWER_PASSWORD = "admin", "compose-test-secret"
CONSOLE_USER, CONSOLE_PASSWORD = "ops", "compose-console-secret"
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "compose-test-password",
    "SKYSYNC_SKYHUB_URL": "http://sandbox:8710",
    "SKYSYNC_FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
    "SKYSYNC_CONSOLE_OPERATORS": f"{CONSOLE_USER}:{CONSOLE_PASSWORD}",
}
REQUIRED_ENV = {
    "SKYSYNC_DATABASE_URL",
    "SKYSYNC_BROKER_URL",
    "SKYSYNC_REDIS_URL",
    "SKYSYNC_SKYHUB_URL",
    "SKYSYNC_SKYHUB_EMAIL",
    "SKYSYNC_SKYHUB_API_KEY",
    "SKYSYNC_SKYHUB_ACCOUNT_KEY",
    "SKYSYNC_SYNC_INTERVAL",
    "SKYSYNC_ORDER_POLL_INTERVAL",
    "SKYSYNC_RATE_LIMIT",
    "SKYSYNC_BATCH_SIZE",
    "SKYSYNC_CATCH_UP_INTERVAL",
    "SKYSYNC_MAX_ATTEMPTS",
    "SKYSYNC_LEASE_SECONDS",
    "SKYSYNC_LOG_LEVEL",
    "SKYSYNC_FAST_LANE",
    "SKYSYNC_FAST_LANE_STOCK_THRESHOLD",
    "SKYSYNC_FAST_LANE_POLL",
}
START_TIMEOUT = 45.0
DELIVERY_TIMEOUT = 30.0


# --------------------------------------------------------------------------- reading the file


class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is not set."""


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, through dicts and lists."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg, found = m["op"], m["arg"], env.get(name)
        if op == ":-":
            return found or arg
        if op == "-":
            return arg if found is None else found
        if (op == ":?" and not found) or (op == "?" and found is None):
            raise MissingVariable(f"{name}: {arg}")
        return found or ""

    return _VARIABLE.sub(substitute, value)


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def service_environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A service's ``environment`` (map or list form) as compose resolves it, all strings. A
    variable named without a value is passed through from ``env``, or left out when unset."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    resolved = {}
    for key, value in raw.items():
        if value is None:
            if key in env:
                resolved[key] = env[key]
        else:
            resolved[key] = str(interpolate(value, env))
    return resolved


def service_command(service: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    command = interpolate(service["command"], env)
    assert isinstance(command, list), "commands are exec form (a list): no shell in between"
    return [str(part) for part in command]


SCHEMA = ROOT / "tests" / "data" / "compose-spec.schema.json"


def schema_errors(document: Any) -> list[str]:
    import jsonschema

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def read_dotenv(text: str) -> dict[str, str]:
    """What compose takes from a .env file: NAME=value lines, comments and blanks skipped."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            env[name.strip()] = value.strip()
    return env


# --------------------------------------------------------------------------- (a) the file


def test_compose_file_is_valid() -> None:
    errors = schema_errors(interpolate(load_compose(), COMPOSE_ENV))
    assert not errors, "docker-compose.yml against the Compose Specification:\n" + "\n".join(errors)

    # Without the database password nothing starts, with a message naming it.
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "POSTGRES_PASSWORD"}
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(load_compose(), env)


def test_the_schema_check_catches_a_broken_file() -> None:
    """The validation above can fail: a misspelt key and a wrong type are both reported."""
    document = interpolate(load_compose(), COMPOSE_ENV)
    document["services"]["worker"]["stop_grace_periud"] = "30s"
    document["services"]["flower"]["ports"] = "5555:5555"
    errors = schema_errors(document)
    assert any("stop_grace_periud" in e for e in errors), errors
    assert any(e.startswith("services/flower/ports") for e in errors), errors


def test_env_example_documents_every_compose_variable() -> None:
    """`cp .env.example .env`, set the password: the file resolves and validates, and every
    ${VAR} the compose file reads is listed there (commented out or not)."""
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^#?([A-Z][A-Z0-9_]*)=", example, re.M))
    used = {m["braced"] or m["named"] for m in _VARIABLE.finditer(COMPOSE_FILE.read_text())}
    used.discard(None)
    assert used <= listed, f"not in .env.example: {sorted(used - listed)}"

    dotenv = read_dotenv(
        re.sub(r"^#POSTGRES_PASSWORD=.*$", "POSTGRES_PASSWORD=x", example, flags=re.M)
    )
    assert not schema_errors(interpolate(load_compose(), dotenv))


def test_published_ports_stay_on_localhost_unless_told() -> None:
    """flower, the console, metrics (no auth) and the sandbox publish on 127.0.0.1 by default;
    SKYSYNC_PUBLISH_ADDRESS (in .env) opens them wider."""
    services = interpolate(load_compose(), COMPOSE_ENV)["services"]
    for name, port in (("flower", 5555), ("console", 8720), ("metrics", 9108), ("sandbox", 8710)):
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"], name
    everywhere = "0.0.0.0"  # noqa: S104 - what an operator may choose
    wide = interpolate(load_compose(), {**COMPOSE_ENV, "SKYSYNC_PUBLISH_ADDRESS": everywhere})
    assert wide["services"]["metrics"]["ports"] == ["0.0.0.0:9108:9108"]


def test_flower_and_metrics_listen_on_every_interface_inside_their_container() -> None:
    """`skysync flower` and `skysync metrics` listen on 127.0.0.1 by default (outside compose);
    in a container a published port reaches only a process listening on the container's own
    interface, so compose says --address 0.0.0.0 (what is published stays on 127.0.0.1)."""
    services = interpolate(load_compose(), COMPOSE_ENV)["services"]
    for name in ("flower", "metrics"):
        command = " ".join(service_command(services[name], COMPOSE_ENV)).replace("=", " ")
        assert "--address 0.0.0.0" in command, (name, command)
    console = " ".join(service_command(services["console"], COMPOSE_ENV))
    assert "--host 0.0.0.0" in console, console


def test_services_and_their_order() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"postgres", "redis", *SKYSYNC_SERVICES}

    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "the database lives in a named volume"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert services["redis"]["image"] == "redis:7"
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]

    def depends(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name].get("depends_on", {}).items()}

    assert depends("migrate") == {"postgres": "service_healthy"}
    assert depends("worker")["migrate"] == "service_completed_successfully"
    assert depends("worker")["redis"] == "service_healthy"
    assert depends("metrics")["migrate"] == "service_completed_successfully"
    assert depends("console")["migrate"] == "service_completed_successfully"
    assert services["migrate"]["restart"] == "no", "a one-shot"

    beat = services["beat"]
    assert "deploy" not in beat and "scale" not in beat, "exactly one beat"
    assert services["sandbox"]["profiles"] == ["sandbox"]
    for name in set(SKYSYNC_SERVICES) - {"sandbox"}:
        assert "profiles" not in services[name], f"{name} runs without a profile"

    for name in SKYSYNC_SERVICES:
        env = service_environment(services[name], COMPOSE_ENV)
        assert set(env) >= REQUIRED_ENV, f"{name} lacks {REQUIRED_ENV - set(env)}"
        assert env["SKYSYNC_BROKER_URL"] != env["SKYSYNC_REDIS_URL"]
    # The fast lane is off unless the one variable says otherwise; the worker then runs it.
    assert service_environment(services["worker"], COMPOSE_ENV)["SKYSYNC_FAST_LANE"] == "off"
    lane_on = {**COMPOSE_ENV, "SKYSYNC_FAST_LANE": "stockouts"}
    assert service_environment(services["worker"], lane_on)["SKYSYNC_FAST_LANE"] == "stockouts"
    # The Flower password goes to Flower only, the console's users to the console only.
    for secret, owner in (
        ("SKYSYNC_FLOWER_BASIC_AUTH", "flower"),
        ("SKYSYNC_CONSOLE_OPERATORS", "console"),
        ("SKYSYNC_CONSOLE_VIEWERS", "console"),
    ):
        assert secret in service_environment(services[owner], COMPOSE_ENV)
        for name in set(SKYSYNC_SERVICES) - {owner}:
            assert secret not in service_environment(services[name], COMPOSE_ENV), (secret, name)

    # The published ports are the ones the commands listen on.
    for name, port in (("flower", 5555), ("console", 8720), ("metrics", 9108), ("sandbox", 8710)):
        assert str(port) in " ".join(service_command(services[name], COMPOSE_ENV))
        published = interpolate(services[name]["ports"], COMPOSE_ENV)
        assert [p.rsplit(":", 2)[1:] for p in published] == [[str(port), str(port)]]


# --------------------------------------------------------------------------- running the commands


class Process:
    """A command in its own process group, its output collected line by line."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path):
        self.name, self.argv = name, argv
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: teardown ends all its children
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def tail(self, n: int = 40) -> str:
        with self._lock:
            return "".join(self._lines[-n:])

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> None:
        wait_for(
            lambda: text in self.output or self.proc.poll() is not None,
            timeout,
            f"{text!r} from {self.name} ({' '.join(self.argv)})",
            interval=POLL,
        )
        if text not in self.output:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode} before printing {text!r}:\n"
                f"{self.tail()}"
            )

    def wait_for_http(self, url: str, timeout: float = START_TIMEOUT) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                httpx.get(url, timeout=2)
            except httpx.TransportError:
                return False
            return True

        wait_for(answers, timeout, f"{self.name} to answer at {url}", interval=POLL)
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after 10 s; never raises."""
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            try:  # the leader is gone; its children (prefork pool) may not be yet
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Stack:
    """The compose services, run on this machine (see the module docstring)."""

    def __init__(self, db_url: str, sandbox: Sandbox, workdir: Path):
        self.compose = load_compose()
        self.db_url = db_url
        self.sandbox = sandbox
        self.workdir = workdir
        self.ports: dict[str, int] = {}
        self.processes: dict[str, Process] = {}
        self._migrate: subprocess.CompletedProcess[str] | None = None

    # -- the rewrites
    def _url(self, value: str) -> str:
        parsed = sa.make_url(value) if "://" in value else None
        if parsed is None or parsed.host not in {"postgres", "redis", "sandbox"}:
            return value
        if parsed.host == "postgres":
            assert parsed.drivername == "postgresql+psycopg"
            assert (parsed.username, parsed.port, parsed.database) == ("skysync", 5432, "skysync")
            assert parsed.password == COMPOSE_ENV["POSTGRES_PASSWORD"]
            return self.db_url
        if parsed.host == "redis":
            assert parsed.port == 6379
            return f"redis://127.0.0.1:6379/{REDIS_DBS[int(parsed.database or 0)]}"
        assert value == "http://sandbox:8710", value
        return self.sandbox.base_url

    def env(self, name: str, compose_env: Mapping[str, str] = COMPOSE_ENV) -> dict[str, str]:
        """What the container would get, rewritten for this machine, over a clean base."""
        service_env = service_environment(self.compose["services"][name], compose_env)
        rewritten = {k: self._url(v) for k, v in service_env.items()}
        for key, value in rewritten.items():
            assert not re.search(r"@(postgres|redis)[:/]|//(postgres|redis|sandbox)[:/]", value), (
                f"{name}: {key} still names a compose host"
            )
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SKYSYNC_", "FLOWER_"))}
        return {**base, "PYTHONUNBUFFERED": "1", **rewritten}

    def port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def argv(self, name: str) -> list[str]:
        command = service_command(self.compose["services"][name], COMPOSE_ENV)
        program = VENV_BIN / command[0]
        assert program.is_file(), f"{name}: {command[0]} is not in {VENV_BIN}"
        argv, args = [str(program)], iter(command[1:])
        for arg in args:
            option, eq, value = arg.partition("=")
            if option in {"--port", "--host", "--address", "--schedule"}:
                value = value if eq else next(args)
                if option == "--port":
                    value = str(self.port(name))
                elif option in {"--host", "--address"}:
                    value = "127.0.0.1"
                else:
                    value = str(self.workdir / Path(value).name)
                argv += [f"{option}={value}"] if eq else [option, value]
            else:
                argv.append(arg)
        return argv

    def healthcheck(self, name: str) -> list[str]:
        """The service's healthcheck as a host command (its port rewritten like the command's)."""
        test = interpolate(self.compose["services"][name]["healthcheck"]["test"], {})
        kind, rest = test[0], test[1:]
        if name in self.ports:
            rest = [
                re.sub(r":(5555|8720|9108|8710)\b", f":{self.ports[name]}", part) for part in rest
            ]
        if kind == "CMD-SHELL":
            return ["/bin/sh", "-c", rest[0]]
        assert kind == "CMD", test
        program = VENV_BIN / rest[0]
        return [str(program) if program.is_file() else rest[0], *rest[1:]]

    # -- running
    def run_once(
        self, name: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """The service's command run to its end here (``env``: its environment, else the
        compose file's), its output captured."""
        return subprocess.run(
            self.argv(name),
            env=env if env is not None else self.env(name),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def migrate(self) -> subprocess.CompletedProcess[str]:
        if self._migrate is None:
            self._migrate = self.run_once("migrate", timeout=60)
        return self._migrate

    def require_migrated(self) -> None:
        done = self.migrate()
        if done.returncode != 0:
            pytest.fail(f"`skysync migrate` failed (nothing can use the tables):\n{done.stderr}")

    def start(self, name: str) -> Process:
        if name not in self.processes:
            self.processes[name] = Process(name, self.argv(name), self.env(name), self.workdir)
        return self.processes[name]

    def start_long_running(self) -> None:
        """Start them all at once (as `compose up` would) so that their start-ups overlap."""
        self.require_migrated()
        for name in LONG_RUNNING:
            self.start(name)

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("compose")  # cwd: no stray .env is read
    db_url = create_pg_database("skysync_compose")
    flush_redis(*REDIS_DBS.values())
    sandbox = Sandbox(SandboxConfig(seed=5))
    sandbox.start()
    running = Stack(db_url, sandbox, workdir)
    try:
        yield running
    finally:
        running.stop()
        flush_redis(*REDIS_DBS.values())
        sandbox.stop()
        drop_pg_database(db_url)


@pytest.fixture(scope="module")
def started(stack: Stack) -> Stack:
    stack.start_long_running()
    return stack


@pytest.mark.compose
def test_migrate_exits_0(stack: Stack) -> None:
    done = stack.migrate()
    assert done.returncode == 0, f"{' '.join(done.args)}:\n{done.stdout}\n{done.stderr}"
    assert "at revision" in done.stdout
    engine = sa.create_engine(stack.db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM skysync_outbox")).scalar_one() == 0
    finally:
        engine.dispose()


@pytest.mark.compose
def test_worker_comes_up(started: Stack) -> None:
    started.processes["worker"].wait_for_output(" ready.")


@pytest.mark.compose
def test_beat_comes_up(started: Stack) -> None:
    beat = started.processes["beat"]
    beat.wait_for_output("beat: Starting")
    assert beat.proc.poll() is None, beat.tail()
    assert (started.workdir / "celerybeat-schedule").exists() or any(
        p.name.startswith("celerybeat-schedule") for p in started.workdir.iterdir()
    )


@pytest.mark.compose
def test_flower_answers_401_without_credentials_200_with(started: Stack) -> None:
    flower = started.processes["flower"]
    url = f"http://127.0.0.1:{started.port('flower')}"
    flower.wait_for_http(f"{url}/healthcheck")
    assert httpx.get(f"{url}/", timeout=10).status_code == 401
    assert httpx.get(f"{url}/", auth=(FLOWER_USER, "wrong"), timeout=10).status_code == 401
    answer = httpx.get(f"{url}/", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10)
    assert answer.status_code == 200
    assert FLOWER_PASSWORD not in flower.output and FLOWER_PASSWORD not in " ".join(flower.argv)


@pytest.mark.compose
def test_flower_refuses_to_start_without_basic_auth(stack: Stack) -> None:
    # The compose file as run with SKYSYNC_FLOWER_BASIC_AUTH unset: Flower gets "" and refuses.
    compose_env = {k: v for k, v in COMPOSE_ENV.items() if k != "SKYSYNC_FLOWER_BASIC_AUTH"}
    env = stack.env("flower", compose_env)
    assert env["SKYSYNC_FLOWER_BASIC_AUTH"] == ""
    done = stack.run_once("flower", env)
    assert done.returncode == 2, f"{done.stdout}\n{done.stderr}"
    assert "SKYSYNC_FLOWER_BASIC_AUTH" in done.stderr


@pytest.mark.compose
def test_an_outbox_row_written_by_sql_goes_through_to_the_emulator(started: Stack) -> None:
    sku = f"COMPOSE-{uuid.uuid4().hex[:8].upper()}"
    payload = {
        "name": "Caneca azul 300 ml",
        "description": "Caneca de cerâmica",
        "status": "enabled",
        "qty": 10,
        "price": 39.9,
        "brand": "Acme",
        "weight": 0.4,
        "height": 10,
        "width": 8,
        "length": 8,
        "categories": [{"code": "cozinha", "name": "Casa > Cozinha"}],
        "images": ["https://cdn.example.com/caneca-azul.jpg"],
    }
    engine = sa.create_engine(started.db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:  # as the ERP does it: plain SQL
            row_id = conn.execute(
                sa.text(
                    "INSERT INTO skysync_outbox (kind, ref, payload) "
                    "VALUES ('product', :ref, CAST(:payload AS jsonb)) RETURNING id"
                ),
                {"ref": sku, "payload": json.dumps(payload)},
            ).scalar_one()
        worker = started.processes["worker"]
        worker.wait_for_output(" ready.")

        # Beat's first relay tick is SKYSYNC_SYNC_INTERVAL (900 s) away: ask for a batch now,
        # with the command and environment an operator would use in the worker's container.
        trigger = subprocess.run(
            [str(VENV_BIN / "skysync"), "trigger"],
            env=started.env("worker"),
            cwd=started.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert trigger.returncode == 0, f"{trigger.stdout}\n{trigger.stderr}"

        def row() -> tuple[str, str | None]:
            with engine.connect() as conn:
                return tuple(
                    conn.execute(
                        sa.text("SELECT state, reason FROM skysync_outbox WHERE id = :id"),
                        {"id": row_id},
                    ).one()
                )

        try:
            wait_for(
                lambda: row()[0] not in ("pending", "in_flight"),
                DELIVERY_TIMEOUT,
                "the row",
                interval=POLL,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; row {row()}; worker:\n{worker.tail()}") from None
        assert row()[0] == "sent", f"row {row()}; worker:\n{worker.tail()}"
    finally:
        engine.dispose()
    product = started.sandbox.state()["products"][sku]
    assert product["price"] == 39.9 and product["qty"] == 10


@pytest.mark.compose
def test_console_answers_401_without_credentials_200_with(started: Stack) -> None:
    console = started.processes["console"]
    url = f"http://127.0.0.1:{started.port('console')}"
    console.wait_for_http(f"{url}/")
    assert httpx.get(f"{url}/", timeout=10).status_code == 401
    assert httpx.get(f"{url}/", auth=(CONSOLE_USER, "wrong"), timeout=10).status_code == 401
    for path in ("/", "/trouble", "/reconcile", "/static/console.css"):
        answer = httpx.get(f"{url}{path}", auth=(CONSOLE_USER, CONSOLE_PASSWORD), timeout=30)
        assert answer.status_code == 200, (path, answer.text[:300])
    assert CONSOLE_PASSWORD not in console.output and CONSOLE_PASSWORD not in " ".join(console.argv)


@pytest.mark.compose
def test_console_refuses_to_start_without_users(stack: Stack) -> None:
    compose_env = {k: v for k, v in COMPOSE_ENV.items() if not k.startswith("SKYSYNC_CONSOLE_")}
    env = stack.env("console", compose_env)
    assert env["SKYSYNC_CONSOLE_OPERATORS"] == env["SKYSYNC_CONSOLE_VIEWERS"] == ""
    stack.require_migrated()
    done = stack.run_once("console", env)
    assert done.returncode == 2, f"{done.stdout}\n{done.stderr}"
    assert "SKYSYNC_CONSOLE_OPERATORS" in done.stderr


@pytest.mark.compose
def test_worker_flower_and_console_healthchecks_pass(started: Stack) -> None:
    started.processes["worker"].wait_for_output(" ready.")
    started.processes["flower"].wait_for_http(
        f"http://127.0.0.1:{started.port('flower')}/healthcheck"
    )
    started.processes["console"].wait_for_http(f"http://127.0.0.1:{started.port('console')}/")
    for name in ("worker", "flower", "console"):
        env = started.env(name)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["HOSTNAME"] = socket.gethostname()  # Docker sets it to the container's hostname
        done = subprocess.run(
            started.healthcheck(name),
            env=env,
            cwd=started.workdir,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"{name} healthcheck:\n{done.stdout}\n{done.stderr}"


@pytest.mark.compose
def test_sandbox_service_serves_the_emulator(started: Stack) -> None:
    sandbox = started.processes["sandbox"]
    sandbox.wait_for_output("SkyHub emulator listening on")
    answer = httpx.get(f"http://127.0.0.1:{started.port('sandbox')}/_sandbox/state", timeout=10)
    assert answer.status_code == 200
    assert "products" in answer.json()


@pytest.mark.compose
def test_metrics_serves_outbox_rows(stack: Stack) -> None:
    helped = subprocess.run(
        [str(VENV_BIN / "skysync"), "metrics", "--help"],
        env=stack.env("metrics"),
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if helped.returncode != 0:
        pytest.fail(
            "the compose `metrics` service runs `skysync metrics --port 9108`, and that command "
            f"does not exist yet (`skysync metrics --help` exited {helped.returncode}: "
            f"{helped.stderr.strip()[-300:]})"
        )
    stack.require_migrated()
    metrics = stack.start("metrics")
    url = f"http://127.0.0.1:{stack.port('metrics')}/metrics"
    metrics.wait_for_http(url)
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200
    assert "skysync_outbox_rows" in answer.text

    env = stack.env("metrics")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        stack.healthcheck("metrics"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"metrics healthcheck:\n{done.stdout}\n{done.stderr}"
