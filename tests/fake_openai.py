"""A tiny OpenAI-compatible HTTP server on 127.0.0.1 for backend tests.

`FakeAPI(handler)` serves POST /v1/chat/completions by calling
`handler(body) -> dict | (status, dict) | (status, dict, headers)` and GET /v1/models from
`models` (ids, or dicts such as {"id": "m", "max_model_len": 1024}); it records every request
body in `requests` (the Authorization header as "_auth") and when it arrived in `times`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_response(content: str, prompt_tokens: int = 11, completion_tokens: int = 7,
                  finish_reason: str = "stop", model: str = "fake") -> dict:
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class FakeAPI:
    def __init__(self, handler, models=("fake",)):
        self.handler = handler
        self.models = list(models)
        self.requests: list[dict] = []
        self.times: list[float] = []  # time.monotonic() of each POST
        self.model_auth: list[str | None] = []  # the Authorization header of each GET /v1/models
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: clients pool connections

            def log_message(self, *args):
                pass

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/v1/models"):
                    fake.model_auth.append(self.headers.get("authorization"))
                    self._send(200, {"object": "list", "data": [
                        {"object": "model", "created": 0, "owned_by": "fake",
                         **(m if isinstance(m, dict) else {"id": m})} for m in fake.models]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                body["_auth"] = self.headers.get("authorization")
                fake.times.append(time.monotonic())
                fake.requests.append(body)
                out = fake.handler(body)
                status, payload, *headers = out if isinstance(out, tuple) else (200, out)
                self._send(status, payload, *headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
