"""The servers under test: the fake upstream, inferline's gateway and LiteLLM's proxy.

Each runs in its own session (process group = its pid), so its CPU time can be read from
``/proc`` (`benchmarks/peers/cpu_account.py`) and it can be stopped with every child.
Logs go to files in the run's work directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_overhead.client import API_KEY

REPO = Path(__file__).resolve().parents[2]
INFERLINE = REPO / ".venv" / "bin" / "inferline"
LITELLM_VENV = Path.home() / ".cache" / "inferline" / "peers" / "litellm-venv"
LITELLM_SPEC = "litellm[proxy]"
STARTUP_TIMEOUT_S = 120.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _load_cpu_account() -> Any:
    """`benchmarks/peers/cpu_account.py` as a module (it is a script, not a package)."""
    path = REPO / "benchmarks" / "peers" / "cpu_account.py"
    spec = importlib.util.spec_from_file_location("cpu_account", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_account = _load_cpu_account()


@dataclass
class Server:
    """A server process: its name, port, the model name clients send, log and versions."""

    name: str
    proc: subprocess.Popen[Any]
    port: int
    model: str
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server's process group."""
        return float(cpu_account.group_cpu_s(self.proc.pid))

    def stop(self) -> None:
        """SIGTERM to the group, up to 10 s, then SIGKILL to whatever is left of it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def fast_paths(pgid: int) -> dict[str, bool]:
    """Which optional C speed-ups the process group has loaded (from ``/proc/*/maps``):
    uvloop (event loop) and httptools (HTTP parser); uvicorn uses both when installed."""
    found = dict.fromkeys(("uvloop", "httptools"), False)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            rest = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(rest[2]) == pgid:
                maps = Path(f"/proc/{entry}/maps").read_text()
                for name in found:
                    found[name] |= f"/{name}/" in maps
    return found


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
    """Starts ``cmd`` in a new session, stdout and stderr into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def http_get(url: str, timeout: float = 2.0) -> int:
    """Status of GET ``url`` with the API key (0 when nothing answers)."""
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {API_KEY}"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POSTs JSON and returns the JSON answer (raises on an HTTP error)."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)
    with _OPENER.open(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def wait_ready(server: Server, path: str, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
    """Polls ``path`` until it answers 200; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if server.proc.poll() is not None:
            break
        if http_get(f"http://127.0.0.1:{server.port}{path}") == 200:
            return time.monotonic() - start
        time.sleep(0.2)
    tail = server.log.read_text(errors="replace")[-3000:]
    server.stop()
    raise RuntimeError(f"{server.name} did not become ready ({server.log}):\n{tail}")


def start_upstream(workdir: Path, words: int) -> Server:
    """The fake upstream (`inferline.bench.fake_upstream`), one process, answering at once."""
    port = free_port()
    log = workdir / "upstream.log"
    cmd = [sys.executable, "-m", "inferline.bench.fake_upstream", "--port", str(port)]
    cmd += ["--words", str(words), "--max-log", "1000"]
    server = Server("direct", _spawn(cmd, log), port, "fake-model", log)
    wait_ready(server, "/v1/models", 30)
    server.info = {"command": cmd, "words": words}
    return server


def start_inferline(workdir: Path, upstream_port: int, *, log_text: bool) -> Server:
    """``inferline serve --config`` with one openai model and one route ``bench`` over it;
    its request log (SQLite) on, with or without the text."""
    config = workdir / "inferline.yaml"
    config.write_text(
        "models:\n  - name: upstream\n    kind: openai\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n    model: fake-model\n"
        "routes:\n  - name: bench\n    targets: [upstream]\n"
    )
    port = free_port()
    log = workdir / "inferline.log"
    cmd = [str(INFERLINE), "serve", "--config", str(config), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--database-url", f"sqlite:///{workdir / 'requests.db'}"]
    cmd += ["--api-key", API_KEY] + ([] if log_text else ["--no-log-text"])
    server = Server("inferline", _spawn(cmd, log), port, "bench", log)
    ready_s = wait_ready(server, "/ready")
    server.info = {"command": cmd, "ready_s": round(ready_s, 2), "config": config.read_text()}
    server.info["request_log"] = "on, with text" if log_text else "on, counts only"
    server.info["loaded"] = fast_paths(server.proc.pid)
    return server


def ensure_litellm(venv: Path = LITELLM_VENV, spec: str = LITELLM_SPEC) -> Path:
    """LiteLLM's own virtualenv (created with ``python3 -m venv`` and pip when missing);
    returns its ``litellm`` executable."""
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing {spec} into {venv} (once)", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, spec], check=True)
    return exe


def _package_versions(python: Path, names: list[str]) -> dict[str, str | None]:
    """Installed versions of ``names`` in the interpreter ``python``'s environment."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, check=True)
    return dict(json.loads(out.stdout))


LITELLM_CONFIG = """\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/fake-model
      api_base: http://127.0.0.1:{port}/v1
      api_key: x
litellm_settings:
  num_retries: 0
  cache: false
  callbacks: []
  success_callback: []
  failure_callback: []
  set_verbose: false
router_settings:
  num_retries: 0
general_settings: {{}}
"""
# No database_url: no spend logs, keys checked against the master key only (as inferline's
# --api-key); LITELLM_LOG=ERROR; the model cost map from the package, not fetched.
LITELLM_ENV = {
    "LITELLM_LOG": "ERROR",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_MASTER_KEY": API_KEY,
}


def start_litellm(workdir: Path, upstream_port: int, exe: Path) -> Server:
    """LiteLLM's proxy with one deployment ``bench`` -> the fake upstream, one worker."""
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(port=upstream_port))
    port = free_port()
    log = workdir / "litellm.log"
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    server = Server("litellm", _spawn(cmd, log, LITELLM_ENV), port, "bench", log)
    ready_s = wait_ready(server, "/health/liveliness")
    names = ["litellm", "uvicorn", "uvloop", "httptools", "openai", "httpx", "aiohttp", "fastapi"]
    server.info = {
        "command": cmd,
        "env": LITELLM_ENV,
        "ready_s": round(ready_s, 2),
        "config": config.read_text(),
        "versions": _package_versions(exe.parent / "python", names),
        "loaded": fast_paths(server.proc.pid),
    }
    return server
