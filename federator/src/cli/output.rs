//! Rendering of reads as a table, JSON or YAML, and of text for a terminal.
//!
//! Whatever a member cluster or a client can write (cluster names, trust domains,
//! namespaces, reasons, SPIFFE IDs, a server's error messages) reaches an operator's
//! terminal only through [`escape_control`]: every table cell ([`Table::add_row`]), every
//! line of text ([`Text::line`], [`print_line`], [`eprint_line`]). JSON and YAML are
//! escaped by serde.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use comfy_table::{ContentArrangement, presets::NOTHING};
use serde::Serialize;

/// Output format of reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A human-readable table.
    #[default]
    Table,
    /// The table with more columns where there are more to show (`status`: snapshot,
    /// purged index, state digest).
    Wide,
    /// JSON, for scripts.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML, or calls `table` to print it for humans.
pub fn print<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T),
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
        OutputFormat::Table | OutputFormat::Wide => table(value),
    }
    Ok(())
}

// === escaping ===

/// `text` with every control character (C0, DEL and C1: U+0000–U+001F, U+007F–U+009F)
/// replaced by a visible escape: `\n`, `\r`, `\t`, `\x1b`, `\x7f`, `\u{9b}`. Nothing else
/// changes (a backslash stays one); borrowed when there is nothing to escape.
///
/// Text escaped so can neither start a new line nor send a terminal escape sequence
/// (`ESC ]0;…BEL` retitles a window, `ESC [1A` moves the cursor up over earlier lines).
#[must_use]
pub fn escape_control(text: &str) -> Cow<'_, str> {
    match text.find(char::is_control) {
        None => Cow::Borrowed(text),
        Some(first) => {
            let mut escaped = String::with_capacity(text.len() + 8);
            escaped.push_str(&text[..first]);
            for c in text[first..].chars() {
                push_escaped(&mut escaped, c);
            }
            Cow::Owned(escaped)
        }
    }
}

/// [`escape_control`] on each line of `text`: its line feeds stay, every other control
/// character is escaped. For text whose line breaks are meant (a bundle document, an
/// error that lists one failure a line) and whose parts from elsewhere were escaped
/// whole where they entered it.
#[must_use]
pub fn escape_control_keep_newlines(text: &str) -> Cow<'_, str> {
    if !text.contains(|c: char| c.is_control() && c != '\n') {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\n' {
            escaped.push(c);
        } else {
            push_escaped(&mut escaped, c);
        }
    }
    Cow::Owned(escaped)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        // Writing to a String cannot fail.
        '\0'..='\x1f' | '\x7f' => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// An error and its causes on one line, each said once: tonic, hyper and rustls repeat
/// their source's text in their own, which `{:#}` would print two or three times. A
/// cause whose text an earlier one already holds is left out. Known causes get the next
/// step appended.
#[must_use]
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    let mut text = parts.join(": ");
    if let Some(hint) = hint_for(&text).filter(|hint| !text.contains(hint)) {
        text.push_str(" — ");
        text.push_str(hint);
    }
    text
}

/// The next step for a failure the CLI meets often.
fn hint_for(text: &str) -> Option<&'static str> {
    if text.contains("UnknownIssuer") {
        Some(
            "the replica's certificate does not chain to --ca (FEDERATOR_CA): give the \
             federation's CA (ca.pem of `federator certs init`)",
        )
    } else if text.contains("Connection refused") {
        Some(
            "nothing listens there: is the replica running, and is this its API address \
             (listen.api in its server.toml)?",
        )
    } else {
        None
    }
}

/// A unix time in seconds, 0 when it never happened (a lease not ended, a token not
/// used). In JSON and YAML it is an RFC 3339 UTC time, or `null` for 0, so that scripts
/// read every time of every command the same way; tables show it as an age.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// The time in unix seconds (0: never).
    #[must_use]
    pub fn secs(self) -> i64 {
        self.0
    }
}

impl From<UnixTime> for i64 {
    fn from(time: UnixTime) -> Self {
        time.0
    }
}

impl serde::Serialize for UnixTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 0 {
            serializer.serialize_none()
        } else {
            serializer.serialize_str(&crate::clock::rfc3339(self.0))
        }
    }
}

/// Prints `text` and a line feed to stdout, control characters escaped.
pub fn print_line(text: impl fmt::Display) {
    println!("{}", escape_control(&text.to_string()));
}

/// Prints `text` and a line feed to stderr, control characters escaped.
pub fn eprint_line(text: impl fmt::Display) {
    eprintln!("{}", escape_control(&text.to_string()));
}

/// Lines of text for a terminal, each escaped as it is added: a value in a line can
/// neither end it nor send a terminal escape sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    /// An empty text.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `line` (without its line feed), control characters escaped.
    pub fn line(&mut self, line: impl fmt::Display) -> &mut Self {
        self.0.push_str(&escape_control(&line.to_string()));
        self.0.push('\n');
        self
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Text> for String {
    fn from(text: Text) -> Self {
        text.0
    }
}

// === tables ===

/// A table with the project's style whose cells are escaped as they are added: no
/// value can break a row or send a terminal escape sequence.
#[derive(Debug)]
pub struct Table(comfy_table::Table);

impl Table {
    /// A table with the given header.
    #[must_use]
    pub fn new(header: &[&str]) -> Self {
        Self(table(header))
    }

    /// Adds a row; each cell is escaped ([`Cell`]).
    pub fn add_row<I>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator,
        I::Item: Into<Cell>,
    {
        self.0.add_row(cells.into_iter().map(|cell| cell.into().0).collect::<Vec<String>>());
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cells are padded to their column's width: no line ends in spaces.
        let text = self.0.to_string();
        for (i, line) in text.lines().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(line.trim_end())?;
        }
        Ok(())
    }
}

/// The text of a table cell, control characters escaped: one line, or several from
/// [`Cell::lines`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell(String);

impl Cell {
    /// A cell of several lines, each escaped.
    #[must_use]
    pub fn lines<I>(lines: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut text = String::new();
        for (i, line) in lines.into_iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&escape_control(line.as_ref()));
        }
        Self(text)
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        match escape_control(&text) {
            Cow::Borrowed(_) => Self(text),
            Cow::Owned(escaped) => Self(escaped),
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self(escape_control(text).into_owned())
    }
}

impl From<&String> for Cell {
    fn from(text: &String) -> Self {
        Self::from(text.as_str())
    }
}

impl PartialEq<&str> for Cell {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A bare table with the project's style and the given header: its cells are NOT
/// escaped ([`Table::new`] wraps it and escapes them).
#[must_use]
/// kubectl's style: no borders, columns three spaces apart, values never wrapped (a
/// narrow terminal wraps whole lines, and `grep`/`awk` see one row per line).
fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| escape_control(h).into_owned()));
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOSTILE: &str = "\n\x1b]0;pwned\x07\x1b[1A";

    #[test]
    fn an_error_chain_says_each_cause_once_and_the_next_step() {
        #[derive(Debug)]
        struct Cause(&'static str, Option<Box<Cause>>);
        impl std::fmt::Display for Cause {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Cause {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
            }
        }
        // As tonic and hyper nest them: each repeats its source in its own text.
        let inner = Cause("Connection refused (os error 111)", None);
        let middle =
            Cause("TCP connect failed: Connection refused (os error 111)", Some(Box::new(inner)));
        let error = anyhow::Error::new(Cause("transport error", Some(Box::new(middle))))
            .context("cannot connect to 127.0.0.1:1");
        let text = error_chain(&error);
        assert_eq!(text.matches("Connection refused").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot connect to 127.0.0.1:1: transport error: TCP connect failed"),
            "{text}"
        );
        assert!(text.ends_with("(listen.api in its server.toml)?"), "{text}");
        // Said once even when the text is wrapped again.
        let again = error_chain(&anyhow::anyhow!("no replica answered: {text}"));
        assert_eq!(again.matches("nothing listens there").count(), 1, "{again}");
    }

    #[test]
    fn every_class_of_control_character_is_escaped() {
        for (raw, shown) in [
            ("\n", r"\n"),
            ("\r", r"\r"),
            ("\t", r"\t"),
            ("\0", r"\x00"),
            ("\x07", r"\x07"),
            ("\x08", r"\x08"),
            ("\x1b", r"\x1b"),
            ("\x1f", r"\x1f"),
            ("\x7f", r"\x7f"),
            ("\u{80}", r"\u{80}"),
            ("\u{9b}", r"\u{9b}"),
            ("\u{9f}", r"\u{9f}"),
        ] {
            assert_eq!(escape_control(raw), shown, "{raw:?}");
        }
        assert_eq!(escape_control(HOSTILE), r"\n\x1b]0;pwned\x07\x1b[1A");
        assert_eq!(escape_control("shop\n/cart"), r"shop\n/cart");
    }

    #[test]
    fn other_text_is_left_alone_and_borrowed() {
        for clean in [
            "",
            "spiffe://a.example.org/ns/shop/sa/cart",
            "Zürich — 東京 ‼ √ × \u{a0}\u{ff}",
            r"a\nb \x1b already-visible escapes",
            "\u{7e}\u{a0}",
        ] {
            assert!(matches!(escape_control(clean), Cow::Borrowed(s) if s == clean), "{clean:?}");
            assert!(matches!(escape_control_keep_newlines(clean), Cow::Borrowed(_)));
        }
        assert!(matches!(escape_control_keep_newlines("a\nb\n"), Cow::Borrowed("a\nb\n")));
    }

    #[test]
    fn keeping_newlines_escapes_everything_else() {
        assert_eq!(
            escape_control_keep_newlines("{\n  \"x\": 1\r\n}\x1b[2J\t"),
            "{\n  \"x\": 1\\r\n}\\x1b[2J\\t"
        );
    }

    proptest! {
        #[test]
        fn escaped_text_holds_no_control_character(text in any::<String>()) {
            let escaped = escape_control(&text);
            prop_assert!(!escaped.contains(char::is_control), "{:?}", escaped);
            let lines = escape_control_keep_newlines(&text);
            prop_assert!(!lines.contains(|c: char| c.is_control() && c != '\n'), "{:?}", lines);
            prop_assert_eq!(lines.matches('\n').count(), text.matches('\n').count());
        }

        #[test]
        fn escaping_is_identity_without_control_characters(
            text in any::<String>().prop_map(|t| t.replace(char::is_control, ""))
        ) {
            prop_assert!(matches!(escape_control(&text), Cow::Borrowed(s) if s == text));
        }

        #[test]
        fn escaping_only_replaces_control_characters(text in "[a-z\\x00-\\x1f\\x7f-\\u{a0}é]{0,40}") {
            let escaped = escape_control(&text);
            let kept: String = text.chars().filter(|c| !c.is_control()).collect();
            let mut rest = escaped.as_ref();
            // The text's other characters appear in the escaped text, in order.
            for c in kept.chars() {
                let at = rest.find(c);
                prop_assert!(at.is_some(), "{:?} lost {:?}", escaped, c);
                rest = &rest[at.unwrap_or(0) + c.len_utf8()..];
            }
        }
    }

    /// Checks that a rendered table holds no control character but its line feeds, and
    /// that it has exactly `lines` of them.
    fn assert_clean_table(rendered: &str, lines: usize) {
        assert!(!rendered.contains(|c: char| c.is_control() && c != '\n'), "{rendered:?}");
        assert_eq!(rendered.lines().count(), lines, "{rendered}");
    }

    #[test]
    fn table_cells_are_escaped() {
        let mut t = Table::new(&["NAME", "REASON"]);
        t.add_row([HOSTILE, "fine"]);
        t.add_row(vec![format!("ns{HOSTILE}"), String::from("\u{9b}31m")]);
        t.add_row([Cell::lines(["spiffe://a/x", HOSTILE]), Cell::from(&String::from("ok"))]);
        let rendered = t.to_string();
        // The header, one line per row plus the second line of the last.
        assert_clean_table(&rendered, 1 + 3 + 1);
        assert!(rendered.contains(r"\n\x1b]0;pwned\x07\x1b[1A"), "{rendered}");
        assert!(rendered.contains(r"\u{9b}31m"), "{rendered}");
        assert_eq!(Cell::from(HOSTILE), r"\n\x1b]0;pwned\x07\x1b[1A");
        assert_eq!(Cell::lines(["a", "b\r"]), "a\nb\\r");
    }

    #[test]
    fn tables_are_aligned_columns_without_borders_or_trailing_spaces() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.add_row(["cluster-a", "live"]);
        t.add_row(["b", "expired"]);
        assert_eq!(t.to_string(), "NAME        STATE\ncluster-a   live\nb           expired");
    }

    #[test]
    fn text_lines_are_escaped() {
        let mut text = Text::new();
        text.line(format_args!("cluster {HOSTILE} joined")).line("done");
        assert_eq!(text.to_string(), "cluster \\n\\x1b]0;pwned\\x07\\x1b[1A joined\ndone\n");
    }

    #[test]
    fn times_are_rfc3339_for_scripts_and_null_when_they_never_happened() {
        #[derive(serde::Serialize)]
        struct Row {
            used_at: UnixTime,
            expires_at: UnixTime,
        }
        let row = Row { used_at: UnixTime(0), expires_at: UnixTime(1_796_538_296) };
        let json = serde_json::to_value(&row).expect("json");
        assert_eq!(
            json,
            serde_json::json!({ "used_at": null, "expires_at": "2026-12-06T06:24:56Z" })
        );
    }
}
