//! Replaying every trigger over a day: a 24-hour snapshot at a 15 s step
//! (5,760 points × 16 signals × 2 roles), evaluated every 30 s (2,880
//! evaluations) in one stage that never reaches its minimum, so nothing
//! ends the replay early. Target: under 50 ms.

use criterion::{Criterion, criterion_group, criterion_main};
use spark_rollback::{Engine, Metrics, Plan, Role, Signal, Snapshot};

const START: i64 = 1_700_000_000;
const POINTS: i64 = 24 * 60 * 4;

/// A healthy day with deterministic noise on every signal.
fn day() -> Snapshot {
    let mut snapshot = Snapshot::new(15);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        #[allow(clippy::cast_precision_loss, reason = "noise")]
        let unit = (state % 10_000) as f64 / 10_000.0;
        unit - 0.5
    };
    for i in 0..POINTS {
        let t = START + i * 15;
        for role in Role::ALL {
            for signal in Signal::ALL {
                let base = match signal {
                    Signal::HttpRequestsPerSecond => 200.0,
                    Signal::Http5xxRatio => 0.0005,
                    Signal::ApiLatencyP95Seconds => 0.09,
                    Signal::WsStalenessSeconds => 2.0,
                    Signal::FeedStalenessSeconds => 1.0,
                    Signal::RiskBlocksPerMinute => 0.1,
                    Signal::IdempotencyConflictRatio => 0.001,
                    Signal::IdempotencyExpiredRatio => 0.02,
                    Signal::CspViolationsPerMinute => 0.5,
                    Signal::PgbouncerSaturationRatio => 0.3,
                    Signal::ProcessCpuRatio => 0.4,
                    Signal::ProcessResidentMemoryBytes => 300e6,
                    Signal::DbConnections => 20.0,
                    Signal::OutboxLagP99Seconds => 0.2,
                    Signal::WsDisconnectsPerMinute => 1.0,
                    _ => 0.0,
                };
                let value =
                    if signal == Signal::DecimalPrecisionErrorsTotal { 0.0 } else { base * (1.0 + 0.1 * noise()) };
                snapshot.push(signal, role, t, value);
            }
        }
    }
    snapshot
}

fn replay_a_day(c: &mut Criterion) {
    let metrics = Metrics::from_snapshot(&day()).expect("a valid snapshot");
    let plan = Plan::from_toml("[[stages]]\nweight = \"100%\"\nduration = \"25h\"\n").expect("a valid plan");
    let engine = Engine::new(plan).expect("a valid plan");
    let stage = engine.plan().stage("100%").expect("the stage").clone();
    let since = START * 1000;
    let replay = engine.replay(&metrics, &stage, since, None).expect("a replay");
    assert_eq!(replay.trail.len(), 2879, "every 30 s of the day is evaluated");
    assert_eq!(replay.decision().kind(), "continue", "{}", replay.last.reason);
    c.bench_function("replay_24h_15s_all_triggers", |b| {
        b.iter(|| engine.replay(&metrics, &stage, since, None).expect("a replay"));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = replay_a_day
}
criterion_main!(benches);
