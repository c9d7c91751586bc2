//! Key rotation, re-encryption (interrupted and resumed), retirement, and key custody, on both
//! backends, against a running vault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use reqwest::Method;
use std::sync::Arc;
use tokenizer::keys;

/// Luhn-valid Visa numbers 4000 0000 0000 0nnC, distinct for each `i`.
fn visa(i: u32) -> String {
    let body = format!("400000000{:06}", i);
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    for check in 0..10u8 {
        let mut all = digits.clone();
        all.push(check);
        if tokenizer::card::luhn_valid(&all) {
            return format!("{body}{check}");
        }
    }
    unreachable!()
}

async fn kek(vault: &Vault) -> tokenizer::crypto::Kek {
    keys::unlock(vault.db(), &vault.components).await.unwrap()
}

vault_test!(
    rotation_keeps_old_cards_findable_and_reencrypt_moves_them,
    |vault: Vault| async move {
        // Goal: after a rotation made by the CLI (another process's view: only the database),
        // the running vault finds cards encrypted under the old key, encrypts new ones under the
        // new key, and re-encryption moves every row, in batches, resumably.
        let mut tokens = Vec::new();
        for i in 0..25 {
            tokens.push(vault.token_for(&visa(i)).await);
        }
        let v2 = keys::rotate(vault.db(), &kek(&vault).await).await.unwrap();
        assert_eq!(v2, 2);

        // Old card: same token, still mintable.
        assert_eq!(vault.token_for(&visa(3)).await, tokens[3]);
        let (status, minted) = vault
            .internal(
                Method::POST,
                &format!("/v1/cards/{}/charge-method", tokens[3]),
            )
            .await;
        assert_eq!(status, 200, "{minted}");
        // New card: under v2.
        let fresh = vault.token_for(MASTERCARD).await;
        let version: i64 = sqlx::query_scalar("SELECT key_version FROM cards WHERE id = $1")
            .bind(&fresh)
            .fetch_one(&vault.db().pool)
            .await
            .unwrap();
        assert_eq!(version, 2);
        assert_eq!(
            vault
                .count("SELECT COUNT(*) FROM cards WHERE key_version = 1")
                .await,
            25
        );

        // Re-encrypt, stopped after two batches of 10: 20 moved, 5 left; resumed: all moved.
        let cache = Arc::new(
            keys::KeyringCache::open(vault.db(), kek(&vault).await)
                .await
                .unwrap(),
        );
        let bar = indicatif::ProgressBar::hidden();
        let first = keys::reencrypt(vault.db(), &cache, 10, Some(2), &bar)
            .await
            .unwrap();
        assert_eq!(
            first,
            keys::Reencrypted {
                moved: 20,
                remaining: 5
            }
        );
        // A key still in use cannot be retired, by the CLI or behind its back in SQL.
        assert!(keys::retire(vault.db(), 1).await.is_err());
        let sneaky = sqlx::query(
        "UPDATE data_keys SET state = 'retired', wrapped = NULL, retired_at = 1 WHERE purpose = 'pan' AND version = 1",
    )
    .execute(&vault.db().pool)
    .await;
        assert!(sneaky.is_err(), "the database let a key in use be retired");
        let second = keys::reencrypt(vault.db(), &cache, 10, None, &bar)
            .await
            .unwrap();
        assert_eq!(
            second,
            keys::Reencrypted {
                moved: 5,
                remaining: 0
            }
        );
        assert_eq!(
            vault
                .count("SELECT COUNT(*) FROM cards WHERE key_version = 1")
                .await,
            0
        );

        // Every token still resolves to the same card, and the same number finds the same token.
        for (i, token) in tokens.iter().enumerate() {
            let (status, card) = vault
                .internal(Method::GET, &format!("/v1/cards/{token}"))
                .await;
            assert_eq!(status, 200);
            assert_eq!(card["last4"], visa(u32::try_from(i).unwrap())[12..]);
        }
        assert_eq!(vault.token_for(&visa(7)).await, tokens[7]);

        // Now v1 can be retired: its key material is destroyed, and it can never come back.
        keys::retire(vault.db(), 1).await.unwrap();
        let wrapped: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT wrapped FROM data_keys WHERE purpose = 'pan' AND version = 1",
        )
        .fetch_one(&vault.db().pool)
        .await
        .unwrap();
        assert!(wrapped.is_none());
        assert!(sqlx::query(
            "UPDATE data_keys SET state = 'active' WHERE purpose = 'pan' AND version = 1"
        )
        .execute(&vault.db().pool)
        .await
        .is_err());
        // A card cannot be written under the retired key.
        assert!(
            sqlx::query("UPDATE cards SET key_version = 1 WHERE id = $1")
                .bind(&tokens[0])
                .execute(&vault.db().pool)
                .await
                .is_err()
        );
        // The running vault still serves everything after the retirement.
        assert_eq!(vault.token_for(&visa(11)).await, tokens[11]);
        vault
    }
);

vault_test!(
    ciphertext_opens_only_with_the_key,
    |vault: Vault| async move {
        // Goal: what is stored is ciphertext that the right key opens and nothing else does.
        let token = vault.token_for(VISA).await;
        let (pan_ct, version): (Vec<u8>, i64) =
            sqlx::query_as("SELECT pan_ct, key_version FROM cards WHERE id = $1")
                .bind(&token)
                .fetch_one(&vault.db().pool)
                .await
                .unwrap();
        assert!(!pan_ct.windows(4).any(|w| w == b"4242"));
        let kek = kek(&vault).await;
        let mut conn = vault.db().pool.acquire().await.unwrap();
        let keyring = keys::Keyring::load(&mut conn, &kek).await.unwrap();
        let key = keyring.get(version).unwrap();
        let plain = key.decrypt_field(keys::FIELD_CARD_NUMBER, &pan_ct).unwrap();
        assert_eq!(&plain[..], VISA.as_bytes());
        let stranger =
            tokenizer::crypto::PanKey::new(version, tokenizer::crypto::SivKey::generate());
        assert!(stranger
            .decrypt_field(keys::FIELD_CARD_NUMBER, &pan_ct)
            .is_err());
        // The wrapped data keys do not open under a KEK made from other components.
        let other = tokenizer::crypto::Kek::combine(&[
            tokenizer::crypto::KeyComponent::generate(),
            tokenizer::crypto::KeyComponent::generate(),
        ])
        .unwrap();
        assert!(keys::Keyring::load(&mut conn, &other).await.is_err());
        vault
    }
);

vault_test!(
    the_vault_refuses_to_start_without_its_custodians,
    |vault: Vault| async move {
        // Goal: fewer components than required, the same component twice, or a component from
        // another vault: the keys stay locked.
        let one = vec![vault.components[0].clone()];
        let err = keys::unlock(vault.db(), &one)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 2"), "{err}");
        let twice = vec![vault.components[0].clone(), vault.components[0].clone()];
        let err = keys::unlock(vault.db(), &twice)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
        let stranger = vault.dir.path().join("stranger.txt");
        std::fs::write(
            &stranger,
            tokenizer::crypto::KeyComponent::generate().to_file_text(2, 2),
        )
        .unwrap();
        let wrong = vec![vault.components[0].clone(), stranger];
        let err = keys::unlock(vault.db(), &wrong)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not combine"), "{err}");
        let mut config = vault.config.clone();
        config.key_components = one;
        config.collect_addr = "127.0.0.1:0".parse().unwrap();
        config.internal_addr = "127.0.0.1:0".parse().unwrap();
        assert!(tokenizer::start(config).await.is_err());
        // `keys init` refuses a vault that has keys.
        let again = keys::init(vault.db(), 2, &vault.dir.path().join("again")).await;
        assert!(again.is_err());
        vault
    }
);
