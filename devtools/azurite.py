"""Starts and stops Azurite (the Azure Storage emulator from npm) on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"
# Azurite's fixed development account: public, documented, not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteError(RuntimeError):
    """Azurite could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Azurite:
    """One Azurite process serving blob, queue and table on loopback."""

    blob_port: int = field(default_factory=free_port)
    queue_port: int = field(default_factory=free_port)
    table_port: int = field(default_factory=free_port)
    location: Path | None = None  # None: a temporary folder removed on stop
    process: subprocess.Popen[bytes] | None = None
    _temp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def connection_string(self) -> str:
        """Explicit-endpoint connection string for the azure-* SDKs."""
        host = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={host}:{self.blob_port}/{DEV_ACCOUNT};"
            f"QueueEndpoint={host}:{self.queue_port}/{DEV_ACCOUNT};"
            f"TableEndpoint={host}:{self.table_port}/{DEV_ACCOUNT};"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        """Start Azurite and wait until all three services accept connections."""
        if not AZURITE_BIN.exists():
            raise AzuriteError(
                f"Azurite is not installed ({AZURITE_BIN} is missing): run `make setup` "
                "(it runs `npm ci`), or `npm ci` in the repo root"
            )
        if self.location is None:
            self._temp = tempfile.TemporaryDirectory(prefix="azurite-")
            self.location = Path(self._temp.name)
        self.location.mkdir(parents=True, exist_ok=True)
        log = (self.location / "azurite.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--silent",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
                "--location",
                str(self.location),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.blob_port),
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                str(self.queue_port),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(self.table_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.location,
        )
        deadline = time.monotonic() + timeout
        ports = (self.blob_port, self.queue_port, self.table_port)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = (self.location / "azurite.log").read_text(errors="replace")[-2000:]
                raise AzuriteError(f"Azurite exited with code {self.process.returncode}: {output}")
            if all(_listening(p) for p in ports):
                return self
            time.sleep(0.1)
        self.stop()
        raise AzuriteError(f"Azurite did not listen on ports {ports} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the process and remove its temporary folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None
            self.location = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_available() -> bool:
    """Whether Node.js is on PATH (Azurite needs it)."""
    return shutil.which("node") is not None
