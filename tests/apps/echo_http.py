"""An HTTP/1.1 echo server for the waypoint tests: answers every request with JSON saying
who served it and what arrived (method, path with query, headers, body length), and logs
one line per request ("<method> <path> <body bytes>") to stdout, flushed, so a test can see what a mirror
received. Misbehaves on cue: `x-delay-ms: N` holds the answer N ms; `x-body-delay-ms: N`
sends the head and half the body, then waits N ms before the rest; `x-fail-on: <names>`
(comma-separated server names, or `all`) makes the servers named answer with
`x-fail-status` (default 503) after `x-fail-delay-ms` (default 0).
Usage: python3 echo_http.py <bind-ip> <port> <name>
"""
import http.server, json, socket, sys, time

NAME = sys.argv[3]

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body are separate writes: without TCP_NODELAY the body waits for
    # the peer's delayed ACK (40 ms), which would swamp every latency the tests see.
    disable_nagle_algorithm = True

    def answer(self):
        n = int(self.headers.get("content-length", "0") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({
            "served_by": NAME,
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_bytes": len(body),
            "client": self.client_address[0],
        }).encode()
        print("%s %s %d" % (self.command, self.path, len(body)), flush=True)
        delay = int(self.headers.get("x-delay-ms", "0") or 0)
        status = 200
        fail_on = [n.strip() for n in self.headers.get("x-fail-on", "").split(",") if n.strip()]
        if NAME in fail_on or "all" in fail_on:
            status = int(self.headers.get("x-fail-status", "503") or 503)
            delay = int(self.headers.get("x-fail-delay-ms", "0") or 0)
        if delay:
            time.sleep(delay / 1000.0)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.send_header("x-echo-server", NAME)
        self.end_headers()
        body_delay = int(self.headers.get("x-body-delay-ms", "0") or 0)
        if body_delay:
            half = len(out) // 2
            self.wfile.write(out[:half])
            self.wfile.flush()
            time.sleep(body_delay / 1000.0)
            out = out[half:]
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

    def log_message(self, *a):
        pass

class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET

Server((sys.argv[1], int(sys.argv[2])), H).serve_forever()
