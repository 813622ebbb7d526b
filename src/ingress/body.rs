//! Body formats: JSON (`application/json`, `application/*+json`, or no
//! content type) and `application/x-www-form-urlencoded`. A form is mapped
//! as an object of its fields (Slack slash commands), except that a form
//! whose only field is `payload` holding JSON (Slack interactivity, GitHub's
//! form content type) is unwrapped to that JSON.

use super::IngressError;
use serde_json::{Map, Value};

/// The body formats runbridge reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// URL-encoded form fields.
    Form,
}

/// The format a content type names, or a 415. A present but unparseable
/// content type (not UTF-8, not a MIME type) is refused; none at all is JSON.
pub fn format(ct: Option<&[u8]>) -> Result<Format, IngressError> {
    let Some(raw) = ct else {
        return Ok(Format::Json);
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(IngressError::UnsupportedMediaType(
            String::from_utf8_lossy(raw).into_owned(),
        ));
    };
    let refuse = || IngressError::UnsupportedMediaType(text.to_string());
    let m: mime::Mime = text.trim().parse().map_err(|_| refuse())?;
    if m.type_() == mime::APPLICATION
        && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
    {
        Ok(Format::Json)
    } else if m.type_() == mime::APPLICATION && m.subtype() == mime::WWW_FORM_URLENCODED {
        Ok(Format::Form)
    } else {
        Err(refuse())
    }
}

/// Parses a body of `format` into the JSON payload mapping and filters see.
pub fn parse(format: Format, body: &[u8]) -> Result<Value, IngressError> {
    match format {
        Format::Json => {
            serde_json::from_slice(body).map_err(|e| IngressError::InvalidJson(e.to_string()))
        }
        Format::Form => parse_form(body),
    }
}

/// A form as an object of fields (a repeated field keeps its last value),
/// or the JSON of a lone `payload` field.
pub fn parse_form(body: &[u8]) -> Result<Value, IngressError> {
    let mut fields = Map::new();
    for (k, v) in form_urlencoded::parse(body) {
        fields.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    if fields.len() == 1 {
        if let Some(Value::String(p)) = fields.get("payload") {
            return serde_json::from_str(p).map_err(|e| {
                IngressError::InvalidJson(format!("the form's payload field is not JSON: {e}"))
            });
        }
    }
    Ok(Value::Object(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        let ct = |s: &str| format(Some(s.as_bytes()));
        assert_eq!(format(None).ok(), Some(Format::Json));
        assert_eq!(
            ct("application/json; charset=utf-8").ok(),
            Some(Format::Json)
        );
        assert_eq!(ct("Application/JSON").ok(), Some(Format::Json));
        assert_eq!(ct("application/cloudevents+json").ok(), Some(Format::Json));
        assert_eq!(
            ct("application/x-www-form-urlencoded").ok(),
            Some(Format::Form)
        );
        assert!(ct("text/plain").is_err());
        assert!(ct("").is_err(), "empty is not a MIME type");
        assert!(ct("json").is_err(), "no subtype");
        assert!(ct("application/json;;;=").is_err());
        assert!(format(Some(b"application/json\xff")).is_err());
    }

    #[test]
    fn forms_become_objects_and_payloads_unwrap() {
        assert_eq!(
            parse_form(b"command=%2Fdeploy&text=a+b&text=c").unwrap(),
            json!({"command": "/deploy", "text": "c"})
        );
        assert_eq!(
            parse_form(b"payload=%7B%22type%22%3A%22block_actions%22%7D").unwrap(),
            json!({"type": "block_actions"})
        );
        assert!(parse_form(b"payload=nope").is_err());
        assert_eq!(parse_form(b"").unwrap(), json!({}));
    }
}
