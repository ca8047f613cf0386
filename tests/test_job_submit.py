"""`ray job submit` of jobs/explain_dataset.py to a real local head node (dashboard + job server).

The head is started with ``ray start --head --block`` in its own process group and torn down by
signalling that group only (never ``ray stop``, which would stop every Ray instance on the machine).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_pipeline import make_input, model_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
N = 5


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def ray_cli(*args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def head():
    """A local head node with the job server; yields ``(dashboard_url, env)``."""
    if not (BIN / "ray").exists():
        pytest.skip("ray CLI not found next to the interpreter")
    gcs, dash, agent_http, agent_grpc, rt_env, metrics, client, om, nm = free_ports(9)
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # Ray 2.60 `ray start` enables token auth while clients default to RAY_AUTH_MODE=disabled:
           # use tokens on both sides (the token lives in ~/.ray/auth_token).
           "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
           f"--ray-client-server-port={client}", f"--object-manager-port={om}", f"--node-manager-port={nm}",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(os.path.join(temp, "head.log"), "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, Path(temp, "head.log").read_text()[-3000:]
            r = ray_cli("job", "list", "--address", url, env=env, timeout=30)
            if r.returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("job server did not come up: " + Path(temp, "head.log").read_text()[-3000:])
        yield url, env
    finally:
        # stop only the processes of this head: its process group (ray start --block and its children)
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                if sig == signal.SIGTERM:
                    time.sleep(1)
                    os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue
            break
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_job_submit_explain_dataset(head, tmp_path, cpsc_dir):
    from ecgray.pipeline import read_table

    url, env = head
    inp = make_input(tmp_path / "in", cpsc_dir, N, bad=False)
    model = model_file(tmp_path)
    out = tmp_path / "out"
    job_id = f"ecgray-test-{os.getpid()}-{int(time.time())}"
    sub = ray_cli("job", "submit", "--address", url, "--submission-id", job_id, "--working-dir", ".", "--no-wait",
                  "--", "python", "jobs/explain_dataset.py", "--input", str(inp), "--output", str(out),
                  "--model", model, "--methods", "saliency", "--targets", "AF,LBBB", "--shard-size", "2",
                  env=env, timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    status = ""
    deadline = time.time() + 150
    while time.time() < deadline:
        st = ray_cli("job", "status", "--address", url, job_id, env=env, timeout=30)
        status = (st.stdout + st.stderr).lower()  # "Job '<id>' succeeded" / "... failed" / "... stopped"
        if any(f"job '{job_id}' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    logs = ray_cli("job", "logs", "--address", url, job_id, env=env, timeout=60).stdout
    assert f"job '{job_id}' succeeded" in status, status + "\n" + logs[-4000:]
    assert "summary:" in logs
    assert read_table(out, "records").num_rows == N
    assert read_table(out, "relevance_summary").num_rows == N * 2 * 12
    assert read_table(out, "errors").num_rows == 0
    assert len(list((out / "_commits").iterdir())) == 3
