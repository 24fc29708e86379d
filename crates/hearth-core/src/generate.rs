//! The decode loop shared by every backend: prefill, sample, stream text, stop.

use serde::{Deserialize, Serialize};

use crate::error::{HearthError, Result};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// A forward pass: the CPU engine now, the GPU engine later.
pub trait Backend {
    /// Run `tokens` at the next positions; return the last token's logits (or all with `all_logits`).
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>>;
    /// Run `tokens` and choose the next token with `sampler` (`history`: every token so far, for the
    /// penalties). Backends that sample on their device override this so only the id comes back.
    fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        let mut logits = self.forward(tokens, false)?;
        Ok(sampler.sample(&mut logits, history))
    }
    /// Forget every position.
    fn reset(&mut self);
    fn context_length(&self) -> usize;
}

impl Backend for crate::cpu::CpuEngine {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        crate::cpu::CpuEngine::forward(self, tokens, all_logits)
    }
    fn reset(&mut self) {
        crate::cpu::CpuEngine::reset(self)
    }
    fn context_length(&self) -> usize {
        self.config().context_length
    }
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before any of these strings; the string itself is not emitted.
    pub stop_strings: Vec<String>,
    /// How many of the largest logits at the last prompt position to report.
    pub top_logits: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub ttft_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOutput {
    pub prompt_ids: Vec<u32>,
    /// Generated ids; a stop token that ended generation is not included.
    pub ids: Vec<u32>,
    pub text: String,
    pub top_logits: Vec<(u32, f32)>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// The `k` largest logits, largest first.
pub fn top_k_logits(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// Holds back text that might be the start of a stop string, so a stop string that spans tokens is
/// never emitted.
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), pending: String::new() }
    }

    /// Feed new text; returns (text safe to emit, whether a stop string was hit).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (cut, _) in s.char_indices().skip(1) {
                if cut > keep && self.pending.ends_with(&s[..cut]) {
                    keep = cut;
                }
            }
        }
        let emit = self.pending.len() - keep;
        let out = self.pending[..emit].to_string();
        self.pending.drain(..emit);
        (out, false)
    }

    /// Text still held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Generate from `req.prompt_ids` (the backend is reset first). `on_text` receives text as soon as it
/// is final; `now` is a clock in seconds (the caller's, so this loop runs in the browser too).
pub fn generate(
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    now: &dyn Fn() -> f64,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<GenerateOutput> {
    let n_prompt = req.prompt_ids.len();
    if n_prompt == 0 {
        return Err(HearthError::InvalidArgument("the prompt is empty".into()));
    }
    let ctx = backend.context_length();
    if n_prompt + req.max_tokens > ctx {
        return Err(HearthError::ContextLengthExceeded {
            prompt_tokens: n_prompt,
            max_new_tokens: req.max_tokens,
            context_length: ctx,
        });
    }
    let mut sampler = Sampler::new(req.sampling.clone())?;
    backend.reset();

    let mut history = req.prompt_ids.clone();
    let t0 = now();
    // Prefill and the first choice. Logits come back to the CPU only when they are asked for.
    let (mut next, top_logits) = if req.top_logits > 0 {
        let mut logits = backend.forward(&req.prompt_ids, false)?;
        let top = top_k_logits(&logits, req.top_logits);
        (sampler.sample(&mut logits, &history), top)
    } else {
        (backend.forward_sample(&req.prompt_ids, &mut sampler, &history)?, Vec::new())
    };
    let t_first = now();

    let mut ids = Vec::new();
    let mut text = String::new();
    let mut decoder = IncrementalDecoder::new();
    let mut stops = StopStrings::new(req.stop_strings.clone());
    let mut finish = FinishReason::Length;
    // Forward passes of single generated tokens, timed from the first sampled token on.
    let mut decode_steps = 0usize;
    let mut emit = |piece: &str, text: &mut String| -> Result<()> {
        if !piece.is_empty() {
            text.push_str(piece);
            on_text(piece)?;
        }
        Ok(())
    };

    for step in 0..req.max_tokens {
        let id = next;
        if tokenizer.is_stop(id) {
            finish = FinishReason::Stop;
            break;
        }
        ids.push(id);
        history.push(id);
        let piece = decoder.push(tokenizer, id)?;
        let (safe, hit) = stops.push(&piece);
        emit(&safe, &mut text)?;
        if hit {
            finish = FinishReason::Stop;
            break;
        }
        if step + 1 < req.max_tokens {
            next = backend.forward_sample(&[id], &mut sampler, &history)?;
            decode_steps += 1;
        }
    }
    if finish == FinishReason::Length {
        let tail = decoder.finish(tokenizer)?;
        let (safe, hit) = stops.push(&tail);
        emit(&safe, &mut text)?;
        if !hit {
            let rest = stops.flush();
            emit(&rest, &mut text)?;
        }
    }
    let t_end = now();

    let usage = Usage {
        prompt_tokens: n_prompt,
        completion_tokens: ids.len(),
        // Prefill includes choosing the first token (the GPU does both in one submission).
        prefill_tok_s: rate(n_prompt, t_first - t0),
        // Over the tokens after the first: each needed one forward pass inside this loop.
        decode_tok_s: rate(decode_steps, t_end - t_first),
        ttft_s: t_first - t0,
    };
    Ok(GenerateOutput { prompt_ids: req.prompt_ids.clone(), ids, text, top_logits, finish_reason: finish, usage })
}

fn rate(n: usize, secs: f64) -> f64 {
    if n == 0 || secs <= 0.0 {
        0.0
    } else {
        n as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = s.push(p);
            out.push_str(&t);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&s.flush());
        (out, false)
    }

    #[test]
    fn stop_string_spanning_pieces_is_caught_and_not_emitted() {
        assert_eq!(run(&["\nUser:"], &["Hello", " there\n", "Us", "er:", " more"]), ("Hello there".into(), true));
    }

    #[test]
    fn partial_match_that_does_not_complete_is_released() {
        assert_eq!(run(&["STOP"], &["ST", "ART", " ok"]), ("START ok".into(), false));
        assert_eq!(run(&["ab"], &["xa"]), ("xa".into(), false));
    }

    #[test]
    fn earliest_stop_string_wins() {
        assert_eq!(run(&["world", "lo"], &["hello world"]), ("hel".into(), true));
    }
}
