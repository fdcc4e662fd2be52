//! The client event parser (`protocol::parse`, simd-json in place) on hostile text:
//! it never panics, whatever it accepts keeps the event rules, and it reads JSON as a
//! second parser (serde_json) does, so a client cannot smuggle content past one of
//! them.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the server's
//! regression test (`server/tests/fuzz_regressions.rs`), which runs every saved
//! input under `server/tests/fuzz-regressions/client_event/` through it.

use chat_server::protocol::{
    parse, ClientEvent, ProtocolError, CONTENT_MAX_CHARS, EMOJI_MAX_CHARS, REF_MAX_CHARS,
};
use serde_json::Value;

/// The check, on one input: panics on a violation.
pub fn check(data: &[u8]) {
    // The parser works in place on the frame's buffer.
    let parsed = parse(&mut data.to_vec());
    if let Some(reference) = &parsed.reference {
        assert!(reference.chars().count() <= REF_MAX_CHARS);
    }
    match &parsed.event {
        Ok(ClientEvent::Message { content, client_id }) => {
            let text = content.as_str();
            assert!(!text.trim().is_empty() && !text.contains('\0'));
            assert!(text.chars().count() <= CONTENT_MAX_CHARS);
            if let Some(id) = client_id {
                assert!((1..=64).contains(&id.as_str().chars().count()));
            }
        }
        Ok(ClientEvent::Edit { content, .. }) => {
            assert!(!content.as_str().trim().is_empty());
        }
        Ok(ClientEvent::Reaction { emoji, .. }) => {
            assert!((1..=EMOJI_MAX_CHARS).contains(&emoji.chars().count()));
        }
        Err(ProtocolError::UnknownType(kind)) => assert!(kind.chars().count() <= 64),
        _ => {}
    }
    // Text frames reach the parser only as UTF-8; on those, it must read what
    // serde_json reads.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let event = match &parsed.event {
        Err(ProtocolError::InvalidJson) => panic!("valid JSON refused: {value}"),
        Err(_) => return,
        Ok(event) => event,
    };
    let field = |name: &str| value.get(name).and_then(Value::as_str);
    match event {
        ClientEvent::Message { content, client_id } => {
            assert_eq!(field("type"), Some("message"));
            assert_eq!(field("content"), Some(content.as_str()));
            assert_eq!(field("client_id"), client_id.as_ref().map(|c| c.as_str()));
        }
        ClientEvent::Edit {
            message_id,
            content,
        } => {
            assert_eq!(field("type"), Some("edit"));
            assert_eq!(field("content"), Some(content.as_str()));
            assert_eq!(field("message_id").map(str::parse), Some(Ok(*message_id)));
        }
        ClientEvent::Reaction { emoji, .. } => {
            assert_eq!(field("emoji"), Some(emoji.as_str()));
        }
        ClientEvent::Auth { token } => assert_eq!(field("token"), Some(token.as_str())),
        _ => {}
    }
    if let Some(reference) = field("ref") {
        let expected: String = reference.chars().take(REF_MAX_CHARS).collect();
        assert_eq!(parsed.reference.as_deref(), Some(expected.as_str()));
    }
}
