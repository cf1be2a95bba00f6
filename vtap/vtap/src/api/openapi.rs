//! `/api/v1/openapi.json`: the OpenAPI document, generated from the handler
//! annotations and the wire types (utoipa), not written by hand.

use axum::Json;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{captures, policies, probes, taps};
use crate::wire;

#[derive(OpenApi)]
#[openapi(
    info(title = "vtap", description = "eBPF virtual TAP and mirroring appliance: policies, taps, counters, captures."),
    paths(
        policies::list,
        policies::get_one,
        policies::put_one,
        policies::put_batch,
        policies::delete_one,
        taps::list,
        taps::get_one,
        taps::put_one,
        taps::delete_one,
        taps::stats,
        captures::list,
        captures::get_one,
        captures::stream,
        probes::list,
        probes::get_one,
        probes::put_one,
        probes::delete_one,
        probes::metrics,
        probes::metric,
    ),
    components(schemas(
        wire::ErrorBody,
        wire::ErrorDetail,
        wire::PolicyList,
        wire::PolicyStatus,
        wire::PolicyState,
        wire::PolicyCounters,
        wire::PacketsBytes,
        wire::ChangeResult,
        wire::PolicyBatch,
        wire::TapList,
        wire::TapInfo,
        wire::TapCounters,
        wire::TapRequest,
        wire::Stats,
        wire::PolicyStats,
        wire::OutputStats,
        wire::CaptureList,
        wire::CaptureInfo,
        wire::CaptureFile,
    )),
    modifiers(&Security),
    security(("bearer" = [])),
    tags((name = "policies"), (name = "taps"), (name = "stats"), (name = "captures"), (name = "probes"))
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Serves the document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
