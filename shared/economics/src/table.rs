//! A small CSV reader that remembers line numbers, so errors can name file, line and column.
//!
//! Handles a header row, `\n` or `\r\n` line ends, blank lines and double-quoted fields with `""`
//! escapes. Quoted fields spanning lines are rejected (none of the market files have them).

use crate::EconError;

/// One parsed CSV file.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) path: String,
    pub(crate) header: Vec<String>,
    pub(crate) rows: Vec<Row>,
}

/// One data row with its 1-based line number.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) line: usize,
    pub(crate) fields: Vec<String>,
}

impl Table {
    /// Parses `text`; `path` is used in error messages only.
    pub(crate) fn parse(path: &str, text: &str) -> Result<Self, EconError> {
        let mut header: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let raw = if line == 1 {
                raw.trim_start_matches('\u{feff}')
            } else {
                raw
            };
            if raw.trim().is_empty() {
                continue;
            }
            let fields = split(raw).map_err(|message| EconError::Cell {
                path: path.to_owned(),
                line,
                column: "-".to_owned(),
                message,
            })?;
            if header.is_none() {
                header = Some(fields.into_iter().map(|f| f.trim().to_owned()).collect());
            } else {
                rows.push(Row { line, fields });
            }
        }
        let header = header.ok_or_else(|| EconError::File {
            path: path.to_owned(),
            message: "empty file: no header row".to_owned(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            header,
            rows,
        })
    }

    /// Index of the column called `name` (exact, then case-insensitive).
    pub(crate) fn column(&self, name: &str) -> Result<usize, EconError> {
        self.header
            .iter()
            .position(|h| h == name)
            .or_else(|| {
                self.header
                    .iter()
                    .position(|h| h.eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| EconError::File {
                path: self.path.clone(),
                message: format!(
                    "no column `{name}`; the columns are: {}",
                    self.header.join(", ")
                ),
            })
    }

    /// Index of the first of `names` that is present.
    pub(crate) fn first_column(&self, names: &[&str]) -> Result<usize, EconError> {
        for n in names {
            if let Ok(i) = self.column(n) {
                return Ok(i);
            }
        }
        Err(EconError::File {
            path: self.path.clone(),
            message: format!(
                "no timestamp column (looked for {}); the columns are: {}",
                names.join(", "),
                self.header.join(", ")
            ),
        })
    }

    /// The trimmed cell of `row` in column `col`.
    pub(crate) fn cell<'r>(&self, row: &'r Row, col: usize) -> Result<&'r str, EconError> {
        row.fields
            .get(col)
            .map(|s| s.trim())
            .ok_or_else(|| self.error(row, col, "row has too few fields"))
    }

    /// An error about one cell.
    pub(crate) fn error(&self, row: &Row, col: usize, message: impl Into<String>) -> EconError {
        EconError::Cell {
            path: self.path.clone(),
            line: row.line,
            column: self
                .header
                .get(col)
                .cloned()
                .unwrap_or_else(|| format!("#{}", col + 1)),
            message: message.into(),
        }
    }
}

fn split(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' && at_start {
            quoted = true;
            at_start = false;
        } else if c == ',' {
            fields.push(std::mem::take(&mut cur));
            at_start = true;
        } else {
            cur.push(c);
            at_start = false;
        }
    }
    if quoted {
        return Err("unterminated quoted field".to_owned());
    }
    fields.push(cur);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn quoted_fields_keep_their_commas_and_errors_name_the_line() {
        let t = Table::parse("f.csv", "a,b\r\n1,\"x, \"\"y\"\"\"\n\n3\n").unwrap();
        assert_eq!(t.rows[0].fields, vec!["1", "x, \"y\""]);
        assert_eq!(t.rows[1].line, 4);
        let err = t.cell(&t.rows[1], 1).unwrap_err().to_string();
        assert_eq!(err, "f.csv, line 4, column b: row has too few fields");
    }
}
