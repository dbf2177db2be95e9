"""A real llama.cpp server for the remote-backend tests: llama-cpp-python's `python -m
llama_cpp.server` (llama.cpp built from source by pip) serving the demo model as GGUF float32.

    python tests/remote_server.py --setup    # once: the build (reused), the server's packages, the GGUF

The build is benchmarks/vs_peers.py's environment (~/.cache/codegen-lsp/bench-peers, or
$CODEGEN_LSP_PEERS; ~15 minutes on 2 cores the first time), outside the repository. The tests
skip when it is not there. llama-cpp-python's server has /v1/completions but no /infill; the
llama.cpp /infill test runs only where a `llama-server` binary is on PATH (or $LLAMA_SERVER).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("CODEGEN_LSP_PEERS", "~/.cache/codegen-lsp/bench-peers")).expanduser()
PEER_PYTHON = PEERS / "venv" / "bin" / "python"
GGUF = Path(os.environ.get("CODEGEN_LSP_CACHE", "~/.cache/codegen-lsp")).expanduser() / "remote" / "demo-F32.gguf"
SERVER_PACKAGES = ["fastapi", "uvicorn", "sse-starlette", "starlette-context", "pydantic-settings"]


def server_available() -> bool:
    if not PEER_PYTHON.exists():
        return False
    check = subprocess.run([str(PEER_PYTHON), "-c", "import llama_cpp.server.app"], capture_output=True)
    return check.returncode == 0


def llama_server_binary() -> str | None:
    return os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")


def demo_gguf() -> Path:
    """The demo model as GGUF float32, written by `codegen-lsp export-gguf` (once, cached)."""
    if not GGUF.is_file():
        from engine.gguf_export import export_gguf

        GGUF.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(None, GGUF.with_suffix(".tmp"))
        GGUF.with_suffix(".tmp").rename(GGUF)
    return GGUF


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1:port (or llama-server with infill=True)."""

    def __init__(self, port: int | None = None, api_key: str | None = None, infill: bool = False) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        model = str(demo_gguf())
        if infill:
            command = [llama_server_binary(), "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
                       "-c", "256", "--spm-infill", "-t", "2"]  # fmt: skip
            command += ["--api-key", api_key] if api_key else []
        else:
            command = [str(PEER_PYTHON), "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                       "--port", str(self.port), "--n_ctx", "256", "--n_threads", "2"]  # fmt: skip
            command += ["--api_key", api_key] if api_key else []
        self.log = open(os.devnull, "wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the llama.cpp server did not start: {' '.join(command)}")
            time.sleep(0.1)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def setup() -> None:
    """The build (benchmarks/vs_peers.py --setup, reused when there), the server's packages, the GGUF."""
    if not server_available():
        if not PEER_PYTHON.exists() or subprocess.run([str(PEER_PYTHON), "-c", "import llama_cpp"]).returncode:
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_peers.py"), "--setup"], check=True)
        subprocess.run([str(PEER_PYTHON), "-m", "pip", "install", "-q", *SERVER_PACKAGES], check=True)
    print(demo_gguf())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:] != ["--setup"]:
        sys.exit(__doc__)
    setup()
