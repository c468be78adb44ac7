//! The value tree as JSON: parsing with duplicate-key and depth checks, the
//! tagged node encoding, and the canonical writer.
//!
//! A [`Node`] is a [`Value`] whose large leaves (tensors, bytes, long
//! strings, pickles) are replaced by indices into a table of blobs that live
//! in the container's data section. The container code turns blobs into
//! byte ranges; this module only knows indices and names.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io::Write as _;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::error::CodecError;
use crate::value::DType;

/// Strings longer than this many bytes travel as a `$str` blob, not inline,
/// so the JSON header stays small and fast to parse.
pub const INLINE_STR_MAX: usize = 64 * 1024;

/// Key of the safetensors `__metadata__` entry that holds the value tree.
pub const METADATA_KEY: &str = "comfy_remote";
/// The key of a packed tensor's node (§2.7).
pub const PACKED_KEY: &str = "$packed";

// ---------------------------------------------------------------------------
// Generic JSON with duplicate detection and a depth cap.
// ---------------------------------------------------------------------------

/// Parsed JSON that keeps integer vs float literals apart and keeps object
/// keys in order (duplicates are kept here and rejected with a path later).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) => "an integer",
            Json::Float(_) => "a float",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// What went wrong inside serde's visitor, beyond its own error text.
#[derive(Default)]
struct Flags {
    too_deep: Cell<bool>,
    /// An integer literal that does not fit in i64.
    overflow: Cell<Option<u64>>,
}

struct JsonSeed<'c> {
    depth_left: usize,
    flags: &'c Flags,
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Json;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl JsonSeed<'_> {
    fn child<E: de::Error>(&self) -> Result<JsonSeed<'_>, E> {
        if self.depth_left == 0 {
            self.flags.too_deep.set(true);
            return Err(E::custom("nesting too deep"));
        }
        Ok(JsonSeed {
            depth_left: self.depth_left - 1,
            flags: self.flags,
        })
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        // An integer literal is an Int; one that does not fit i64 would
        // silently change meaning if read as anything else.
        i64::try_from(v).map(Json::Int).map_err(|_| {
            self.flags.overflow.set(Some(v));
            E::custom(format!("integer {v} does not fit in a signed 64-bit int"))
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let child = self.child()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(JsonSeed {
            depth_left: child.depth_left,
            flags: child.flags,
        })? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let child = self.child()?;
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(JsonSeed {
                depth_left: child.depth_left,
                flags: child.flags,
            })?;
            items.push((key, value));
        }
        Ok(Json::Object(items))
    }
}

/// Parse JSON text, allowing at most `max_depth` nested arrays/objects.
/// `what` names the document in errors.
pub(crate) fn parse_json(text: &[u8], max_depth: usize, what: &str) -> Result<Json, CodecError> {
    let flags = Flags::default();
    let mut de = serde_json::Deserializer::from_slice(text);
    let parsed = JsonSeed {
        depth_left: max_depth,
        flags: &flags,
    }
    .deserialize(&mut de)
    .and_then(|j| de.end().map(|()| j));
    match parsed {
        Ok(j) => Ok(j),
        // serde_json's own recursion guard (128 levels) also means "too deep".
        Err(e) if flags.too_deep.get() || e.to_string().starts_with("recursion limit exceeded") => {
            Err(CodecError::TooDeep {
                path: what.to_owned(),
                limit: max_depth,
            })
        }
        // Valid JSON, but not a value this protocol carries: a value error,
        // as in a container, not a malformed document.
        Err(_) if flags.overflow.get().is_some() => Err(CodecError::InvalidNode {
            path: what.to_owned(),
            reason: format!(
                "the integer {} does not fit in a signed 64-bit int",
                flags.overflow.get().unwrap_or_default()
            ),
        }),
        Err(e) => Err(CodecError::InvalidHeader {
            message: format!("{what}: {e}"),
        }),
    }
}

/// Reject duplicate keys in an object, naming the first one found.
pub(crate) fn check_unique_keys(items: &[(String, Json)], path: &Path) -> Result<(), CodecError> {
    let mut seen = HashSet::with_capacity(items.len());
    for (k, _) in items {
        if !seen.insert(k.as_str()) {
            return Err(CodecError::DuplicateKey {
                path: path.to_string(),
                key: k.clone(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Paths for error messages.
// ---------------------------------------------------------------------------

/// Where in a payload a node sits, rendered like `image.samples[2]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Path(Vec<Seg>);

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Path {
    pub(crate) fn root(name: &str) -> Path {
        Path(vec![Seg::Key(name.to_owned())])
    }
    pub(crate) fn key(&mut self, k: &str) {
        self.0.push(Seg::Key(k.to_owned()));
    }
    pub(crate) fn index(&mut self, i: usize) {
        self.0.push(Seg::Index(i));
    }
    pub(crate) fn pop(&mut self) {
        self.0.pop();
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<root>");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Nodes.
// ---------------------------------------------------------------------------

/// A value tree whose data-section leaves are blob indices.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Tuple(Vec<Node>),
    Dict(Vec<(String, Node)>),
    /// `{"$t": name}`: a tensor of any dtype and shape.
    Tensor(usize),
    /// `{"$bytes": name}`: a 1-D U8 blob.
    Bytes(usize),
    /// `{"$str": name}`: UTF-8 text in a 1-D U8 blob.
    LongStr(usize),
    /// `{"$pickle": name, "sig": hex}`: a signed pickle in a 1-D U8 blob.
    Pickle {
        blob: usize,
        sig: String,
    },
    /// `{"$packed": name, "dtype": .., "shape": [..], "codec": ..}`: a
    /// tensor of `dtype` and `shape` whose bytes are packed with `codec` in
    /// a 1-D U8 blob (§2.7).
    Packed {
        blob: usize,
        codec: crate::packed::Codec,
        dtype: DType,
        shape: Vec<usize>,
    },
}

/// The extra keys a tag allows besides itself.
fn tag_keys(tag: &str) -> &'static [&'static str] {
    match tag {
        "$pickle" => &["sig"],
        PACKED_KEY => &["dtype", "shape", "codec"],
        _ => &[],
    }
}

/// One named entry of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    pub name: String,
    pub comfy_type: Option<String>,
    pub value: Node,
}

/// What the tree parser needs to know about the blobs it may refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Whether a signature is 64 lower-case hex digits (an HMAC-SHA256).
pub fn is_signature(sig: &str) -> bool {
    sig.len() == 64 && sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Turns parsed JSON into nodes, resolving references against `blobs` and
/// making sure each blob is used exactly once.
pub(crate) struct TreeParser<'b> {
    blobs: &'b [BlobInfo],
    by_name: std::collections::HashMap<&'b str, usize>,
    used: Vec<bool>,
    max_depth: usize,
}

impl<'b> TreeParser<'b> {
    pub(crate) fn new(blobs: &'b [BlobInfo], max_depth: usize) -> Self {
        let by_name = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        TreeParser {
            blobs,
            by_name,
            used: vec![false; blobs.len()],
            max_depth,
        }
    }

    /// Parse `{"v":1,"entries":[...]}`.
    pub(crate) fn document(&mut self, doc: &Json) -> Result<Vec<NodeEntry>, CodecError> {
        let root = Path::default();
        let Json::Object(items) = doc else {
            return Err(invalid(
                &root,
                format!("expected an object, found {}", doc.kind()),
            ));
        };
        check_unique_keys(items, &root)?;
        let mut version = None;
        let mut entries = None;
        for (k, v) in items {
            match k.as_str() {
                "v" => version = Some(v),
                "entries" => entries = Some(v),
                other => return Err(invalid(&root, format!("unknown field `{other}`"))),
            }
        }
        match version {
            Some(Json::Int(1)) => {}
            Some(Json::Int(n)) => {
                return Err(CodecError::UnsupportedVersion {
                    version: n.to_string(),
                })
            }
            Some(other) => {
                return Err(invalid(
                    &root,
                    format!("`v` must be 1, found {}", other.kind()),
                ))
            }
            None => return Err(invalid(&root, "missing field `v`".into())),
        }
        let Some(Json::Array(list)) = entries else {
            return Err(invalid(&root, "`entries` must be an array".into()));
        };
        let mut out = Vec::with_capacity(list.len());
        let mut names = HashSet::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            let mut path = Path::default();
            path.key("entries");
            path.index(i);
            let entry = self.entry(e, &mut path)?;
            if !names.insert(entry.name.clone()) {
                return Err(CodecError::DuplicateEntry { name: entry.name });
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn entry(&mut self, e: &Json, path: &mut Path) -> Result<NodeEntry, CodecError> {
        let Json::Object(items) = e else {
            return Err(invalid(
                path,
                format!("an entry must be an object, found {}", e.kind()),
            ));
        };
        check_unique_keys(items, path)?;
        let (mut name, mut ty, mut value) = (None, None, None);
        for (k, v) in items {
            match k.as_str() {
                "name" => name = Some(v),
                "type" => ty = Some(v),
                "value" => value = Some(v),
                other => return Err(invalid(path, format!("unknown entry field `{other}`"))),
            }
        }
        let Some(Json::Str(name)) = name else {
            return Err(invalid(path, "entry `name` must be a string".into()));
        };
        let comfy_type = match ty {
            None | Some(Json::Null) => None,
            Some(Json::Str(t)) => Some(t.clone()),
            Some(other) => {
                return Err(invalid(
                    path,
                    format!(
                        "entry `type` must be a string or null, found {}",
                        other.kind()
                    ),
                ))
            }
        };
        let Some(value) = value else {
            return Err(invalid(path, "entry has no `value`".into()));
        };
        let mut vpath = Path::root(name);
        let value = self.node(value, &mut vpath, 0)?;
        Ok(NodeEntry {
            name: name.clone(),
            comfy_type,
            value,
        })
    }

    /// Parse the value of one `inputs` member of the plain JSON form.
    pub(crate) fn value(&mut self, name: &str, j: &Json) -> Result<Node, CodecError> {
        self.node(j, &mut Path::root(name), 0)
    }

    fn node(&mut self, j: &Json, path: &mut Path, depth: usize) -> Result<Node, CodecError> {
        let nested = |path: &Path| {
            if depth >= self.max_depth {
                Err(CodecError::TooDeep {
                    path: path.to_string(),
                    limit: self.max_depth,
                })
            } else {
                Ok(())
            }
        };
        Ok(match j {
            Json::Null => Node::Null,
            Json::Bool(b) => Node::Bool(*b),
            Json::Int(i) => Node::Int(*i),
            Json::Float(f) => Node::Float(*f),
            Json::Str(s) => Node::Str(s.clone()),
            Json::Array(items) => {
                nested(path)?;
                Node::List(self.items(items, path, depth)?)
            }
            Json::Object(items) => {
                check_unique_keys(items, path)?;
                let mut tags = items.iter().filter(|(k, _)| k.starts_with('$'));
                let Some((tag, body)) = tags.next() else {
                    nested(path)?;
                    return Ok(Node::Dict(self.members(items, path, depth)?));
                };
                if let Some((second, _)) = tags.next() {
                    return Err(invalid(
                        path,
                        format!("an object may have one `$` tag, found `{tag}` and `{second}`"),
                    ));
                }
                let extra: Vec<&str> = items
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| *k != tag && !tag_keys(tag).contains(k))
                    .collect();
                if !extra.is_empty() {
                    return Err(invalid(
                        path,
                        format!("tag `{tag}` allows no other keys, found {extra:?}"),
                    ));
                }
                match tag.as_str() {
                    "$tuple" => {
                        nested(path)?;
                        let Json::Array(items) = body else {
                            return Err(invalid(path, "`$tuple` must hold an array".into()));
                        };
                        Node::Tuple(self.items(items, path, depth)?)
                    }
                    "$dict" => {
                        nested(path)?;
                        let Json::Object(members) = body else {
                            return Err(invalid(path, "`$dict` must hold an object".into()));
                        };
                        check_unique_keys(members, path)?;
                        Node::Dict(self.members(members, path, depth)?)
                    }
                    "$f" => match body {
                        Json::Str(s) if s == "nan" => Node::Float(f64::NAN),
                        Json::Str(s) if s == "inf" => Node::Float(f64::INFINITY),
                        Json::Str(s) if s == "-inf" => Node::Float(f64::NEG_INFINITY),
                        _ => {
                            return Err(invalid(
                                path,
                                "`$f` must be \"nan\", \"inf\" or \"-inf\"".into(),
                            ))
                        }
                    },
                    "$t" => Node::Tensor(self.reference(body, path, None)?),
                    "$bytes" => Node::Bytes(self.reference(body, path, Some("$bytes"))?),
                    "$str" => Node::LongStr(self.reference(body, path, Some("$str"))?),
                    "$pickle" => {
                        let blob = self.reference(body, path, Some("$pickle"))?;
                        let sig = items.iter().find(|(k, _)| k == "sig").map(|(_, v)| v);
                        let Some(Json::Str(sig)) = sig else {
                            return Err(invalid(
                                path,
                                "`$pickle` needs a `sig` string (hex HMAC-SHA256)".into(),
                            ));
                        };
                        if !is_signature(sig) {
                            return Err(invalid(
                                path,
                                "`sig` must be 64 lower-case hex digits".into(),
                            ));
                        }
                        Node::Pickle {
                            blob,
                            sig: sig.clone(),
                        }
                    }
                    PACKED_KEY => self.packed(items, body, path)?,
                    other => {
                        return Err(CodecError::UnknownTag {
                            path: path.to_string(),
                            tag: other.to_owned(),
                        })
                    }
                }
            }
        })
    }

    fn items(
        &mut self,
        items: &[Json],
        path: &mut Path,
        depth: usize,
    ) -> Result<Vec<Node>, CodecError> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            path.index(i);
            out.push(self.node(item, path, depth + 1)?);
            path.pop();
        }
        Ok(out)
    }

    fn members(
        &mut self,
        items: &[(String, Json)],
        path: &mut Path,
        depth: usize,
    ) -> Result<Vec<(String, Node)>, CodecError> {
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            path.key(k);
            out.push((k.clone(), self.node(v, path, depth + 1)?));
            path.pop();
        }
        Ok(out)
    }

    /// `{"$packed": name, "dtype", "shape", "codec"}`: every key present and
    /// of its type, the codec known, the dtype one the protocol carries.
    fn packed(
        &mut self,
        items: &[(String, Json)],
        body: &Json,
        path: &Path,
    ) -> Result<Node, CodecError> {
        let get = |k: &str| items.iter().find(|(m, _)| m == k).map(|(_, v)| v);
        let codec = match get("codec") {
            Some(Json::Str(c)) => crate::packed::Codec::parse(c).ok_or_else(|| {
                invalid(
                    path,
                    format!(
                        "unknown codec {c:?}; this build reads {}",
                        crate::packed::CODECS.join(", ")
                    ),
                )
            })?,
            _ => return Err(invalid(path, "`$packed` needs a `codec` string".into())),
        };
        let dtype = match get("dtype") {
            Some(Json::Str(d)) => DType::parse(d)
                .ok_or_else(|| invalid(path, format!("`$packed` has an unknown dtype {d:?}")))?,
            _ => return Err(invalid(path, "`$packed` needs a `dtype` string".into())),
        };
        let shape = match get("shape") {
            Some(Json::Array(dims)) => dims
                .iter()
                .map(|d| match d {
                    Json::Int(n) if *n >= 0 => usize::try_from(*n).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    invalid(
                        path,
                        "`shape` must be an array of non-negative integers".into(),
                    )
                })?,
            _ => return Err(invalid(path, "`$packed` needs a `shape` array".into())),
        };
        let blob = self.reference(body, path, Some(PACKED_KEY))?;
        Ok(Node::Packed {
            blob,
            codec,
            dtype,
            shape,
        })
    }

    /// Resolve a blob name; `byte_blob` names the tag when the blob must be
    /// a 1-D U8 tensor.
    fn reference(
        &mut self,
        body: &Json,
        path: &Path,
        byte_blob: Option<&str>,
    ) -> Result<usize, CodecError> {
        let Json::Str(name) = body else {
            return Err(invalid(
                path,
                "a reference must be a tensor name (string)".into(),
            ));
        };
        let Some(&idx) = self.by_name.get(name.as_str()) else {
            return Err(CodecError::DanglingRef {
                path: path.to_string(),
                tensor: name.clone(),
            });
        };
        if std::mem::replace(&mut self.used[idx], true) {
            return Err(CodecError::DuplicateRef {
                path: path.to_string(),
                tensor: name.clone(),
            });
        }
        let blob = &self.blobs[idx];
        if let Some(tag) = byte_blob {
            if blob.dtype != DType::U8 || blob.shape.len() != 1 {
                return Err(invalid(
                    path,
                    format!(
                        "`{tag}` needs a 1-D U8 tensor, `{name}` is {} {:?}",
                        blob.dtype, blob.shape
                    ),
                ));
            }
        }
        Ok(idx)
    }

    /// Every blob must be used by exactly one reference.
    pub(crate) fn finish(self) -> Result<(), CodecError> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(CodecError::UnreferencedTensor {
                tensor: self.blobs[i].name.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Parse a tree document (`{"v":1,"entries":[...]}`) whose references name
/// `blobs`; every blob must be referenced exactly once.
pub fn parse_tree(
    text: &[u8],
    blobs: &[BlobInfo],
    max_depth: usize,
) -> Result<Vec<NodeEntry>, CodecError> {
    let json = parse_json(
        text,
        max_depth.saturating_mul(2).saturating_add(4),
        "value tree",
    )?;
    let mut parser = TreeParser::new(blobs, max_depth);
    let entries = parser.document(&json)?;
    parser.finish()?;
    Ok(entries)
}

fn invalid(path: &Path, reason: String) -> CodecError {
    CodecError::InvalidNode {
        path: path.to_string(),
        reason,
    }
}

// ---------------------------------------------------------------------------
// Canonical writer.
// ---------------------------------------------------------------------------

/// Write the tree document `{"v":1,"entries":[...]}` in canonical form: no
/// whitespace, keys in order, floats always with a fraction or exponent.
/// `name` gives the reference name of a blob index.
pub fn write_document(entries: &[NodeEntry], name: &dyn Fn(usize) -> String) -> String {
    let mut out = Vec::with_capacity(64 * (entries.len() + 1));
    out.extend_from_slice(b"{\"v\":1,\"entries\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_str(&mut out, &e.name);
        out.extend_from_slice(b",\"type\":");
        match &e.comfy_type {
            Some(t) => write_str(&mut out, t),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"value\":");
        write_node(&mut out, &e.value, name);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    // Only valid UTF-8 (JSON text built from `str`s) was written.
    String::from_utf8(out).unwrap_or_default()
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_ref(out: &mut Vec<u8>, tag: &str, idx: usize, name: &dyn Fn(usize) -> String) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(b"\":");
    write_str(out, &name(idx));
}

fn write_node(out: &mut Vec<u8>, node: &Node, name: &dyn Fn(usize) -> String) {
    match node {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Node::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Node::Float(f) if f.is_nan() => out.extend_from_slice(b"{\"$f\":\"nan\"}"),
        Node::Float(f) if f.is_infinite() && *f > 0.0 => out.extend_from_slice(b"{\"$f\":\"inf\"}"),
        Node::Float(f) if f.is_infinite() => out.extend_from_slice(b"{\"$f\":\"-inf\"}"),
        Node::Float(f) => {
            // serde_json prints the shortest round-trip form and always keeps
            // a `.` or an exponent (1.0, 1e30), which is what tells a float
            // from an int on the way back.
            let _ = serde_json::to_writer(&mut *out, f);
        }
        Node::Str(s) => write_str(out, s),
        Node::List(items) => write_items(out, items, name),
        Node::Tuple(items) => {
            out.extend_from_slice(b"{\"$tuple\":");
            write_items(out, items, name);
            out.push(b'}');
        }
        Node::Dict(members) => {
            let tagged = members.iter().any(|(k, _)| k.starts_with('$'));
            if tagged {
                out.extend_from_slice(b"{\"$dict\":");
            }
            out.push(b'{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_node(out, v, name);
            }
            out.push(b'}');
            if tagged {
                out.push(b'}');
            }
        }
        Node::Tensor(i) => {
            write_ref(out, "$t", *i, name);
            out.push(b'}');
        }
        Node::Packed {
            blob,
            codec,
            dtype,
            shape,
        } => {
            write_ref(out, PACKED_KEY, *blob, name);
            out.extend_from_slice(b",\"dtype\":");
            write_str(out, dtype.as_str());
            out.extend_from_slice(b",\"shape\":");
            let _ = serde_json::to_writer(&mut *out, shape);
            out.extend_from_slice(b",\"codec\":");
            write_str(out, codec.name());
            out.push(b'}');
        }
        Node::Bytes(i) => {
            write_ref(out, "$bytes", *i, name);
            out.push(b'}');
        }
        Node::LongStr(i) => {
            write_ref(out, "$str", *i, name);
            out.push(b'}');
        }
        Node::Pickle { blob, sig } => {
            write_ref(out, "$pickle", *blob, name);
            out.extend_from_slice(b",\"sig\":");
            write_str(out, sig);
            out.push(b'}');
        }
    }
}

fn write_items(out: &mut Vec<u8>, items: &[Node], name: &dyn Fn(usize) -> String) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_node(out, item, name);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<NodeEntry>, CodecError> {
        let json = parse_json(text.as_bytes(), 200, "test")?;
        let mut p = TreeParser::new(&[], 64);
        let out = p.document(&json)?;
        p.finish()?;
        Ok(out)
    }

    #[test]
    fn integers_and_floats_stay_apart() {
        let doc = r#"{"v":1,"entries":[{"name":"a","type":null,"value":[1,1.0,-0.0,1e30,{"$f":"nan"}]}]}"#;
        let entries = parse(doc).expect("parse");
        let Node::List(items) = &entries[0].value else {
            panic!("not a list")
        };
        assert_eq!(items[0], Node::Int(1));
        assert_eq!(items[1], Node::Float(1.0));
        assert!(matches!(items[2], Node::Float(f) if f == 0.0 && f.is_sign_negative()));
        assert_eq!(items[3], Node::Float(1e30));
        assert!(matches!(items[4], Node::Float(f) if f.is_nan()));
        let written = write_document(&entries, &|i| format!("t{i}"));
        assert_eq!(
            written,
            r#"{"v":1,"entries":[{"name":"a","type":null,"value":[1,1.0,-0.0,1e+30,{"$f":"nan"}]}]}"#
        );
    }

    #[test]
    fn duplicate_keys_are_rejected_with_their_path() {
        let doc = r#"{"v":1,"entries":[{"name":"a","type":null,"value":{"x":{"k":1,"k":2}}}]}"#;
        let err = parse(doc).expect_err("duplicate");
        assert_eq!(
            err,
            CodecError::DuplicateKey {
                path: "a.x".into(),
                key: "k".into()
            }
        );
    }

    #[test]
    fn unknown_tags_and_mixed_tags_are_rejected() {
        let doc = r#"{"v":1,"entries":[{"name":"a","type":null,"value":{"$set":[1]}}]}"#;
        assert!(matches!(parse(doc), Err(CodecError::UnknownTag { .. })));
        let doc = r#"{"v":1,"entries":[{"name":"a","type":null,"value":{"$tuple":[],"x":1}}]}"#;
        assert!(matches!(parse(doc), Err(CodecError::InvalidNode { .. })));
    }

    #[test]
    fn integer_beyond_i64_is_rejected() {
        let doc = r#"{"v":1,"entries":[{"name":"a","type":null,"value":9223372036854775808}]}"#;
        // Valid JSON, but not a value of the protocol: a value error.
        assert!(matches!(parse(doc), Err(CodecError::InvalidNode { .. })));
    }
}
