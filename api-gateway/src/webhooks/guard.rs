//! The SSRF guard: a `callback_url` makes the gateway send requests from inside the
//! deployment, so only `http`/`https` URLs to public addresses may be called. A host is
//! checked when the job is submitted (`422` saying why) and again at every delivery, through
//! [`GuardedResolver`], because DNS may have changed meanwhile; the connection then goes to
//! the address that was checked, so a rebinding DNS server cannot slip a private one in.
//! `WARREN_WEBHOOK_ALLOW_PRIVATE=true` turns the address check off (local development, tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// The longest `callback_url` accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Parses a callback URL: `http` or `https`, a host, at most [`MAX_URL_LEN`] characters.
pub fn parse(url: &str) -> Result<Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "must be at most {MAX_URL_LEN} characters, this one has {}",
            url.len()
        ));
    }
    if !url.is_ascii() {
        return Err(
            "must be ASCII, as URIs are: write an international host name in \
                    punycode (xn--…) and percent-encode the path"
                .into(),
        );
    }
    let parsed = Url::parse(url).map_err(|error| format!("is not a URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http:// or https:// URL, not {}:",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    Ok(parsed)
}

/// Why `ip` may not be called, or `None` if it is a public address.
#[must_use]
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        (169, 254, _) => "a link-local or cloud-metadata address",
        (100, 64..=127, _) => "a carrier-grade NAT address (and cloud-metadata on some clouds)",
        (0, _, _) => "an unspecified address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_broadcast() || a >= 240 => "a reserved address",
        (192, 0, 0) => "an IETF protocol address (and cloud-metadata on some clouds)",
        (198, 18..=19, _) => "a benchmarking address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return refused_v4(v4);
    }
    let first = ip.segments()[0];
    Some(match first {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_multicast() => "a multicast address",
        _ if first & 0xfe00 == 0xfc00 => "a unique-local (private) address",
        _ if first & 0xffc0 == 0xfe80 => "a link-local address",
        _ if first & 0xffc0 == 0xfec0 => "a site-local address",
        0x2001 if ip.segments()[1] == 0x0db8 => "a documentation address",
        _ => return None,
    })
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let [.., hi, lo] = s;
    let tail = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] | [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        [0, 0, 0, 0, 0, 0, ..] if !ip.is_loopback() && !ip.is_unspecified() => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

/// Checks that `url`'s host may be called now: an IP literal directly, a name by resolving
/// it and checking every address. The error says why not.
pub async fn check(url: &Url, allow_private: bool) -> Result<(), String> {
    if allow_private || literal(url).is_some() {
        return check_literal(url, allow_private);
    }
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    resolve_public(host, port).await.map(|_| ())
}

/// Checks `url`'s host if it is an IP address literal (a name passes: it is checked when it
/// is resolved).
pub fn check_literal(url: &Url, allow_private: bool) -> Result<(), String> {
    match literal(url).and_then(refused) {
        Some(why) if !allow_private => Err(format!(
            "{} is {why}; callbacks go to public addresses only (for development, \
             WARREN_WEBHOOK_ALLOW_PRIVATE=true lets them reach private ones)",
            url.host_str().unwrap_or_default()
        )),
        _ => Ok(()),
    }
}

fn literal(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Resolves `host` and keeps its addresses only if every one is public (a name with one
/// private address among public ones is refused: which one a client picks is not ours to say).
async fn resolve_public(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("host {host} does not resolve: {error}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("host {host} resolves to no address"));
    }
    for addr in &addrs {
        if let Some(why) = refused(addr.ip()) {
            return Err(format!(
                "host {host} resolves to {}, {why}; callbacks go to public addresses only (for development, \
             WARREN_WEBHOOK_ALLOW_PRIVATE=true lets them reach private ones)",
                addr.ip()
            ));
        }
    }
    Ok(addrs)
}

/// The delivery client's DNS: resolves with the system resolver and refuses names that
/// resolve to addresses [`refused`] names, unless private addresses are allowed.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// `WARREN_WEBHOOK_ALLOW_PRIVATE`.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            let addrs = if allow_private {
                tokio::net::lookup_host((host, 0)).await?.collect()
            } else {
                resolve_public(host, 0).await?
            };
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_str(ip: &str) -> Option<&'static str> {
        refused(ip.parse().unwrap())
    }

    #[test]
    fn refuses_private_and_special_ipv4() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.0.192",
        ] {
            assert!(refused_str(ip).is_some(), "{ip}");
        }
        assert_eq!(refused_str("93.184.215.14"), None);
        assert_eq!(refused_str("172.32.0.1"), None);
    }

    #[test]
    fn refuses_private_and_special_ipv6_including_embedded_ipv4() {
        for ip in [
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(refused_str(ip).is_some(), "{ip}");
        }
        assert_eq!(refused_str("2606:4700:4700::1111"), None);
        assert_eq!(refused_str("::ffff:93.184.215.14"), None);
    }

    #[test]
    fn parse_takes_http_and_https_only() {
        assert!(parse("https://example.com/hook").is_ok());
        assert!(parse("http://example.com:8080/").is_ok());
        assert!(parse("file:///etc/passwd").unwrap_err().contains("http"));
        assert!(parse("ftp://example.com/").is_err());
        assert!(parse("not a url").is_err());
        assert!(parse("https://\u{cf}/").unwrap_err().contains("ASCII"));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(parse(&long).unwrap_err().contains("2048"));
    }

    #[tokio::test]
    async fn check_refuses_literals_and_names_that_resolve_privately() {
        for url in [
            "http://169.254.169.254/",
            "http://10.0.0.1/",
            "http://[::1]/",
            "http://localhost/",
        ] {
            let url = parse(url).unwrap();
            assert!(check(&url, false).await.is_err(), "{url}");
            assert!(check(&url, true).await.is_ok(), "{url}");
        }
    }
}
