//! Ledger export for accounting systems: `GET /v1/ledger/export` and `carebill export`.
//!
//! - **Streaming**: one read-only snapshot transaction, one query ordered by the ledger's commit
//!   sequence, each entry formatted into a small buffer and handed over a bounded channel to the
//!   response body (or the file). Memory stays flat however many entries there are.
//! - **Incremental, exactly once**: every entry carries `ledger_seq`, allocated under the
//!   `ledger_head` row lock, which is held to commit — so `ledger_seq` order *is* commit order,
//!   and a reader that sees entry n sees every entry before it. An export covers
//!   `after_cursor < ledger_seq <= head` in one snapshot and answers the new cursor
//!   (`Carebill-Export-Cursor`); the next pull passes it back as `after_cursor` and gets exactly
//!   what was posted since, none missing and none twice, whatever was being posted meanwhile.
//! - **Minimum necessary**: patients appear only as a keyed pseudonym (`ps_…`, HMAC-SHA256 of the
//!   patient id under this deployment's export key), also inside account ids. Names and card
//!   brand/last four only in identified exports, which need the identified-export permission.
//! - Every export is recorded in `export_audit` before its first byte is sent.

pub mod bench;
pub mod format;
pub mod reports;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures::TryStreamExt;
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::api::{date_field, ApiQuery};
use crate::auth::{Action, Principal};
use crate::db::{now_us, us_to_rfc3339, Backend, Db};
use crate::error::{ApiError, ApiResult};
use crate::money::Currency;
use crate::AppState;
use format::{ExportAccount, ExportEntry, ExportPosting, Format, References};

/// Chunks handed to the response body are flushed at about this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the database reader and the client: the memory bound.
const CHUNKS_IN_FLIGHT: usize = 4;
/// The longest `from`..`to` range one export may cover.
pub const RANGE_DAYS_MAX: i64 = 400;
/// Characters of the pseudonym's hex HMAC (80 bits: no collisions among a provider's patients).
const PSEUDONYM_HEX: usize = 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/ledger/export", get(export))
        .merge(reports::router())
}

/// This deployment's identity and export key, created on first use.
#[derive(Clone)]
pub struct Deployment {
    pub id: String,
    /// The pseudonym key: the `sys:export-pseudonyms` data key (stored wrapped under the KEK).
    key: Arc<zeroize::Zeroizing<Vec<u8>>>,
    /// For identified exports: opening patients' names.
    keys: Arc<crate::crypto::Keys>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment").field("id", &self.id).finish()
    }
}

impl Deployment {
    pub async fn load(db: &Db, keys: &Arc<crate::crypto::Keys>) -> ApiResult<Deployment> {
        let id = crate::ids::random_base62(10);
        sqlx::query(
            "INSERT INTO deployment (id, deployment_id, created_at_us) \
             VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(now_us())
        .execute(&db.pool)
        .await?;
        let id: String = sqlx::query_scalar("SELECT deployment_id FROM deployment WHERE id = 1")
            .fetch_one(&db.pool)
            .await?;
        let key = keys
            .system_key(crate::crypto::store::SYS_EXPORT_PSEUDONYMS)
            .await?;
        Ok(Deployment {
            id,
            key: Arc::new(zeroize::Zeroizing::new(key.expose().to_vec())),
            keys: keys.clone(),
        })
    }

    /// The keyed pseudonym of a patient id.
    pub fn pseudonym(&self, patient_id: &str) -> String {
        use hmac::{Hmac, Mac};
        let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.key.as_slice()) else {
            return "ps_unavailable".to_owned();
        };
        mac.update(b"carebill/export-pseudonym/v1\0");
        mac.update(patient_id.as_bytes());
        let tag = hex::encode(mac.finalize().into_bytes());
        format!("ps_{}", tag.get(..PSEUDONYM_HEX).unwrap_or(&tag))
    }

    pub fn cursor(&self, seq: i64) -> String {
        format!("lc_{}_{seq}", self.id)
    }

    /// Parses a cursor this deployment issued.
    pub fn parse_cursor(&self, cursor: &str, param: &str) -> ApiResult<i64> {
        let invalid = || {
            ApiError::invalid(
                param,
                "cursor_invalid",
                "Not an export cursor: pass back the Carebill-Export-Cursor of an earlier export.",
            )
        };
        let rest = cursor.strip_prefix("lc_").ok_or_else(invalid)?;
        let (deployment, seq) = rest.rsplit_once('_').ok_or_else(invalid)?;
        let seq: i64 = seq.parse().map_err(|_| invalid())?;
        if seq < 0 || !deployment.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid());
        }
        if deployment != self.id {
            return Err(ApiError::invalid(
                param,
                "cursor_foreign",
                "This cursor was issued by another carebill deployment.",
            ));
        }
        Ok(seq)
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub format: Format,
    pub after_seq: i64,
    pub from: Option<chrono::NaiveDate>,
    pub to: Option<chrono::NaiveDate>,
    pub identified: bool,
    /// `key_…` or `cli`.
    pub requested_by: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    pub format: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub after_cursor: Option<String>,
    pub identified: Option<String>,
}

/// Validates the query into a request (shared by the API and the CLI).
pub fn parse_request(
    deployment: &Deployment,
    q: &ExportQuery,
    requested_by: String,
) -> ApiResult<ExportRequest> {
    let format = match q.format.as_deref() {
        None => {
            return Err(ApiError::invalid(
                "format",
                "parameter_missing",
                "Missing required parameter.",
            ))
        }
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::invalid(
                "format",
                "parameter_invalid",
                "Must be one of csv, jsonl, beancount, hledger.",
            )
        })?,
    };
    let from = q
        .from
        .as_deref()
        .map(|v| date_field("from", v))
        .transpose()?;
    let to = q.to.as_deref().map(|v| date_field("to", v)).transpose()?;
    if let (Some(from), Some(to)) = (from, to) {
        if to < from {
            return Err(ApiError::invalid(
                "to",
                "range_invalid",
                "`to` is before `from`.",
            ));
        }
        if (to - from).num_days() > RANGE_DAYS_MAX {
            return Err(ApiError::invalid(
                "to",
                "range_too_large",
                "The range is longer than an export may cover (400 days); export it in parts.",
            ));
        }
    }
    let after_seq = match q.after_cursor.as_deref() {
        Some(c) => deployment.parse_cursor(c, "after_cursor")?,
        None => 0,
    };
    let identified = match q.identified.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "identified",
                "parameter_invalid",
                "Must be true or false.",
            ))
        }
    };
    Ok(ExportRequest {
        format,
        after_seq,
        from,
        to,
        identified,
        requested_by,
    })
}

/// Stream or download the ledger.
#[utoipa::path(get, path = "/v1/ledger/export", tag = "ledger",
    params(("format" = String, Query, description = "csv, jsonl, beancount or hledger"),
           ("from" = Option<String>, Query, description = "first effective date (YYYY-MM-DD)"),
           ("to" = Option<String>, Query, description = "last effective date (YYYY-MM-DD)"),
           ("after_cursor" = Option<String>, Query, description = "the cursor of the previous export"),
           ("identified" = Option<bool>, Query, description = "names and card brand/last four (needs the identified-export permission)")),
    responses((status = 200, description = "The export, streamed; the new cursor is in Carebill-Export-Cursor")),
    security(("api_key" = [])))]
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    principal.authorize(Action::LedgerExport)?;
    let deployment = Deployment::load(&state.db, &state.keys).await?;
    let request = parse_request(&deployment, &q, principal.actor_id().to_owned())?;
    if request.identified {
        principal.authorize(Action::LedgerExportIdentified)?;
    }
    let started = start(state.db.clone(), deployment, request.clone()).await?;
    let body = Body::from_stream(futures::stream::unfold(
        started.chunks,
        |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) },
    ));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(request.format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"carebill-ledger.{}\"",
        request.format.extension()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&started.cursor) {
        headers.insert("carebill-export-cursor", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A started export: its cursor (known before the first byte) and its chunks.
pub struct Started {
    pub cursor: String,
    /// Entries the export will contain (for progress bars).
    pub entries: i64,
    /// Entries written so far.
    pub written: Arc<std::sync::atomic::AtomicU64>,
    pub chunks: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

/// Opens the snapshot, records the export in the audit table, and starts streaming.
pub async fn start(db: Db, deployment: Deployment, request: ExportRequest) -> ApiResult<Started> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (ready_tx, ready_rx) = oneshot::channel();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        if let Err(e) = stream(db, deployment, request, tx.clone(), ready_tx, counter).await {
            tracing::error!(error = %e, "ledger export failed mid-stream");
            let _ = tx
                .send(Err(std::io::Error::other("ledger export failed")))
                .await;
        }
    });
    match ready_rx.await {
        Ok(Ok((cursor, entries))) => Ok(Started {
            cursor,
            entries,
            written,
            chunks: rx,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::Internal(anyhow::anyhow!(
            "export task ended early"
        ))),
    }
}

type Ready = oneshot::Sender<ApiResult<(String, i64)>>;

async fn stream(
    db: Db,
    deployment: Deployment,
    request: ExportRequest,
    chunks: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ready: Ready,
    written: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<()> {
    // One snapshot for the whole export: the head and every row read agree.
    let begin = match db.backend {
        Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        Backend::Sqlite => "BEGIN",
    };
    let setup = async {
        let mut tx = db.pool.begin_with(begin).await?;
        let head: i64 = sqlx::query_scalar("SELECT last_seq FROM ledger_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let entries: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM journal_entries WHERE ledger_seq > $1 AND ledger_seq <= $2 \
             AND ($3 = '' OR effective_date >= $3) AND ($4 = '' OR effective_date <= $4)",
        )
        .bind(request.after_seq)
        .bind(head)
        .bind(date_text(request.from))
        .bind(date_text(request.to))
        .fetch_one(&mut *tx)
        .await?;
        Ok::<_, sqlx::Error>((tx, head, entries))
    };
    let (mut tx, head, entries) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return Ok(());
        }
    };
    let cursor = deployment.cursor(head.max(request.after_seq));
    if let Err(e) = audit(&db, &request, &cursor, entries).await {
        let _ = ready.send(Err(e.into()));
        return Ok(());
    }
    if ready.send(Ok((cursor, entries))).is_err() {
        return Ok(());
    }

    let mut buf = Vec::with_capacity(CHUNK_BYTES * 2);
    format::preamble(request.format, request.identified, &mut buf);
    if matches!(request.format, Format::Beancount | Format::Hledger) {
        let mut accounts = sqlx::query(
            "SELECT a.id, a.code, c.name, c.kind, a.currency, a.patient_id FROM accounts a \
             JOIN chart_of_accounts c ON c.code = a.code WHERE a.posting_count > 0 ORDER BY a.seq",
        )
        .fetch(&mut *tx);
        while let Some(row) = accounts.try_next().await? {
            let account = export_account(&row, 0, &deployment, request.identified)?;
            format::account_declaration(request.format, &account, &mut buf);
            flush_if_full(&mut buf, &chunks).await?;
        }
        drop(accounts);
        format::declarations_end(request.format, &mut buf);
    }

    let identified_columns = if request.identified {
        ", pt.name_enc, pay.card_brand, pay.card_last4, k.kek_version, k.wrapped_key"
    } else {
        ", CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT)"
    };
    let identified_joins = if request.identified {
        " LEFT JOIN patients pt ON pt.id = e.patient_id LEFT JOIN payments pay ON pay.id = e.payment_id \
          LEFT JOIN data_keys k ON k.owner = e.patient_id"
    } else {
        ""
    };
    let sql = format!(
        "SELECT e.ledger_seq, e.id, e.posted_at_us, e.effective_date, e.kind, e.memo, e.patient_id, \
           e.invoice_id, e.payment_id, e.refund_id, e.adjustment_id, e.reverses_entry_id, \
           a.id, a.code, c.name, c.kind, a.currency, a.patient_id, p.amount_minor{identified_columns} \
         FROM journal_entries e \
         JOIN postings p ON p.entry_id = e.id \
         JOIN accounts a ON a.id = p.account_id \
         JOIN chart_of_accounts c ON c.code = a.code{identified_joins} \
         WHERE e.ledger_seq > $1 AND e.ledger_seq <= $2 \
           AND ($3 = '' OR e.effective_date >= $3) AND ($4 = '' OR e.effective_date <= $4) \
         ORDER BY e.ledger_seq, p.seq"
    );
    let mut rows = sqlx::query(&sql)
        .bind(request.after_seq)
        .bind(head)
        .bind(date_text(request.from))
        .bind(date_text(request.to))
        .fetch(&mut *tx);
    let mut current: Option<ExportEntry> = None;
    let mut names = NameCache::new();
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get(0)?;
        if current.as_ref().is_some_and(|e| e.seq != seq) {
            if let Some(done) = current.take() {
                finish_entry(&done, &request, &mut buf)?;
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                flush_if_full(&mut buf, &chunks).await?;
            }
        }
        let entry = match current.as_mut() {
            Some(e) => e,
            None => {
                let mut entry = entry_from_row(&row, &deployment, request.identified)?;
                if request.identified {
                    entry.patient_name = patient_name(&deployment.keys, &row, &mut names).await?;
                }
                current.insert(entry)
            }
        };
        entry.postings.push(ExportPosting {
            account: export_account(&row, 12, &deployment, request.identified)?,
            amount_minor: row.try_get(18)?,
        });
    }
    drop(rows);
    if let Some(done) = current.take() {
        finish_entry(&done, &request, &mut buf)?;
        written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    tx.rollback().await?;
    if !buf.is_empty() {
        let _ = chunks.send(Ok(Bytes::from(buf))).await;
    }
    Ok(())
}

/// Patients' names opened so far in an identified export (bounded: cleared when full).
type NameCache = HashMap<String, Option<String>>;
const NAME_CACHE_MAX: usize = 10_000;

/// The name of the entry's patient, opened with their data key: none when the entry has no
/// patient, or their personal data is erased or fails authentication (a security event).
async fn patient_name(
    keys: &crate::crypto::Keys,
    row: &AnyRow,
    names: &mut NameCache,
) -> anyhow::Result<Option<String>> {
    let Some(patient) = row.try_get::<Option<String>, _>(6)? else {
        return Ok(None);
    };
    if let Some(name) = names.get(&patient) {
        return Ok(name.clone());
    }
    let sealed: Option<String> = row.try_get(19)?;
    let name = match sealed {
        Some(sealed) => match keys
            .open_joined(&patient, row.try_get(22)?, row.try_get(23)?)
            .await
        {
            crate::crypto::KeyState::Available(key) => {
                let field = crate::crypto::Field::new("patients.name", &patient, &patient);
                keys.open_or_report(&key, field, &sealed)
                    .await
                    .map(|name| name.as_str().to_owned())
            }
            _ => None,
        },
        None => None,
    };
    if names.len() >= NAME_CACHE_MAX {
        names.clear();
    }
    names.insert(patient, name.clone());
    Ok(name)
}

fn date_text(d: Option<chrono::NaiveDate>) -> String {
    d.map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Checks the entry balances per currency before it is written: an export never carries an
/// unbalanced entry, whatever happened to the rows.
fn finish_entry(
    entry: &ExportEntry,
    request: &ExportRequest,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut sums: Vec<(Currency, i128)> = Vec::new();
    for p in &entry.postings {
        match sums.iter_mut().find(|(c, _)| *c == p.account.currency) {
            Some((_, s)) => *s += i128::from(p.amount_minor),
            None => sums.push((p.account.currency, i128::from(p.amount_minor))),
        }
    }
    anyhow::ensure!(
        entry.postings.len() >= 2 && sums.iter().all(|(_, s)| *s == 0),
        "entry {} does not balance",
        entry.id
    );
    format::entry(request.format, entry, request.identified, buf);
    Ok(())
}

async fn flush_if_full(
    buf: &mut Vec<u8>,
    chunks: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> anyhow::Result<()> {
    if buf.len() >= CHUNK_BYTES {
        let chunk = std::mem::replace(buf, Vec::with_capacity(CHUNK_BYTES * 2));
        chunks
            .send(Ok(Bytes::from(chunk)))
            .await
            .map_err(|_| anyhow::anyhow!("the client went away"))?;
    }
    Ok(())
}

fn export_account(
    row: &AnyRow,
    at: usize,
    deployment: &Deployment,
    identified: bool,
) -> anyhow::Result<ExportAccount> {
    let id: String = row.try_get(at)?;
    let patient: Option<String> = row.try_get(at + 5)?;
    let currency: String = row.try_get(at + 4)?;
    let currency: Currency = currency
        .parse()
        .map_err(|_| anyhow::anyhow!("account {id}: unknown currency"))?;
    let (id, patient) = match patient {
        Some(p) if !identified => {
            let ps = deployment.pseudonym(&p);
            (id.replace(&p, &ps), Some(ps))
        }
        other => (id, other),
    };
    Ok(ExportAccount {
        id,
        code: row.try_get(at + 1)?,
        name: row.try_get(at + 2)?,
        kind: row.try_get(at + 3)?,
        currency,
        patient,
    })
}

fn entry_from_row(
    row: &AnyRow,
    deployment: &Deployment,
    identified: bool,
) -> anyhow::Result<ExportEntry> {
    let patient: Option<String> = row.try_get(6)?;
    let brand: Option<String> = row.try_get(20)?;
    let last4: Option<String> = row.try_get(21)?;
    Ok(ExportEntry {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        posted_at: us_to_rfc3339(row.try_get(2)?),
        effective_date: row.try_get(3)?,
        kind: row.try_get(4)?,
        memo: row.try_get(5)?,
        patient: patient.map(|p| {
            if identified {
                p
            } else {
                deployment.pseudonym(&p)
            }
        }),
        patient_name: None,
        card: match (identified, brand, last4) {
            (true, Some(b), Some(l)) => Some(format!("{b} ••••{l}")),
            _ => None,
        },
        references: References {
            invoice: row.try_get(7)?,
            payment: row.try_get(8)?,
            refund: row.try_get(9)?,
            adjustment: row.try_get(10)?,
            reverses_entry: row.try_get(11)?,
        },
        postings: Vec::with_capacity(4),
    })
}

async fn audit(
    db: &Db,
    request: &ExportRequest,
    cursor: &str,
    entries: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO export_audit (at_us, requested_by, format, from_date, to_date, after_seq, cursor, \
         identified, entries) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(now_us())
    .bind(&request.requested_by)
    .bind(request.format.extension())
    .bind(request.from.map(|d| d.to_string()))
    .bind(request.to.map(|d| d.to_string()))
    .bind(request.after_seq)
    .bind(cursor)
    .bind(i64::from(request.identified))
    .bind(entries)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// `carebill export`: the same export, written to a file (or stdout) with a progress bar.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// csv, jsonl, beancount or hledger.
    #[arg(long)]
    pub format: String,
    /// First effective date (YYYY-MM-DD).
    #[arg(long)]
    pub from: Option<String>,
    /// Last effective date (YYYY-MM-DD).
    #[arg(long)]
    pub to: Option<String>,
    /// The cursor an earlier export printed: only what was posted since.
    #[arg(long)]
    pub after_cursor: Option<String>,
    /// Name patients and show card brand and last four.
    #[arg(long)]
    pub identified: bool,
    /// Where to write (default: standard output).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Print the process's peak resident memory when done (for the export benchmark).
    #[arg(long, hide = true)]
    pub report_peak_memory: bool,
}

pub async fn run_cli(
    db: Db,
    keys: Arc<crate::crypto::Keys>,
    args: ExportArgs,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let deployment = Deployment::load(&db, &keys)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.client_message()))?;
    let query = ExportQuery {
        format: Some(args.format.clone()),
        from: args.from.clone(),
        to: args.to.clone(),
        after_cursor: args.after_cursor.clone(),
        identified: args.identified.then(|| "true".to_owned()),
    };
    let request = parse_request(&deployment, &query, "cli".to_owned())
        .map_err(|e| anyhow::anyhow!("{}", e.client_message()))?;
    let mut started = start(db, deployment, request)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.client_message()))?;
    let bar = match &args.out {
        Some(_) => indicatif::ProgressBar::new(u64::try_from(started.entries).unwrap_or(0)),
        None => indicatif::ProgressBar::hidden(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} exporting [{bar:40}] {pos}/{len} entries ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.out {
        Some(path) => Box::new(tokio::io::BufWriter::new(
            tokio::fs::File::create(path).await?,
        )),
        None => Box::new(tokio::io::stdout()),
    };
    while let Some(chunk) = started.chunks.recv().await {
        out.write_all(&chunk?).await?;
        bar.set_position(started.written.load(std::sync::atomic::Ordering::Relaxed));
    }
    out.flush().await?;
    bar.finish_and_clear();
    eprintln!(
        "exported {} entries; cursor {}",
        started.entries, started.cursor
    );
    if args.report_peak_memory {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
                eprintln!("peak memory {}", line.trim_start_matches("VmHWM:").trim());
            }
        }
    }
    Ok(())
}
