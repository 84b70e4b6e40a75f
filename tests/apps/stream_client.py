"""Holds one TCP connection open and pings it every 50 ms for a bounded time.

Usage: python3 stream_client.py <host> <port> <seconds>
Prints "open <t>" once connected, "echoed <t>" after the first ping came back (the
connection really carries data end to end), then either "closed <t>" (the connection was cut; <t> is
the wall-clock time it noticed) or "alive <t>" when the time is up. Exit code 0 either way.
"""
import socket, sys, time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.create_connection((host, port), timeout=2)
sock.settimeout(2)
print("open %.3f" % time.time(), flush=True)
deadline = time.time() + seconds
echoed = False
while time.time() < deadline:
    try:
        sock.sendall(b"ping\n")
        data = sock.recv(64)
        if not data:
            raise ConnectionError("eof")
    except (OSError, ConnectionError):
        print("closed %.3f" % time.time(), flush=True)
        sys.exit(0)
    if not echoed:
        echoed = True
        print("echoed %.3f" % time.time(), flush=True)
    time.sleep(0.05)
print("alive %.3f" % time.time(), flush=True)
