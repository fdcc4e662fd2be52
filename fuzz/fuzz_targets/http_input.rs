//! What the server parses of an HTTP request itself (`http::request`). The check
//! itself is in `fuzz/checks/http_input.rs`, shared with the server's regression test.
#![no_main]

#[path = "../checks/http_input.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
