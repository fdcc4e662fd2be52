//! The connection's frame reader (`ws::reader::FrameReader`) on hostile bytes. The check
//! itself is in `fuzz/checks/frame_reader.rs`, shared with the server's regression test.
#![no_main]

#[path = "../checks/frame_reader.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
