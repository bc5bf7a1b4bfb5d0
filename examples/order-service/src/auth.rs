//! Who is calling: API keys (bearer tokens) from a clients file, or — for
//! development only — a trusted `X-Client-Id` header.
//!
//! The clients file holds one `[[client]]` table per client:
//!
//! ```
//! use order_service::auth::{Clients, token_sha256};
//!
//! let text = format!(
//!     "[[client]]\nid = \"desk-1\"\ntoken_sha256 = \"{}\"\naccounts = [\"acc-1\", \"desk1-*\"]\n",
//!     token_sha256("s3cret")
//! );
//! let clients = Clients::from_toml(&text)?;
//! assert_eq!(clients.len(), 1);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Only the SHA-256 of each token is stored, and a presented token is
//! compared by its digest, in constant time, against every client's digest:
//! neither the file nor the time a refusal takes says anything about a token.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use crate::problem::Problem;

/// The longest client id accepted (in the clients file and in `X-Client-Id`).
pub const MAX_CLIENT_ID: usize = 128;
/// The longest account id accepted.
pub const MAX_ACCOUNT_ID: usize = 64;

/// What the service says (at startup and in `/healthz`) when it trusts
/// `X-Client-Id`.
pub const DEV_WARNING: &str = "development authentication: X-Client-Id is trusted without proof and every client \
                               may use every account; never expose this service";

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub struct Auth(Mode);

#[derive(Debug, Clone)]
enum Mode {
    Bearer(Arc<Clients>),
    DevHeader,
}

impl Auth {
    /// `Authorization: Bearer <token>`, checked against `clients`.
    #[must_use]
    pub fn bearer(clients: Clients) -> Auth {
        Auth(Mode::Bearer(Arc::new(clients)))
    }

    /// Trusts `X-Client-Id` without proof, and lets every client use every
    /// account. Development only: `/healthz` says so.
    #[must_use]
    pub fn dev_header() -> Auth {
        Auth(Mode::DevHeader)
    }

    /// `"bearer"` or `"dev-header"`, as `/healthz` shows it.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self.0 {
            Mode::Bearer(_) => "bearer",
            Mode::DevHeader => "dev-header",
        }
    }

    /// Whether this is the development mode that trusts `X-Client-Id`.
    #[must_use]
    pub fn is_dev(&self) -> bool {
        matches!(self.0, Mode::DevHeader)
    }

    /// The caller of a request.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        for name in ["authorization", "x-client-id", "idempotency-key"] {
            single(headers, name)?;
        }
        match &self.0 {
            Mode::Bearer(clients) => {
                let value = single(headers, "authorization")?
                    .ok_or_else(|| unauthenticated("send Authorization: Bearer <token>"))?;
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .filter(|t| !t.is_empty() && !t.contains(' '))
                    .ok_or_else(|| unauthenticated("the Authorization header is not \"Bearer <token>\""))?;
                clients.find(token).ok_or_else(|| unauthenticated("unknown token"))
            }
            Mode::DevHeader => {
                let value = single(headers, "x-client-id")?.ok_or_else(|| unauthenticated("send X-Client-Id"))?;
                let id = value.to_str().ok().filter(|v| v.bytes().all(|b| b.is_ascii_graphic())).ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "client-id-invalid",
                        "Invalid X-Client-Id",
                        "X-Client-Id must be visible ASCII characters",
                    )
                })?;
                if id.is_empty() {
                    return Err(unauthenticated("send X-Client-Id"));
                }
                if id.len() > MAX_CLIENT_ID {
                    return Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "client-id-invalid",
                        "Invalid X-Client-Id",
                        format!("X-Client-Id is {} characters long; at most {MAX_CLIENT_ID} are allowed", id.len()),
                    ));
                }
                Ok(Principal { id: id.to_owned(), accounts: Accounts::Any })
            }
        }
    }
}

/// The one value of header `name`, if any; a repeated header is refused,
/// since two values leave it open which one the caller meant.
pub(crate) fn single<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a axum::http::HeaderValue>, Problem> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "repeated-header",
            "Repeated header",
            format!("send the {name} header once"),
        ));
    }
    Ok(first)
}

fn unauthenticated(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Unauthenticated", detail)
        .header("www-authenticate", "Bearer")
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    id: String,
    accounts: Accounts,
}

impl Principal {
    /// The client id: the scope of its idempotency keys and the owner of
    /// its orders.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Whether the client may trade on and read `account`.
    pub(crate) fn may_use(&self, account: &str) -> bool {
        match &self.accounts {
            Accounts::Any => true,
            Accounts::Only(patterns) => patterns.iter().any(|p| p.matches(account)),
        }
    }
}

#[derive(Debug, Clone)]
enum Accounts {
    Any,
    Only(Arc<[AccountPattern]>),
}

/// An account id, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AccountPattern {
    Exact(String),
    Prefix(String),
}

impl AccountPattern {
    fn parse(text: &str) -> anyhow::Result<AccountPattern> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains('*') {
            bail!("account pattern {text:?} has a '*' before its end; only a trailing '*' is allowed");
        }
        if !prefix && body.is_empty() {
            bail!("empty account id");
        }
        // A lone `*` would be the empty prefix: every account, including
        // ones created later for other clients. Such a grant must be
        // spelt out, never be the side effect of a short pattern.
        if prefix && body.is_empty() {
            bail!("account pattern \"*\" would match every account; list the accounts, or prefixes such as \"desk-*\"");
        }
        if body.len() > MAX_ACCOUNT_ID {
            bail!("account pattern {text:?} is longer than {MAX_ACCOUNT_ID} characters");
        }
        Ok(if prefix { AccountPattern::Prefix(body.to_owned()) } else { AccountPattern::Exact(body.to_owned()) })
    }

    fn matches(&self, account: &str) -> bool {
        match self {
            AccountPattern::Exact(a) => a == account,
            AccountPattern::Prefix(p) => account.starts_with(p.as_str()),
        }
    }
}

/// The clients allowed to call the service.
#[derive(Debug)]
pub struct Clients(Vec<Client>);

struct Client {
    id: String,
    digest: [u8; 32],
    accounts: Arc<[AccountPattern]>,
}

// By hand, without the digest: `Auth` and `Clients` are `Debug`, and a
// token's SHA-256 in a log line is an offline guessing target.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("id", &self.id).field("accounts", &self.accounts).finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    id: String,
    token_sha256: String,
    accounts: Vec<String>,
}

impl Clients {
    /// Reads `[[client]]` tables (`id`, `token_sha256`, `accounts`).
    ///
    /// # Errors
    ///
    /// A one-line message naming what is wrong: TOML syntax, an id that is
    /// empty, too long or repeated, a digest that is not 64 hex digits or is
    /// shared by two clients, an account pattern with a misplaced `*`, or no
    /// client at all.
    pub fn from_toml(text: &str) -> anyhow::Result<Clients> {
        // toml's Display quotes the offending line, and in this file that
        // line is likely a token digest (or a token pasted by mistake):
        // name the line by number instead, and keep toml's message.
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1);
            let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
            anyhow::anyhow!("invalid TOML{at}: {}", e.message().replace('\n', " "))
        })?;
        if file.client.is_empty() {
            bail!("the clients file has no [[client]] table");
        }
        let (mut ids, mut digests, mut clients) = (HashSet::new(), HashSet::new(), Vec::new());
        for entry in file.client {
            let id = entry.id;
            if id.is_empty() || id.len() > MAX_CLIENT_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("client id {id:?} must be 1 to {MAX_CLIENT_ID} visible ASCII characters");
            }
            if !ids.insert(id.clone()) {
                bail!("client id {id:?} appears twice");
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(entry.token_sha256.trim(), &mut digest).map_err(|_| {
                anyhow::anyhow!("token_sha256 of client {id:?} is not 64 hex digits (the SHA-256 of the token)")
            })?;
            if !digests.insert(digest) {
                bail!("client {id:?} has the same token_sha256 as another client");
            }
            let accounts = entry
                .accounts
                .iter()
                .map(|a| AccountPattern::parse(a))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("accounts of client {id:?}"))?;
            clients.push(Client { id, digest, accounts: accounts.into() });
        }
        Ok(Clients(clients))
    }

    /// Reads a clients file.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, or as [`Clients::from_toml`].
    pub fn load(path: &std::path::Path) -> anyhow::Result<Clients> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Clients::from_toml(&text).with_context(|| format!("clients file {}", path.display()))
    }

    /// How many clients there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no client (never, for a file that loaded).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client whose token this is. Every digest is compared, in
    /// constant time, so the time taken says nothing about which client or
    /// how many bytes matched.
    fn find(&self, token: &str) -> Option<Principal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for client in &self.0 {
            if constant_time_eq(&client.digest, &digest) {
                found = Some(client);
            }
        }
        found.map(|c| Principal { id: c.id.clone(), accounts: Accounts::Only(c.accounts.clone()) })
    }
}

/// Compares two digests without an early exit on the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The hex SHA-256 of `token`: what a clients file stores.
///
/// ```
/// assert_eq!(
///     order_service::auth::token_sha256("abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
#[must_use]
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (244 bits from the operating system's generator, as
/// 64 hex digits).
///
/// ```
/// let t = order_service::auth::new_token();
/// assert_eq!(t.len(), 64);
/// assert_ne!(t, order_service::auth::new_token());
/// ```
#[must_use]
pub fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(accounts: &str) -> String {
        format!("[[client]]\nid = \"c\"\ntoken_sha256 = \"{}\"\naccounts = {accounts}\n", token_sha256("t"))
    }

    #[test]
    fn patterns_match_exactly_or_by_trailing_prefix() {
        let clients = Clients::from_toml(&file(r#"["acc-1", "desk-*"]"#)).unwrap();
        let p = clients.find("t").unwrap();
        assert!(p.may_use("acc-1") && p.may_use("desk-7") && p.may_use("desk-"));
        assert!(!p.may_use("acc-10") && !p.may_use("acc-") && !p.may_use("des"));
        assert!(clients.find("T").is_none() && clients.find("").is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, needle) in [
            (file(r#"["a*b"]"#), "trailing"),
            (file(r#"[""]"#), "empty account"),
            (file(r#"["acc-1", "*"]"#), "would match every account"),
            (file(&format!("[\"{}\"]", "a".repeat(65))), "longer than 64"),
            ("[[client]]\nid = \"c\"\ntoken_sha256 = \"zz\"\naccounts = []\n".to_owned(), "64 hex"),
            ("".to_owned(), "no [[client]]"),
            (format!("{}{}", file("[]"), file("[]")), "twice"),
        ] {
            let err = format!("{:#}", Clients::from_toml(&text).unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn debug_output_names_clients_but_never_their_token_digests() {
        let clients = Clients::from_toml(&file(r#"["acc-1"]"#)).unwrap();
        let digest: [u8; 32] = Sha256::digest(b"t").into();
        for text in [format!("{clients:?}"), format!("{:?}", Auth::bearer(clients))] {
            assert!(text.contains("\"c\"") && text.contains("acc-1"), "{text}");
            assert!(!text.contains(&format!("{digest:?}")) && !text.contains(&token_sha256("t")), "{text}");
            assert!(!text.contains("digest"), "{text}");
        }
    }

    #[test]
    fn a_syntax_error_names_the_line_but_never_quotes_it() {
        let digest = token_sha256("t");
        for text in [
            format!("[[client]]\nid = \"c\"\ntoken_sha256 = \"{digest}\naccounts = []\n"),
            format!("[[client]]\nid = \"c\"\ntoken_sha256 = \"{digest}\" x\naccounts = []\n"),
        ] {
            let err = format!("{:#}", Clients::from_toml(&text).unwrap_err());
            assert!(err.contains("line 3"), "{err}");
            assert!(!err.contains(&digest[..16]), "{err}");
        }
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] = 8;
        assert!(!constant_time_eq(&a, &b));
    }
}
