//! Keys and request fingerprints.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::IdempotencyError;

/// A validated `Idempotency-Key` value: 1 to 255 visible ASCII characters
/// (`!` to `~`).
///
/// The IETF draft makes the header a structured-field string, so a quoted
/// value such as `"8e03978e-40d5-43e8-bc93-6894a57f9324"` is unquoted (with
/// `\"` and `\\` unescaped); a bare token is accepted as it is.
///
/// ```
/// use spark_idempotency::IdempotencyKey;
///
/// let k: IdempotencyKey = "\"8e03978e-40d5\"".parse()?;
/// assert_eq!(k.as_str(), "8e03978e-40d5");
/// assert!("".parse::<IdempotencyKey>().is_err());
/// assert!("has space".parse::<IdempotencyKey>().is_err());
/// # Ok::<(), spark_idempotency::IdempotencyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The most characters a key may have.
    pub const MAX_LEN: usize = 255;

    /// Validates a header value.
    ///
    /// # Errors
    ///
    /// [`IdempotencyError::InvalidKey`] saying what was wrong.
    pub fn new(value: &str) -> Result<IdempotencyKey, IdempotencyError> {
        let invalid = |reason| IdempotencyError::InvalidKey { reason };
        let key = match value.strip_prefix('"') {
            Some(rest) => unquote(rest).ok_or(invalid("malformed quoted string"))?,
            None => value.to_owned(),
        };
        if key.is_empty() {
            return Err(invalid("empty"));
        }
        if key.len() > Self::MAX_LEN {
            return Err(invalid("longer than 255 characters"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("only visible ASCII characters are allowed"));
        }
        Ok(IdempotencyKey(key))
    }

    /// The key.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unquotes the rest of an sf-string after its opening quote.
fn unquote(rest: &str) -> Option<String> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                c @ ('"' | '\\') => out.push(c),
                _ => return None,
            },
            // The closing quote must be the last character.
            '"' => return chars.next().is_none().then_some(out),
            c => out.push(c),
        }
    }
    None
}

impl FromStr for IdempotencyKey {
    type Err = IdempotencyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IdempotencyKey::new(s)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 digest of what makes two requests "the same": by default the
/// method, the path and the body.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request: method, path and body.
    ///
    /// ```
    /// use spark_idempotency::Fingerprint;
    ///
    /// let a = Fingerprint::of_request("POST", "/v1/orders", br#"{"qty":"1"}"#);
    /// let b = Fingerprint::of_request("POST", "/v1/orders", br#"{"qty":"2"}"#);
    /// assert_ne!(a, b);
    /// ```
    #[must_use]
    pub fn of_request(method: &str, path: &str, body: &[u8]) -> Fingerprint {
        Fingerprint::of_parts(&[method.as_bytes(), path.as_bytes(), body])
    }

    /// The fingerprint of caller-chosen parts. Each part is length-prefixed,
    /// so `["ab", "c"]` and `["a", "bc"]` differ.
    #[must_use]
    pub fn of_parts(parts: &[&[u8]]) -> Fingerprint {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Fingerprint(hasher.finalize().into())
    }

    /// A fingerprint from its 32 bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The 32 bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_and_unquoted() {
        assert_eq!(IdempotencyKey::new("abc-123").unwrap().as_str(), "abc-123");
        assert_eq!(IdempotencyKey::new("\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(IdempotencyKey::new(r#""a\"b\\c""#).unwrap().as_str(), r#"a"b\c"#);
        assert_eq!(IdempotencyKey::new(&"k".repeat(255)).unwrap().as_str().len(), 255);
        for bad in ["", "\"\"", "a b", "\"a b\"", "tab\t", "ü", "\"open", "\"a\"b", r#""\x""#, &"k".repeat(256)] {
            assert!(IdempotencyKey::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_separate_parts() {
        assert_ne!(Fingerprint::of_parts(&[b"ab", b"c"]), Fingerprint::of_parts(&[b"a", b"bc"]));
        assert_eq!(Fingerprint::of_request("POST", "/a", b"x"), Fingerprint::of_request("POST", "/a", b"x"));
        assert_ne!(Fingerprint::of_request("POST", "/a", b"x"), Fingerprint::of_request("PATCH", "/a", b"x"));
        assert_ne!(Fingerprint::of_request("POST", "/a", b"x"), Fingerprint::of_request("POST", "/b", b"x"));
    }
}
