//! Free text on money records — a refund's note, an adjustment's reason, a rejection's reason —
//! may say anything about a person's care, so it is sealed under the patient's data key like
//! the rest of their health data, bound to its table, column and row. Erasure makes it
//! unreadable with the rest; the amounts beside it stay.

use std::collections::HashMap;

use sqlx::AnyConnection;

use super::{Field, KeyState, Keys};
use crate::error::{ApiError, ApiResult};

/// Seals `text` (if any) for `column` of `row`, a record of `patient`, inside the caller's
/// transaction. A patient whose data was erased gets no new note: 400 naming `param`.
pub async fn seal(
    keys: &Keys,
    conn: &mut AnyConnection,
    patient: &str,
    column: &str,
    row: &str,
    text: Option<&str>,
    param: &'static str,
) -> ApiResult<Option<String>> {
    let Some(text) = text else { return Ok(None) };
    match keys.data_key(&mut *conn, patient).await? {
        KeyState::Available(key) => key
            .seal(Field::new(column, patient, row), text)
            .map(Some)
            .map_err(|e| ApiError::Internal(e.into())),
        KeyState::Erased => Err(ApiError::invalid(
            param,
            "personal_data_erased",
            "The patient's personal data was erased; this record can carry no text about them.",
        )),
        KeyState::Unreadable => Err(ApiError::Internal(anyhow::anyhow!(
            "the patient's data key cannot be opened"
        ))),
    }
}

/// Opens sealed notes, each patient's key once.
pub struct Opener<'k> {
    keys: &'k Keys,
    patients: HashMap<String, KeyState>,
}

impl<'k> Opener<'k> {
    pub fn new(keys: &'k Keys) -> Opener<'k> {
        Opener {
            keys,
            patients: HashMap::new(),
        }
    }

    /// The clear text of `sealed` (None stays None). Erased or unreadable: None, the latter
    /// recorded as a security event.
    pub async fn open(
        &mut self,
        conn: &mut AnyConnection,
        patient: &str,
        column: &str,
        row: &str,
        sealed: Option<String>,
    ) -> ApiResult<Option<String>> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        if !self.patients.contains_key(patient) {
            let state = self.keys.data_key(&mut *conn, patient).await?;
            self.patients.insert(patient.to_owned(), state);
        }
        let Some(key) = self.patients.get(patient).and_then(KeyState::key) else {
            return Ok(None);
        };
        Ok(self
            .keys
            .open_or_report(key, Field::new(column, patient, row), &sealed)
            .await
            .map(|text| text.as_str().to_owned()))
    }
}
