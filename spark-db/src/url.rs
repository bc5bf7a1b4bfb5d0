//! URLs in messages, and the one loopback rule.

/// The URL with its password replaced by `***`, for messages and logs.
///
/// ```
/// assert_eq!(spark_db::redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
/// assert_eq!(spark_db::redact_url("sqlite://spark.db"), "sqlite://spark.db");
/// ```
#[must_use]
pub fn redact_url(url: &str) -> String {
    // A password can also come as a query parameter (`?password=`).
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &base[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &base[..scheme + 3], &base[at..]),
                None => base.to_owned(),
            }
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") => {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Whether `host` (a URL's host, IPv6 with or without brackets) is this
/// machine: a loopback IP address or `localhost`. The one rule for
/// everything that may only send requests or faults to this machine (load
/// generators, contract batteries, fault experiments). Decided on the
/// parsed address, not its text: `127.0.0.1.example.com` resolves anywhere.
///
/// ```
/// for host in ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "LOCALHOST"] {
///     assert!(spark_db::is_loopback_host(host), "{host}");
/// }
/// for host in ["127.0.0.1.example.com", "10.0.0.1", "[::2]", "example.com", ""] {
///     assert!(!spark_db::is_loopback_host(host), "{host}");
/// }
/// ```
#[must_use]
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_userinfo_and_query_passwords() {
        assert_eq!(
            redact_url("postgres://u:p@h/d?password=x&sslmode=off"),
            "postgres://u:***@h/d?password=***&sslmode=off"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(redact_url("postgres://u:p:q@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
