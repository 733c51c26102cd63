"""A local HTTP stand-in for the Hugging Face Hub's repo and commit endpoints.

The Hub cannot be reached from here, so tests point `HF_ENDPOINT` at this server and the real
`huggingface_hub` client code runs against it: create a repo, ask which upload mode each file gets
(always "regular", i.e. inline in the commit), and commit. It checks the bearer token on every call and keeps
every repo's files and commits so a test can read back what was pushed.
"""

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml


@dataclass
class Commit:
    """One commit as the stand-in received it."""

    oid: str
    summary: str
    files: dict[str, bytes]


@dataclass
class Repo:
    """A repo with its privacy flag, commits and current files."""

    private: bool
    commits: list[Commit] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)


class HubStandIn:
    """The server; `repos` is what was pushed, `unknown` lists requests it could not answer."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.unknown: list[str] = []
        self.seen_authorization: set[str] = set()
        self.cards: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _create_repo(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            self.repos[repo_id] = Repo(private=body.get("visibility") == "private" or bool(body.get("private")))
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def _validate_yaml(self, content: str) -> tuple[int, dict[str, Any]]:
        """Model-card metadata check: the YAML front matter must parse to a mapping."""
        if not content.startswith("---"):
            return 200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            metadata = yaml.safe_load(content.split("---")[1])
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": str(exc)}]}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}
        self.cards.append(metadata)
        return 200, {"warnings": []}

    def _commit(self, repo_id: str, lines: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {
            line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"
        }
        with self._lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": f"Repository {repo_id} not found"}
            oid = hashlib.sha1(f"{repo_id}{len(repo.commits)}".encode()).hexdigest()
            repo.commits.append(Commit(oid=oid, summary=header["summary"], files=files))
            repo.files.update(files)
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                hub.seen_authorization.add(auth)
                if auth != f"Bearer {hub.token}":
                    self._reply(401, {"error": "Invalid credentials in Authorization header"})
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "validate-yaml"]:
                    self._reply(*hub._validate_yaml(json.loads(raw)["content"]))
                elif parts[:3] == ["api", "repos", "create"]:
                    self._reply(*hub._create_repo(json.loads(raw)))
                elif parts[:2] == ["api", "models"] and len(parts) >= 5 and parts[4] == "preupload":
                    files = json.loads(raw)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    self._reply(200, {"files": modes})
                elif parts[:2] == ["api", "models"] and len(parts) >= 5 and parts[4] == "commit":
                    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
                    self._reply(*hub._commit(f"{parts[2]}/{parts[3]}", lines))
                else:
                    hub.unknown.append(f"POST {self.path}")
                    self._reply(404, {"error": "not implemented by the stand-in"})

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                hub.unknown.append(f"GET {self.path}")
                self._reply(404, {"error": "not implemented by the stand-in"})

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                hub.unknown.append(f"HEAD {self.path}")
                self.send_response(404)
                self.end_headers()

        return Handler
