//! The audit trail on both backends: every API request is recorded (who, what, which
//! resource, outcome; never the data), the auditor can query it, and the hash chain catches a
//! record edited, deleted or reordered directly in the database — in the audit trail, the
//! security event log and the export log alike. Retention purges old records behind a
//! checkpoint; the chain stays verifiable, and tampering after a purge (edits, deletions, a
//! forged checkpoint) is still caught.
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

/// Drops the append-only guard of `table` (what someone with DDL rights could do).
async fn unguard_table(app: &TestApp, table: &str) {
    let statements: Vec<String> = match app.backend {
        carebill::db::Backend::Sqlite => {
            let mut s = vec![
                format!("DROP TRIGGER IF EXISTS {table}_no_update"),
                format!("DROP TRIGGER IF EXISTS {table}_no_delete"),
            ];
            if table == "audit_checkpoints" {
                s.push("DROP TRIGGER audit_checkpoints_consistent".to_owned());
            }
            s
        }
        carebill::db::Backend::Postgres => {
            vec![format!("ALTER TABLE {table} DISABLE TRIGGER USER")]
        }
    };
    for sql in statements {
        sqlx::query(&sql).execute(&app.db.pool).await.unwrap();
    }
}

async fn unguard(app: &TestApp) {
    unguard_table(app, "audit_events").await;
}

async fn verify_err(app: &TestApp) -> String {
    carebill::audit::verify(&app.db)
        .await
        .unwrap_err()
        .to_string()
}

fn run_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_carebill"))
        .args(args)
        .env("DATABASE_URL", &app.state().config.database_url)
        .env_remove("CAREBILL_CONFIG")
        .env_remove("CAREBILL_AUDIT_RETENTION_DAYS")
        .output()
        .unwrap()
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
        assert!(v.chain("audit").unwrap().sealed >= 6, "{v:?}");
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
    let err = verify_err(&app).await;
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
    let err = verify_err(&app).await;
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
    let err = verify_err(&app).await;
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
        let run = |args: &[&str]| run_cli(&app, args);
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

both_backends!(
    security_events_and_exports_are_chained_too,
    |app: TestApp| async move {
        // Goal: the security event log and the export log are sealed like the audit trail, and
        // an edit or a deletion of either is named by `audit verify`.
        let signin = app
            .admin
            .post(
                "/v1/sessions",
                &json!({"email": "nobody@example.org", "password": "not the password 42"}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(signin.status, 401);
        let export = app
            .admin
            .get_raw("/v1/ledger/export?format=csv")
            .await
            .unwrap();
        assert_eq!(export.status().as_u16(), 200);
        let _ = export.bytes().await.unwrap();
        carebill::audit::seal_once(&app.db).await.unwrap();
        let v = carebill::audit::verify(&app.db).await.unwrap();
        let security = app.count("security_events").await;
        assert_eq!(v.chain("security").unwrap().sealed, security, "{v:?}");
        assert_eq!(v.chain("export").unwrap().sealed, 1, "{v:?}");
        // The front door refuses edits of both logs and their seals.
        for sql in [
            "UPDATE security_events SET ip = NULL WHERE seq = 1",
            "DELETE FROM security_events WHERE seq = 1",
            "UPDATE security_event_seals SET hash = hash WHERE seq = 1",
            "DELETE FROM security_event_seals WHERE seq = 1",
            "UPDATE export_audit SET identified = 1 WHERE seq = 1",
            "DELETE FROM export_audit WHERE seq = 1",
            "DELETE FROM export_audit_seals WHERE seq = 1",
        ] {
            assert!(
                sqlx::query(sql).execute(&app.db.pool).await.is_err(),
                "{sql}"
            );
        }
        // Behind it: an export made to look pseudonymous, a failed sign-in made to disappear.
        unguard_table(&app, "export_audit").await;
        sqlx::query("UPDATE export_audit SET identified = 1 WHERE seq = 1")
            .execute(&app.db.pool)
            .await
            .unwrap();
        let err = verify_err(&app).await;
        assert!(err.contains("export record 1: altered"), "{err}");
        sqlx::query("UPDATE export_audit SET identified = 0 WHERE seq = 1")
            .execute(&app.db.pool)
            .await
            .unwrap();
        assert!(carebill::audit::verify(&app.db).await.is_ok());
        unguard_table(&app, "security_events").await;
        let failed: i64 =
            sqlx::query_scalar("SELECT MAX(seq) FROM security_events WHERE kind = 'signin_failed'")
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        sqlx::query("DELETE FROM security_events WHERE seq = $1")
            .bind(failed)
            .execute(&app.db.pool)
            .await
            .unwrap();
        let err = verify_err(&app).await;
        assert!(
            err.contains(&format!("security event {failed}: deleted")),
            "{err}"
        );
        app
    }
);

/// Records `years` old, written as the writer writes them.
async fn old_records(app: &TestApp, n: usize, years: i64) {
    let at_us = carebill::db::now_us() - years * 366 * 86_400_000_000;
    let record = carebill::audit::Record {
        at_us,
        actor: Some("key_longgoneLongGone00".to_owned()),
        action: "GET /v1/patients/{id}".to_owned(),
        resource: Some("pat_longgoneLongGone00".to_owned()),
        ip: Some("192.0.2.7".to_owned()),
        outcome: 200,
        request_id: Some("req_longgoneLongGone00".to_owned()),
    };
    carebill::audit::write_records(&app.db, &vec![record; n])
        .await
        .unwrap();
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO export_audit (at_us, requested_by, format, after_seq, cursor, identified, \
             entries) VALUES ($1, 'key_longgoneLongGone00', 'csv', 0, 'c', 0, 0)",
        )
        .bind(at_us)
        .execute(&app.db.pool)
        .await
        .unwrap();
    }
}

/// 40 seven-year-old records then today's traffic, sealed, then purged with the default
/// retention through the CLI. Returns the number of today's records.
async fn purged(app: &TestApp) -> i64 {
    old_records(app, 40, 7).await;
    some_traffic(app).await;
    written_and_sealed(app, 46).await;
    let before = app.count("audit_events").await;
    let out = run_cli(app, &["audit", "purge"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("audit: purged 40 records"), "{stdout}");
    assert!(stdout.contains("export: purged 3 records"), "{stdout}");
    assert_eq!(app.count("audit_events").await, before - 40);
    before - 40
}

both_backends!(
    retention_purges_behind_a_checkpoint,
    |app: TestApp| async move {
        // Goal: records past the retention go, a checkpoint records it (and a security event),
        // the chains still verify from the checkpoint, and nothing else can be deleted.
        old_records(&app, 40, 7).await;
        some_traffic(&app).await;
        written_and_sealed(&app, 46).await;
        let records = app.count("audit_events").await;
        // A dry run changes nothing.
        let out = run_cli(&app, &["audit", "purge", "--dry-run"]);
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("audit: would purge 40 records"), "{stdout}");
        assert_eq!(app.count("audit_events").await, records);
        assert_eq!(app.count("audit_checkpoints").await, 0);
        // A cut-off inside the retention period is refused, naming the option.
        let out = run_cli(&app, &["audit", "purge", "--before", "2025-01-01"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--before") && stderr.contains("retention"),
            "{stderr}"
        );
        let out = run_cli(&app, &["audit", "purge", "--before", "someday"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--before"));
        assert_eq!(app.count("audit_events").await, records);

        let out = run_cli(&app, &["audit", "purge"]);
        assert!(out.status.success());
        assert_eq!(app.count("audit_events").await, records - 40);
        assert_eq!(app.count("export_audit").await, 0);
        let cp = sqlx::query(
            "SELECT prev_through_seq, through_seq, records_purged, actor, id FROM audit_checkpoints \
             WHERE chain = 'audit'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        use sqlx::Row;
        assert_eq!(cp.try_get::<i64, _>(0).unwrap(), 0);
        assert_eq!(cp.try_get::<i64, _>(1).unwrap(), 40);
        assert_eq!(cp.try_get::<i64, _>(2).unwrap(), 40);
        assert!(cp.try_get::<String, _>(3).unwrap().starts_with("cli:"));
        let id: i64 = cp.try_get(4).unwrap();
        // The security chain starts with today's events: nothing of it was old enough.
        assert_eq!(
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM audit_checkpoints WHERE chain = 'security'"
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap(),
            0
        );
        // The purge is itself on record.
        let detail: String = sqlx::query_scalar(
            "SELECT detail FROM security_events WHERE kind = 'audit_purged' AND subject = 'audit_events'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(detail, format!("ckpt_{id}"));
        carebill::audit::seal_once(&app.db).await.unwrap();
        let v = carebill::audit::verify(&app.db).await.unwrap();
        let audit = v.chain("audit").unwrap();
        assert_eq!((audit.from_seq, audit.checkpoints), (40, 1), "{v:?}");
        assert_eq!(audit.sealed, records - 40);
        assert_eq!(v.chain("export").unwrap().from_seq, 3);
        // A second run finds nothing more to purge.
        let out = run_cli(&app, &["audit", "purge"]);
        assert!(out.status.success());
        assert_eq!(app.count("audit_checkpoints").await, 2);
        // Still append-only: records above the checkpoint, the checkpoints themselves, and a
        // checkpoint that does not continue the chain or names the wrong seal.
        let seal41: String = sqlx::query_scalar("SELECT hash FROM audit_seals WHERE seq = 41")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        for sql in [
            "DELETE FROM audit_events WHERE seq = 41".to_owned(),
            "DELETE FROM audit_seals WHERE seq = 41".to_owned(),
            "UPDATE audit_events SET actor = NULL WHERE seq = 41".to_owned(),
            "UPDATE audit_checkpoints SET records_purged = 1".to_owned(),
            "DELETE FROM audit_checkpoints".to_owned(),
            format!(
                "INSERT INTO audit_checkpoints (chain, prev_through_seq, through_seq, through_hash, \
                 records_purged, seals_purged, purged_before_us, at_us, actor, hash) VALUES \
                 ('audit', 40, 41, '{}', 1, 1, 0, 0, 'x', '{}')",
                "ab".repeat(32),
                "ab".repeat(32)
            ),
            format!(
                "INSERT INTO audit_checkpoints (chain, prev_through_seq, through_seq, through_hash, \
                 records_purged, seals_purged, purged_before_us, at_us, actor, hash) VALUES \
                 ('audit', 0, 41, '{seal41}', 1, 1, 0, 0, 'x', '{}')",
                "ab".repeat(32)
            ),
        ] {
            assert!(
                sqlx::query(&sql).execute(&app.db.pool).await.is_err(),
                "{sql}"
            );
        }
        assert!(carebill::audit::verify(&app.db).await.is_ok());
        app
    }
);

both_backends!(
    tampering_after_a_purge_is_still_caught,
    |app: TestApp| async move {
        // Goal: with the chain starting at a checkpoint, an edit right after it, an edit
        // further on and a deletion are each named.
        purged(&app).await;
        unguard(&app).await;
        let original: i64 = sqlx::query_scalar("SELECT outcome FROM audit_events WHERE seq = 41")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        for outcome in [original + 1, original] {
            sqlx::query("UPDATE audit_events SET outcome = $1 WHERE seq = 41")
                .bind(outcome)
                .execute(&app.db.pool)
                .await
                .unwrap();
            if outcome != original {
                let err = verify_err(&app).await;
                assert!(err.contains("audit record 41: altered"), "{err}");
            }
        }
        assert!(carebill::audit::verify(&app.db).await.is_ok());
        sqlx::query("UPDATE audit_events SET ip = '10.9.9.9' WHERE seq = 43")
            .execute(&app.db.pool)
            .await
            .unwrap();
        let err = verify_err(&app).await;
        assert!(err.contains("audit record 43: altered"), "{err}");
        sqlx::query("DELETE FROM audit_events WHERE seq = 42")
            .execute(&app.db.pool)
            .await
            .unwrap();
        let err = verify_err(&app).await;
        assert!(err.contains("audit record 42: deleted"), "{err}");
        app
    }
);

both_backends!(a_forged_checkpoint_is_caught, |app: TestApp| async move {
    // Goal: someone with DDL rights deletes recent records behind a checkpoint of their
    // own; whether its hash is made up, it is placed on the real seal but leaves the rows,
    // or the real checkpoint is edited, `audit verify` says so.
    purged(&app).await;
    for table in ["audit_events", "audit_seals", "audit_checkpoints"] {
        unguard_table(&app, table).await;
    }
    let forge = |through: i64, through_hash: String| {
        let pool = app.db.pool.clone();
        async move {
            let prev: String = sqlx::query_scalar(
                "SELECT hash FROM audit_checkpoints WHERE chain = 'audit' ORDER BY id DESC LIMIT 1",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            let mut cp = carebill::audit::chain::Checkpoint {
                id: 0,
                chain: "audit".to_owned(),
                prev_through_seq: 40,
                through_seq: through,
                through_hash,
                records_purged: through - 40,
                seals_purged: through - 40,
                purged_before_us: 0,
                at_us: carebill::db::now_us(),
                actor: "cli:mallory".to_owned(),
                hash: String::new(),
            };
            cp.hash = cp.compute_hash(&prev);
            sqlx::query(
                "INSERT INTO audit_checkpoints (chain, prev_through_seq, through_seq, \
                     through_hash, records_purged, seals_purged, purged_before_us, at_us, actor, \
                     hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&cp.chain)
            .bind(cp.prev_through_seq)
            .bind(cp.through_seq)
            .bind(&cp.through_hash)
            .bind(cp.records_purged)
            .bind(cp.seals_purged)
            .bind(cp.purged_before_us)
            .bind(cp.at_us)
            .bind(&cp.actor)
            .bind(&cp.hash)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // The real seal at 43, but today's records 41–43 left in place.
    let seal43: String = sqlx::query_scalar("SELECT hash FROM audit_seals WHERE seq = 43")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    forge(43, seal43).await;
    let err = verify_err(&app).await;
    assert!(
        err.contains("audit record 41: still present under checkpoint"),
        "{err}"
    );
    // Now with the records gone too, but a made-up hash: inconsistent with what follows.
    sqlx::query("DELETE FROM audit_checkpoints WHERE prev_through_seq = 40")
        .execute(&app.db.pool)
        .await
        .unwrap();
    for table in ["audit_events", "audit_seals"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE seq <= 43"))
            .execute(&app.db.pool)
            .await
            .unwrap();
    }
    forge(43, "ab".repeat(32)).await;
    let err = verify_err(&app).await;
    assert!(
        err.contains("audit record 44: altered, or checkpoint") && err.contains("forged"),
        "{err}"
    );
    // An edited checkpoint: its own hash no longer matches.
    sqlx::query("UPDATE audit_checkpoints SET records_purged = 1 WHERE prev_through_seq = 0")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let err = verify_err(&app).await;
    assert!(
        err.contains("audit chain checkpoint") && err.contains("altered or forged"),
        "{err}"
    );
    app
});

both_backends!(
    the_server_purges_on_its_own,
    spawn = |backend| TestApp::spawn_with(backend, |c| c.audit_purge_interval_seconds = 1),
    |app: TestApp| async move {
        // Goal: with an interval set, the server's retention job purges without anyone asking,
        // as `system:retention`.
        old_records(&app, 25, 7).await;
        let mut actor = None;
        for _ in 0..100 {
            actor = sqlx::query_scalar::<_, String>(
                "SELECT actor FROM audit_checkpoints WHERE chain = 'audit'",
            )
            .fetch_optional(&app.db.pool)
            .await
            .unwrap();
            if actor.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(actor.as_deref(), Some("system:retention"));
        assert_eq!(app.count("audit_events").await, 0);
        assert!(carebill::audit::verify(&app.db).await.is_ok());
        app
    }
);
