//! The sort of `charon top`'s table and how keys change it, as an explicit
//! state machine: `sort x input -> (sort, action)` in [`on_key`], every
//! pair tested. The columns are named here; the rows sorted and drawn are
//! `view.rs`'s and `draw.rs`'s.

/// A column of the table, in the order shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Column {
    Key,
    State,
    Busy,
    Idle,
    Max,
    #[value(name = "rps")]
    Rps,
    P50,
    P99,
    Faults,
    Exits,
    Queue,
}

/// Every column, in the order shown; the reason column follows, unsorted.
pub const COLUMNS: [Column; 11] = [
    Column::Key,
    Column::State,
    Column::Busy,
    Column::Idle,
    Column::Max,
    Column::Rps,
    Column::P50,
    Column::P99,
    Column::Faults,
    Column::Exits,
    Column::Queue,
];

impl Column {
    /// The header cell.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Column::Key => "KEY",
            Column::State => "STATE",
            Column::Busy => "BUSY",
            Column::Idle => "IDLE",
            Column::Max => "MAX",
            Column::Rps => "REQ/S",
            Column::P50 => "P50",
            Column::P99 => "P99",
            Column::Faults => "FAULTS",
            Column::Exits => "EXITS",
            Column::Queue => "QUEUE",
        }
    }

    /// The column's place in [`COLUMNS`].
    pub fn index(self) -> usize {
        COLUMNS.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// The sort: a column, and whether its natural order (names A to Z,
/// figures largest first) is reversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub column: Column,
    pub reversed: bool,
}

impl Default for Sort {
    fn default() -> Sort {
        Sort {
            column: Column::Key,
            reversed: false,
        }
    }
}

/// A key the operator pressed, as far as `top` cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// `>` or the right arrow: sort by the next column.
    Next,
    /// `<` or the left arrow: sort by the previous column.
    Prev,
    /// `r`: reverse the order.
    Reverse,
    /// `q`, Esc or Ctrl-C.
    Quit,
    /// Anything else.
    Other,
}

impl Input {
    /// The input a character stands for.
    #[must_use]
    pub fn from_char(c: char) -> Input {
        match c {
            '>' | '.' => Input::Next,
            '<' | ',' => Input::Prev,
            'r' | 'R' => Input::Reverse,
            'q' | 'Q' => Input::Quit,
            _ => Input::Other,
        }
    }
}

/// What the shell does after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Redraw,
    Quit,
    Nothing,
}

/// `sort x input -> (sort, action)`.
#[must_use]
pub fn on_key(sort: Sort, input: Input) -> (Sort, Action) {
    let step = |by: usize| COLUMNS[(sort.column.index() + by) % COLUMNS.len()];
    match input {
        Input::Next => (
            Sort {
                column: step(1),
                reversed: false,
            },
            Action::Redraw,
        ),
        Input::Prev => (
            Sort {
                column: step(COLUMNS.len() - 1),
                reversed: false,
            },
            Action::Redraw,
        ),
        Input::Reverse => (
            Sort {
                reversed: !sort.reversed,
                ..sort
            },
            Action::Redraw,
        ),
        Input::Quit => (sort, Action::Quit),
        Input::Other => (sort, Action::Nothing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_in_every_sort_state() {
        let s = Sort::default();
        for (column, reversed) in COLUMNS.iter().flat_map(|c| [(*c, false), (*c, true)]) {
            let s = Sort { column, reversed };
            let i = column.index();
            let (n, a) = on_key(s, Input::Next);
            assert_eq!(
                (n.column, n.reversed, a),
                (COLUMNS[(i + 1) % 11], false, Action::Redraw)
            );
            let (p, a) = on_key(s, Input::Prev);
            assert_eq!(
                (p.column, p.reversed, a),
                (COLUMNS[(i + 10) % 11], false, Action::Redraw)
            );
            assert_eq!(
                on_key(s, Input::Reverse),
                (
                    Sort {
                        column,
                        reversed: !reversed
                    },
                    Action::Redraw
                )
            );
            assert_eq!(on_key(s, Input::Quit), (s, Action::Quit));
            assert_eq!(on_key(s, Input::Other), (s, Action::Nothing));
        }
        assert_eq!(on_key(s, Input::from_char('<')).0.column, Column::Queue);
        assert_eq!(Input::from_char('q'), Input::Quit);
        assert_eq!(Input::from_char('x'), Input::Other);
    }
}
