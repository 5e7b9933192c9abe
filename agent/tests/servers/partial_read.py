"""A server that reads only the first 3 bytes of each request, answers, and closes.

The rest of the request is still unread when it closes, so the kernel resets the connection
(close() with unread input) instead of closing it gracefully.
"""
import socket
import sys

port = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen()
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    conn.recv(3)
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    conn.close()
