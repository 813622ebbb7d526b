//! `kind = "ip_allow"`: the client address must be in one of the `allow`
//! CIDRs. The client is the connection's peer, unless the peer is one of the
//! `trusted_proxies`: then `X-Forwarded-For` (or, without it, `Forwarded`)
//! is read from the right, skipping trusted proxies, and the first other
//! address is the client. From anyone else those headers are ignored, so a
//! stranger cannot claim an allowed address. Checked before the body is read.

use super::{deny, Kind};
use crate::config::Problems;
use crate::ingress::{Headers, IngressError};
use crate::time::Timestamp;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

/// Most CIDRs in `allow` or `trusted_proxies`.
pub const MAX_NETS: usize = 1024;

/// As written: `allow` and `trusted_proxies`, CIDRs or plain addresses.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    allow: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

fn nets(key: &str, list: &[String], p: &mut Problems) -> Vec<IpNet> {
    if list.len() > MAX_NETS {
        p.add(key, format!("at most {MAX_NETS} entries"));
    }
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let s = s.trim();
        match s.parse::<IpNet>() {
            Ok(n) => out.push(n),
            Err(_) => match s.parse::<IpAddr>() {
                Ok(a) => out.push(IpNet::from(a)),
                Err(_) => p.add(
                    format!("{key}[{i}]"),
                    format!("{s:?} is not a CIDR (10.0.0.0/8) or an address"),
                ),
            },
        }
    }
    out
}

impl Raw {
    pub(crate) fn check(self, key: &str, p: &mut Problems) -> Option<IpAllow> {
        let before = p.0.len();
        let allow = nets(&format!("{key}.allow"), &self.allow, p);
        if self.allow.is_empty() {
            p.add(format!("{key}.allow"), "must list at least one CIDR");
        }
        let trusted = nets(&format!("{key}.trusted_proxies"), &self.trusted_proxies, p);
        (p.0.len() == before).then_some(IpAllow { allow, trusted })
    }
}

/// An allow-list of client networks, honouring forwarding headers only from trusted proxies.
#[derive(Debug, Clone)]
pub struct IpAllow {
    /// Allowed client networks.
    pub allow: Vec<IpNet>,
    /// Peers whose forwarding headers are believed.
    pub trusted: Vec<IpNet>,
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One address of a forwarding header: `1.2.3.4`, `1.2.3.4:80`, `::1`,
/// `[::1]:80`, `"[::1]:80"`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

impl IpAllow {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client's address as this route sees it.
    pub fn client(&self, req: &dyn Headers) -> Option<IpAddr> {
        let peer = canonical(req.peer()?);
        if !self.trusted(peer) {
            return Some(peer);
        }
        // Every line of the header, in order, as one list: the hops a
        // proxy appended on a line of its own count as much as appended ones.
        let xff = req.all("x-forwarded-for");
        let fwd = req.all("forwarded");
        let chain: Vec<Option<IpAddr>> = if !xff.is_empty() {
            xff.join(",").split(',').map(parse_addr).collect()
        } else if !fwd.is_empty() {
            fwd.join(",")
                .split(',')
                .map(|el| {
                    el.split(';')
                        .filter_map(|kv| kv.trim().split_once('='))
                        .find(|(k, _)| k.eq_ignore_ascii_case("for"))
                        .and_then(|(_, v)| parse_addr(v))
                })
                .collect()
        } else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in chain.into_iter().rev() {
            // An unreadable hop ends the trust: nothing left of it is believed.
            let ip = hop?;
            client = ip;
            if !self.trusted(ip) {
                break;
            }
        }
        Some(client)
    }
}

impl Kind for IpAllow {
    fn before_body(&self, req: &dyn Headers, _now: Timestamp) -> Result<(), IngressError> {
        let client = self
            .client(req)
            .ok_or_else(|| deny("client address unknown or unreadable"))?;
        if self.allow.iter().any(|n| n.contains(&client)) {
            Ok(())
        } else {
            Err(deny(format!("client address {client} is not allowed")))
        }
    }

    fn with_body(&self, _: &dyn Headers, _: &[u8], _: Timestamp) -> Result<(), IngressError> {
        Ok(())
    }

    fn header_only(&self) -> bool {
        true
    }

    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }
}

impl IpAllow {
    /// Nothing to add: the client's address is what it is, not a signature.
    pub fn sign(&self, _out: &mut super::Outgoing) {}
}
