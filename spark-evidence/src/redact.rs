//! Redaction of secrets from everything written down.

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Replaces secrets in text before it is written to evidence or logs.
///
/// Built from the secret values themselves (a webhook URL that embeds a
/// token, an HMAC key): every occurrence of each is replaced by [`MASK`],
/// longest first so that a secret containing another is masked whole. The
/// password of any `scheme://user:password@host` URL is masked too, given or
/// not.
///
/// ```
/// use spark_evidence::Redactor;
///
/// let mut redactor = Redactor::new(["T000/B000/XXXX"]);
/// redactor.add(""); // empty secrets are ignored
/// assert_eq!(
///     redactor.redact("slack https://hooks.slack.com/services/T000/B000/XXXX failed"),
///     "slack https://hooks.slack.com/services/*** failed"
/// );
/// assert_eq!(redactor.redact("postgres://app:pw@db/x"), "postgres://app:***@db/x");
/// ```
#[derive(Clone, Default)]
pub struct Redactor {
    /// Non-empty, distinct, longest first.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    // The secrets themselves must not reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor").field("secrets", &self.secrets.len()).finish()
    }
}

impl Redactor {
    /// A redactor for these secrets (empty strings are ignored).
    #[must_use]
    pub fn new<S: Into<String>>(secrets: impl IntoIterator<Item = S>) -> Redactor {
        let mut redactor = Redactor::default();
        for secret in secrets {
            redactor.add(secret);
        }
        redactor
    }

    /// Adds a secret (an empty one is ignored).
    pub fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if secret.is_empty() || self.secrets.contains(&secret) {
            return;
        }
        self.secrets.push(secret);
        self.secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// How many secrets it masks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether it has no secrets (it still masks URL passwords).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret and every URL password replaced by [`MASK`].
    #[must_use]
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        mask_url_passwords(&out)
    }
}

/// Masks the password of every `scheme://user:password@host` in `text`.
fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        // The authority ends where the path, query, fragment or the
        // surrounding text begins.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@').and_then(|at| authority[..at].split_once(':').map(|(user, _)| (user, at))) {
            Some((user, at)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_secret_is_masked() {
        let r = Redactor::new(["abc", "abcdef", "xyz"]);
        assert_eq!(r.len(), 3);
        assert_eq!(r.redact("abcdef abc xyzxyz q"), "*** *** ****** q");
        assert_eq!(r.redact("nothing here"), "nothing here");
        assert!(Redactor::new(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn url_passwords_are_masked_wherever_they_appear() {
        let r = Redactor::default();
        let cases = [
            ("http://u:p@h:1/x?y#z", "http://u:***@h:1/x?y#z"),
            ("see \"https://u:p@h\" and nats://a:b@c:4222", "see \"https://u:***@h\" and nats://a:***@c:4222"),
            ("http://u@h/x", "http://u@h/x"),
            ("http://h/x@y:z", "http://h/x@y:z"),
            ("http://u:p:q@h", "http://u:***@h"),
            ("http://u:p@", "http://u:***@"),
            ("a://", "a://"),
            ("no url", "no url"),
            ("http://u:p@h http://u:p@h", "http://u:***@h http://u:***@h"),
        ];
        for (text, expected) in cases {
            assert_eq!(r.redact(text), expected, "{text}");
        }
    }

    #[test]
    fn redaction_is_idempotent_and_debug_shows_no_secret() {
        let r = Redactor::new(["hunter2"]);
        let once = r.redact("pw hunter2 at http://a:hunter2@h");
        assert_eq!(once, "pw *** at http://a:***@h");
        assert_eq!(r.redact(&once), once);
        assert_eq!(format!("{r:?}"), "Redactor { secrets: 1 }");
    }

    #[test]
    fn multibyte_text_survives() {
        let r = Redactor::new(["ğş"]);
        assert_eq!(r.redact("çğşü → x://ü:ş@ı"), "ç***ü → x://ü:***@ı");
    }
}
