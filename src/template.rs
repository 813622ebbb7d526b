//! The one small pointer and template language, shared by the inbound
//! mapping (webhook payload -> workflow inputs) and the declarative `http`
//! provider (inputs -> vendor request, vendor answer -> status and output),
//! so a user learns it once.
//!
//! - A **pointer** is a JSON pointer (RFC 6901) extended just enough for real
//!   APIs: an array index may count from the end (`-1` is the last element,
//!   `-` too), as Altostrat's output (the last log entry) needs.
//! - An **expression** names a value in a [`Scope`]: `/a/b` (a pointer into
//!   the scope's main document), `NAME` (a whole named value, e.g. `run_id`),
//!   `NAME/a/b` (a pointer into a named document, e.g. `inputs/script`), or
//!   `NAME.KEY` (a keyed lookup, e.g. `header.X-GitHub-Event`, `query.ref`).
//! - A **template** is any JSON value whose strings may hold `{{ expr }}`.
//!   A string that is exactly one placeholder becomes the value itself, type
//!   kept (a mapped object stays an object); an object member whose whole
//!   value is a placeholder with nothing behind it is left out. Placeholders
//!   inside longer text are rendered as text (strings as they are, other
//!   values as JSON) and must resolve.
//!
//! Parsing happens once, at config load, so `check-config` reports every
//! malformed pointer or placeholder with its key path.

use serde_json::{Map, Value};
use std::fmt;

/// A parsed, extended JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `""` (the whole document) or `/token/token...` with `~0`/`~1` escapes.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a JSON pointer (use \"\" or start with '/')"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut out = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "{text:?}: '~' must be followed by 0 or 1 in a JSON pointer"
                            ))
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            tokens.push(out);
        }
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this pointer, if any (`null` counts as a value here;
    /// callers that treat `null` as missing filter it themselves).
    pub fn find<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        let mut cur = doc;
        for t in &self.tokens {
            cur = match cur {
                Value::Object(m) => m.get(t)?,
                Value::Array(a) => a.get(array_index(t, a.len())?)?,
                _ => return None,
            };
        }
        Some(cur)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An array index token: `0`, `1`... from the start (no leading zeros, as RFC
/// 6901 says), `-1`, `-2`... from the end, `-` for the last element.
fn array_index(token: &str, len: usize) -> Option<usize> {
    if token == "-" {
        return len.checked_sub(1);
    }
    if let Some(back) = token.strip_prefix('-') {
        let n: usize = back.parse().ok().filter(|n| *n > 0)?;
        return len.checked_sub(n);
    }
    if token.len() > 1 && token.starts_with('0') {
        return None;
    }
    token.parse().ok()
}

/// Where an expression looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A pointer into the scope's main document.
    Main(Pointer),
    /// A named value, optionally followed by a pointer into it.
    Named(String, Pointer),
    /// A keyed lookup in a named table (headers, query parameters).
    Keyed(String, String),
}

impl Expr {
    /// Parses one expression (the text between `{{` and `}}`, trimmed).
    pub fn parse(text: &str) -> Result<Expr, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty placeholder".into());
        }
        if text.starts_with('/') {
            return Pointer::parse(text).map(Expr::Main);
        }
        let name_end = text.find(['/', '.']).unwrap_or(text.len());
        let (name, rest) = text.split_at(name_end);
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "{text:?}: expected /pointer, NAME, NAME/pointer or NAME.KEY"
            ));
        }
        if let Some(key) = rest.strip_prefix('.') {
            if key.is_empty() {
                return Err(format!("{text:?}: nothing after '.'"));
            }
            return Ok(Expr::Keyed(name.to_string(), key.to_string()));
        }
        Pointer::parse(rest).map(|p| Expr::Named(name.to_string(), p))
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Main(p) => write!(f, "{p}"),
            Expr::Named(n, p) => write!(f, "{n}{p}"),
            Expr::Keyed(n, k) => write!(f, "{n}.{k}"),
        }
    }
}

/// What expressions are evaluated against. Implementors decide which names
/// exist (`header`, `query`, `inputs`, `run_id`...).
pub trait Scope {
    /// The main document (`/pointer` expressions).
    fn main(&self) -> Option<&Value>;
    /// A named value (`run_id`, `inputs`...), for `NAME` and `NAME/pointer`.
    fn named(&self, name: &str) -> Option<Value>;
    /// A keyed lookup (`header.X-Name`, `query.ref`).
    fn keyed(&self, name: &str, key: &str) -> Option<Value>;
}

/// Evaluates one expression; `null` counts as missing.
pub fn eval(expr: &Expr, scope: &dyn Scope) -> Option<Value> {
    let v = match expr {
        Expr::Main(p) => p.find(scope.main()?).cloned(),
        Expr::Named(n, p) => {
            let whole = scope.named(n)?;
            p.find(&whole).cloned()
        }
        Expr::Keyed(n, k) => scope.keyed(n, k),
    };
    v.filter(|v| !v.is_null())
}

/// One piece of a templated string.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Expr(Expr),
}

/// A parsed template (see the module docs for the rules).
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// A JSON value with no placeholders in it.
    Literal(Value),
    /// A string that is exactly one placeholder: becomes the value, type kept.
    Whole(Expr),
    /// A string mixing text and placeholders: renders to a string.
    Text(Vec<Piece>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no value for {{{{ {0} }}}}")]
pub struct Missing(pub String);

impl Template {
    /// Parses a JSON value whose strings may hold placeholders.
    pub fn parse(v: &Value) -> Result<Template, String> {
        Ok(match v {
            Value::String(s) => Self::parse_str(s)?,
            Value::Array(items) => Template::Array(
                items
                    .iter()
                    .map(Template::parse)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(m) => Template::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), Template::parse(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Template::Literal(other.clone()),
        })
    }

    /// Parses a string template.
    pub fn parse_str(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("{s:?}: '{{{{' without a closing '}}}}'"))?;
            let expr = Expr::parse(&after[..close]).map_err(|e| format!("in {s:?}: {e}"))?;
            pieces.push(Piece::Expr(expr));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(match pieces.as_slice() {
            [] => Template::Literal(Value::String(String::new())),
            [Piece::Text(t)] => Template::Literal(Value::String(t.clone())),
            [Piece::Expr(e)] => Template::Whole(e.clone()),
            _ => Template::Text(pieces),
        })
    }

    /// Renders against `scope`. `Ok(None)` only for a whole placeholder with
    /// nothing behind it (left out of an object, `null` in an array).
    pub fn render(&self, scope: &dyn Scope) -> Result<Option<Value>, Missing> {
        Ok(Some(match self {
            Template::Literal(v) => v.clone(),
            Template::Whole(e) => return Ok(eval(e, scope)),
            Template::Text(pieces) => {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Expr(e) => match eval(e, scope) {
                            Some(Value::String(s)) => out.push_str(&s),
                            Some(v) => out.push_str(&v.to_string()),
                            None => return Err(Missing(e.to_string())),
                        },
                    }
                }
                Value::String(out)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| Ok(t.render(scope)?.unwrap_or(Value::Null)))
                    .collect::<Result<_, Missing>>()?,
            ),
            Template::Object(members) => {
                let mut m = Map::new();
                for (k, t) in members {
                    if let Some(v) = t.render(scope)? {
                        m.insert(k.clone(), v);
                    }
                }
                Value::Object(m)
            }
        }))
    }

    /// Every expression the template uses (for config checks, e.g. that a
    /// provider's template only names values the engine provides).
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Template::Literal(_) => {}
            Template::Whole(e) => out.push(e),
            Template::Text(pieces) => out.extend(pieces.iter().filter_map(|p| match p {
                Piece::Expr(e) => Some(e),
                Piece::Text(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(members) => members.iter().for_each(|(_, t)| t.collect(out)),
        }
    }
}

/// A simple [`Scope`]: a main document plus named values and keyed tables
/// (keys of keyed tables compare case-insensitively, as header names do).
#[derive(Debug, Default, Clone)]
pub struct MapScope {
    pub main: Option<Value>,
    pub named: Vec<(String, Value)>,
    pub keyed: Vec<(String, Vec<(String, Value)>)>,
}

impl Scope for MapScope {
    fn main(&self) -> Option<&Value> {
        self.main.as_ref()
    }

    fn named(&self, name: &str) -> Option<Value> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn keyed(&self, name: &str, key: &str) -> Option<Value> {
        let (_, table) = self.keyed.iter().find(|(n, _)| n == name)?;
        table
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> MapScope {
        MapScope {
            main: Some(json!({
                "repository": {"full_name": "octo/hello", "n": 3},
                "logs": [{"output": 1}, {"output": {"final": true}}],
                "a/b": {"m~n": "escaped"},
                "nothing": null,
            })),
            named: vec![
                ("run_id".into(), json!("01ABC")),
                ("inputs".into(), json!({"script": "s", "lang": "en"})),
            ],
            keyed: vec![(
                "header".into(),
                vec![("X-GitHub-Event".into(), json!("push"))],
            )],
        }
    }

    fn render(t: Value) -> Result<Option<Value>, Missing> {
        Template::parse(&t).unwrap().render(&scope())
    }

    #[test]
    fn pointers_extend_rfc6901_with_indices_from_the_end() {
        let doc = scope().main.unwrap();
        let at = |p: &str| Pointer::parse(p).unwrap().find(&doc).cloned();
        assert_eq!(at("/logs/-1/output"), Some(json!({"final": true})));
        assert_eq!(at("/logs/-/output"), Some(json!({"final": true})));
        assert_eq!(at("/logs/-2/output"), Some(json!(1)));
        assert_eq!(at("/logs/-3"), None);
        assert_eq!(at("/logs/0/output"), Some(json!(1)));
        assert_eq!(at("/logs/01"), None, "no leading zeros");
        assert_eq!(at("/a~1b/m~0n"), Some(json!("escaped")));
        assert_eq!(at(""), Some(doc.clone()));
        assert!(Pointer::parse("nope").is_err());
        assert!(Pointer::parse("/bad~2").is_err());
    }

    #[test]
    fn whole_placeholders_keep_json_types() {
        assert_eq!(
            render(json!("{{ /repository }}")).unwrap(),
            Some(json!({"full_name": "octo/hello", "n": 3}))
        );
        assert_eq!(render(json!("{{/repository/n}}")).unwrap(), Some(json!(3)));
        assert_eq!(
            render(json!("{{ inputs }}")).unwrap(),
            Some(json!({"script": "s", "lang": "en"}))
        );
        assert_eq!(
            render(json!("{{ inputs/script }}")).unwrap(),
            Some(json!("s"))
        );
    }

    #[test]
    fn mixed_text_renders_strings_and_must_resolve() {
        assert_eq!(
            render(json!(
                "{{ /repository/full_name }}@{{ header.x-github-event }} #{{ /repository/n }}"
            ))
            .unwrap(),
            Some(json!("octo/hello@push #3"))
        );
        let err = render(json!("x {{ /missing }}")).unwrap_err();
        assert_eq!(err.to_string(), "no value for {{ /missing }}");
    }

    #[test]
    fn objects_leave_out_members_with_nothing_behind_them() {
        let out = render(json!({
            "script_text": "{{ inputs/script }}",
            "source_language": "{{ inputs/missing }}",
            "nil": "{{ /nothing }}",
            "meta": {"run": "{{ run_id }}", "fixed": 7},
            "list": ["{{ /missing }}", "{{ run_id }}"],
        }))
        .unwrap();
        assert_eq!(
            out,
            Some(json!({
                "script_text": "s",
                "meta": {"run": "01ABC", "fixed": 7},
                "list": [null, "01ABC"],
            }))
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert!(Template::parse_str("{{ /a ")
            .unwrap_err()
            .contains("closing"));
        assert!(Template::parse_str("{{ }}").unwrap_err().contains("empty"));
        assert!(Template::parse_str("{{ a b }}").is_err());
        assert!(Template::parse_str("{{ header. }}").is_err());
        assert_eq!(
            Template::parse_str("plain").unwrap(),
            Template::Literal(json!("plain"))
        );
        let t = Template::parse(&json!({"a": "{{ run_id }}", "b": ["x {{ header.h }}"]})).unwrap();
        let names: Vec<String> = t.exprs().iter().map(|e| e.to_string()).collect();
        assert_eq!(names, vec!["run_id", "header.h"]);
    }
}
