//! Log-probabilities of the generated tokens (OpenAI's `logprobs` / `top_logprobs`).
//!
//! The distribution is the log-softmax of the model's logits with the request's `logit_bias`
//! added: what the model says, with the user's own edit to it, before the penalties, the
//! temperature, top-k / top-p / min-p and a constraint's mask. So the figures do not depend on the
//! sampling settings or on the history the penalties look at (a greedy and a sampled run report
//! the same numbers for the same prefix), they are always finite (a mask would make most of them
//! minus infinity, which JSON cannot carry), and under a grammar they say how far the constraint
//! overrode the model: a chosen token with a low log-probability is one the model did not want.
//! A bias of -100 shows up as such.
//!
//! Tokens a grammar forces (fed without a choice) have no distribution computed for them: they get
//! log-probability 0 (under the constraint they had probability 1), no alternatives, and
//! `forced: true`.

use serde::{Deserialize, Serialize};

use crate::error::{HearthError, Result};
use crate::tokenizer::Tokenizer;

/// Most alternatives a step may report (OpenAI's limit for `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What a backend computes for one chosen token: its log-probability, and the `k` most likely
/// tokens with theirs (most likely first, the lower id first on equal logits).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl StepLogprobs {
    /// From `logits` that already carry the logit bias: log-softmax with the log-sum-exp
    /// accumulated in f64, the chosen token's value and the top `k`.
    pub fn from_logits(logits: &[f32], chosen: u32, k: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| (f64::from(l) - f64::from(max)).exp()).sum();
        let lse = f64::from(max) + sum.ln();
        let logprob = |l: f32| (f64::from(l) - lse) as f32;
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut top: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let k = k.min(top.len());
        if k < top.len() && k > 0 {
            top.select_nth_unstable_by(k - 1, order);
        }
        top.truncate(k);
        top.sort_unstable_by(order);
        top.iter_mut().for_each(|t| t.1 = logprob(t.1));
        let chosen = logits.get(chosen as usize).map_or(f32::NEG_INFINITY, |&l| logprob(l));
        StepLogprobs { logprob: chosen, top }
    }
}

/// `k` alternatives per token is at most [`MAX_TOP_LOGPROBS`].
pub fn check_top_logprobs(k: usize) -> Result<()> {
    if k > MAX_TOP_LOGPROBS {
        return Err(HearthError::InvalidArgument(format!(
            "logprobs: at most {MAX_TOP_LOGPROBS} alternatives per token, got {k}"
        )));
    }
    Ok(())
}

/// One generated token, in OpenAI's `logprobs.content[]` shape plus the ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token's text as the decoder writes it alone (lossy where it holds part of a character).
    pub token: String,
    /// The token's bytes (a part of a UTF-8 character as it is).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this step, most likely first (empty for a forced token).
    pub top_logprobs: Vec<TopLogprob>,
    /// The grammar forced this token: no choice was made (logprob 0, no alternatives).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

impl TokenLogprob {
    /// The token `id` chosen at a step whose figures are `step`.
    pub fn chosen(tokenizer: &Tokenizer, id: u32, step: &StepLogprobs) -> Result<Self> {
        let (token, bytes) = token_text(tokenizer, id)?;
        let top_logprobs = step
            .top
            .iter()
            .map(|&(id, logprob)| {
                let (token, bytes) = token_text(tokenizer, id)?;
                Ok(TopLogprob { id, token, bytes, logprob })
            })
            .collect::<Result<_>>()?;
        Ok(TokenLogprob { id, token, bytes, logprob: step.logprob, top_logprobs, forced: false })
    }

    /// The token `id`, forced by a grammar.
    pub fn forced(tokenizer: &Tokenizer, id: u32) -> Result<Self> {
        let (token, bytes) = token_text(tokenizer, id)?;
        Ok(TokenLogprob { id, token, bytes, logprob: 0.0, top_logprobs: Vec::new(), forced: true })
    }
}

/// A token's text decoded alone (special tokens as written), and its bytes: the text's, except
/// for a token that holds part of a UTF-8 character, whose text is a replacement character: then
/// the bytes its vocabulary entry stands for (a byte-fallback `<0xAB>` piece, or a byte-level BPE
/// piece through GPT-2's byte alphabet).
fn token_text(tokenizer: &Tokenizer, id: u32) -> Result<(String, Vec<u8>)> {
    let text = tokenizer.decode(&[id], false)?;
    if !text.contains('\u{FFFD}') {
        let bytes = text.as_bytes().to_vec();
        return Ok((text, bytes));
    }
    let piece = tokenizer.token_text(id).unwrap_or_default();
    let fallback = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')).filter(|h| h.len() == 2);
    let raw = match fallback.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
        Some(byte) => Some(vec![byte]),
        None => piece.chars().map(crate::constrain::byte_level_chars()).collect::<Option<Vec<u8>>>(),
    };
    let bytes = raw.unwrap_or_else(|| text.as_bytes().to_vec());
    Ok((text, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_top_k_and_the_chosen_token() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let lse = logits.iter().map(|&l| f64::from(l).exp()).sum::<f64>().ln();
        let step = StepLogprobs::from_logits(&logits, 2, 3);
        assert!((f64::from(step.logprob) - (2.0 - lse)).abs() < 1e-6);
        // Ties: the lower id first.
        assert_eq!(step.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        for &(id, lp) in &step.top {
            assert!((f64::from(lp) - (f64::from(logits[id as usize]) - lse)).abs() < 1e-6);
        }
        assert!(StepLogprobs::from_logits(&logits, 0, 0).top.is_empty());
        assert_eq!(StepLogprobs::from_logits(&logits, 0, 9).top.len(), 5);
        // Far-apart logits: nothing overflows.
        let wide = StepLogprobs::from_logits(&[1000.0, 0.0, -1000.0], 2, 1);
        assert_eq!(wide.top, vec![(0, 0.0)]);
        assert_eq!(wide.logprob, -2000.0);
    }

    #[test]
    fn more_than_twenty_alternatives_are_refused() {
        assert!(check_top_logprobs(20).is_ok());
        assert!(matches!(check_top_logprobs(21), Err(HearthError::InvalidArgument(_))));
    }
}
