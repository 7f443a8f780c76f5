//! The logs' set-up: text lines on stderr (JSON with `--log-format json` or
//! `LOG_FORMAT=json`), whose every
//! value is escaped, coloured only on a terminal.
//!
//! A log line quotes what members and clients sent (a refused namespace, a cluster name,
//! an error from a peer). In the text format each field value and the message go through
//! [`escape_control`], so none can end the line (forging a standalone one in
//! `server.log`) or send a terminal escape sequence; JSON is escaped by serde.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::output::escape_control;

/// The logs' format (`--log-format`, `LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text lines, every value escaped, coloured only on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: logs go to stderr in `format`; `RUST_LOG` filters
/// them (default: `info` for the server, `warn` for other commands). Text lines carry
/// ANSI colour only when stderr is a terminal and `NO_COLOR` is unset or empty.
pub(super) fn init(server: bool, format: LogFormat) {
    let default = if server { "info,openraft=warn" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if format == LogFormat::Json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .init();
    } else {
        let ansi = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
        text_subscriber(filter, std::io::stderr, ansi).init();
    }
}

/// Whether log lines get ANSI colour: on a terminal, unless `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The text-format subscriber: today's `tracing_subscriber` line with every field value
/// and the message escaped ([`EscapedFields`]).
fn text_subscriber<W>(
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> impl Subscriber + for<'span> LookupSpan<'span> + Send + Sync + 'static
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(EscapedFields)
        .finish()
}

/// Formats fields as [`DefaultFields`] does (`message name=value ...`, span fields too),
/// with each value's text (Display or Debug, as recorded) passed through
/// [`escape_control`] first.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct EscapedFields;

impl<'writer> MakeVisitor<Writer<'writer>> for EscapedFields {
    type Visitor = EscapedVisitor<'writer>;

    fn make_visitor(&self, target: Writer<'writer>) -> Self::Visitor {
        EscapedVisitor(DefaultFields::new().make_visitor(target))
    }
}

/// [`DefaultVisitor`] fed escaped values.
pub(super) struct EscapedVisitor<'writer>(DefaultVisitor<'writer>);

/// Writes already escaped text as it is, for both `{}` and `{:?}`.
struct Escaped<'a>(&'a str);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.record_debug(field, &Escaped(&escape_control(value)));
        } else {
            // `"quoted"`, as `DefaultFields` writes a string; its Debug form escapes the
            // control characters already, escaping again changes nothing.
            let quoted = format!("{value:?}");
            self.0.record_debug(field, &Escaped(&escape_control(&quoted)));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // `error=text error.sources=[source, its source]`, as `DefaultFields` writes it.
        let mut text = value.to_string();
        if let Some(source) = value.source() {
            let mut sources = Vec::new();
            let mut next = Some(source);
            while let Some(error) = next {
                sources.push(error.to_string());
                next = error.source();
            }
            text = format!("{text} {}.sources=[{}]", field.name(), sources.join(", "));
        }
        self.0.record_debug(field, &Escaped(&escape_control(&text)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.0.record_debug(field, &Escaped(&escape_control(&text)));
    }
}

impl VisitOutput<fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const HOSTILE: &str = "\n\x1b]0;pwned\x07\x1b[1A";

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("not poisoned").clone()).expect("UTF-8")
        }
    }

    #[derive(Debug)]
    struct Hostile;

    impl fmt::Display for Hostile {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(HOSTILE)
        }
    }

    impl std::error::Error for Hostile {}

    #[derive(Debug)]
    struct Outer(Hostile);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "refused {HOSTILE}")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Logs one event (in a span) carrying the hostile text every way a field can, and
    /// returns what the subscriber wrote.
    fn log_hostile(ansi: bool) -> String {
        let buffer = Buffer::default();
        let subscriber = text_subscriber(EnvFilter::new("trace"), buffer.clone(), ansi);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", namespace = %HOSTILE, peer = HOSTILE);
            let _entered = span.enter();
            let error = Outer(Hostile);
            tracing::warn!(
                namespace = %HOSTILE,
                cluster = HOSTILE,
                debugged = ?HOSTILE,
                error = &error as &(dyn std::error::Error + 'static),
                "refused namespace {HOSTILE}"
            );
        });
        buffer.text()
    }

    #[test]
    fn a_hostile_field_stays_on_its_line_and_sends_no_escape() {
        let text = log_hostile(false);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'), "{text}");
        let line = text.trim_end_matches('\n');
        assert!(!line.contains(char::is_control), "{line:?}");
        let shown = r"\n\x1b]0;pwned\x07\x1b[1A";
        assert!(line.contains(&format!("refused namespace {shown}")), "{line}");
        assert!(line.contains(&format!("namespace={shown}")), "{line}");
        assert!(line.contains(&format!("error=refused {shown} error.sources=[{shown}]")), "{line}");
        // Strings recorded as such keep their quotes, as `DefaultFields` writes them.
        assert!(line.contains(r#"cluster="\n\u{1b}]0;pwned\u{7}\u{1b}[1A""#), "{line}");
        assert!(line.contains(r"request{namespace=\n\x1b]0;pwned"), "{line}");
        assert!(line.contains(" WARN "), "{line}");
    }

    #[test]
    fn colour_only_styles_and_never_passes_a_hostile_escape() {
        let text = log_hostile(true);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.contains("\x1b["), "coloured: {text:?}");
        // ESC appears only to start the formatter's own SGR colour sequences.
        for (at, _) in text.match_indices('\x1b') {
            let sequence: String = text[at + 1..].chars().take_while(|c| *c != 'm').collect();
            assert!(
                sequence.starts_with('[')
                    && sequence[1..].chars().all(|c| c.is_ascii_digit() || c == ';'),
                "not a colour: {sequence:?} in {text:?}"
            );
        }
        assert!(!text.contains('\x07'), "{text:?}");
        assert!(!text.contains("\x1b]"), "{text:?}");
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
