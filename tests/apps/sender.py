"""Sends exactly <bytes> bytes over one TCP connection, spread evenly over <seconds>, then
half-closes and prints the server's answer. Usage: python3 sender.py <host> <port> <bytes> <seconds>"""
import socket, sys, time

host, port, total, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.create_connection((host, port), timeout=30)
chunk = b"w" * 65536
sent = 0
start = time.time()
while sent < total:
    n = min(len(chunk), total - sent)
    sock.sendall(chunk[:n])
    sent += n
    # Pace: never ahead of the even schedule.
    ahead = start + seconds * sent / total - time.time()
    if ahead > 0:
        time.sleep(ahead)
sock.shutdown(socket.SHUT_WR)
answer = b""
while True:
    data = sock.recv(4096)
    if not data:
        break
    answer += data
print(answer.decode().strip(), flush=True)
