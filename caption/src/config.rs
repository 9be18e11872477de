//! The `[caption]` section of a pipeline config: the captioning server and request settings.
//! The pipeline config (`llamagen-pipeline`) assembles the sections; the stage's command maps
//! its flags onto the same type.

use serde::{Deserialize, Serialize};

/// LLaVA captions through an OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionConfig {
    pub endpoint: String,
    pub model: String,
    pub prompt: String,
    pub max_tokens: u32,
    pub temperature: f64,
    pub concurrency: u32,
    pub timeout_secs: f64,
    pub retries: u32,
    /// A forward proxy for the caption requests (`http://[user:password@]host:port`); empty
    /// goes direct, whatever `HTTP_PROXY` says.
    pub proxy: String,
}

impl Default for CaptionConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:8000/v1".into(),
            model: "llava-hf/llava-v1.6-mistral-7b-hf".into(),
            prompt: "Describe this image in as much detail as possible".into(),
            max_tokens: 512,
            temperature: 0.0,
            concurrency: 32,
            timeout_secs: 120.0,
            retries: 3,
            proxy: String::new(),
        }
    }
}

impl CaptionConfig {
    /// What the section must satisfy, as a message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err("caption.endpoint must be an http(s) URL".into());
        }
        if self.prompt.trim().is_empty() {
            return Err("caption.prompt is empty".into());
        }
        if !(self.proxy.is_empty()
            || self.proxy.starts_with("http://")
            || self.proxy.starts_with("https://"))
        {
            return Err("caption.proxy must be empty or an http(s) URL".into());
        }
        if self.concurrency == 0 {
            return Err("caption.concurrency must be positive".into());
        }
        Ok(())
    }
}
