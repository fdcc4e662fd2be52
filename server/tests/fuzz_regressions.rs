//! Every input the fuzz targets (`fuzz/`) ever broke the server with, run again on each
//! `cargo test` through the same checks: the saved inputs live in
//! `tests/fuzz-regressions/<target>/`, the checks in `fuzz/checks/<target>.rs`, so a
//! regression fails here without a fuzzer, on stable.

use std::path::Path;

#[path = "../../fuzz/checks/client_event.rs"]
mod client_event;
#[path = "../../fuzz/checks/frame_codec.rs"]
mod frame_codec;
#[path = "../../fuzz/checks/frame_reader.rs"]
mod frame_reader;
#[path = "../../fuzz/checks/http_input.rs"]
mod http_input;

/// Runs `check` on every saved input of `target`; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    // A target nothing ever broke has no directory.
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut inputs: Vec<_> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    inputs.sort();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails again", path.display());
    }
    inputs.len()
}

#[test]
fn frame_codec_inputs() {
    replay("frame_codec", frame_codec::check);
}

#[test]
fn frame_reader_inputs() {
    replay("frame_reader", frame_reader::check);
}

#[test]
fn client_event_inputs() {
    replay("client_event", client_event::check);
}

#[test]
fn http_input_inputs() {
    replay("http_input", http_input::check);
}
