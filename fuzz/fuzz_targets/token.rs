//! Fuzz target `token`: see `registry_guard::fuzzing::token` for what it must never do.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| registry_guard::fuzzing::token(data));
