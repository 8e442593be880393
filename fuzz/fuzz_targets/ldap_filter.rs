//! Fuzz target `ldap_filter`: see `registry_guard::fuzzing::ldap_filter` for what it must never do.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| registry_guard::fuzzing::ldap_filter(data));
