"""A tiny real HTTP application for weft's tests and demo.

GET answers "<name> sees <client ip>" (so tests can check which endpoint served and that the
app saw the real client address); POST answers how many bytes arrived and whether the
marker "MARKER" was among them. Usage: python3 http_app.py <bind-ip> <port> [name]
"""
import http.server, sys

NAME = sys.argv[3] if len(sys.argv) > 3 else "server"

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s sees %s\n" % (NAME, self.client_address[0])).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("content-length", "0")); data = self.rfile.read(n)
        body = ("got %d bytes, marker %s\n" % (len(data), b"MARKER" in data)).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass

class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    address_family = __import__("socket").AF_INET6 if ":" in sys.argv[1] else __import__("socket").AF_INET

Server((sys.argv[1], int(sys.argv[2])), H).serve_forever()
