//! How answers are shown: a table by default (comfy-table), the raw JSON
//! with `--json`, errors on stderr with exit code 1.

use super::http::{Answer, Failure};
use comfy_table::{presets, ContentArrangement, Table, TableComponent};
use serde::Serialize;
use serde_json::Value;
use std::process::ExitCode;

/// A table with the CLI's look (columns aligned, one line under the
/// header, no borders: easy to read and to grep) and these column names.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_style(TableComponent::HeaderLines, '─')
        .set_style(TableComponent::MiddleHeaderIntersections, '─')
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    t
}

/// Prints a table without trailing blanks.
pub fn show(t: &Table) {
    println!("{}", t.trim_fmt());
}

/// A two-column (field, value) table for one record.
pub fn fields(rows: &[(&str, String)]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v.clone()]);
    }
    t
}

/// The JSON name of an enum value (`timed_out`, `dead`...).
pub fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// An optional value, or `-`.
pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_else(|| "-".into())
}

/// A JSON value compactly, cut to `max` characters.
pub fn short(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    cut(&s, max)
}

/// Text cut to `max` characters with an ellipsis.
pub fn cut(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Prints an answer: the raw JSON with `json`, else what `show` prints.
/// A failure goes to stderr with exit code 1.
pub fn print<T>(res: Result<Answer<T>, Failure>, json: bool, show: impl FnOnce(&T)) -> ExitCode {
    match res {
        Ok(a) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&a.raw).unwrap_or_default()
                );
            } else {
                show(&a.view);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Reports a failure on stderr; exit code 1.
pub fn fail(e: &Failure) -> ExitCode {
    eprintln!("runbridge: {e}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cut_keeps_one_line_within_the_width() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("a\nb", 10), "a b");
        assert_eq!(cut("abcdefghijkl", 5), "abcd…");
        assert_eq!(cut("ééééé", 3), "éé…");
        assert_eq!(short(&json!({"a": 1}), 20), r#"{"a":1}"#);
        assert_eq!(short(&json!("text"), 20), "text");
    }

    #[test]
    fn names_and_options() {
        assert_eq!(name(&runbridge::run::RunStatus::TimedOut), "timed_out");
        assert_eq!(opt::<String>(&None), "-");
        assert_eq!(opt(&Some(3)), "3");
    }

    #[test]
    fn tables_have_no_trailing_blanks() {
        let mut t = table(&["A", "LONG HEADER"]);
        t.add_row(vec!["x", "y"]);
        let text = t.trim_fmt();
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
        assert!(text.contains('─'), "{text}");
    }
}
