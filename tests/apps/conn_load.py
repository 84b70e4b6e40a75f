"""Opens new TCP connections at a steady rate and counts how each one ends.

Usage: python3 conn_load.py <host> <port> <per second> <seconds>
Each connection sends one line and waits for its echo. Prints, once at the end:
  result ok=N refused=N reset=N timeout=N other=N
and "started" once the first connection succeeded.
"""
import socket, sys, time

host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
counts = {"ok": 0, "refused": 0, "reset": 0, "timeout": 0, "other": 0}
errors = []
interval = 1.0 / rate
start = time.monotonic()
n = 0
while True:
    due = start + n * interval
    now = time.monotonic()
    if due - start >= seconds:
        break
    if due > now:
        time.sleep(due - now)
    n += 1
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"ping %d\n" % n)
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionResetError("closed before the echo")
                data += chunk
            counts["ok"] += 1
            if counts["ok"] == 1:
                print("started", flush=True)
    except ConnectionRefusedError as e:
        counts["refused"] += 1
        errors.append("%d refused: %s" % (n, e))
    except (ConnectionResetError, BrokenPipeError) as e:
        counts["reset"] += 1
        errors.append("%d reset: %s" % (n, e))
    except socket.timeout as e:
        counts["timeout"] += 1
        errors.append("%d timeout: %s" % (n, e))
    except OSError as e:
        counts["other"] += 1
        errors.append("%d other: %s" % (n, e))
for line in errors[:20]:
    print(line, flush=True)
print("result " + " ".join("%s=%d" % kv for kv in counts.items()), flush=True)
