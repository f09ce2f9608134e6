//! Progress for long operations: a spinner on a terminal, plain lines otherwise (CI logs).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Plain mode: when the last line was printed (lines are rate-limited).
    last_line: Mutex<Option<Instant>>,
}

/// Plain-mode progress lines for transfers come at most this often.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    pub fn spinner(message: &str) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message(message.to_string());
            Progress::with_bar(Some(bar))
        } else {
            eprintln!("{message}");
            Progress::with_bar(None)
        }
    }

    fn with_bar(bar: Option<ProgressBar>) -> Self {
        Progress {
            bar,
            last_line: Mutex::new(None),
        }
    }

    /// A transfer of unknown size: bytes, objects and rate.
    pub fn transfer(message: &str) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} {bytes} ({binary_bytes_per_sec}) {msg} [{elapsed}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_prefix(message.to_string());
            Progress::with_bar(Some(bar))
        } else {
            eprintln!("{message}");
            Progress::with_bar(None)
        }
    }

    pub fn transfer_update(&self, bytes: u64, objects: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(bytes);
                bar.set_message(format!("{objects} records"));
            }
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| t.elapsed() >= PLAIN_LINE_EVERY) {
                    *last = Some(Instant::now());
                    eprintln!("  {bytes} bytes, {objects} records");
                }
            }
        }
    }

    pub fn step(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => eprintln!("{message}"),
        }
    }

    pub fn finish(self, message: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => eprintln!("{message}"),
        }
    }
}
