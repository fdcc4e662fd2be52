//! The WebSocket frame codec on hostile bytes: `Header::parse` over any buffer and any
//! limit, `unmask`, `validate`, and the encoders, each held to what the RFC and the
//! reader rely on, not just to not panicking.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the server's
//! regression test (`server/tests/fuzz_regressions.rs`), which runs every saved
//! input under `server/tests/fuzz-regressions/frame_codec/` through it.

use chat_server::protocol::frame::{
    close, close_code_allowed, control, pong, unmask, validate, Header, Opcode, Violation,
    MAX_CONTROL_PAYLOAD,
};

/// The check, on one input: panics on a violation.
pub fn check(data: &[u8]) {
    let [a, b, c, d, rest @ ..] = data else {
        return;
    };
    // A limit from 0 up to a few MiB, so both sides of it are reached.
    let max_payload = usize::from(u16::from_le_bytes([*a, *b])) << (c % 7);
    let mask = [*d, c.wrapping_mul(31), a ^ b, d.rotate_left(3)];
    header(rest, max_payload);
    unmasking(rest, mask);
    validation(rest);
    encoders(rest);
}

/// A header is read only once whole, from the first bytes alone, and what it says
/// is within the rules; an earlier answer is "wait" or the same refusal.
fn header(buf: &[u8], max_payload: usize) {
    let parsed = Header::parse(buf, max_payload);
    match &parsed {
        Ok(Some(h)) => {
            assert!(matches!(h.len, 6 | 8 | 14), "header length {}", h.len);
            assert!(h.len <= buf.len());
            assert!(h.payload_len <= max_payload);
            if matches!(h.opcode, Opcode::Close | Opcode::Ping | Opcode::Pong) {
                assert!(h.fin && h.payload_len <= MAX_CONTROL_PAYLOAD);
            }
            assert_eq!(buf[0] & 0x70, 0, "reserved bits accepted");
            assert_ne!(buf[1] & 0x80, 0, "unmasked frame accepted");
            assert_eq!(h.mask, buf[h.len - 4..h.len]);
            // The bytes behind the header change nothing.
            assert!(Header::parse(&buf[..h.len], max_payload) == parsed);
        }
        Ok(None) => assert!(buf.len() < 14, "a whole header was not read"),
        Err(Violation::Utf8) => panic!("a header has no text to be bad UTF-8"),
        Err(_) => {}
    }
    // Fed byte by byte (as a slow client sends it), the header waits, then gives the
    // same answer once enough has arrived: never a different one.
    for end in 0..buf.len().min(14) {
        match Header::parse(&buf[..end], max_payload) {
            Ok(None) => {}
            early => {
                assert_eq!(early, parsed, "prefix of {end} bytes");
                break;
            }
        }
    }
}

/// Unmasking is the RFC's byte-wise XOR, at any length and alignment, and undoes
/// itself.
fn unmasking(buf: &[u8], mask: [u8; 4]) {
    let start = buf.len().min(3);
    let mut fast = buf.to_vec();
    unmask(&mut fast[start..], mask);
    for (i, (got, was)) in fast[start..].iter().zip(&buf[start..]).enumerate() {
        assert_eq!(*got, was ^ mask[i % 4], "byte {i}");
    }
    unmask(&mut fast[start..], mask);
    assert_eq!(fast, buf);
}

/// A whole frame's payload is refused exactly when the RFC says.
fn validation(payload: &[u8]) {
    let utf8 = std::str::from_utf8(payload).is_ok();
    for fin in [true, false] {
        for opcode in [
            Opcode::Continuation,
            Opcode::Binary,
            Opcode::Ping,
            Opcode::Pong,
        ] {
            assert_eq!(validate(opcode, fin, payload), Ok(()));
        }
        let text = validate(Opcode::Text, fin, payload);
        assert_eq!(text.is_ok(), !fin || utf8, "text, fin {fin}");
    }
    let expected = match payload {
        [] => Ok(()),
        [_] => Err(Violation::Protocol),
        [high, low, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                Err(Violation::Utf8)
            } else if close_code_allowed(u16::from_be_bytes([*high, *low])) {
                Ok(())
            } else {
                Err(Violation::Protocol)
            }
        }
    };
    assert_eq!(validate(Opcode::Close, true, payload), expected);
}

/// What the server sends is a final frame that fits a control frame's limit.
fn encoders(payload: &[u8]) {
    for frame in [control(Opcode::Ping, payload), pong(payload)] {
        let len = payload.len().min(MAX_CONTROL_PAYLOAD);
        assert_eq!(frame.len(), 2 + len);
        assert_eq!(usize::from(frame[1]), len);
        assert_eq!(frame[2..], payload[..len]);
    }
    let reason = String::from_utf8_lossy(payload);
    let code = u16::from_be_bytes([
        payload.first().copied().unwrap_or(3),
        payload.get(1).copied().unwrap_or(232),
    ]);
    let frame = close(code, &reason);
    assert_eq!(frame[0], 0x88);
    assert!(frame.len() <= 2 + MAX_CONTROL_PAYLOAD);
    assert_eq!(frame[2..4], code.to_be_bytes());
    // However long the reason, the client can read what is sent: cut, but still text.
    let sent = std::str::from_utf8(&frame[4..]).expect("a close reason is UTF-8");
    assert!(reason.starts_with(sent));
}
