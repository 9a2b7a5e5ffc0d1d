"""Developer sessions: ``nox -s tests lint typecheck bench examples``.

``tests`` runs on every Python the package claims: the
``Programming Language :: Python :: 3.N`` classifiers of ``pyproject.toml``
(the same list ``.ci/run`` reads). Interpreters are found on ``PATH``; the
versions pyenv installed under ``~/.pyenv/versions`` are added to it, so
``nox`` finds them without pyenv's shims.
"""

from __future__ import annotations

import os
import pathlib
import tomllib

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]

ROOT = pathlib.Path(__file__).parent


def claimed_pythons() -> list[str]:
    """``["3.11", "3.12", ...]`` from the pyproject classifiers."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prefix = "Programming Language :: Python :: "
    versions = [c.removeprefix(prefix) for c in meta["classifiers"] if c.startswith(prefix)]
    return [v for v in versions if v.count(".") == 1]


def _add_pyenv_versions_to_path() -> None:
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))
    bins = sorted(str(p) for p in (pyenv / "versions").glob("3.*/bin") if p.is_dir())
    if bins:
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *bins])


_add_pyenv_versions_to_path()


@nox.session(python=claimed_pythons())
def tests(session: nox.Session) -> None:
    """The test suite (the same command as README and CI) on each claimed Python."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting check."""
    session.install("ruff")
    session.run("ruff", "check", "asyncbatch", "tests", "benchmarks", "examples")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[test]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark; prints ratio tables for the README."""
    session.install("-e", ".[test,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def examples(session: nox.Session) -> None:
    """Run every example as a user would."""
    session.install("-e", ".")
    for path in sorted((ROOT / "examples").glob("*.py")):
        session.run("python", str(path))
