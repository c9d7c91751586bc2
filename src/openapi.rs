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
    tags((name = "patients"), (name = "invoices"), (name = "payments"), (name = "refunds"), (name = "ledger"))
)]
pub struct ApiDoc;

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
