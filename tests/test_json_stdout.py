"""Only the JSON (or the tables) reaches stdout, whatever TVM prints from Python or C.

These run real processes: CliRunner swaps ``sys.stdout`` but not file descriptor 1, so it
cannot show what C code printing to stdout does to a command's output.
"""

import json
import os
import subprocess
import sys
import textwrap

NOISE = """
import ctypes, os, sys
from simpletvm import render

libc = ctypes.CDLL(None)

def noise():
    os.write(1, b"fd-noise\\n")            # straight to the descriptor
    libc.puts(b"libc-noise")               # buffered by C stdio when stdout is a pipe
    print("python-noise")                  # Python-level, like TVM's ONNX frontend
"""


def run_python(code: str):
    # PYTHONUNBUFFERED would make C's stdout unbuffered too, hiding the buffering case
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", NOISE + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def assert_noise_on_stderr(stderr: str):
    for word in ("fd-noise", "libc-noise", "python-noise"):
        assert word in stderr, stderr


def test_json_survives_c_and_python_prints():
    code, out, err = run_python("""
        def body():
            noise()
            render.print_json({"ok": 1})
            libc.printf(b"late-noise\\n")
        render.run_cli(body)
        print("after the command")  # stdout is restored afterwards
    """)
    assert code == 0, err
    assert out.startswith("{")
    assert json.loads(out[:out.rindex("}") + 1]) == {"ok": 1}
    assert out.rstrip().endswith("after the command")
    assert_noise_on_stderr(err)
    assert "late-noise" in err


def test_tables_still_go_to_stdout():
    code, out, err = run_python("""
        def body():
            noise()
            render.console.print(render.rows_table("results", [{"median_ms": 1.5}],
                                                   ["median_ms"]))
        render.run_cli(body)
    """)
    assert code == 0, err
    assert "results" in out and "1.500" in out
    assert "noise" not in out
    assert_noise_on_stderr(err)


def test_error_keeps_stdout_empty():
    code, out, err = run_python("""
        from simpletvm.errors import UserInputError

        def body():
            noise()
            raise UserInputError("bad input")
        render.run_cli(body)
    """)
    assert code == 2
    assert out == ""
    assert "Error: bad input" in err
    assert_noise_on_stderr(err)


def test_cli_command_json_with_noisy_tvm(tmp_path):
    """The real `simpletvm inspect --json`, with the model import printing from C."""
    code, out, err = run_python(f"""
        import simpletvm.tasks_info as tasks_info
        from simpletvm import cli

        def noisy_inspect(model, **kwargs):
            noise()
            return {{"inputs": [], "tasks": [], "model": str(model)}}

        tasks_info.inspect_model = noisy_inspect
        sys.argv = ["simpletvm", "inspect", {str(tmp_path / "m.onnx")!r}, "--json"]
        cli.main()
    """)
    assert code == 0, err
    assert json.loads(out)["model"].endswith("m.onnx")
    assert_noise_on_stderr(err)
