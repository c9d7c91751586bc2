//! Cards (`tok_…`): tokenize, read masked metadata, mint a processor payment method, delete.
//! Each operation writes its audit record in the same transaction as its effect.

use serde::Serialize;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::audit;
use crate::card::{CardNumber, Cvc, Expiry};
use crate::db::{now_us, placeholders};
use crate::http::error::{VaultError, VaultResult};
use crate::keys::{FIELD_CARDHOLDER_NAME, FIELD_CARD_NUMBER};
use crate::AppState;

/// Random part of a token: 24 base62 characters (~143 bits). It says nothing about the card.
const TOKEN_RANDOM_CHARS: usize = 24;

pub fn new_token() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    let random: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(TOKEN_RANDOM_CHARS)
        .map(char::from)
        .collect();
    format!("tok_{random}")
}

/// Whether `s` has the shape of a token (checked before any database read).
pub fn is_token(s: &str) -> bool {
    s.strip_prefix("tok_").is_some_and(|r| {
        r.len() == TOKEN_RANDOM_CHARS && r.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// What any caller may see of a card.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CardView {
    pub id: String,
    /// Always `"card"`.
    pub object: &'static str,
    pub fingerprint: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
}

/// A validated card from the collect form. `Debug` shows brand, last four and expiry only.
#[derive(Clone)]
pub struct NewCard {
    pub number: CardNumber,
    pub expiry: Expiry,
    pub name: Option<Zeroizing<String>>,
    pub cvc: Cvc,
}

impl std::fmt::Debug for NewCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCard")
            .field("number", &self.number)
            .field("expiry", &self.expiry)
            .field("name", &self.name.as_ref().map(|_| "[redacted]"))
            .field("cvc", &self.cvc)
            .finish()
    }
}

/// Who is asking, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub request_id: Option<String>,
}

/// Tokenizes `card`: the same card number always gives the same token (looked up by its
/// deterministic ciphertext under every active key version). The CVC is held in memory only.
/// Returns the card and whether it was new.
pub async fn tokenize(
    state: &AppState,
    card: NewCard,
    actor: &Actor,
) -> VaultResult<(CardView, bool)> {
    let backend = state.db.backend;
    let (view, created) = state
        .db
        .write(|tx| {
            let (state, card, actor) = (state.clone(), card.clone(), actor.clone());
            Box::pin(async move {
                let keyring = state.keys.current(tx).await?;
                let digits = card.number.expose_digits().as_bytes();
                let mut candidates = Vec::with_capacity(keyring.active().len());
                for key in keyring.active() {
                    candidates.push(
                        key.encrypt_field(FIELD_CARD_NUMBER, digits)
                            .map_err(anyhow::Error::from)?,
                    );
                }
                let sql = format!(
                    "SELECT id, key_version, fingerprint, brand, last4, created_at FROM cards \
                     WHERE pan_ct IN ({}){}",
                    placeholders(1, candidates.len()),
                    backend.for_update()
                );
                let mut query = sqlx::query(&sql);
                for ct in &candidates {
                    query = query.bind(ct.clone());
                }
                let existing = query.fetch_optional(&mut **tx).await?;
                let now = now_us();
                let exp_month = i64::from(card.expiry.month);
                let exp_year = i64::from(card.expiry.year);
                let (view, created) = match existing {
                    Some(row) => {
                        let id: String = row.try_get(0)?;
                        let version: i64 = row.try_get(1)?;
                        let key = keyring
                            .get(version)
                            .ok_or_else(|| anyhow::anyhow!("card key v{version} not loaded"))?;
                        let name_ct = encrypt_name(key, card.name.as_ref())?;
                        // A reissued card keeps its number with a new expiry: keep the latest.
                        sqlx::query(
                            "UPDATE cards SET exp_month = $1, exp_year = $2, \
                             name_ct = COALESCE($3, name_ct), updated_at = $4 WHERE id = $5",
                        )
                        .bind(exp_month)
                        .bind(exp_year)
                        .bind(name_ct)
                        .bind(now)
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                        let view = CardView {
                            id,
                            object: "card",
                            fingerprint: row.try_get(2)?,
                            brand: row.try_get(3)?,
                            last4: row.try_get(4)?,
                            exp_month,
                            exp_year,
                        };
                        (view, false)
                    }
                    None => {
                        let key = keyring
                            .primary()
                            .ok_or_else(|| anyhow::anyhow!("no primary card key"))?;
                        let pan_ct = key
                            .encrypt_field(FIELD_CARD_NUMBER, digits)
                            .map_err(anyhow::Error::from)?;
                        let name_ct = encrypt_name(key, card.name.as_ref())?;
                        let view = CardView {
                            id: new_token(),
                            object: "card",
                            fingerprint: keyring.fingerprint(card.number.expose_digits()),
                            brand: card.number.brand().as_str().to_owned(),
                            last4: card.number.last4().to_owned(),
                            exp_month,
                            exp_year,
                        };
                        sqlx::query(
                            "INSERT INTO cards (id, key_version, pan_ct, name_ct, fingerprint, brand, \
                             last4, exp_month, exp_year, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
                        )
                        .bind(&view.id)
                        .bind(key.version)
                        .bind(pan_ct)
                        .bind(name_ct)
                        .bind(&view.fingerprint)
                        .bind(&view.brand)
                        .bind(&view.last4)
                        .bind(exp_month)
                        .bind(exp_year)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                        (view, true)
                    }
                };
                audit::append(
                    tx,
                    backend,
                    &audit::Event {
                        actor: &actor.name,
                        action: "tokenize",
                        token: Some(&view.id),
                        outcome: if created { "created" } else { "existing" },
                        request_id: actor.request_id.as_deref(),
                    },
                )
                .await?;
                Ok::<_, VaultError>((view, created))
            })
        })
        .await?;
    state.cvcs.put(&view.id, &card.cvc);
    Ok((view, created))
}

fn encrypt_name(
    key: &crate::crypto::PanKey,
    name: Option<&Zeroizing<String>>,
) -> VaultResult<Option<Vec<u8>>> {
    match name {
        Some(n) => Ok(Some(
            key.encrypt_field(FIELD_CARDHOLDER_NAME, n.as_bytes())
                .map_err(anyhow::Error::from)?,
        )),
        None => Ok(None),
    }
}

/// Records a refused operation (bad input, unknown token) in the audit trail.
pub async fn audit_refusal(
    state: &AppState,
    actor: &Actor,
    action: &str,
    token: Option<&str>,
    error: &VaultError,
) -> VaultResult<()> {
    let outcome = error.outcome();
    audit::record(
        &state.db,
        &audit::Event {
            actor: &actor.name,
            action,
            token,
            outcome: &outcome,
            request_id: actor.request_id.as_deref(),
        },
    )
    .await?;
    Ok(())
}

fn view_from_row(row: &sqlx::any::AnyRow) -> Result<CardView, sqlx::Error> {
    Ok(CardView {
        id: row.try_get("id")?,
        object: "card",
        fingerprint: row.try_get("fingerprint")?,
        brand: row.try_get("brand")?,
        last4: row.try_get("last4")?,
        exp_month: row.try_get("exp_month")?,
        exp_year: row.try_get("exp_year")?,
    })
}

/// Masked metadata of a live card.
pub async fn get(state: &AppState, token: &str, actor: &Actor) -> VaultResult<CardView> {
    let backend = state.db.backend;
    state
        .db
        .write(|tx| {
            let (token, actor) = (token.to_owned(), actor.clone());
            Box::pin(async move {
                let token = token.as_str();
                let row = sqlx::query(
                    "SELECT id, fingerprint, brand, last4, exp_month, exp_year FROM cards \
                     WHERE id = $1 AND pan_ct IS NOT NULL",
                )
                .bind(token)
                .fetch_optional(&mut **tx)
                .await?;
                let result = row.as_ref().map(view_from_row).transpose()?;
                audit::append(
                    tx,
                    backend,
                    &audit::Event {
                        actor: &actor.name,
                        action: "get",
                        token: Some(token),
                        outcome: if result.is_some() { "ok" } else { "not_found" },
                        request_id: actor.request_id.as_deref(),
                    },
                )
                .await?;
                Ok::<_, VaultError>(result)
            })
        })
        .await?
        .ok_or_else(|| VaultError::not_found("token"))
}

/// What billing gets back from `charge-method`: the processor's payment method and the
/// card's masked metadata.
#[derive(Debug, Clone, Serialize)]
pub struct ChargeMethod {
    /// Always `"charge_method"`.
    pub object: &'static str,
    pub card: CardView,
    pub payment_method: String,
    /// `provided` or `unavailable`.
    pub cvc: &'static str,
}

/// Decrypts the card inside the vault and has the processor adapter turn it into a payment
/// method; a held CVC goes with it once and is wiped.
pub async fn charge_method(
    state: &AppState,
    token: &str,
    actor: &Actor,
) -> VaultResult<ChargeMethod> {
    let loaded = state
        .db
        .write(|tx| {
            let (state, token) = (state.clone(), token.to_owned());
            Box::pin(async move {
                let keyring = state.keys.current(tx).await?;
                let row = sqlx::query(
                    "SELECT id, fingerprint, brand, last4, exp_month, exp_year, key_version, pan_ct \
                     FROM cards WHERE id = $1 AND pan_ct IS NOT NULL",
                )
                .bind(token)
                .fetch_optional(&mut **tx)
                .await?;
                let Some(row) = row else {
                    return Ok::<_, VaultError>(None);
                };
                let view = view_from_row(&row)?;
                let version: i64 = row.try_get("key_version")?;
                let pan_ct: Vec<u8> = row.try_get("pan_ct")?;
                let key = keyring
                    .get(version)
                    .ok_or_else(|| anyhow::anyhow!("card key v{version} not loaded"))?;
                let plain = key
                    .decrypt_field(FIELD_CARD_NUMBER, &pan_ct)
                    .map_err(anyhow::Error::from)?;
                let number = CardNumber::from_stored(plain)
                    .ok_or_else(|| anyhow::anyhow!("stored card number does not validate"))?;
                Ok(Some((view, number)))
            })
        })
        .await?;
    let Some((view, number)) = loaded else {
        let error = VaultError::not_found("token");
        audit_refusal(state, actor, "charge_method", Some(token), &error).await?;
        return Err(error);
    };
    let expiry = Expiry {
        month: u32::try_from(view.exp_month).unwrap_or(1),
        year: i32::try_from(view.exp_year).unwrap_or(2000),
    };
    let cvc = state.cvcs.take(token);
    let minted = state
        .minter
        .mint(&number, expiry, cvc, chrono::Utc::now().date_naive())
        .await;
    drop(number);
    let outcome = match &minted {
        Ok(m) => format!("ok:cvc_{}", m.cvc),
        Err(_) => "error:processor".to_owned(),
    };
    audit::record(
        &state.db,
        &audit::Event {
            actor: &actor.name,
            action: "charge_method",
            token: Some(token),
            outcome: &outcome,
            request_id: actor.request_id.as_deref(),
        },
    )
    .await?;
    let minted = minted.map_err(|e| {
        tracing::error!(error = %e, "processor adapter failed");
        VaultError::Client {
            status: axum::http::StatusCode::BAD_GATEWAY,
            kind: "api_error",
            code: "processor_unavailable",
            message: "The payment processor could not be reached.",
            param: None,
        }
    })?;
    Ok(ChargeMethod {
        object: "charge_method",
        card: view,
        payment_method: minted.payment_method,
        cvc: minted.cvc,
    })
}

/// Deletes a card: its ciphertexts are destroyed; token, brand, last four and fingerprint stay
/// for the history of payments made with it.
pub async fn delete(state: &AppState, token: &str, actor: &Actor) -> VaultResult<CardView> {
    let backend = state.db.backend;
    let view = state
        .db
        .write(|tx| {
            let (token, actor) = (token.to_owned(), actor.clone());
            Box::pin(async move {
                let token = token.as_str();
                let row = sqlx::query(&format!(
                    "SELECT id, fingerprint, brand, last4, exp_month, exp_year FROM cards \
                     WHERE id = $1 AND pan_ct IS NOT NULL{}",
                    backend.for_update()
                ))
                .bind(token)
                .fetch_optional(&mut **tx)
                .await?;
                let view = row.as_ref().map(view_from_row).transpose()?;
                if view.is_some() {
                    sqlx::query(
                        "UPDATE cards SET pan_ct = NULL, name_ct = NULL, key_version = NULL, \
                         deleted_at = $1, updated_at = $1 WHERE id = $2",
                    )
                    .bind(now_us())
                    .bind(token)
                    .execute(&mut **tx)
                    .await?;
                }
                audit::append(
                    tx,
                    backend,
                    &audit::Event {
                        actor: &actor.name,
                        action: "delete",
                        token: Some(token),
                        outcome: if view.is_some() { "ok" } else { "not_found" },
                        request_id: actor.request_id.as_deref(),
                    },
                )
                .await?;
                Ok::<_, VaultError>(view)
            })
        })
        .await?
        .ok_or_else(|| VaultError::not_found("token"))?;
    state.cvcs.forget(token);
    Ok(view)
}
