"""The README's examples run as written: the library block, the command-line block (in a scratch
folder, with this environment's ``l1pca`` on the PATH) and the service block against a real server
(the README's address swapped for the test server's loopback port)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang):
    return [body for kind, body in re.findall(r"```(\w+)\n(.*?)```", README.read_text(), re.S)
            if kind == lang]


def _section(title):
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _code(title, lang):
    (body,) = re.findall(rf"```{lang}\n(.*?)```", _section(title), re.S)
    return body


@pytest.mark.slow
def test_library_example_prints_what_its_comments_say(tmp_path):
    code = _code("Library", "python")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
    assert out[0].startswith("(10, 2) ")
    # The comments name the printed values: the five faulty rows, their flags, their feature, the
    # flagged cells and the chosen K.
    assert out[1:] == ["[0 1 2 3 4]", "[-1 -1 -1 -1 -1  1]", "[3 3 3 3 3]", "5", "2"]


@pytest.mark.slow
def test_command_line_example_runs_as_written(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for line in _code("Command line", "sh").splitlines():
        command = line.split("  #")[0].strip()
        if not command:
            continue
        if command.startswith("python "):
            command = f"{sys.executable} {command[len('python '):]}"
        subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300, check=True)
    assert (tmp_path / "out" / "model.npz").exists()
    header = (tmp_path / "scores" / "sample_scores.csv").read_text().splitlines()[0]
    assert header == "row,outlier_score,sd,od,group,outlier,worst_feature,worst_z"
    flagged = (tmp_path / "scores5" / "sample_scores.csv").read_text().splitlines()[1:]
    assert sum(row.split(",")[5] == "1" for row in flagged) == 10  # the top 5% of 200 rows


@pytest.mark.slow
def test_service_example_runs_against_make_serve(tmp_path):
    """The README's sequence as written: `make serve` (its port moved off 50051, so a server the
    developer runs is left alone), wait for SERVING, then the Python block."""
    from l1pca.service.testing import free_port, wait_until

    code = _code("Service", "python")
    assert '"127.0.0.1:50051"' in code and "make serve" in _section("Service")
    port = free_port()
    log = tmp_path / "serve.log"
    args = f"--port {port} --metrics-port 0 --compile-cache-dir {tmp_path / 'cache'}"
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "-s", "serve", f"SERVE_ARGS={args}"], cwd=README.parent,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until(lambda: "SERVING" in log.read_text() or proc.poll() is not None,
                          timeout=120), log.read_text()[-2000:]
        assert proc.poll() is None, log.read_text()[-2000:]
        code = code.replace('"127.0.0.1:50051"', repr(f"127.0.0.1:{port}"))
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, check=True).stdout.splitlines()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the server it started
        proc.wait(120)
    assert out[0].startswith("(200, 2) ") and out[1] == "jax"  # the default backend on a CPU
