//! The OpenAPI document of the admin API, generated from the handlers'
//! `#[utoipa::path]` annotations and the view types, served at
//! `/openapi.json` and committed as `docs/openapi.json` (a test fails when
//! the two differ).

use super::{config, deliveries, endpoints, runs};
use crate::admin::view;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "runbridge admin API", description = "Runs, deliveries, recovery, endpoints and the live configuration of a runbridge daemon. Every path needs `Authorization: Bearer <token>`; read tokens may only GET. Every POST honours `Idempotency-Key`. Errors are `{\"error\": code, \"message\": text}`."),
    paths(
        runs::list, runs::show, runs::cancel, runs::replay, runs::redeliver,
        deliveries::list, deliveries::recover, deliveries::recovery,
        endpoints::list, endpoints::pause, endpoints::resume, endpoints::test,
        config::requests, config::routes, config::providers, config::reload,
    ),
    components(schemas(
        view::RunSummary, view::DeliveryCounts, view::RunPage, view::RunDetail,
        view::StatusChangeView, view::EventView, view::AttemptView, view::DeliveryView,
        view::CancelView, view::DeliveryItem, view::DeliveryPage, view::Recovery,
        view::RecoveryState, view::EndpointView, view::TestResult, view::RequestRecord,
        view::RequestOutcome, view::RouteView, view::VerifyView, view::CallbackView,
        view::ProviderView, view::CancelResult, view::ReloadResult, view::ReloadReportView,
        view::ErrorBody,
    )),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as served and committed: pretty JSON with a final newline,
/// and without the crate version (so a version bump does not change it).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = "1".into();
    let mut text = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// `GET /openapi.json` (no token needed).
pub(super) async fn serve() -> impl IntoResponse {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(document);
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_has_every_path_and_a_bearer_scheme() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        for p in [
            "/runs",
            "/runs/{id}",
            "/deliveries",
            "/endpoints",
            "/requests",
            "/reload",
        ] {
            assert!(doc["paths"][p].is_object(), "{p} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
