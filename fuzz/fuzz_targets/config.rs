//! `Config::from_yaml` must never panic on any text: a bad config file is an error that
//! names the key, never a crash of `registry-guard check` or of a reload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_guard::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_yaml(text);
    }
});
