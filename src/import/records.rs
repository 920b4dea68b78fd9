//! Splits CSV text into records before the csv parser sees it, so that a
//! quote that is never closed costs one row, not the rest of the file.
//!
//! `Records` wraps the input and hands the csv reader one whole record at a
//! time. It follows the quoting rules the csv crate follows (a `"` opens a
//! quoted field only at the start of a field; `""` inside one is a quote).
//! A quoted field still open at the end of the file, or after
//! `MAX_LINES_PER_RECORD` lines, is reported with the line where the quote
//! opened; that line is skipped and the lines after it are read again as
//! rows. Blank lines are dropped. The first line of every record handed on
//! is remembered, so row errors name the line in the file.

use std::collections::VecDeque;
use std::io::{BufRead, Read};

/// A quoted field (a note, an address) may hold line breaks, but not more
/// than this many: past it the quote is taken as never closed.
pub const MAX_LINES_PER_RECORD: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: the end of it, or the first half of `""`.
    QuoteInQuoted,
}

/// The quoting state after `line`, starting from `state`.
fn scan(mut state: State, line: &[u8], delimiter: u8) -> State {
    if state == State::FieldStart && !line.contains(&b'"') {
        return State::FieldStart;
    }
    for &b in line {
        state = match (state, b) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::FieldStart, b'"') => State::Quoted,
            (_, b'\n') => State::FieldStart,
            (_, d) if d == delimiter => State::FieldStart,
            _ => State::Unquoted,
        };
    }
    state
}

/// The fields of one whole record (its line breaks inside quotes).
fn count_fields(record: &[u8], delimiter: u8) -> usize {
    let mut state = State::FieldStart;
    let mut fields = 1;
    for &b in record {
        if b == delimiter && state != State::Quoted {
            fields += 1;
        }
        state = scan(state, std::slice::from_ref(&b), delimiter);
    }
    fields
}

/// A quote that was never closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnclosedQuote {
    /// The line where the quoted field opened.
    pub line: u64,
    /// Lines read again as rows.
    pub reread: usize,
}

/// Whole records out of a CSV stream; see the module comment.
pub struct Records<R> {
    input: R,
    delimiter: u8,
    record: Vec<u8>,
    pos: usize,
    /// The last physical line taken from the input or the replay queue.
    line: u64,
    replay: VecDeque<Vec<u8>>,
    /// First line of each record handed on and not yet claimed.
    starts: VecDeque<u64>,
    unclosed: Vec<UnclosedQuote>,
    bytes: u64,
    /// The header's field count, once known.
    header_fields: Option<usize>,
}

impl<R: BufRead> Records<R> {
    pub fn new(input: R, delimiter: u8) -> Records<R> {
        Records {
            input,
            delimiter,
            record: Vec::with_capacity(1024),
            pos: 0,
            line: 0,
            replay: VecDeque::new(),
            starts: VecDeque::new(),
            unclosed: Vec::new(),
            bytes: 0,
            header_fields: None,
        }
    }

    /// Tells the header's field count: a record over several lines with
    /// more fields than that took in the rows after an unclosed quote (a
    /// later quote closed it) and is split again.
    pub fn set_header_fields(&mut self, fields: usize) {
        self.header_fields = Some(fields);
    }

    /// The line where the next record the csv reader returns began.
    pub fn claim_line(&mut self) -> u64 {
        self.starts.pop_front().unwrap_or(self.line)
    }

    /// Quotes found unclosed so far (taken: each is reported once).
    pub fn take_unclosed(&mut self) -> Vec<UnclosedQuote> {
        std::mem::take(&mut self.unclosed)
    }

    /// Bytes read from the input so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends the next physical line to `record`; false at the end.
    fn next_line(&mut self) -> std::io::Result<bool> {
        self.line += 1;
        if let Some(line) = self.replay.pop_front() {
            self.record.extend_from_slice(&line);
            return Ok(true);
        }
        let n = self.input.read_until(b'\n', &mut self.record)?;
        self.bytes += n as u64;
        if n == 0 {
            self.line -= 1;
        }
        Ok(n > 0)
    }

    /// Fills `record` with the next record; leaves it empty at the end.
    fn next_record(&mut self) -> std::io::Result<()> {
        loop {
            self.record.clear();
            self.pos = 0;
            let first = self.line + 1;
            let mut line_starts = Vec::new();
            let mut state = State::FieldStart;
            loop {
                let start = self.record.len();
                if !self.next_line()? {
                    break;
                }
                line_starts.push(start);
                state = scan(state, &self.record[start..], self.delimiter);
                if state != State::Quoted && state != State::QuoteInQuoted
                    || line_starts.len() > MAX_LINES_PER_RECORD
                {
                    break;
                }
            }
            if line_starts.is_empty() {
                return Ok(());
            }
            // At the end of the input a field may end with its closing quote.
            let swallowed = line_starts.len() > 1
                && self
                    .header_fields
                    .is_some_and(|n| count_fields(&self.record, self.delimiter) > n);
            if state == State::Quoted || line_starts.len() > MAX_LINES_PER_RECORD || swallowed {
                let again: Vec<Vec<u8>> = match line_starts.get(1) {
                    Some(&from) => self.record[from..]
                        .split_inclusive(|&b| b == b'\n')
                        .map(<[u8]>::to_vec)
                        .collect(),
                    None => Vec::new(),
                };
                self.unclosed.push(UnclosedQuote {
                    line: first,
                    reread: again.len(),
                });
                self.line -= again.len() as u64;
                for line in again.into_iter().rev() {
                    self.replay.push_front(line);
                }
                continue;
            }
            if self.record.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.record.last() != Some(&b'\n') {
                self.record.push(b'\n');
            }
            self.starts.push_back(first);
            return Ok(());
        }
    }
}

impl<R: BufRead> Read for Records<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.record.len() {
            self.next_record()?;
        }
        let n = buf.len().min(self.record.len() - self.pos);
        buf[..n].copy_from_slice(&self.record[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> (Vec<(u64, String)>, Vec<UnclosedQuote>) {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(Records::new(text.as_bytes(), b','));
        let mut rows = Vec::new();
        let mut record = csv::StringRecord::new();
        while csv.read_record(&mut record).unwrap() {
            if rows.is_empty() {
                csv.get_mut().set_header_fields(record.len());
            }
            let line = csv.get_mut().claim_line();
            rows.push((line, record.iter().collect::<Vec<_>>().join("|")));
        }
        (rows, csv.get_mut().take_unclosed())
    }

    #[test]
    fn quoted_line_breaks_stay_in_their_record() {
        let (rows, unclosed) = split("email,note\na@x.org,\"two\nlines\"\n\nb@x.org,O\"Brien\n");
        assert!(unclosed.is_empty());
        assert_eq!(rows[0], (1, "email|note".into()));
        assert_eq!(rows[1].0, 2);
        assert_eq!(rows[1], (2, "a@x.org|two\nlines".into()));
        assert_eq!(rows[2], (5, "b@x.org|O\"Brien".into()));
    }

    #[test]
    fn an_unclosed_quote_costs_one_row() {
        let (rows, unclosed) = split("email,name\na@x.org,\"Ann\nb@x.org,Bob\r\nc@x.org,Cy");
        assert_eq!(unclosed, vec![UnclosedQuote { line: 2, reread: 2 }]);
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![1, 3, 4]);
        assert_eq!(rows[1].1, "b@x.org|Bob\r");
        assert_eq!(rows[2].1, "c@x.org|Cy");
    }

    #[test]
    fn a_later_quote_does_not_hide_the_rows_between() {
        // Every field quoted, as Mailchimp writes them; row 2 lacks one
        // closing quote, so row 3's first quote would close it.
        let (rows, unclosed) = split(
            "\"email\",\"name\"\n\"a@x.org\",\"Ann\n\"b@x.org\",\"Bob\"\n\"c@x.org\",\"Cy\"\n",
        );
        assert_eq!(unclosed, vec![UnclosedQuote { line: 2, reread: 1 }]);
        let lines: Vec<u64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![1, 3, 4]);
        assert_eq!(rows[2].1, "c@x.org|Cy");
    }
}
