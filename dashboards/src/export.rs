//! The leaderboard as CSV (RFC 4180), for spreadsheets and papers' tables.
//!
//! Model names, benchmarks and protocol labels come from whoever trained or recorded them: a
//! text cell that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, a tab or carriage
//! return first) gets a leading `'`, as OWASP advises, and every cell with a comma, quote or
//! line break is quoted. Numbers are written in full precision (Rust's shortest round-trip
//! form), never localised.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::queries::LeaderboardRow;

/// One cell's value before it is written.
enum Cell<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Number(Option<f64>),
    Time(Option<DateTime<Utc>>),
    Flag(bool),
}

/// A column's header and how its cell is read off a row.
type Column = (&'static str, fn(&LeaderboardRow) -> Cell<'_>);

/// The columns, in order: what identifies the row, what was evaluated, then every metric with
/// its 95% interval. Empty where the evaluation recorded nothing.
const COLUMNS: &[Column] = &[
    ("evaluation_id", |r| Cell::Int(Some(r.evaluation_id))),
    ("model_id", |r| Cell::Int(Some(r.model_id))),
    ("model", |r| Cell::Text(Some(&r.model))),
    ("kind", |r| Cell::Text(Some(&r.kind))),
    ("size", |r| Cell::Text(r.size.as_deref())),
    ("task", |r| Cell::Text(r.task.as_deref())),
    ("params", |r| Cell::Int(r.params)),
    ("benchmark", |r| Cell::Text(Some(&r.benchmark))),
    ("protocol_id", |r| Cell::Int(r.protocol_id)),
    ("protocol", |r| Cell::Text(r.protocol.as_deref())),
    ("step", |r| Cell::Int(Some(r.step))),
    ("epoch", |r| Cell::Number(r.epoch)),
    ("tokens_seen", |r| Cell::Int(r.tokens_seen)),
    ("image_size", |r| Cell::Int(r.image_size.map(i64::from))),
    ("cfg_scale", |r| Cell::Number(r.cfg_scale)),
    ("top_k", |r| Cell::Int(r.top_k.map(i64::from))),
    ("num_samples", |r| Cell::Int(r.num_samples.map(i64::from))),
    ("finished_at", |r| Cell::Time(r.finished_at)),
    ("fid", |r| Cell::Number(r.fid)),
    ("fid_low", |r| Cell::Number(r.fid_low)),
    ("fid_high", |r| Cell::Number(r.fid_high)),
    ("sfid", |r| Cell::Number(r.sfid)),
    ("inception_score", |r| Cell::Number(r.inception_score)),
    ("precision", |r| Cell::Number(r.precision)),
    ("recall", |r| Cell::Number(r.recall)),
    ("kid", |r| Cell::Number(r.kid)),
    ("kid_std", |r| Cell::Number(r.kid_std)),
    ("kid_low", |r| Cell::Number(r.kid_low)),
    ("kid_high", |r| Cell::Number(r.kid_high)),
    ("clip_fid", |r| Cell::Number(r.clip_fid)),
    ("clip_fid_low", |r| Cell::Number(r.clip_fid_low)),
    ("clip_fid_high", |r| Cell::Number(r.clip_fid_high)),
    ("clip_score", |r| Cell::Number(r.clip_score)),
    ("clip_score_low", |r| Cell::Number(r.clip_score_low)),
    ("clip_score_high", |r| Cell::Number(r.clip_score_high)),
    ("rfid", |r| Cell::Number(r.rfid)),
    ("rfid_low", |r| Cell::Number(r.rfid_low)),
    ("rfid_high", |r| Cell::Number(r.rfid_high)),
    ("psnr", |r| Cell::Number(r.psnr)),
    ("psnr_low", |r| Cell::Number(r.psnr_low)),
    ("psnr_high", |r| Cell::Number(r.psnr_high)),
    ("ssim", |r| Cell::Number(r.ssim)),
    ("ssim_low", |r| Cell::Number(r.ssim_low)),
    ("ssim_high", |r| Cell::Number(r.ssim_high)),
    ("codebook_usage", |r| Cell::Number(r.codebook_usage)),
    ("best_of_model", |r| Cell::Flag(r.best_of_model)),
    ("leader", |r| Cell::Flag(r.leader)),
    ("tied_with_leader", |r| Cell::Flag(r.tied_with_leader)),
];

/// `rows` as CSV: a header line, then a line per row, each ended by CRLF as RFC 4180 has it.
pub fn leaderboard_csv(rows: &[LeaderboardRow]) -> String {
    let mut out = String::new();
    let header: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    for row in rows {
        for (i, (_, cell)) in COLUMNS.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_cell(&mut out, cell(row));
        }
        out.push_str("\r\n");
    }
    out
}

fn write_cell(out: &mut String, cell: Cell<'_>) {
    // Writing to a String cannot fail.
    let _ = match cell {
        Cell::Text(Some(text)) => {
            write_text(out, text);
            Ok(())
        }
        Cell::Int(Some(n)) => write!(out, "{n}"),
        Cell::Number(Some(x)) => write!(out, "{x}"),
        Cell::Time(Some(t)) => write!(out, "{}", t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        Cell::Flag(flag) => write!(out, "{flag}"),
        Cell::Text(None) | Cell::Int(None) | Cell::Number(None) | Cell::Time(None) => Ok(()),
    };
}

/// A text cell: defused if a spreadsheet would read it as a formula, quoted if it holds a
/// separator, a quote or a line break.
fn write_text(out: &mut String, text: &str) {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = text.contains(['"', ',', '\n', '\r']);
    if quoted {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quoted {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        let mut out = String::new();
        write_text(&mut out, s);
        out
    }

    #[test]
    fn separators_and_quotes_are_quoted() {
        assert_eq!(text("LlamaGen-B"), "LlamaGen-B");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(text("two\nlines"), "\"two\nlines\"");
        assert_eq!(text(""), "");
    }

    #[test]
    fn formulas_are_defused() {
        assert_eq!(text("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(text("+1"), "'+1");
        assert_eq!(text("-2+3"), "'-2+3");
        assert_eq!(text("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(text("\tx"), "'\tx");
        // Only a leading sign is a formula.
        assert_eq!(text("GPT-B=1"), "GPT-B=1");
    }

    #[test]
    fn numbers_keep_full_precision_and_missing_values_are_empty() {
        let mut out = String::new();
        write_cell(&mut out, Cell::Number(Some(0.1 + 0.2)));
        out.push(',');
        write_cell(&mut out, Cell::Number(Some(-1.5)));
        out.push(',');
        write_cell(&mut out, Cell::Number(None));
        out.push(',');
        write_cell(&mut out, Cell::Int(Some(-7)));
        assert_eq!(out, "0.30000000000000004,-1.5,,-7");
        assert_eq!("0.30000000000000004".parse::<f64>().unwrap(), 0.1 + 0.2);
    }
}
