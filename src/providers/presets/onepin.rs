//! OnePin: `{data, meta}` envelope, lowercase statuses, `paused` is
//! waiting, output from the sink nodes (`/outputs`), idempotent cancel.
//! No idempotency key: interrupted starts are reconciled through the
//! workflow's runs listing (newest first). A 409 on start means the
//! concurrency limit or another active run: busy, retried.

use super::{skew, workspace, VendorOptions};
use serde_json::{json, Value};

/// Production API.
pub const BASE_URL: &str = "https://api.onepin.ai";

/// OnePin's API, as documented.
pub fn description(o: &VendorOptions) -> Value {
    let run = "/api/v1/workflows/{{workflow_id}}/runs/{{vendor_run_id}}";
    json!({
        "headers": workspace(o),
        "start": {
            "method": "POST",
            "path": "/api/v1/workflows/{{workflow_id}}/runs",
            "body": {
                "script_text": "{{inputs/script_text}}",
                "source_language": "{{inputs/source_language}}",
            },
            "idempotent": false,
            "run_id": ["/data/id"],
            "busy": [409],
        },
        "status": {
            "method": "GET",
            "path": format!("{run}/status"),
            "status": ["/data/status"],
            "error": "{{/data/error}}",
        },
        "statuses": {
            "queued": ["pending"],
            "running": ["running"],
            "waiting": ["paused"],
            "succeeded": ["completed"],
            "failed": ["failed"],
            "canceled": ["cancelled", "canceled"],
        },
        "output": {
            "method": "GET",
            "path": format!("{run}/outputs"),
            "value": "{{/data/outputs}}",
        },
        "cancel": {
            "method": "POST",
            "path": format!("{run}/cancel"),
            "busy": [409],
        },
        "list": {
            "method": "GET",
            "path": "/api/v1/workflows/{{workflow_id}}/runs?sort=created_at&order=desc&limit=100",
            "items": "/data",
            "id": "/id",
            "created_at": ["/created_at"],
            "clock_skew": skew(o),
        },
    })
}
