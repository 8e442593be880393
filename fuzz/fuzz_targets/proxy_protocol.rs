//! Fuzz target `proxy_protocol`: see `registry_guard::fuzzing::proxy_protocol` for what it
//! must never do.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| registry_guard::fuzzing::proxy_protocol(data));
