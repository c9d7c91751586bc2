//! A small HTTP client for the carebill API, used by `carebill up` (to seed the demo through
//! the real API), by `carebill bench`, and by the integration tests.

use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    key: String,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A response: status, body (JSON or `null`) and whether it was an idempotent replay.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

impl ApiClient {
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        ApiClient {
            base: base.into(),
            key: key.into(),
            http,
        }
    }

    /// A client over `http`, e.g. one from [`https_client`] that trusts a development CA.
    pub fn with_http(
        base: impl Into<String>,
        key: impl Into<String>,
        http: reqwest::Client,
    ) -> Self {
        ApiClient {
            base: base.into(),
            key: key.into(),
            http,
        }
    }

    pub fn with_key(&self, key: impl Into<String>) -> Self {
        ApiClient {
            base: self.base.clone(),
            key: key.into(),
            http: self.http.clone(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let response = request.bearer_auth(&self.key).send().await?;
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Reply {
            status,
            body,
            replayed,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(self.http.get(format!("{}{}", self.base, path)))
            .await
    }

    /// GETs `path` and returns the raw response (for streamed, non-JSON bodies).
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!("{}{}", self.base, path))
            .bearer_auth(&self.key)
            .send()
            .await?)
    }

    /// POSTs `body` as JSON, with an `Idempotency-Key` when given.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.http.post(format!("{}{}", self.base, path)).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    /// POSTs with a fresh idempotency key and fails unless the answer is 200.
    pub async fn create(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        let reply = self.post(path, body, Some(&key)).await?;
        anyhow::ensure!(
            reply.status == 200,
            "POST {path} answered {}: {}",
            reply.status,
            reply.body
        );
        Ok(reply.body)
    }
}

/// An HTTPS-only client that trusts the CA certificate(s) in `ca_pem` and nothing else (no
/// system roots): how `carebill up` and the tests reach a server with a development
/// certificate. Certificates are always verified; there is no switch to accept invalid ones.
pub fn https_client(ca_pem: &[u8]) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .https_only(true)
        .pool_max_idle_per_host(64);
    for cert in reqwest::Certificate::from_pem_bundle(ca_pem)? {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

/// The `id` field of an API object.
pub fn id_of(object: &Value) -> anyhow::Result<String> {
    object["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("object without id: {object}"))
}
