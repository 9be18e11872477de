//! One webdataset shard through the caption server: up to `concurrency` requests in flight,
//! each answer journaled as it arrives, the shard's parquet written once every sample has an
//! outcome.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt as _;

use crate::CaptionError;
use crate::client::{ChatClient, Prompt, RequestError};
use crate::output::{self, CaptionRecord, CaptionStatus, Journal};
use crate::sentence::{FirstSentence, first_sentence};

/// What one call of [`caption_shard`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardSummary {
    pub name: String,
    pub samples: usize,
    /// Answers received in this call (the rest came from the journal of an earlier one).
    pub requested: usize,
    pub resumed: usize,
    pub captioned: usize,
    pub failed: usize,
    pub no_image: usize,
    /// Samples the post-download filter dropped (not sent).
    pub filtered: usize,
    /// Captions whose reply was cut off before its first sentence ended.
    pub without_short: usize,
    pub completion_tokens: i64,
    pub seconds: f64,
}

/// Settings of one shard's run.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Stop the shard after this many requests in a row gave up (the server is down): waiting
    /// out every remaining sample's retries would only delay the error.
    pub give_up_after: usize,
    /// Caption only these keys (the filter's kept samples); the others are recorded as
    /// `filtered` without a request. None: every sample.
    pub only: Option<std::collections::HashSet<String>>,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            concurrency: 16,
            give_up_after: 32,
            only: None,
        }
    }
}

/// The short caption of a reply: its first sentence, or the whole reply when it is one phrase
/// the model finished; nothing when a cut-off reply never ended a sentence.
pub fn short_caption(text: &str, finish_reason: Option<&str>) -> Option<String> {
    match first_sentence(text) {
        FirstSentence::Complete(s) => Some(s.to_owned()),
        FirstSentence::Unterminated(s) if finish_reason != Some("length") => Some(s.to_owned()),
        FirstSentence::Unterminated(_) | FirstSentence::Empty => None,
    }
}

/// Captions the shard at `tar` into `out_dir`. Returns `None` when its captions file already
/// exists (finished earlier).
pub async fn caption_shard(
    client: &ChatClient,
    prompt: &Prompt,
    tar: &Path,
    out_dir: &Path,
    options: &ShardOptions,
) -> Result<Option<ShardSummary>, CaptionError> {
    let name = llamagen_shards::shard_name_of(tar)
        .map_err(|e| CaptionError::Input(e.to_string()))?
        .to_owned();
    let final_path = output::captions_path(out_dir, &name);
    if final_path.exists() {
        return Ok(None);
    }
    // Only this attempt writes the shard's captions and journal now: a temporary of either is
    // a killed attempt's. A journal's temporary is a rewrite that never reached its rename, so
    // the journal itself still holds every answer and is resumed, not removed.
    let journal_path = output::journal_path(out_dir, &name);
    llamagen_shards::atomic::remove_leftovers_for(&[&final_path, &journal_path])?;
    let started = Instant::now();
    let tar_path = tar.to_owned();
    let samples =
        tokio::task::spawn_blocking(move || llamagen_shards::webdataset::read_samples(&tar_path))
            .await
            .map_err(|e| CaptionError::Input(e.to_string()))?
            .map_err(|e| CaptionError::Input(e.to_string()))?;
    let (mut journal, earlier) = Journal::open(&journal_path)?;
    let mut summary = ShardSummary {
        name: name.clone(),
        samples: samples.len(),
        resumed: earlier.len(),
        ..ShardSummary::default()
    };
    let mut done: HashMap<String, CaptionRecord> =
        earlier.into_iter().map(|r| (r.key.clone(), r)).collect();
    let record = |key: &str, status| CaptionRecord {
        key: key.to_owned(),
        status,
        caption: None,
        short_caption: None,
        model: prompt.model.clone(),
        prompt: prompt.text.clone(),
        finish_reason: None,
        error: None,
        prompt_tokens: None,
        completion_tokens: None,
        attempts: 0,
        latency_ms: 0,
    };
    let mut todo = Vec::new();
    for sample in &samples {
        if done.contains_key(&sample.key) {
            continue;
        }
        if options
            .only
            .as_ref()
            .is_some_and(|keep| !keep.contains(&sample.key))
        {
            let r = record(&sample.key, CaptionStatus::Filtered);
            journal.append(&r)?;
            done.insert(r.key.clone(), r);
            continue;
        }
        match sample.image() {
            Some((ext, bytes)) => todo.push((sample.key.as_str(), ext, bytes)),
            None => {
                let r = record(&sample.key, CaptionStatus::NoImage);
                journal.append(&r)?;
                done.insert(r.key.clone(), r);
            }
        }
    }
    let mut answers = futures::stream::iter(todo)
        .map(|(key, ext, bytes)| async move { (key, client.caption(prompt, ext, bytes).await) })
        .buffer_unordered(options.concurrency.max(1));
    let (mut open, mut in_a_row, mut last_unavailable) = (0usize, 0usize, String::new());
    while let Some((key, answer)) = answers.next().await {
        summary.requested += 1;
        let mut r = record(key, CaptionStatus::Ok);
        r.attempts = i64::from(answer.attempts);
        r.latency_ms = answer.elapsed.as_millis() as i64;
        match answer.result {
            Ok(c) => {
                in_a_row = 0;
                r.short_caption = short_caption(&c.text, c.finish_reason.as_deref());
                r.caption = Some(c.text);
                r.finish_reason = c.finish_reason;
                r.prompt_tokens = c.prompt_tokens.map(i64::from);
                r.completion_tokens = c.completion_tokens.map(i64::from);
            }
            Err(RequestError::Rejected(message)) => {
                in_a_row = 0;
                r.status = CaptionStatus::Failed;
                r.error = Some(message);
            }
            Err(RequestError::Fatal(message)) => return Err(CaptionError::Server(message)),
            Err(e @ RequestError::Unavailable { .. }) => {
                open += 1;
                in_a_row += 1;
                last_unavailable = e.to_string();
                if in_a_row >= options.give_up_after.max(1) {
                    return Err(CaptionError::Server(format!(
                        "{in_a_row} requests in a row failed, the last: {last_unavailable}"
                    )));
                }
                continue;
            }
        }
        journal.append(&r)?;
        done.insert(r.key.clone(), r);
    }
    drop(answers);
    if open > 0 {
        return Err(CaptionError::Unfinished {
            shard: name,
            open,
            last: last_unavailable,
        });
    }
    let mut rows = Vec::with_capacity(samples.len());
    for sample in &samples {
        // Every sample has an outcome here: journaled earlier or now.
        if let Some(r) = done.remove(&sample.key) {
            match r.status {
                CaptionStatus::Ok => summary.captioned += 1,
                CaptionStatus::Failed => summary.failed += 1,
                CaptionStatus::NoImage => summary.no_image += 1,
                CaptionStatus::Filtered => summary.filtered += 1,
            }
            if r.status == CaptionStatus::Ok && r.short_caption.is_none() {
                summary.without_short += 1;
            }
            summary.completion_tokens += r.completion_tokens.unwrap_or(0);
            rows.push(r);
        }
    }
    output::write_captions(&final_path, &rows)?;
    drop(journal);
    std::fs::remove_file(&journal_path).map_err(|e| CaptionError::io(&journal_path, e))?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(Some(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_captions_are_complete_sentences_or_finished_phrases() {
        assert_eq!(
            short_caption("A cat. It sleeps.", Some("length")).as_deref(),
            Some("A cat.")
        );
        assert_eq!(
            short_caption("A red bus", Some("stop")).as_deref(),
            Some("A red bus")
        );
        assert_eq!(
            short_caption("A red bus", None).as_deref(),
            Some("A red bus")
        );
        assert_eq!(short_caption("The image shows a", Some("length")), None);
    }
}
