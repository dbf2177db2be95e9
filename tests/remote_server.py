"""Real llama.cpp servers for the remote-backend tests, serving the demo model as GGUF float32:
llama-cpp-python's `python -m llama_cpp.server` (llama.cpp built from source by pip) for
backend "openai", llama.cpp's own `llama-server` for backend "llama.cpp" (/infill).

    python tests/remote_server.py --setup    # once: the builds (reused), the server's packages, the GGUF

The build is benchmarks/vs_peers.py's environment (~/.cache/codegen-lsp/bench-peers, or
$CODEGEN_LSP_PEERS; ~15 minutes on 2 cores the first time), outside the repository. The tests
skip when it is not there. llama-cpp-python's server has /v1/completions but no /infill: for
backend = "llama.cpp" --setup also builds llama.cpp's own `llama-server` (cmake, CPU only) from
the llama.cpp vendored in that sdist into bench-peers/llama-server/bin (once, ~30 minutes on
2 cores); $LLAMA_SERVER, else that build, else a `llama-server` on PATH is used, and the /infill
tests skip when there is none.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("CODEGEN_LSP_PEERS", "~/.cache/codegen-lsp/bench-peers")).expanduser()
PEER_PYTHON = PEERS / "venv" / "bin" / "python"
GGUF = Path(os.environ.get("CODEGEN_LSP_CACHE", "~/.cache/codegen-lsp")).expanduser() / "remote" / "demo-F32.gguf"
LLAMA_SERVER = PEERS / "llama-server" / "bin" / "llama-server"
SERVER_PACKAGES = ["fastapi", "uvicorn", "sse-starlette", "starlette-context", "pydantic-settings"]


def server_available() -> bool:
    if not PEER_PYTHON.exists():
        return False
    check = subprocess.run([str(PEER_PYTHON), "-c", "import llama_cpp.server.app"], capture_output=True)
    return check.returncode == 0


def llama_server_binary() -> str | None:
    if os.environ.get("LLAMA_SERVER"):
        return os.environ["LLAMA_SERVER"]
    return str(LLAMA_SERVER) if LLAMA_SERVER.is_file() else shutil.which("llama-server")


def cmake_command() -> str:
    """The system's cmake, else the one pip puts in the peers' environment (as pip's own build of
    llama-cpp-python gets it), so a machine without cmake can still build the server."""
    found = shutil.which("cmake")
    if found is None:
        subprocess.run([str(PEER_PYTHON), "-m", "pip", "install", "-q", "cmake"], check=True)
        found = str(PEER_PYTHON.parent / "cmake")
    return found


def build_llama_server() -> Path:
    """llama.cpp's server, built once from the sdist's vendor/llama.cpp: Release, CPU only, no
    curl/openssl, no web UI (the build would fetch it), static so the one file is the server."""
    if LLAMA_SERVER.is_file():
        return LLAMA_SERVER
    sdist = max(PEERS.glob("src/llama_cpp_python-*.tar.gz"), default=None)
    if sdist is None:
        sys.exit(f"no llama-cpp-python sdist in {PEERS / 'src'}: run `benchmarks/vs_peers.py --setup` first")
    work = LLAMA_SERVER.parents[1] / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(["tar", "xzf", str(sdist), "-C", str(work), "--wildcards", "*/vendor/llama.cpp/*"], check=True)
    source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    options = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF"]  # fmt: skip
    cmake = cmake_command()
    subprocess.run([cmake, "-S", str(source), "-B", str(work / "cmake"), *options], check=True)
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
    subprocess.run([cmake, "--build", str(work / "cmake"), "--target", "llama-server", "-j", jobs], check=True)
    LLAMA_SERVER.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(work / "cmake" / "bin" / "llama-server", LLAMA_SERVER.with_suffix(".tmp"))
    LLAMA_SERVER.with_suffix(".tmp").rename(LLAMA_SERVER)
    shutil.rmtree(work)
    return LLAMA_SERVER


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
    """The server a backend talks to on 127.0.0.1:port, serving the demo GGUF: llama-cpp-python's
    `python -m llama_cpp.server` for backend "openai", llama.cpp's `llama-server` (/infill) for
    backend "llama.cpp"."""

    def __init__(self, backend: str = "openai", port: int | None = None, api_key: str | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        model = str(demo_gguf())
        if backend == "llama.cpp":  # one thread: two spin and crawl (100x) on 2 cores when one is busy
            command = [llama_server_binary(), "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
                       "-c", "256", "-np", "1", "-t", "1"]  # fmt: skip
            command += ["--api-key", api_key] if api_key else []
        else:
            command = [str(PEER_PYTHON), "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                       "--port", str(self.port), "--n_ctx", "256", "--n_threads", "2"]  # fmt: skip
            command += ["--api_key", api_key] if api_key else []
        self.log = open(os.devnull, "wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the llama.cpp server did not start: {' '.join(command)}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        """Listening, and done loading (llama-server listens first and answers 503 while it loads)."""
        if not self._listening():
            return False
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=5) as answer:
                return answer.status == 200
        except urllib.error.HTTPError as answer:
            return answer.code != 503  # 503: loading (llama-cpp-python's server listens once loaded, no /health)
        except OSError:
            return False

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def setup() -> None:
    """The build (benchmarks/vs_peers.py --setup, reused when there), the server's packages,
    llama-server (reused when there), the GGUF."""
    if not server_available():
        if not PEER_PYTHON.exists() or subprocess.run([str(PEER_PYTHON), "-c", "import llama_cpp"]).returncode:
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_peers.py"), "--setup"], check=True)
        subprocess.run([str(PEER_PYTHON), "-m", "pip", "install", "-q", *SERVER_PACKAGES], check=True)
    print(build_llama_server())
    print(demo_gguf())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:] != ["--setup"]:
        sys.exit(__doc__)
    setup()
