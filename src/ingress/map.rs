//! Payload-to-inputs mapping: each workflow input from a JSON pointer, a
//! header or a constant, with defaults for optional ones.

use super::Headers;
use crate::config::{InputSettings, InputSource};
use serde_json::{Map, Value};

/// Builds the workflow inputs, or says which required inputs found no value.
/// With no mapping configured, a JSON object body is passed through whole.
pub fn inputs(
    specs: &[InputSettings],
    payload: &Value,
    headers: &(impl Headers + ?Sized),
) -> Result<Value, String> {
    if specs.is_empty() {
        return match payload {
            Value::Object(_) => Ok(payload.clone()),
            _ => Err("the route maps no inputs, so the body must be a JSON object".into()),
        };
    }
    let mut out = Map::new();
    let mut missing = Vec::new();
    for spec in specs {
        let found = match &spec.source {
            InputSource::Pointer(p) => payload.pointer(p).filter(|v| !v.is_null()).cloned(),
            InputSource::Header(h) => headers.get(h).map(|v| Value::String(v.to_string())),
            InputSource::Value(v) => Some(v.clone()),
        };
        match found.or_else(|| spec.default.clone()) {
            Some(v) => {
                out.insert(spec.name.clone(), v);
            }
            None if spec.required => missing.push(match &spec.source {
                InputSource::Pointer(p) => format!("{} (from {p})", spec.name),
                InputSource::Header(h) => format!("{} (from header {h})", spec.name),
                InputSource::Value(_) => spec.name.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct NoHeaders;
    impl Headers for NoHeaders {
        fn get(&self, name: &str) -> Option<&str> {
            (name == "x-event").then_some("push")
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

    #[test]
    fn maps_pointer_header_const_default() {
        let specs = vec![
            spec(
                "repo",
                InputSource::Pointer("/repository/full_name".into()),
                true,
                None,
            ),
            spec("event", InputSource::Header("x-event".into()), true, None),
            spec("k", InputSource::Value(json!({"a": [1]})), true, None),
            spec(
                "ref",
                InputSource::Pointer("/ref".into()),
                false,
                Some(json!("main")),
            ),
            spec("opt", InputSource::Pointer("/nope".into()), false, None),
        ];
        let got = inputs(
            &specs,
            &json!({"repository": {"full_name": "o/r"}}),
            &NoHeaders,
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"repo": "o/r", "event": "push", "k": {"a": [1]}, "ref": "main"})
        );
    }

    #[test]
    fn names_missing_inputs() {
        let specs = vec![spec(
            "repo",
            InputSource::Pointer("/repository/full_name".into()),
            true,
            None,
        )];
        let err = inputs(&specs, &json!({"repository": null}), &NoHeaders).unwrap_err();
        assert!(err.contains("repo (from /repository/full_name)"), "{err}");
        assert!(inputs(&[], &json!([1]), &NoHeaders).is_err());
        assert_eq!(
            inputs(&[], &json!({"x": 1}), &NoHeaders).unwrap(),
            json!({"x": 1})
        );
    }
}
