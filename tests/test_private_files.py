"""Files and directories simpletvm creates are private, and it changes no one else's."""

import os
import stat

import pytest

from simpletvm.compile import check_writable
from simpletvm.errors import UserInputError
from simpletvm.paths import state_dir


def test_a_new_state_directory_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMPLETVM_HOME", str(tmp_path / "new" / "state"))
    path = state_dir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_an_existing_shared_directory_keeps_its_mode(tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    monkeypatch.setenv("SIMPLETVM_HOME", str(shared))
    assert state_dir() == shared
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert "readable by other users" in capsys.readouterr().err


def test_output_paths_create_only_the_last_directory(tmp_path):
    assert check_writable(tmp_path / "one" / "m.onnx", "output").parent.is_dir()
    with pytest.raises(UserInputError, match="does not exist"):
        check_writable(tmp_path / "no" / "such" / "m.onnx", "output")
    assert not (tmp_path / "no").exists()
