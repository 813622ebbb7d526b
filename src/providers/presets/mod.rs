//! The built-in vendors, each a [`Description`] over the one engine: a
//! vendor's whole API reads in its own file, written from its docs (see
//! `shared/providers.md`). `check-config --explain NAME` prints any of them
//! as a pasteable `kind = "http"` provider.

pub mod altostrat;
pub mod onepin;
pub mod retab;
pub mod slate;

use super::spec::Description;
use serde_json::Value;
use std::time::Duration;

/// The few per-provider choices a preset takes.
#[derive(Debug, Clone, Default)]
pub struct VendorOptions {
    /// Sent as `X-Workspace-Id` (Slate, OnePin).
    pub workspace_id: Option<String>,
    /// Retab: `seed` or `current` (default).
    pub api_shape: Option<String>,
    /// Retab: `api-key` or `bearer` (default: `api-key` for `seed`,
    /// `bearer` for `current`).
    pub auth: Option<String>,
    /// Reconciliation margin for vendor clocks behind ours (default 5 s).
    pub clock_skew: Option<Duration>,
}

/// The description of vendor `kind`, or the key and message of a problem.
pub fn describe(kind: &str, o: &VendorOptions) -> Result<Description, (String, String)> {
    let v = match kind {
        "slate" => slate::description(o),
        "onepin" => onepin::description(o),
        "retab" => retab::description(o)?,
        "altostrat" => altostrat::description(o),
        other => return Err(("kind".into(), format!("unknown vendor {other:?}"))),
    };
    from_json(v)
}

/// The documented production base URL of vendor `kind`, if it has one.
pub fn default_base_url(kind: &str) -> Option<&'static str> {
    match kind {
        "onepin" => Some(onepin::BASE_URL),
        "retab" => Some(retab::BASE_URL),
        "altostrat" => Some(altostrat::BASE_URL),
        _ => None,
    }
}

fn from_json(v: Value) -> Result<Description, (String, String)> {
    serde_json::from_value(v).map_err(|e| ("kind".into(), format!("preset is invalid: {e}")))
}

/// `X-Workspace-Id` when configured.
fn workspace(o: &VendorOptions) -> Value {
    match &o.workspace_id {
        Some(ws) => serde_json::json!({ "X-Workspace-Id": ws }),
        None => serde_json::json!({}),
    }
}

/// The clock-skew margin as written in a description.
fn skew(o: &VendorOptions) -> String {
    humantime::format_duration(o.clock_skew.unwrap_or(Duration::from_secs(5))).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_compiles() {
        for kind in ["slate", "onepin", "retab", "altostrat"] {
            let d = describe(kind, &VendorOptions::default()).unwrap();
            let mut problems = Vec::new();
            assert!(
                d.compile(&mut |k, m| problems.push((k, m))).is_some(),
                "{kind}: {problems:?}"
            );
        }
        let seed = VendorOptions {
            api_shape: Some("seed".into()),
            ..Default::default()
        };
        let d = describe("retab", &seed).unwrap();
        assert_eq!(d.auth.header, "Api-Key");
        assert!(d.start.path.ends_with("/run"));
        let bad = VendorOptions {
            api_shape: Some("v3".into()),
            ..Default::default()
        };
        assert_eq!(describe("retab", &bad).unwrap_err().0, "api_shape");
    }
}
