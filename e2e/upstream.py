"""A small OpenAI-compatible upstream standing in for vLLM (which needs a GPU): it
speaks the same HTTP API — /v1/models, /v1/chat/completions and /v1/completions, plain
JSON or streamed as server-sent events, and /metrics — and records every request it
receives (method, path, headers, body) as JSON lines, so tests can see exactly what
reached inference.

A streamed response pauses after its first event until the test releases it through
the control port, which proves that events arrive one by one without timing anything.

Every completion reports its usage as vLLM does (in the JSON body; in a last chunk of a
stream when the request has stream_options.include_usage) and also in the response
header X-Upstream-Usage, so tests know what was reported even when the client does
not see it. Test headers make it misbehave: X-Test-Stall (no headers until released),
X-Test-Hold (a stream pauses after its first event until released), X-Test-Delay (ms
between a stream's events), X-Test-Fail: before (a 500 before generating) or
midstream (the connection dropped after the first event).

    python3 upstream.py --port P --control-port C --log requests.jsonl
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASES = {}
RELEASE_LOCK = threading.Lock()
LOG_LOCK = threading.Lock()
MODELS = ["llama-3.1-8b-instruct", "qwen2.5-7b-instruct"]


def release_event(key):
    with RELEASE_LOCK:
        return RELEASES.setdefault(key, threading.Event())


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_path = None

    def log_message(self, fmt, *args):
        pass

    def _record(self, body):
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        with LOG_LOCK, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    usage_header = None

    def _json(self, status, obj):
        b = json.dumps(obj).encode()
        self.send_response(status)
        if self.usage_header and status == 200:
            self.send_header("X-Upstream-Usage", self.usage_header)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        self.usage_header = None
        self._record(b"")
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "vllm"} for m in MODELS]})
        elif self.path == "/metrics":
            b = b"# HELP vllm:num_requests_running Running requests.\n" \
                b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)
        elif self.path == "/health":
            self._json(200, {})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error", "code": 404}})

    def do_POST(self):
        self.usage_header = None
        raw = self._body()
        self._record(raw)
        stall = self.headers.get("X-Test-Stall")
        if stall:
            # A model server that has not answered yet: no headers until released.
            release_event(stall).wait(timeout=60)
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            return self._json(400, {"error": {"message": "body is not JSON", "type": "BadRequestError", "code": 400}})
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._json(404, {"error": {"message": "not found", "type": "invalid_request_error", "code": 404}})
        chat = self.path == "/v1/chat/completions"
        words = ["Zero", " trust", " means", " every", " hop", " is", " verified", "."]
        words = words[: max(1, min(len(words), int(req.get("max_tokens") or len(words))))]
        model = req.get("model", MODELS[0])
        # A stand-in for vLLM's tokenizer: about four bytes of prompt a token, at least 1.
        prompt_tokens = max(1, len(json.dumps(req.get("messages") or req.get("prompt") or "")) // 4)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        created = int(time.time())
        rid = "cmpl-" + str(created)
        self.usage_header = json.dumps(usage)
        fail = self.headers.get("X-Test-Fail")
        if fail == "before":
            return self._json(500, {"error": {"message": "the engine failed", "type": "InternalServerError",
                                              "code": 500}})
        delay = int(self.headers.get("X-Test-Delay") or 0) / 1000
        if not req.get("stream"):
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop"})
            return self._json(200, {
                "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model, "choices": [choice],
                "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Upstream-Usage", self.usage_header)
        self.end_headers()
        hold = self.headers.get("X-Test-Hold")
        for i, w in enumerate(words):
            if i and delay:
                time.sleep(delay)
            delta = {"index": 0, "delta": {"content": w}, "finish_reason": None} if chat \
                else {"index": 0, "text": w, "finish_reason": None}
            event = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": model, "choices": [delta]}
            self._chunk(("data: " + json.dumps(event) + "\n\n").encode())
            if i == 0 and hold:
                # Wait until the test has received the first event and says go on.
                release_event(hold).wait(timeout=60)
            if i == 0 and fail == "midstream":
                # A model server that dies mid-generation: no end of the chunked body.
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
        if (req.get("stream_options") or {}).get("include_usage"):
            # As vLLM does: a last chunk with no choices and the request's usage.
            last = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created, "model": model, "choices": [], "usage": usage}
            self._chunk(("data: " + json.dumps(last) + "\n\n").encode())
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class Control(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        # POST /release/<key>: let a held stream go on.
        key = self.path.rsplit("/", 1)[-1]
        release_event(key).set()
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--log", required=True)
    a = p.parse_args()
    Api.log_path = a.log
    open(a.log, "a").close()
    control = ThreadingHTTPServer(("127.0.0.1", a.control_port), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", a.port), Api).serve_forever()


if __name__ == "__main__":
    main()
