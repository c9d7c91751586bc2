//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the request/response types, served at `/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "carebill API", description = "Payments and billing for healthcare providers: patients, invoices, payments, refunds and a double-entry ledger. Amounts are integer minor units; currencies lowercase ISO 4217."),
    paths(
        crate::stripe::webhooks::receive,
        crate::webhooks::endpoints::create_endpoint, crate::webhooks::endpoints::list_endpoints,
        crate::webhooks::endpoints::get_endpoint, crate::webhooks::endpoints::update_endpoint,
        crate::webhooks::endpoints::delete_endpoint, crate::webhooks::endpoints::rotate_secret,
        crate::webhooks::events::list_events, crate::webhooks::events::get_event,
        crate::webhooks::events::replay_event,
        crate::patients::create_patient, crate::patients::list_patients, crate::patients::get_patient,
        crate::patients::update_patient, crate::patients::statement,
        crate::patients::search_patients, crate::patients::erase_personal_data,
        crate::invoices::create_invoice, crate::invoices::list_invoices, crate::invoices::get_invoice,
        crate::invoices::finalize_invoice, crate::invoices::void_invoice,
        crate::invoices::create_adjustment, crate::invoices::list_adjustments,
        crate::invoices::approve_adjustment, crate::invoices::reject_adjustment,
        crate::payments::create_payment, crate::payments::list_payments, crate::payments::get_payment,
        crate::refunds::create_refund, crate::refunds::list_refunds, crate::refunds::get_refund,
        crate::refunds::approve_refund, crate::refunds::reject_refund,
        crate::ledger::list_accounts, crate::ledger::get_account, crate::ledger::list_entries, crate::ledger::get_entry,
        crate::export::export, crate::export::reports::trial_balance, crate::export::reports::account_statement,
        crate::export::reports::ar_aging,
    ),
    modifiers(&BearerAuth),
    tags((name = "patients"), (name = "invoices"), (name = "payments"), (name = "refunds"), (name = "ledger"),
         (name = "webhooks", description = "Outbound webhooks for accounting systems (Standard Webhooks signatures; `admin` or the `webhooks:manage` scope), and Stripe's inbound events"))
)]
pub struct ApiDoc;

/// Every 4xx and 5xx answers this envelope. A 4xx names the parameter (`param`) and never echoes
/// the submitted value; a 5xx reveals nothing but the request id.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: crate::error::ErrorType,
    /// Machine-readable: `parameter_invalid`, `parameter_missing`, `resource_missing`,
    /// `idempotency_key_reused`, …
    pub code: String,
    pub message: String,
    /// The parameter at fault (a body field such as `enabled_events[2]`, a query parameter, a
    /// path segment such as `id`, or a header such as `Idempotency-Key`).
    pub param: Option<String>,
    /// The request's id, also in the logs.
    pub request_id: Option<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("cbk_…")
                    .build(),
            ),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
