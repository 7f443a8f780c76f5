//! Commands of the federation log and their results, with their wire encoding.

use serde::{Deserialize, Serialize};

/// Longest probe key accepted.
const MAX_PROBE_KEY: usize = 256;

/// A change to the federation state, proposed through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// A replica announces where its API is served.
    RegisterReplica {
        /// Replica id.
        id: u64,
        /// Raft transport address.
        raft_addr: String,
        /// API address.
        api_addr: String,
    },
    /// A replica left the group.
    UnregisterReplica {
        /// Replica id.
        id: u64,
    },
    /// Writes a key of the diagnostic probe keyspace.
    PutProbe {
        /// Key, 1 to 256 printable ASCII characters.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
}

/// What an accepted command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Applied {
    /// Applied, nothing to report.
    Done,
    /// A probe write; the key's new version.
    Probe {
        /// Version after the write.
        version: u64,
    },
}

/// Why the state machine refused a command. Refusals are deterministic: every replica
/// refuses the same command the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command bytes do not decode (a newer or corrupt proposer).
    #[error("command does not decode: {0}")]
    Undecodable(String),
    /// A field broke a rule.
    #[error("{field}: {rule}")]
    Invalid {
        /// The field.
        field: String,
        /// The rule it broke.
        rule: String,
    },
}

impl CommandError {
    /// An invalid-field refusal.
    pub fn invalid(field: &str, rule: &str) -> Self {
        Self::Invalid {
            field: field.to_string(),
            rule: rule.to_string(),
        }
    }
}

/// The result of applying a command, as carried back to the proposer.
pub type CommandResult = Result<Applied, CommandError>;

// === impl Command ===

impl Command {
    /// Encodes the command for the log.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        // Plain data of owned strings and integers always encodes.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a command from the log.
    ///
    /// # Errors
    /// The bytes are not a command of this build.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        postcard::from_bytes(bytes).map_err(|e| CommandError::Undecodable(e.to_string()))
    }
}

/// Checks a probe key: 1 to 256 printable ASCII characters.
///
/// # Errors
/// The key is empty, too long or has other characters.
pub fn validate_probe_key(key: &str) -> Result<(), CommandError> {
    if key.is_empty() || key.len() > MAX_PROBE_KEY {
        return Err(CommandError::invalid("key", "must be 1 to 256 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::invalid(
            "key",
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Encodes a command result for the proposer.
#[must_use]
pub fn encode_result(result: &CommandResult) -> Vec<u8> {
    postcard::to_stdvec(result).unwrap_or_default()
}

/// Decodes a command result returned by the log.
///
/// # Errors
/// The bytes are not a result of this build.
pub fn decode_result(bytes: &[u8]) -> Result<CommandResult, CommandError> {
    postcard::from_bytes(bytes).map_err(|e| CommandError::Undecodable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn probe_key_rules() {
        assert!(validate_probe_key("a/b-1").is_ok());
        assert!(validate_probe_key("").is_err());
        assert!(validate_probe_key("has space").is_err());
        assert!(validate_probe_key(&"x".repeat(257)).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Command::decode(&bytes);
            let _ = decode_result(&bytes);
        }

        #[test]
        fn commands_round_trip(key in "[a-z/]{1,20}", value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let command = Command::PutProbe { key, value };
            prop_assert_eq!(Command::decode(&command.encode()).expect("decodes"), command);
        }
    }
}
