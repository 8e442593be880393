//! Replays every file of `fuzz/corpus/<target>/` through the target's entry point in
//! `registry_guard::fuzzing` (the same function libFuzzer calls), without a sanitizer
//! build: seconds in plain `cargo test`, and every fixed crash stays fixed.

use std::path::Path;

type Entry = fn(&[u8]);

/// Every fuzz target: a target missing here (or a corpus folder without a target) fails.
const TARGETS: &[(&str, Entry)] = &[
    ("route", registry_guard::fuzzing::route),
    ("location", registry_guard::fuzzing::location),
    ("config", registry_guard::fuzzing::config),
    ("upload_start", registry_guard::fuzzing::upload_start),
    ("basic", registry_guard::fuzzing::basic),
    ("token", registry_guard::fuzzing::token),
    ("users", registry_guard::fuzzing::users),
    ("audit_verify", registry_guard::fuzzing::audit_verify),
    ("challenge", registry_guard::fuzzing::challenge),
    ("proxy_protocol", registry_guard::fuzzing::proxy_protocol),
    ("ldap_filter", registry_guard::fuzzing::ldap_filter),
];

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz"))
}

#[test]
fn every_target_has_an_entry_point_and_a_corpus() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(t, _)| (*t).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets and TARGETS differ");
    for t in &listed {
        let seeds = std::fs::read_dir(fuzz_dir().join("corpus").join(t))
            .unwrap_or_else(|e| panic!("fuzz/corpus/{t}: {e}"))
            .count();
        assert!(seeds > 0, "fuzz/corpus/{t} is empty");
    }
}

#[test]
fn every_corpus_file_replays_without_a_failure() {
    let mut replayed = 0;
    for (target, entry) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let outcome = std::panic::catch_unwind(|| entry(&data));
            assert!(outcome.is_ok(), "{} fails its target {target}", f.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len(), "replayed {replayed} files");
}
