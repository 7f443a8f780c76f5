//! Progress on stderr while a benchmark runs: a bar per load phase and per set of
//! failover trials on a terminal, and a summary line per finished phase either way (so
//! CI logs show what ran).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::load_spec::LoadSpec;

/// Where progress goes.
#[derive(Clone, Debug)]
pub struct Progress {
    bars: MultiProgress,
    /// Stderr is not a terminal: no bars, summary lines only.
    plain: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Bars on stderr when it is a terminal, summary lines only otherwise.
    #[must_use]
    pub fn new() -> Self {
        let plain = !std::io::stderr().is_terminal();
        let target =
            if plain { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Self { bars: MultiProgress::with_draw_target(target), plain }
    }

    /// A spinner for a step of unknown length.
    #[must_use]
    pub fn step(&self, message: String) -> ProgressBar {
        self.println(format!("{message} …"));
        let bar = self.bars.add(ProgressBar::new_spinner());
        bar.set_style(style("{spinner} {msg} {elapsed}"));
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }

    /// A bar over a load phase's warm-up and window, positioned in milliseconds.
    #[must_use]
    pub fn load_bar(&self, system: &str, spec: &LoadSpec) -> ProgressBar {
        let total = spec.warmup + spec.duration;
        let bar =
            self.bars.add(ProgressBar::new(u64::try_from(total.as_millis()).unwrap_or(u64::MAX)));
        bar.set_style(style("{prefix:>24} [{bar:30}] {elapsed:>4} {msg}"));
        bar.set_prefix(format!("{system} {} clients", spec.clients));
        bar
    }

    /// A bar over failover trials.
    #[must_use]
    pub fn trial_bar(&self, system: &str, trials: usize) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(trials as u64));
        bar.set_style(style("{prefix:>24} [{bar:30}] {pos}/{len} {msg}"));
        bar.set_prefix(format!("{system} failover"));
        bar
    }

    /// A bar over `len` items of some step (changes published, streams opened,
    /// endpoints loaded).
    #[must_use]
    pub fn count_bar(&self, prefix: String, len: u64) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(len));
        bar.set_style(style("{prefix:>32} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}"));
        bar.set_prefix(prefix);
        bar
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.plain {
            eprintln!("{}", line.as_ref());
        } else {
            let _ = self.bars.println(line);
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
