//! Progress of `comfy-remote run` on stderr: a bar on a terminal, plain
//! lines otherwise (a log, CI). Lines come at most twice a second, but the
//! latest state is never lost: what arrives within the interval is printed
//! when it ends (so a node that runs long is shown), and a phase change is
//! printed at once.

use std::time::{Duration, Instant};

/// Lines at most this often, except at a phase change.
const LINE_INTERVAL: Duration = Duration::from_millis(500);

pub enum Reporter {
    Bar(indicatif::ProgressBar),
    Lines {
        /// The text last printed.
        printed: String,
        at: Instant,
        /// What arrived since, to print once the interval has passed.
        pending: Option<(f64, String)>,
    },
}

impl Reporter {
    pub fn new() -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(1000),
                indicatif::ProgressDrawTarget::stderr(),
            );
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Reporter::Bar(bar)
        } else {
            Reporter::Lines {
                printed: String::new(),
                at: Instant::now() - LINE_INTERVAL,
                pending: None,
            }
        }
    }

    /// Show `text` at `fraction`; `now` prints it without waiting (a new phase).
    pub fn update(&mut self, fraction: f64, text: &str, now: bool) {
        match self {
            Reporter::Bar(bar) => {
                bar.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
                bar.set_message(text.to_owned());
            }
            Reporter::Lines {
                printed,
                at,
                pending,
            } => {
                if text == printed {
                    *pending = None;
                } else if now || at.elapsed() >= LINE_INTERVAL {
                    print_line(fraction, text);
                    *printed = text.to_owned();
                    *at = Instant::now();
                    *pending = None;
                } else {
                    *pending = Some((fraction, text.to_owned()));
                }
            }
        }
    }

    /// Print what waited for the interval to pass, if it has.
    pub fn tick(&mut self) {
        let due = match self {
            Reporter::Lines { at, pending, .. } if at.elapsed() >= LINE_INTERVAL => pending.take(),
            _ => None,
        };
        if let Some((fraction, text)) = due {
            self.update(fraction, &text, true);
        }
    }

    /// The end: a bar disappears; the last waiting line is printed.
    pub fn finish(&mut self) {
        let last = match self {
            Reporter::Bar(bar) => {
                bar.finish_and_clear();
                None
            }
            Reporter::Lines { pending, .. } => pending.take(),
        };
        if let Some((fraction, text)) = last {
            self.update(fraction, &text, true);
        }
    }
}

fn print_line(fraction: f64, text: &str) {
    use std::io::Write as _;
    // A closed stderr must not panic the command.
    let _ = writeln!(std::io::stderr(), "[{:>3.0}%] {text}", fraction * 100.0);
}
