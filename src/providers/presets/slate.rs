//! Slate (slatehq): flat JSON, uppercase statuses, an idempotency key on
//! create, cancel only while QUEUED (409 after). No runs listing.

use super::{workspace, VendorOptions};
use serde_json::{json, Value};

/// Slate's API, as documented.
pub fn description(o: &VendorOptions) -> Value {
    json!({
        "headers": workspace(o),
        "start": {
            "method": "POST",
            "path": "/workflows/{{workflow_id}}/runs",
            "body": {"inputs": "{{inputs}}"},
            "idempotency_header": "Idempotency-Key",
            "idempotent": true,
            "run_id": ["/run_id"],
        },
        "status": {
            "method": "GET",
            "path": "/workflow-runs/{{vendor_run_id}}",
            "status": ["/status"],
            "output": "{{/output}}",
            "error": "{{/error}}",
        },
        "statuses": {
            "queued": ["QUEUED"],
            "starting": ["STARTING"],
            "running": ["RUNNING"],
            "succeeded": ["COMPLETED"],
            "failed": ["FAILED"],
            "canceled": ["CANCELED", "CANCELLED"],
        },
        "cancel": {
            "method": "POST",
            "path": "/workflow-runs/{{vendor_run_id}}/cancel",
            "refused": [409],
        },
    })
}
