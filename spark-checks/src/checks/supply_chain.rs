//! `supply-chain`: the deployed build's SBOM and provenance exist and tell
//! the truth, and every licence in the SBOM is allowed.

use std::collections::BTreeMap;
use std::path::Path;

use crate::check::{Check, Measurement, Outcome, Status};
use crate::config::SupplyChainConfig;
use crate::context::Context;
use crate::{provenance, sbom};

/// At most this many packages are named in one finding; the rest are
/// counted (the details carry them all).
const NAMED: usize = 5;

/// `supply_chain.sbom` and `supply_chain.provenance` both exist; the SBOM
/// is valid CycloneDX 1.5 JSON and its components are exactly the packages
/// of `supply_chain.lockfile`, with the lockfile's checksums; the
/// provenance is an in-toto Statement v1 with an SLSA provenance v1
/// predicate whose subject carries the SHA-256 of `supply_chain.artifact`;
/// and every component's licence expression is allowed by
/// `supply_chain.deny_licenses`. Skips when none of the three files is
/// configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct SupplyChainCheck;

#[async_trait::async_trait]
impl Check for SupplyChainCheck {
    fn id(&self) -> &'static str {
        "supply-chain"
    }

    async fn run(&self, ctx: &Context) -> Outcome {
        let config = ctx.config().supply_chain.clone();
        if config.sbom.is_none() && config.provenance.is_none() && config.artifact.is_none() {
            return Outcome::skip(
                self.id(),
                "no SBOM or provenance configured: set supply_chain.sbom, supply_chain.provenance and \
                 supply_chain.artifact",
            );
        }
        // Hashing an artifact and validating a large SBOM are blocking work.
        let id = self.id();
        tokio::task::spawn_blocking(move || judge(&config))
            .await
            .unwrap_or_else(|e| Outcome::unreachable(id, format!("the supply-chain check panicked: {e}")))
    }
}

/// The whole verdict, synchronously.
fn judge(config: &SupplyChainConfig) -> Outcome {
    let mut o = Outcome::new("supply-chain");
    let mut passed = Vec::new();
    if let Some(n) = judge_sbom(config, &mut o) {
        passed.push(format!("SBOM lists the {n} locked packages"));
    }
    if let Some(digest) = judge_provenance(config, &mut o) {
        passed.push(format!("provenance matches the artifact (sha256:{})", &digest[..12.min(digest.len())]));
    }
    o.finish(&passed.join("; "))
}

fn read_json(path: &Path, what: &str, o: &mut Outcome) -> Option<serde_json::Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            o.found(Status::Fail, format!("the {what} {} cannot be read: {e}", path.display()));
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            o.found(Status::Fail, format!("the {what} {} is not JSON: {e}", path.display()));
            None
        }
    }
}

fn names(list: &[String]) -> String {
    if list.len() <= NAMED {
        list.join(", ")
    } else {
        format!("{} and {} more", list[..NAMED].join(", "), list.len() - NAMED)
    }
}

/// The SBOM's validity, package list and licences; the number of packages
/// when everything about the list holds.
fn judge_sbom(config: &SupplyChainConfig, o: &mut Outcome) -> Option<usize> {
    let Some(path) = &config.sbom else {
        o.found(Status::Fail, "no SBOM configured: set supply_chain.sbom (write one with `spark sbom`)");
        return None;
    };
    let doc = read_json(path, "SBOM", o)?;
    let problems = sbom::validate(&doc);
    o.measure(Measurement::info("schema_violations", problems.len() as f64, "count"));
    if !problems.is_empty() {
        o.found(
            Status::Fail,
            format!("the SBOM {} is not valid CycloneDX 1.5 JSON: {}", path.display(), names(&problems)),
        );
        o.detail("schema_violations", &problems);
    }
    let components = match sbom::components(&doc) {
        Ok(c) => c,
        Err(e) => {
            o.found(Status::Fail, format!("the SBOM {}: {e}", path.display()));
            return None;
        }
    };
    o.measure(Measurement::info("sbom_components", components.len() as f64, "count"));
    judge_licenses(config, &components, o);

    let locked = match sbom::lockfile_packages(&config.lockfile) {
        Ok(l) => l,
        Err(e) => {
            o.found(Status::Fail, format!("{e} (supply_chain.lockfile)"));
            return None;
        }
    };
    o.measure(Measurement::info("lockfile_packages", locked.len() as f64, "count"));
    let missing: Vec<String> = locked.keys().filter(|k| !components.contains_key(*k)).cloned().collect();
    let extra: Vec<String> = components.keys().filter(|k| !locked.contains_key(*k)).cloned().collect();
    let mut wrong_hash = Vec::new();
    let mut no_purl = Vec::new();
    for (key, c) in &components {
        if c.purl.as_deref().is_none_or(|p| !p.starts_with("pkg:cargo/")) {
            no_purl.push(key.clone());
        }
        if let Some(lock) = locked.get(key)
            && let Some(sum) = &lock.checksum
            && c.sha256.as_deref() != Some(sum.as_str())
        {
            wrong_hash.push(key.clone());
        }
    }
    if !missing.is_empty() {
        o.found(
            Status::Fail,
            format!(
                "{} package(s) of {} missing from the SBOM: {}",
                missing.len(),
                config.lockfile.display(),
                names(&missing)
            ),
        );
    }
    if !extra.is_empty() {
        o.found(
            Status::Fail,
            format!("{} SBOM component(s) not in {}: {}", extra.len(), config.lockfile.display(), names(&extra)),
        );
    }
    if !wrong_hash.is_empty() {
        o.found(
            Status::Fail,
            format!(
                "{} component(s) without the lockfile's SHA-256 checksum: {}",
                wrong_hash.len(),
                names(&wrong_hash)
            ),
        );
    }
    if !no_purl.is_empty() {
        o.found(Status::Fail, format!("{} component(s) without a pkg:cargo purl: {}", no_purl.len(), names(&no_purl)));
    }
    o.detail("sbom", path);
    o.detail("missing_from_sbom", &missing);
    o.detail("not_in_lockfile", &extra);
    let ok =
        missing.is_empty() && extra.is_empty() && wrong_hash.is_empty() && no_purl.is_empty() && problems.is_empty();
    ok.then_some(locked.len())
}

/// How the licence policy judges one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LicenseVerdict {
    /// Some alternative avoids every denied licence.
    Allowed,
    /// Every alternative needs a denied licence (named).
    Denied(Vec<String>),
    /// No licence, an expression that is not SPDX, or one whose verdict
    /// rests on a `LicenseRef-` the policy cannot judge.
    Unknown(String),
}

/// Whether `id` is on the deny list (exact, or a prefix ending in `*`,
/// ASCII case-insensitive).
fn denied(id: &str, deny: &[String]) -> bool {
    let id = id.to_ascii_lowercase();
    deny.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => id == pattern,
        }
    })
}

/// Judges one component's licence expressions (all must be allowed: a
/// component with two licence entries carries both).
pub(crate) fn judge_license(expressions: &[String], deny: &[String]) -> LicenseVerdict {
    if expressions.is_empty() {
        return LicenseVerdict::Unknown("no licence".to_owned());
    }
    let mut unknown = None;
    for text in expressions {
        let expr = match spdx::Expression::parse_mode(text, spdx::ParseMode::LAX) {
            Ok(e) => e,
            Err(_) => {
                unknown.get_or_insert_with(|| format!("{text:?} is not an SPDX expression"));
                continue;
            }
        };
        let name_of = |req: &spdx::LicenseReq| match &req.license {
            spdx::LicenseItem::Spdx { id, .. } => Some(id.name),
            spdx::LicenseItem::Other(_) => None,
        };
        // A LicenseRef is allowed by the deny list (nothing names it) but
        // the verdict then rests on a licence nobody has judged.
        let allowed = expr.evaluate(|req| name_of(req).is_none_or(|id| !denied(id, deny)));
        if !allowed {
            let mut ids: Vec<String> = expr
                .requirements()
                .filter_map(|r| name_of(&r.req))
                .filter(|id| denied(id, deny))
                .map(str::to_owned)
                .collect();
            ids.dedup();
            return LicenseVerdict::Denied(ids);
        }
        let without_refs = expr.evaluate(|req| name_of(req).is_some_and(|id| !denied(id, deny)));
        if !without_refs {
            unknown.get_or_insert_with(|| format!("{text:?} rests on a LicenseRef"));
        }
    }
    match unknown {
        Some(why) => LicenseVerdict::Unknown(why),
        None => LicenseVerdict::Allowed,
    }
}

fn judge_licenses(config: &SupplyChainConfig, components: &BTreeMap<String, sbom::SbomComponent>, o: &mut Outcome) {
    let mut denied_list = Vec::new();
    let mut unknown = Vec::new();
    for (key, c) in components {
        match judge_license(&c.licenses, &config.deny_licenses) {
            LicenseVerdict::Allowed => {}
            LicenseVerdict::Denied(ids) => {
                o.found(
                    Status::Fail,
                    format!(
                        "{key} is licensed {} and every alternative needs a denied licence ({}): \
                         supply_chain.deny_licenses",
                        c.licenses.join(" AND "),
                        ids.join(", ")
                    ),
                );
                denied_list.push(key.clone());
            }
            LicenseVerdict::Unknown(why) => unknown.push(format!("{key} ({why})")),
        }
    }
    if config.warn_unknown && !unknown.is_empty() {
        o.found(Status::Warn, format!("{} component(s) with an unknown licence: {}", unknown.len(), names(&unknown)));
    }
    o.measure(Measurement::info("denied_licenses", denied_list.len() as f64, "count"));
    o.measure(Measurement::info("unknown_licenses", unknown.len() as f64, "count"));
    o.detail("denied_licenses", &denied_list);
    o.detail("unknown_licenses", &unknown);
}

/// The provenance statement against the artifact; the artifact's digest
/// when it matches.
fn judge_provenance(config: &SupplyChainConfig, o: &mut Outcome) -> Option<String> {
    let Some(path) = &config.provenance else {
        o.found(
            Status::Fail,
            "no provenance configured: set supply_chain.provenance (write one with `spark provenance`)",
        );
        return None;
    };
    let statement = read_json(path, "provenance", o)?;
    let subjects = match provenance::subjects(&statement) {
        Ok(s) => s,
        Err(e) => {
            o.found(Status::Fail, format!("the provenance {}: {e}", path.display()));
            return None;
        }
    };
    let (builder, revision) = provenance::builder_and_revision(&statement);
    o.detail("provenance", path);
    o.detail("builder", &builder);
    o.detail("source_revision", &revision);
    if revision.is_none() {
        o.found(Status::Warn, format!("the provenance {} names no source commit (gitCommit)", path.display()));
    }
    let Some(artifact) = &config.artifact else {
        o.found(
            Status::Fail,
            "no artifact configured: set supply_chain.artifact to the file being deployed, whose digest the \
             provenance must carry",
        );
        return None;
    };
    let digest = match provenance::sha256_file(artifact) {
        Ok(d) => d,
        Err(e) => {
            o.found(Status::Fail, format!("{e}: the deployed artifact (supply_chain.artifact)"));
            return None;
        }
    };
    o.detail("artifact_sha256", &digest);
    if subjects.iter().any(|(_, sha)| *sha == digest) {
        Some(digest)
    } else {
        let listed: Vec<String> = subjects.iter().map(|(n, sha)| format!("{n} sha256:{sha}")).collect();
        o.found(
            Status::Fail,
            format!(
                "the provenance {} is not about the deployed artifact {} (sha256:{digest}): its subject is {}",
                path.display(),
                artifact.display(),
                listed.join(", ")
            ),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny() -> Vec<String> {
        crate::config::DEFAULT_DENY_LICENSES.iter().map(|&s| s.to_owned()).collect()
    }

    fn judge(e: &str) -> LicenseVerdict {
        judge_license(&[e.to_owned()], &deny())
    }

    #[test]
    fn an_expression_fails_only_when_every_alternative_is_denied() {
        assert_eq!(judge("MIT OR Apache-2.0"), LicenseVerdict::Allowed);
        assert_eq!(judge("MIT OR GPL-3.0"), LicenseVerdict::Allowed);
        assert_eq!(judge("MIT/Apache-2.0"), LicenseVerdict::Allowed);
        assert_eq!(judge("LGPL-2.1-only"), LicenseVerdict::Allowed);
        assert_eq!(judge("GPL-3.0"), LicenseVerdict::Denied(vec!["GPL-3.0".to_owned()]));
        assert_eq!(judge("AGPL-3.0-only"), LicenseVerdict::Denied(vec!["AGPL-3.0-only".to_owned()]));
        assert!(matches!(judge("MIT AND GPL-2.0-or-later"), LicenseVerdict::Denied(_)));
        assert!(matches!(judge("GPL-2.0+"), LicenseVerdict::Denied(_)));
        assert!(matches!(judge("SSPL-1.0"), LicenseVerdict::Denied(_)));
        assert!(matches!(judge("GPL-2.0-only WITH Classpath-exception-2.0"), LicenseVerdict::Denied(_)));
    }

    #[test]
    fn unknown_licences_are_unknown() {
        assert!(matches!(judge("Some-Company-Licence"), LicenseVerdict::Unknown(_)));
        assert!(matches!(judge("LicenseRef-proprietary"), LicenseVerdict::Unknown(_)));
        assert_eq!(judge("MIT OR LicenseRef-proprietary"), LicenseVerdict::Allowed);
        assert!(matches!(judge_license(&[], &deny()), LicenseVerdict::Unknown(_)));
    }

    #[test]
    fn deny_patterns_match_ids_exactly_or_by_prefix() {
        let deny = vec!["GPL-*".to_owned(), "MPL-2.0".to_owned()];
        assert!(denied("GPL-3.0-or-later", &deny));
        assert!(denied("gpl-2.0", &deny));
        assert!(!denied("LGPL-2.1", &deny));
        assert!(denied("MPL-2.0", &deny));
        assert!(!denied("MPL-2.0-no-copyleft-exception", &deny));
    }
}
