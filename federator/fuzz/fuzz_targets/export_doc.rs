//! Fuzzes the agent's export-document parsers (`federator::agent::sources::export_doc`):
//! the per-service document read from etcd, the static exports file, and the etcd key
//! that names a service. No input may panic. Whatever parses is a valid export of the
//! key's service that the writers (`export_document_json`, `export_file_json`) turn back
//! into the same export; whatever is refused is refused with the member it is about
//! (`endpoints[0].address: …`, `body: …`), and a file's problems are located at `""` (the
//! file) or `exports[i]` (an entry).
//!
//! The input is tried as a document, as a static file, as one entry of a static file
//! (`{"exports":[<input>]}`) and as an etcd key below the default prefix.
//!
//! Run with `cargo +nightly fuzz run export_doc` from `federator/`.

#![no_main]

use federator::agent::sources::export_doc::{
    export_document_json, export_file_json, key_from_etcd_key, parse_export_document,
    parse_export_file,
};
use federator::service::ServiceKey;
use libfuzzer_sys::fuzz_target;

/// The exporting member's trust domain.
const TD: &str = "a.example";

/// The default etcd prefix of export documents.
const PREFIX: &str = "/federator/exports/";

/// A refusal starts with the member it is about: `<path>: <what is wrong>`. A message is
/// cut after 512 characters (it may quote input), which can cut a long path too.
fn assert_names_a_member(message: &str) {
    let cut = message.ends_with('…');
    match message.split_once(": ") {
        Some((member, _)) => assert!(
            !member.is_empty() && !member.starts_with(char::is_whitespace),
            "a refusal must start with the member it is about: {message:?}"
        ),
        None => assert!(cut && !message.is_empty(), "a refusal must name a member: {message:?}"),
    }
}

fn check_document(key: &ServiceKey, bytes: &[u8]) {
    match parse_export_document(key, bytes, TD) {
        Ok(export) => {
            assert_eq!(&export.key, key, "the key names the service");
            assert_eq!(export.validate(TD), Ok(()), "a parsed document must be valid");
            let written = export_document_json(&export);
            assert_eq!(
                parse_export_document(key, written.as_bytes(), TD),
                Ok(export),
                "the written document must parse back: {written}"
            );
        }
        Err(error) => assert_names_a_member(&error.to_string()),
    }
}

fn check_file(bytes: &[u8]) {
    let set = parse_export_file(bytes, TD);
    for problem in &set.problems {
        if problem.location.is_empty() {
            assert!(set.exports.is_empty(), "a file-level problem leaves no exports");
            assert_eq!(set.problems.len(), 1, "a file-level problem is the only one");
            if problem.message.starts_with("must be at most") {
                continue;
            }
            assert_names_a_member(&problem.message);
            continue;
        }
        let index = problem
            .location
            .strip_prefix("exports[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("problem location {:?} is not exports[i]", problem.location));
        match problem.message.split_once(" is already exported by exports[") {
            Some((service, first)) => {
                let first: usize = first
                    .strip_suffix(']')
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_else(|| panic!("{:?}", problem.message));
                assert!(first < index, "{problem:?}");
                let key = ServiceKey::parse(service).expect("a duplicate names a valid key");
                assert!(set.exports.contains_key(&key), "the first entry is kept: {problem:?}");
            }
            None => assert_names_a_member(&problem.message),
        }
    }
    for (key, export) in &set.exports {
        assert_eq!(key, &export.key);
        assert_eq!(export.validate(TD), Ok(()), "a parsed entry must be valid");
    }
    if !set.exports.is_empty() {
        let exports: Vec<_> = set.exports.values().cloned().collect();
        let written = export_file_json(&exports);
        let again = parse_export_file(written.as_bytes(), TD);
        assert!(again.problems.is_empty(), "the written file must parse: {:?}", again.problems);
        assert_eq!(again.exports, set.exports, "the written file must parse back");
    }
}

fn check_etcd_key(text: &str) {
    for key in [text.to_string(), format!("{PREFIX}{text}")] {
        if let Ok(service) = key_from_etcd_key(PREFIX, &key) {
            assert!(service.validate().is_ok(), "{service:?}");
            let canonical = format!("{PREFIX}{}/{}", service.namespace, service.name);
            assert_eq!(canonical, key, "only the canonical key names a service");
            assert_eq!(key_from_etcd_key(PREFIX.trim_end_matches('/'), &key), Ok(service));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let key = ServiceKey::new("shop", "cart");
    check_document(&key, data);
    check_file(data);
    let entry = [&b"{\"exports\":["[..], data, b"]}"].concat();
    check_file(&entry);
    check_etcd_key(&String::from_utf8_lossy(data));
});
