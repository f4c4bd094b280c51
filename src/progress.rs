//! Progress display for long jobs (`gen`, `verify`): a bar on a terminal, nothing otherwise.
//! Shared by all worker threads of a job; updates are a relaxed atomic add.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar counting to `total` `unit`s, drawn on stderr only when `enabled`.
    pub fn new(enabled: bool, total: u64, unit: &str) -> Progress {
        if !enabled {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
        let template = format!(
            "{{elapsed_precise}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} ({{rate}}, eta {{eta}})"
        );
        bar.set_style(
            ProgressStyle::with_template(&template)
                .expect("static template")
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.1} M/s", state.per_sec() / 1e6);
                    },
                )
                .progress_chars("=> "),
        );
        Progress { bar: Some(bar) }
    }

    #[inline]
    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
