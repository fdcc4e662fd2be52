//! The per-frame hot path of a chat message: parsing the client's frame and encoding
//! the server event once. Compared in the same run: simd-json in place (what the
//! server does) against serde_json on the same bytes, so the choice stays justified.
//!
//! Run: `cargo bench -p benches --bench protocol`.

use chat_server::ids::{ConversationId, MessageId, Seq, UserId};
use chat_server::protocol::{self, ServerEvent};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const FRAME: &str = r#"{"type":"message","content":"Hello everyone! This is a fairly ordinary chat message of about a hundred bytes.","ref":"c-42"}"#;

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse client message");
    group.throughput(Throughput::Elements(1));
    let mut buf = FRAME.as_bytes().to_vec();
    group.bench_function("simd-json in place (server)", |b| {
        b.iter(|| {
            // simd-json uses the buffer as scratch space: restore it each time, as each
            // frame arrives in a fresh buffer.
            buf.copy_from_slice(FRAME.as_bytes());
            protocol::parse(std::hint::black_box(&mut buf))
        })
    });
    group.bench_function("serde_json to Value (baseline)", |b| {
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(std::hint::black_box(FRAME.as_bytes())).expect("json");
            let content = v["content"].as_str().map(str::to_owned);
            (v["type"].as_str().map(str::len), content)
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let (m, conv, user) = (
        MessageId(uuid::Uuid::now_v7()),
        ConversationId::random(),
        UserId::random(),
    );
    let event = ServerEvent::Message {
        message_id: m,
        conversation_id: conv,
        content: "Hello everyone! This is a fairly ordinary chat message of about a hundred bytes.",
        sender_id: user,
        sender_username: "alice",
        timestamp: "2026-02-04T10:30:00.123456Z",
        is_edited: false,
        seq: Seq(42),
        is_deleted: false,
        client_id: Some("c-1f3a"),
    };
    let mut group = c.benchmark_group("encode message event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("serialise + frame once", |b| {
        b.iter(|| std::hint::black_box(&event).frame())
    });
    // What fan-out costs per recipient once the frame exists: a reference count.
    let frame = event.frame();
    group.bench_function("share the frame with one more recipient", |b| {
        b.iter(|| std::hint::black_box(&frame).clone())
    });
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
