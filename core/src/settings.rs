//! What the replica's settings (`federator::server::config`) and the agent's
//! (`federator::agent::AgentConfig`) have in common: the error that names the setting at
//! fault, and how to fix it.

/// Errors of loading or checking settings. Each names the setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path of the file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped settings.
    #[error("config file {path}: {message}")]
    Parse {
        /// Path of the file.
        path: String,
        /// The parser's message, naming the setting and line.
        message: String,
    },
    /// A required setting has no value from file, environment or flags.
    #[error("missing setting `{field}` (set it in the config file, as {env}, or with --{flag})")]
    Missing {
        /// Setting name as in the file.
        field: &'static str,
        /// Environment variable that sets it.
        env: &'static str,
        /// Flag that sets it.
        flag: &'static str,
    },
    /// A setting has a value that breaks a rule.
    #[error("setting `{field}` = {value:?}: {rule}")]
    Invalid {
        /// Setting name.
        field: &'static str,
        /// The value given.
        value: String,
        /// The rule it broke.
        rule: String,
    },
}
