//! Frames from the client, read by hand: each header checked by the codec
//! (`protocol::frame`) as it arrives, each payload unmasked in place and validated
//! once whole. Only what is not yet consumed (an incomplete frame, or frames behind the
//! one in hand) is kept per connection, and that buffer is released whenever it
//! empties: an idle connection holds no read buffer at all.
//!
//! It reads and hands out frames, nothing more: where the bytes come from is the
//! `Source`'s business, and what a frame obliges (a pong, the close echo) and how fragments join
//! into messages is the connection's. It never buffers a frame larger than the
//! configured limit; that is refused from its header.

use crate::protocol::frame::{unmask, validate, Header, Opcode, Violation};
use crate::protocol::Close;

/// Where a connection's bytes come from.
pub trait Source {
    /// Waits for bytes and appends what arrived to `pending`: at least one byte, or
    /// `Gone`.
    #[allow(async_fn_in_trait)]
    async fn fill(&mut self, pending: &mut Vec<u8>) -> Result<(), ReadError>;
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
            let header = Header::parse(&self.pending, self.max_payload).map_err(refused)?;
            if let Some(header) = header {
                let end = header.len + header.payload_len;
                if self.pending.len() >= end {
                    self.consumed = end;
                    let payload = &mut self.pending[header.len..end];
                    unmask(payload, header.mask);
                    validate(header.opcode, header.fin, payload).map_err(refused)?;
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

/// The close RFC 6455 gives for a violation.
fn refused(violation: Violation) -> ReadError {
    ReadError::Refused(Close::from(violation))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::frame::testing::client_frame as frame;

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
