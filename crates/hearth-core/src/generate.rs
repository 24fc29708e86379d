//! The decode loop shared by every backend: prefill, sample, stream text, stop.

use serde::{Deserialize, Serialize};

use crate::constrain::{Constraint, ResponseFormat};
use crate::error::{HearthError, Result};
use crate::logprobs::{check_top_logprobs, StepLogprobs, TokenLogprob};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};
use crate::tools::{FunctionCall, ParsedOutput, Tools};

/// A forward pass: the CPU engine now, the GPU engine later.
pub trait Backend {
    /// Run `tokens` at the next positions; return the last token's logits (or all with `all_logits`).
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>>;
    /// Run `tokens` and choose the next token with `sampler` (`history`: every token so far, for the
    /// penalties). Backends that sample on their device override this so only the id comes back.
    fn forward_sample(&mut self, tokens: &[u32], sampler: &mut Sampler, history: &[u32]) -> Result<u32> {
        let mut logits = self.forward(tokens, false)?;
        sampler.params().check_vocab(logits.len())?;
        Ok(sampler.sample(&mut logits, history))
    }
    /// [`forward_sample`](Self::forward_sample), and the chosen token's log-probability with the
    /// `k` most likely tokens' ([`crate::logprobs`] defines the distribution). Backends that sample
    /// on their device override this so only those figures come back.
    fn forward_sample_logprobs(
        &mut self,
        tokens: &[u32],
        sampler: &mut Sampler,
        history: &[u32],
        k: usize,
    ) -> Result<(u32, StepLogprobs)> {
        let mut logits = self.forward(tokens, false)?;
        sampler.params().check_vocab(logits.len())?;
        Ok(sampler.sample_with_logprobs(&mut logits, history, k))
    }
    /// Steps this backend can have queued at once ([`queue_step`](Self::queue_step)); 0 (the
    /// default): it cannot queue, and the loop waits for each token before the next step.
    fn queue_depth(&self) -> usize {
        0
    }
    /// Submit `step` without waiting for the token it chooses; with `logprobs` Some(k), its figures
    /// as [`forward_sample_logprobs`](Self::forward_sample_logprobs) gives them. A step whose
    /// `tokens` is None runs the token the step queued before it chooses, which the backend keeps
    /// (as it keeps the penalty counts) without the host reading it.
    fn queue_step(&mut self, _step: QueuedStep<'_>, _logprobs: Option<usize>) -> Result<()> {
        Err(HearthError::InvalidArgument("this backend cannot queue steps".into()))
    }
    /// The token (and, when asked, its figures) of the oldest queued step not read yet, waiting
    /// for it.
    fn next_queued(&mut self) -> Result<(u32, Option<StepLogprobs>)> {
        Err(HearthError::InvalidArgument("no step is queued".into()))
    }
    /// Forget the queued steps not read yet: the cache goes back to the positions before them.
    fn drop_queued(&mut self) {}
    /// Forget every position.
    fn reset(&mut self);
    /// Keep the first `len` positions and forget the rest; false (nothing changed) when the cache
    /// cannot continue from `len` (the caller resets). Backends that cannot truncate say false.
    fn truncate(&mut self, _len: usize) -> bool {
        false
    }
    fn context_length(&self) -> usize;
}

/// Rows a sliding-window layer's ring keeps beyond its window: twice the window, at most
/// `RING_SLACK_MAX`. A follow-up prompt (an agent's next step, a chat's next turn) that changes up
/// to that many trailing positions of the last one still finds the keys its shared prefix needs
/// (`ring_keeps`) and reuses it; with a ring of only the window, every prompt longer than the
/// window would run in full on every call. The cap bounds the memory a large window adds; small
/// windows (the tiny test models') still wrap within a short prompt.
pub const RING_SLACK_MAX: usize = 1024;

/// How many rows a sliding-window layer of `window` positions keeps in the CPU engines (see
/// [`RING_SLACK_MAX`]; the GPU engine's rings are still the window and one chunk). Saturating: a
/// manifest's window is not bounded above, and a wrapped sum would make a ring too small.
pub fn ring_rows(window: usize) -> usize {
    window.saturating_add(window.saturating_mul(2).min(RING_SLACK_MAX))
}

/// Whether a sliding-window layer's ring of `rows` rows (position p in row p % rows), written up to
/// position `end` (exclusive), still holds every key a query at position `len` sees: positions
/// `len - window` on (one more than the window, so either convention of where a window starts is
/// covered). A row is overwritten once a position `rows` later has been written.
pub fn ring_keeps(window: usize, rows: usize, len: usize, end: usize) -> bool {
    len == 0 || len.saturating_sub(window).saturating_add(rows) >= end
}

/// The ids whose keys and values a backend's cache holds after the last generation, so the next
/// one can start after the longest prefix it shares with them (multi-turn chat and agent loops
/// re-send the same long prefix every call).
#[derive(Debug, Default, Clone)]
pub struct PromptCache {
    ids: Vec<u32>,
}

impl PromptCache {
    /// Make `backend` ready for `prompt`: returns how many leading prompt ids it still holds (at
    /// most all but the last, whose logits choose the first token), after truncating it there,
    /// or 0 after a reset (`reuse` false, nothing shared, or a ring that has moved on).
    pub fn prepare(&mut self, backend: &mut dyn Backend, prompt: &[u32], reuse: bool) -> usize {
        self.prepare_with(prompt, reuse, |keep| {
            if keep > 0 && backend.truncate(keep) {
                keep
            } else {
                backend.reset();
                0
            }
        })
    }

    /// [`prepare`](Self::prepare) for a backend behind another interface: `cut(keep)` truncates
    /// its cache to `keep` positions, or resets it, and returns how many it kept.
    pub fn prepare_with(&mut self, prompt: &[u32], reuse: bool, cut: impl FnOnce(usize) -> usize) -> usize {
        let shared = self.ids.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = if reuse { shared.min(prompt.len().saturating_sub(1)) } else { 0 };
        self.ids.clear();
        cut(keep)
    }

    /// After a generation (finished or stopped between steps): the ids its cache now holds.
    pub fn store(&mut self, generation: &Generation) {
        self.ids = generation.cached_ids().to_vec();
    }

    /// Forget what the cache holds (after a failed step: its state is unknown).
    pub fn clear(&mut self) {
        self.ids.clear();
    }
}

impl<P: crate::cpu::Products> Backend for crate::cpu::Engine<P> {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        crate::cpu::Engine::forward(self, tokens, all_logits)
    }
    fn reset(&mut self) {
        crate::cpu::Engine::reset(self)
    }
    fn truncate(&mut self, len: usize) -> bool {
        crate::cpu::Engine::truncate(self, len)
    }
    fn context_length(&self) -> usize {
        crate::cpu::Engine::context_length(self)
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
    /// Report each step's margin (`GenerateOutput::margins`): reads every step's logits back.
    pub margins: bool,
    /// What the output must be (free text, JSON, a regular expression, a grammar).
    pub response_format: ResponseFormat,
    /// Start after the longest prefix this prompt shares with what the cache holds
    /// ([`PromptCache`]); false runs the whole prompt again.
    pub cache_prompt: bool,
    /// None: no log-probabilities. Some(k), k in 0..=20: each generated token's log-probability
    /// and the `k` most likely tokens at its step (`GenerateOutput::logprobs`): the log-softmax
    /// of the logits with `sampling.logit_bias` added, before the penalties, the temperature,
    /// top-k / top-p / min-p and the grammar's mask ([`crate::logprobs`] argues why). A token a
    /// grammar forced gets 0, no alternatives and `forced: true`.
    pub logprobs: Option<usize>,
    /// Functions the model may call and how (`tool_choice`); the prompt must already show them
    /// (`Prompter::encode_chat_with_tools`).
    pub tools: Tools,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        GenerateRequest {
            prompt_ids: Vec::new(),
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            top_logits: 0,
            margins: false,
            response_format: ResponseFormat::Text,
            cache_prompt: true,
            logprobs: None,
            tools: Tools::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The output ended after one or more complete tool calls.
    ToolCalls,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache (not run again).
    #[serde(default)]
    pub cached_tokens: usize,
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
    /// With `GenerateRequest::margins`: at each step, the largest logit minus the second largest,
    /// after the penalties (a greedy choice is a near-tie when this is small: engines that round
    /// differently may choose differently there, and only there). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub margins: Vec<f32>,
    /// With `GenerateRequest::logprobs`: one entry per id of `ids`. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    /// With tools: the calls in `text` (which holds them as the model wrote them), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<FunctionCall>,
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

/// One generation as a state machine, so that a caller that cannot block (the browser, awaiting the
/// GPU) drives the same loop as [`generate`]: ask [`Generation::input`] what to run, run it, give the
/// chosen token to [`Generation::accept`], repeat until [`Generation::is_done`].
pub struct Generation {
    req: GenerateRequest,
    sampler: Sampler,
    /// Prompt and generated ids: the penalties' window and, from `run_from` on, the next input.
    history: Vec<u32>,
    run_from: usize,
    ids: Vec<u32>,
    text: String,
    decoder: IncrementalDecoder,
    stops: StopStrings,
    finish: Option<FinishReason>,
    top_logits: Vec<(u32, f32)>,
    /// With `req.logprobs`: an entry per generated id, and the figures of the step being accepted.
    logprobs: Vec<TokenLogprob>,
    step_logprobs: Option<StepLogprobs>,
    t0: f64,
    t_first: Option<f64>,
    /// Forward passes after the prompt's, timed from the first sampled token on.
    decode_steps: usize,
    /// The grammar the output follows, when `req.response_format` asks for one.
    constraint: Option<Constraint>,
    /// A stop string ended the generation.
    stops_hit: bool,
    /// Text of tokens forced before the first choice, until [`Generation::opening_text`] takes it.
    held: String,
    /// Leading prompt tokens already in the backend's cache (not run).
    cached: usize,
    /// Leading `history` ids that have been run (their keys and values are in the cache).
    ran: usize,
}

/// What the backend runs next: `tokens` at the next positions, then a choice made with `sampler`
/// (`history`: every token so far, for the penalties).
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub sampler: &'a mut Sampler,
    pub history: &'a [u32],
}

/// A step to queue behind `ahead` steps whose tokens the host has not read yet
/// ([`Generation::queued_input`], [`Backend::queue_step`]). With `ahead` 0 it is the
/// [`StepInput`]; otherwise `tokens` is None (the input is what the step before chooses) and the
/// history when it chooses is `history` and those `ahead` tokens.
pub struct QueuedStep<'a> {
    pub tokens: Option<&'a [u32]>,
    pub sampler: &'a mut Sampler,
    pub history: &'a [u32],
    pub ahead: usize,
}

impl QueuedStep<'_> {
    /// Tokens of the history when this step chooses.
    pub fn history_len(&self) -> usize {
        self.history.len() + self.ahead
    }
}

impl Generation {
    /// Check the request against the context and compile its response format (with `tokenizer`'s
    /// vocabulary); `now` is the caller's clock in seconds. The backend must hold exactly the first
    /// `cached` prompt tokens (0 after a reset; [`PromptCache::prepare`] says how many).
    pub fn new(
        req: GenerateRequest,
        tokenizer: &Tokenizer,
        context_length: usize,
        cached: usize,
        now: f64,
    ) -> Result<Self> {
        let n_prompt = req.prompt_ids.len();
        if n_prompt == 0 {
            return Err(HearthError::InvalidArgument("the prompt is empty".into()));
        }
        if cached >= n_prompt {
            return Err(HearthError::InvalidArgument(format!(
                "{cached} cached tokens leave none of the {n_prompt}-token prompt to run"
            )));
        }
        if n_prompt + req.max_tokens > context_length {
            return Err(HearthError::ContextLengthExceeded {
                prompt_tokens: n_prompt,
                max_new_tokens: req.max_tokens,
                context_length,
            });
        }
        let sampler = Sampler::new(req.sampling.clone())?;
        if let Some(k) = req.logprobs {
            check_top_logprobs(k)?;
        }
        if !req.sampling.logit_bias.is_empty() {
            req.sampling.check_vocab(tokenizer.vocab_size())?;
        }
        req.tools.validate()?;
        let mut constraint = match req.response_format.is_free() && !req.tools.may_call() {
            true => None,
            false => tokenizer.grammars()?.constraint_with_tools(&req.response_format, &req.tools)?,
        };
        // What the grammar forces before the first choice (a fixed opening) runs with the prompt.
        let forced = match &mut constraint {
            Some(c) => c.forced()?,
            None => Vec::new(),
        };
        let mut gen = Generation {
            sampler,
            history: req.prompt_ids.clone(),
            run_from: cached,
            ids: Vec::new(),
            text: String::new(),
            decoder: IncrementalDecoder::new(),
            stops: StopStrings::new(req.stop_strings.clone()),
            finish: None,
            top_logits: Vec::new(),
            logprobs: Vec::new(),
            step_logprobs: None,
            t0: now,
            t_first: None,
            decode_steps: 0,
            constraint,
            stops_hit: false,
            held: String::new(),
            cached,
            ran: cached,
            req,
        };
        let all_forced = forced.len() <= gen.req.max_tokens;
        for t in forced.into_iter().take(gen.req.max_tokens) {
            let piece = gen.push(t, tokenizer)?;
            gen.held.push_str(&piece);
        }
        let Some(c) = &mut gen.constraint else { return Ok(gen) };
        let complete = c.is_finished() && all_forced;
        if gen.finish.is_none() && !complete && gen.ids.len() < gen.req.max_tokens {
            gen.sampler.set_mask(Some(c.mask()?));
            return Ok(gen);
        }
        // The grammar allows one text only (a `const`): it is the output, no pass needed.
        if gen.finish.is_none() {
            gen.finish = Some(if complete { FinishReason::Stop } else { FinishReason::Length });
        }
        let mut tail = String::new();
        gen.flush_held_text(tokenizer, &mut tail)?;
        gen.held.push_str(&tail);
        Ok(gen)
    }

    /// The next forward pass (the whole prompt first, then the last chosen token), or None when done.
    pub fn input(&mut self) -> Option<StepInput<'_>> {
        if self.finish.is_some() {
            return None;
        }
        Some(StepInput { tokens: &self.history[self.run_from..], sampler: &mut self.sampler, history: &self.history })
    }

    /// The step to queue while `queued` steps wait to be read ([`accept`](Self::accept)ed in
    /// order), or None: done, or the next step's input depends on a token not read yet. With
    /// nothing queued it is [`input`](Self::input). Ahead of the tokens read, a step runs the
    /// token the one before it chooses: only without a constraint (its mask and forced tokens
    /// follow each token) and while the budget may still need it. Such a step's choice costs one
    /// draw from the sampler, in order, as when each step waits for the last (the draws do not
    /// depend on the tokens); steps found unneeded (a stop) are dropped, their draws unused.
    pub fn queued_input(&mut self, queued: usize) -> Option<QueuedStep<'_>> {
        if self.finish.is_some() {
            return None;
        }
        let tokens = match queued {
            0 => Some(&self.history[self.run_from..]),
            _ if self.constraint.is_some() || self.ids.len() + queued >= self.req.max_tokens => return None,
            _ => None,
        };
        Some(QueuedStep { tokens, sampler: &mut self.sampler, history: &self.history, ahead: queued })
    }

    /// Queue steps with `submit` (the backend's `queue_step`) while fewer than `depth` wait unread
    /// and [`queued_input`](Self::queued_input) gives one; `queued` wait already. Returns how many
    /// wait now (0: the generation needs no more steps).
    pub fn fill_queue(
        &mut self,
        mut queued: usize,
        depth: usize,
        mut submit: impl FnMut(QueuedStep<'_>) -> Result<()>,
    ) -> Result<usize> {
        while queued < depth {
            let Some(step) = self.queued_input(queued) else { break };
            submit(step)?;
            queued += 1;
        }
        Ok(queued)
    }

    /// The ids whose keys and values the backend's cache holds now: the prompt and the generated
    /// ids that have run (not the last chosen, nor tokens forced after it).
    pub fn cached_ids(&self) -> &[u32] {
        &self.history[..self.ran]
    }

    /// The text a constraint forces before the first choice (a fixed opening, or all of a
    /// constant output, in which case the generation is already done); take it once, before
    /// the first step.
    pub fn opening_text(&mut self) -> String {
        let text = std::mem::take(&mut self.held);
        self.text.push_str(&text);
        text
    }

    /// Whether the next forward pass is the prompt's (whose logits `top_logits` asks for).
    pub fn is_prefill(&self) -> bool {
        self.t_first.is_none()
    }

    pub fn is_done(&self) -> bool {
        self.finish.is_some()
    }

    pub fn prompt_tokens(&self) -> usize {
        self.req.prompt_ids.len()
    }

    /// Whether the output may hold tool calls (split them out with `tools::ToolCallParser`).
    pub fn may_call_tools(&self) -> bool {
        self.req.tools.may_call()
    }

    /// The prompt's largest logits, for a caller that read them back (`GenerateRequest::top_logits`).
    pub fn set_top_logits(&mut self, top: Vec<(u32, f32)>) {
        self.top_logits = top;
    }

    /// `GenerateRequest::logprobs`: with Some(k), a caller that samples itself (the browser's
    /// driver) computes each step's figures (`GpuEngine::sample_next_logprobs_async`, or
    /// `Sampler::sample_with_logprobs` on logits it holds) and hands them to
    /// [`set_step_logprobs`](Self::set_step_logprobs) before each [`accept`](Self::accept).
    pub fn logprobs_requested(&self) -> Option<usize> {
        self.req.logprobs
    }

    /// The figures of the step whose token the next [`accept`](Self::accept) takes; that call
    /// fails without them when the request asks for logprobs.
    pub fn set_step_logprobs(&mut self, step: StepLogprobs) {
        self.step_logprobs = Some(step);
    }

    /// The entries of `GenerateRequest::logprobs` so far, one per generated id.
    pub fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    /// The token chosen after the last input; returns the text that became final (held back only
    /// while it might be the start of a stop string). Under a constraint, the tokens the grammar
    /// forces next are taken too (the next input runs them with `id` in one chunk).
    pub fn accept(&mut self, id: u32, tokenizer: &Tokenizer, now: f64) -> Result<String> {
        if self.finish.is_some() {
            return Err(HearthError::InvalidArgument("this generation has finished".into()));
        }
        if self.req.logprobs.is_some() && self.step_logprobs.is_none() {
            return Err(HearthError::InvalidArgument(
                "this generation reports logprobs: set_step_logprobs must come before accept".into(),
            ));
        }
        if self.t_first.is_none() {
            self.t_first = Some(now);
        } else {
            self.decode_steps += 1;
        }
        // The input that chose `id` has run.
        self.ran = self.history.len();
        let mut out = String::new();
        if self.ids.len() >= self.req.max_tokens {
            self.finish = Some(FinishReason::Length);
        } else if tokenizer.is_stop(id) {
            self.finish = Some(FinishReason::Stop);
        } else {
            self.run_from = self.history.len();
            out.push_str(&self.push(id, tokenizer)?);
            self.take_forced(id, tokenizer, &mut out)?;
        }
        if self.finish.is_none() && self.ids.len() == self.req.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        match (self.finish, &mut self.constraint) {
            (Some(_), _) => self.flush_held_text(tokenizer, &mut out)?,
            (None, Some(c)) => self.sampler.set_mask(Some(c.mask()?)),
            (None, None) => {}
        }
        self.text.push_str(&out);
        // A stop token, or a token past the budget, is not reported.
        self.step_logprobs = None;
        Ok(out)
    }

    /// At the end: the bytes of an incomplete character and text held back for a stop string that
    /// never came (nothing, when a stop string ended the text).
    fn flush_held_text(&mut self, tokenizer: &Tokenizer, out: &mut String) -> Result<()> {
        if self.stops_hit {
            return Ok(());
        }
        let tail = self.decoder.finish(tokenizer)?;
        let (safe, hit) = self.stops.push(&tail);
        out.push_str(&safe);
        if !hit {
            out.push_str(&self.stops.flush());
        }
        Ok(())
    }

    /// Tell the constraint the chosen `id` and append the tokens it then forces; a grammar that
    /// is complete ends the generation.
    fn take_forced(&mut self, id: u32, tokenizer: &Tokenizer, out: &mut String) -> Result<()> {
        let Some(c) = &mut self.constraint else { return Ok(()) };
        c.commit(id)?;
        let forced = c.forced()?;
        let mut finished = c.is_finished();
        for t in forced {
            if self.finish.is_some() || self.ids.len() == self.req.max_tokens {
                finished = false;
                break;
            }
            // The grammar forces only text, never a stop token.
            out.push_str(&self.push(t, tokenizer)?);
        }
        if self.finish.is_none() && finished {
            self.finish = Some(FinishReason::Stop);
        }
        Ok(())
    }

    /// Append a generated token: its text, once final and not part of a stop string. A stop
    /// string ends the generation.
    fn push(&mut self, id: u32, tokenizer: &Tokenizer) -> Result<String> {
        if self.req.logprobs.is_some() {
            // The step's figures belong to the chosen token, the first pushed after them; every
            // other token is one the grammar forced.
            self.logprobs.push(match self.step_logprobs.take() {
                Some(step) => TokenLogprob::chosen(tokenizer, id, &step)?,
                None => TokenLogprob::forced(tokenizer, id)?,
            });
        }
        self.ids.push(id);
        self.history.push(id);
        let piece = self.decoder.push(tokenizer, id)?;
        let (out, hit) = self.stops.push(&piece);
        if hit {
            self.finish = Some(FinishReason::Stop);
            self.stops_hit = true;
        }
        Ok(out)
    }

    /// The result, once done; `now` is the caller's clock.
    pub fn output(&self, now: f64) -> GenerateOutput {
        let n_prompt = self.req.prompt_ids.len();
        let t_first = self.t_first.unwrap_or(now);
        let usage = Usage {
            prompt_tokens: n_prompt,
            cached_tokens: self.cached,
            completion_tokens: self.ids.len(),
            // Prefill includes choosing the first token (the GPU does both in one submission).
            prefill_tok_s: rate(n_prompt - self.cached, t_first - self.t0),
            // Over the tokens after the first: each needed one forward pass of its own.
            decode_tok_s: rate(self.decode_steps, now - t_first),
            ttft_s: t_first - self.t0,
        };
        let mut finish_reason = self.finish.unwrap_or(FinishReason::Length);
        let tool_calls = match self.req.tools.may_call() {
            true => {
                let parsed = ParsedOutput::parse(&self.text);
                if finish_reason == FinishReason::Stop && parsed.complete > 0 {
                    finish_reason = FinishReason::ToolCalls;
                }
                parsed.calls
            }
            false => Vec::new(),
        };
        GenerateOutput {
            prompt_ids: self.req.prompt_ids.clone(),
            ids: self.ids.clone(),
            text: self.text.clone(),
            top_logits: self.top_logits.clone(),
            finish_reason,
            usage,
            margins: Vec::new(),
            logprobs: self.logprobs.clone(),
            tool_calls,
        }
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
    generate_cached(backend, tokenizer, req, &mut PromptCache::default(), now, on_text)
}

/// [`generate`] on a backend that kept its cache from earlier calls, as `cache` records: the
/// prompt runs from the end of the prefix it shares with them (`req.cache_prompt`).
pub fn generate_cached(
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    cache: &mut PromptCache,
    now: &dyn Fn() -> f64,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<GenerateOutput> {
    let t0 = now();
    let cached = cache.prepare(backend, &req.prompt_ids, req.cache_prompt);
    let mut gen = Generation::new(req.clone(), tokenizer, backend.context_length(), cached, t0)?;
    let out = run_generation(&mut gen, backend, tokenizer, req, now, on_text);
    match &out {
        Ok(_) => cache.store(&gen),
        Err(_) => cache.clear(),
    }
    out
}

fn run_generation(
    gen: &mut Generation,
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    now: &dyn Fn() -> f64,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<GenerateOutput> {
    let opening = gen.opening_text();
    if !opening.is_empty() {
        on_text(&opening)?;
    }
    // Logits read back (top logits, margins) need every step to wait; otherwise a backend that
    // can queue steps gets them ahead.
    let depth = backend.queue_depth();
    if depth > 0 && req.top_logits == 0 && !req.margins {
        let out = run_queued(gen, backend, tokenizer, req, depth, now, on_text);
        // Steps past the end (a stop) and steps an error left behind are not part of the cache.
        backend.drop_queued();
        out?;
        return Ok(gen.output(now()));
    }
    let mut margins = Vec::new();
    loop {
        // Logits come back to the CPU only when they are asked for.
        let wants_top = gen.is_prefill() && req.top_logits > 0;
        let Some(step) = gen.input() else { break };
        let (id, figures) = if wants_top || req.margins {
            let mut logits = backend.forward(step.tokens, false)?;
            step.sampler.params().check_vocab(logits.len())?;
            // The sampler applies the bias, the mask and the penalties to `logits` in place before
            // it chooses.
            let (id, figures) = match req.logprobs {
                Some(k) => {
                    let (id, figures) = step.sampler.sample_with_logprobs(&mut logits, step.history, k);
                    (id, Some(figures))
                }
                None => (step.sampler.sample(&mut logits, step.history), None),
            };
            if req.margins {
                margins.push(match top_k_logits(&logits, 2)[..] {
                    [(_, a), (_, b)] => a - b,
                    _ => f32::INFINITY,
                });
            }
            if wants_top {
                gen.set_top_logits(top_k_logits(&logits, req.top_logits));
            }
            (id, figures)
        } else if let Some(k) = req.logprobs {
            let (id, figures) = backend.forward_sample_logprobs(step.tokens, step.sampler, step.history, k)?;
            (id, Some(figures))
        } else {
            (backend.forward_sample(step.tokens, step.sampler, step.history)?, None)
        };
        if let Some(figures) = figures {
            gen.set_step_logprobs(figures);
        }
        let piece = gen.accept(id, tokenizer, now())?;
        if !piece.is_empty() {
            on_text(&piece)?;
        }
    }
    Ok(GenerateOutput { margins, ..gen.output(now()) })
}

/// The loop with up to `depth` steps queued: while the host turns one token into text, the backend
/// already runs the next ones. The tokens, and so the text, are those of the loop above.
fn run_queued(
    gen: &mut Generation,
    backend: &mut dyn Backend,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    depth: usize,
    now: &dyn Fn() -> f64,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let mut queued = 0;
    loop {
        queued = gen.fill_queue(queued, depth, |step| backend.queue_step(step, req.logprobs))?;
        if queued == 0 {
            return Ok(());
        }
        let (id, figures) = backend.next_queued()?;
        queued -= 1;
        if let Some(figures) = figures {
            gen.set_step_logprobs(figures);
        }
        let piece = gen.accept(id, tokenizer, now())?;
        if !piece.is_empty() {
            on_text(&piece)?;
        }
        if gen.is_done() {
            return Ok(());
        }
    }
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
    fn rings_keep_twice_the_window_beyond_it_at_most_1024_rows_and_never_wrap_around() {
        assert_eq!(ring_rows(8), 24);
        assert_eq!(ring_rows(512), 1536);
        assert_eq!(ring_rows(4096), 4096 + 1024);
        // A hostile manifest's window: the sum saturates instead of wrapping to a tiny ring.
        assert_eq!(ring_rows(usize::MAX), usize::MAX);
        assert_eq!(ring_rows(usize::MAX - 10), usize::MAX);
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
