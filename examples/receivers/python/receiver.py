#!/usr/bin/env python3
"""An example receiver for amocrm-connector's outgoing webhooks, standard library only.

    CONNECTOR_WEBHOOK_SECRET=...   the `secret` given when creating the subscription (required)
    PORT=8000 HOST=127.0.0.1       where to listen (PORT=0: any free port; the bound one is printed)
    RECEIVER_LOG=path.jsonl        optional: one JSON line per delivery accepted or rejected

`X-Signature` is `sha256=` + lowercase hex HMAC-SHA256 of the raw request body, keyed with the
subscription's secret. It is checked over the bytes exactly as received, before any JSON parsing, and
compared in constant time (`hmac.compare_digest`).

Answers 200 to a verified delivery (a repeated event id is acknowledged again but processed once), 401 to
a missing or wrong signature, 400 to a verified body that is not JSON, 405 to other methods.
GET /health answers 200.
"""

import hashlib
import hmac
import json
import os
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("CONNECTOR_WEBHOOK_SECRET", "").encode()
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8000"))
LOG = os.environ.get("RECEIVER_LOG", "")
MAX_BODY = 1024 * 1024

_lock = threading.Lock()
_seen = set()  # event ids already processed: delivery is at least once


def signature_ok(raw: bytes, header: str) -> bool:
    expected = b"sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest().encode()
    # bytes on both sides: compare_digest refuses non-ASCII str, and a forged header may contain any.
    return hmac.compare_digest(expected, header.encode("utf-8", "surrogateescape"))


def record(entry: dict) -> None:
    entry = {"at": datetime.now(timezone.utc).isoformat(), "receiver": "python", **entry}
    line = json.dumps(entry, ensure_ascii=False)
    with _lock:
        if LOG:
            with open(LOG, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        else:
            print(line, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the connector's HTTP client expects

    def _answer(self, status: int, body: bytes = b"", extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    return None
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def do_GET(self):
        if self.path == "/health":
            self._answer(200, b"ok\n")
        else:
            self._answer(405, extra={"Allow": "POST"})

    def do_POST(self):
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            return self._answer(400, b"bad framing\n")
        if raw is None:
            self.close_connection = True
            return self._answer(413)
        header = self.headers.get("X-Signature", "")
        webhook_id = self.headers.get("X-Webhook-Id")
        if not header or not signature_ok(raw, header):
            reason = "missing X-Signature" if not header else "signature mismatch"
            record({"result": "rejected", "reason": reason, "webhook_id": webhook_id, "path": self.path})
            return self._answer(401, b"bad signature\n")
        try:
            event = json.loads(raw)
        except ValueError:
            record({"result": "rejected", "reason": "signed body is not JSON", "webhook_id": webhook_id})
            return self._answer(400, b"not JSON\n")
        with _lock:
            duplicate = event.get("id") in _seen
            _seen.add(event.get("id"))
        record({
            "result": "accepted",
            "id": event.get("id"),
            "event": event.get("event"),
            "seller_id": event.get("seller_id"),
            "webhook_id": webhook_id,
            "duplicate": duplicate,
            "signature": header,
            "body": raw.decode("utf-8", "replace"),  # the signed body, so a check can replay or tamper with it
        })
        # A real receiver would queue `event` here (unless `duplicate`) and do the work after answering.
        self._answer(200, b"ok\n")

    def do_PUT(self):
        self._answer(405, extra={"Allow": "POST"})

    do_DELETE = do_PATCH = do_PUT

    def log_message(self, fmt, *args):  # access log on stderr, like http.server, but one line each
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def main() -> None:
    if not SECRET:
        sys.exit("CONNECTOR_WEBHOOK_SECRET is required")
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
