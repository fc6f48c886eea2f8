//! Who the client is, behind proxies. The socket's peer is the client unless
//! it is one of `TRUSTED_PROXIES`; then `X-Forwarded-For` is read from the
//! right, each hop appended by a proxy we trust, and the first hop that is
//! not one of ours is the client. Anything to its left was written by the
//! client itself and is not believed, so a client cannot pick the address
//! its rate limit is counted against.

use std::{net::IpAddr, str::FromStr};

use ipnet::IpNet;
use poem::{Endpoint, IntoResponse, Request, Response};

/// `X-Forwarded-For`: the hops a request came through, left to right.
pub(crate) const FORWARDED_FOR: &str = "x-forwarded-for";

/// `TRUSTED_PROXIES`: the networks whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of CIDRs (`10.0.0.0/8`) or single addresses.
    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is not a CIDR (10.0.0.0/8) or an address"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client of a request that came from `peer` with these
    /// `X-Forwarded-For` header values (in the order received).
    pub fn client<'a>(&self, peer: IpAddr, forwarded_for: impl Iterator<Item = &'a str>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.flat_map(|value| value.split(',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            // A hop that is not an address ends what can be believed.
            let Ok(address) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

/// The client's address, as [`TrustedProxies::client`] found it, on every
/// request that came over TCP.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub IpAddr);

/// The `around` middleware that records [`ClientAddress`] for the rate limit
/// and the request's log lines.
pub(crate) async fn identify<E: Endpoint>(
    trusted: TrustedProxies,
    next: E,
    mut req: Request,
) -> poem::Result<Response> {
    if let Some(peer) = req.remote_addr().as_socket_addr().map(|a| a.ip()) {
        let forwarded = req
            .headers()
            .get_all(FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok());
        let client = trusted.client(peer, forwarded);
        req.set_data(ClientAddress(client));
    }
    next.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        "10.0.0.0/8, 192.168.1.5".parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_it_says() {
        let none = TrustedProxies::default();
        let client = none.client(ip("10.1.2.3"), ["203.0.113.9"].into_iter());
        assert_eq!(client, ip("10.1.2.3"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client() {
        // The client, then our two proxies appending what they saw.
        let client = proxies().client(ip("10.0.0.2"), ["203.0.113.9, 10.0.0.1"].into_iter());
        assert_eq!(client, ip("203.0.113.9"));
        // The same hops over two header lines.
        let client = proxies().client(ip("192.168.1.5"), ["203.0.113.9", "10.0.0.1"].into_iter());
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn a_client_cannot_choose_its_address_by_sending_the_header_itself() {
        // The client wrote "1.2.3.4"; our proxy appended the real peer.
        let client = proxies().client(ip("10.0.0.1"), ["1.2.3.4, 198.51.100.7"].into_iter());
        assert_eq!(client, ip("198.51.100.7"));
        // Straight to the service, not through a proxy: the header is ignored.
        let client = proxies().client(ip("198.51.100.7"), ["10.0.0.1"].into_iter());
        assert_eq!(client, ip("198.51.100.7"));
    }

    #[test]
    fn a_hop_that_is_not_an_address_ends_the_trust() {
        let client = proxies().client(ip("10.0.0.1"), ["203.0.113.9, unknown"].into_iter());
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn the_list_takes_cidrs_and_addresses_and_names_what_it_cannot_read() {
        assert_eq!("".parse::<TrustedProxies>(), Ok(TrustedProxies::default()));
        assert!(" ::1 , fd00::/8".parse::<TrustedProxies>().is_ok());
        let error = "10.0.0.0/8,nginx".parse::<TrustedProxies>().unwrap_err();
        assert!(error.contains("\"nginx\""), "{error}");
    }
}
