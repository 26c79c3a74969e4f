# skysync: one image for every role (migrate, celery worker, celery beat, flower, metrics, the
# SkyHub emulator); docker-compose.yml picks the role with `command:`.
#
#   docker build -t skysync .
#   docker run --rm --env-file .env skysync skysync check-config
#
# No secret is baked in: configuration comes only from the environment at run time
# (.dockerignore keeps .env and everything else that is not the package out of the context).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && groupadd --system --gid 10001 skysync \
    && useradd --system --uid 10001 --gid skysync --home-dir /var/lib/skysync --create-home \
       --shell /usr/sbin/nologin skysync

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes. The
# list (and the build backend, so that the install below needs no network) is read from
# pyproject.toml itself, so there is no second list to keep in step.
COPY pyproject.toml /tmp/deps/
RUN python -c 'import tomllib; p = tomllib.load(open("/tmp/deps/pyproject.toml", "rb")); print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' \
        > /tmp/deps/requirements.txt \
    && pip install -r /tmp/deps/requirements.txt \
    && rm -rf /tmp/deps

# The project itself, a normal (non-editable) install, as `pip install .` gives any user: the
# wheel carries the Alembic scripts inside the package (skysync/_migrations, see setup.py), so
# the sources are removed afterwards and nothing at run time reads them. The check at the end
# fails the build when the installed package cannot find its migrations.
COPY pyproject.toml setup.py README.md /tmp/src/
COPY migrations /tmp/src/migrations
COPY skysync /tmp/src/skysync
RUN pip install --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && skysync --version \
    && python -c 'from skysync.store.db import ALEMBIC_DIR; print("migrations:", ALEMBIC_DIR)' \
    && python -c 'from skysync.console.context import HERE; assert (HERE / "templates" / "base.html").is_file() and (HERE / "static" / "console.css").is_file(); print("console:", HERE)'

# The service's own, writable working directory (for a SQLite file if one is ever configured;
# compose's beat keeps its schedule in /tmp). skysync reads an optional .env from here: the image
# has none.
WORKDIR /var/lib/skysync
USER 10001:10001

# flower, the console, metrics, the SkyHub emulator (sandbox profile).
EXPOSE 5555 8720 9108 8710

# The program is part of the command because one image runs both `skysync ...` and
# `celery -A skysync.celery_app ...` (see docker-compose.yml); health checks are per role there,
# with python (urllib) and `celery inspect ping`, both in this image (no curl needed).
CMD ["skysync", "--help"]
