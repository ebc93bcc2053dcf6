//! One frame of `charon top` on a terminal (ratatui): the title line, the
//! table with the sorted column marked and states in colour, and a status
//! line for the manager's errors. What the cells say is `view.rs`'s.

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::sort::{Column, Sort, COLUMNS};
use super::view::{self, Row, State};

/// The keys, on the last line.
const KEYS: &str = "keys: < > (or arrows) sort by the previous/next column, r reverse, q quit";

/// The colour of a cell, by what it says.
fn style(row: &Row, column: Option<Column>) -> Style {
    let s = Style::new();
    match column {
        Some(Column::State) => match row.state {
            State::Running => s.fg(Color::Green),
            State::Idle => s.fg(Color::DarkGray),
            State::Backoff(_) => s.fg(Color::Red).add_modifier(Modifier::BOLD),
            State::Other(_) => s.fg(Color::Magenta),
        },
        Some(Column::Faults) if row.faults.is_some_and(|f| f > 0) => s.fg(Color::Yellow),
        Some(Column::Exits) if !row.exits.is_empty() => s.fg(Color::Red),
        Some(Column::Queue) if row.queue > 0 => s.fg(Color::Yellow),
        None if row.reason.is_some() => s.fg(Color::Red),
        _ => s,
    }
}

/// Each column as wide as its widest cell or header; the last takes the
/// rest of the line.
fn widths(header: &[String], cells: &[Vec<String>]) -> Vec<Constraint> {
    let mut widths: Vec<Constraint> = (0..COLUMNS.len())
        .map(|i| {
            let w = cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0);
            Constraint::Length(u16::try_from(w).unwrap_or(u16::MAX))
        })
        .collect();
    widths.push(Constraint::Fill(1));
    widths
}

/// The header in bold, the sorted column marked.
fn header_row(header: Vec<String>, sort: Sort) -> TableRow<'static> {
    let sorted = COLUMNS.iter().position(|c| *c == sort.column);
    TableRow::new(header.into_iter().enumerate().map(|(i, h)| {
        let s = Style::new().add_modifier(Modifier::BOLD);
        Cell::from(h).style(if Some(i) == sorted {
            s.fg(Color::Cyan).add_modifier(Modifier::UNDERLINED)
        } else {
            s
        })
    }))
}

/// Draws `rows` sorted by `sort`; `status`, if any, on the last line.
pub fn frame(f: &mut Frame, rows: &[Row], sort: Sort, status: Option<&str>) {
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(view::title(rows, sort))
            .style(Style::new().add_modifier(Modifier::REVERSED)),
        top,
    );
    let header = view::header(sort);
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let widths = widths(&header, &cells);
    let head = header_row(header, sort);
    let lines = rows.iter().zip(cells).map(|(row, cells)| {
        TableRow::new(
            cells
                .into_iter()
                .enumerate()
                .map(|(i, c)| Cell::from(c).style(style(row, COLUMNS.get(i).copied()))),
        )
    });
    f.render_widget(
        Table::new(lines, widths).header(head).column_spacing(2),
        body,
    );
    let line = match status {
        Some(s) => Paragraph::new(s).style(Style::new().fg(Color::Red)),
        None => Paragraph::new(KEYS).style(Style::new().fg(Color::DarkGray)),
    };
    f.render_widget(line, bottom);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn a_frame_shows_the_title_the_rows_and_colours_a_backoff() {
        let cur = json!({"services": [
            {"key": "a.a.0.raw", "state": "running", "instances": {"busy": 1, "idle": 0, "max": 4}},
            {"key": "b.b.0.raw", "state": "backoff", "backoff_remaining_s": 9.0,
             "last_exit": {"pid": 3, "description": "exit 1 (failed)", "stderr": ""}},
        ]});
        let sort = Sort::default();
        let rows = view::rows(&cur, &cur, Duration::ZERO, sort);
        let mut t = Terminal::new(TestBackend::new(120, 6)).unwrap();
        t.draw(|f| frame(f, &rows, sort, Some("charond: gone")))
            .unwrap();
        let buf = t.backend().buffer().clone();
        let line =
            |y: u16| -> String { (0..120).map(|x| buf[(x, y)].symbol().to_string()).collect() };
        assert!(
            line(0).starts_with("charon top: 2 service(s)"),
            "{}",
            line(0)
        );
        assert!(line(1).starts_with("KEY^"), "{}", line(1));
        assert!(
            line(2).starts_with("a.a.0.raw") && line(2).contains("running"),
            "{}",
            line(2)
        );
        assert!(
            line(3).contains("backoff 9s") && line(3).contains("pid 3 exit 1 (failed)"),
            "{}",
            line(3)
        );
        assert!(line(5).starts_with("charond: gone"), "{}", line(5));
        let at = |y: u16, text: &str| {
            let x = line(y).find(text).unwrap();
            buf[(u16::try_from(x).unwrap(), y)].fg
        };
        assert_eq!(at(2, "running"), Color::Green);
        assert_eq!(at(3, "backoff"), Color::Red);
    }
}
