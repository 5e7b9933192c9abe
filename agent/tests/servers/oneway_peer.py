"""A one-way stream: the client sends lines and closes; the server never writes a byte, it
reads to end of file and closes (log shipping, a metrics push, `nc host port < file`).

  python3 oneway_peer.py server PORT
      Prints "ready" once listening, then for each connection, once it has read to end of
      file and closed it: "got <lines> lines <bytes> bytes".
  python3 oneway_peer.py client PORT CONNECTIONS LINES close|shutdown
      CONNECTIONS connections one after another, each sending LINES lines. Then "close": the
      client closes right away; "shutdown": the client shuts down its sending side and waits
      for the server's end of file before closing (like `nc -N`). Prints "done <mode>
      <connections>".
"""
import socket
import socketserver
import sys


class Drain(socketserver.StreamRequestHandler):
    def handle(self):
        lines = 0
        size = 0
        for line in self.rfile:
            lines += 1
            size += len(line)
        # socketserver closes the connection when handle returns.
        self.server.report.append(f"got {lines} lines {size} bytes")


class Server(socketserver.TCPServer):
    allow_reuse_address = True

    def process_request(self, request, client_address):
        super().process_request(request, client_address)
        # After shutdown_request closed the connection.
        while self.report:
            print(self.report.pop(0), flush=True)


def client(port, connections, lines, mode):
    for c in range(connections):
        with socket.create_connection(("127.0.0.1", port)) as s:
            for n in range(lines):
                s.sendall(f"conn {c} line {n}\n".encode())
            if mode == "shutdown":
                s.shutdown(socket.SHUT_WR)
                # The server sends nothing: the next read is its end of file.
                assert s.recv(1) == b"", "the server wrote something"
    print(f"done {mode} {connections}", flush=True)


def main():
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "server":
        with Server(("127.0.0.1", port), Drain) as srv:
            srv.report = []
            print("ready", flush=True)
            srv.serve_forever()
    elif role == "client":
        mode = sys.argv[5]
        assert mode in ("close", "shutdown"), mode
        client(port, int(sys.argv[3]), int(sys.argv[4]), mode)
    else:
        sys.exit("usage: oneway_peer.py server|client PORT ...")


if __name__ == "__main__":
    main()
