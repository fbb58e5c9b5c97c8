"""Real ``parley serve`` processes on loopback ports, and strict checks of what they send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from tests.fakes.llm_http import FakeLLMServer, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    port: int
    process: subprocess.Popen[str]
    log: Path
    log_file: IO[str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"


def start_server(
    tmp: Path, *extra: str, env: dict[str, str] | None = None, auth: bool = False
) -> Server:
    """``parley serve`` on a free port; without ``auth`` it runs with ``--no-auth``."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    log_file = log.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "parley.cli",
            "serve",
            "--port",
            str(port),
            "--set",
            f"server.database={tmp / 'parley.db'}",
            "--set",
            f"trust.watermark_key_file={tmp / 'watermark.key'}",
            "--set",
            f"trust.audit_key_file={tmp / 'audit.key'}",
            "--log-level",
            "warning",
            *([] if auth else ["--no-auth"]),
            *extra,
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return Server(port, process, log, log_file)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log_file.close()
            raise RuntimeError(f"parley serve did not start:\n{log.read_text()}")
        time.sleep(0.1)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    server.log_file.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``parley serve`` on the embedded engines (faq LLM)."""
    s = start_server(tmp_path_factory.mktemp("serve"), env={"PARLEY_LLM_BASE_URL": ""})
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as llm:
        yield llm


@pytest.fixture(scope="session")
def llm_server(
    tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLMServer
) -> Iterator[Server]:
    """``parley serve`` with its ``openai`` engine on the scripted LLM, vision on, and the
    example prompt template stored."""
    tmp = tmp_path_factory.mktemp("serve-llm")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.cli",
            "prompts",
            "import",
            str(ROOT / "examples" / "prompts" / "support.toml"),
            "--set",
            f"server.database={tmp / 'parley.db'}",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    s = start_server(
        tmp,
        "--set",
        'llm.options={"supports_vision": true}',
        env={"PARLEY_LLM_BASE_URL": fake_llm.base_url, "PARLEY_LLM_MODEL": "fake"},
    )
    yield s
    stop_server(s)


# The live API sends these session fields, which the SDK's request-shaped session models omit.
_SESSION_EXTRAS = {"id", "object", "expires_at"}


def _no_extras(model: object, path: str = "") -> None:
    """Every field the server sent is one the SDK knows: a misspelt field fails the test."""
    if isinstance(model, BaseModel):
        extra = set(model.model_extra or {})
        if path == ".session":
            extra -= _SESSION_EXTRAS
        assert not extra, f"unknown fields at {path or 'event'}: {sorted(extra)}"
        for name in type(model).model_fields:
            _no_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            _no_extras(item, f"{path}[{i}]")


def validator(beta: bool) -> TypeAdapter[Any]:
    if beta:
        from openai.types.beta.realtime import RealtimeServerEvent as Beta

        return TypeAdapter(Beta)
    from openai.types.realtime import RealtimeServerEvent as GA

    return TypeAdapter(GA)


def validate(adapter: TypeAdapter[Any], raw: str | bytes) -> dict[str, Any]:
    """Parse one server message strictly against the SDK's models; return it as a dict."""
    data: dict[str, Any] = json.loads(raw)
    model = adapter.validate_python(data)
    assert model.type == data["type"]
    _no_extras(model)
    return data
