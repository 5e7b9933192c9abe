"""An SMTP session, where the server speaks first: the standard library's smtpd server (on
asyncore, both deprecated: run the server with `python3 -W ignore`) and smtplib client.

  python3 -W ignore smtp_peer.py server PORT
      An SMTP server that accepts and discards mail. Prints "ready" once listening.
  python3 smtp_peer.py client PORT SESSIONS
      SESSIONS sessions one after another: the 220 greeting, EHLO, NOOP, QUIT and the 221
      reply, after which the server closes and then the client. Prints "done <sessions>" and
      exits 0 only if every reply had the expected code.
"""
import smtplib
import sys


def serve(port):
    import asyncore
    import smtpd

    class Discard(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            return None  # 250: accepted (and dropped)

    Discard(("127.0.0.1", port), None)
    print("ready", flush=True)
    asyncore.loop()


def client(port, sessions):
    for _ in range(sessions):
        smtp = smtplib.SMTP()
        code, greeting = smtp.connect("127.0.0.1", port)
        assert code == 220, (code, greeting)
        code, _ = smtp.ehlo("client.test")
        assert code == 250, code
        code, _ = smtp.noop()
        assert code == 250, code
        # quit() sends QUIT, reads the 221 reply and closes the socket.
        code, _ = smtp.quit()
        assert code == 221, code
    print(f"done {sessions}", flush=True)


def main():
    role, port = sys.argv[1], int(sys.argv[2])
    if role == "server":
        serve(port)
    elif role == "client":
        client(port, int(sys.argv[3]))
    else:
        sys.exit("usage: smtp_peer.py server|client PORT ...")


if __name__ == "__main__":
    main()
