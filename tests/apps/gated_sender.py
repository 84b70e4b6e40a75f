"""Sends <bytes> bytes over one TCP connection in two halves: the first half, then it prints
"half-sent" and waits until the file <gate> exists, then the second half; then it
half-closes and prints the server's answer ("received <n>" from counter_server.py).
With --socks5 <ip>:<port> the connection goes through that SOCKS5 proxy (no auth).
Usage: python3 gated_sender.py [--socks5 ip:port] <host> <port> <bytes> <gate>"""
import ipaddress, os, socket, struct, sys, time

args = sys.argv[1:]
proxy = None
if args[0] == "--socks5":
    proxy = args[1]
    args = args[2:]
host, port, total, gate = args[0], int(args[1]), int(args[2]), args[3]

if proxy:
    phost, pport = proxy.rsplit(":", 1)
    sock = socket.create_connection((phost, int(pport)), timeout=30)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00", "SOCKS5 greeting refused"
    sock.sendall(b"\x05\x01\x00\x01" + ipaddress.IPv4Address(host).packed + struct.pack(">H", port))
    reply = sock.recv(10)
    assert reply[:2] == b"\x05\x00", "SOCKS5 CONNECT refused: %r" % reply
else:
    sock = socket.create_connection((host, port), timeout=30)
sock.settimeout(60)

chunk = b"g" * 65536
def send(n):
    while n > 0:
        k = min(n, len(chunk))
        sock.sendall(chunk[:k])
        n -= k

first = total // 2
send(first)
print("half-sent", flush=True)
while not os.path.exists(gate):
    time.sleep(0.02)
send(total - first)
sock.shutdown(socket.SHUT_WR)
answer = b""
while True:
    data = sock.recv(4096)
    if not data:
        break
    answer += data
print("answer " + answer.decode().strip(), flush=True)
