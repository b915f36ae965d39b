"""load_onnx reads only regular files of bounded size: a device or FIFO must not hang it."""

import os
import signal
import socket

import pytest

from simpletvm.errors import ModelError, UserInputError
from simpletvm.model import MAX_MODEL_BYTES_ENV, load_onnx


def load_quickly(path, seconds: float = 5.0):
    """load_onnx, failing the test if it takes long (an unbounded read or a blocked open)."""

    def too_slow(signum, frame):
        raise TimeoutError(f"load_onnx('{path}') took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return load_onnx(path)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_device_is_refused():
    with pytest.raises(ModelError, match=r"'/dev/zero' is a device, not an ONNX model file"):
        load_quickly("/dev/zero")


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="is a FIFO, not an ONNX model file"):
        load_quickly(fifo)


def test_socket_is_refused(tmp_path):
    path = tmp_path / "s.onnx"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(ModelError, match="is a socket"):
            load_quickly(path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(ModelError, match="is a directory, not an ONNX model file"):
        load_quickly(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_quickly(tmp_path / "nope.onnx")


def test_over_the_size_limit(tmp_path, monkeypatch, tiny_model):
    size = tiny_model.stat().st_size
    monkeypatch.setenv(MAX_MODEL_BYTES_ENV, str(size - 1))
    with pytest.raises(ModelError, match=rf"over the limit of {size - 1:,} bytes.*"
                                         rf"raise {MAX_MODEL_BYTES_ENV}"):
        load_quickly(tiny_model)
    monkeypatch.setenv(MAX_MODEL_BYTES_ENV, str(size))
    assert load_quickly(tiny_model).graph.node


def test_symlink_to_a_model_is_read(tmp_path, tiny_model):
    link = tmp_path / "link.onnx"
    link.symlink_to(tiny_model)
    assert load_quickly(link).graph.node


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_bad_limit_setting(monkeypatch, tiny_model, value):
    monkeypatch.setenv(MAX_MODEL_BYTES_ENV, value)
    with pytest.raises(UserInputError, match=f"{MAX_MODEL_BYTES_ENV}='{value}' is not a "):
        load_quickly(tiny_model)
