//! The PostgreSQL wire format as the proxy needs it: framing both directions, reading the
//! startup packet, the few frontend messages rules look into, and the backend messages the
//! proxy writes itself (ErrorResponse, ReadyForQuery, BackendKeyData).
//!
//! postgres-protocol is a client's codec: it encodes frontend messages (used here for the
//! synthetic Parse/Bind/Execute that inject an error) and frames backend ones
//! (`backend::Header`), but parses no frontend message and writes no backend one. Those few
//! are written here, from "Message Formats" (PostgreSQL docs, protocol-message-formats.html).

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

/// `CancelRequest`'s code: 1234 << 16 | 5678 ("Message Formats", CancelRequest).
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// `SSLRequest`'s code: 1234 << 16 | 5679.
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest`'s code: 1234 << 16 | 5680.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// The server refuses startup packets longer than this (src/include/libpq/pqcomm.h,
/// MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The largest message either side may send: the server's own limit for a frontend message
/// (PQ_LARGE_MESSAGE_LIMIT, MaxAllocSize - 1, src/backend/libpq/pqcomm.c) plus headroom for
/// backend messages carrying a 1 GB value. A larger length is a corrupt stream.
pub const MAX_MESSAGE_LEN: usize = (1 << 30) + (1 << 20);

/// A frame that cannot be a PostgreSQL message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// Splits the next whole tagged message (`Byte1 tag, Int32 length including itself, body`)
/// off `buf`, or returns `None` until one has arrived.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, Malformed> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < len + 1 {
        return Ok(None);
    }
    Ok(Some(buf.split_to(len + 1)))
}

/// The length field of the message at the head of `buf`, validated, once five bytes are there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(Malformed(format!(
            "message '{}' claims an impossible length of {len} bytes",
            buf[0].escape_ascii()
        )));
    }
    Ok(Some(len))
}

/// The first packet of a connection: untagged, `Int32 length, Int32 code, ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    Ssl,
    GssEnc,
    /// A cancel request: the backend's process id and secret key (4 bytes in protocol 3.0, up
    /// to 256 in 3.2).
    Cancel {
        pid: u32,
        secret: Vec<u8>,
    },
    /// A StartupMessage: its raw bytes (relayed unchanged) and its parameters.
    Startup {
        raw: BytesMut,
        version: u32,
        params: Vec<(String, String)>,
    },
}

/// How many bytes the untagged packet at the head of `buf` has, validated.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(Malformed(format!(
            "the startup packet claims a length of {len} bytes (8 to {MAX_STARTUP_LEN} expected): \
             is this a PostgreSQL client?"
        )));
    }
    Ok(Some(len))
}

/// Parses a whole untagged first packet.
pub fn parse_first(raw: BytesMut) -> Result<FirstPacket, Malformed> {
    let code = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    match code {
        SSL_REQUEST => Ok(FirstPacket::Ssl),
        GSSENC_REQUEST => Ok(FirstPacket::GssEnc),
        CANCEL_REQUEST if raw.len() >= 16 => Ok(FirstPacket::Cancel {
            pid: u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]),
            secret: raw[12..].to_vec(),
        }),
        v if v >> 16 == 3 => {
            let params = startup_params(&raw[8..])?;
            Ok(FirstPacket::Startup {
                raw,
                version: v,
                params,
            })
        }
        v => Err(Malformed(format!(
            "unsupported protocol version {}.{} in the startup packet (3.x expected)",
            v >> 16,
            v & 0xffff
        ))),
    }
}

/// `name\0value\0 ... \0`.
fn startup_params(mut body: &[u8]) -> Result<Vec<(String, String)>, Malformed> {
    let bad = || Malformed("the startup packet's parameters are not NUL-terminated pairs".into());
    let mut out = Vec::new();
    loop {
        let (name, rest) = take_cstr(body).ok_or_else(bad)?;
        if name.is_empty() {
            return Ok(out);
        }
        let (value, rest) = take_cstr(rest).ok_or_else(bad)?;
        out.push((name.to_string(), value.to_string()));
        body = rest;
    }
}

/// A NUL-terminated UTF-8 string at the head of `b`, and what follows it. Invalid UTF-8 is
/// read lossily where a rule only matches on text: callers that relay bytes keep the original.
pub fn take_cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..nul]).ok()?;
    Some((s, &b[nul + 1..]))
}

/// The body of a tagged frame (after tag and length).
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

/// Query ('Q'): the statement text.
pub fn query_text(frame: &[u8]) -> Result<&str, Malformed> {
    take_cstr(body(frame))
        .map(|(s, _)| s)
        .ok_or_else(|| Malformed("a Query message without a NUL-terminated UTF-8 text".into()))
}

/// Parse ('P'): the statement name and its text.
pub fn parse_message(frame: &[u8]) -> Result<(&str, &str), Malformed> {
    let bad = || Malformed("a Parse message without a statement name and text".into());
    let (name, rest) = take_cstr(body(frame)).ok_or_else(bad)?;
    let (text, _) = take_cstr(rest).ok_or_else(bad)?;
    Ok((name, text))
}

/// Bind ('B'): the portal and statement names.
pub fn bind_message(frame: &[u8]) -> Result<(&str, &str), Malformed> {
    let bad = || Malformed("a Bind message without portal and statement names".into());
    let (portal, rest) = take_cstr(body(frame)).ok_or_else(bad)?;
    let (statement, _) = take_cstr(rest).ok_or_else(bad)?;
    Ok((portal, statement))
}

/// Execute ('E'): the portal name.
pub fn execute_portal(frame: &[u8]) -> Result<&str, Malformed> {
    take_cstr(body(frame))
        .map(|(s, _)| s)
        .ok_or_else(|| Malformed("an Execute message without a portal name".into()))
}

/// Close ('C') and Describe ('D'): `S` or `P`, and the name.
pub fn target(frame: &[u8]) -> Result<(u8, &str), Malformed> {
    let b = body(frame);
    let bad = || Malformed("a Close or Describe message without a kind and name".into());
    let (&kind, rest) = b.split_first().ok_or_else(bad)?;
    let (name, _) = take_cstr(rest).ok_or_else(bad)?;
    Ok((kind, name))
}

/// SASLInitialResponse ('p' answering AuthenticationSASL): the mechanism and the GS2
/// channel-binding flag of the client-first message (`n`, `y` or `p`; RFC 5802 7).
pub fn sasl_initial(frame: &[u8]) -> Option<(&str, u8)> {
    let (mechanism, rest) = take_cstr(body(frame))?;
    let data = rest.get(4..)?;
    Some((mechanism, data.first().copied().unwrap_or(b'n')))
}

/// An ErrorResponse with severity ERROR.
pub fn error_response(sqlstate: &str, message: &str, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(b'E');
    out.put_u32(0);
    for (field, value) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        out.put_u8(field);
        put_cstr(out, value);
    }
    out.put_u8(0);
    patch_len(out, start);
}

/// BackendKeyData with the given key (the proxy's own, never the server's).
pub fn backend_key_data(pid: u32, secret: &[u8], out: &mut BytesMut) {
    out.put_u8(b'K');
    out.put_u32(4 + 4 + secret.len() as u32);
    out.put_u32(pid);
    out.put_slice(secret);
}

/// A CancelRequest for the server's key.
pub fn cancel_request(pid: u32, secret: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(12 + secret.len());
    out.put_u32(12 + secret.len() as u32);
    out.put_u32(CANCEL_REQUEST);
    out.put_u32(pid);
    out.put_slice(secret);
    out
}

/// The statement that raises an injected error inside the server, so the server itself
/// answers with the ErrorResponse, aborts a transaction block as a real failure would, and
/// reports the right transaction status in ReadyForQuery. The message is dollar-quoted with a
/// tag it does not contain; the SQLSTATE was validated by the rule (five of `0-9A-Z`).
pub fn raise_statement(message: &str, sqlstate: &str) -> String {
    let inner = unused_tag(message, "m");
    let body = format!(
        "BEGIN RAISE EXCEPTION USING MESSAGE = ${inner}${message}${inner}$, \
         ERRCODE = '{sqlstate}'; END"
    );
    let outer = unused_tag(&body, "walwatch");
    format!("DO ${outer}$ {body} ${outer}$")
}

/// A dollar-quote tag, `base` with `x`s added, whose `$tag$` does not occur in `text`.
fn unused_tag(text: &str, base: &str) -> String {
    let mut tag = base.to_string();
    while text.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    tag
}

/// Query ('Q') with `text`.
pub fn query(text: &str, out: &mut BytesMut) -> Result<(), Malformed> {
    frontend::query(text, out).map_err(|e| Malformed(format!("cannot encode a query: {e}")))
}

/// Parse of `text` into the unnamed statement, Bind of it into the unnamed portal, Execute:
/// what replaces an Execute that a rule fails.
pub fn parse_bind_execute(text: &str, out: &mut BytesMut) -> Result<(), Malformed> {
    parse(text, out)?;
    // Bind: portal "", statement "", no parameter formats, no parameters, no result formats.
    out.put_u8(b'B');
    out.put_u32(4 + 1 + 1 + 2 + 2 + 2);
    out.put_u8(0);
    out.put_u8(0);
    out.put_i16(0);
    out.put_i16(0);
    out.put_i16(0);
    frontend::execute("", 0, out).map_err(|e| Malformed(format!("cannot encode Execute: {e}")))
}

/// Parse of `text` into the unnamed statement, with no parameter types.
pub fn parse(text: &str, out: &mut BytesMut) -> Result<(), Malformed> {
    frontend::parse("", text, std::iter::empty(), out)
        .map_err(|e| Malformed(format!("cannot encode Parse: {e}")))
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; the proxy's own texts never hold one, and a
    // client's message is cut there as the server would.
    out.put_slice(s.split('\0').next().unwrap_or("").as_bytes());
    out.put_u8(0);
}

fn patch_len(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_u32(4 + body.len() as u32);
        b.put_slice(body);
        b
    }

    #[test]
    fn frames_split_only_when_whole() {
        let mut buf = frame(b'Q', b"SELECT 1\0");
        let tail = buf.split_off(7);
        assert_eq!(split_frame(&mut buf).unwrap(), None);
        buf.unsplit(tail);
        buf.extend_from_slice(&frame(b'S', b""));
        let q = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(query_text(&q).unwrap(), "SELECT 1");
        let s = split_frame(&mut buf).unwrap().unwrap();
        assert_eq!(&s[..], b"S\0\0\0\x04");
        assert!(buf.is_empty());
    }

    #[test]
    fn impossible_lengths_are_malformed() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        let err = split_frame(&mut buf).unwrap_err();
        assert!(err.0.contains("impossible length of 2"), "{err}");
        let mut buf = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(split_frame(&mut buf).is_err());
    }

    #[test]
    fn startup_packets_parse() {
        let mut raw = BytesMut::new();
        raw.put_u32(0);
        raw.put_u32(196_608);
        raw.put_slice(b"user\0bob\0database\0app\0\0");
        let len = raw.len() as u32;
        raw[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(packet_len(&raw).unwrap(), Some(raw.len()));
        match parse_first(raw).unwrap() {
            FirstPacket::Startup {
                version, params, ..
            } => {
                assert_eq!(version, 196_608);
                assert_eq!(
                    params,
                    vec![
                        ("user".to_string(), "bob".to_string()),
                        ("database".to_string(), "app".to_string())
                    ]
                );
            }
            other => panic!("expected a startup packet, got {other:?}"),
        }
        let cancel = cancel_request(7, &[1, 2, 3, 4]);
        assert_eq!(
            parse_first(cancel).unwrap(),
            FirstPacket::Cancel {
                pid: 7,
                secret: vec![1, 2, 3, 4]
            }
        );
        assert!(packet_len(&[0, 0, 0xff, 0xff]).is_err());
        let mut bad = BytesMut::new();
        bad.put_u32(8);
        bad.put_u32(2 << 16);
        assert!(parse_first(bad).unwrap_err().0.contains("2.0"));
    }

    #[test]
    fn extended_messages_read_their_names() {
        let p = frame(b'P', b"s1\0INSERT INTO t VALUES ($1)\0\0\0");
        assert_eq!(
            parse_message(&p).unwrap(),
            ("s1", "INSERT INTO t VALUES ($1)")
        );
        let b = frame(b'B', b"p1\0s1\0\0\0\0\0\0\0");
        assert_eq!(bind_message(&b).unwrap(), ("p1", "s1"));
        let e = frame(b'E', b"p1\0\0\0\0\0");
        assert_eq!(execute_portal(&e).unwrap(), "p1");
        assert!(execute_portal(&frame(b'E', b"p1")).is_err());
        let c = frame(b'C', b"Ss1\0");
        assert_eq!(target(&c).unwrap(), (b'S', "s1"));
    }

    #[test]
    fn error_responses_are_well_formed() {
        let mut out = BytesMut::new();
        error_response("53100", "disk full", &mut out);
        let mut copy = out.clone();
        let f = split_frame(&mut copy).unwrap().unwrap();
        assert_eq!(f.len(), out.len());
        let text = String::from_utf8_lossy(&f[5..]).to_string();
        assert!(text.contains("C53100\0Mdisk full\0"), "{text:?}");
        assert_eq!(*f.last().unwrap(), 0);
    }

    #[test]
    fn the_raise_statement_quotes_any_message() {
        let s = raise_statement("it's $m$ 'quoted' $walwatch$", "XX000");
        assert!(s.starts_with("DO $walwatchx$ BEGIN"), "{s}");
        assert!(s.contains("$mx$it's $m$ 'quoted' $walwatch$$mx$"), "{s}");
        assert!(s.contains("ERRCODE = 'XX000'"));
    }
}
