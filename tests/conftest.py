"""Shared fixtures: sample models on disk and search settings small enough for tests."""

from __future__ import annotations

import faulthandler
import os
import sys
import uuid

import pytest

from simpletvm.samples import write_sample

from .tvm_helpers import FAST_SEARCH


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir):
    return write_sample("tiny", models_dir / "tiny.onnx")


@pytest.fixture(scope="session")
def cnn_model(models_dir):
    return write_sample("cnn", models_dir / "cnn.onnx")


@pytest.fixture
def fast_options():
    """Shrunk EvolutionarySearch (docs/tvm-facts.md: 0.6 s per round instead of 20 s)."""
    from simpletvm.engine import TuningOptions

    def make(**overrides):
        base = dict(trials=8, per_round=4, seed=1, **FAST_SEARCH)
        base.update(overrides)
        return TuningOptions(**base)

    return make


@pytest.fixture(scope="session")
def pg_server():
    """A throw-away PostgreSQL server (tests/pg_helpers.py) for the whole run. Without
    PostgreSQL's binaries or psycopg the PostgreSQL cases are skipped, except under
    CI=true, where that fails the run."""
    from .pg_helpers import PgServer, binaries

    bindir = binaries()
    missing = "PostgreSQL's initdb and pg_ctl" if bindir is None else None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing = "psycopg (the [postgres] extra)"
    if missing:
        message = f"{missing} not found: the PostgreSQL cases cannot run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PgServer(bindir).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_registry_db(request, tmp_path, monkeypatch):
    """Makes fresh registry locators on each backend: ``make(name)`` gives a SQLite file
    path, or the URL of a new PostgreSQL database (local files under this test's folder)."""
    if request.param == "sqlite":
        return lambda name=None: tmp_path / "state" / f"{name or uuid.uuid4().hex[:12]}.db"
    server = request.getfixturevalue("pg_server")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    return lambda name=None: server.database()


@pytest.fixture
def registry_db(new_registry_db):
    """One fresh registry locator, on each backend."""
    return new_registry_db()


@pytest.fixture(autouse=True)
def _private_state(tmp_path, monkeypatch):
    """Keep logs and default databases out of the user's home."""
    monkeypatch.setenv("SIMPLETVM_HOME", str(tmp_path / "state"))


def pytest_unconfigure(config):
    """If the interpreter has not exited a minute after the run, print every thread's
    stack and exit with an error: a thread left blocked (the interpreter joins executor
    threads at exit) must fail CI at once, not hang it until its time limit."""
    faulthandler.dump_traceback_later(60, exit=True, file=sys.__stderr__)
