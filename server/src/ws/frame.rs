//! Frames from the client, read by hand (RFC 6455 section 5): each header checked as
//! it arrives, each payload unmasked in place, control frames and close payloads
//! validated. Only what is not yet consumed (an incomplete frame, or frames behind the
//! one in hand) is kept per connection, and that buffer is released whenever it
//! empties: an idle connection holds no read buffer at all.
//!
//! It parses and validates, nothing more: where the bytes come from is the `Source`'s
//! business, and what a frame obliges (a pong, the close echo) and how fragments join
//! into messages is the connection's. It never buffers a frame larger than the
//! configured limit; that is refused from its header.

use crate::protocol::{Close, MAX_CONTROL_PAYLOAD};

/// Where a connection's bytes come from.
pub trait Source {
    /// Waits for bytes and appends what arrived to `pending`: at least one byte, or
    /// `Gone`.
    #[allow(async_fn_in_trait)]
    async fn fill(&mut self, pending: &mut Vec<u8>) -> Result<(), ReadError>;
}

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

    fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One frame, its payload unmasked and borrowed from the reader until the next read.
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: &'a mut [u8],
}

/// Why no frame came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// End of stream or an I/O error: there is nobody left to answer.
    Gone,
    /// The client broke the framing rules; the close RFC 6455 gives for it.
    Refused(Close),
}

/// A frame's header, once all of it has arrived.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// Bytes before the payload.
    len: usize,
    payload_len: usize,
}

/// Parses the header at the start of `buf`: `None` until all of it is there, the close
/// the RFC gives as soon as what has arrived is enough to refuse it.
fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, Close> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    // No extension is negotiated, so every reserved bit must be clear.
    if first & 0x70 != 0 {
        return Err(Close::ProtocolError);
    }
    let fin = first & 0x80 != 0;
    let opcode = Opcode::parse(first & 0x0F).ok_or(Close::ProtocolError)?;
    // RFC 6455 5.1: a server closes on any unmasked client frame.
    if second & 0x80 == 0 {
        return Err(Close::ProtocolError);
    }
    let short_len = usize::from(second & 0x7F);
    if opcode.is_control() && (!fin || short_len > MAX_CONTROL_PAYLOAD) {
        return Err(Close::ProtocolError);
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
                return Err(Close::ProtocolError);
            }
            n
        }
    };
    let payload_len = usize::try_from(payload_len).unwrap_or(usize::MAX);
    if payload_len > max_payload {
        return Err(Close::TooBig);
    }
    let mut mask = [0; 4];
    mask.copy_from_slice(&header[len - 4..]);
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        payload_len,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
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

/// What a whole frame's payload must satisfy on its own. Fragmented text is checked
/// once its message is whole, by the connection.
fn validate(opcode: Opcode, fin: bool, payload: &[u8]) -> Result<(), Close> {
    match opcode {
        Opcode::Text if fin => std::str::from_utf8(payload)
            .map(drop)
            .map_err(|_| Close::InvalidUtf8),
        Opcode::Close => match payload {
            [] => Ok(()),
            [_] => Err(Close::ProtocolError),
            [high, low, reason @ ..] => {
                std::str::from_utf8(reason).map_err(|_| Close::InvalidUtf8)?;
                if close_code_allowed(u16::from_be_bytes([*high, *low])) {
                    Ok(())
                } else {
                    Err(Close::ProtocolError)
                }
            }
        },
        _ => Ok(()),
    }
}

/// RFC 6455 7.4 and the IANA registry: the codes a peer may put in a close frame.
/// 1004-1006 and 1015 are reserved for reporting, never sent.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The client's frames, read from `io`.
pub struct FrameReader<R> {
    io: R,
    /// Bytes read and not yet consumed. Empty, with nothing allocated, at rest.
    pending: Vec<u8>,
    /// How much of `pending` the frame in hand (and those before it) took.
    consumed: usize,
    max_payload: usize,
}

impl<R: Source> FrameReader<R> {
    /// Frames with more than `max_payload` bytes of payload are refused (1009).
    pub fn new(io: R, max_payload: usize) -> Self {
        Self {
            io,
            pending: Vec::new(),
            consumed: 0,
            max_payload,
        }
    }

    /// The next frame. The one handed out before is consumed by this call.
    pub async fn next(&mut self) -> Result<Frame<'_>, ReadError> {
        self.pending.drain(..self.consumed);
        self.consumed = 0;
        if self.pending.is_empty() {
            // At rest: give the bytes back rather than keep a buffer per idle connection.
            self.pending = Vec::new();
        }
        loop {
            let header =
                parse_header(&self.pending, self.max_payload).map_err(ReadError::Refused)?;
            if let Some(header) = header {
                let end = header.len + header.payload_len;
                if self.pending.len() >= end {
                    self.consumed = end;
                    let payload = &mut self.pending[header.len..end];
                    unmask(payload, header.mask);
                    validate(header.opcode, header.fin, payload).map_err(ReadError::Refused)?;
                    return Ok(Frame {
                        fin: header.fin,
                        opcode: header.opcode,
                        payload,
                    });
                }
                // Room for the rest of the frame at once, not by doubling.
                self.pending.reserve_exact(end - self.pending.len());
            }
            self.io.fill(&mut self.pending).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: header, mask, masked payload.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
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

    /// A peer whose bytes arrive at most `step` at a time.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Source for Trickle<'_> {
        async fn fill(&mut self, pending: &mut Vec<u8>) -> Result<(), ReadError> {
            if self.bytes.is_empty() {
                return Err(ReadError::Gone);
            }
            let n = self.step.min(self.bytes.len());
            pending.extend_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(())
        }
    }

    /// A frame as read: fin, opcode, payload.
    type Read = Result<(bool, Opcode, Vec<u8>), ReadError>;

    fn read_all(bytes: &[u8], max: usize) -> Vec<Read> {
        let mut out = Vec::new();
        let mut reader = FrameReader::new(Trickle { bytes, step: 7 }, max);
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            loop {
                match reader.next().await {
                    Ok(f) => out.push(Ok((f.fin, f.opcode, f.payload.to_vec()))),
                    Err(e) => {
                        out.push(Err(e));
                        break;
                    }
                }
            }
        });
        out
    }

    #[test]
    fn frames_split_anywhere_arrive_whole_and_unmasked() {
        let text: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut wire = frame(0x81, &text);
        wire.extend(frame(0x89, b"ping"));
        wire.extend(frame(0x01, b"{\"a\""));
        wire.extend(frame(0x80, b":1}"));
        wire.extend(frame(0x82, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
        let got = read_all(&wire, 1 << 20);
        assert_eq!(
            got,
            vec![
                Ok((true, Opcode::Text, text)),
                Ok((true, Opcode::Ping, b"ping".to_vec())),
                Ok((false, Opcode::Text, b"{\"a\"".to_vec())),
                Ok((true, Opcode::Continuation, b":1}".to_vec())),
                Ok((true, Opcode::Binary, (0..11).collect())),
                Err(ReadError::Gone),
            ]
        );
    }

    #[test]
    fn a_frame_with_a_64_bit_length_arriving_in_pieces_is_assembled() {
        let big = vec![b'x'; 2 * 64 * 1024 + 17];
        let got = read_all(&frame(0x81, &big), 1 << 20);
        assert_eq!(got[0], Ok((true, Opcode::Text, big)));
    }

    #[test]
    fn broken_frames_get_the_rfc_close() {
        let refused = |wire: Vec<u8>| read_all(&wire, 1000).remove(0);
        let cases: Vec<(&str, Vec<u8>, Close)> = vec![
            ("reserved bit", frame(0xC1, b"{}"), Close::ProtocolError),
            ("reserved opcode", frame(0x83, b"{}"), Close::ProtocolError),
            ("fragmented ping", frame(0x09, b""), Close::ProtocolError),
            ("long pong", frame(0x8A, &[0; 126]), Close::ProtocolError),
            (
                "unmasked",
                vec![0x81, 0x02, b'{', b'}'],
                Close::ProtocolError,
            ),
            ("too big", frame(0x82, &[0; 1001]), Close::TooBig),
            ("bad text", frame(0x81, &[0xC3, 0x28]), Close::InvalidUtf8),
            ("one-byte close", frame(0x88, &[3]), Close::ProtocolError),
            (
                "close 1005",
                frame(0x88, &1005u16.to_be_bytes()),
                Close::ProtocolError,
            ),
            (
                "close reason",
                frame(0x88, &[3, 232, 0xFF]),
                Close::InvalidUtf8,
            ),
        ];
        for (what, wire, close) in cases {
            assert_eq!(refused(wire), Err(ReadError::Refused(close)), "{what}");
        }
        // A 64-bit length with its top bit set, refused from the header alone.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(parse_header(&huge, usize::MAX), Err(Close::ProtocolError));
    }

    #[test]
    fn closes_the_server_sends_are_accepted_back() {
        for close in Close::ALL {
            assert!(close_code_allowed(close.code()), "{close:?}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!close_code_allowed(code), "{code}");
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
    fn nothing_is_held_once_every_frame_is_consumed() {
        let wire = frame(0x81, b"{}");
        let mut reader = FrameReader::new(
            Trickle {
                bytes: &wire,
                step: wire.len(),
            },
            100,
        );
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            reader.next().await.expect("frame");
            assert_eq!(reader.next().await.err(), Some(ReadError::Gone));
        });
        assert_eq!(reader.pending.capacity(), 0);
    }
}
