//! What every check sees: the configuration, the clock, the migrations this
//! build embeds, and one shared connection pool to the database.

use spark_db::{Database, Migrations, SharedClock};
use tokio::sync::OnceCell;

use crate::config::Config;

/// The inputs of a scan, shared by all its checks.
///
/// ```
/// use spark_checks::{Config, Context};
///
/// let ctx = Context::new(Config::default()).with_migrations(&[]);
/// assert!(ctx.config().database.url.is_none());
/// ```
#[derive(Debug)]
pub struct Context {
    config: Config,
    clock: SharedClock,
    migrations: Vec<Migrations>,
    direct: OnceCell<Result<Database, String>>,
}

impl Context {
    /// A context on the system clock with no embedded migrations.
    #[must_use]
    pub fn new(config: Config) -> Context {
        Context { config, clock: spark_db::system_clock(), migrations: Vec::new(), direct: OnceCell::new() }
    }

    /// The clock the node's time is read from (tests inject a skewed one).
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Context {
        self.clock = clock;
        self
    }

    /// The migrations this build embeds, which the `migrations` check
    /// compares with the database.
    #[must_use]
    pub fn with_migrations(mut self, migrations: &[Migrations]) -> Context {
        self.migrations = migrations.to_vec();
        self
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's clock.
    #[must_use]
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The embedded migrations.
    #[must_use]
    pub fn migrations(&self) -> &[Migrations] {
        &self.migrations
    }

    /// Whether a database is configured at all.
    #[must_use]
    pub fn has_database(&self) -> bool {
        self.config.database.direct().is_some()
    }

    /// A pool on the direct database URL, connected on first use and shared
    /// by every check of the scan.
    ///
    /// # Errors
    ///
    /// A one-line message with the URL redacted when nothing is configured,
    /// when the URL points at the pgBouncer of `pgbouncer.admin_url` (the
    /// checks' prepared statements are not safe through its pool; set
    /// `database.direct_url`), or when the database cannot be reached.
    pub async fn database(&self) -> Result<Database, String> {
        self.direct
            .get_or_init(|| async {
                let url = self.config.database.direct().ok_or_else(|| {
                    "no database configured: set database.url in spark.toml or SPARK_DATABASE_URL".to_owned()
                })?;
                // The checks' own queries are sqlx prepared statements. Through
                // a pgBouncer transaction pool that does not track them they
                // fail ("prepared statement sqlx_s_1 already exists") or read
                // another client's rows (measured on pgBouncer 1.18: a check
                // panicked decoding one), so they must reach PostgreSQL itself.
                if let Some(admin) = &self.config.pgbouncer.admin_url
                    && crate::checks::endpoint(url).is_some_and(|e| Some(e) == crate::checks::endpoint(admin))
                {
                    let key = if self.config.database.direct_url.is_some() { "direct_url" } else { "url" };
                    return Err(format!(
                        "database.{key} {} goes through pgBouncer (the host and port of pgbouncer.admin_url): the \
                         server-side checks need PostgreSQL itself; set database.direct_url to a direct URL",
                        spark_db::redact_url(url)
                    ));
                }
                if spark_db::Backend::of_url(url).ok() == Some(spark_db::Backend::Postgres) {
                    probe_postgres(url).await?;
                }
                Database::connect(url, 4).await.map_err(|e| one_line(&format!("{}", ErrorChain(&e))))
            })
            .await
            .clone()
    }
}

/// One plain connection to `url`, closed again. sqlx's pool retries a
/// refused connection until its acquire timeout (10 s), so a server that is
/// down would only ever read "timed out"; a single attempt says why at once.
async fn probe_postgres(url: &str) -> Result<(), String> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let failed =
        |e: &sqlx::Error| one_line(&format!("cannot connect to {}: {}", spark_db::redact_url(url), ErrorChain(e)));
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url).map_err(|e| failed(&e))?;
    let conn = options.connect().await.map_err(|e| failed(&e))?;
    let _ = conn.close().await;
    Ok(())
}

/// An error with its causes on one line (`a: b: c`).
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            // Some errors (sqlx's) already print their cause: say it once.
            let more = c.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            cause = c.source();
        }
        f.write_str(&text)
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Echoes(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Wraps(#[source] std::io::Error);

    #[test]
    fn a_cause_is_said_once() {
        let inner = || std::io::Error::other("disk full");
        assert_eq!(ErrorChain(&Echoes(inner())).to_string(), "outer: disk full");
        assert_eq!(ErrorChain(&Wraps(inner())).to_string(), "outer: disk full");
    }
}
