//! The connection's frame reader (`ws::reader::FrameReader`) on hostile bytes,
//! arriving in pieces of any size: it must hand out the same frames, and refuse at the
//! same one, however the bytes were split, and nothing it hands out breaks a rule it
//! promised to check.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the server's
//! regression test (`server/tests/fuzz_regressions.rs`), which runs every saved
//! input under `server/tests/fuzz-regressions/frame_reader/` through it.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use chat_server::protocol::frame::{Opcode, MAX_CONTROL_PAYLOAD};
use chat_server::ws::reader::{FrameReader, ReadError, Source};

/// A peer whose bytes arrive `step` at a time, then goes away.
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

/// A frame as read: fin, opcode, payload; or why reading stopped.
type Read = Result<(bool, Opcode, Vec<u8>), ReadError>;

/// Every frame `bytes` holds, read `step` bytes at a time, up to the first error.
fn read_all(bytes: &[u8], step: usize, max_payload: usize) -> Vec<Read> {
    let mut reader = FrameReader::new(Trickle { bytes, step }, max_payload);
    let mut out = Vec::new();
    // The source never waits, so each read is ready at its first poll: no runtime.
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let read = {
            let next = pin!(reader.next());
            match next.poll(&mut cx) {
                Poll::Ready(read) => read.map(|f| (f.fin, f.opcode, f.payload.to_vec())),
                Poll::Pending => panic!("a source that never waits left the reader waiting"),
            }
        };
        let stop = read.is_err();
        out.push(read);
        if stop {
            return out;
        }
    }
}

/// The check, on one input: panics on a violation.
pub fn check(data: &[u8]) {
    let [a, b, step, wire @ ..] = data else {
        return;
    };
    let max_payload = usize::from(u16::from_le_bytes([*a, *b]));
    let whole = read_all(wire, wire.len().max(1), max_payload);
    let pieces = read_all(wire, usize::from(*step).max(1), max_payload);
    assert_eq!(whole, pieces, "split every {step} bytes");
    let byte_by_byte = read_all(wire, 1, max_payload);
    assert_eq!(whole, byte_by_byte, "split every byte");
    for read in &whole {
        let Ok((fin, opcode, payload)) = read else {
            continue;
        };
        assert!(payload.len() <= max_payload);
        match opcode {
            Opcode::Close | Opcode::Ping | Opcode::Pong => {
                assert!(*fin && payload.len() <= MAX_CONTROL_PAYLOAD);
            }
            Opcode::Text if *fin => assert!(std::str::from_utf8(payload).is_ok()),
            _ => {}
        }
    }
}
