//! Payload-to-inputs mapping: each workflow input from a JSON pointer, a
//! header, a query parameter, a constant or a template (the shared language
//! of [`crate::template`], JSON types kept), with defaults for optional ones.

use super::Headers;
use crate::config::{InputSettings, InputSource};
use crate::template::{Scope, Template};
use serde_json::{Map, Value};

/// What mapping and filters evaluate against: the parsed payload (`/pointer`,
/// `payload`), `header.NAME` and `query.NAME`.
pub struct RequestScope<'a> {
    /// The parsed body.
    pub payload: &'a Value,
    /// Headers, query and peer of the request.
    pub req: &'a dyn Headers,
}

impl Scope for RequestScope<'_> {
    fn main(&self) -> Option<&Value> {
        Some(self.payload)
    }

    fn named(&self, name: &str) -> Option<Value> {
        (name == "payload").then(|| self.payload.clone())
    }

    fn keyed(&self, name: &str, key: &str) -> Option<Value> {
        match name {
            "header" => self
                .req
                .get(&key.to_ascii_lowercase())
                .map(|v| Value::String(v.to_string())),
            "query" => self.req.query(key).map(Value::String),
            _ => None,
        }
    }
}

/// Builds the workflow inputs, or says which required inputs found no value.
/// With no mapping configured, a JSON object body is passed through whole.
pub fn inputs(
    specs: &[InputSettings],
    payload: &Value,
    req: &dyn Headers,
) -> Result<Value, String> {
    if specs.is_empty() {
        return match payload {
            Value::Object(_) => Ok(payload.clone()),
            _ => Err("the route maps no inputs, so the body must be a JSON object".into()),
        };
    }
    let scope = RequestScope { payload, req };
    let mut out = Map::new();
    let mut missing = Vec::new();
    for spec in specs {
        let found = match &spec.source {
            InputSource::Pointer(p) => p.find(payload).filter(|v| !v.is_null()).cloned(),
            InputSource::Header(h) => scope.keyed("header", h),
            InputSource::Query(q) => scope.keyed("query", q),
            InputSource::Value(v) => Some(v.clone()),
            InputSource::Template(t) => render(t, &scope),
        };
        match found.or_else(|| spec.default.clone()) {
            Some(v) => {
                out.insert(spec.name.clone(), v);
            }
            None if spec.required => missing.push(match &spec.source {
                InputSource::Pointer(p) => format!("{} (from {p})", spec.name),
                InputSource::Header(h) => format!("{} (from header {h})", spec.name),
                InputSource::Query(q) => format!("{} (from query parameter {q})", spec.name),
                InputSource::Value(_) => spec.name.clone(),
                InputSource::Template(_) => format!("{} (from its template)", spec.name),
            }),
            None => {}
        }
    }
    if missing.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(format!(
            "no value for required input: {}",
            missing.join(", ")
        ))
    }
}

/// A template's value; a placeholder without a value makes the whole input missing.
fn render(t: &Template, scope: &dyn Scope) -> Option<Value> {
    t.render(scope).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Pointer;
    use serde_json::json;

    struct NoHeaders;
    impl Headers for NoHeaders {
        fn get(&self, name: &str) -> Option<&str> {
            (name == "x-event").then_some("push")
        }
        fn query(&self, name: &str) -> Option<String> {
            (name == "kind").then(|| "full".to_string())
        }
    }

    fn spec(
        name: &str,
        source: InputSource,
        required: bool,
        default: Option<Value>,
    ) -> InputSettings {
        InputSettings {
            name: name.into(),
            source,
            required,
            default,
        }
    }

    fn ptr(p: &str) -> InputSource {
        InputSource::Pointer(Pointer::parse(p).unwrap())
    }

    #[test]
    fn maps_pointer_header_query_const_template_default() {
        let specs = vec![
            spec("repo", ptr("/repository/full_name"), true, None),
            spec("event", InputSource::Header("x-event".into()), true, None),
            spec("kind", InputSource::Query("kind".into()), true, None),
            spec("k", InputSource::Value(json!({"a": [1]})), true, None),
            spec("ref", ptr("/ref"), false, Some(json!("main"))),
            spec("opt", ptr("/nope"), false, None),
            spec(
                "label",
                InputSource::Template(
                    Template::parse_str("{{ /repository/full_name }}@{{ header.X-Event }}")
                        .unwrap(),
                ),
                true,
                None,
            ),
            spec(
                "whole",
                InputSource::Template(Template::parse_str("{{ /repository }}").unwrap()),
                true,
                None,
            ),
        ];
        let got = inputs(
            &specs,
            &json!({"repository": {"full_name": "o/r"}}),
            &NoHeaders,
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"repo": "o/r", "event": "push", "kind": "full", "k": {"a": [1]}, "ref": "main",
                   "label": "o/r@push", "whole": {"full_name": "o/r"}})
        );
    }

    #[test]
    fn names_missing_inputs() {
        let specs = vec![
            spec("repo", ptr("/repository/full_name"), true, None),
            spec(
                "t",
                InputSource::Template(Template::parse_str("x {{ /nope }}").unwrap()),
                true,
                None,
            ),
        ];
        let err = inputs(&specs, &json!({"repository": null}), &NoHeaders).unwrap_err();
        assert!(err.contains("repo (from /repository/full_name)"), "{err}");
        assert!(err.contains("t (from its template)"), "{err}");
        assert!(inputs(&[], &json!([1]), &NoHeaders).is_err());
        assert_eq!(
            inputs(&[], &json!({"x": 1}), &NoHeaders).unwrap(),
            json!({"x": 1})
        );
    }
}
