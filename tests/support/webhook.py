"""A loopback HTTP server standing in for a Slack incoming webhook: it records each JSON body."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Webhook:
    """The URL to post to, the bodies received, and the HTTP status it answers with."""

    url: str = ""
    bodies: list[dict[str, object]] = field(default_factory=list)
    status: int = 200


@contextmanager
def webhook_server(status: int = 200, token: str = "secret") -> Iterator[Webhook]:
    """Serve on 127.0.0.1 at a free port until the block ends; `token` ends the URL's path,
    as the secret of a Slack webhook does."""
    hook = Webhook(status=status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            hook.bodies.append(json.loads(self.rfile.read(length)))
            answer = b"ok" if hook.status == 200 else b"invalid_payload"
            self.send_response(hook.status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/{token}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
