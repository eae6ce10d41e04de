//! Progress bars with rate and ETA, drawn only when stderr is a terminal
//! (indicatif hides them otherwise, so pipes and CI logs stay quiet).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    enabled: bool,
}

impl Progress {
    /// Bars on stderr unless `quiet` (JSON output asks for quiet too, so a
    /// script's terminal shows only the document).
    pub fn new(quiet: bool) -> Self {
        let enabled = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            enabled,
        }
    }

    /// A byte-counting bar labelled `label`.
    pub fn bytes_bar(&self, label: &str, total_bytes: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total_bytes));
        if self.enabled {
            let style = ProgressStyle::with_template(
                "{prefix:>20} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label.chars().take(20).collect::<String>());
        }
        bar
    }
}
