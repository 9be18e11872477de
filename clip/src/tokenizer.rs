//! CLIP's tokenizer: the BPE of a `tokenizer.json` (Hugging Face `tokenizers`; the export
//! script builds it from the vocabulary open_clip ships), then `open_clip.tokenize`'s layout:
//! `<|startoftext|> tokens <|endoftext|>`, cut to the context with the end token kept last,
//! padded with 0. Text is cleaned first as open_clip's `basic_clean` does (HTML entities
//! unescaped twice, then trimmed: LAION captions are full of `&amp;`); its `ftfy.fix_text`
//! mojibake repair is not reproduced.

use std::path::Path;

use ndarray::Array2;

use crate::ClipError;

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    end: u32,
    context: usize,
}

impl ClipTokenizer {
    pub fn open(path: &Path, context: usize) -> Result<Self, ClipError> {
        let model = |message: String| ClipError::Model {
            path: path.to_owned(),
            message,
        };
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| model(e.to_string()))?;
        let end = inner
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| model("no <|endoftext|> token: not a CLIP tokenizer".into()))?;
        if context < 2 {
            return Err(model(format!("context length {context} is too short")));
        }
        Ok(ClipTokenizer {
            inner,
            end,
            context,
        })
    }

    /// The `<|endoftext|>` id (49407 in CLIP's vocabulary).
    pub fn end_token(&self) -> u32 {
        self.end
    }

    /// Token ids of `texts`: [N, context] i64, as `open_clip.tokenize(texts)`.
    pub fn encode(&self, texts: &[&str]) -> Result<Array2<i64>, ClipError> {
        let mut out = Array2::<i64>::zeros((texts.len(), self.context));
        for (row, text) in texts.iter().enumerate() {
            let once = html_escape::decode_html_entities(text);
            let clean = html_escape::decode_html_entities(&once);
            let encoding = self
                .inner
                .encode(clean.trim(), true)
                .map_err(|e| ClipError::Input(format!("tokenizing {text:?}: {e}")))?;
            let mut ids: Vec<u32> = encoding.get_ids().to_vec();
            if ids.len() > self.context {
                ids.truncate(self.context);
                ids[self.context - 1] = self.end;
            }
            for (col, id) in ids.into_iter().enumerate() {
                out[[row, col]] = i64::from(id);
            }
        }
        Ok(out)
    }
}
