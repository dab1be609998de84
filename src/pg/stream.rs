//! The CopyBoth phase of START_REPLICATION: XLogData / keepalive frames in, standby status
//! updates out ("Streaming Replication Protocol", START_REPLICATION).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::conn::{Backend, ReplConn, unexpected};
use super::error::PgError;
use crate::event::{Lsn, Timestamp};

/// One message from the walsender, inside CopyData.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplMessage {
    /// XLogData ('w'): for a logical slot, one output-plugin message (pgoutput) in `data`.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        /// Server clock at transmission, microseconds since 2000-01-01 UTC.
        server_time_us: i64,
        /// A zero-copy slice of the read buffer.
        data: Bytes,
    },
    /// Primary keepalive message ('k').
    Keepalive {
        wal_end: Lsn,
        server_time_us: i64,
        /// The server asks for a standby status update right away, or it will time out the
        /// connection (wal_sender_timeout).
        reply_requested: bool,
    },
}

/// Byte1('w') Int64 start Int64 end Int64 time.
const XLOGDATA_HEADER: usize = 1 + 8 + 8 + 8;
/// Byte1('k') Int64 end Int64 time Byte1 reply.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Parses the payload of one CopyData from the walsender. Malformed payloads are
/// `PgError::Protocol`, never a panic.
pub fn parse_copy_data(payload: Bytes) -> Result<ReplMessage, PgError> {
    match payload.first() {
        // XLogData (B): Byte1('w'), Int64 start of the WAL data, Int64 current end of WAL on the
        // server, Int64 server clock (µs since 2000-01-01), Byten the WAL data.
        Some(b'w') => {
            if payload.len() < XLOGDATA_HEADER {
                return Err(PgError::protocol(format!(
                    "truncated XLogData: {} bytes, the header alone is {XLOGDATA_HEADER}",
                    payload.len()
                )));
            }
            Ok(ReplMessage::XLogData {
                wal_start: Lsn(be_u64(&payload[1..])),
                wal_end: Lsn(be_u64(&payload[9..])),
                server_time_us: be_u64(&payload[17..]) as i64,
                data: payload.slice(XLOGDATA_HEADER..),
            })
        }
        // Primary keepalive message (B): Byte1('k'), Int64 current end of WAL on the server,
        // Int64 server clock, Byte1 1 if the client should reply immediately.
        Some(b'k') => {
            if payload.len() != KEEPALIVE_LEN {
                return Err(PgError::protocol(format!(
                    "primary keepalive of {} bytes, expected {KEEPALIVE_LEN}",
                    payload.len()
                )));
            }
            Ok(ReplMessage::Keepalive {
                wal_end: Lsn(be_u64(&payload[1..])),
                server_time_us: be_u64(&payload[9..]) as i64,
                reply_requested: payload[17] != 0,
            })
        }
        Some(t) => Err(PgError::protocol(format!(
            "unknown replication message type '{}' in CopyData",
            t.escape_ascii()
        ))),
        None => Err(PgError::protocol(
            "empty CopyData in the replication stream",
        )),
    }
}

/// The CopyData payload [`parse_copy_data`] reads `msg` from, byte for byte: raw recordings
/// (`walwatch record --raw`) keep what the server sent in this form.
pub fn encode_copy_data(msg: &ReplMessage) -> Vec<u8> {
    match msg {
        ReplMessage::XLogData {
            wal_start,
            wal_end,
            server_time_us,
            data,
        } => {
            let mut b = Vec::with_capacity(XLOGDATA_HEADER + data.len());
            b.push(b'w');
            b.extend_from_slice(&wal_start.0.to_be_bytes());
            b.extend_from_slice(&wal_end.0.to_be_bytes());
            b.extend_from_slice(&server_time_us.to_be_bytes());
            b.extend_from_slice(data);
            b
        }
        ReplMessage::Keepalive {
            wal_end,
            server_time_us,
            reply_requested,
        } => {
            let mut b = Vec::with_capacity(KEEPALIVE_LEN);
            b.push(b'k');
            b.extend_from_slice(&wal_end.0.to_be_bytes());
            b.extend_from_slice(&server_time_us.to_be_bytes());
            b.push(u8::from(*reply_requested));
            b
        }
    }
}

/// Standby status update (F): Byte1('r'), Int64 last WAL byte + 1 received and written, Int64
/// ... flushed to disk, Int64 ... applied, Int64 client clock (µs since 2000-01-01), Byte1 1 to
/// ask the server to reply immediately.
pub fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now_us: i64,
    reply_requested: bool,
) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(write.0);
    b.put_u64(flush.0);
    b.put_u64(apply.0);
    b.put_i64(now_us);
    b.put_u8(u8::from(reply_requested));
    b.freeze()
}

/// The client clock in the protocol's unit: microseconds since 2000-01-01 00:00:00 UTC.
pub fn pg_now_us() -> i64 {
    let unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Timestamp::from_unix_micros(unix_us).0
}

/// A replication connection in CopyBoth mode.
#[derive(Debug)]
pub struct ReplStream {
    conn: ReplConn,
    /// The server ended its side of the copy (CopyDone / CommandComplete seen).
    server_done: bool,
}

impl ReplStream {
    pub(crate) fn new(conn: ReplConn) -> ReplStream {
        ReplStream {
            conn,
            server_done: false,
        }
    }

    /// The next replication message; `None` once the server ends the copy (CopyDone /
    /// CommandComplete); an ErrorResponse is an `Err`.
    ///
    /// CANCEL-SAFE (it is polled inside tokio::select! with a timer): a dropped future loses no
    /// bytes. All partial input lives in the `Framed` read buffer, and a message is only taken
    /// out of it by the `poll_next` that returns it, so nothing is held across an await here.
    pub async fn next(&mut self) -> Result<Option<ReplMessage>, PgError> {
        if self.server_done {
            return Ok(None);
        }
        loop {
            match self.conn.recv().await? {
                Backend::CopyData(payload) => return parse_copy_data(payload).map(Some),
                Backend::Other(Message::CopyDone) | Backend::Other(Message::CommandComplete(_)) => {
                    self.server_done = true;
                    return Ok(None);
                }
                Backend::Error(body) => return Err(self.conn.server_error(&body)),
                Backend::Notice(body) => self.conn.notice(&body),
                Backend::Other(Message::ParameterStatus(_)) => {}
                other => return Err(unexpected(&other, "replication streaming")),
            }
        }
    }

    /// Sends a standby status update ('r') stamped with the client clock. `flush` is what the
    /// slot may be advanced to: only report data that is durable downstream. Send one when a
    /// keepalive asks for a reply and at least every `wal_sender_timeout / 2`.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        let msg = standby_status_update(write, flush, apply, pg_now_us(), reply_requested);
        let mut buf = BytesMut::with_capacity(msg.len() + 5);
        frontend::CopyData::new(msg)?.write(&mut buf);
        self.conn.send(buf).await
    }

    /// Ends the copy: sends CopyDone, drains what the server still sends (CopyData, CopyDone,
    /// CommandComplete, a result set) until ReadyForQuery, and returns the connection, usable
    /// for further commands.
    pub async fn finish(mut self) -> Result<ReplConn, PgError> {
        let mut buf = BytesMut::new();
        frontend::copy_done(&mut buf);
        self.conn.send(buf).await?;
        let mut error = None;
        loop {
            match self.conn.recv().await? {
                Backend::CopyData(_)
                | Backend::Other(Message::CopyDone)
                | Backend::Other(Message::CommandComplete(_))
                | Backend::Other(Message::RowDescription(_))
                | Backend::Other(Message::DataRow(_))
                | Backend::Other(Message::ParameterStatus(_)) => {}
                Backend::Notice(body) => self.conn.notice(&body),
                Backend::Error(body) => {
                    let e = self.conn.server_error(&body);
                    error.get_or_insert(e);
                }
                Backend::Other(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(self.conn),
                    };
                }
                other => return Err(unexpected(&other, "the end of replication")),
            }
        }
    }

    /// The underlying connection (server parameters, error context).
    pub fn conn(&self) -> &ReplConn {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn keepalive(end: u64, time: i64, reply: u8) -> Vec<u8> {
        let mut v = vec![b'k'];
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.push(reply);
        v
    }

    #[test]
    fn encoding_gives_back_the_payload_parsed() {
        for payload in [
            xlogdata(0x1_0000_0010, 0x1_0000_0020, -5, b"Cdata\x00\xff"),
            xlogdata(1, 2, 3, b""),
            keepalive(0xdead_beef, 42, 1),
            keepalive(7, 0, 0),
        ] {
            let msg = parse_copy_data(Bytes::from(payload.clone())).unwrap();
            assert_eq!(encode_copy_data(&msg), payload, "{msg:?}");
        }
    }

    #[test]
    fn parses_xlogdata_zero_copy() {
        let buf = Bytes::from(xlogdata(0x1_0000_0010, 0x1_0000_0020, 123_456, b"Bdata"));
        let m = parse_copy_data(buf.clone()).unwrap();
        let ReplMessage::XLogData {
            wal_start,
            wal_end,
            server_time_us,
            data,
        } = m
        else {
            panic!("not XLogData: {m:?}");
        };
        assert_eq!(wal_start, Lsn(0x1_0000_0010));
        assert_eq!(wal_end.to_string(), "1/20");
        assert_eq!(server_time_us, 123_456);
        assert_eq!(&data[..], b"Bdata");
        // The payload points into the original buffer: a slice, not a copy.
        assert_eq!(data.as_ptr(), buf[XLOGDATA_HEADER..].as_ptr());
        // Empty data is allowed.
        assert!(parse_copy_data(Bytes::from(xlogdata(1, 2, 3, b""))).is_ok());
    }

    #[test]
    fn parses_keepalive() {
        let m = parse_copy_data(Bytes::from(keepalive(0x42, -5, 1))).unwrap();
        assert_eq!(
            m,
            ReplMessage::Keepalive {
                wal_end: Lsn(0x42),
                server_time_us: -5,
                reply_requested: true
            }
        );
        let m = parse_copy_data(Bytes::from(keepalive(0x42, 7, 0))).unwrap();
        assert!(matches!(
            m,
            ReplMessage::Keepalive {
                reply_requested: false,
                ..
            }
        ));
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        let w = xlogdata(1, 2, 3, b"");
        for cut in 0..w.len() {
            let r = parse_copy_data(Bytes::copy_from_slice(&w[..cut]));
            assert!(matches!(r, Err(PgError::Protocol(_))), "cut {cut}: {r:?}");
        }
        let k = keepalive(1, 2, 1);
        for cut in 0..k.len() {
            let r = parse_copy_data(Bytes::copy_from_slice(&k[..cut]));
            assert!(matches!(r, Err(PgError::Protocol(_))), "cut {cut}: {r:?}");
        }
        let mut long = k.clone();
        long.push(0);
        assert!(matches!(
            parse_copy_data(Bytes::from(long)),
            Err(PgError::Protocol(_))
        ));
        let r = parse_copy_data(Bytes::from_static(b"zzz"));
        assert!(matches!(r, Err(PgError::Protocol(m)) if m.contains("'z'")));
    }

    #[test]
    fn status_update_layout() {
        let b = standby_status_update(Lsn(1), Lsn(2), Lsn(3), 0x0102, true);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(be_u64(&b[1..]), 1);
        assert_eq!(be_u64(&b[9..]), 2);
        assert_eq!(be_u64(&b[17..]), 3);
        assert_eq!(be_u64(&b[25..]), 0x0102);
        assert_eq!(b[33], 1);
        // The clock is in the PostgreSQL epoch: after 2026 is > 26 years of µs.
        assert!(pg_now_us() > 26 * 365 * 86_400 * 1_000_000);
    }
}
