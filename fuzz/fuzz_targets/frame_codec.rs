//! The WebSocket frame codec (`protocol::frame`) on hostile bytes. The check
//! itself is in `fuzz/checks/frame_codec.rs`, shared with the server's regression test.
#![no_main]

#[path = "../checks/frame_codec.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
