//! The client event parser (`protocol::parse`) on hostile text. The check
//! itself is in `fuzz/checks/client_event.rs`, shared with the server's regression test.
#![no_main]

#[path = "../checks/client_event.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check(data));
