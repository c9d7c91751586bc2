//! The audit trail on both backends: every API request is recorded (who, what, which
//! resource, outcome; never the data), the auditor can query it, and the hash chain catches a
//! record edited, deleted or reordered directly in the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::time::Duration;

/// Waits until the background writer has written at least `n` records, then seals them.
async fn written_and_sealed(app: &TestApp, n: i64) {
    for _ in 0..200 {
        if app.count("audit_events").await >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        app.count("audit_events").await >= n,
        "the audit writer did not write"
    );
    carebill::audit::seal_once(&app.db).await.unwrap();
}

async fn unguard(app: &TestApp) {
    let statements: &[&str] = match app.backend {
        carebill::db::Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
        ],
        carebill::db::Backend::Postgres => &["ALTER TABLE audit_events DISABLE TRIGGER USER"],
    };
    for sql in statements {
        sqlx::query(sql).execute(&app.db.pool).await.unwrap();
    }
}

async fn some_traffic(app: &TestApp) -> String {
    let inv = app.open_invoice("usd", 5000).await;
    app.pay(&inv, 1000).await;
    let patient = inv["patient"].as_str().unwrap().to_owned();
    app.admin
        .get(&format!("/v1/patients/{patient}"))
        .await
        .unwrap();
    app.as_role("accountant").get("/v1/patients").await.unwrap();
    patient
}

both_backends!(
    requests_are_recorded_and_queryable_by_the_auditor,
    |app: TestApp| async move {
        let patient = some_traffic(&app).await;
        written_and_sealed(&app, 6).await;
        let auditor = app.as_role("auditor");
        let r = auditor
            .get(&format!("/v1/audit_events?resource={patient}&limit=100"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let actions: Vec<&str> = r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert!(actions.contains(&"GET /v1/patients/{id}"), "{actions:?}");
        assert!(r.body["data"][0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("key_"));
        // The accountant's refused read is on record with its outcome.
        let denied = auditor
            .get("/v1/audit_events?action=GET%20/v1/patients&limit=100")
            .await
            .unwrap();
        assert!(
            denied.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["outcome"] == 403),
            "{}",
            denied.body
        );
        // Never the data: no name, no date of birth in the trail.
        let all = auditor
            .get("/v1/audit_events?limit=100")
            .await
            .unwrap()
            .body
            .to_string();
        assert!(!all.contains("Test Patient") && !all.contains("1980-02-29"));
        // Only auditors (and admins) read it.
        assert_eq!(app.admin.get("/v1/audit_events").await.unwrap().status, 403);
        let v = carebill::audit::verify(&app.db).await.unwrap();
        assert!(v.sealed >= 6, "{v:?}");
        app
    }
);

both_backends!(an_edited_record_is_named, |app: TestApp| async move {
    some_traffic(&app).await;
    written_and_sealed(&app, 6).await;
    assert!(carebill::audit::verify(&app.db).await.is_ok());
    unguard(&app).await;
    sqlx::query("UPDATE audit_events SET actor = 'key_somebodyelse00000' WHERE seq = 3")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let err = carebill::audit::verify(&app.db)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("audit record 3: altered"), "{err}");
    app
});

both_backends!(a_deleted_record_is_named, |app: TestApp| async move {
    some_traffic(&app).await;
    written_and_sealed(&app, 6).await;
    unguard(&app).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = 4")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let err = carebill::audit::verify(&app.db)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("audit record 4: deleted"), "{err}");
    app
});

both_backends!(reordered_records_are_caught, |app: TestApp| async move {
    some_traffic(&app).await;
    written_and_sealed(&app, 6).await;
    unguard(&app).await;
    // Swap the contents of records 2 and 5 (what a reorder looks like in a table).
    let row = |seq: i64| {
        let pool = app.db.pool.clone();
        async move {
            let r: (i64, String) =
                sqlx::query_as("SELECT at_us, action FROM audit_events WHERE seq = $1")
                    .bind(seq)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            r
        }
    };
    let (a, b) = (row(2).await, row(5).await);
    for (seq, (at, action)) in [(2i64, &b), (5i64, &a)] {
        sqlx::query("UPDATE audit_events SET at_us = $1, action = $2 WHERE seq = $3")
            .bind(*at)
            .bind(action.clone())
            .bind(seq)
            .execute(&app.db.pool)
            .await
            .unwrap();
    }
    let err = carebill::audit::verify(&app.db)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("audit record 2: altered"), "{err}");
    app
});

both_backends!(
    the_trail_refuses_edits_through_the_front_door,
    |app: TestApp| async move {
        some_traffic(&app).await;
        written_and_sealed(&app, 6).await;
        for sql in [
            "UPDATE audit_events SET actor = NULL WHERE seq = 1",
            "DELETE FROM audit_events WHERE seq = 1",
            "UPDATE audit_seals SET hash = hash WHERE seq = 1",
            "DELETE FROM audit_seals WHERE seq = 1",
        ] {
            assert!(
                sqlx::query(sql).execute(&app.db.pool).await.is_err(),
                "{sql}"
            );
        }
        app
    }
);

both_backends!(
    the_cli_verifies_and_exports_for_a_siem,
    |app: TestApp| async move {
        some_traffic(&app).await;
        written_and_sealed(&app, 6).await;
        let url = app.state().config.database_url.clone();
        let run = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
                .args(args)
                .env("DATABASE_URL", &url)
                .env_remove("CAREBILL_CONFIG")
                .output()
                .unwrap()
        };
        let out = run(&["audit", "verify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("audit trail intact"));
        let records = app.count("audit_events").await;
        let out = run(&["audit", "export", "--format", "syslog"]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(i64::try_from(lines.len()).unwrap(), records);
        for line in &lines {
            // RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG
            assert!(line.starts_with("<110>1 20"), "{line}");
            assert!(
                line.contains(" carebill - audit [audit@32473 seq=\""),
                "{line}"
            );
        }
        let out = run(&[
            "audit",
            "export",
            "--format",
            "jsonl",
            "--since",
            "2000-01-01",
        ]);
        let text = String::from_utf8(out.stdout).unwrap();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert!(v["action"].as_str().unwrap().starts_with(['G', 'P', 'D']));
        }
        // Tampered: the CLI names the record and exits non-zero.
        unguard(&app).await;
        sqlx::query("UPDATE audit_events SET outcome = 200 WHERE seq = 2")
            .execute(&app.db.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_events SET ip = '10.9.9.9' WHERE seq = 2")
            .execute(&app.db.pool)
            .await
            .unwrap();
        let out = run(&["audit", "verify"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("audit record 2"));
        app
    }
);
