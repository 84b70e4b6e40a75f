"""Sends N HTTP/1.1 requests over one keep-alive connection and prints one JSON object:
{"served_by": {name: count}, "status": {code: count}, "connections": 1, "errors": n}.
Each request must be answered on the same connection (the server's keep-alive and the
waypoint's). Usage: python3 http_probe.py <host> <port> <path> <n> [header:value ...]
"""
import http.client, json, sys

host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
headers = dict(h.split(":", 1) for h in sys.argv[5:])
served, status, errors, reconnects = {}, {}, 0, 0
conn = http.client.HTTPConnection(host, port, timeout=5)
for _ in range(n):
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        status[r.status] = status.get(r.status, 0) + 1
        if r.status == 200:
            who = json.loads(body).get("served_by", "?")
            served[who] = served.get(who, 0) + 1
        if r.getheader("connection", "").lower() == "close":
            reconnects += 1
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=5)
    except Exception as e:
        errors += 1
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=5)
        reconnects += 1
print(json.dumps({"served_by": served, "status": status, "errors": errors, "reconnects": reconnects}))
