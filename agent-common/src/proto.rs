//! Protocols told from the first bytes the process sends (`SockState::proto`). Bounded: they
//! become the `protocol` field of incidents.

use crate::proto;

pub const UNKNOWN: u8 = 0;
pub const HTTP: u8 = 1;
/// HTTP/2 in clear text (h2c, gRPC without TLS).
pub const H2: u8 = 2;
pub const TLS: u8 = 3;
pub const POSTGRES: u8 = 4;
pub const MYSQL: u8 = 5;
/// HTTP/1 upgraded to WebSocket (the process's first message was a 101).
pub const WEBSOCKET: u8 = 6;
/// A line-based text protocol whose server speaks first (SMTP, FTP, POP3, IMAP).
pub const TEXT: u8 = 7;
pub const REDIS: u8 = 8;

#[inline(always)]
pub const fn name(p: u8) -> &'static str {
    match p {
        HTTP => "http",
        H2 => "h2",
        TLS => "tls",
        POSTGRES => "postgres",
        MYSQL => "mysql",
        WEBSOCKET => "websocket",
        TEXT => "text",
        REDIS => "redis",
        _ => "unknown",
    }
}

/// The protocol of a connection from the first message the process sent on it, `len`
/// bytes long. `replying`: the peer had spoken first (the message answers it).
#[inline(always)]
pub const fn of_first_message(h: &Head, len: u32, replying: bool) -> u8 {
    // A TLS handshake record: ClientHello or ServerHello (RFC 8446 §5.1).
    if h[0] == 0x16 && h[1] == 0x03 && h[2] <= 0x04 {
        return TLS;
    }
    if starts(h, b"HTTP/1.1 101 ") {
        return WEBSOCKET;
    }
    // A request only where the process speaks first: NATS clients answer the server's
    // greeting with `CONNECT {...}`.
    if starts(h, b"HTTP/1.") || (!replying && is_http_method(h)) {
        return HTTP;
    }
    // The client preface, or a server's first frame: SETTINGS (type 4) on stream 0.
    if starts(h, b"PRI * HTTP/2.0")
        || (len >= 9 && h[0] == 0 && h[3] == 0x04 && h[4] & !1 == 0 && zero4(h, 5))
    {
        return H2;
    }
    // A PostgreSQL server's first message: the one-byte answer to SSLRequest or
    // GSSENCRequest, or an authentication request or error ('R'/'E' and a length).
    if replying && len == 1 && (h[0] == b'N' || h[0] == b'S' || h[0] == b'G') {
        return POSTGRES;
    }
    if replying && (h[0] == b'R' || h[0] == b'E') && h[1] == 0 && h[2] == 0 && len >= 9 {
        return POSTGRES;
    }
    // A PostgreSQL client's first message: a length, then protocol 3.0 or an SSL,
    // GSSAPI or cancel request code (1234.5679, 1234.5680, 1234.5678).
    if !replying
        && h[0] == 0
        && h[1] == 0
        && ((h[4] == 0 && h[5] == 3) || (h[4] == 0x04 && h[5] == 0xd2))
    {
        return POSTGRES;
    }
    // A MySQL server's greeting: a 3-byte length, sequence 0, protocol version 10. Its
    // client's first message is sequence 1 of the same exchange.
    if !replying && h[3] == 0 && h[4] == 10 && h[2] == 0 {
        return MYSQL;
    }
    if replying && h[3] == 1 && h[2] == 0 && len >= 32 {
        return MYSQL;
    }
    // A text greeting: a three-digit code or "+OK"/"* OK" (SMTP, FTP, POP3, IMAP).
    if !replying && (is_reply_code(h) || starts(h, b"+OK") || starts(h, b"* OK")) {
        return TEXT;
    }
    // A text client answering a greeting.
    if replying
        && (starts_ci(h, b"EHLO")
            || starts_ci(h, b"HELO")
            || starts_ci(h, b"USER")
            || starts_ci(h, b"CAPA"))
    {
        return TEXT;
    }
    // RESP: an array of bulk strings from a client, or a reply from a server.
    if (h[0] == b'*' && h[1] >= b'0' && h[1] <= b'9')
        || (replying && (h[0] == b'+' || h[0] == b'-' || h[0] == b':' || h[0] == b'$'))
    {
        return REDIS;
    }
    UNKNOWN
}

/// Protocols whose client speaks first: on these an active open never owes an answer,
/// whatever arrived before its first message.
#[inline(always)]
pub const fn client_speaks_first(p: u8) -> bool {
    matches!(p, HTTP | H2 | TLS | POSTGRES | REDIS | WEBSOCKET)
}

/// Protocols whose goodbyes the table knows in full: on these, input the process never
/// answered is a request owed an answer unless it is one of those goodbyes. Every other
/// protocol may end its sessions with a goodbye no table lists
/// ([`crate::SockState::ends_a_session`]).
#[inline(always)]
pub const fn goodbyes_known(p: u8) -> bool {
    matches!(p, HTTP | H2 | WEBSOCKET | POSTGRES | MYSQL)
}

/// The largest last message taken for a goodbye on a protocol whose goodbyes no table knows.
/// Goodbyes are small: memcached's and beanstalkd's `quit` are 6 bytes, an LDAP unbind 7, an
/// MQTT DISCONNECT 2, OpenSSH's last packets 96.
pub const SESSION_GOODBYE_MAX: u64 = 256;

/// How many answers (or a greeting) make a connection a session whose last message may be a
/// goodbye no table knows: one, and on TLS three, as the handshake's two flights answer the
/// client's before any application data does.
#[inline(always)]
pub const fn answers_before_goodbye(p: u8) -> u8 {
    match p {
        TLS => 3,
        _ => 1,
    }
}

/// The sizes of one TLS close alert record: TLS 1.3 with any AEAD (5 + 2 + 1 + 16), TLS 1.2
/// with AES-GCM (5 + 8 + 2 + 16) or ChaCha20-Poly1305 (5 + 2 + 16), and in clear text
/// before a handshake completes (5 + 2). A record that size carries two bytes of
/// application data at most: no answer to anything.
#[inline(always)]
pub const fn is_tls_alert_size(n: u64) -> bool {
    matches!(n, 7 | 23 | 24 | 31)
}

/// Whether `n` bytes of input after the last answer are exactly the peer's goodbye on a
/// connection of protocol `p`: PostgreSQL's Terminate and MySQL's COM_QUIT are five bytes
/// each ('X' and a length of 4; a 1-byte payload 0x01 behind a 4-byte header), clear or
/// as one TLS record, maybe followed by a TLS close alert; on TLS, a close alert.
///
/// A size, not the bytes: no probe mode sees received bytes in the same way (tracepoint
/// mode sees none), so the decision rests on what every mode can measure.
#[inline(always)]
pub const fn is_goodbye_size(p: u8, n: u64) -> bool {
    match p {
        POSTGRES | MYSQL => n == 5 || is_tls_wrapped(5, n),
        TLS => is_tls_alert_size(n) || is_small_record_then_alert(n),
        _ => false,
    }
}

/// The plaintext of HTTP/2 control frames a TLS peer may send just before its close alert
/// (a SETTINGS ack is 9 bytes, WINDOW_UPDATE and RST_STREAM 13, PING and GOAWAY 17): a
/// record with no more than this, then the alert, is a peer closing its side.
const SMALL_RECORD: u64 = 40;

/// What one TLS record adds to its data, and the size of a close alert record, under the
/// protections seen in practice: TLS 1.3 (any AEAD), TLS 1.2 AES-GCM, TLS 1.2
/// ChaCha20-Poly1305 (see `is_tls_alert_size`).
const TLS_PROTECTIONS: [(u64, u64); 3] = [(22, 24), (29, 31), (21, 23)];

/// `n` is one TLS record of at most [`SMALL_RECORD`] bytes of data followed by a close
/// alert of the same protection: the peer's last control frames, then its goodbye (records
/// that arrive together are read together).
#[inline(always)]
const fn is_small_record_then_alert(n: u64) -> bool {
    let mut i = 0;
    while i < TLS_PROTECTIONS.len() {
        let (record, alert) = TLS_PROTECTIONS[i];
        if n > record + alert && n <= record + alert + SMALL_RECORD {
            return true;
        }
        i += 1;
    }
    false
}

/// `n` is a `plain`-byte message as one TLS record, alone or followed by the close alert
/// of the same record protection ([`TLS_PROTECTIONS`]).
#[inline(always)]
const fn is_tls_wrapped(plain: u64, n: u64) -> bool {
    let mut i = 0;
    while i < TLS_PROTECTIONS.len() {
        let (record, alert) = TLS_PROTECTIONS[i];
        if n == plain + record || n == plain + record + alert {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
const fn starts(h: &Head, s: &[u8]) -> bool {
    starts_folded(h, s, false)
}

/// `s` is upper case; `h` may be in either case.
#[inline(always)]
const fn starts_ci(h: &Head, s: &[u8]) -> bool {
    starts_folded(h, s, true)
}

#[inline(always)]
const fn starts_folded(h: &Head, s: &[u8], fold: bool) -> bool {
    let mut i = 0;
    while i < s.len() {
        let b = if fold {
            h[i].to_ascii_uppercase()
        } else {
            h[i]
        };
        if b != s[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
const fn zero4(h: &Head, at: usize) -> bool {
    h[at] == 0 && h[at + 1] == 0 && h[at + 2] == 0 && h[at + 3] == 0
}

#[inline(always)]
const fn is_reply_code(h: &Head) -> bool {
    h[0] >= b'1'
        && h[0] <= b'5'
        && h[1].is_ascii_digit()
        && h[2].is_ascii_digit()
        && (h[3] == b' ' || h[3] == b'-')
}

#[inline(always)]
const fn is_http_method(h: &Head) -> bool {
    starts(h, b"GET ")
        || starts(h, b"POST ")
        || starts(h, b"PUT ")
        || starts(h, b"HEAD ")
        || starts(h, b"DELETE ")
        || starts(h, b"OPTIONS ")
        || starts(h, b"PATCH ")
        || starts(h, b"CONNECT ")
}

/// A text protocol's QUIT command on a line of its own (IMAP's tagged LOGOUT is not
/// recognised).
#[inline(always)]
pub const fn is_quit(h: &Head, len: u32) -> bool {
    (len == 6 || len == 5) && starts_ci(h, b"QUIT") && (h[4] == b'\r' || h[4] == b'\n')
}

/// The first bytes of a message the process sent, as far as they were read (zeros after).
pub type Head = [u8; HEAD_LEN];

/// How many bytes of a message [`SendKind::of`] and [`of_first_message`] look at.
pub const HEAD_LEN: usize = 16;

/// What one message the process sent means for the requests before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendKind(u8);

impl SendKind {
    const ANSWERS: u8 = 1;
    const ENDS: u8 = 2;
    /// An ordinary message: it answers what was read before it.
    pub const ANSWER: Self = Self(Self::ANSWERS);
    /// A goodbye that is also a reply (QUIT, a WebSocket close frame, an HTTP/2 GOAWAY).
    pub const ANSWER_AND_GOODBYE: Self = Self(Self::ANSWERS | Self::ENDS);
    /// A goodbye that answers nothing: a TLS close alert, which a TLS library writes when the
    /// application closes, whether or not the application ever answered.
    pub const GOODBYE: Self = Self(Self::ENDS);

    /// The kind of a `len`-byte message on a connection of protocol `p` (one of [`proto`]),
    /// `head` its first bytes where [`crate::SockState::send_needs_peek`] asked for them.
    #[inline(always)]
    pub const fn of(p: u8, head: &Head, len: u32) -> Self {
        match p {
            // TLS 1.3 hides the record type; only the size of a close alert is its own.
            proto::TLS if proto::is_tls_alert_size(len as u64) => Self::GOODBYE,
            // FIN and opcode 8 (RFC 6455 §5.5.1).
            proto::WEBSOCKET if head[0] == 0x88 => Self::ANSWER_AND_GOODBYE,
            // A frame of type 7 (RFC 9113 §6.8) on stream 0.
            proto::H2 if len >= 17 && head[3] == 0x07 => Self::ANSWER_AND_GOODBYE,
            proto::TEXT if proto::is_quit(head, len) => Self::ANSWER_AND_GOODBYE,
            _ => Self::ANSWER,
        }
    }

    #[inline(always)]
    pub const fn answers(self) -> bool {
        self.0 & Self::ANSWERS != 0
    }

    #[inline(always)]
    pub const fn ends(self) -> bool {
        self.0 & Self::ENDS != 0
    }
}
