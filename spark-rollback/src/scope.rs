//! What one evaluation sees: the metrics up to its instant, the stage it
//! belongs to, and the measurements triggers and gates share ("held for D",
//! requests in a window, a request-weighted error ratio).

use std::time::Duration;

use crate::plan::Plan;
use crate::signal::{Role, Signal};
use crate::snapshot::{Metrics, Window};

/// One evaluation instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) metrics: &'a Metrics,
    pub(crate) plan: &'a Plan,
    /// The stage start, milliseconds.
    pub(crate) since: i64,
    /// The instant, milliseconds.
    pub(crate) at: i64,
}

/// Whether a condition held at every sample of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Held {
    /// No sample in the window.
    Missing,
    /// Fewer samples than the window needs: a gap or a short history.
    Short { have: usize, need: usize },
    /// Some sample broke the condition; the latest value.
    No { last: f64 },
    /// Every sample met it; the latest value.
    Yes { last: f64 },
}

impl Held {
    pub(crate) fn yes(self) -> bool {
        matches!(self, Held::Yes { .. })
    }

    pub(crate) fn last(self) -> Option<f64> {
        match self {
            Held::No { last } | Held::Yes { last } => Some(last),
            Held::Missing | Held::Short { .. } => None,
        }
    }
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<'a> Scope<'a> {
    /// The samples in `(at − d, at]`.
    pub(crate) fn window(&self, signal: Signal, role: Role, d: i64) -> Window<'a> {
        self.metrics.series(signal, role).window(self.at.saturating_sub(d), self.at)
    }

    /// The samples in `(from, at]`.
    pub(crate) fn since(&self, signal: Signal, role: Role, from: i64) -> Window<'a> {
        self.metrics.series(signal, role).window(from, self.at)
    }

    /// How many samples a window of `d` must hold to count as covered: one
    /// per step, at least one.
    pub(crate) fn need(&self, d: i64) -> usize {
        usize::try_from(d / self.metrics.step_ms()).unwrap_or(0).max(1)
    }

    /// Whether `test` held at every sample of `(at − d, at]`, with no gap.
    pub(crate) fn held(&self, signal: Signal, role: Role, d: i64, test: impl Fn(f64) -> bool) -> Held {
        let w = self.window(signal, role, d);
        let Some((_, last)) = w.last() else { return Held::Missing };
        let need = self.need(d);
        if w.len() < need {
            return Held::Short { have: w.len(), need };
        }
        if w.v.iter().all(|&v| test(v)) { Held::Yes { last } } else { Held::No { last } }
    }

    /// Requests served in `(from, at]`: Σ rate × step.
    pub(crate) fn requests_since(&self, role: Role, from: i64) -> f64 {
        self.metrics.series(Signal::HttpRequestsPerSecond, role).sum(from, self.at) * step_seconds(self.metrics)
    }

    /// Requests served in `(at − d, at]`.
    pub(crate) fn requests(&self, role: Role, d: i64) -> f64 {
        self.requests_since(role, self.at.saturating_sub(d))
    }

    /// The 5xx share of the requests in `(at − d, at]`, each sample weighted
    /// by its request rate, and those requests; `None` without a sample of
    /// both signals at one time.
    pub(crate) fn error_ratio(&self, role: Role, d: i64) -> Option<(f64, f64)> {
        let errors = self.window(Signal::Http5xxRatio, role, d);
        let rate = self.window(Signal::HttpRequestsPerSecond, role, d);
        let (mut failed, mut total, mut any) = (0.0, 0.0, false);
        join(errors, rate, |ratio, rps| {
            if ratio.is_finite() && rps.is_finite() {
                failed += ratio * rps;
                total += rps;
                any = true;
            }
        });
        if !any {
            return None;
        }
        let ratio = if total > 0.0 { failed / total } else { 0.0 };
        Some((ratio, total * step_seconds(self.metrics)))
    }
}

#[allow(clippy::cast_precision_loss, reason = "a step in seconds is small")]
fn step_seconds(metrics: &Metrics) -> f64 {
    metrics.step_ms() as f64 / 1000.0
}

/// Calls `f(a, b)` for every time both windows have a sample at.
pub(crate) fn join(a: Window<'_>, b: Window<'_>, mut f: impl FnMut(f64, f64)) {
    let (mut i, mut j) = (0, 0);
    while i < a.t.len() && j < b.t.len() {
        match a.t[i].cmp(&b.t[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                f(a.v[i], b.v[j]);
                i += 1;
                j += 1;
            }
        }
    }
}
