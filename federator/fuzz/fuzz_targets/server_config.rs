//! Fuzzes the replica's configuration parser (`ServerConfig::parse_file`, the text of
//! `server.toml`) and the check of every setting that follows it (`ServerConfig::resolve`,
//! with no flag or environment override): no input may panic. Whatever is accepted has a
//! positive id and distinct raft and API listeners; whatever is refused says why in a
//! non-empty message.
//!
//! The file's relative paths resolve below a directory that does not exist.
//!
//! Run with `cargo +nightly fuzz run server_config` from `federator/`.

#![no_main]

use std::path::Path;

use federator::server::config::{ServerConfig, ServerOverrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/nonexistent/federator-fuzz/server.toml");
    let file = match ServerConfig::parse_file(text, path) {
        Ok(file) => file,
        Err(error) => {
            assert!(!error.to_string().is_empty(), "a refusal says why");
            return;
        }
    };
    match ServerConfig::resolve(file, &ServerOverrides::default(), path.parent()) {
        Ok(config) => {
            assert!(config.id > 0, "an accepted id is positive");
            assert_ne!(config.listen_raft, config.listen_api, "the listeners differ");
        }
        Err(error) => assert!(!error.to_string().is_empty(), "a refusal says why"),
    }
});
