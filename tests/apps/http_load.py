"""HTTP/1.1 load with a new connection per request: W workers, each sending N requests at
R requests/s (paced, so a restart in the middle is crossed by live traffic). Prints one
JSON object: {"ok": n, "status": {code: n}, "errors": {message: n}}.
Usage: python3 http_load.py <host> <port> <path> <workers> <requests-per-worker> <rate-per-worker>
"""
import http.client, json, sys, threading, time

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
workers, per_worker, rate = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
lock = threading.Lock()
status, errors = {}, {}

def work():
    start = time.monotonic()
    for i in range(per_worker):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", path, headers={"connection": "close"})
            r = conn.getresponse()
            r.read()
            conn.close()
            with lock:
                status[r.status] = status.get(r.status, 0) + 1
        except Exception as e:
            with lock:
                key = type(e).__name__ + ": " + str(e)[:80]
                errors[key] = errors.get(key, 0) + 1

threads = [threading.Thread(target=work) for _ in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"ok": status.get(200, 0), "status": status, "errors": errors}), flush=True)
