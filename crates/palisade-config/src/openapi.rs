//! `[openapi]`: the API's contract, enforced at the edge. The spec (OpenAPI 3.0 or 3.1, YAML or
//! JSON, local `$ref`s) is compiled once into operations — a path template, a method, and the
//! JSON Schemas of their path, query and header parameters and JSON request bodies — that
//! [`OpenApi::check`] holds each request to. Invalid requests get a short, stable code and the
//! failing location (`/query/status: not one of the allowed values`), never the schema.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

/// What a failing check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenApiMode {
    /// Refuse: 400 (invalid), 404 (unknown path), 405 (wrong method).
    Enforce,
    /// Decide and log, forward anyway.
    Shadow,
    /// Forward, with the breach as a signal in the score.
    Signal,
}

/// A compiled spec.
#[derive(Clone)]
pub struct OpenApi {
    /// Path prefix the spec's paths live under (the first server's path, or `base_path`).
    pub base_path: String,
    /// What a failing check does.
    pub mode: OpenApiMode,
    /// Largest JSON body read to validate it.
    pub max_body: usize,
    ops: Vec<Operation>,
    /// The operations with an `operationId`, as routes.
    pub policies: Vec<OperationPolicy>,
}

impl std::fmt::Debug for OpenApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApi")
            .field("base_path", &self.base_path)
            .field("operations", &self.ops.len())
            .finish()
    }
}

#[derive(Clone)]
struct Operation {
    /// Path segments: literal text, or a parameter's name.
    segments: Vec<Segment>,
    method: http::Method,
    /// `operationId`, or `METHOD /path`.
    name: Arc<str>,
    params: Vec<Param>,
    body: Option<Body>,
    /// The API keys the operation's security asks for: any one alternative, all of its keys
    /// (empty: nothing checked).
    credentials: Vec<Vec<(Location, String)>>,
    /// `x-palisade-mode`: this operation's mode over the spec's.
    mode: Option<OpenApiMode>,
}

#[derive(Clone)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Clone)]
struct Param {
    name: String,
    location: Location,
    required: bool,
    /// The schema's type, for turning text into a JSON value before validating.
    kind: Kind,
    validator: Option<Arc<jsonschema::Validator>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Location {
    Path,
    Query,
    Header,
}

impl Location {
    fn name(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    String,
    Integer,
    Number,
    Boolean,
    Array(ItemKind),
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ItemKind {
    String,
    Integer,
    Number,
    Boolean,
}

/// A form body's schema, and its properties' kinds (form values are text).
type FormSchema = (Arc<jsonschema::Validator>, Vec<(String, Kind)>);

/// An operation and the path parameters its template captured.
type Matched<'s> = (&'s Operation, Vec<(&'s str, String)>);

#[derive(Clone)]
struct Body {
    required: bool,
    /// Declared media types (lower case, without parameters).
    types: Vec<String>,
    /// The `application/json` schema, when there is one.
    json: Option<Arc<jsonschema::Validator>>,
    /// The `application/x-www-form-urlencoded` schema and its properties' kinds.
    form: Option<FormSchema>,
}

/// The request as the check reads it.
#[derive(Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: &'a http::Method,
    /// Path, as received (percent-encoded).
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a http::HeaderMap,
    /// The body, when read (`needs_body`).
    pub body: Option<&'a [u8]>,
}

/// Why a request does not conform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// No path of the spec matches.
    UnknownEndpoint,
    /// The path exists, not with this method; the methods it has.
    MethodNotAllowed(Vec<String>),
    /// The operation's security asks for an API key the request does not carry.
    MissingCredentials(String),
    /// A parameter or the body is invalid: a stable code and where.
    Invalid {
        /// `invalid_parameter`, `missing_parameter`, `invalid_body`, `missing_body`,
        /// `unsupported_media_type`, `body_too_large`.
        code: &'static str,
        /// `/query/status: not one of the allowed values`.
        detail: String,
    },
}

/// Most errors reported per request (the first is enough for a client to fix its call).
const MAX_DETAIL: usize = 200;

impl OpenApi {
    /// Whether `path` is under the spec (the base path).
    fn relative<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.base_path.is_empty() || self.base_path == "/" {
            return Some(path);
        }
        let rest = path.strip_prefix(self.base_path.as_str())?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }

    /// The operation a request is for, or why there is none. `Ok(None)`: outside the base path.
    fn operation<'s>(
        &'s self,
        method: &http::Method,
        path: &str,
    ) -> Result<Option<Matched<'s>>, Violation> {
        let Some(rel) = self.relative(path) else {
            return Ok(None);
        };
        let parts: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
        let mut allowed = Vec::new();
        for op in &self.ops {
            let Some(captures) = matches(&op.segments, &parts) else {
                continue;
            };
            if op.method == method {
                return Ok(Some((op, captures)));
            }
            allowed.push(op.method.to_string());
        }
        if allowed.is_empty() {
            Err(Violation::UnknownEndpoint)
        } else {
            allowed.sort();
            allowed.dedup();
            Err(Violation::MethodNotAllowed(allowed))
        }
    }

    /// Whether the body must be read to check this request.
    pub fn needs_body(&self, method: &http::Method, path: &str) -> bool {
        matches!(self.operation(method, path), Ok(Some((op, _))) if op.body.as_ref().is_some_and(|b| b.json.is_some() || b.form.is_some()))
    }

    /// The operation's name (`operationId`), for the decision log.
    pub fn operation_name(&self, method: &http::Method, path: &str) -> Option<Arc<str>> {
        match self.operation(method, path) {
            Ok(Some((op, _))) => Some(op.name.clone()),
            _ => None,
        }
    }

    /// What a breach of this request does: the matched operation's `x-palisade-mode`, else the
    /// spec's mode (also for unknown paths and methods).
    pub fn mode_for(&self, method: &http::Method, path: &str) -> OpenApiMode {
        match self.operation(method, path) {
            Ok(Some((op, _))) => op.mode.unwrap_or(self.mode),
            _ => self.mode,
        }
    }

    /// Holds a request to the spec. `Ok` when it conforms (or is outside the base path).
    pub fn check(&self, req: &Request<'_>) -> Result<(), Violation> {
        let Some((op, captures)) = self.operation(req.method, req.path)? else {
            return Ok(());
        };
        let query: Vec<(String, String)> = req
            .query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if !op.credentials.is_empty() {
            let present = |(l, n): &(Location, String)| match l {
                Location::Header => req.headers.contains_key(n.as_str()),
                Location::Query => query.iter().any(|(k, _)| k == n),
                Location::Path => false,
            };
            if !op.credentials.iter().any(|all| all.iter().all(present)) {
                let names: Vec<&str> = op
                    .credentials
                    .iter()
                    .flatten()
                    .map(|(_, n)| n.as_str())
                    .collect();
                return Err(Violation::MissingCredentials(format!(
                    "an API key is required ({})",
                    names.join(" or ")
                )));
            }
        }
        for p in &op.params {
            let values: Vec<String> = match p.location {
                Location::Path => captures
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                Location::Query => query
                    .iter()
                    .filter(|(k, _)| *k == p.name || k.strip_suffix("[]") == Some(&p.name))
                    .map(|(_, v)| v.clone())
                    .collect(),
                Location::Header => req
                    .headers
                    .get_all(p.name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .collect(),
            };
            let at = format!("/{}/{}", p.location.name(), p.name);
            if values.is_empty() {
                if p.required {
                    return Err(Violation::Invalid {
                        code: "missing_parameter",
                        detail: format!("{at}: required"),
                    });
                }
                continue;
            }
            let value = match typed(p.kind, &values) {
                Some(v) => v,
                None => {
                    return Err(Violation::Invalid {
                        code: "invalid_parameter",
                        detail: format!("{at}: {}", kind_message(p.kind)),
                    });
                }
            };
            if let Some(v) = &p.validator
                && let Some(e) = v.iter_errors(&value).next()
            {
                return Err(Violation::Invalid {
                    code: "invalid_parameter",
                    detail: bounded(format!("{at}{}: {}", e.instance_path(), short(&e))),
                });
            }
        }
        if let Some(b) = &op.body {
            let present = req.body.is_some_and(|b| !b.is_empty())
                || req.headers.contains_key(http::header::CONTENT_TYPE)
                || req
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim() != "0")
                || req.headers.contains_key(http::header::TRANSFER_ENCODING);
            if !present {
                if b.required {
                    return Err(Violation::Invalid {
                        code: "missing_body",
                        detail: "/body: required".to_owned(),
                    });
                }
                return Ok(());
            }
            let media = media_type(req.headers).unwrap_or_default();
            let declared = b.types.iter().any(|t| {
                t == &media
                    || t == "*/*"
                    || t.strip_suffix("/*").is_some_and(|p| {
                        media.starts_with(p) && media.as_bytes().get(p.len()) == Some(&b'/')
                    })
            });
            if !declared {
                return Err(Violation::Invalid {
                    code: "unsupported_media_type",
                    detail: bounded(format!(
                        "/body: content type {media:?} is not accepted here"
                    )),
                });
            }
            if media == "application/x-www-form-urlencoded"
                && let (Some((v, kinds)), Some(bytes)) = (&b.form, req.body)
            {
                let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, val) in form_urlencoded::parse(bytes) {
                    fields
                        .entry(k.into_owned())
                        .or_default()
                        .push(val.into_owned());
                }
                let mut obj = serde_json::Map::new();
                for (k, vals) in fields {
                    let kind = kinds
                        .iter()
                        .find(|(n, _)| *n == k)
                        .map_or(Kind::String, |(_, kd)| *kd);
                    let Some(value) = typed(kind, &vals) else {
                        return Err(Violation::Invalid {
                            code: "invalid_body",
                            detail: bounded(format!("/body/{k}: {}", kind_message(kind))),
                        });
                    };
                    obj.insert(k, value);
                }
                if let Some(e) = v.iter_errors(&Value::Object(obj)).next() {
                    return Err(Violation::Invalid {
                        code: "invalid_body",
                        detail: bounded(format!("/body{}: {}", e.instance_path(), short(&e))),
                    });
                }
            }
            if media == "application/json"
                && let (Some(v), Some(bytes)) = (&b.json, req.body)
            {
                let json: Value = match serde_json::from_slice(bytes) {
                    Ok(j) => j,
                    Err(_) => {
                        return Err(Violation::Invalid {
                            code: "invalid_body",
                            detail: "/body: not JSON".to_owned(),
                        });
                    }
                };
                if let Some(e) = v.iter_errors(&json).next() {
                    return Err(Violation::Invalid {
                        code: "invalid_body",
                        detail: bounded(format!("/body{}: {}", e.instance_path(), short(&e))),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A short message for a schema error: what was wrong, never the schema itself.
fn short(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    match e.kind() {
        K::Type { .. } => "wrong type".to_owned(),
        K::Required { property } => format!("{} is required", property),
        K::Enum { .. } | K::Constant { .. } => "not one of the allowed values".to_owned(),
        K::Format { format } => format!("not a {format}"),
        K::MinLength { .. } => "too short".to_owned(),
        K::MaxLength { .. } => "too long".to_owned(),
        K::Minimum { .. } | K::ExclusiveMinimum { .. } => "too small".to_owned(),
        K::Maximum { .. } | K::ExclusiveMaximum { .. } => "too large".to_owned(),
        K::MinItems { .. } => "too few items".to_owned(),
        K::MaxItems { .. } => "too many items".to_owned(),
        K::AdditionalProperties { unexpected } => {
            format!("unexpected property {}", unexpected.join(", "))
        }
        K::Pattern { .. } => "does not match the expected pattern".to_owned(),
        K::UniqueItems => "items are not unique".to_owned(),
        K::MultipleOf { .. } => "not an allowed multiple".to_owned(),
        _ => "not valid".to_owned(),
    }
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn kind_message(k: Kind) -> &'static str {
    match k {
        Kind::Integer | Kind::Array(ItemKind::Integer) => "not an integer",
        Kind::Number | Kind::Array(ItemKind::Number) => "not a number",
        Kind::Boolean | Kind::Array(ItemKind::Boolean) => "not true or false",
        _ => "not valid",
    }
}

/// Text values as the JSON value their schema describes (`None`: not that type).
fn typed(kind: Kind, values: &[String]) -> Option<Value> {
    let one = |k: ItemKind, s: &str| -> Option<Value> {
        match k {
            ItemKind::String => Some(Value::String(s.to_owned())),
            ItemKind::Integer => s.trim().parse::<i64>().ok().map(Value::from),
            ItemKind::Number => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
            ItemKind::Boolean => match s {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
        }
    };
    let first = values.first()?;
    match kind {
        Kind::String | Kind::Other => Some(Value::String(first.clone())),
        Kind::Integer => one(ItemKind::Integer, first),
        Kind::Number => one(ItemKind::Number, first),
        Kind::Boolean => one(ItemKind::Boolean, first),
        Kind::Array(item) => {
            // Repeated (`a=1&a=2`) or comma-separated (`a=1,2`).
            let parts: Vec<&str> = if values.len() == 1 {
                first.split(',').collect()
            } else {
                values.iter().map(String::as_str).collect()
            };
            parts
                .into_iter()
                .map(|p| one(item, p))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array)
        }
    }
}

/// The path parameters a template's segments capture from a path's, if it matches.
fn matches<'s>(segments: &'s [Segment], parts: &[&str]) -> Option<Vec<(&'s str, String)>> {
    if segments.len() != parts.len() {
        return None;
    }
    let mut out = Vec::new();
    for (s, p) in segments.iter().zip(parts) {
        match s {
            Segment::Literal(l) => {
                if l != p {
                    return None;
                }
            }
            Segment::Param(n) => {
                if p.is_empty() {
                    return None;
                }
                let v = percent_decode(p)?;
                out.push((n.as_str(), v));
            }
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The media type a message's `Content-Type` names, without parameters, lower-cased
/// (`application/json` of `Application/JSON; charset=utf-8`).
pub fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Loads and compiles a spec file; every problem with its location in the spec.
pub fn load(
    path: &Path,
    base_path: Option<&str>,
    mode: OpenApiMode,
    max_body: usize,
) -> Result<OpenApi, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("reading {}: {e}", path.display())])?;
    compile(&text, base_path, mode, max_body)
}

/// Compiles a spec's text (YAML or JSON).
pub fn compile(
    text: &str,
    base_path: Option<&str>,
    mode: OpenApiMode,
    max_body: usize,
) -> Result<OpenApi, Vec<String>> {
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| vec![format!("not JSON: {e}")])?
    } else {
        serde_saphyr::from_str(text).map_err(|e| vec![format!("not YAML: {e}")])?
    };
    let mut errors = Vec::new();
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    let v31 = version.starts_with("3.1");
    if !version.starts_with("3.0") && !v31 {
        errors.push(format!(
            "openapi: {version:?} is not OpenAPI 3.0 or 3.1 (Swagger 2.0 specs: convert them first)"
        ));
        return Err(errors);
    }
    let base = match base_path {
        Some(b) => b.trim_end_matches('/').to_owned(),
        None => doc
            .pointer("/servers/0/url")
            .and_then(Value::as_str)
            .map(server_path)
            .unwrap_or_default(),
    };
    let mut ops = Vec::new();
    let mut policies = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        errors.push("paths: missing".to_owned());
        return Err(errors);
    };
    for (template, item) in paths {
        let at = format!("paths.{template}");
        if !template.starts_with('/') {
            errors.push(format!("{at}: a path starts with /"));
            continue;
        }
        let item = match resolve(&doc, item, 0) {
            Ok(i) => i,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                continue;
            }
        };
        let segments: Vec<Segment> = template
            .trim_start_matches('/')
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(n) => Segment::Param(n.to_owned()),
                    None => Segment::Literal(s.to_owned()),
                },
            )
            .collect();
        let shared_params = item.get("parameters").cloned().unwrap_or(Value::Null);
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            let Some(op) = item.get(method) else { continue };
            let at = format!("{at}.{method}");
            let Ok(m) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            let name: Arc<str> = op
                .get("operationId")
                .and_then(Value::as_str)
                .map_or_else(|| Arc::from(format!("{} {template}", m)), Arc::from);
            let mut params: BTreeMap<(String, String), Value> = BTreeMap::new();
            for list in [&shared_params, op.get("parameters").unwrap_or(&Value::Null)] {
                for p in list.as_array().into_iter().flatten() {
                    match resolve(&doc, p, 0) {
                        Ok(p) => {
                            let n = p
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned();
                            let l = p.get("in").and_then(Value::as_str).unwrap_or("").to_owned();
                            params.insert((l, n), p.clone());
                        }
                        Err(e) => errors.push(format!("{at}.parameters: {e}")),
                    }
                }
            }
            let mut compiled = Vec::new();
            for ((location, pname), p) in params {
                let location = match location.as_str() {
                    "path" => Location::Path,
                    "query" => Location::Query,
                    "header" => Location::Header,
                    // Cookie parameters are not checked (a browser's cookies are not the
                    // API's contract).
                    "cookie" => continue,
                    other => {
                        errors.push(format!(
                            "{at}.parameters.{pname}: unknown location {other:?}"
                        ));
                        continue;
                    }
                };
                let required = location == Location::Path
                    || p.get("required").and_then(Value::as_bool).unwrap_or(false);
                let schema = p.get("schema").cloned().unwrap_or(Value::Bool(true));
                let schema = match schema_of(&doc, &schema, v31) {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(format!("{at}.parameters.{pname}.schema: {e}"));
                        continue;
                    }
                };
                let validator = match validator(&schema) {
                    Ok(v) => Some(Arc::new(v)),
                    Err(e) => {
                        errors.push(format!("{at}.parameters.{pname}.schema: {e}"));
                        None
                    }
                };
                compiled.push(Param {
                    name: if location == Location::Header {
                        pname.to_ascii_lowercase()
                    } else {
                        pname
                    },
                    location,
                    required,
                    kind: kind_of(&schema),
                    validator,
                });
            }
            let body = match op.get("requestBody").map(|b| resolve(&doc, b, 0)) {
                None => None,
                Some(Err(e)) => {
                    errors.push(format!("{at}.requestBody: {e}"));
                    None
                }
                Some(Ok(b)) => {
                    let content = b.get("content").and_then(Value::as_object);
                    let types: Vec<String> = content
                        .map(|c| {
                            c.keys()
                                .map(|k| {
                                    k.split(';')
                                        .next()
                                        .unwrap_or("")
                                        .trim()
                                        .to_ascii_lowercase()
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let media = |prefix: &str| {
                        content
                            .and_then(|c| c.iter().find(|(k, _)| k.starts_with(prefix)))
                            .and_then(|(_, m)| m.get("schema"))
                    };
                    let mut report = |r: Result<jsonschema::Validator, String>| match r {
                        Ok(v) => Some(Arc::new(v)),
                        Err(e) => {
                            errors.push(format!("{at}.requestBody: {e}"));
                            None
                        }
                    };
                    let json = media("application/json")
                        .map(|s| schema_of(&doc, s, v31))
                        .and_then(|s| report(s.and_then(|s| validator(&s))));
                    let form = media("application/x-www-form-urlencoded")
                        .map(|s| schema_of(&doc, s, v31).map(form_schema))
                        .and_then(|s| {
                            let kinds = s
                                .as_ref()
                                .ok()
                                .and_then(|s| s.get("properties"))
                                .and_then(Value::as_object)
                                .map(|p| p.iter().map(|(k, v)| (k.clone(), kind_of(v))).collect())
                                .unwrap_or_default();
                            report(s.and_then(|s| validator(&s))).map(|v| (v, kinds))
                        });
                    Some(Body {
                        required: b.get("required").and_then(Value::as_bool).unwrap_or(false),
                        types,
                        json,
                        form,
                    })
                }
            };
            let credentials = credentials(&doc, op.get("security").or(doc.get("security")));
            if let Some(p) = operation_policy(op, &m, &base, template, &at, &mut errors) {
                policies.push(p);
            }
            let op_mode = match op.get("x-palisade-mode") {
                None => None,
                Some(Value::String(v)) if v == "enforce" => Some(OpenApiMode::Enforce),
                Some(Value::String(v)) if v == "shadow" => Some(OpenApiMode::Shadow),
                Some(Value::String(v)) if v == "signal" => Some(OpenApiMode::Signal),
                Some(v) => {
                    errors.push(format!(
                        "{at}.x-palisade-mode: {v} is not \"enforce\", \"shadow\" or \"signal\""
                    ));
                    None
                }
            };
            ops.push(Operation {
                segments: segments.clone(),
                method: m,
                name,
                params: compiled,
                body,
                credentials,
                mode: op_mode,
            });
        }
    }
    // Literal segments win over parameters (`/pet/findByStatus` before `/pet/{petId}`).
    ops.sort_by_key(|o| {
        o.segments
            .iter()
            .map(|s| u8::from(matches!(s, Segment::Param(_))))
            .collect::<Vec<_>>()
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(OpenApi {
        base_path: base,
        mode,
        max_body,
        ops,
        policies,
    })
}

/// What an operation with an `operationId` says about the policy: it becomes a route of that
/// name (matching its method and path under the base path), with the `x-palisade-*`
/// extensions as the route's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationPolicy {
    /// The `operationId`: the route's name.
    pub id: String,
    /// The operation's method.
    pub method: http::Method,
    /// The route's path pattern: the base path and the operation's template (`{param}`
    /// segments are the same syntax as `[[routes]]`' patterns).
    pub path: String,
    /// `x-palisade-cost`: units the request costs cost-counting limits.
    pub cost: Option<u64>,
    /// `x-palisade-scopes`: scopes the caller's key or token needs.
    pub scopes: Vec<String>,
    /// `x-palisade-auth`: `none`, `api_key`, `jwt` or `any`.
    pub auth: Option<String>,
    /// `x-palisade-limits`: names of `[[limits]]` that apply to this route (added to their
    /// `routes`).
    pub limits: Vec<String>,
}

/// Reads an operation's `x-palisade-*` extensions, reporting bad ones at their location.
fn operation_policy(
    op: &Value,
    method: &http::Method,
    base: &str,
    template: &str,
    at: &str,
    errors: &mut Vec<String>,
) -> Option<OperationPolicy> {
    let id = op.get("operationId").and_then(Value::as_str)?.to_owned();
    let cost = match op.get("x-palisade-cost") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => Some(n),
            _ => {
                errors.push(format!(
                    "{at}.x-palisade-cost: {v} is not a whole number from 1 to 1000000"
                ));
                None
            }
        },
    };
    let strings = |key: &str, errors: &mut Vec<String>| -> Vec<String> {
        match op.get(key) {
            None => Vec::new(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(v) => {
                errors.push(format!("{at}.{key}: {v} is not a list of strings"));
                Vec::new()
            }
        }
    };
    let scopes = strings("x-palisade-scopes", errors);
    let limits = strings("x-palisade-limits", errors);
    let auth = match op.get("x-palisade-auth") {
        None => None,
        Some(Value::String(a)) if ["none", "api_key", "jwt", "any"].contains(&a.as_str()) => {
            Some(a.clone())
        }
        Some(v) => {
            errors.push(format!(
                "{at}.x-palisade-auth: {v} is not one of \"none\", \"api_key\", \"jwt\", \"any\""
            ));
            None
        }
    };
    Some(OperationPolicy {
        id,
        method: method.clone(),
        path: format!("{base}{template}"),
        cost,
        scopes,
        auth,
        limits,
    })
}

/// The API keys a `security` list asks for, as alternatives. Only checkable requirements
/// count: an alternative with another kind of scheme (OAuth 2, HTTP auth, OpenID Connect, a
/// cookie key) or an empty one (`{}`: optional) makes the whole list unchecked.
fn credentials(doc: &Value, security: Option<&Value>) -> Vec<Vec<(Location, String)>> {
    let Some(list) = security.and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for alternative in list {
        let Some(req) = alternative.as_object() else {
            return Vec::new();
        };
        let mut keys = Vec::new();
        for name in req.keys() {
            let scheme = doc.pointer(&format!("/components/securitySchemes/{name}"));
            let kind = scheme.and_then(|s| s.get("type")).and_then(Value::as_str);
            let at = scheme.and_then(|s| s.get("in")).and_then(Value::as_str);
            let key = scheme.and_then(|s| s.get("name")).and_then(Value::as_str);
            match (kind, at, key) {
                (Some("apiKey"), Some("header"), Some(k)) => {
                    keys.push((Location::Header, k.to_ascii_lowercase()))
                }
                (Some("apiKey"), Some("query"), Some(k)) => {
                    keys.push((Location::Query, k.to_owned()))
                }
                _ => return Vec::new(),
            }
        }
        if keys.is_empty() {
            return Vec::new();
        }
        out.push(keys);
    }
    out
}

/// The path of a server URL (`https://h/api/v3` → `/api/v3`; `/api/v3` as it is).
fn server_path(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, r)) => r.find('/').map_or("", |i| r.get(i..).unwrap_or("")),
        None => url,
    };
    if rest.contains('{') {
        return String::new();
    }
    rest.trim_end_matches('/').to_owned()
}

fn validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| format!("not a valid schema: {e}"))
}

/// A schema of the spec as JSON Schema: its local `$ref`s inlined, OpenAPI 3.0's dialect
/// translated.
fn schema_of(doc: &Value, s: &Value, v31: bool) -> Result<Value, String> {
    inline(doc, s, 0).map(|s| to_json_schema(s, v31))
}

/// A form body's schema: arrays and objects have no one form encoding, so present ones are
/// checked as text and absent ones are not required.
fn form_schema(mut s: Value) -> Value {
    let structured: Vec<String> = s
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter(|(_, v)| {
                    !matches!(
                        kind_of(v),
                        Kind::String | Kind::Integer | Kind::Number | Kind::Boolean
                    )
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Array(req)) = s.get_mut("required") {
        req.retain(|r| {
            r.as_str()
                .is_none_or(|r| !structured.iter().any(|x| x == r))
        });
    }
    if let Some(Value::Object(props)) = s.get_mut("properties") {
        for k in &structured {
            props.insert(k.clone(), Value::Bool(true));
        }
    }
    s
}

/// Follows a local `$ref` (`#/components/...`); other values as they are.
fn resolve<'d>(doc: &'d Value, v: &'d Value, depth: usize) -> Result<&'d Value, String> {
    if depth > 32 {
        return Err("$ref chain too deep".to_owned());
    }
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .ok_or_else(|| format!("$ref {r:?}: only local references (#/...) are read"))?;
            let target = doc
                .pointer(pointer)
                .ok_or_else(|| format!("$ref {r:?} points at nothing"))?;
            resolve(doc, target, depth + 1)
        }
        None => Ok(v),
    }
}

/// A schema with every local `$ref` replaced by what it points at (recursive schemas are cut
/// at depth 32, where anything is accepted).
fn inline(doc: &Value, v: &Value, depth: usize) -> Result<Value, String> {
    if depth > 32 {
        return Ok(Value::Bool(true));
    }
    match v {
        Value::Object(m) => {
            if m.contains_key("$ref") {
                let target = resolve(doc, v, 0)?;
                return inline(doc, target, depth + 1);
            }
            let mut out = serde_json::Map::new();
            for (k, val) in m {
                out.insert(k.clone(), inline(doc, val, depth + 1)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) => a
            .iter()
            .map(|x| inline(doc, x, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// OpenAPI 3.0's schema dialect as JSON Schema: `nullable` as a `null` type; request-side,
/// `readOnly` properties are not required; 3.1 schemas are JSON Schema already.
fn to_json_schema(mut v: Value, v31: bool) -> Value {
    fn walk(v: &mut Value, v31: bool) {
        match v {
            Value::Object(m) => {
                if !v31 && m.get("nullable").and_then(Value::as_bool) == Some(true) {
                    m.remove("nullable");
                    match m.get("type").cloned() {
                        Some(Value::String(t)) => {
                            m.insert("type".into(), serde_json::json!([t, "null"]));
                            // An enum lists the allowed values: null joins them.
                            if let Some(Value::Array(e)) = m.get_mut("enum")
                                && !e.contains(&Value::Null)
                            {
                                e.push(Value::Null);
                            }
                        }
                        Some(_) => {}
                        // No type of its own (`oneOf`, `anyOf`, `allOf`, a `$ref` inlined):
                        // null, or what the schema says.
                        None => {
                            let inner = std::mem::take(m);
                            m.insert(
                                "anyOf".into(),
                                serde_json::json!([{ "type": "null" }, Value::Object(inner)]),
                            );
                        }
                    }
                }
                if !v31 {
                    m.remove("nullable");
                }
                // `format: int32` / `int64` bound integers (JSON Schema leaves them unchecked).
                let bounds = match m.get("format").and_then(Value::as_str) {
                    Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
                    Some("int64") => Some((i64::MIN, i64::MAX)),
                    _ => None,
                };
                if let Some((lo, hi)) = bounds {
                    let lo = m
                        .get("minimum")
                        .and_then(Value::as_f64)
                        .map_or(lo as f64, |v| v.max(lo as f64));
                    let hi = m
                        .get("maximum")
                        .and_then(Value::as_f64)
                        .map_or(hi as f64, |v| v.min(hi as f64));
                    if let (Some(lo), Some(hi)) = (
                        serde_json::Number::from_f64(lo),
                        serde_json::Number::from_f64(hi),
                    ) {
                        m.insert("minimum".into(), Value::Number(lo));
                        m.insert("maximum".into(), Value::Number(hi));
                    }
                }
                // Read-only properties are sent by the server, never required of a client.
                let read_only: Vec<String> = m
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.iter()
                            .filter(|(_, s)| {
                                s.get("readOnly").and_then(Value::as_bool) == Some(true)
                            })
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(Value::Array(req)) = m.get_mut("required") {
                    req.retain(|r| r.as_str().is_none_or(|r| !read_only.iter().any(|x| x == r)));
                }
                for (_, val) in m.iter_mut() {
                    walk(val, v31);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, v31)),
            _ => {}
        }
    }
    walk(&mut v, v31);
    v
}

fn kind_of(schema: &Value) -> Kind {
    let ty = |s: &Value| -> Option<String> {
        match s.get("type") {
            Some(Value::String(t)) => Some(t.clone()),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .map(str::to_owned),
            _ => None,
        }
    };
    let item = |t: Option<String>| match t.as_deref() {
        Some("integer") => ItemKind::Integer,
        Some("number") => ItemKind::Number,
        Some("boolean") => ItemKind::Boolean,
        _ => ItemKind::String,
    };
    match ty(schema).as_deref() {
        Some("string") => Kind::String,
        Some("integer") => Kind::Integer,
        Some("number") => Kind::Number,
        Some("boolean") => Kind::Boolean,
        Some("array") => Kind::Array(item(schema.get("items").and_then(ty))),
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r##"
openapi: 3.0.3
info: { title: t, version: "1" }
servers: [{ url: "https://api.example/v1" }]
paths:
  /items/{id}:
    parameters:
      - { name: id, in: path, required: true, schema: { type: integer, minimum: 1 } }
    get:
      operationId: getItem
      parameters:
        - { name: fields, in: query, schema: { type: array, items: { type: string, enum: [a, b] } } }
    delete:
      operationId: deleteItem
  /items/search:
    get:
      operationId: search
      parameters:
        - { name: status, in: query, required: true, schema: { type: string, enum: [open, closed] } }
        - { name: since, in: query, schema: { type: string, format: date } }
  /orders:
    post:
      operationId: createOrder
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/Order" }
components:
  schemas:
    Order:
      type: object
      required: [id, quantity, date_range]
      additionalProperties: false
      properties:
        id: { type: integer, readOnly: true }
        quantity: { type: integer, minimum: 1, maximum: 100 }
        note: { type: string, nullable: true, maxLength: 10 }
        date_range:
          type: object
          required: [start_date]
          properties:
            start_date: { type: string, format: date }
"##;

    fn check(
        api: &OpenApi,
        method: &str,
        target: &str,
        ct: Option<&str>,
        body: &str,
    ) -> Result<(), Violation> {
        let m = http::Method::from_bytes(method.as_bytes()).unwrap();
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let mut h = http::HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            h.insert(http::header::CONTENT_LENGTH, body.len().into());
        }
        api.check(&Request {
            method: &m,
            path,
            query,
            headers: &h,
            body: Some(body.as_bytes()).filter(|b| !b.is_empty()),
        })
    }

    fn detail(r: Result<(), Violation>) -> String {
        match r {
            Err(Violation::Invalid { detail, .. }) => detail,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn holds_requests_to_the_spec() {
        let api = compile(SPEC, None, OpenApiMode::Enforce, 65536).unwrap();
        assert_eq!(api.base_path, "/v1");
        assert_eq!(check(&api, "GET", "/v1/items/7", None, ""), Ok(()));
        assert_eq!(
            check(&api, "GET", "/v1/items/7?fields=a,b", None, ""),
            Ok(())
        );
        assert_eq!(
            detail(check(&api, "GET", "/v1/items/0", None, "")),
            "/path/id: too small"
        );
        assert_eq!(
            detail(check(&api, "GET", "/v1/items/x", None, "")),
            "/path/id: not an integer"
        );
        assert_eq!(
            detail(check(&api, "GET", "/v1/items/7?fields=c", None, "")),
            "/query/fields/0: not one of the allowed values"
        );
        // Literal paths before templates.
        assert_eq!(
            check(
                &api,
                "GET",
                "/v1/items/search?status=open&since=2026-12-07",
                None,
                ""
            ),
            Ok(())
        );
        assert_eq!(
            detail(check(&api, "GET", "/v1/items/search", None, "")),
            "/query/status: required"
        );
        assert_eq!(
            detail(check(
                &api,
                "GET",
                "/v1/items/search?status=open&since=yesterday",
                None,
                ""
            )),
            "/query/since: not a date"
        );
        assert_eq!(
            check(&api, "GET", "/v1/nothing", None, ""),
            Err(Violation::UnknownEndpoint)
        );
        assert_eq!(
            check(&api, "PUT", "/v1/items/7", None, ""),
            Err(Violation::MethodNotAllowed(vec![
                "DELETE".into(),
                "GET".into()
            ]))
        );
        assert_eq!(
            check(&api, "GET", "/elsewhere", None, ""),
            Ok(()),
            "outside the base path"
        );
        assert_eq!(
            api.operation_name(&http::Method::GET, "/v1/items/3")
                .as_deref(),
            Some("getItem")
        );
    }

    #[test]
    fn holds_json_bodies_to_their_schema() {
        let api = compile(SPEC, None, OpenApiMode::Enforce, 65536).unwrap();
        let ok = r#"{"quantity":2,"date_range":{"start_date":"2026-12-07"}}"#;
        assert_eq!(
            check(&api, "POST", "/v1/orders", Some("application/json"), ok),
            Ok(()),
            "readOnly id not required"
        );
        assert_eq!(
            check(
                &api,
                "POST",
                "/v1/orders",
                Some("application/json; charset=utf-8"),
                r#"{"quantity":2,"note":null,"date_range":{"start_date":"2026-12-07"}}"#
            ),
            Ok(()),
            "nullable"
        );
        assert_eq!(
            detail(check(
                &api,
                "POST",
                "/v1/orders",
                Some("application/json"),
                r#"{"quantity":2,"date_range":{"start_date":"soon"}}"#
            )),
            "/body/date_range/start_date: not a date"
        );
        assert_eq!(
            detail(check(
                &api,
                "POST",
                "/v1/orders",
                Some("application/json"),
                r#"{"quantity":500,"date_range":{"start_date":"2026-12-07"}}"#
            )),
            "/body/quantity: too large"
        );
        assert!(
            detail(check(
                &api,
                "POST",
                "/v1/orders",
                Some("application/json"),
                r#"{"quantity":1,"evil":1,"date_range":{"start_date":"2026-12-07"}}"#
            ))
            .contains("unexpected property evil")
        );
        assert_eq!(
            detail(check(
                &api,
                "POST",
                "/v1/orders",
                Some("application/json"),
                "{nope"
            )),
            "/body: not JSON"
        );
        assert_eq!(
            detail(check(&api, "POST", "/v1/orders", None, "")),
            "/body: required"
        );
        assert!(
            detail(check(&api, "POST", "/v1/orders", Some("text/plain"), "x"))
                .contains("is not accepted here")
        );
    }

    #[test]
    fn reports_what_is_wrong_with_a_spec() {
        assert!(
            compile("openapi: 2.0\npaths: {}", None, OpenApiMode::Enforce, 1).unwrap_err()[0]
                .contains("not OpenAPI 3.0")
        );
        let e = compile("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      parameters:\n        - $ref: '#/components/parameters/nope'\n", None, OpenApiMode::Enforce, 1).unwrap_err();
        assert!(e[0].contains("points at nothing"), "{e:?}");
        assert!(compile("{not yaml: [", None, OpenApiMode::Enforce, 1).is_err());
    }
}
