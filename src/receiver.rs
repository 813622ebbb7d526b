//! A tiny callback receiver for demos and for debugging a real receiver:
//! it verifies each Standard Webhooks signature and prints the event.

use crate::signing::WebhookKey;
use crate::time::Timestamp;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why a callback was refused.
fn check(
    key: &WebhookKey,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, i64), &'static str> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let id = get("webhook-id").ok_or("missing webhook-id")?;
    let ts: i64 = get("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or("missing or bad webhook-timestamp")?;
    let sig = get("webhook-signature").ok_or("missing webhook-signature")?;
    if (Timestamp::now().unix_seconds() - ts).abs() > 300 {
        return Err("webhook-timestamp is more than 5 minutes away");
    }
    if !key.verify(id, ts, body, sig) {
        return Err("signature does not match");
    }
    Ok((id.to_string(), ts))
}

async fn receive(
    State(key): State<Arc<WebhookKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    match check(&key, &headers, &body) {
        Ok((id, ts)) => {
            let pretty = serde_json::from_slice::<serde_json::Value>(&body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            println!("callback {id} (timestamp {ts}): signature valid\n{pretty}");
            StatusCode::NO_CONTENT
        }
        Err(why) => {
            println!("callback refused: {why}");
            StatusCode::UNAUTHORIZED
        }
    }
}

/// Serves `POST /{anything}` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, key: WebhookKey) -> std::io::Result<()> {
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(Arc::new(key));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("receiving callbacks on http://{}/", listener.local_addr()?);
    axum::serve(listener, app).await
}
