"""gRPC (HTTP/2 cleartext underneath) with grpcio, without generated code: the methods of the
service lw.Echo take and return raw bytes.

  python3 grpc_peer.py server PORT [--stop-after CALLS]
      Serves lw.Echo/Unary (returns the request) and lw.Echo/Stream (returns the request
      three times, as a server stream). Prints "ready" once listening. --stop-after CALLS:
      once CALLS calls are done and the clients are idle, the server stops (server.stop with a
      grace period: GOAWAY on every connection, then it closes them) and exits 0.
  python3 grpc_peer.py client PORT CHANNELS close|wait
      CHANNELS channels (one connection each) all connected at once, each doing three unary
      calls and a server-streaming call, every reply checked. Then "close": the client closes
      every channel (grpcio shuts the socket down, without a GOAWAY); "wait": the client waits for the server's
      GOAWAY on every connection (each channel leaves READY; grpc then closes the idle
      connection), then closes the channels. Prints
      "done <mode> <calls>" and exits 0 only if all went as described.
"""
import sys
import threading
import time
from concurrent import futures

import grpc

UNARY = "/lw.Echo/Unary"
STREAM = "/lw.Echo/Stream"
CALLS_PER_CHANNEL = 4


def serve(port, stop_after):
    done = threading.Semaphore(0)

    def unary(request, context):
        done.release()
        return request

    def stream(request, context):
        yield from (request, request, request)
        done.release()

    handler = grpc.method_handlers_generic_handler(
        "lw.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        handlers=[handler],
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    if not stop_after:
        server.wait_for_termination()
        return
    for _ in range(stop_after):
        done.acquire()
    # Every reply is on its way; give the clients time to read it and go idle, so that the
    # server's GOAWAY reaches idle connections rather than racing a last reply.
    time.sleep(0.5)
    server.stop(grace=1).wait()
    print("stopped", flush=True)


def client(port, channels, mode):
    target = f"127.0.0.1:{port}"
    # No connection sharing between channels: each one is its own TCP connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.insecure_channel(target, options=options) for _ in range(channels)]
    calls = 0
    for i, chan in enumerate(chans):
        grpc.channel_ready_future(chan).result(timeout=5)
        unary = chan.unary_unary(UNARY)
        stream = chan.unary_stream(STREAM)
        for j in range(CALLS_PER_CHANNEL - 1):
            msg = f"ch{i} call{j}".encode()
            assert unary(msg, timeout=5) == msg, "unary reply"
            calls += 1
        msg = f"ch{i} stream".encode()
        assert list(stream(msg, timeout=5)) == [msg] * 3, "streamed replies"
        calls += 1
    if mode == "wait":
        # A channel leaves READY when its connection gets the server's GOAWAY (or is closed).
        left = []
        for chan in chans:
            gone = threading.Event()

            def watch(state, gone=gone):
                if state != grpc.ChannelConnectivity.READY:
                    gone.set()

            chan.subscribe(watch, try_to_connect=False)
            left.append(gone)
        for gone in left:
            assert gone.wait(timeout=5), "no GOAWAY from the server"
    for chan in chans:
        chan.close()
    print(f"done {mode} {calls}", flush=True)


def main():
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "server":
        stop_after = int(sys.argv[4]) if sys.argv[3:4] == ["--stop-after"] else 0
        serve(port, stop_after)
    elif role == "client":
        channels, mode = int(sys.argv[3]), sys.argv[4]
        assert mode in ("close", "wait"), mode
        client(port, channels, mode)
    else:
        sys.exit("usage: grpc_peer.py server|client PORT ...")


if __name__ == "__main__":
    main()
