//! Where a webhook may go (SSRF protection). A URL is chosen by an API caller; without these
//! rules it could make the server call its own database, the card vault, another internal
//! service or a cloud metadata endpoint.
//!
//! - `https://` only (`allow_http` for tests), no user name or password in the URL, at most
//!   [`URL_CHARS_MAX`] characters;
//! - no loopback, private (RFC 1918, unique-local), link-local, shared (CGNAT), unspecified,
//!   broadcast, multicast or documentation address (`allow_private` for tests and closed
//!   networks), whether written as an IP or reached through a name;
//! - checked when the endpoint is registered or changed *and* at every delivery: the delivery
//!   client resolves names through [`GuardedResolver`], which refuses a forbidden answer, so a
//!   name that later resolves to an internal address (DNS rebinding) is refused then too;
//! - no redirects followed and no proxy from the environment (each would bypass the check).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

use crate::error::ApiError;

pub const URL_CHARS_MAX: usize = 2048;

/// Why an address is refused, or `None` when it is a public unicast address.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg0 & 0xfe00 == 0xfc00 {
                Some("private")
            } else if seg0 & 0xffc0 == 0xfe80 {
                Some("link_local")
            } else if seg0 == 0x2001 && v6.segments()[1] == 0x0db8 {
                Some("documentation")
            } else if v6.segments()[..6] == [0, 0, 0, 0, 0, 0] {
                // IPv4-compatible (deprecated) forms such as ::127.0.0.1.
                Some("private")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link_local")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) {
        Some("documentation")
    } else {
        None
    }
}

/// A webhook URL checked against the rules above (addresses: only IP literals; names are
/// resolved by [`check_resolves`]).
pub fn parse_url(value: &str, allow_http: bool, allow_private: bool) -> Result<Url, ApiError> {
    let bad = |code: &'static str, message: &str| ApiError::invalid("url", code, message);
    if value.chars().count() > URL_CHARS_MAX {
        return Err(bad(
            "parameter_too_long",
            "Must be at most 2048 characters.",
        ));
    }
    let url = Url::parse(value.trim()).map_err(|_| {
        bad(
            "parameter_invalid",
            "Must be an absolute URL such as https://accounting.example.com/webhooks.",
        )
    })?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        _ => {
            return Err(bad(
                "url_not_https",
                "Must be an https:// URL: webhooks carry payment data.",
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "parameter_invalid",
            "Must not contain a user name or password; the signature authenticates us.",
        ));
    }
    let ip = match url.host() {
        None => return Err(bad("parameter_invalid", "Must name a host.")),
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(url::Host::Domain(_)) => None,
    };
    if let (Some(ip), false) = (ip, allow_private) {
        if let Some(why) = forbidden(ip) {
            return Err(forbidden_error(why));
        }
    }
    Ok(url)
}

fn forbidden_error(why: &str) -> ApiError {
    ApiError::invalid(
        "url",
        "url_forbidden_address",
        format!(
            "Must reach a public address; this one is {}.",
            why.replace('_', "-")
        ),
    )
}

/// Resolves the URL's host name (if it is one) and refuses it when any address is forbidden.
/// A name that does not resolve is refused too: the endpoint could never be reached.
pub async fn check_resolves(url: &Url, allow_private: bool) -> Result<(), ApiError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::lookup_host((host, port)),
    )
    .await;
    let addrs: Vec<SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => Vec::new(),
    };
    if addrs.is_empty() {
        return Err(ApiError::invalid(
            "url",
            "url_unresolvable",
            "The host name does not resolve.",
        ));
    }
    if !allow_private {
        if let Some(why) = addrs.iter().find_map(|a| forbidden(a.ip())) {
            return Err(forbidden_error(why));
        }
    }
    Ok(())
}

/// The delivery client's DNS resolver: the system's answer, refused whole when any address in
/// it is forbidden (the client would otherwise try them in turn).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if !allow_private {
                if let Some(why) = addrs.iter().find_map(|a| forbidden(a.ip())) {
                    let error: Box<dyn std::error::Error + Send + Sync> =
                        Box::new(ForbiddenAddress(why));
                    return Err(error);
                }
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// A name resolved to an address webhooks may not reach.
#[derive(Debug, thiserror::Error)]
#[error("resolves to a forbidden ({0}) address")]
pub struct ForbiddenAddress(pub &'static str);

/// The HTTP client deliveries go through: TLS verified against the public web roots or the
/// configured CA only, the guarded resolver, no redirects, no proxy, a whole-attempt timeout.
pub fn delivery_client(
    settings: &super::config::WebhookSettings,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: settings.allow_private,
        }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(std::time::Duration::from_millis(settings.timeout_ms))
        .connect_timeout(std::time::Duration::from_millis(settings.timeout_ms))
        .user_agent("carebill-webhooks/1")
        .https_only(!settings.allow_http)
        .pool_max_idle_per_host(8);
    if let Some(path) = &settings.ca {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading webhooks.ca {}: {e}", path.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("webhooks.ca {}: {e}", path.display()))?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    Ok(builder.build()?)
}

/// The IP-literal check at delivery time (a literal never reaches the resolver).
pub fn literal_forbidden(url: &Url, allow_private: bool) -> Option<&'static str> {
    if allow_private {
        return None;
    }
    match url.host()? {
        url::Host::Ipv4(v4) => forbidden(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => forbidden(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(forbidden(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_naming_the_parameter() {
        let code = |u: &str| match parse_url(u, false, false) {
            Ok(_) => "ok",
            Err(ApiError::Client { code, param, .. }) => {
                assert_eq!(param.as_deref(), Some("url"));
                code
            }
            Err(_) => "other",
        };
        assert_eq!(code("https://accounting.example.com/hooks"), "ok");
        assert_eq!(code("not a url"), "parameter_invalid");
        assert_eq!(code("http://accounting.example.com/"), "url_not_https");
        assert_eq!(code("ftp://accounting.example.com/"), "url_not_https");
        assert_eq!(code("https://127.0.0.1/"), "url_forbidden_address");
        assert_eq!(code("https://[::1]:8443/"), "url_forbidden_address");
        assert_eq!(
            code("https://169.254.169.254/latest"),
            "url_forbidden_address"
        );
        assert_eq!(code("https://u:p@example.com/"), "parameter_invalid");
        assert!(parse_url("http://127.0.0.1:9/", true, true).is_ok());
    }
}
