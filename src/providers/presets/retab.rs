//! Retab, in both API shapes. `seed` (Feb 2026 SDK): start
//! `POST /v1/workflows/{id}/run` with node-keyed `documents`, `json_inputs`,
//! `text_inputs`; output `final_outputs`; error `error`/`error_stage`.
//! `current`: start `POST /v1/workflows/runs` with `workflow_id` in the body
//! and our run id in `metadata`; status in `lifecycle`; error
//! `lifecycle.message`/`category`; output from the steps endpoint. Both read
//! `status` first, then `lifecycle.status`, then `lifecycle.kind`. Cancel is
//! asynchronous (`cancellation_requested`: keep polling). The idempotency
//! key is sent but not trusted (which endpoints honour it, and for how
//! long, is undocumented): a start is recorded before the call and an
//! interrupted one is reconciled through the runs listing, newest first.

use super::{skew, VendorOptions};
use serde_json::{json, Value};

/// Production API.
pub const BASE_URL: &str = "https://api.retab.com";

/// Retab's API in the configured shape.
pub fn description(o: &VendorOptions) -> Result<Value, (String, String)> {
    let seed = match o.api_shape.as_deref().unwrap_or("current") {
        "seed" => true,
        "current" => false,
        other => {
            return Err((
                "api_shape".into(),
                format!("{other:?} is not one of seed, current"),
            ))
        }
    };
    let api_key = match o.auth.as_deref() {
        None => seed,
        Some("api-key") => true,
        Some("bearer") => false,
        Some(other) => {
            return Err((
                "auth".into(),
                format!("{other:?} is not one of api-key, bearer"),
            ))
        }
    };
    let auth = if api_key {
        json!({"header": "Api-Key", "prefix": ""})
    } else {
        json!({"header": "Authorization", "prefix": "Bearer "})
    };
    let start = if seed {
        json!({
            "method": "POST",
            "path": "/v1/workflows/{{workflow_id}}/run",
            "body": {
                "documents": "{{inputs/documents}}",
                "json_inputs": "{{inputs/json_inputs}}",
                "text_inputs": "{{inputs/text_inputs}}",
            },
            "idempotency_header": "Idempotency-Key",
            "idempotent": false,
            "run_id": ["/id"],
        })
    } else {
        json!({
            "method": "POST",
            "path": "/v1/workflows/runs",
            "body": {
                "workflow_id": "{{workflow_id}}",
                "documents": "{{inputs/documents}}",
                "json_inputs": "{{inputs/json_inputs}}",
                "version": "{{inputs/version}}",
                "metadata": {"runbridge_run_id": "{{run_id}}"},
            },
            "idempotency_header": "Idempotency-Key",
            "idempotent": false,
            "run_id": ["/id"],
        })
    };
    let mut status = json!({
        "method": "GET",
        "path": "/v1/workflows/runs/{{vendor_run_id}}",
        "status": ["/status", "/lifecycle/status", "/lifecycle/kind"],
    });
    if seed {
        status["output"] = json!("{{/final_outputs}}");
        status["error"] = json!({"message": "{{/error}}", "stage": "{{/error_stage}}", "details": "{{/error_details}}"});
    } else {
        status["error"] = json!({
            "message": "{{/lifecycle/message}}",
            "category": "{{/lifecycle/category}}",
            "stage": "{{/lifecycle/stage}}",
            "failing_step_id": "{{/lifecycle/failing_step_id}}",
        });
    }
    let mut d = json!({
        "list": {
            "method": "GET",
            "path": "/v1/workflows/runs?workflow_id={{workflow_id}}&order=desc&limit=100",
            "items": "/data",
            "id": "/id",
            "created_at": ["/created_at", "/timing/created_at"],
            "clock_skew": skew(o),
        },
        "auth": auth,
        "start": start,
        "status": status,
        "statuses": {
            "queued": ["pending", "queued"],
            "running": ["running"],
            "waiting": ["waiting_for_human", "awaiting_review"],
            "succeeded": ["completed"],
            "failed": ["error", "failed"],
            "canceled": ["cancelled", "canceled"],
        },
        "cancel": {
            "method": "POST",
            "path": "/v1/workflows/runs/{{vendor_run_id}}/cancel",
            "result": "/cancellation_status",
            "canceled": ["cancelled"],
            "pending": ["cancellation_requested"],
            "ended": ["cancellation_failed"],
        },
    });
    if !seed {
        d["output"] = json!({
            "method": "GET",
            "path": "/v1/workflows/steps?run_id={{vendor_run_id}}",
            "value": "{{answer}}",
        });
    }
    Ok(d)
}
