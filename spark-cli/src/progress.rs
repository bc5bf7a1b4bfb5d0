//! Progress bars on stderr, drawn only on a terminal (indicatif hides them
//! otherwise), and never with `--json`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use spark_release::{Step, StepOutcome, StepStatus};

/// A bar of `total` units of `unit` (`requests`, `steps`).
pub(crate) fn bar(total: u64, unit: &str, json: bool) -> ProgressBar {
    let target = if json { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let template = format!("[{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The ritual's steps on a bar: the running steps as the message, one
/// printed line per finished step.
pub(crate) struct StepBar {
    bar: ProgressBar,
    running: std::sync::Mutex<Vec<Step>>,
}

impl StepBar {
    pub(crate) fn new(total: usize, json: bool) -> StepBar {
        StepBar { bar: bar(total as u64, "steps", json), running: std::sync::Mutex::default() }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn show_running(&self, running: &[Step]) {
        let names: Vec<&str> = running.iter().map(|s| s.name()).collect();
        self.bar.set_message(names.join(", "));
    }
}

impl spark_release::Progress for StepBar {
    fn started(&self, step: Step) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.push(step);
        self.show_running(&running);
    }

    fn finished(&self, outcome: &StepOutcome) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.retain(|s| *s != outcome.step);
        self.show_running(&running);
        let mark = match outcome.status {
            StepStatus::Done => "done",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "FAILED",
        };
        // Printed above the bar on a terminal; nothing when it is hidden.
        self.bar.println(format!("{:<17} {mark:<8} {} ms", outcome.step.name(), outcome.millis));
        self.bar.inc(1);
    }
}
