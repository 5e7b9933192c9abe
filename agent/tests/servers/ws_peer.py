"""WebSockets with the websockets library (asyncio).

  python3 ws_peer.py server PORT [--close-after N]
      Echoes every message. Prints "ready" once listening. --close-after N: after echoing N
      messages on a connection the server starts the close handshake (close code 1000).
  python3 ws_peer.py client PORT CONNECTIONS MESSAGES close|wait
      CONNECTIONS connections one after another, each sending MESSAGES messages and checking
      every echo. Then "close": the client starts the close handshake; "wait": the client
      waits for the server's close frame (code 1000). Prints "done <mode> <connections>" and
      exits 0 only if every echo came back and every connection closed cleanly (1000).
"""
import asyncio
import sys

import websockets


async def serve(port, close_after):
    async def echo(ws, path=None):
        seen = 0
        async for message in ws:
            await ws.send(message)
            seen += 1
            if close_after and seen == close_after:
                # The server's close handshake: close frame, the client's reply, TCP close.
                await ws.close(code=1000, reason="enough")
                return

    async with websockets.serve(echo, "127.0.0.1", port):
        print("ready", flush=True)
        await asyncio.Future()


async def client(port, connections, messages, mode):
    for c in range(connections):
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            for m in range(messages):
                msg = f"conn {c} message {m}"
                await ws.send(msg)
                assert await ws.recv() == msg, "echo"
            if mode == "close":
                await ws.close(code=1000)
            else:
                try:
                    await asyncio.wait_for(ws.recv(), timeout=5)
                    raise AssertionError("a message instead of the server's close")
                except websockets.ConnectionClosedOK:
                    pass
            # The handshake done, wait_closed returns once the TCP connection is closed too.
            await asyncio.wait_for(ws.wait_closed(), timeout=5)
            assert ws.close_code == 1000, f"close code {ws.close_code}"
    print(f"done {mode} {connections}", flush=True)


def main():
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "server":
        close_after = int(sys.argv[4]) if sys.argv[3:4] == ["--close-after"] else 0
        asyncio.run(serve(port, close_after))
    elif role == "client":
        connections, messages, mode = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        assert mode in ("close", "wait"), mode
        asyncio.run(client(port, connections, messages, mode))
    else:
        sys.exit("usage: ws_peer.py server|client PORT ...")


if __name__ == "__main__":
    main()
