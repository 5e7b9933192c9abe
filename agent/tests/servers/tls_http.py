"""TLS peers for the e2e tests, on Python's ssl module (run with Debian's /usr/bin/python3).

Servers bind 127.0.0.1 on a free port, print `ready PORT` and serve until killed:

  tls_http.py http DIR          HTTPS, HTTP/1.1 keep-alive: GET /fast answers `fast hello`
  tls_http.py raise DIR         HTTPS whose handler raises: the request is read, never answered
  tls_http.py raw DIR NOTIFY    one line in, one line out over TLS, close_notify as told (below)

DIR holds the server's certificate and key, cert.pem and key.pem (the tests make them with
openssl).

The raw protocol: the client sends `ping CLOSER\n`, the server answers `pong\n`, and CLOSER
(`client` or `server`) ends the connection: it sends its close_notify first, unless its NOTIFY
is `no`, then closes the socket; the other side reads until the TLS stream ends (close_notify or
TCP EOF), then sends its own close_notify unless its NOTIFY is `no`, then closes. NOTIFY `yes`
waits for the peer's close_notify (or EOF) after sending its own (`unwrap()`), `nowait` closes
right after sending it, as most TLS stacks do, and `no` closes without a close_notify.

Clients print one line per connection and exit 0 only if every answer was right:

  tls_http.py get URL N         N GETs with http.client, one connection per request
  tls_http.py get-keep-alive URL N    N GETs on one connection
  tls_http.py ping PORT N CLOSER NOTIFY    N raw connections (above)
"""

import http.client
import http.server
import os
import socket
import ssl
import sys
import urllib.parse


def server_context(directory):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
    return ctx


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.server.raises:
            raise RuntimeError("handler failed before answering")
        body = b"fast hello\n" if self.path == "/fast" else b"not found\n"
        self.send_response(200 if self.path == "/fast" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the raising handler's traceback is expected


def serve_http(directory, raises):
    ctx = server_context(directory)
    srv = Server(("127.0.0.1", 0), Handler)
    srv.raises = raises
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", srv.server_address[1], flush=True)
    srv.serve_forever()


def read_until_end(s):
    """Reads until the TLS stream ends: the peer's close_notify, or TCP EOF without one."""
    try:
        while s.recv(4096):
            pass
    except (ssl.SSLError, OSError):
        pass


def notify(s, wait):
    """Sends close_notify and, if `wait`, waits for the peer's (or its TCP EOF)."""
    if not wait:
        # SSL_shutdown sends the alert, then finds nothing to read and gives up.
        s.setblocking(False)
    try:
        s.unwrap()
    except (ssl.SSLError, OSError):
        pass  # the peer closed without a close_notify, or `wait` is false


def finish(s, closer, me, how):
    if closer != me:
        read_until_end(s)
    if how != "no":
        notify(s, how == "yes")
    s.close()


def read_line(s):
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"the stream ended after {line!r}")
        line += chunk
    return line.decode()


def serve_raw(directory, how):
    ctx = server_context(directory)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    print("ready", ls.getsockname()[1], flush=True)
    while True:
        conn, _ = ls.accept()
        try:
            s = ctx.wrap_socket(conn, server_side=True)
            closer = read_line(s).split()[1]
            s.sendall(b"pong\n")
            finish(s, closer, "server", how)
        except (ssl.SSLError, OSError, RuntimeError, IndexError):
            conn.close()


def ping(port, n, closer, how):
    ctx = client_context()
    for i in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
        s.sendall(f"ping {closer}\n".encode())
        answer = read_line(s)
        if answer != "pong\n":
            sys.exit(f"connection {i}: answered {answer!r}")
        finish(s, closer, "client", how)
        print(i, answer.strip(), flush=True)


def get(url, n, keep_alive):
    u = urllib.parse.urlsplit(url)
    conn = None
    for i in range(n):
        if conn is None:
            conn = http.client.HTTPSConnection(u.hostname, u.port, context=client_context())
        conn.request("GET", u.path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            sys.exit(f"request {i}: {resp.status} {body!r}")
        print(i, resp.status, len(body), flush=True)
        if not keep_alive:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode in ("http", "raise"):
        serve_http(args[0], mode == "raise")
    elif mode == "raw":
        serve_raw(args[0], args[1])
    elif mode in ("get", "get-keep-alive"):
        socket.setdefaulttimeout(10)
        get(args[0], int(args[1]), mode == "get-keep-alive")
    elif mode == "ping":
        socket.setdefaulttimeout(10)
        ping(int(args[0]), int(args[1]), args[2], args[3])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
