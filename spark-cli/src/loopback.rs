//! The one rule for commands that send requests to a service: this machine
//! only (`spark bench http`, `spark check contract`).

use anyhow::Context;

/// `text` parsed as a URL whose host is a loopback address or `localhost`;
/// otherwise an error naming the host and `why` (what the command does, so
/// the user sees why it refuses).
pub(crate) fn loopback_url(text: &str, why: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(text).context("invalid --url")?;
    // Decided on the parsed host, not its text: "127.0.0.1.example.com"
    // starts like a loopback address and resolves anywhere.
    // (The URL parser has already written IP hosts in their canonical
    // form, and IPv6 ones in brackets.)
    let host = url.host_str().unwrap_or_default();
    if !spark_db::is_loopback_host(host) {
        anyhow::bail!("--url must be a loopback address ({why}), got {host}");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::loopback_url;

    #[test]
    fn only_loopback_hosts_pass() {
        for ok in
            ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:80", "http://127.9.9.9", "http://LOCALHOST"]
        {
            assert!(loopback_url(ok, "x").is_ok(), "{ok}");
        }
        for bad in ["http://127.0.0.1.example.com", "http://10.0.0.1", "http://example.com", "http://[::2]"] {
            let err = loopback_url(bad, "tests target this machine only").unwrap_err().to_string();
            assert!(err.starts_with("--url must be a loopback address (tests target this machine only), got"), "{err}");
        }
        assert!(loopback_url("nope", "x").is_err());
    }
}
