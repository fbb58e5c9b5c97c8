"""Property-based fuzz of the REST API from its own OpenAPI document: no input gives a 500.

Against a real ``parley serve`` (auth on, a real key, the embedded engines) over HTTP.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from parley.server.openapi import openapi_document
from tests.server.conftest import ROOT, Server, start_server, stop_server

# A raw SDP offer (POST /v1/realtime/calls) is sent as the text it is.
schemathesis.serializer.alias("application/sdp", "text/plain")
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    key = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "parley.cli",
                "keys",
                "create",
                "--tenant",
                "fuzz",
                "--set",
                f"server.database={tmp / 'parley.db'}",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    server = start_server(tmp, "--set", "pipeline.max_speech_chars=400", auth=True)
    yield server, key
    stop_server(server)


def test_openapi_is_served_and_names_every_route(fuzz_server: tuple[Server, str]) -> None:
    server, key = fuzz_server
    url = f"http://127.0.0.1:{server.port}/openapi.json"
    assert httpx.get(url).status_code == 401  # it needs a key too
    document = httpx.get(url, headers={"Authorization": f"Bearer {key}"}).json()
    assert document == openapi_document()
    assert set(document["paths"]) == {
        "/healthz",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/realtime/client_secrets",
        "/v1/realtime/calls",
        "/v1/realtime/calls/{call_id}/hangup",
    }


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_rest_api_fuzz_finds_no_server_errors(
    case: schemathesis.Case, fuzz_server: tuple[Server, str]
) -> None:
    server, key = fuzz_server
    response = case.call(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code < 500, (case.method, case.path, response.text[:300])


def test_unknown_paths_and_methods_use_the_openai_error_shape(
    fuzz_server: tuple[Server, str],
) -> None:
    server, key = fuzz_server
    headers = {"Authorization": f"Bearer {key}"}
    missing = httpx.get(f"http://127.0.0.1:{server.port}/v1/nope", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"http://127.0.0.1:{server.port}/v1/audio/speech", headers=headers)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
