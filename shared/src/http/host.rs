//! The host a request names must be one the service answers to. A page on
//! an attacker's site whose name they re-point at 127.0.0.1 (DNS rebinding)
//! reaches the services on a developer's machine as same-origin, but its
//! requests still carry the attacker's name in `Host`: those are refused.
//!
//! Always allowed, since no rebinding can produce them: IP literals (the
//! page's origin would be the address itself), `localhost` and its
//! subdomains (browsers resolve them to the loopback themselves), and
//! names of one label (`inventory-service`, a container's or Kubernetes
//! Service's name: an attacker's name is a public one, with dots).

use std::{
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
    sync::Arc,
};

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{StatusCode, header},
};

use super::ApiError;

/// `ALLOWED_HOSTS`: the names, besides those always allowed, that clients
/// reach the services by (`shop.example.com`; `.example.com` for it and
/// its subdomains; `*` for any host).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<String>,
    any: bool,
}

impl FromStr for AllowedHosts {
    type Err = String;

    /// A comma-separated list of host names, without scheme or port.
    fn from_str(list: &str) -> Result<Self, String> {
        let mut hosts = AllowedHosts::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let name = entry.to_ascii_lowercase();
            let label = |l: &str| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            match name.as_str() {
                "*" => hosts.any = true,
                _ if name
                    .strip_prefix('.')
                    .unwrap_or(&name)
                    .split('.')
                    .all(label) =>
                {
                    hosts.names.push(name)
                }
                _ => {
                    return Err(format!(
                        "{entry:?} is not a host name: a name without scheme, port or path \
                         (shop.example.com), .example.com for it and its subdomains, or *"
                    ));
                }
            }
        }
        Ok(hosts)
    }
}

impl AllowedHosts {
    /// Whether any name was listed (or `*`).
    pub fn is_set(&self) -> bool {
        self.any || !self.names.is_empty()
    }

    /// Whether a request whose `Host` is `host` (a port may follow) is
    /// answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host);
        self.any
            || always_allowed(&name)
            || self
                .names
                .iter()
                .any(|listed| match listed.strip_prefix('.') {
                    Some(domain) => name == domain || name.ends_with(listed.as_str()),
                    None => name == *listed,
                })
    }
}

/// The name in a `Host` value: lowercase, without its port or a final dot;
/// an IPv6 literal keeps its brackets.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let port = |p: &str| {
        p.is_empty()
            || p.strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
    };
    if host.starts_with('[') {
        return match host.split_once(']') {
            Some((address, rest)) if port(rest) => format!("{address}]"),
            _ => host,
        };
    }
    let name = match host.rsplit_once(':') {
        Some((name, rest)) if port(&format!(":{rest}")) => name,
        _ => host.as_str(),
    };
    name.trim_end_matches('.').to_string()
}

fn always_allowed(name: &str) -> bool {
    let ipv6 = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .is_some_and(|n| n.parse::<Ipv6Addr>().is_ok());
    ipv6 || name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || !name.contains('.')
}

/// Refuses (400 `host_not_allowed`) a request naming a host `allowed` does
/// not allow. One with no `Host` at all (HTTP/1.0) names none, and no
/// browser sends such a request.
pub(crate) async fn check<E: Endpoint>(
    allowed: Arc<AllowedHosts>,
    next: E,
    req: Request,
) -> poem::Result<Response> {
    let host = match req.headers().get(header::HOST) {
        Some(value) => Some(value.to_str().unwrap_or("(not text)").to_string()),
        None => req.uri().authority().map(|a| a.as_str().to_string()),
    };
    if let Some(host) = host
        && !allowed.allows(&host)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "host_not_allowed",
            format!(
                "this service does not answer to the host {host:?}; \
                 list the names clients use in ALLOWED_HOSTS"
            ),
        )
        .into());
    }
    next.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &str) -> AllowedHosts {
        list.parse().unwrap()
    }

    #[test]
    fn addresses_localhost_and_single_labels_are_always_allowed() {
        let none = AllowedHosts::default();
        for host in [
            "127.0.0.1:3001",
            "10.1.2.3",
            "[::1]:3001",
            "[::1]",
            "localhost:3001",
            "LOCALHOST",
            "app.localhost:8080",
            "inventory-service:3002",
            "order-service",
            "localhost.",
        ] {
            assert!(none.allows(host), "{host}");
        }
    }

    #[test]
    fn a_dotted_name_is_allowed_only_when_listed() {
        let none = AllowedHosts::default();
        for host in [
            "rebind.attacker.example:3001",
            "127.0.0.1.nip.io:3001",
            "localhost.attacker.example",
            "[::1].attacker.example",
        ] {
            assert!(!none.allows(host), "{host}");
        }
        let listed = hosts("shop.example.com, .internal.example");
        assert!(listed.allows("shop.example.com"));
        assert!(listed.allows("Shop.Example.Com:443"));
        assert!(listed.allows("shop.example.com."));
        assert!(!listed.allows("evil-shop.example.com"));
        assert!(!listed.allows("shop.example.com.attacker.example"));
        assert!(listed.allows("internal.example"));
        assert!(listed.allows("api.internal.example:3001"));
        assert!(!listed.allows("notinternal.example"));
        assert!(hosts("*").allows("anything.example"));
    }

    #[test]
    fn an_entry_with_a_scheme_port_or_path_is_refused() {
        for bad in [
            "https://shop.example.com",
            "shop.example.com:443",
            "shop.example.com/api",
            "shop..example.com",
            "*.example.com",
        ] {
            let err = bad.parse::<AllowedHosts>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(!AllowedHosts::default().is_set());
        assert!(hosts("*").is_set());
    }
}
