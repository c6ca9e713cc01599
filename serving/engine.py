"""Launch and stop a real vLLM engine from a workload profile.

vLLM lives in its own virtual environment (`.venv-engine`), apart from the project's, so that its
pins (fastapi, transformers, torch) never constrain ours; we talk to it only over HTTP. The engine
runs in its own process group: vLLM forks an engine-core process (and, on the CPU, worker threads),
and signalling the whole group is what leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from serving.profiles import LOCAL_TINY, Profile, load_profile

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class EngineError(RuntimeError):
    """The engine could not be built, started or reached; the message says why in one line."""


def cache_dir() -> Path:
    return Path(os.environ.get("GPULEDGER_CACHE_DIR", PROJECT_ROOT / ".cache")).resolve()


def engine_python() -> Path:
    return Path(os.environ.get("GPULEDGER_ENGINE_PYTHON", PROJECT_ROOT / ".venv-engine/bin/python"))


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_CACHE_ROOT=str(cache_dir() / "vllm"),
        PYTHONPATH=str(PROJECT_ROOT),
    )
    # The project's venv must not leak into the engine's interpreter.
    env.pop("VIRTUAL_ENV", None)
    return env


def ensure_tiny_model() -> Path:
    """Build the tiny model once into the cache (about a minute); reuse it afterwards."""
    out = cache_dir() / "models" / "tiny"
    if (out / "gpuledger-build.json").exists():
        return out
    python = engine_python()
    if not python.exists():
        raise EngineError(f"engine environment missing ({python}); run `make install`")
    result = subprocess.run(
        [str(python), "-m", "serving.tinymodel", "--out", str(out)],
        env=_offline_env(),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"building the tiny model failed: {tail[0]}")
    return out


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class EngineProcess:
    profile: Profile
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [str(a) for a in self.process.args]  # type: ignore[union-attr]

    @classmethod
    def launch(
        cls, profile: str | Profile, *, host: str = "127.0.0.1", port: int = 8000
    ) -> EngineProcess:
        prof = profile if isinstance(profile, Profile) else load_profile(profile)
        if prof.model == LOCAL_TINY:
            ensure_tiny_model()
        python = engine_python()
        if not python.exists():
            raise EngineError(f"engine environment missing ({python}); run `make install`")
        model = prof.resolved_model(cache_dir())
        args = [str(python), "-m", "serving.vllm_launcher", "serve", *prof.vllm_args(model, host, port)]
        env = _offline_env()
        env.update(prof.env)
        logs = cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"engine-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args,
                env=env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        return cls(prof, host, port, process, log_path)

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Block until `/health` answers 200; returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise EngineError(
                    f"engine exited with code {self.process.returncode} before it was healthy; "
                    f"last log line: {self.log_tail(1)}"
                )
            if _healthy(self.url):
                return time.monotonic() - started
            time.sleep(0.5)
        self.stop()
        raise EngineError(f"engine not healthy after {timeout:.0f}s; see {self.log_path}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        # Children (the engine core) may outlive the API server by a moment: sweep the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        profile: str | Profile,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        timeout: float = 600.0,
    ) -> Iterator[EngineProcess]:
        """Launch, wait for health, and always stop on exit."""
        engine = cls.launch(profile, host=host, port=port)
        try:
            engine.wait_ready(timeout)
            yield engine
        finally:
            engine.stop()


def run_foreground(profile: str, host: str, port: int) -> int:
    """`gpuledger engine start`: start, report, and stop cleanly on Ctrl-C or SIGTERM."""
    engine = EngineProcess.launch(profile, host=host, port=port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print(f"starting vLLM ({engine.profile.name}) on {engine.url}; log: {engine.log_path}")
        seconds = engine.wait_ready()
        print(f"engine healthy after {seconds:.1f}s: {engine.url}/v1 (model {engine.profile.served_model_name})")
        sys.stdout.flush()
        while engine.process.poll() is None:
            time.sleep(0.5)
        print(f"engine exited with code {engine.process.returncode}: {engine.log_tail(1)}")
        return 1
    except KeyboardInterrupt:
        print("stopping engine")
        return 0
    finally:
        engine.stop()
