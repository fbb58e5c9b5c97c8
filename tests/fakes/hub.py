"""A fake Hugging Face hub on loopback, so `parley models pull` runs its real download code
(the hub client's HEAD/GET protocol and repository listing) without the internet.

Serves the repositories given as ``{repo_id: {path: bytes}}``:

- ``GET /api/models/{repo}/revision/{rev}`` and ``GET /api/models/{repo}``: the repository's
  info (sha and file list), which ``snapshot_download`` reads;
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: one file, with the ETag and commit headers
  ``hf_hub_download`` checks.

Requests are recorded in ``requests`` as ``(method, path)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        self.url = ""

    def _info(self, repo: str) -> dict[str, object]:
        files = self.repos[repo]
        return {
            "id": repo,
            "modelId": repo,
            "sha": COMMIT,
            "private": False,
            "siblings": [{"rfilename": name, "size": len(data)} for name, data in files.items()],
        }

    def route(self, method: str, raw_path: str) -> tuple[int, dict[str, str], bytes]:
        path = unquote(urlparse(raw_path).path)
        self.requests.append((method, path))
        if path.startswith("/api/models/"):
            rest = path.removeprefix("/api/models/")
            repo = rest.split("/revision/")[0].split("/tree/")[0]
            if repo not in self.repos:
                return 404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "not found"}'
            if "/tree/" in rest:
                body = json.dumps(
                    [
                        {"type": "file", "path": name, "size": len(data), "oid": _etag(data)}
                        for name, data in self.repos[repo].items()
                    ]
                ).encode()
            else:
                body = json.dumps(self._info(repo)).encode()
            return 200, {"Content-Type": "application/json"}, body
        for repo, files in self.repos.items():
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                _revision, _, name = path.removeprefix(prefix).partition("/")
                if name not in files:
                    return 404, {"X-Error-Code": "EntryNotFound"}, b"not found"
                data = files[name]
                headers = {
                    "ETag": f'"{_etag(data)}"',
                    "X-Repo-Commit": COMMIT,
                    "Content-Type": "application/octet-stream",
                }
                return 200, headers, data
        return 404, {"X-Error-Code": "RepoNotFound"}, b"not found"


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def serve_fake_hub(repos: dict[str, dict[str, bytes]]) -> Iterator[FakeHub]:
    hub = FakeHub(repos)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, send_body: bool) -> None:
            status, headers, body = hub.route(self.command, self.path)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._reply(False)

        def do_GET(self) -> None:
            self._reply(True)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
