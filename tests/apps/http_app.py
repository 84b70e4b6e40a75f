"""A tiny real HTTP application for weft's tests and demo.

GET answers "hello from server"; POST answers how many bytes arrived and whether the
marker "MARKER" was among them. Usage: python3 http_app.py <bind-ip> <port>
"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from server\n"
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("content-length", "0")); data = self.rfile.read(n)
        body = ("got %d bytes, marker %s\n" % (len(data), b"MARKER" in data)).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
