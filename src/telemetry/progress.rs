//! A one-line progress display on stderr, redrawn in place a few times a second, only when
//! stderr is a terminal (in a container, CI or a pipe nothing is drawn: logs and metrics are
//! the progress there). No dependency: a bar of `#` and `-` and a carriage return.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the line is redrawn: fast enough to look alive, slow enough to cost nothing.
const REDRAW: Duration = Duration::from_millis(250);

/// A running progress line; [`ProgressLine::finish`] draws it a last time and ends the line.
pub struct ProgressLine {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ProgressLine {
    /// Starts redrawing `render()` on stderr, or returns `None` when stderr is not a terminal.
    pub fn start(render: impl Fn() -> String + Send + 'static) -> Option<ProgressLine> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let (tx, mut rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REDRAW);
            loop {
                tokio::select! {
                    _ = tick.tick() => draw(&render(), false),
                    _ = &mut rx => break,
                }
            }
            draw(&render(), true);
        });
        Some(ProgressLine {
            stop: Some(tx),
            task,
        })
    }

    /// Draws the final state and moves to the next line.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn draw(line: &str, last: bool) {
    let mut err = std::io::stderr().lock();
    // \r + "erase line", so a shorter line leaves no remains of a longer one.
    let _ = write!(err, "\r\x1b[2K{line}");
    if last {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

/// `[#####-----]  50%` for `done` of `total` (`total` 0 reads as complete).
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done.min(total) as f64) / (total as f64)
    };
    let filled = ((frac * width as f64).round() as usize).min(width);
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(width - filled),
        (frac * 100.0).floor() as u64
    )
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_numbers() {
        assert_eq!(bar(0, 10, 10), "[----------]   0%");
        assert_eq!(bar(5, 10, 10), "[#####-----]  50%");
        assert_eq!(bar(10, 10, 10), "[##########] 100%");
        assert_eq!(bar(12, 10, 4), "[####] 100%");
        assert_eq!(bar(0, 0, 4), "[####] 100%");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
