"""Only what pyproject.toml cannot say: the top-level ``migrations/`` folder (Alembic's scripts)
ships inside the wheel as the package ``skysync._migrations``, so that ``skysync migrate`` finds
its scripts from a plain ``pip install .`` (skysync/store/db.py looks there first, then beside the
source tree for a checkout or an editable install). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["skysync", "skysync.*"]),
        "skysync._migrations",
        "skysync._migrations.versions",
    ],
    package_dir={"skysync._migrations": "migrations"},
)
