//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz), and the replay of every input a
//! fuzzer ever found troublesome (`fuzz/regressions/<target>/`) as an ordinary unit test, so a
//! crash once found stays fixed on the stable toolchain CI uses.
//!
//! Compiled only for tests and with the `fuzzing` feature: it is not part of the library face.
//! Each function takes arbitrary bytes, as a server or a file could send them, and must return
//! without panicking, looping or allocating what a length field claims; errors are fine.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder as _;

use crate::decode::{Decoder, TypeRegistry};
use crate::event::Lsn;
use crate::pg::conn::{Backend, PgCodec};
use crate::pg::stream::parse_copy_data;

/// The pgoutput decoder over a stream of messages. The first byte picks the protocol version
/// (1 to 4) and whether Stream Abort carries parallel-streaming fields; the rest is split into
/// messages by a 2-byte big-endian length before each.
pub fn pgoutput(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let mut dec = Decoder::new(TypeRegistry::new())
        .with_protocol(u32::from(first & 3) + 1)
        .with_parallel_streaming(first & 4 != 0);
    let mut lsn = 0x1_0000_0000u64;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (msg, tail) = rest[2..].split_at(n);
        rest = tail;
        lsn += 0x28;
        // An error ends a real stream; here the decoder must also survive the next message.
        let _ = dec.decode(Lsn(lsn), msg, &mut |e| {
            std::hint::black_box(e);
        });
        let _ = dec.take_unknown_types();
    }
}

/// The replication connection's framing: backend messages cut from a byte stream arriving in
/// pieces (the first byte sets the piece size), each CopyData parsed as XLogData or keepalive,
/// and the XLogData payload parsed as one pgoutput message.
pub fn framing(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first).max(1);
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match PgCodec.decode(&mut buf) {
                Ok(Some(Backend::CopyData(payload))) => {
                    if let Ok(crate::pg::stream::ReplMessage::XLogData { data, .. }) =
                        parse_copy_data(payload)
                    {
                        let _ = crate::decode::parse(&data, false);
                        let _ = crate::decode::parse(&data, true);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = parse_copy_data(Bytes::copy_from_slice(rest));
}

/// The text-value parsers: the first byte picks a type (numeric, timestamps, intervals,
/// arrays of them, json...), the rest is the text the server would send. The Arrow sink's
/// conversions of the decoded values run on the result too.
pub fn values(data: &[u8]) {
    const OIDS: [u32; 24] = [
        16, 17, 20, 21, 23, 25, 114, 700, 701, 1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950,
        3802, 1007, 1231, 1115, 1185, 1187, 1016,
    ];
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let oid = OIDS[usize::from(first) % OIDS.len()];
    let reg = TypeRegistry::new();
    if let Ok(text) = std::str::from_utf8(rest) {
        let v = reg.parse_text(oid, text);
        crate::sink::arrow::fuzz_convert(&v);
        std::hint::black_box(serde_json::to_string(&v).ok());
    }
    std::hint::black_box(reg.parse_binary(oid, rest));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every saved input of a target, from `fuzz/regressions/<target>/`.
    fn replay(target: &str, run: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            run(&bytes);
            n += 1;
        }
        n
    }

    #[test]
    fn saved_fuzz_inputs_still_pass() {
        for (target, run) in [
            ("pgoutput", pgoutput as fn(&[u8])),
            ("framing", framing),
            ("values", values),
        ] {
            assert!(replay(target, run) > 0, "no saved inputs for {target}");
        }
    }

    #[test]
    fn hostile_shapes_are_errors_not_panics() {
        // A Relation claiming 32767 columns with none sent; an Insert with a 2 GB tuple value
        // length; a Begin cut short; a Stream Commit for a transaction never started.
        let mut rel = vec![
            0u8, 0, 1, b'R', 0, 0, 0x40, 0, b'p', 0, b't', 0, b'd', 0x7f, 0xff,
        ];
        rel.extend_from_slice(&[
            0, 23, b'I', 0, 0, 0x40, 0, b'N', 0, 1, b't', 0x7f, 0xff, 0xff,
        ]);
        rel.extend_from_slice(&[0xff, b'x', 0, 3, b'B', 0, 0]);
        rel.extend_from_slice(&[0, 5, b'c', 0, 0, 0, 9]);
        pgoutput(&rel);
        // A CopyData claiming 1 GB, fed a byte at a time.
        let mut f = vec![1u8, b'd', 0x3f, 0xff, 0xff, 0xff];
        f.extend_from_slice(b"w\0\0");
        framing(&f);
        values(&[15, b'1', b'e', b'9', b'9', b'9', b'9', b'9']);
        values(b"\x12{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{");
    }
}
