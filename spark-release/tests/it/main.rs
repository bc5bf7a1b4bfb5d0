//! spark-release against real components: the scan on SQLite, the rollback
//! engine's own records, the evidence crate's verify.

mod go_nogo;
mod incident;
mod notes;
mod ritual;

use std::sync::Arc;

use spark_checks::{Check, Config, Context, Outcome, Report, Status};

/// A check that reports what it is told to.
pub(crate) struct Fixed {
    pub(crate) id: &'static str,
    pub(crate) status: Status,
}

#[async_trait::async_trait]
impl Check for Fixed {
    fn id(&self) -> &'static str {
        self.id
    }

    async fn run(&self, _ctx: &Context) -> Outcome {
        match self.status {
            Status::Skip => Outcome::skip(self.id, "no server configured"),
            Status::Pass => Outcome::new(self.id).finish("measured and fine"),
            other => {
                let mut o = Outcome::new(self.id);
                o.found(other, format!("{} measured {}", self.id, other.as_str()));
                o.finish("")
            }
        }
    }
}

/// A real scan report over checks that answer `statuses` (id → status);
/// every other check of GO/NO-GO passes.
pub(crate) async fn report(statuses: &[(&'static str, Status)]) -> Report {
    let ids = ["clock", "migrations", "decimal", "backup", "slo-alerts", "supply-chain", "flags"];
    let checks: Vec<Arc<dyn Check>> = ids
        .iter()
        .map(|&id| {
            let status = statuses.iter().find(|(i, _)| *i == id).map_or(Status::Pass, |(_, s)| *s);
            Arc::new(Fixed { id, status }) as Arc<dyn Check>
        })
        .collect();
    spark_checks::scan(&Arc::new(Context::new(Config::default())), checks).await
}

/// The default roles, each signed by someone.
pub(crate) fn all_signers() -> Vec<spark_release::SignOff> {
    ["DevOps lead=Deniz", "CTO=Ayşe", "product owner=Can"].iter().map(|s| s.parse().unwrap()).collect()
}

pub(crate) fn roles() -> Vec<String> {
    spark_release::DEFAULT_ROLES.iter().map(|&r| r.to_owned()).collect()
}
