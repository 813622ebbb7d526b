//! Safe delivery (SSRF): callback URLs are user-configured, so the daemon
//! must not be usable to reach its own host, its private network or a
//! cloud metadata endpoint.
//!
//! Names are checked in the callback client's resolver ([`GuardedResolver`]):
//! it resolves, drops every refused address and hands only the checked
//! addresses to the connector, so the address checked is the address
//! connected to (no second lookup that an attacker's DNS could change).
//! IP-literal hosts never reach a resolver, so [`check_literal`] checks them
//! before a request is sent. `delivery.allow_destinations` (CIDRs) admits
//! addresses that would otherwise be refused.

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Test hook, inert unless set: a static name table the callback resolver
/// uses instead of DNS, as `host=ip,host=ip` (a name may repeat for several
/// addresses). Lets tests make `evil.test` resolve to loopback or metadata
/// addresses. Not for production use.
pub const TEST_DNS_ENV: &str = "RUNBRIDGE_TEST_DNS";

/// Why a destination is refused; carried as the error source of a refused
/// request so the attempt records it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// The class of a special-purpose address, or `None` for a public one.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_class(v4);
            }
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a unique-local address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("a multicast address")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("a documentation address")
            } else if s[..6] == [0; 6] {
                // ::/96, IPv4-compatible (deprecated): never a real peer.
                Some("an IPv4-compatible address")
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64: the embedded IPv4 address is what is reached.
                let o = v6.octets();
                v4_class(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
                    .map(|_| "a NAT64 special-purpose address")
            } else {
                None
            }
        }
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (CGNAT) address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if o[0] == 0 {
        Some("an unspecified (0.0.0.0/8) address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_documentation() {
        Some("a documentation address")
    } else if o[0] >= 240 {
        Some("a reserved address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("a benchmarking address")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("an IETF protocol address")
    } else {
        None
    }
}

/// Checks one address: `Ok` when public or admitted by `allow`.
pub fn check_ip(ip: IpAddr, allow: &[IpNet]) -> Result<(), Refused> {
    let Some(class) = forbidden_class(ip) else {
        return Ok(());
    };
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    if allow
        .iter()
        .any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)))
    {
        return Ok(());
    }
    let form = if mapped.is_some() {
        " (IPv4-mapped)"
    } else {
        ""
    };
    Err(Refused(format!(
        "{ip}{form} is {class} (not in delivery.allow_destinations)"
    )))
}

/// Checks an IP-literal host before sending (hosts that are names are
/// checked by the resolver). Parsing through `url` normalises decimal,
/// octal and hex IPv4 forms (`http://2130706433/`, `http://0177.0.0.1/`)
/// to the address they denote, which is the one checked and connected to.
pub fn check_literal(url: &str, allow: &[IpNet]) -> Result<(), Refused> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Refused(format!("not a valid URL: {e}")))?;
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow),
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow),
        Some(url::Host::Domain(_)) => Ok(()),
        None => Err(Refused("the URL has no host".into())),
    }
}

/// Keeps the allowed addresses of a lookup, or says why none remain.
pub fn filter(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    allow: &[IpNet],
) -> Result<Vec<SocketAddr>, Refused> {
    let mut kept = Vec::new();
    let mut first_refusal = None;
    for a in addrs {
        match check_ip(a.ip(), allow) {
            Ok(()) => kept.push(a),
            Err(r) => {
                first_refusal.get_or_insert(r);
            }
        }
    }
    match (kept.is_empty(), first_refusal) {
        (false, _) => Ok(kept),
        (true, Some(Refused(why))) => Err(Refused(format!(
            "{host} resolves only to refused addresses: {why}"
        ))),
        (true, None) => Err(Refused(format!("{host} resolves to no address"))),
    }
}

/// Parses [`TEST_DNS_ENV`]'s value; malformed entries are skipped.
pub fn parse_test_table(v: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for entry in v.split(',') {
        if let Some((host, ip)) = entry.split_once('=') {
            if let Ok(ip) = ip.trim().parse() {
                map.entry(host.trim().to_ascii_lowercase())
                    .or_default()
                    .push(ip);
            }
        }
    }
    map
}

/// The current allow-list, read on every lookup so a reload applies.
pub type AllowSource = Arc<dyn Fn() -> Vec<IpNet> + Send + Sync>;

/// The callback client's resolver: resolves, filters, and returns only the
/// allowed addresses, so the connection uses exactly the checked ones.
#[derive(Clone)]
pub struct GuardedResolver {
    allow: AllowSource,
    /// A static table replacing DNS (tests only, see [`TEST_DNS_ENV`]).
    table: Option<Arc<HashMap<String, Vec<IpAddr>>>>,
}

impl GuardedResolver {
    /// A resolver over system DNS, or the [`TEST_DNS_ENV`] table when set.
    pub fn new(allow: AllowSource) -> Self {
        let table = std::env::var(TEST_DNS_ENV)
            .ok()
            .map(|v| Arc::new(parse_test_table(&v)));
        GuardedResolver { allow, table }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_ascii_lowercase();
            let found: Vec<SocketAddr> = match this.table.as_ref().and_then(|t| t.get(&host)) {
                Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?
                    .collect(),
            };
            let kept = filter(&host, found, &(this.allow)())
                .map_err(|r| Box::new(r) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// The refusal in an error's source chain, if the guard caused it.
pub fn refusal_of(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn special_addresses_are_refused_and_public_ones_pass() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
            "64:ff9b::a00:1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(check_ip(ip, &[]).is_err(), "{ip} should be refused");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(check_ip(ip, &[]).is_ok(), "{ip} should pass");
        }
        let metadata = check_ip("169.254.169.254".parse().unwrap(), &[]).unwrap_err();
        assert!(metadata.0.contains("metadata"), "{metadata}");
    }

    #[test]
    fn literal_forms_are_normalised_then_checked() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::1]:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.1.2.3/",
        ] {
            let r = check_literal(url, &[]);
            assert!(r.is_err(), "{url} should be refused");
            assert!(r.unwrap_err().to_string().starts_with("refused: "));
        }
        assert!(check_literal("http://example.com/hook", &[]).is_ok());
        assert!(check_literal("http://93.184.216.34/", &[]).is_ok());
        let allow = nets(&["127.0.0.0/8"]);
        assert!(check_literal("http://2130706433/", &allow).is_ok());
        assert!(
            check_literal("http://[::ffff:127.0.0.1]/", &allow).is_ok(),
            "a mapped address is admitted by its IPv4 network"
        );
        assert!(check_literal("http://10.0.0.1/", &allow).is_err());
    }

    #[test]
    fn filter_keeps_only_allowed_addresses() {
        let a = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        let kept = filter("mixed.test", [a("10.0.0.1"), a("93.184.216.34")], &[]).unwrap();
        assert_eq!(kept, vec![a("93.184.216.34")]);
        let err = filter("evil.test", [a("169.254.169.254")], &[]).unwrap_err();
        assert!(
            err.0.contains("evil.test") && err.0.contains("metadata"),
            "{err}"
        );
        let kept = filter("ok.test", [a("10.0.0.1")], &nets(&["10.0.0.0/8"])).unwrap();
        assert_eq!(kept, vec![a("10.0.0.1")]);
    }

    #[tokio::test]
    async fn resolver_uses_the_test_table_and_filters() {
        let table = parse_test_table("evil.test=127.0.0.1, ok.test=127.0.0.1,bad");
        let allow: Vec<IpNet> = Vec::new();
        let r = GuardedResolver {
            allow: Arc::new(move || allow.clone()),
            table: Some(Arc::new(table)),
        };
        let err = match r.resolve("evil.test".parse().unwrap()).await {
            Ok(_) => panic!("loopback should be refused"),
            Err(e) => e,
        };
        let refused = refusal_of(&*err).expect("a refusal");
        assert!(refused.0.contains("loopback"), "{refused}");
        let r = GuardedResolver {
            allow: Arc::new(|| nets(&["127.0.0.1/32"])),
            table: r.table.clone(),
        };
        let addrs: Vec<_> = match r.resolve("ok.test".parse().unwrap()).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(addrs, vec![SocketAddr::new([127, 0, 0, 1].into(), 0)]);
    }
}
