//! `charon top`: a live view of the manager's services, one row each,
//! refreshed every interval from the control socket's `stats` answer; the
//! figures of the interval come from the difference of two answers. On a
//! terminal it runs full screen (ratatui over crossterm) until `q`; when
//! stdout is not a terminal it prints one frame, taken over one interval,
//! and exits. This module asks the manager and runs the terminal; the
//! rows are `view.rs`'s, the sort and keys `sort.rs`'s, the drawing
//! `draw.rs`'s.

mod draw;
mod sort;
mod view;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;
use serde_json::{json, Value};

use super::common::parse_seconds;
use super::stats::{control, QUICK};
use super::Failure;
use sort::{Action, Column, Input, Sort};

/// Show a live view of the services.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir of the manager [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Seconds between two refreshes (the interval of the rates).
    #[arg(short = 'd', long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    interval: Duration,
    /// The column to sort by at start.
    #[arg(long, value_enum, default_value = "key")]
    sort: Column,
}

fn snapshot(run_dir: &Option<PathBuf>) -> Result<Value, Failure> {
    control(run_dir.clone(), &json!({ "cmd": "stats" }), QUICK)
}

pub fn run(args: Args) -> Result<(), Failure> {
    let sort = Sort {
        column: args.sort,
        reversed: false,
    };
    let first = snapshot(&args.run_dir)?;
    let start = Instant::now();
    if !std::io::stdout().is_terminal() {
        std::thread::sleep(args.interval);
        let second = snapshot(&args.run_dir)?;
        let rows = view::rows(&first, &second, start.elapsed(), sort);
        print!("{}", view::plain(&rows, sort));
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let outcome = live(&mut terminal, &args, first, sort);
    ratatui::restore();
    outcome
}

/// What a key event means to `top`.
fn input(code: KeyCode, modifiers: KeyModifiers) -> Input {
    match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Input::Quit,
        KeyCode::Char(c) => Input::from_char(c),
        KeyCode::Right => Input::Next,
        KeyCode::Left => Input::Prev,
        KeyCode::Esc => Input::Quit,
        _ => Input::Other,
    }
}

/// Draws, waits for a key or the next refresh, until `q`. A manager that
/// stops answering is said on the status line, and asked again each
/// interval.
fn live(
    terminal: &mut DefaultTerminal,
    args: &Args,
    first: Value,
    mut sort: Sort,
) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::other(format!("unable to use the terminal: {e}"));
    let (mut prev, mut cur) = (first.clone(), first);
    let (mut prev_at, mut cur_at) = (Instant::now(), Instant::now());
    let mut status: Option<String> = None;
    let mut next = Instant::now() + args.interval;
    loop {
        let rows = view::rows(&prev, &cur, cur_at - prev_at, sort);
        terminal
            .draw(|f| draw::frame(f, &rows, sort, status.as_deref()))
            .map_err(io)?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(io)? {
            if let Event::Key(k) = event::read().map_err(io)? {
                if k.kind == KeyEventKind::Press {
                    let (s, action) = sort::on_key(sort, input(k.code, k.modifiers));
                    sort = s;
                    if action == Action::Quit {
                        return Ok(());
                    }
                }
            }
            continue;
        }
        next = Instant::now() + args.interval;
        match snapshot(&args.run_dir) {
            Ok(v) => {
                prev = std::mem::replace(&mut cur, v);
                prev_at = std::mem::replace(&mut cur_at, Instant::now());
                status = None;
            }
            Err(f) => status = Some(format!("{} (asking again every interval)", f.message)),
        }
    }
}
