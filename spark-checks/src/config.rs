//! `spark.toml`: every key documented in [`KEYS`], defaults stated, unknown
//! keys rejected, environment variables override, secrets only from the
//! environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::context::one_line;
use crate::error::ChecksError;

/// The whole configuration of a scan.
///
/// ```
/// let config = spark_checks::Config::from_toml_str(
///     "[clock]\noffset_warn_ms = 50\n",
///     |_| None, // no environment
/// ).unwrap();
/// assert_eq!(config.clock.offset_warn_ms, 50);
/// assert_eq!(config.clock.offset_fail_ms, 250);
///
/// let err = spark_checks::Config::from_toml_str("[clock]\nofset_warn_ms = 50\n", |_| None).unwrap_err();
/// assert!(err.to_string().contains("ofset_warn_ms"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[check]`: how the scan runs.
    pub check: ScanConfig,
    /// `[database]`: where the database is, by role.
    pub database: DatabaseConfig,
    /// `[clock]`: clock offset, NTP and sequence headroom.
    pub clock: ClockConfig,
    /// `[migrations]`.
    pub migrations: MigrationsConfig,
    /// `[pgbouncer]`.
    pub pgbouncer: PgbouncerConfig,
    /// `[decimal]`.
    pub decimal: DecimalConfig,
    /// `[backup]`.
    pub backup: BackupConfig,
    /// `[headers]`.
    pub headers: HeadersConfig,
    /// `[prometheus]`: the server both `observability` and `slo-alerts` read.
    pub prometheus: PrometheusConfig,
    /// `[alertmanager]`.
    pub alertmanager: AlertmanagerConfig,
    /// `[observability]`: scrape targets and Grafana dashboards.
    pub observability: ObservabilityConfig,
    /// `[slo]`: the SLOs whose burn-rate alerts must exist.
    pub slo: SloConfig,
    /// `[flags]`.
    pub flags: FlagsConfig,
    /// `[supply_chain]`.
    pub supply_chain: SupplyChainConfig,
}

/// `[check]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanConfig {
    /// Per-check timeout; a check still running then fails "timed out".
    pub timeout_ms: u64,
    /// Run only these check ids (empty: all).
    pub only: Vec<String>,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig { timeout_ms: 10_000, only: Vec::new() }
    }
}

/// `[database]`: one URL per role. Passwords only from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The URL the application uses (possibly through pgBouncer).
    pub url: Option<String>,
    /// A direct connection to PostgreSQL for the server-side checks
    /// (settings, statistics, `pg_stat_activity`); default: `url`.
    pub direct_url: Option<String>,
    /// The URL relays LISTEN through; must not be a transaction pool.
    pub listen_url: Option<String>,
    /// The URL migrations run through; must not be a transaction pool.
    pub migration_url: Option<String>,
}

impl DatabaseConfig {
    /// The URL for server-side checks: `direct_url`, else `url`.
    #[must_use]
    pub fn direct(&self) -> Option<&str> {
        self.direct_url.as_deref().or(self.url.as_deref())
    }
}

/// `[clock]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// Round trips measured; the one with the shortest round trip counts.
    pub samples: u32,
    /// Warn when the node is more than this far from the database.
    pub offset_warn_ms: u64,
    /// Fail when the node is more than this far from the database.
    pub offset_fail_ms: u64,
    /// Read the kernel's NTP state (adjtimex).
    pub ntp: bool,
    /// Fail when the kernel's estimated error is at least this.
    pub ntp_error_fail_ms: u64,
    /// Warn when a sequence has used this share of its column's range.
    pub sequence_warn_percent: u32,
    /// Fail when a sequence has used this share of its column's range.
    pub sequence_fail_percent: u32,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            samples: 5,
            offset_warn_ms: 100,
            offset_fail_ms: 250,
            ntp: true,
            ntp_error_fail_ms: 100,
            sequence_warn_percent: 75,
            sequence_fail_percent: 90,
        }
    }
}

/// `[migrations]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationsConfig {
    /// Versions applied in the database that this build does not embed and
    /// that are expected there (another application's migrations sharing
    /// `_sqlx_migrations`); any other such version warns.
    pub ignore_versions: Vec<i64>,
}

/// `[pgbouncer]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgbouncerConfig {
    /// The admin console, `postgres://USER@HOST:PORT/pgbouncer`.
    pub admin_url: Option<String>,
    /// The pool (pgBouncer database name) the application uses; default: the
    /// database named in `database.url`.
    pub database: Option<String>,
    /// Warn when `sv_active / pool_size` reaches this share.
    pub saturation_warn_percent: u32,
    /// Fail when `sv_active / pool_size` reaches this share.
    pub saturation_fail_percent: u32,
    /// Fail when a client has waited this long for a server connection.
    pub maxwait_fail_ms: u64,
    /// Warn about queries active longer than this.
    pub active_query_warn_seconds: u64,
    /// Warn about sessions idle in a transaction longer than this.
    pub idle_in_transaction_warn_seconds: u64,
    /// Fail on sessions idle in a transaction longer than this.
    pub idle_in_transaction_fail_seconds: u64,
    /// How long the LISTEN probe waits for its NOTIFY.
    pub notify_timeout_ms: u64,
}

impl Default for PgbouncerConfig {
    fn default() -> Self {
        PgbouncerConfig {
            admin_url: None,
            database: None,
            saturation_warn_percent: 70,
            saturation_fail_percent: 90,
            maxwait_fail_ms: 1_000,
            active_query_warn_seconds: 30,
            idle_in_transaction_warn_seconds: 60,
            idle_in_transaction_fail_seconds: 300,
            notify_timeout_ms: 5_000,
        }
    }
}

/// `[decimal]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecimalConfig {
    /// A case-insensitive regular expression over column names: the columns
    /// that hold money and must be exact.
    pub pattern: String,
}

/// The default money-column pattern.
pub const DEFAULT_MONEY_PATTERN: &str = "price|amount|qty|quantity|notional|fee|pnl|balance|cost";

impl Default for DecimalConfig {
    fn default() -> Self {
        DecimalConfig { pattern: DEFAULT_MONEY_PATTERN.to_owned() }
    }
}

/// `[backup]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Fail when WAL is waiting to be archived and the last archive is older.
    pub archive_max_age_seconds: u64,
    /// The pause between the two reads of `failed_count`.
    pub failed_count_interval_ms: u64,
    /// A base-backup directory that must exist (optional).
    pub base_backup_dir: Option<PathBuf>,
    /// The newest entry in `base_backup_dir` must be younger than this.
    pub base_backup_max_age_hours: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            archive_max_age_seconds: 600,
            failed_count_interval_ms: 1_000,
            base_backup_dir: None,
            base_backup_max_age_hours: 26,
        }
    }
}

/// `[headers]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadersConfig {
    /// The pages to GET and judge.
    pub urls: Vec<String>,
    /// Third-party origins a CSP may name (`https://cdn.example.com`,
    /// `*.example.com`).
    pub allowed_origins: Vec<String>,
    /// The least HSTS `max-age` accepted.
    pub hsts_min_age_seconds: u64,
    /// POST one synthetic report of each media type to the CSP's report
    /// endpoint and expect 204 (the endpoint counts them).
    pub report_probe: bool,
    /// The Chromium that measures `crossOriginIsolated` (a command on
    /// `PATH` or a path; used when built with the `browser` feature).
    pub chromium: String,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            urls: Vec::new(),
            allowed_origins: Vec::new(),
            hsts_min_age_seconds: 15_552_000,
            report_probe: true,
            chromium: "chromium".to_owned(),
        }
    }
}

/// `[prometheus]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// The server's base URL, `http://HOST:9090` (with a route prefix, if
    /// it has one).
    pub url: Option<String>,
}

/// `[alertmanager]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// The base URL, `http://HOST:9093`.
    pub url: Option<String>,
}

/// `[observability]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Job name → the number of active targets it must have.
    pub expected_targets: BTreeMap<String, u32>,
    /// Fail when a target's last scrape is older than this many of its
    /// scrape intervals.
    pub scrape_age_fail_intervals: u32,
    /// Grafana dashboard JSON files: paths, directories (every `*.json` in
    /// them) or patterns with `*` and `?` in the file name.
    pub dashboards: Vec<String>,
    /// The data source uids and names Grafana has (the provisioned ones).
    pub datasources: Vec<String>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            expected_targets: BTreeMap::new(),
            scrape_age_fail_intervals: 2,
            dashboards: Vec::new(),
            datasources: Vec::new(),
        }
    }
}

/// `[slo]`.
///
/// An alerting rule is the `W` burn-rate rule of SLO `N` when its labels
/// carry `slo_label = N` and `window_label = W`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloConfig {
    /// The SLOs that must have burn-rate alerts.
    pub names: Vec<String>,
    /// The windows each SLO needs a burn-rate rule for.
    pub windows: Vec<String>,
    /// The rule label naming the SLO.
    pub slo_label: String,
    /// The rule label naming the window.
    pub window_label: String,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            names: Vec::new(),
            windows: vec!["1h".to_owned(), "6h".to_owned()],
            slo_label: "slo".to_owned(),
            window_label: "window".to_owned(),
        }
    }
}

/// `[flags]`: the flagd flag file and the flag service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlagsConfig {
    /// The flagd flag definition file (JSON).
    pub file: Option<PathBuf>,
    /// Flags the application reads: each must be in the file.
    pub required: Vec<String>,
    /// Risky flags and their safe variant (flag → variant); a flag's
    /// `metadata.safeVariant` in the file marks it risky too.
    pub risky: std::collections::BTreeMap<String, String>,
    /// The traffic share the canary has now: no fractional rollout may send
    /// more to a new code path.
    pub canary_weight_percent: u32,
    /// Targeting keys evaluated to measure a fractional rollout's share.
    pub samples: u32,
    /// The flag service's base URL (OFREP); when set it must answer and
    /// agree with the file.
    pub ofrep_url: Option<String>,
}

impl Default for FlagsConfig {
    fn default() -> Self {
        FlagsConfig {
            file: None,
            required: Vec::new(),
            risky: std::collections::BTreeMap::new(),
            canary_weight_percent: 5,
            samples: 1_000,
            ofrep_url: None,
        }
    }
}

/// `[supply_chain]`: the SBOM and provenance of the deployed artifact, and
/// the licence policy. Relative paths are relative to the working
/// directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupplyChainConfig {
    /// The CycloneDX 1.5 JSON SBOM (`spark sbom`).
    pub sbom: Option<PathBuf>,
    /// The in-toto provenance statement (`spark provenance`).
    pub provenance: Option<PathBuf>,
    /// The artifact being deployed, whose SHA-256 the provenance's subject
    /// must carry.
    pub artifact: Option<PathBuf>,
    /// The lockfile whose packages the SBOM must list exactly.
    pub lockfile: PathBuf,
    /// SPDX licence identifiers a linked binary may not carry: exact ids, or
    /// a prefix ending in `*` (`GPL-*` matches `GPL-3.0-only`, not
    /// `LGPL-2.1-only`), case-insensitive. An expression fails only when no
    /// alternative of its `OR`s avoids them.
    pub deny_licenses: Vec<String>,
    /// Warn about a component whose licence is missing, not SPDX, or a
    /// `LicenseRef-` the policy cannot judge.
    pub warn_unknown: bool,
}

/// The default licence deny list: the GNU GPL and AGPL (every version,
/// `-only`, `-or-later` and `+`) and the SSPL, whose copyleft reaches a
/// statically linked Rust binary or the service it runs.
pub const DEFAULT_DENY_LICENSES: [&str; 3] = ["AGPL-*", "GPL-*", "SSPL-*"];

impl Default for SupplyChainConfig {
    fn default() -> Self {
        SupplyChainConfig {
            sbom: None,
            provenance: None,
            artifact: None,
            lockfile: PathBuf::from("Cargo.lock"),
            deny_licenses: DEFAULT_DENY_LICENSES.iter().map(|&s| s.to_owned()).collect(),
            warn_unknown: true,
        }
    }
}

/// The text of `path`; a missing file is empty when it is not `required`.
fn read_config(path: &Path, required: bool) -> Result<String, ChecksError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(String::new()),
        Err(e) => Err(ChecksError::Config {
            source_name: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        }),
    }
}

/// One documented key of `spark.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// `section.key`.
    pub key: &'static str,
    /// The default, as TOML would write it (`none` when unset).
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

macro_rules! keys {
    ($( $section:literal . $name:literal = $default:literal : $doc:literal ;)*) => {
        /// Every key of `spark.toml`, its default and meaning (the crate
        /// README prints the same table; a test keeps them equal). The
        /// environment variable of each is [`Key::env`].
        pub const KEYS: &[Key] = &[$(Key { key: concat!($section, ".", $name), default: $default, doc: $doc }),*];
    };
}

keys! {
    "check"."timeout_ms" = "10000" : "per-check timeout; a check still running then fails \"timed out\"";
    "check"."only" = "[]" : "check ids to run (empty: all)";
    "database"."url" = "none" : "the application's database URL (maybe through pgBouncer); a password only from the environment";
    "database"."direct_url" = "none" : "a direct PostgreSQL URL for the server-side checks (default: database.url)";
    "database"."listen_url" = "none" : "the URL relays LISTEN through; must not be a transaction pool";
    "database"."migration_url" = "none" : "the URL migrations run through; must not be a transaction pool";
    "clock"."samples" = "5" : "round trips measured; the shortest counts";
    "clock"."offset_warn_ms" = "100" : "warn when node and database clocks differ by more";
    "clock"."offset_fail_ms" = "250" : "fail when node and database clocks differ by more";
    "clock"."ntp" = "true" : "read the kernel's NTP state through adjtimex";
    "clock"."ntp_error_fail_ms" = "100" : "fail when the kernel's estimated clock error is at least this";
    "clock"."sequence_warn_percent" = "75" : "warn when a sequence has used this share of its column's range";
    "clock"."sequence_fail_percent" = "90" : "fail when a sequence has used this share of its column's range";
    "migrations"."ignore_versions" = "[]" : "versions applied by other applications that share _sqlx_migrations";
    "pgbouncer"."admin_url" = "none" : "the admin console, postgres://USER@HOST:PORT/pgbouncer";
    "pgbouncer"."database" = "none" : "the application's pool name (default: the database in database.url)";
    "pgbouncer"."saturation_warn_percent" = "70" : "warn when sv_active / pool_size reaches this";
    "pgbouncer"."saturation_fail_percent" = "90" : "fail when sv_active / pool_size reaches this";
    "pgbouncer"."maxwait_fail_ms" = "1000" : "fail when a client has waited this long for a server";
    "pgbouncer"."active_query_warn_seconds" = "30" : "warn about queries running longer";
    "pgbouncer"."idle_in_transaction_warn_seconds" = "60" : "warn about sessions idle in a transaction longer";
    "pgbouncer"."idle_in_transaction_fail_seconds" = "300" : "fail on sessions idle in a transaction longer";
    "pgbouncer"."notify_timeout_ms" = "5000" : "how long the LISTEN probe waits for its NOTIFY";
    "decimal"."pattern" = "\"price|amount|qty|quantity|notional|fee|pnl|balance|cost\"" : "case-insensitive regex over column names: the money columns";
    "backup"."archive_max_age_seconds" = "600" : "fail when WAL waits to be archived and the last archive is older";
    "backup"."failed_count_interval_ms" = "1000" : "pause between the two reads of pg_stat_archiver.failed_count";
    "backup"."base_backup_dir" = "none" : "a base-backup directory that must exist (optional)";
    "backup"."base_backup_max_age_hours" = "26" : "its newest entry must be younger than this";
    "headers"."urls" = "[]" : "the pages to GET and judge";
    "headers"."allowed_origins" = "[]" : "third-party origins a CSP may name (https://cdn.example.com, *.example.com)";
    "headers"."hsts_min_age_seconds" = "15552000" : "the least HSTS max-age accepted (180 days)";
    "headers"."report_probe" = "true" : "POST a synthetic report of each media type to the CSP report endpoint and expect 204";
    "headers"."chromium" = "\"chromium\"" : "the Chromium that measures crossOriginIsolated (feature browser)";
    "prometheus"."url" = "none" : "Prometheus's base URL, http://HOST:9090, read by observability and slo-alerts";
    "alertmanager"."url" = "none" : "Alertmanager's base URL, http://HOST:9093, read by slo-alerts";
    "observability"."expected_targets" = "{}" : "job = count: the active targets each job must have, e.g. { api = 3 }";
    "observability"."scrape_age_fail_intervals" = "2" : "fail when a target's last scrape is older than this many scrape intervals";
    "observability"."dashboards" = "[]" : "Grafana dashboard JSON files: paths, directories, or * and ? patterns in the file name";
    "observability"."datasources" = "[]" : "the uids and names of the data sources Grafana has";
    "slo"."names" = "[]" : "the SLOs that need burn-rate alerts";
    "slo"."windows" = "[\"1h\", \"6h\"]" : "the windows each SLO needs an alerting rule for";
    "slo"."slo_label" = "\"slo\"" : "the rule label that names the SLO";
    "slo"."window_label" = "\"window\"" : "the rule label that names the window";
    "flags"."file" = "none" : "the flagd flag definition file (JSON)";
    "flags"."required" = "[]" : "flags the application reads: each must be in the file";
    "flags"."risky" = "{}" : "risky flags and their safe variant (flag = variant); metadata.safeVariant in the file marks one too";
    "flags"."canary_weight_percent" = "5" : "the canary's traffic share now: no fractional rollout may send more to a new code path";
    "flags"."samples" = "1000" : "targeting keys evaluated to measure a fractional rollout's share";
    "flags"."ofrep_url" = "none" : "the flag service (OFREP); when set it must answer and agree with the file";
    "supply_chain"."sbom" = "none" : "the CycloneDX 1.5 JSON SBOM of the deployed build (spark sbom)";
    "supply_chain"."provenance" = "none" : "the in-toto SLSA provenance statement of the deployed artifact (spark provenance)";
    "supply_chain"."artifact" = "none" : "the deployed artifact, whose sha256 the provenance subject must carry";
    "supply_chain"."lockfile" = "\"Cargo.lock\"" : "the lockfile whose packages the SBOM must list exactly";
    "supply_chain"."deny_licenses" = "[\"AGPL-*\", \"GPL-*\", \"SSPL-*\"]" : "SPDX ids a linked binary may not carry (exact, or a prefix ending in *)";
    "supply_chain"."warn_unknown" = "true" : "warn about a missing, non-SPDX or LicenseRef licence";
}

impl Key {
    /// The environment variable that overrides it: `SPARK_SECTION_KEY`
    /// (`database.url` → `SPARK_DATABASE_URL`).
    #[must_use]
    pub fn env(&self) -> String {
        format!("SPARK_{}", self.key.replace('.', "_").to_ascii_uppercase())
    }
}

impl Config {
    /// Reads `path` (a missing file is the defaults only when `required` is
    /// false), then applies the environment.
    ///
    /// # Errors
    ///
    /// [`ChecksError::Config`] naming the file and the bad key or value,
    /// [`ChecksError::SecretInFile`] for a password written in the file.
    pub fn load(path: &Path, required: bool) -> Result<Config, ChecksError> {
        let text = read_config(path, required)?;
        Config::parse(&text, &path.display().to_string(), |var| std::env::var(var).ok())
    }

    /// Parses TOML text, then applies overrides from `env` (a lookup by
    /// variable name; pass `|v| std::env::var(v).ok()` for the process's).
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn from_toml_str(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ChecksError> {
        Config::parse(text, "spark.toml", env)
    }

    /// Reads `path` as [`Config::load`] does, but first takes the top-level
    /// sections named in `foreign` out of it and returns them untouched:
    /// the sections of `spark.toml` that other crates own (`[release]` is
    /// spark-release's). Every other unknown section is still refused.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("spark.toml");
    /// std::fs::write(&path, "[clock]\noffset_warn_ms = 50\n[release]\nroles = [\"CTO\"]\n").unwrap();
    /// let (config, foreign) = spark_checks::Config::load_with_foreign(&path, true, &["release"]).unwrap();
    /// assert_eq!(config.clock.offset_warn_ms, 50);
    /// assert!(foreign["release"]["roles"].is_array());
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load_with_foreign(
        path: &Path,
        required: bool,
        foreign: &[&str],
    ) -> Result<(Config, toml::Table), ChecksError> {
        let text = read_config(path, required)?;
        let source_name = path.display().to_string();
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| ChecksError::Config { source_name: source_name.clone(), message: one_line(&e.to_string()) })?;
        let mut taken = toml::Table::new();
        for name in foreign {
            if let Some(section) = table.remove(*name) {
                taken.insert((*name).to_owned(), section);
            }
        }
        let config = Config::from_table(table, &source_name, |var| std::env::var(var).ok())?;
        Ok((config, taken))
    }

    fn parse(text: &str, source_name: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ChecksError> {
        let err = |message: String| ChecksError::Config { source_name: source_name.to_owned(), message };
        let table: toml::Table = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
        Config::from_table(table, source_name, env)
    }

    fn from_table(
        mut table: toml::Table,
        source_name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ChecksError> {
        let err = |message: String| ChecksError::Config { source_name: source_name.to_owned(), message };
        // Secrets never come from a file: a file is copied, committed and
        // attached to tickets.
        for key in KEYS.iter().filter(|k| k.key.ends_with("url")) {
            let (section, name) = key.key.split_once('.').unwrap_or_default();
            if let Some(url) = table.get(section).and_then(|s| s.get(name)).and_then(|v| v.as_str())
                && url_password(url).is_some()
            {
                return Err(ChecksError::SecretInFile { key: key.key, env: key.env() });
            }
        }
        let from_env = |key: &Key| env(&key.env()).filter(|v| !v.is_empty());
        for key in KEYS {
            let Some(raw) = from_env(key) else { continue };
            let (section, name) = key.key.split_once('.').unwrap_or_default();
            let section = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| err(format!("[{section}] must be a table")))?;
            section.insert(name.to_owned(), env_value(&raw));
        }
        let config: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            err(format!("{} (from the file or the environment)", one_line(&e.to_string())))
        })?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let order = |what: &str, warn: u64, fail: u64| {
            if warn > fail {
                Err(format!("{what}: the warn limit {warn} is beyond the fail limit {fail}"))
            } else {
                Ok(())
            }
        };
        order("clock.offset_warn_ms / offset_fail_ms", self.clock.offset_warn_ms, self.clock.offset_fail_ms)?;
        order(
            "clock.sequence_warn_percent / sequence_fail_percent",
            self.clock.sequence_warn_percent.into(),
            self.clock.sequence_fail_percent.into(),
        )?;
        order(
            "pgbouncer.saturation_warn_percent / saturation_fail_percent",
            self.pgbouncer.saturation_warn_percent.into(),
            self.pgbouncer.saturation_fail_percent.into(),
        )?;
        order(
            "pgbouncer.idle_in_transaction_warn_seconds / idle_in_transaction_fail_seconds",
            self.pgbouncer.idle_in_transaction_warn_seconds,
            self.pgbouncer.idle_in_transaction_fail_seconds,
        )?;
        if self.clock.samples == 0 {
            return Err("clock.samples must be at least 1".to_owned());
        }
        if self.check.timeout_ms == 0 {
            return Err("check.timeout_ms must be at least 1".to_owned());
        }
        regex::RegexBuilder::new(&self.decimal.pattern)
            .case_insensitive(true)
            .build()
            .map_err(|e| format!("decimal.pattern is not a valid regular expression: {}", one_line(&e.to_string())))?;
        for url in self.postgres_urls() {
            spark_db::Backend::of_url(url).map_err(|e| e.to_string())?;
        }
        for (key, url) in [("prometheus.url", &self.prometheus.url), ("alertmanager.url", &self.alertmanager.url)] {
            if let Some(url) = url {
                http_url(key, url)?;
            }
        }
        if self.prometheus.url.is_none() {
            if !self.observability.expected_targets.is_empty() {
                return Err("observability.expected_targets is set but prometheus.url is not".to_owned());
            }
            if !self.slo.names.is_empty() {
                return Err("slo.names is set but prometheus.url is not".to_owned());
            }
        }
        if self.observability.scrape_age_fail_intervals == 0 {
            return Err("observability.scrape_age_fail_intervals must be at least 1".to_owned());
        }
        if !self.slo.names.is_empty() && self.slo.windows.is_empty() {
            return Err("slo.windows is empty: each SLO needs at least one burn-rate window".to_owned());
        }
        Ok(())
    }

    /// The configured PostgreSQL URLs: the database roles and pgBouncer's
    /// admin console.
    fn postgres_urls(&self) -> impl Iterator<Item = &String> {
        [&self.database.url, &self.database.direct_url, &self.database.listen_url, &self.database.migration_url]
            .into_iter()
            .flatten()
            .chain(self.pgbouncer.admin_url.as_ref())
    }

    /// Every password present in a configured URL, so reports can scrub
    /// them from anything a target echoed back.
    #[must_use]
    pub fn secrets(&self) -> Vec<String> {
        self.postgres_urls()
            .chain(self.prometheus.url.as_ref())
            .chain(self.alertmanager.url.as_ref())
            .filter_map(|u| url_password(u))
            .filter(|p| p.len() >= 3)
            .collect()
    }
}

/// Refuses a URL that is not `http` or `https` with a host.
fn http_url(key: &str, url: &str) -> Result<(), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{key} {url:?} is not a URL"))?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{key} {:?} is not an http:// or https:// URL with a host", spark_db::redact_url(url)));
    }
    Ok(())
}

/// The password in a URL's userinfo or `password=` parameter.
fn url_password(url: &str) -> Option<String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let from_query = query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.eq_ignore_ascii_case("password").then(|| v.to_owned())
    });
    let scheme = base.find("://")?;
    let at = base.rfind('@');
    let from_userinfo = at.filter(|&at| at > scheme).and_then(|at| {
        let userinfo = &base[scheme + 3..at];
        userinfo.split_once(':').map(|(_, p)| p.to_owned())
    });
    from_userinfo.or(from_query).filter(|p| !p.is_empty())
}

/// An environment value as TOML: a number, boolean or array when it parses
/// as one, a string otherwise.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn env_names_follow_the_keys() {
        let url = KEYS.iter().find(|k| k.key == "database.url").unwrap();
        assert_eq!(url.env(), "SPARK_DATABASE_URL");
        let admin = KEYS.iter().find(|k| k.key == "pgbouncer.admin_url").unwrap();
        assert_eq!(admin.env(), "SPARK_PGBOUNCER_ADMIN_URL");
    }

    #[test]
    fn every_field_is_documented_and_every_documented_key_exists() {
        // A configuration with every optional key set serialises to every
        // field; KEYS must list exactly those.
        let mut full = Config {
            database: DatabaseConfig {
                url: Some(String::new()),
                direct_url: Some(String::new()),
                listen_url: Some(String::new()),
                migration_url: Some(String::new()),
            },
            ..Config::default()
        };
        full.pgbouncer.admin_url = Some(String::new());
        full.pgbouncer.database = Some(String::new());
        full.backup.base_backup_dir = Some(PathBuf::new());
        full.prometheus.url = Some(String::new());
        full.alertmanager.url = Some(String::new());
        full.flags.file = Some(PathBuf::new());
        full.flags.ofrep_url = Some(String::new());
        full.supply_chain.sbom = Some(PathBuf::new());
        full.supply_chain.provenance = Some(PathBuf::new());
        full.supply_chain.artifact = Some(PathBuf::new());
        let value = toml::Value::try_from(&full).unwrap();
        let mut fields = Vec::new();
        for (section, table) in value.as_table().unwrap() {
            for name in table.as_table().unwrap().keys() {
                fields.push(format!("{section}.{name}"));
            }
        }
        fields.sort();
        let mut documented: Vec<String> = KEYS.iter().map(|k| k.key.to_owned()).collect();
        documented.sort();
        assert_eq!(fields, documented);
    }

    #[test]
    fn documented_defaults_are_the_real_defaults() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        for key in KEYS {
            let (section, name) = key.key.split_once('.').unwrap();
            let actual = value.get(section).and_then(|s| s.get(name)).map_or("none".to_owned(), |v| v.to_string());
            assert_eq!(actual, key.default, "{}", key.key);
        }
    }

    #[test]
    fn the_readme_documents_every_key_with_its_default() {
        let readme = include_str!("../README.md");
        for key in KEYS {
            let row = if key.default == "none" {
                format!("| `{}` | none |", key.key)
            } else {
                format!("| `{}` | `{}` |", key.key, key.default.replace('|', "\\|"))
            };
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }

    #[test]
    fn unknown_keys_and_sections_are_rejected() {
        let e = Config::from_toml_str("[clock]\nofset_warn_ms = 1\n", no_env).unwrap_err().to_string();
        assert!(e.contains("ofset_warn_ms"), "{e}");
        let e = Config::from_toml_str("[clok]\n", no_env).unwrap_err().to_string();
        assert!(e.contains("clok"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file_with_typed_values() {
        let env = |v: &str| match v {
            "SPARK_CLOCK_OFFSET_WARN_MS" => Some("7".to_owned()),
            "SPARK_DATABASE_URL" => Some("postgres://app:pw9@db/app".to_owned()),
            "SPARK_CHECK_ONLY" => Some("[\"clock\"]".to_owned()),
            _ => None,
        };
        let c = Config::from_toml_str("[clock]\noffset_warn_ms = 50\n", env).unwrap();
        assert_eq!(c.clock.offset_warn_ms, 7);
        assert_eq!(c.database.url.as_deref(), Some("postgres://app:pw9@db/app"));
        assert_eq!(c.check.only, vec!["clock"]);
        assert_eq!(c.secrets(), vec!["pw9"]);
        let e = Config::from_toml_str("", |v| (v == "SPARK_CLOCK_SAMPLES").then(|| "many".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("samples"), "{e}");
    }

    #[test]
    fn a_password_in_the_file_is_refused_and_not_echoed() {
        let e = Config::from_toml_str("[database]\nurl = \"postgres://app:hunter2@db/app\"\n", no_env).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("SPARK_DATABASE_URL") && !text.contains("hunter2"), "{text}");
        let e =
            Config::from_toml_str("[pgbouncer]\nadmin_url = \"postgres://a@b/pgbouncer?password=hunter2\"\n", no_env)
                .unwrap_err()
                .to_string();
        assert!(e.contains("SPARK_PGBOUNCER_ADMIN_URL") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn inverted_limits_and_bad_patterns_are_refused() {
        let e = Config::from_toml_str("[clock]\noffset_warn_ms = 300\n", no_env).unwrap_err().to_string();
        assert!(e.contains("offset_warn_ms"), "{e}");
        let e = Config::from_toml_str("[decimal]\npattern = \"(\"\n", no_env).unwrap_err().to_string();
        assert!(e.contains("decimal.pattern"), "{e}");
        let e = Config::from_toml_str("[database]\nurl = \"mysql://x\"\n", no_env).unwrap_err().to_string();
        assert!(e.contains("mysql"), "{e}");
    }
}
