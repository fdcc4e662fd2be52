//! The WebSocket frame codec (RFC 6455 section 5), both ways: a client frame's header
//! parsed and checked as soon as enough of it has arrived, its payload unmasked in
//! place and validated; the server's frames encoded (text, ping, pong, close).
//!
//! Pure functions over byte slices: no I/O, no buffering, no state. Where the bytes
//! come from and what a frame obliges is `ws`'s business; which close a violation
//! earns is the close table's (`close`).

use bytes::{BufMut, Bytes, BytesMut};

/// RFC 6455 5.5: control frames carry at most 125 bytes of payload.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// An RFC 6455 ping with no payload, as the server sends it for its heartbeat.
pub const PING_FRAME: Bytes = Bytes::from_static(&[0x89, 0x00]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn parse(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    const fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// How a client frame broke the rules; the close table says which close each earns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Framing: reserved bits or opcodes, an unmasked frame, a fragmented or long
    /// control frame, a bad length or close code.
    Protocol,
    /// A text payload or close reason that is not UTF-8.
    Utf8,
    /// A payload over the configured limit.
    TooBig,
}

/// A client frame's header, once all of it has arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    /// Bytes before the payload.
    pub len: usize,
    pub payload_len: usize,
}

impl Header {
    /// Parses the header at the start of `buf`: `None` until all of it is there, the
    /// violation as soon as what has arrived shows one. A payload over `max_payload`
    /// is refused from the header, before any of it is buffered.
    pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<Self>, Violation> {
        let [first, second, ..] = *buf else {
            return Ok(None);
        };
        // No extension is negotiated, so every reserved bit must be clear.
        if first & 0x70 != 0 {
            return Err(Violation::Protocol);
        }
        let fin = first & 0x80 != 0;
        let opcode = Opcode::parse(first & 0x0F).ok_or(Violation::Protocol)?;
        // RFC 6455 5.1: a server closes on any unmasked client frame.
        if second & 0x80 == 0 {
            return Err(Violation::Protocol);
        }
        let short_len = usize::from(second & 0x7F);
        if opcode.is_control() && (!fin || short_len > MAX_CONTROL_PAYLOAD) {
            return Err(Violation::Protocol);
        }
        let extended = match short_len {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let len = 2 + extended + 4;
        let Some(header) = buf.get(..len) else {
            return Ok(None);
        };
        let payload_len = match extended {
            0 => short_len as u64,
            2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            _ => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(&header[2..10]);
                let n = u64::from_be_bytes(bytes);
                // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
                if n >> 63 != 0 {
                    return Err(Violation::Protocol);
                }
                n
            }
        };
        let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX);
        if payload_len > max_payload {
            return Err(Violation::TooBig);
        }
        let mut mask = [0; 4];
        mask.copy_from_slice(&header[len - 4..]);
        Ok(Some(Self {
            fin,
            opcode,
            mask,
            len,
            payload_len,
        }))
    }
}

/// Unmasks a client payload in place, eight bytes at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Whole chunks are a multiple of 4 bytes, so the remainder starts at mask[0].
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// What a whole frame's unmasked payload must satisfy on its own. Fragmented text is
/// checked once its message is whole, by the connection.
pub fn validate(opcode: Opcode, fin: bool, payload: &[u8]) -> Result<(), Violation> {
    match opcode {
        Opcode::Text if fin => std::str::from_utf8(payload)
            .map(drop)
            .map_err(|_| Violation::Utf8),
        Opcode::Close => match payload {
            [] => Ok(()),
            [_] => Err(Violation::Protocol),
            [high, low, reason @ ..] => {
                std::str::from_utf8(reason).map_err(|_| Violation::Utf8)?;
                if close_code_allowed(u16::from_be_bytes([*high, *low])) {
                    Ok(())
                } else {
                    Err(Violation::Protocol)
                }
            }
        },
        _ => Ok(()),
    }
}

/// RFC 6455 7.4 and the IANA registry: the codes a peer may put in a close frame.
/// 1004-1006 and 1015 are reserved for reporting, never sent.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// One unmasked, final text frame around what `write` puts in it, encoded once. The
/// payload is written straight into the frame's buffer behind room for the header;
/// `None` when `write` fails, so half a frame is never sent.
pub fn text<E>(
    write: impl FnOnce(&mut bytes::buf::Writer<BytesMut>) -> Result<(), E>,
) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(256).writer();
    // Reserve the largest header a frame under 64 KiB needs; fixed up below.
    out.get_mut().put_slice(&[0; 4]);
    write(&mut out).ok()?;
    let mut buf = out.into_inner();
    let len = buf.len() - 4;
    let first = 0x80 | Opcode::Text.bits();
    Some(if len < 126 {
        buf[2] = first;
        buf[3] = len as u8;
        buf.split_off(2).freeze()
    } else if len <= usize::from(u16::MAX) {
        buf[0] = first;
        buf[1] = 126;
        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        buf.freeze()
    } else {
        let mut framed = BytesMut::with_capacity(len + 10);
        framed.put_u8(first);
        framed.put_u8(127);
        framed.put_u64(len as u64);
        framed.extend_from_slice(&buf[4..]);
        framed.freeze()
    })
}

/// An unmasked, final control frame; the payload is cut to what RFC 6455 allows (the
/// reader refuses longer ones from clients before they get here).
pub fn control(opcode: Opcode, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut frame = BytesMut::with_capacity(2 + payload.len());
    frame.put_u8(0x80 | opcode.bits());
    frame.put_u8(payload.len() as u8);
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// A close frame with a status code and reason (cut to fit a control frame, at a
/// character boundary: a reason cut inside a character is not UTF-8, and the client
/// would have to fail the connection over it).
pub fn close(code: u16, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.floor_char_boundary(MAX_CONTROL_PAYLOAD - 2)];
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason);
    control(Opcode::Close, &payload[..2 + reason.len()])
}

/// The pong a client's ping obliges: the ping's payload, returned.
pub fn pong(ping: &[u8]) -> Bytes {
    control(Opcode::Pong, ping)
}

/// Client frames built by hand, for the tests of whatever reads them.
#[cfg(test)]
pub(crate) mod testing {
    pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: first byte, then length, mask and masked payload.
    pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{client_frame, MASK};
    use super::*;

    /// The violation a whole client frame earns, header and payload.
    fn check(wire: &[u8], max: usize) -> Result<(), Violation> {
        let header = Header::parse(wire, max)?.expect("whole header");
        let mut payload = wire[header.len..].to_vec();
        assert_eq!(payload.len(), header.payload_len);
        unmask(&mut payload, header.mask);
        validate(header.opcode, header.fin, &payload)
    }

    #[test]
    fn headers_are_parsed_at_every_length_once_whole() {
        for n in [0, 125, 126, 65_535, 65_536] {
            let wire = client_frame(0x82, &vec![7; n]);
            for cut in 0..wire.len().min(14) {
                let partial = Header::parse(&wire[..cut], usize::MAX);
                let whole_at = match n {
                    0..=125 => 6,
                    126..=65_535 => 8,
                    _ => 14,
                };
                if cut < whole_at {
                    assert_eq!(partial, Ok(None), "{n} bytes cut at {cut}");
                }
            }
            let header = Header::parse(&wire, usize::MAX)
                .expect("valid")
                .expect("whole");
            assert_eq!((header.fin, header.opcode), (true, Opcode::Binary));
            assert_eq!((header.len + header.payload_len), wire.len());
            assert_eq!(header.mask, MASK);
        }
    }

    #[test]
    fn broken_frames_are_named() {
        let cases: Vec<(&str, Vec<u8>, Violation)> = vec![
            (
                "reserved bit",
                client_frame(0xC1, b"{}"),
                Violation::Protocol,
            ),
            (
                "reserved opcode",
                client_frame(0x83, b"{}"),
                Violation::Protocol,
            ),
            (
                "fragmented ping",
                client_frame(0x09, b""),
                Violation::Protocol,
            ),
            (
                "long pong",
                client_frame(0x8A, &[0; 126]),
                Violation::Protocol,
            ),
            (
                "unmasked",
                vec![0x81, 0x02, b'{', b'}'],
                Violation::Protocol,
            ),
            ("too big", client_frame(0x82, &[0; 1001]), Violation::TooBig),
            (
                "bad text",
                client_frame(0x81, &[0xC3, 0x28]),
                Violation::Utf8,
            ),
            (
                "one-byte close",
                client_frame(0x88, &[3]),
                Violation::Protocol,
            ),
            (
                "close 1005",
                client_frame(0x88, &1005u16.to_be_bytes()),
                Violation::Protocol,
            ),
            (
                "close reason",
                client_frame(0x88, &[3, 232, 0xFF]),
                Violation::Utf8,
            ),
        ];
        for (what, wire, violation) in cases {
            assert_eq!(check(&wire, 1000), Err(violation), "{what}");
        }
        // A 64-bit length with its top bit set, refused from the header alone.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(Header::parse(&huge, usize::MAX), Err(Violation::Protocol));
        assert_eq!(check(&client_frame(0x81, "é".as_bytes()), 1000), Ok(()));
    }

    #[test]
    fn reserved_close_codes_are_refused() {
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!close_code_allowed(code), "{code}");
        }
        for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(close_code_allowed(code), "{code}");
        }
    }

    #[test]
    fn unmasking_matches_the_rfc_definition_at_every_length() {
        for n in 0..40 {
            let original: Vec<u8> = (0..n as u8).collect();
            let mut masked: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            unmask(&mut masked, MASK);
            assert_eq!(masked, original);
        }
    }

    #[test]
    fn text_frames_have_the_shortest_header_for_their_length() {
        for (n, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let payload = vec![b'x'; n];
            let f = text(|w| std::io::Write::write_all(w, &payload)).expect("frame");
            assert_eq!(f.len(), header + n, "{n}");
            assert_eq!(f[0], 0x81);
            assert_eq!(&f[header..], &payload[..]);
        }
        assert_eq!(text(|_| Err(())), None, "a failed write sends nothing");
    }

    #[test]
    fn control_frames() {
        let f = close(1008, "Invalid token");
        assert_eq!(&f[..4], &[0x88, 15, 0x03, 0xF0]);
        assert_eq!(&f[4..], b"Invalid token");
        let long = "x".repeat(300);
        assert_eq!(close(1000, &long).len(), 2 + MAX_CONTROL_PAYLOAD);
        assert_eq!(&pong(b"hi")[..], &[0x8A, 2, b'h', b'i']);
        assert_eq!(&PING_FRAME[..], &[0x89, 0]);
    }

    #[test]
    fn a_long_close_reason_is_cut_between_characters() {
        // 122 bytes of ASCII, then a two-byte character across the 123-byte limit.
        let reason = format!("{}é and more", "x".repeat(122));
        let f = close(1000, &reason);
        assert_eq!(
            &f[4..],
            "x".repeat(122).as_bytes(),
            "the whole character goes"
        );
        assert_eq!(validate(Opcode::Close, true, &f[2..]), Ok(()));
        let wide = "€".repeat(60);
        let f = close(1000, &wide);
        assert_eq!(&f[4..], "€".repeat(41).as_bytes());
    }
}
