//! Fuzzes the agent's configuration parser (`federator::agent::config::AgentConfig::parse`,
//! the text of `agent.toml`): no input may panic. Whatever parses has its settings
//! checked (a lease TTL and a refresh hint in their bounds); whatever is refused says why
//! in a non-empty message.
//!
//! The token is given, as the `--token` flag would, so the parser reads no token file;
//! the file's relative paths resolve below a directory that does not exist.
//!
//! Run with `cargo +nightly fuzz run agent_config` from `federator/`.

#![no_main]

use std::path::Path;

use federator::agent::config::AgentConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/nonexistent/federator-fuzz/agent.toml");
    match AgentConfig::parse(text, path, Some("fuzz-token".to_string())) {
        Ok(config) => {
            assert_eq!(config.token.as_deref(), Some("fuzz-token"), "the flag's token wins");
            assert!(config.lease_ttl.as_secs() > 0, "a lease TTL is positive");
            assert!(
                federator::bundle::REFRESH_HINT_BOUNDS.contains(&config.refresh_hint_secs),
                "the refresh hint is in its bounds"
            );
        }
        Err(error) => assert!(!error.to_string().is_empty(), "a refusal says why"),
    }
});
