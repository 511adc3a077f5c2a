"""Where a Kafka bootstrap address comes from, in development, tests and benchmarks.

Order: an address in the environment (``TRADECORE_KAFKA_BOOTSTRAP`` or
``KAFKA_BOOTSTRAP_SERVERS``) wins; else a testcontainers Kafka when a Docker engine
answers; else the noida-db broker binary shipped in its PyPI wheel, on a free port with a
fresh data directory (it keeps its whole state in one file and slows as it fills, so every
session starts a new one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

ENV_VARS = ("TRADECORE_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP_SERVERS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class NoidaBroker:
    """A noida-db process serving only Kafka; ``stop`` then ``start`` keeps its data."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tradecore-kafka-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> Path:
        path = Path(str(resources.files("noida_db") / "noida-db"))
        if not path.is_file():
            raise FileNotFoundError("the noida-db wheel has no broker binary")
        return path

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        log_file = open(self._log_path, "ab")  # noqa: SIM115 - the child process owns it
        self._proc = subprocess.Popen(
            [str(self.binary()), "start", "--only", "kafka", "--kafka-port", str(self.port),
             "--data-dir", str(self.data_dir)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log_file.close()
        wait_for_port("127.0.0.1", self.port)
        log.info("kafka.broker_started", bootstrap=self.bootstrap, data_dir=str(self.data_dir))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self._log_path.unlink()


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[tuple[str, NoidaBroker | None]]:
    """Yield (bootstrap address, the embedded broker if one was started for it)."""
    for var in ENV_VARS:
        if os.environ.get(var):
            yield os.environ[var], None
            return
    if _docker_answers():
        try:
            from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]
        except ImportError:
            log.warning("kafka.testcontainers_missing", fallback="noida-db",
                        hint="pip install 'testcontainers[kafka]' to use the Docker engine")
        else:
            with KafkaContainer() as container:
                yield container.get_bootstrap_server(), None
            return
    broker = NoidaBroker()
    broker.start()
    try:
        yield broker.bootstrap, broker
    finally:
        broker.close()
