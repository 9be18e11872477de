//! The metadata filter's `where` rule: any text parsed as a SQL rule and, when it parses,
//! evaluated over a batch of every column type LAION's metadata has, nulls and NaN included.
//! Errors are fine; a panic is a finding.
#![no_main]

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use libfuzzer_sys::fuzz_target;
use llamagen_ingest::sql_rule::SqlRule;

fn batch() -> &'static RecordBatch {
    static BATCH: OnceLock<RecordBatch> = OnceLock::new();
    BATCH.get_or_init(|| {
        RecordBatch::try_from_iter([
            ("URL", Arc::new(StringArray::from(vec![Some("http://a/x.jpg"), None, Some(""), Some("ünï")])) as ArrayRef),
            ("WIDTH", Arc::new(Int64Array::from(vec![Some(0), Some(i64::MAX), None, Some(i64::MIN)]))),
            ("score", Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(f64::INFINITY), None, Some(-0.0)]))),
            ("flag", Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true)]))),
        ])
        .expect("batch")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = SqlRule::parse(text) {
        let _ = rule.evaluate(batch());
    }
});
