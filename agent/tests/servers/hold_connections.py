"""Opens COUNT idle loopback TCP connections to itself on ADDR and holds them until stdin closes.

Both ends live in this process, two fds per connection, so COUNT stays under half of
RLIMIT_NOFILE. The listener is on ADDR (a 127.0.0.x address of its own) so that processes running
side by side do not share a destination and so do not share the ephemeral port range either.
Prints "ready COUNT" once every connection is established.
"""
import socket
import sys

addr, count = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.bind((addr, 0))
srv.listen(1024)
target = srv.getsockname()
held = []
for _ in range(count):
    client = socket.create_connection(target)
    conn, _ = srv.accept()
    held.append((client, conn))
print(f"ready {len(held)}", flush=True)
sys.stdin.read()
