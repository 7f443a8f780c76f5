//! A strict JSON reader: serde_json's tokenizer with a value type that refuses duplicate
//! members at any level (serde_json's own `Value` silently keeps the last one, so two
//! readers of one document could see different keys) and nesting beyond a limit.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{BundleError, invalid};

/// A JSON value whose objects had no duplicate members.
#[derive(Debug)]
pub(super) enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool,
    /// A number.
    Number(Number),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, its members by name.
    Object(BTreeMap<String, Value>),
}

/// A JSON number, as far as bundles care.
#[derive(Debug, Clone, Copy)]
pub(super) enum Number {
    /// A non-negative integer that fits 64 bits.
    Unsigned(u64),
    /// Anything else: negative, fractional, or too large for 64 bits.
    Other,
}

impl Value {
    /// The value as an unsigned 64-bit integer, if it is one.
    pub(super) fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Number(Number::Unsigned(n)) => Some(*n),
            _ => None,
        }
    }

    /// A word for the value's JSON type, for error messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number(_) => "a number",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

/// Where a value sits in the document, built on the stack and rendered only on error.
#[derive(Clone, Copy, Debug)]
pub(super) enum Path<'a> {
    /// The document itself.
    Root,
    /// A member of an object.
    Member(&'a Path<'a>, &'a str),
    /// An element of an array.
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    /// `keys[2].x5c[0]`; the root is `document`; odd member names are quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root => f.write_str("document"),
            Self::Member(parent, name) => {
                let plain = !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                match (parent, plain) {
                    (Self::Root, true) => f.write_str(name),
                    (Self::Root, false) => write!(f, "[{}]", super::quoted(name)),
                    (_, true) => write!(f, "{parent}.{name}"),
                    (_, false) => write!(f, "{parent}[{}]", super::quoted(name)),
                }
            }
            Self::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Reads `text` as one JSON value, refusing duplicate members and nesting deeper than
/// `max_depth` arrays and objects.
pub(super) fn read(text: &str, max_depth: usize) -> Result<Value, BundleError> {
    let failure = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let seed = ValueSeed { path: &Path::Root, depth: 0, max_depth, failure: &failure };
    let result =
        seed.deserialize(&mut deserializer).and_then(|value| deserializer.end().map(|()| value));
    result.map_err(|e| {
        failure.take().unwrap_or_else(|| BundleError::Syntax {
            line: e.line(),
            column: e.column(),
            problem: syntax_problem(&e),
        })
    })
}

/// serde_json's message without its " at line L column C" tail (the variant has those).
fn syntax_problem(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

/// Reads one value at `path`, `depth` containers deep.
#[derive(Clone, Copy)]
struct ValueSeed<'a> {
    path: &'a Path<'a>,
    depth: usize,
    max_depth: usize,
    /// Where a rule violation is kept: serde errors carry only text.
    failure: &'a RefCell<Option<BundleError>>,
}

impl ValueSeed<'_> {
    fn fail<E: de::Error>(&self, field: String, rule: String) -> E {
        let mut failure = self.failure.borrow_mut();
        if failure.is_none() {
            *failure = Some(invalid(field, rule));
        }
        E::custom("bundle rule violated")
    }

    /// The depth of a container opened here, or the error if it is too deep.
    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(self.fail(
                self.path.to_string(),
                format!("nests deeper than {} levels", self.max_depth),
            ));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Bool)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(Number::Unsigned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(u64::try_from(v).map_or(Number::Other, Number::Unsigned)))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Number(Number::Other))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        loop {
            let path = Path::Index(self.path, items.len());
            let seed = ValueSeed { path: &path, depth, ..self };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut members = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let path = Path::Member(self.path, &name);
            if members.contains_key(&name) {
                return Err(self.fail(path.to_string(), "duplicate member".to_string()));
            }
            let seed = ValueSeed { path: &path, depth, ..self };
            let value = map.next_value_seed(seed)?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

/// A JSON object and where it sits, with typed getters whose errors name the member.
pub(super) struct Object<'a> {
    members: &'a BTreeMap<String, Value>,
    path: &'a Path<'a>,
}

impl<'a> Object<'a> {
    /// `value` as an object, or an error naming `path`.
    pub(super) fn of(value: &'a Value, path: &'a Path<'a>) -> Result<Self, BundleError> {
        match value {
            Value::Object(members) => Ok(Self { members, path }),
            other => Err(invalid(
                path.to_string(),
                format!("must be a JSON object, is {}", other.kind()),
            )),
        }
    }

    /// The member `name`, if present.
    pub(super) fn get(&self, name: &str) -> Option<&'a Value> {
        self.members.get(name)
    }

    /// The path of member `name`, e.g. `keys[2].kid`.
    pub(super) fn field(&self, name: &str) -> String {
        Path::Member(self.path, name).to_string()
    }

    /// The path of the object itself, e.g. `keys[2]`.
    pub(super) fn path(&self) -> String {
        self.path.to_string()
    }

    /// The string member `name`, which must be present.
    pub(super) fn required_str(&self, name: &str) -> Result<&'a str, BundleError> {
        self.optional_str(name)?.ok_or_else(|| invalid(self.field(name), "must be set"))
    }

    /// The string member `name`, if present.
    pub(super) fn optional_str(&self, name: &str) -> Result<Option<&'a str>, BundleError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                Err(invalid(self.field(name), format!("must be a string, is {}", other.kind())))
            }
        }
    }

    /// Refuses member `name` with `rule` when it is present.
    pub(super) fn forbid(&self, name: &str, rule: &str) -> Result<(), BundleError> {
        match self.get(name) {
            Some(_) => Err(invalid(self.field(name), rule)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_err(text: &str) -> BundleError {
        match read(text, 16) {
            Ok(v) => panic!("{text} was accepted as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn duplicate_members_are_refused_at_every_level() {
        assert_eq!(read_err(r#"{"a":1,"a":2}"#).field(), "a");
        assert_eq!(read_err(r#"{"k":[{"x":1},{"x":1,"x":1}]}"#).field(), "k[1].x");
        // Escapes are resolved before comparing names.
        assert_eq!(read_err(r#"{"use":1,"\u0075se":2}"#).field(), "use");
    }

    #[test]
    fn nesting_is_counted_per_container() {
        assert!(read("[[[]]]", 3).is_ok());
        let err = read("[[[[]]]]", 3).expect_err("too deep");
        assert_eq!(err.field(), "document[0][0][0]");
        assert!(err.rule().contains("deeper than 3"), "{err}");
    }

    #[test]
    fn trailing_text_is_a_syntax_error() {
        assert!(matches!(read_err("{} {}"), BundleError::Syntax { .. }));
        assert!(matches!(read_err("{\"a\":}"), BundleError::Syntax { .. }));
    }

    #[test]
    fn numbers_keep_their_kind() {
        let v = read("[1, -1, 1.5, 18446744073709551616]", 4).expect("valid");
        let Value::Array(items) = v else { panic!("not an array") };
        assert_eq!(items[0].as_u64(), Some(1));
        assert_eq!(items[1].as_u64(), None);
        assert_eq!(items[2].as_u64(), None);
        assert_eq!(items[3].as_u64(), None);
    }

    #[test]
    fn odd_member_names_are_quoted_in_paths() {
        let err = read_err(r#"{"a.b":{"x":1,"x":2}}"#);
        assert_eq!(err.field(), r#"["a.b"].x"#);
    }
}
