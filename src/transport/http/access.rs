//! DNS-rebinding defence: which `Host` and `Origin` values a request may carry.
//!
//! A page on a hostile site can make a browser send requests to 127.0.0.1 by
//! pointing its own name there (DNS rebinding). Such requests carry the hostile
//! name in `Host` and the hostile site in `Origin`, so checking both stops them.

use crate::config::AccessPolicy;

#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// `Host` names a host this server does not serve.
    Host,
    /// `Origin` is present and not allowed.
    Origin,
}

/// Checks a request's `Host` and `Origin` headers against the policy.
pub fn check(
    policy: &AccessPolicy,
    host: Option<&[u8]>,
    origin: Option<&[u8]>,
) -> Result<(), Denied> {
    if let Some(host) = host {
        let name = strip_port(host);
        let allowed = if policy.allowed_hosts.is_empty() {
            is_loopback_name(name)
        } else {
            policy
                .allowed_hosts
                .iter()
                .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
                || is_loopback_name(name)
        };
        if !allowed {
            return Err(Denied::Host);
        }
    }
    if let Some(origin) = origin {
        let allowed = if policy.allowed_origins.is_empty() {
            origin_host(origin).is_some_and(is_loopback_name)
        } else {
            policy
                .allowed_origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
        };
        if !allowed {
            return Err(Denied::Origin);
        }
    }
    Ok(())
}

fn is_loopback_name(name: &[u8]) -> bool {
    if name == b"127.0.0.1"
        || name.eq_ignore_ascii_case(b"localhost")
        || name == b"::1"
        || name == b"[::1]"
    {
        return true;
    }
    std::str::from_utf8(name)
        .ok()
        .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

/// `host[:port]` or `[v6]:port` → the host part.
fn strip_port(hostport: &[u8]) -> &[u8] {
    if hostport.first() == Some(&b'[') {
        return match memchr::memchr(b']', hostport) {
            Some(end) => &hostport[1..end],
            None => hostport,
        };
    }
    match memchr::memrchr(b':', hostport) {
        Some(colon) => &hostport[..colon],
        None => hostport,
    }
}

/// `scheme://host[:port]` → the host part; `None` for `null` or anything else.
fn origin_host(origin: &[u8]) -> Option<&[u8]> {
    let rest = memchr::memmem::find(origin, b"://").map(|i| &origin[i + 3..])?;
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    Some(strip_port(&rest[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_default() {
        let p = AccessPolicy::default();
        assert_eq!(check(&p, Some(b"127.0.0.1:7411"), None), Ok(()));
        assert_eq!(
            check(&p, Some(b"localhost"), Some(b"http://localhost:6274")),
            Ok(())
        );
        assert_eq!(
            check(&p, Some(b"[::1]:80"), Some(b"http://[::1]:3000")),
            Ok(())
        );
        assert_eq!(
            check(&p, Some(b"evil.example.com"), None),
            Err(Denied::Host)
        );
        assert_eq!(
            check(&p, Some(b"127.0.0.1"), Some(b"http://evil.example.com")),
            Err(Denied::Origin)
        );
        assert_eq!(
            check(&p, Some(b"127.0.0.1"), Some(b"null")),
            Err(Denied::Origin)
        );
    }

    #[test]
    fn configured_names_for_proxies() {
        let p = AccessPolicy {
            allowed_hosts: vec!["mcp.internal".into()],
            allowed_origins: vec!["https://agents.internal".into()],
        };
        assert_eq!(
            check(
                &p,
                Some(b"mcp.internal:443"),
                Some(b"https://agents.internal")
            ),
            Ok(())
        );
        assert_eq!(check(&p, Some(b"other.internal"), None), Err(Denied::Host));
        assert_eq!(
            check(&p, None, Some(b"http://localhost")),
            Err(Denied::Origin)
        );
    }
}
