"""`make compose-test`: the production path, for real.

A real Docker engine; the image built from the project's own Dockerfile; `docker-compose
--profile sandbox up -d` with the project's unmodified docker-compose.yml and a .env made from
.env.example; rows INSERTed with psql exactly as docs/erp-contract.md tells the ERP; a second
SkyHub account (an accounts file mounted as compose's secret, rows for both accounts through
psql, each ending in its own account of the emulator); then operations: a worker stopped
mid-batch, PostgreSQL and Redis restarted mid-batch, three workers under one rate limit, every
service stopped by SIGTERM.

No image registry is reachable on our CI machines, so the official base images are replaced by
local stand-ins built from Debian packages (.ci/standin-images/README.md says how and why). They
are cached between runs under STATE_DIR, keyed by a hash of their recipe.

Each step prints its outcome and duration; a failed check stops the run with exit 1 after
printing the services' logs. The engine and the stack are torn down in every case.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from skysync.emulator.limits import peak_per_second

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / ".ci" / "standin-images"
STATE_DIR = Path(os.environ.get("SKYSYNC_CI_STATE", "/var/lib/skysync-ci"))
RUN_DIR = Path("/run/skysync-ci")  # short: the engine's unix socket path must stay < 108 chars
SOCKET = RUN_DIR / "docker.sock"
PROJECT = "skysyncci"
IMAGE = "skysync:latest"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
LEASE_SECONDS = 300  # the default; the worker-stop check must beat it by far
RATE_BUCKET_LIMIT = 9  # SkyHub's (and the emulator's) limit per bucket and second
SECOND_ACCOUNT = "loja-sul"  # the second SkyHub account: its own email and key, and its own rows
SECOND_EMAIL = "sul@loja.example"
ACCOUNTS_TARGET = "/run/secrets/accounts.toml"  # where docker-compose.yml mounts the secret
IMAGE_UID = 10001  # the image's user (Dockerfile): the accounts file must be readable by it

DOCKER_ENV = {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "DOCKER_BUILDKIT": "0"}
RESULTS: list[tuple[str, str, float]] = []


class CheckFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"compose-test: {message}", flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    log(f"--- {name}")
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        RESULTS.append((name, f"FAILED: {exc}", time.monotonic() - started))
        raise
    RESULTS.append((name, "ok", time.monotonic() - started))
    log(f"    ok ({time.monotonic() - started:.1f} s)")


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(
    args: list[str],
    *,
    input: str | None = None,
    check_rc: bool = True,
    timeout: float = 900,
    stream: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command; ``stream`` shows its output as it goes (long builds) instead of keeping it."""
    done = subprocess.run(
        args,
        input=input,
        capture_output=not stream,
        text=True,
        env=DOCKER_ENV,
        timeout=timeout,
        check=False,
    )
    if check_rc and done.returncode != 0:
        raise CheckFailed(
            f"{' '.join(args[:4])}... exited {done.returncode}:\n{(done.stdout or '')[-3000:]}"
            f"\n{(done.stderr or '')[-3000:]}"
        )
    return done


def wait_for(what: str, condition: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing is not up yet
            last_error = exc
        time.sleep(every)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last_error})")


# --------------------------------------------------------------------------- the engine


def docker_bin() -> str:
    # Debian's docker.io client matches its engine (20.10); a newer client elsewhere on the
    # PATH may want BuildKit/buildx, which this engine setup does not have.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def docker(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run([docker_bin(), *args], **kwargs)


def ensure_tools() -> None:
    missing = [t for t in ("dockerd", "docker-compose", "debootstrap") if not shutil.which(t)]
    if missing:
        log(f"installing {', '.join(missing)} from Debian's packages")
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "docker.io", "docker-compose", "debootstrap"],
            check=True,
            env=apt,
        )


def stop_engine() -> None:
    pidfile = RUN_DIR / "docker.pid"
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(60):
                os.kill(pid, 0)
                time.sleep(0.5)
        except (ProcessLookupError, ValueError):
            pass
    # what a killed engine leaves mounted under its exec root
    subprocess.run(
        ["sh", "-c", f"grep -o ' {RUN_DIR}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"],
        check=False,
    )


def start_engine() -> None:
    stop_engine()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    logfile = open(STATE_DIR / "dockerd.log", "ab")  # noqa: SIM115 - the daemon keeps it
    subprocess.Popen(
        [
            "dockerd",
            "--storage-driver",
            "vfs",
            "--iptables=false",
            "--bridge=none",
            "--data-root",
            str(STATE_DIR / "docker"),
            "--exec-root",
            str(RUN_DIR / "exec"),
            "--pidfile",
            str(RUN_DIR / "docker.pid"),
            "-H",
            f"unix://{SOCKET}",
        ],
        stdout=logfile,
        stderr=logfile,
        start_new_session=True,
    )
    wait_for("the Docker engine", lambda: docker("info", check_rc=False).returncode == 0, 60)


# --------------------------------------------------------------------------- images


def recipe_hash(*parts: str | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            for file in sorted(p for p in part.rglob("*") if p.is_file()):
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
        else:
            digest.update(part.encode())
    return digest.hexdigest()[:16]


def image_recipe(name: str) -> str | None:
    done = docker(
        "image",
        "inspect",
        "-f",
        '{{index .Config.Labels "skysync.ci.recipe"}}',
        name,
        check_rc=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def build_base() -> str:
    """python:3.11-slim stand-in: a debootstrap root file system, imported."""
    key = recipe_hash("base-v1", DEBIAN_MIRROR, BASE_PACKAGES, "bookworm")
    if image_recipe("python:3.11-slim") == key:
        log("python:3.11-slim stand-in: cached")
        return key
    tarball = STATE_DIR / f"rootfs-{key}.tar"
    if not tarball.exists():
        with tempfile.TemporaryDirectory(dir=STATE_DIR) as tmp:
            rootfs = Path(tmp) / "rootfs"
            log("debootstrap bookworm (about 40 s)")
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={BASE_PACKAGES}",
                    "bookworm",
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                timeout=900,
                stream=True,
            )
            # pip inside a container needs the host's CA bundle to reach PyPI from here: it
            # goes into the stand-in, never into the project's Dockerfile.
            shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/")
            (rootfs / "etc/pip.conf").write_text(
                "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
            )
            run(["tar", "-C", str(rootfs), "-cf", str(tarball) + ".part", "."])
            Path(str(tarball) + ".part").rename(tarball)
    for old in STATE_DIR.glob("rootfs-*.tar"):
        if old != tarball:
            old.unlink()
    docker(
        "import",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["python3"]',
        "--change",
        f"LABEL skysync.ci.recipe={key}",
        str(tarball),
        "python:3.11-slim",
    )
    return key


def build_standin(name: str, folder: str, base_key: str) -> None:
    key = recipe_hash(base_key, STANDINS / folder)
    if image_recipe(name) == key:
        log(f"{name} stand-in: cached")
        return
    docker(
        "build",
        "--network",
        "host",
        "--label",
        f"skysync.ci.recipe={key}",
        "-t",
        name,
        str(STANDINS / folder),
        stream=True,
    )


# --------------------------------------------------------------------------- the stack


class Stack:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.env_file = workdir / ".env"
        self.password = "ci-" + secrets.token_hex(8)
        self.flower_auth = ("ops", "ci-" + secrets.token_hex(8))
        self.console_operator = ("ops", "ci-console-" + secrets.token_hex(8))
        self.console_viewer = ("watch", "ci-viewer-" + secrets.token_hex(8))
        self.second_key = "ci-sul-" + secrets.token_hex(12)
        self.accounts_file = workdir / "accounts.toml"

    def write_env(self, **more: str) -> None:
        """`cp .env.example .env`, then set what the README tells a new user to set (and
        ``more``, as an operator would edit it later)."""
        text = (ROOT / ".env.example").read_text(encoding="utf-8")
        settings = {
            "POSTGRES_PASSWORD": self.password,
            "SKYSYNC_FLOWER_BASIC_AUTH": ":".join(self.flower_auth),
            "SKYSYNC_CONSOLE_OPERATORS": ":".join(self.console_operator),
            "SKYSYNC_CONSOLE_VIEWERS": ":".join(self.console_viewer),
            "SKYSYNC_SKYHUB_URL": "http://sandbox:8710",
            # batches and polls every few seconds, so the run does not wait 15 minutes
            "SKYSYNC_SYNC_INTERVAL": "3",
            "SKYSYNC_ORDER_POLL_INTERVAL": "3",
            **more,
        }
        for name, value in settings.items():
            # the line that is set, else the first commented-out one, as a user would edit it
            for pattern in (rf"^{name}=.*$", rf"^#{name}=.*$"):
                text, n = re.subn(pattern, f"{name}={value}", text, count=1, flags=re.M)
                if n:
                    break
            check(n == 1, f".env.example has no line for {name}")
        self.env_file.write_text(text, encoding="utf-8")

    def compose(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run(
            [
                "docker-compose",
                "-p",
                PROJECT,
                "-f",
                str(ROOT / "docker-compose.yml"),
                "--env-file",
                str(self.env_file),
                "--profile",
                "sandbox",
                *args,
            ],
            **kwargs,
        )

    def containers(self, service: str) -> list[str]:
        out = self.compose("ps", "-q", service).stdout.split()
        return out

    def inspect(self, container: str, fmt: str) -> str:
        return docker("inspect", "-f", fmt, container).stdout.strip()

    def psql(self, sql: str) -> str:
        done = self.compose(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "skysync",
            "-d",
            "skysync",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            input=sql,
        )
        return done.stdout.strip()

    def states(self, where: str = "true") -> dict[str, int]:
        out = self.psql(f"SELECT state, count(*) FROM skysync_outbox WHERE {where} GROUP BY 1;")
        return {line.split("|")[0]: int(line.split("|")[1]) for line in out.splitlines() if line}

    def sandbox(self, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:8710{path}", timeout=10).json()

    def write_accounts_file(self) -> None:
        """The second account, as docs/running.md tells an operator: TOML, the key inline,
        readable by the image's user only. No account_key, and SKYSYNC_SKYHUB_ACCOUNT_KEY is
        unset here: on the emulator the account still goes with its own email and key, to its
        own account there (an earlier skysync sent it with the emulator's default
        credentials, into `default`)."""
        self.accounts_file.write_text(
            f"[accounts.{SECOND_ACCOUNT}]\n"
            f'email = "{SECOND_EMAIL}"\n'
            f'api_key = "{self.second_key}"\n',
            encoding="utf-8",
        )
        os.chown(self.accounts_file, IMAGE_UID, IMAGE_UID)
        self.accounts_file.chmod(0o400)

    def check_no_secret_in_logs(self) -> None:
        """The second account's api_key is in the accounts file only: in no container's log."""
        logs = self.compose("logs", "--no-color").stdout
        check(logs.strip(), "no logs to look at")
        check(self.second_key not in logs, f"{SECOND_ACCOUNT}'s api_key is in the services' logs")
        check(self.flower_auth[1] not in logs, "Flower's password is in the services' logs")
        for _user, password in (self.console_operator, self.console_viewer):
            check(password not in logs, "a console password is in the services' logs")

    def ping_workers(self, seconds: int, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`celery inspect ping` from inside a worker container: every worker answers "pong"."""
        command = ["exec", "-T", "worker", "celery", "-A", "skysync.celery_app", "inspect"]
        return self.compose(*command, "ping", "--timeout", str(seconds), **kw)

    def worker_ready(self) -> bool:
        done = self.ping_workers(5, check_rc=False, timeout=60)
        return done.returncode == 0 and "pong" in done.stdout

    def dump_logs(self) -> None:
        done = self.compose("logs", "--no-color", "--tail", "60", check_rc=False)
        print(done.stdout[-20000:], flush=True)


def readme_sql(kinds: set[str]) -> list[str]:
    """The ERP contract's INSERT statements (docs/erp-contract.md), those of `kinds`, verbatim."""
    contract = (ROOT / "docs" / "erp-contract.md").read_text(encoding="utf-8")
    block = contract.split("```sql", 1)[1].split("```", 1)[0]
    code = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
    statements = []
    for raw in re.split(r";\s*$", code, flags=re.M):
        text = raw.strip()
        match = re.search(r"INTO skysync_outbox \(kind, ref, payload\)\s*VALUES\s*\('(\w+)'", text)
        if match and match[1] in kinds:
            statements.append(text.strip() + ";")
    check(
        {re.search(r"VALUES\s*\('(\w+)'", s)[1] for s in statements} == kinds,  # type: ignore[index]
        f"docs/erp-contract.md's SQL lacks some of {sorted(kinds)}",
    )
    return statements


def insert_products(
    stack: Stack, prefix: str, count: int, *, account: str | None = None, base: int = 0
) -> None:
    """``count`` products ``prefix-1``...: qty base + g, price base + 10 + g. Without
    ``account`` the rows name none (the `default` account), as an ERP that never heard of
    accounts writes them."""
    column, value = ("account, ", f"'{account}', ") if account else ("", "")
    stack.psql(
        f"INSERT INTO skysync_outbox ({column}kind, ref, payload) SELECT {value}'product', "
        f"'{prefix}-' || g, json_build_object('name', 'Produto ' || g, 'status', 'enabled', "
        f"'qty', {base} + g, 'price', {base} + 10 + g, 'brand', 'Acme', 'images', "
        "json_build_array('https://cdn.example.com/' || g || '.jpg')) "
        f"FROM generate_series(1, {count}) g;"
    )


def wait_mid_batch(stack: Stack, prefix: str, count: int) -> dict[str, int]:
    """Until some of the prefix's rows are sent and others not yet."""

    def mid() -> dict[str, int] | None:
        states = stack.states(f"ref LIKE '{prefix}-%'")
        sent = states.get("sent", 0)
        return states if 5 <= sent < count - 20 else None

    return wait_for(f"{prefix} rows to be mid-batch", mid, 120, every=0.3)


def wait_all_sent(stack: Stack, prefix: str, count: int, timeout: float) -> float:
    started = time.monotonic()

    def done() -> bool:
        states = stack.states(f"ref LIKE '{prefix}-%'")
        bad = {s: n for s, n in states.items() if s in ("rejected", "dead", "withheld")}
        check(not bad, f"{prefix} rows ended {bad}")
        return states.get("sent", 0) == count

    wait_for(f"all {count} {prefix} rows sent", done, timeout, every=1.0)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the checks


def check_basic_flow(stack: Stack) -> None:
    code = "Lojas Americanas-1517940500554-01"
    seeded = httpx.post(
        "http://127.0.0.1:8710/_sandbox/orders",
        json={"code": code, "status": "payment_received"},
        timeout=10,
    )
    check(seeded.status_code in (200, 201), f"seeding an order: {seeded.status_code}")
    wait_for(
        "beat's order pull to store the order in the inbox",
        lambda: (
            stack.psql(f"SELECT count(*) FROM skysync_order_inbox WHERE code = '{code}';") == "1"
        ),
        60,
    )
    kinds = {"product", "price", "stock", "order_invoice", "order_shipment", "order_delivery"}
    stack.psql("\n".join(readme_sql(kinds)))
    wait_for(
        "the ERP contract's rows to be final",
        lambda: not ({"pending", "in_flight"} & set(stack.states())),
        120,
    )
    rows = stack.psql("SELECT kind, state, coalesce(reason, '') FROM skysync_outbox ORDER BY id;")
    log("rows:\n      " + rows.replace("\n", "\n      "))
    for line in rows.splitlines():
        kind, state, reason = line.split("|", 2)
        check(state in ("sent", "superseded"), f"a {kind} row ended {state}: {reason}")
    check(
        sum(1 for line in rows.splitlines() if line.split("|")[1] == "sent") >= 4,
        "the SKU's newest row and the three order steps are sent",
    )
    state = stack.sandbox("/_sandbox/state")
    product = state["products"]["SKU-123"]
    check(product["name"] == "Caneca azul 300 ml", f"product name in SkyHub: {product.get('name')}")
    check(product["price"] == 129.9, f"price in SkyHub: {product.get('price')}")
    promo = product.get("promotional_price")
    check(promo == 99.9, f"promotional price in SkyHub: {promo}")
    check(product["qty"] == 0, f"qty in SkyHub: {product.get('qty')}")
    status = state["orders"][code]["status"]
    status = status.get("code") if isinstance(status, dict) else status
    check(status == "complete", f"order status in SkyHub: {status}")
    log(f"SkyHub holds SKU-123 price 129.9/99.9 qty 0, order {code!r} {status}")


def check_flower_and_metrics(stack: Stack) -> None:
    bare = httpx.get("http://127.0.0.1:5555/", timeout=10)
    check(bare.status_code == 401, f"Flower without credentials: {bare.status_code}")
    authed = httpx.get("http://127.0.0.1:5555/", auth=stack.flower_auth, timeout=10)
    check(authed.status_code == 200, f"Flower with credentials: {authed.status_code}")
    metrics = httpx.get("http://127.0.0.1:9108/metrics", timeout=10).text
    sent = re.findall(r'^skysync_outbox_rows\{[^}]*state="sent"[^}]*\} (\S+)$', metrics, re.M)
    total = sum(float(v) for v in sent)
    expected = int(stack.psql("SELECT count(*) FROM skysync_outbox WHERE state = 'sent';"))
    check(total == expected, f"/metrics shows {total} sent rows, the table has {expected}")
    log(f"Flower 401 then 200; /metrics shows the {expected} sent rows")


def check_console(stack: Stack) -> None:
    """The console answers behind its authentication: 401 without credentials or with a wrong
    password, every page with an operator's, the rows the table holds on its overview; a
    viewer's action refused; no console password on any page."""
    base = "http://127.0.0.1:8720"
    wait_for("the console to answer", lambda: _answers(f"{base}/"), 60)
    bare = httpx.get(f"{base}/", timeout=10)
    check(bare.status_code == 401, f"console without credentials: {bare.status_code}")
    check("Basic" in bare.headers.get("www-authenticate", ""), "no WWW-Authenticate: Basic")
    wrong = httpx.get(f"{base}/", auth=(stack.console_operator[0], "wrong"), timeout=10)
    check(wrong.status_code == 401, f"console with a wrong password: {wrong.status_code}")
    pages = {}
    for path in ("/", "/trouble", "/sku?sku=SKU-123", "/orders", "/reconcile"):
        page = httpx.get(f"{base}{path}", auth=stack.console_operator, timeout=30)
        check(page.status_code == 200, f"console {path} with credentials: {page.status_code}")
        pages[path] = page.text
    check("SKU-123" in pages["/sku?sku=SKU-123"], "the SKU doctor does not show SKU-123")
    for _user, password in (stack.console_operator, stack.console_viewer):
        check(all(password not in text for text in pages.values()), "a password on a page")
    refused = httpx.post(
        f"{base}/trouble/requeue", auth=stack.console_viewer, data={"state": "dead"}, timeout=10
    )
    check(refused.status_code == 403, f"a viewer's action: {refused.status_code}")
    log(f"console: 401 without and with a wrong password, {len(pages)} pages 200, viewer 403")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 401
    except httpx.HTTPError:
        return False


def add_second_account(stack: Stack) -> None:
    """What an operator does: the accounts file on the host, two lines in .env, `up -d`. The
    emulator is recreated first and told of the account, so that no worker ever sends
    loja-sul's credentials to an emulator that does not know them."""
    stack.write_accounts_file()
    stack.write_env(
        SKYSYNC_ACCOUNTS_FILE=ACCOUNTS_TARGET, SKYSYNC_ACCOUNTS_SECRET=str(stack.accounts_file)
    )
    stack.compose("up", "-d", "--no-build", "--no-deps", "sandbox")
    wait_for("the recreated emulator", lambda: stack.sandbox("/_sandbox/accounts"), 60)
    added = httpx.post(
        "http://127.0.0.1:8710/_sandbox/accounts",
        json={"name": SECOND_ACCOUNT, "email": SECOND_EMAIL, "api_key": stack.second_key},
        timeout=10,
    )
    check(added.status_code == 201, f"registering {SECOND_ACCOUNT}: {added.status_code}")
    emulator = stack.containers("sandbox")
    up(stack)  # recreates every other skysync service: the new variable and the secret
    check(stack.containers("sandbox") == emulator, "`up -d` recreated the emulator again")
    known = [a["name"] for a in stack.sandbox("/_sandbox/accounts")["accounts"]]
    check(known == ["default", SECOND_ACCOUNT], f"the emulator's accounts: {known}")
    mounted = stack.compose("exec", "-T", "worker", "ls", "-l", ACCOUNTS_TARGET).stdout.strip()
    listed = json.loads(
        stack.compose("exec", "-T", "worker", "skysync", "accounts", "list", "--json").stdout
    )
    names = [a["name"] for a in listed["accounts"]]
    log(f"worker: {mounted}; {listed['source']}: {names}")
    check(names == ["default", SECOND_ACCOUNT], f"the worker's accounts: {names}")


def check_two_accounts(stack: Stack) -> None:
    """The ERP writes the same SKUs for both accounts through psql, different values in each;
    each row ends sent, and each account of the emulator holds its own values only."""
    prefix, count, sul_base = "CI-ACCT", 20, 100
    insert_products(stack, prefix, count)  # no account: `default`
    insert_products(stack, prefix, count, account=SECOND_ACCOUNT, base=sul_base)

    def by_account() -> dict[str, dict[str, int]]:
        out = stack.psql(
            "SELECT account, state, count(*) FROM skysync_outbox "
            f"WHERE ref LIKE '{prefix}-%' GROUP BY 1, 2;"
        )
        found: dict[str, dict[str, int]] = {}
        for line in out.splitlines():
            account, state, n = line.split("|")
            found.setdefault(account, {})[state] = int(n)
        return found

    def all_sent() -> bool:
        found = by_account()
        for states in found.values():
            bad = {s: n for s, n in states.items() if s in ("rejected", "dead", "withheld")}
            check(not bad, f"{prefix} rows ended {found}")
        return found == {"default": {"sent": count}, SECOND_ACCOUNT: {"sent": count}}

    started = time.monotonic()
    wait_for(f"both accounts' {prefix} rows sent", all_sent, 120)
    log(f"rows by account: {by_account()} ({time.monotonic() - started:.1f} s)")
    skus = {f"{prefix}-{g}" for g in range(1, count + 1)}
    for account in ("default", SECOND_ACCOUNT):
        entries = stack.sandbox(f"/_sandbox/requests?account={account}")["log"]
        log(f"the emulator's account {account} was sent {len(entries)} requests")
        check(entries, f"the emulator's account {account} was sent no request")
    for account, base in (("default", 0), (SECOND_ACCOUNT, sul_base)):
        products = stack.sandbox(f"/_sandbox/state?account={account}")["products"]
        check(skus <= set(products), f"{account}: SkyHub lacks {sorted(skus - set(products))}")
        for g in range(1, count + 1):
            product = products[f"{prefix}-{g}"]
            got = (product.get("qty"), product.get("price"))
            want = (base + g, base + 10 + g)
            check(got == want, f"{account}: {prefix}-{g} in SkyHub is {got}, not {want}")
        sample = products[f"{prefix}-7"]
        log(
            f"SkyHub account {account}: {len(skus)} {prefix} products, each its own values "
            f"({prefix}-7 qty {sample['qty']}, price {sample['price']})"
        )
    sul = stack.sandbox(f"/_sandbox/state?account={SECOND_ACCOUNT}")["products"]
    check(set(sul) == skus, f"{SECOND_ACCOUNT} holds other products: {sorted(set(sul) - skus)}")
    refused = [
        e
        for e in stack.sandbox(f"/_sandbox/requests?account={SECOND_ACCOUNT}")["log"]
        if e["status"] in (401, 403)
    ]
    check(not refused, f"the emulator refused {SECOND_ACCOUNT}'s credentials {len(refused)} times")
    stack.check_no_secret_in_logs()
    log(f"neither {SECOND_ACCOUNT}'s api_key nor Flower's password is in the services' logs")


def check_worker_stop(stack: Stack) -> None:
    prefix, count = "CI-STOP", 150
    insert_products(stack, prefix, count)
    before = wait_mid_batch(stack, prefix, count)
    started = time.monotonic()
    stack.compose("stop", "worker")
    stop_s = time.monotonic() - started
    exit_code = stack.inspect(stack.containers("worker")[0], "{{.State.ExitCode}}")
    after = stack.states(f"ref LIKE '{prefix}-%'")
    check(sum(after.values()) == count, f"rows lost: {after}")
    check(not {"rejected", "dead"} & set(after), f"rows failed: {after}")
    log(f"mid-batch {before}; worker stopped in {stop_s:.1f} s (exit {exit_code}); rows {after}")
    check(exit_code == "0", f"the worker exited {exit_code} on SIGTERM")
    started = time.monotonic()
    stack.compose("start", "worker")
    took = wait_all_sent(stack, prefix, count, timeout=LEASE_SECONDS)
    check(took < LEASE_SECONDS / 2, f"rows came back only after {took:.0f} s")
    log(f"worker started again: all {count} sent {took:.1f} s later (lease {LEASE_SECONDS} s)")


def check_restart(stack: Stack, service: str) -> None:
    prefix, count = f"CI-{service.upper()}", 150
    insert_products(stack, prefix, count)
    before = wait_mid_batch(stack, prefix, count)
    stack.compose("restart", service)
    log(f"{service} restarted mid-batch ({before})")
    took = wait_all_sent(stack, prefix, count, timeout=LEASE_SECONDS + 120)
    log(f"all {count} {prefix} rows sent {took:.1f} s after the restart")


def check_scaled_workers(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-recreate", "--scale", "worker=3", "worker")
    wait_for("three workers", lambda: len(stack.containers("worker")) == 3, 60)
    wait_for("three workers answering", stack.worker_ready, 120, every=3)
    replies = stack.ping_workers(10).stdout
    check(replies.count("pong") == 3, f"not three workers answering:\n{replies}")
    skus = [f"CI-STOP-{i}" for i in range(1, 151)] + [f"CI-POSTGRES-{i}" for i in range(1, 151)]
    log_start = len(stack.sandbox("/_sandbox/requests")["log"])
    values = ", ".join(
        f"('stock', '{sku}', '{{\"qty\": {1000 + n}}}')" for n, sku in enumerate(skus)
    )
    stack.psql(f"INSERT INTO skysync_outbox (kind, ref, payload) VALUES {values};")
    started = time.monotonic()
    wait_for(
        "the stock rows on three workers",
        lambda: (
            stack.psql(
                "SELECT count(*) FROM skysync_outbox WHERE kind = 'stock' AND state = 'sent' "
                "AND ref LIKE 'CI-%';"
            )
            == str(len(skus))
        ),
        240,
    )
    took = time.monotonic() - started
    log_entries = stack.sandbox("/_sandbox/requests")["log"][log_start:]
    puts = [e for e in log_entries if e["method"] == "PUT" and e["route"].startswith("/products")]
    refused = [e for e in puts if e["status"] == 429]
    peak = peak_per_second([e["t"] for e in puts if e["status"] != 429])
    log(
        f"{len(skus)} stock updates on 3 workers in {took:.1f} s: {len(puts)} PUT /products, "
        f"{len(refused)} answered 429, at most {peak} accepted in any second"
    )
    check(not refused, f"SkyHub answered 429 {len(refused)} times with three workers")
    check(peak <= RATE_BUCKET_LIMIT, f"{peak} requests in one second (limit {RATE_BUCKET_LIMIT})")
    states = {stack.states(f"ref = '{sku}' AND kind = 'stock'").get("sent") for sku in skus[:3]}
    check(states == {1}, "stock rows sent")
    product = stack.sandbox("/_sandbox/state")["products"][skus[-1]]
    check(product["qty"] == 1000 + len(skus) - 1, f"stock in SkyHub: {product['qty']}")


def check_sigterm(stack: Stack) -> None:
    stack.compose("stop")
    codes = {}
    for service in ("worker", "beat", "flower", "console", "metrics", "sandbox"):
        for container in stack.containers(service):
            codes.setdefault(service, set()).add(stack.inspect(container, "{{.State.ExitCode}}"))
    log(f"exit codes after `docker-compose stop`: {codes}")
    check(all(c == {"0"} for c in codes.values()), f"services did not exit 0 on SIGTERM: {codes}")
    stack.check_no_secret_in_logs()


def up(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-build")
    migrate = wait_for("migrate's container", lambda: stack.containers("migrate"), 60)
    wait_for(
        "migrate to exit",
        lambda: stack.inspect(migrate[0], "{{.State.Status}}") == "exited",
        180,
    )
    code = stack.inspect(migrate[0], "{{.State.ExitCode}}")
    check(code == "0", f"migrate exited {code}")
    wait_for("the worker to answer ping", stack.worker_ready, 180, every=3)
    beat = stack.containers("beat")
    check(beat and stack.inspect(beat[0], "{{.State.Running}}") == "true", "beat is not running")
    wait_for(
        "beat to send its first batch",
        lambda: stack.psql("SELECT count(*) FROM skysync_run WHERE kind = 'relay';") != "0",
        60,
    )
    ports = {
        s: stack.compose("port", s, p).stdout.strip()
        for s, p in (
            ("flower", "5555"),
            ("console", "8720"),
            ("metrics", "9108"),
            ("sandbox", "8710"),
        )
    }
    log(f"published: {ports}")
    check(all(v.startswith("127.0.0.1:") for v in ports.values()), f"not on 127.0.0.1: {ports}")


def main() -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="skysync-compose-"))
    stack = Stack(workdir)
    failed = False
    try:
        with step("tools (docker.io, docker-compose, debootstrap)"):
            ensure_tools()
        with step("Docker engine"):
            start_engine()
        with step("stand-in base images"):
            base = build_base()
            build_standin("postgres:16", "postgres-16", base)
            build_standin("redis:7", "redis-7", base)
        with step("image from the project's Dockerfile"):
            docker("build", "--network", "host", "-t", IMAGE, str(ROOT), timeout=1200, stream=True)
            docker("image", "prune", "-f", check_rc=False)
        with step(".env from .env.example; docker-compose --profile sandbox up -d"):
            stack.write_env()
            stack.compose("down", "-v", "--remove-orphans", check_rc=False)
            up(stack)
        with step("the ERP contract's rows via psql end sent; SkyHub holds the values"):
            check_basic_flow(stack)
        with step("Flower 401/200, /metrics shows the rows"):
            check_flower_and_metrics(stack)
        with step("the console answers behind its authentication"):
            check_console(stack)
        with step(f"a second account: {SECOND_ACCOUNT} in an accounts file, compose's secret"):
            add_second_account(stack)
        with step("rows of both accounts via psql end sent, each in its own SkyHub account"):
            check_two_accounts(stack)
        with step("docker-compose stop worker mid-batch"):
            check_worker_stop(stack)
        with step("docker-compose restart postgres mid-batch"):
            check_restart(stack, "postgres")
        with step("docker-compose restart redis mid-batch"):
            check_restart(stack, "redis")
        with step("--scale worker=3 stays under the rate limit"):
            check_scaled_workers(stack)
        with step("docker-compose stop: every service exits 0 on SIGTERM"):
            check_sigterm(stack)
    except Exception as exc:
        failed = True
        log(f"FAILED: {type(exc).__name__}: {exc}")
        try:
            stack.dump_logs()
        except Exception as dump_exc:
            log(f"(no logs: {dump_exc})")
    finally:
        if stack.env_file.exists():
            stack.compose("down", "-v", "--remove-orphans", check_rc=False, timeout=300)
        stop_engine()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\ncompose-test summary:")
    for name, outcome, seconds in RESULTS:
        print(f"  {seconds:7.1f} s  {name}: {outcome}")
    print(f"  {time.monotonic() - started:7.1f} s  total")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
