//! The delivery worker: a background task of the server that sends the outbox.
//!
//! - **Per-endpoint order.** An endpoint's deliveries go out in `seq` order, one at a time: a
//!   delivery waiting for its retry holds back every later one to that endpoint (a dead-lettered
//!   one no longer does). Different endpoints are served concurrently, so one failing receiver
//!   never delays another. Each pass takes a *lease* on the endpoint row, so with several
//!   server processes still only one sends an endpoint's queue.
//! - **Retries** follow `webhooks.retry_schedule_ms` (about 3 days by default) with ±20 %
//!   jitter, so receivers coming back up are not hit by every sender at once; after the last
//!   retry the delivery is `dead` (replayable by API).
//! - **Automatic disabling.** An endpoint whose every attempt has failed for
//!   `webhooks.disable_after_seconds` is disabled (`disabled_reason: failing`, and a
//!   `webhook_endpoint_disabled` security event in the same transaction); its deliveries
//!   wait, and re-enabling it sends them.
//! - **Never in the request path.** Events are written by the request's own transaction; this
//!   task reads them afterwards. A receiver that is slow or down costs the request nothing.
//! - **What "earlier" means.** Deliveries are numbered when their transaction inserts them.
//!   On SQLite writers are serialized, so that is commit order. On PostgreSQL two transactions
//!   running at the same moment may commit in the other order, and the worker can see the later
//!   number first and send it before the earlier one commits. Events of one object never race
//!   like that (its row lock orders them); events of *different* objects may arrive out of
//!   order within that window, so receivers should not infer cross-object order (each event
//!   carries its timestamp; `ledger.entry_posted` carries `ledger_seq`, which is commit order).
//! - What is recorded of an attempt: the HTTP status and a short error code; never the body
//!   sent or received, never the secret.

use std::time::Duration;

use rand::Rng;
use sqlx::Row;
use zeroize::Zeroizing;

use super::config::WebhookSettings;
use super::endpoints::SECRET_COLUMN;
use super::{signing, target, SYS_WEBHOOKS};
use crate::crypto::Field;
use crate::db::{now_us, us_to_rfc3339};
use crate::identity::events;
use crate::AppState;

/// Endpoints served per pass, at most (concurrently).
const ENDPOINTS_PER_PASS_MAX: i64 = 64;
/// Deliveries one endpoint gets per pass, at most (in order, one after the other).
const DELIVERIES_PER_ENDPOINT_PASS_MAX: i64 = 200;
/// Shortest lease on an endpoint's queue.
const LEASE_MS_MIN: i64 = 60_000;

/// Starts the worker unless `poll_interval_ms` is 0 (then another process delivers).
pub fn spawn(state: AppState) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let settings = state.config.webhooks.clone();
    if settings.poll_interval_ms == 0 {
        return Ok(None);
    }
    let client = target::delivery_client(&settings)?;
    Ok(Some(tokio::spawn(async move {
        let idle = Duration::from_millis(settings.poll_interval_ms);
        // Until the pool is closed (the server shutting down, or a test finishing).
        while !state.db.pool.is_closed() {
            match run_once(&state, &client).await {
                // Work was done: look again at once (a backlog drains at full speed).
                Ok(n) if n > 0 => tokio::task::yield_now().await,
                Ok(_) => tokio::time::sleep(idle).await,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook delivery pass failed");
                    tokio::time::sleep(idle).await;
                }
            }
        }
    })))
}

/// One pass over every endpoint with due deliveries; returns the attempts made.
pub async fn run_once(state: &AppState, client: &reqwest::Client) -> anyhow::Result<usize> {
    let now = now_us();
    let endpoints: Vec<String> = sqlx::query_scalar(
        "SELECT e.id FROM webhook_endpoints e WHERE e.status = 'enabled' \
         AND (e.lease_until_us IS NULL OR e.lease_until_us < $1) \
         AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id \
                     AND d.status = 'pending' AND d.next_attempt_at_us <= $1) \
         ORDER BY e.seq LIMIT $2",
    )
    .bind(now)
    .bind(ENDPOINTS_PER_PASS_MAX)
    .fetch_all(&state.db.pool)
    .await?;
    let passes = endpoints
        .iter()
        .map(|endpoint| serve_endpoint(state, client, endpoint));
    let mut attempts = 0usize;
    for result in futures::future::join_all(passes).await {
        match result {
            Ok(n) => attempts = attempts.saturating_add(n),
            Err(e) => tracing::warn!(error = %e, "webhook endpoint pass failed"),
        }
    }
    Ok(attempts)
}

struct Target {
    url: reqwest::Url,
    secrets: Vec<Zeroizing<String>>,
}

/// Sends `endpoint`'s due deliveries in order, under a lease; returns the attempts made.
async fn serve_endpoint(
    state: &AppState,
    client: &reqwest::Client,
    endpoint: &str,
) -> anyhow::Result<usize> {
    let settings = &state.config.webhooks;
    let timeout_ms = i64::try_from(settings.timeout_ms).unwrap_or(i64::MAX);
    let lease_ms = timeout_ms.saturating_mul(3).max(LEASE_MS_MIN);
    let now = now_us();
    let lease_until = now.saturating_add(lease_ms.saturating_mul(1000));
    let claimed = sqlx::query(
        "UPDATE webhook_endpoints SET lease_until_us = $1 WHERE id = $2 AND status = 'enabled' \
         AND (lease_until_us IS NULL OR lease_until_us < $3)",
    )
    .bind(lease_until)
    .bind(endpoint)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    if claimed.rows_affected() != 1 {
        return Ok(0);
    }
    let result = deliver_queue(state, client, endpoint, lease_until, timeout_ms).await;
    sqlx::query(
        "UPDATE webhook_endpoints SET lease_until_us = NULL WHERE id = $1 AND lease_until_us = $2",
    )
    .bind(endpoint)
    .bind(lease_until)
    .execute(&state.db.pool)
    .await?;
    result
}

async fn load_target(state: &AppState, endpoint: &str) -> anyhow::Result<Target> {
    let row = sqlx::query(
        "SELECT url, secret_sealed, previous_secret_sealed, previous_secret_expires_at_us \
         FROM webhook_endpoints WHERE id = $1",
    )
    .bind(endpoint)
    .fetch_one(&state.db.pool)
    .await?;
    let key = state
        .keys
        .system_key(SYS_WEBHOOKS)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.client_message()))?;
    let field = Field::new(SECRET_COLUMN, SYS_WEBHOOKS, endpoint);
    let mut secrets = vec![key
        .open(field, &row.try_get::<String, _>("secret_sealed")?)
        .map_err(|e| anyhow::anyhow!("webhook secret of {endpoint}: {e}"))?];
    let previous: Option<String> = row.try_get("previous_secret_sealed")?;
    let expires: Option<i64> = row.try_get("previous_secret_expires_at_us")?;
    if let (Some(previous), Some(expires)) = (previous, expires) {
        if expires > now_us() {
            secrets.push(
                key.open(field, &previous)
                    .map_err(|e| anyhow::anyhow!("previous webhook secret of {endpoint}: {e}"))?,
            );
        }
    }
    let url = reqwest::Url::parse(&row.try_get::<String, _>("url")?)?;
    Ok(Target { url, secrets })
}

async fn deliver_queue(
    state: &AppState,
    client: &reqwest::Client,
    endpoint: &str,
    lease_until: i64,
    timeout_ms: i64,
) -> anyhow::Result<usize> {
    let settings = &state.config.webhooks;
    let target = load_target(state, endpoint).await?;
    let rows = sqlx::query(
        "SELECT d.id, d.event_id, d.attempts, d.next_attempt_at_us, ev.payload \
         FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id \
         WHERE d.endpoint_id = $1 AND d.status = 'pending' ORDER BY d.seq LIMIT $2",
    )
    .bind(endpoint)
    .bind(DELIVERIES_PER_ENDPOINT_PASS_MAX)
    .fetch_all(&state.db.pool)
    .await?;
    let mut attempts = 0usize;
    for row in rows {
        let now = now_us();
        let next: i64 = row.try_get("next_attempt_at_us")?;
        // In order: a delivery waiting for its retry holds back the later ones.
        if next > now || now.saturating_add(timeout_ms.saturating_mul(1000)) >= lease_until {
            break;
        }
        let delivery: String = row.try_get("id")?;
        let event: String = row.try_get("event_id")?;
        let payload: String = row.try_get("payload")?;
        let done: i64 = row.try_get("attempts")?;
        let outcome = attempt(client, settings, &target, &event, payload.as_bytes()).await;
        attempts = attempts.saturating_add(1);
        let attempts_now = done.saturating_add(1);
        match outcome {
            Ok(status) => {
                record_success(state, endpoint, &delivery, attempts_now, status).await?;
            }
            Err(failure) => {
                let dead =
                    record_failure(state, endpoint, &delivery, attempts_now, &failure).await?;
                if !dead {
                    break;
                }
            }
        }
    }
    Ok(attempts)
}

/// Why an attempt failed: the receiver's status, or a short code; never a body.
#[derive(Debug)]
struct Failure {
    status: Option<u16>,
    code: &'static str,
}

/// One signed POST. `Ok(status)` for a 2xx.
async fn attempt(
    client: &reqwest::Client,
    settings: &WebhookSettings,
    target: &Target,
    event: &str,
    body: &[u8],
) -> Result<u16, Failure> {
    let fail = |code| Failure { status: None, code };
    // Checked again at every attempt (the rules may have tightened since registration; an IP
    // literal never reaches the guarded resolver).
    if target.url.scheme() != "https" && !settings.allow_http {
        return Err(fail("forbidden_scheme"));
    }
    if target::literal_forbidden(&target.url, settings.allow_private).is_some() {
        return Err(fail("forbidden_address"));
    }
    let timestamp = chrono::Utc::now().timestamp();
    let secrets: Vec<&str> = target.secrets.iter().map(|s| s.as_str()).collect();
    let signature = signing::signature_header(&secrets, event, timestamp, body)
        .map_err(|_| fail("signing_failed"))?;
    let response = client
        .post(target.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", event)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| fail(classify(&e)))?;
    let status = response.status();
    // The answer's body is not read beyond what the connection needs, and never stored.
    drop(response);
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(Failure {
            status: Some(status.as_u16()),
            code: if status.is_redirection() {
                "redirect_not_followed"
            } else {
                "http_status"
            },
        })
    }
}

fn classify(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<target::ForbiddenAddress>().is_some() {
            return "forbidden_address";
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect_failed"
    } else {
        "request_failed"
    }
}

async fn record_success(
    state: &AppState,
    endpoint: &str,
    delivery: &str,
    attempts: i64,
    status: u16,
) -> anyhow::Result<()> {
    let now = now_us();
    let mut tx = state.db.begin_write().await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'succeeded', attempts = $1, last_status = $2, \
         last_error = NULL, last_attempt_at_us = $3, updated_at_us = $3 WHERE id = $4",
    )
    .bind(attempts)
    .bind(i64::from(status))
    .bind(now)
    .bind(delivery)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since_us = NULL WHERE id = $1 AND failing_since_us IS NOT NULL",
    )
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(endpoint, delivery, status, "webhook delivered");
    Ok(())
}

/// Records a failed attempt: the next retry, or dead after the last. Disables the endpoint
/// once it has failed for `disable_after_seconds`. Returns whether the delivery is dead.
async fn record_failure(
    state: &AppState,
    endpoint: &str,
    delivery: &str,
    attempts: i64,
    failure: &Failure,
) -> anyhow::Result<bool> {
    let settings = &state.config.webhooks;
    let now = now_us();
    let retry = usize::try_from(attempts.saturating_sub(1))
        .ok()
        .and_then(|i| settings.retry_schedule_ms.get(i))
        .copied();
    let (status, next) = match retry {
        Some(delay_ms) => (
            "pending",
            now.saturating_add(jittered_ms(delay_ms).saturating_mul(1000)),
        ),
        None => ("dead", now),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at_us = $3, \
         last_status = $4, last_error = $5, last_attempt_at_us = $6, updated_at_us = $6 WHERE id = $7",
    )
    .bind(status)
    .bind(attempts)
    .bind(next)
    .bind(failure.status.map(i64::from))
    .bind(failure.code)
    .bind(now)
    .bind(delivery)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since_us = COALESCE(failing_since_us, $1) WHERE id = $2",
    )
    .bind(now)
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    let disable_before = now.saturating_sub(
        i64::try_from(settings.disable_after_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000),
    );
    // Disabled now: when it began failing (never NULL here: the condition compared it).
    let disabled: Option<i64> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = 'failing', updated_at_us = $1 \
         WHERE id = $2 AND status = 'enabled' AND failing_since_us <= $3 RETURNING failing_since_us",
    )
    .bind(now)
    .bind(endpoint)
    .bind(disable_before)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(failing_since) = disabled {
        // In the same transaction: the endpoint is disabled exactly when the log says so.
        let detail = format!("failing_since={}", us_to_rfc3339(failing_since));
        events::record_in(
            &mut tx,
            events::Kind::WebhookEndpointDisabled,
            events::Event {
                actor: Some("webhook-worker"),
                subject: Some(endpoint),
                detail: Some(&detail),
                ..events::Event::default()
            },
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(
        endpoint,
        delivery,
        attempts,
        status = failure.status,
        error = failure.code,
        dead = status == "dead",
        "webhook delivery failed"
    );
    if disabled.is_some() {
        tracing::warn!(endpoint, "webhook endpoint disabled: failing for too long");
    }
    Ok(status == "dead")
}

/// `delay_ms` ± 20 %, uniformly.
fn jittered_ms(delay_ms: u64) -> i64 {
    let spread = delay_ms / 5;
    let low = delay_ms.saturating_sub(spread);
    let high = delay_ms.saturating_add(spread);
    let ms = rand::thread_rng().gen_range(low..=high);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let ms = jittered_ms(10_000);
            assert!((8_000..=12_000).contains(&ms), "{ms}");
        }
        assert_eq!(jittered_ms(0), 0);
    }
}
