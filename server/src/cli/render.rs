//! Prints engine outputs for a person: plain lines, plus a one-line
//! progress bar redrawn in place when stdout is a terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::engine::{Level, Output, Progress};

pub struct Printer {
    tty: bool,
    /// Suppress per-batch log lines (for `podloop status`).
    pub quiet: bool,
    /// Open progress reports: id -> (title, started).
    open: BTreeMap<u64, (String, Instant)>,
    begun: usize,
    ended: usize,
    bar_drawn: bool,
}

impl Default for Printer {
    fn default() -> Self {
        Self::new()
    }
}

impl Printer {
    pub fn new() -> Printer {
        Printer {
            tty: std::io::stdout().is_terminal(),
            quiet: false,
            open: BTreeMap::new(),
            begun: 0,
            ended: 0,
            bar_drawn: false,
        }
    }

    pub fn output(&mut self, output: &Output) {
        match output {
            Output::Log { level, text } if *level <= Level::Info && !self.quiet => self.line(text),
            Output::Log { .. } => {}
            Output::Message { level, text } => match level {
                Level::Error => self.error(text),
                _ => self.warn(text),
            },
            Output::Progress(p) => self.progress(p),
            Output::Status(_) | Output::FileProblems { .. } | Output::MappedFolders(_) => {}
        }
    }

    pub fn line(&mut self, text: &str) {
        self.clear_bar();
        println!("{text}");
        self.draw_bar();
    }

    pub fn error(&mut self, text: &str) {
        self.clear_bar();
        eprintln!("error: {text}");
        self.draw_bar();
    }

    fn warn(&mut self, text: &str) {
        self.clear_bar();
        eprintln!("warning: {text}");
        self.draw_bar();
    }

    fn progress(&mut self, p: &Progress) {
        match p {
            Progress::Begin { id, title, .. } => {
                self.begun += 1;
                self.open.insert(*id, (title.clone(), Instant::now()));
                if !self.tty && !self.quiet {
                    println!("{title}...");
                }
            }
            Progress::Report { .. } => {}
            Progress::End { id, .. } => {
                if self.open.remove(id).is_some() {
                    self.ended += 1;
                }
            }
        }
        self.clear_bar();
        self.draw_bar();
    }

    fn clear_bar(&mut self) {
        if self.bar_drawn {
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
            self.bar_drawn = false;
        }
    }

    fn draw_bar(&mut self) {
        if !self.tty || self.open.is_empty() || self.quiet {
            return;
        }
        const WIDTH: usize = 24;
        let filled = (WIDTH * self.ended).checked_div(self.begun).unwrap_or(0);
        let (title, started) = self.open.values().next().expect("non-empty");
        print!(
            "\r[{}{}] {}/{} {} ({:.1}s)",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled),
            self.ended,
            self.begun,
            title,
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        self.bar_drawn = true;
    }

    pub fn finish(&mut self) {
        self.clear_bar();
    }
}
