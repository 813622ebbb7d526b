//! Altostrat (SDX Workflows): bare run objects, output is the last log
//! entry's `output`, error `error_message`, `awaiting_ui_interaction` is
//! waiting. No cancel endpoint: a cancel is local only. The idempotency
//! key is documented only in older docs: sent, but not trusted, so an
//! interrupted start is reconciled through the executions listing.

use super::{skew, VendorOptions};
use serde_json::{json, Value};

/// Production API.
pub const BASE_URL: &str = "https://v1.api.altostrat.io";

/// Altostrat's API, as documented.
pub fn description(o: &VendorOptions) -> Value {
    json!({
        "start": {
            "method": "POST",
            "path": "/workflows/{{workflow_id}}/execute",
            "body": {"context": "{{inputs}}"},
            "idempotency_header": "Idempotency-Key",
            "idempotent": false,
            "run_id": ["/id"],
        },
        "status": {
            "method": "GET",
            "path": "/workflows/runs/{{vendor_run_id}}",
            "status": ["/status"],
            "output": "{{/logs/-1/output}}",
            "error": "{{/error_message}}",
        },
        "statuses": {
            "queued": ["pending"],
            "running": ["running"],
            "waiting": ["awaiting_ui_interaction"],
            "succeeded": ["completed"],
            "failed": ["failed"],
        },
        "list": {
            "method": "GET",
            "path": "/workflows/{{workflow_id}}/executions",
            "items": "/data",
            "id": "/id",
            "created_at": ["/created_at", "/started_at"],
            "clock_skew": skew(o),
        },
    })
}
