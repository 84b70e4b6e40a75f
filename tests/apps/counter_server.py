"""Reads each connection to EOF, then answers "received <n>" and closes.
Usage: python3 counter_server.py <port>"""
import socket, sys, threading

def serve(conn):
    with conn:
        total = 0
        while True:
            data = conn.recv(65536)
            if not data:
                break
            total += len(data)
        conn.sendall(b"received %d\n" % total)

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(64)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
