//! `pact_verifier` over a committed pact, with provider states set up by
//! [`Provider::given`] and torn down by [`Provider::reset`].
//!
//! The verification runs through `verify_pact_internal`, the verifier's
//! per-pact entry point, rather than `verify_provider_async`: the latter
//! also posts anonymous usage metrics to a third-party analytics host
//! unless `PACT_DO_NOT_TRACK=true` is in the environment, and a test cannot
//! set that for itself (`std::env::set_var` is unsafe in edition 2024, and
//! the workspace forbids `unsafe`). This way no run of these tests, in CI
//! or on a laptop without the variable, sends anything off the machine.
//! It also hands back each interaction's own result, which the tests of a
//! deliberate change assert on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use order_service_contracts::provider::Provider;
use pact_models::provider_states::ProviderState;
use pact_verifier::callback_executors::ProviderStateExecutor;
use pact_verifier::{
    FilterInfo, MismatchResult, NullRequestFilterExecutor, ProviderInfo, ProviderTransport, VerificationOptions,
};
use serde_json::Value;

use crate::examples::PROVIDER;

/// Provider states through the service; each interaction's teardown
/// empties the database again.
#[derive(Debug)]
pub(crate) struct States(pub(crate) Arc<Provider>);

#[async_trait::async_trait]
impl ProviderStateExecutor for States {
    async fn call(
        self: Arc<Self>,
        _interaction_id: Option<String>,
        state: &ProviderState,
        setup: bool,
        _client: Option<&reqwest::Client>,
    ) -> anyhow::Result<HashMap<String, Value>> {
        if setup {
            self.0.given(&state.name, &state.params).await
        } else {
            self.0.reset().await?;
            Ok(HashMap::new())
        }
    }

    fn teardown(&self) -> bool {
        true
    }
}

/// The provider as the verifier reaches it: `transport` (`http` for the
/// API, `message` for the message provider) on a loopback port.
pub(crate) fn provider_info(transport: &str, port: u16) -> ProviderInfo {
    ProviderInfo {
        name: PROVIDER.to_owned(),
        host: "127.0.0.1".to_owned(),
        transports: vec![ProviderTransport {
            transport: transport.to_owned(),
            port: Some(port),
            path: None,
            scheme: Some("http".to_owned()),
        }],
        ..ProviderInfo::default()
    }
}

/// What the verifier found, interaction by interaction.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Each interaction's description and, when it failed, why.
    pub(crate) results: Vec<(String, Result<(), String>)>,
    /// The verifier's own report.
    pub(crate) report: String,
}

impl Outcome {
    /// The descriptions of the interactions that failed, sorted.
    pub(crate) fn failed(&self) -> Vec<&str> {
        let mut failed: Vec<&str> = self.results.iter().filter(|(_, r)| r.is_err()).map(|(d, _)| d.as_str()).collect();
        failed.sort_unstable();
        failed
    }

    /// Why `description` failed.
    pub(crate) fn why(&self, description: &str) -> &str {
        self.results
            .iter()
            .find(|(d, _)| d == description)
            .and_then(|(_, r)| r.as_ref().err())
            .map_or("", String::as_str)
    }

    /// Asserts that `count` interactions were verified and all passed.
    pub(crate) fn assert_all_passed(&self, count: usize) {
        assert_eq!(self.results.len(), count, "interactions verified\n{}", self.report);
        assert!(self.failed().is_empty(), "failed: {:?}\n{}", self.failed(), self.report);
    }
}

fn explain(result: &MismatchResult) -> String {
    match result {
        MismatchResult::Mismatches { mismatches, .. } => {
            mismatches.iter().map(|m| m.description()).collect::<Vec<_>>().join("; ")
        }
        MismatchResult::Error(error, _) => error.clone(),
    }
}

/// Verifies the committed pact `name` against `provider`.
pub(crate) async fn verify(name: &str, provider: ProviderInfo, states: States) -> Outcome {
    let path = crate::pact_file::committed(name);
    let pact = pact_models::pact::read_pact(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let options = VerificationOptions::<NullRequestFilterExecutor> {
        request_timeout: 10_000,
        coloured_output: false,
        ..VerificationOptions::default()
    };
    let verified = pact_verifier::verify_pact_internal(
        &provider,
        &FilterInfo::None,
        pact,
        &options,
        &Arc::new(states),
        false,
        Duration::ZERO,
    )
    .await
    .unwrap_or_else(|e| panic!("verification of {name} did not run: {e}"));
    Outcome {
        results: verified
            .results
            .iter()
            .map(|r| (r.interaction_description.clone(), r.result.as_ref().map(|_| ()).map_err(explain)))
            .collect(),
        report: verified.output.join("\n"),
    }
}
