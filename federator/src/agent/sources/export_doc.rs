//! The export document: how an operator or a controller tells the agent what its cluster
//! exports. One document per service at the etcd key `<prefix><namespace>/<name>` (the
//! key names the service), or every service in one static file.
//!
//! JSON in the Kubernetes style (camelCase), strict: unknown members, duplicate members,
//! wrong types and out-of-range numbers are refused, and every refusal names the member
//! (`endpoints[0].address: "x" is not an IP address`). A document is at most
//! [`MAX_DOCUMENT_BYTES`]:
//!
//! ```json
//! {
//!   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"}],
//!   "endpoints": [{"address": "127.0.0.1", "zone": "z1", "region": "r1", "weight": 1,
//!                  "ready": true, "ports": [{"name": "http", "port": 8080}]}],
//!   "identities": ["spiffe://a.example/ns/shop/sa/cart"],
//!   "scope": {"clusters": ["b"]},
//!   "gateway": {"address": "127.0.0.9", "port": 15443}
//! }
//! ```
//!
//! Defaults: `protocol` TCP, `appProtocol`/`zone`/`region`/`name` empty, `weight` 1,
//! `ready` true, no `ports` override on an endpoint; without `scope` every member may
//! import the service, without `gateway` it is reached at its endpoints directly. A
//! document may repeat `namespace` and `name`, which must then be the key's.
//!
//! The static file holds `{"exports": [{"namespace": "shop", "name": "cart", ...}]}`,
//! each entry a document with `namespace` and `name` required; a bad entry is reported
//! and skipped, the others are kept. The file is at most [`MAX_FILE_BYTES`] and holds at
//! most [`MAX_FILE_EXPORTS`] entries.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::net::IpAddr;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::agent::view::{ExportSet, SourceProblem};
use crate::service::{
    Endpoint, EndpointPort, ExportError, ExportMode, ExportScope, Protocol, ServiceExport,
    ServiceKey, ServicePort,
};

/// Largest export document, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Largest static exports file, bytes.
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// Most entries in a static exports file.
pub const MAX_FILE_EXPORTS: usize = 10_000;
/// Longest message about one document (the rest is cut: messages quote untrusted input).
const MAX_MESSAGE_CHARS: usize = 512;

// === refusals ===

/// Why an export document, or the static exports file, is refused. Shown as the member
/// it is about, then what is wrong (`endpoints[0].address: "x" is not an IP address`),
/// cut to [`MAX_MESSAGE_CHARS`] (the problem may quote untrusted input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// A member is wrong, or the document as a whole (`body`: not JSON, not an object).
    #[error("{}", cut(format!("{}: {}", .field, .problem)))]
    Member {
        /// The member as the document names it: a path such as
        /// `endpoints[1].ports[0].port`; `body` for the whole document.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("body: must be at most {limit} bytes, is {size}")]
    DocumentTooLarge {
        /// Its size, bytes.
        size: usize,
        /// [`MAX_DOCUMENT_BYTES`].
        limit: usize,
    },
    /// The static file is larger than [`MAX_FILE_BYTES`].
    #[error("must be at most {limit} bytes, is {size}")]
    FileTooLarge {
        /// Its size, bytes.
        size: usize,
        /// [`MAX_FILE_BYTES`].
        limit: usize,
    },
}

impl DocumentError {
    /// `field` is wrong: `problem`.
    fn member(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Member { field: field.into(), problem: problem.into() }
    }

    /// The static file of `size` bytes is too large.
    #[must_use]
    pub fn file_too_large(size: usize) -> Self {
        Self::FileTooLarge { size, limit: MAX_FILE_BYTES }
    }
}

/// Why an etcd key names no service (it must be `<prefix><namespace>/<name>`), cut to
/// [`MAX_MESSAGE_CHARS`] (the key is untrusted input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key does not start with the prefix.
    #[error("{}", cut(format!("key {:?} is not under the prefix {:?}", .key, .prefix)))]
    NotUnderPrefix {
        /// The key.
        key: String,
        /// The prefix, ending with `/`.
        prefix: String,
    },
    /// What follows the prefix is not `<namespace>/<name>`.
    #[error("{}", cut(format!("key {:?} is not {}NAMESPACE/NAME", .key, .prefix)))]
    NotNamespaceName {
        /// The key.
        key: String,
        /// The prefix, ending with `/`.
        prefix: String,
    },
    /// The namespace or the name is not a DNS label.
    #[error("{}", cut(format!("key {:?}: {}", .key, .rule)))]
    NotDnsLabels {
        /// The key.
        key: String,
        /// The rule the service key breaks.
        rule: ExportError,
    },
}

// === the document ===

/// The members of an export document (and of an entry of the static file, which also
/// names its service).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default)]
    ports: Vec<Obj<PortDoc>>,
    #[serde(default)]
    endpoints: Vec<Obj<EndpointDoc>>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Obj<ScopeDoc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Obj<GatewayDoc>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDoc {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    port: u16,
    #[serde(default = "tcp")]
    protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    app_protocol: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointDoc {
    address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    region: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "yes")]
    ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Obj<EndpointPortDoc>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointPortDoc {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    port: u16,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScopeDoc {
    clusters: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GatewayDoc {
    address: String,
    port: u16,
}

/// The static file's shape, checked before its entries are read one by one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    exports: Vec<IgnoredAny>,
}

/// The static file, for [`export_file_json`].
#[derive(Serialize)]
struct FileDoc {
    exports: Vec<Obj<Document>>,
}

/// A member that must be a JSON object. serde's derived structs also accept an array of
/// their fields in order (`["http", 80]` as a port); a document is read only as objects.
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(ObjectVisitor(PhantomData)).map(Obj)
    }
}

fn tcp() -> String {
    "TCP".into()
}

const fn one() -> u32 {
    1
}

const fn yes() -> bool {
    true
}

// === parsing ===

/// Parses and validates the export document of `key` (namespace and name come from the
/// key, e.g. from [`key_from_etcd_key`]) for a member of `trust_domain`.
///
/// # Errors
/// A [`DocumentError`] naming the member that is wrong, e.g.
/// `endpoints[0].address: "x" is not an IP address`; `body` when the document as a whole
/// is (too large, not JSON).
pub fn parse_export_document(
    key: &ServiceKey,
    bytes: &[u8],
    trust_domain: &str,
) -> Result<ServiceExport, DocumentError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::DocumentTooLarge {
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let document = read_document(bytes)?;
    for (field, given, expected) in
        [("namespace", &document.namespace, &key.namespace), ("name", &document.name, &key.name)]
    {
        if let Some(given) = given
            && given != expected
        {
            return Err(DocumentError::member(
                field,
                format!(
                    "{given:?} differs from the key's {field} {expected:?} (the key names the \
                     service; omit {field} from the document)"
                ),
            ));
        }
    }
    to_export(key.clone(), document, trust_domain)
}

/// The service an etcd key of an export document names: `<prefix><namespace>/<name>`,
/// both parts DNS labels. `prefix` is taken as if it ended with `/`.
///
/// # Errors
/// The key is outside the prefix, not of that form, or a part is not a DNS label.
pub fn key_from_etcd_key(prefix: &str, key: &str) -> Result<ServiceKey, KeyError> {
    let prefix = normalize_prefix(prefix);
    let Some(rest) = key.strip_prefix(prefix.as_str()) else {
        return Err(KeyError::NotUnderPrefix { key: key.to_string(), prefix });
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, name] = parts.as_slice() else {
        return Err(KeyError::NotNamespaceName { key: key.to_string(), prefix });
    };
    let service = ServiceKey::new(*namespace, *name);
    service.validate().map_err(|rule| KeyError::NotDnsLabels { key: key.to_string(), rule })?;
    Ok(service)
}

/// `prefix` ending with exactly one `/` (empty stays `/`).
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// Parses the static exports file `{"exports": [...]}` for a member of `trust_domain`.
///
/// Every good entry is kept; a bad one (or a second entry for the same namespace/name)
/// becomes a [`SourceProblem`] at location `exports[i]`. A file that is not an exports
/// file at all (too large, not JSON, not that shape) is one problem at location `""`
/// and no exports — [`crate::agent::sources::file_exports`] then keeps the last exports
/// it read.
#[must_use]
pub fn parse_export_file(bytes: &[u8], trust_domain: &str) -> ExportSet {
    match parse_file(bytes, trust_domain) {
        Ok(set) => set,
        Err(error) => ExportSet {
            exports: BTreeMap::new(),
            problems: vec![SourceProblem { location: String::new(), message: error.to_string() }],
        },
    }
}

/// [`parse_export_file`], with a file-level problem as the error.
pub(crate) fn parse_file(bytes: &[u8], trust_domain: &str) -> Result<ExportSet, DocumentError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(DocumentError::file_too_large(bytes.len()));
    }
    let Obj(shape): Obj<FileShape> =
        serde_json::from_slice(bytes).map_err(|e| json_error(bytes, &e))?;
    if shape.exports.len() > MAX_FILE_EXPORTS {
        return Err(DocumentError::member(
            "exports",
            format!("at most {MAX_FILE_EXPORTS} entries, holds {}", shape.exports.len()),
        ));
    }
    let spans = entry_spans(bytes);
    if spans.len() != shape.exports.len() {
        // Cannot happen for a document serde_json accepted; refuse rather than guess.
        return Err(DocumentError::member(
            "exports",
            format!(
                "found {} entries where the JSON reader found {}",
                spans.len(),
                shape.exports.len()
            ),
        ));
    }
    let mut set = ExportSet::default();
    let mut first_of: BTreeMap<ServiceKey, usize> = BTreeMap::new();
    for (i, (start, end)) in spans.into_iter().enumerate() {
        let location = format!("exports[{i}]");
        let entry = bytes.get(start..end).unwrap_or_default();
        match parse_entry(entry, trust_domain) {
            Ok(export) => {
                if let Some(first) = first_of.get(&export.key) {
                    set.problems.push(SourceProblem {
                        location,
                        message: format!("{} is already exported by exports[{first}]", export.key),
                    });
                } else {
                    first_of.insert(export.key.clone(), i);
                    set.exports.insert(export.key.clone(), export);
                }
            }
            Err(error) => {
                set.problems.push(SourceProblem { location, message: error.to_string() });
            }
        }
    }
    Ok(set)
}

/// One entry of the static file: a document that names its service.
fn parse_entry(bytes: &[u8], trust_domain: &str) -> Result<ServiceExport, DocumentError> {
    let mut document = read_document(bytes)?;
    let required = |field| DocumentError::member(field, "required in a file entry");
    let namespace = document.namespace.take().ok_or_else(|| required("namespace"))?;
    let name = document.name.take().ok_or_else(|| required("name"))?;
    to_export(ServiceKey::new(namespace, name), document, trust_domain)
}

fn read_document(bytes: &[u8]) -> Result<Document, DocumentError> {
    serde_json::from_slice(bytes).map(|Obj(document)| document).map_err(|e| json_error(bytes, &e))
}

/// A serde_json error as a refusal naming the member it is about.
fn json_error(bytes: &[u8], error: &serde_json::Error) -> DocumentError {
    use serde_json::error::Category;
    let message = error.to_string();
    match error.classify() {
        Category::Data => {
            let offset = offset_of(bytes, error.line(), error.column());
            let path = path_at(bytes, offset);
            let field = if path.is_empty() { "body".to_string() } else { path };
            DocumentError::member(field, message)
        }
        Category::Io | Category::Syntax | Category::Eof => {
            DocumentError::member("body", format!("not well-formed JSON: {message}"))
        }
    }
}

/// The byte offset of serde_json's (line, column): column counts bytes after the line's
/// start.
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    let mut seen = 1;
    while seen < line {
        match bytes.get(start..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            Some(newline) => {
                start += newline + 1;
                seen += 1;
            }
            None => break,
        }
    }
    start.saturating_add(column).min(bytes.len())
}

/// Where a JSON reader was when it stopped at `offset`: a path such as
/// `endpoints[1].ports[0].port`, empty at the top. Tolerant of anything: it only tracks
/// brackets, strings, `:` and `,`.
fn path_at(bytes: &[u8], offset: usize) -> String {
    enum Frame {
        Object { key: Option<String>, in_value: bool },
        Array { index: usize },
    }
    let end = offset.min(bytes.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'{' => stack.push(Frame::Object { key: None, in_value: false }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { in_value, .. }) => *in_value = false,
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { in_value, .. }) = stack.last_mut() {
                    *in_value = true;
                }
            }
            b'"' => {
                let close = string_end(bytes, i);
                if let Some(Frame::Object { key, in_value: false }) = stack.last_mut() {
                    let raw = bytes.get(i..close.min(bytes.len())).unwrap_or_default();
                    *key = Some(
                        serde_json::from_slice::<String>(raw)
                            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned()),
                    );
                }
                i = close;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                let key: String = key.chars().take(64).collect();
                if !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&key);
                } else {
                    path.push_str(&format!("[{key:?}]"));
                }
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// The index just after the string starting at `start` (a `"`), or the end of `bytes`.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The byte ranges of the entries of `exports` in a file serde_json accepted as
/// [`FileShape`] (an object whose only member is the `exports` array).
fn entry_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut depth = 0usize;
    let mut start: Option<usize> = None;
    let mut last = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if depth == 2 && start.is_none() && b != b',' && b != b']' {
            start = Some(i);
        }
        match b {
            b'"' => {
                i = string_end(bytes, i);
                last = i;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if depth == 2
                    && let Some(s) = start.take()
                {
                    spans.push((s, last));
                }
                depth = depth.saturating_sub(1);
            }
            b',' if depth == 2 => {
                if let Some(s) = start.take() {
                    spans.push((s, last));
                }
            }
            _ => {}
        }
        i += 1;
        last = i;
    }
    spans
}

/// Cuts a message to [`MAX_MESSAGE_CHARS`].
fn cut(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        message
    } else {
        let mut short: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
        short.push('…');
        short
    }
}

/// A validated export from a document.
fn to_export(
    key: ServiceKey,
    document: Document,
    trust_domain: &str,
) -> Result<ServiceExport, DocumentError> {
    let mut ports = Vec::with_capacity(document.ports.len());
    for (i, Obj(port)) in document.ports.into_iter().enumerate() {
        let protocol = Protocol::parse(&format!("ports[{i}].protocol"), &port.protocol)
            .map_err(|e| DocumentError::member(e.field, e.rule))?;
        ports.push(ServicePort {
            name: port.name,
            port: port.port,
            protocol,
            app_protocol: port.app_protocol,
        });
    }
    let mut endpoints = Vec::with_capacity(document.endpoints.len());
    for (i, Obj(endpoint)) in document.endpoints.into_iter().enumerate() {
        let address = parse_ip(&format!("endpoints[{i}].address"), &endpoint.address)?;
        endpoints.push(Endpoint {
            address,
            ports: endpoint
                .ports
                .into_iter()
                .map(|Obj(p)| EndpointPort { name: p.name, port: p.port })
                .collect(),
            zone: endpoint.zone,
            region: endpoint.region,
            weight: endpoint.weight,
            ready: endpoint.ready,
        });
    }
    let scope = match document.scope {
        None => ExportScope::AllMembers,
        Some(Obj(scope)) => {
            let mut clusters = BTreeSet::new();
            for (i, cluster) in scope.clusters.into_iter().enumerate() {
                let field = || format!("scope.clusters[{i}]");
                crate::token::validate_cluster_name(&cluster)
                    .map_err(|e| DocumentError::member(field(), e.to_string()))?;
                if clusters.contains(&cluster) {
                    return Err(DocumentError::member(
                        field(),
                        format!("{cluster:?} is listed twice"),
                    ));
                }
                clusters.insert(cluster);
            }
            ExportScope::Clusters(clusters)
        }
    };
    let mode = match document.gateway {
        None => ExportMode::Direct,
        Some(Obj(gateway)) => ExportMode::Gateway {
            address: parse_ip("gateway.address", &gateway.address)?,
            port: gateway.port,
        },
    };
    let export =
        ServiceExport { key, ports, endpoints, identities: document.identities, scope, mode };
    export.validate(trust_domain).map_err(document_error)?;
    Ok(export)
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, DocumentError> {
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        DocumentError::member(field, format!("{shown:?} is not an IP address"))
    })
}

/// A validation error with the field named as the document names it.
fn document_error(error: ExportError) -> DocumentError {
    let field =
        error.field.replace("app_protocol", "appProtocol").replace("mode.gateway.", "gateway.");
    DocumentError::member(field, error.rule)
}

// === writing ===

fn to_document(export: &ServiceExport) -> Document {
    Document {
        namespace: None,
        name: None,
        ports: export
            .ports
            .iter()
            .map(|p| {
                Obj(PortDoc {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol.as_str().to_string(),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect(),
        endpoints: export
            .endpoints
            .iter()
            .map(|e| {
                Obj(EndpointDoc {
                    address: e.address.to_string(),
                    zone: e.zone.clone(),
                    region: e.region.clone(),
                    weight: e.weight,
                    ready: e.ready,
                    ports: e
                        .ports
                        .iter()
                        .map(|p| Obj(EndpointPortDoc { name: p.name.clone(), port: p.port }))
                        .collect(),
                })
            })
            .collect(),
        identities: export.identities.clone(),
        scope: match &export.scope {
            ExportScope::AllMembers => None,
            ExportScope::Clusters(clusters) => {
                Some(Obj(ScopeDoc { clusters: clusters.iter().cloned().collect() }))
            }
        },
        gateway: match export.mode {
            ExportMode::Direct => None,
            ExportMode::Gateway { address, port } => {
                Some(Obj(GatewayDoc { address: address.to_string(), port }))
            }
        },
    }
}

/// The export document of `export` (without namespace and name, which the etcd key
/// holds): [`parse_export_document`] of it gives `export` back. Compact, members in a
/// fixed order, defaults written out except empty strings and lists.
#[must_use]
pub fn export_document_json(export: &ServiceExport) -> String {
    serde_json::to_string(&to_document(export)).unwrap_or_default()
}

/// A static exports file holding `exports` (each entry with its namespace and name):
/// [`parse_export_file`] of it gives them back.
#[must_use]
pub fn export_file_json(exports: &[ServiceExport]) -> String {
    let file = FileDoc {
        exports: exports
            .iter()
            .map(|export| {
                Obj(Document {
                    namespace: Some(export.key.namespace.clone()),
                    name: Some(export.key.name.clone()),
                    ..to_document(export)
                })
            })
            .collect(),
    };
    serde_json::to_string_pretty(&file).unwrap_or_default()
}

#[cfg(test)]
mod tests;
