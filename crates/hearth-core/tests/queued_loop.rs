//! The decode loop with queued steps (`Backend::queue_step`, `Generation::queued_input`), without a
//! GPU: a backend that honours the queue's contract on the CPU engine (each queued step computed at
//! once, its token kept unread until `next_queued`; a step without tokens runs the token the step
//! before it chose, with the history extended by the tokens not read yet) must give exactly the
//! output of the same engine run one step at a time. This checks the loop's bookkeeping (draw order,
//! the budget, stop tokens and strings met with steps behind them, dropped steps' positions given
//! back, logprobs, constraints falling back to one step at a time) on every machine; the GPU
//! engine's own queue is checked against its one-at-a-time path in hearth-gpu's `tests/queued.rs`.

mod common;

use std::collections::VecDeque;

use hearth_core::constrain::ResponseFormat;
use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::cpu::CpuEngine;
use hearth_core::generate::{generate_cached, Backend, GenerateOutput, GenerateRequest, PromptCache, QueuedStep};
use hearth_core::logprobs::StepLogprobs;
use hearth_core::model::Model;
use hearth_core::sampling::SamplingParams;
use hearth_core::Result;

struct Queued {
    id: u32,
    figures: Option<StepLogprobs>,
    tokens: usize,
}

/// The CPU engine behind the queue's interface.
struct Eager {
    engine: CpuEngine,
    queue: VecDeque<Queued>,
    position: usize,
    /// Steps queued and dropped (to show the test reaches that path).
    dropped: usize,
}

impl Backend for Eager {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.drop_queued();
        self.position += tokens.len();
        self.engine.forward(tokens, all_logits)
    }
    fn queue_depth(&self) -> usize {
        3
    }
    fn queue_step(&mut self, step: QueuedStep<'_>, logprobs: Option<usize>) -> Result<()> {
        assert_eq!(step.ahead, self.queue.len(), "a step is queued behind every unread one");
        let unread: Vec<u32> = self.queue.iter().map(|q| q.id).collect();
        let tokens = match step.tokens {
            Some(tokens) => tokens.to_vec(),
            None => vec![*unread.last().expect("a step without tokens follows a queued one")],
        };
        let mut history = step.history.to_vec();
        history.extend(&unread);
        assert_eq!(history.len(), step.history_len());
        let mut logits = self.engine.forward(&tokens, false)?;
        self.position += tokens.len();
        let (id, figures) = match logprobs {
            Some(k) => {
                let (id, figures) = step.sampler.sample_with_logprobs(&mut logits, &history, k);
                (id, Some(figures))
            }
            None => (step.sampler.sample(&mut logits, &history), None),
        };
        self.queue.push_back(Queued { id, figures, tokens: tokens.len() });
        Ok(())
    }
    fn next_queued(&mut self) -> Result<(u32, Option<StepLogprobs>)> {
        let q = self.queue.pop_front().expect("a queued step");
        Ok((q.id, q.figures))
    }
    fn drop_queued(&mut self) {
        let tokens: usize = self.queue.drain(..).map(|q| q.tokens).sum();
        if tokens > 0 {
            self.dropped += 1;
            self.position -= tokens;
            assert!(self.engine.truncate(self.position));
        }
    }
    fn reset(&mut self) {
        self.queue.clear();
        self.position = 0;
        self.engine.reset();
    }
    fn truncate(&mut self, len: usize) -> bool {
        self.drop_queued();
        let kept = self.engine.truncate(len);
        if kept {
            self.position = len;
        }
        kept
    }
    fn context_length(&self) -> usize {
        self.engine.config().context_length
    }
}

fn run(model: &Model, backend: &mut dyn Backend, cache: &mut PromptCache, req: &GenerateRequest) -> GenerateOutput {
    generate_cached(backend, model.tokenizer(), req, cache, &|| 0.0, &mut |_| Ok(())).unwrap()
}

#[test]
fn the_queued_loop_gives_the_one_at_a_time_loops_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("llama_linear");
    convert(&common::repo_root().join("tests/fixtures/tiny/llama_linear.gguf"), &out, &ConvertOptions::default())
        .unwrap();
    let mut model = Model::open(&out).unwrap();
    let open = || CpuEngine::from_package(&model.package).unwrap();
    let mut queued = Eager { engine: open(), queue: VecDeque::new(), position: 0, dropped: 0 };
    let mut one = open();
    let prompt_ids = model.encode_text("Once upon a time").unwrap();
    let penalized = SamplingParams {
        temperature: 0.9,
        top_p: 0.9,
        seed: 3,
        repetition_penalty: 1.3,
        presence_penalty: 0.4,
        frequency_penalty: 0.3,
        penalty_last_n: 6,
        ..Default::default()
    };
    let base = GenerateRequest { prompt_ids: prompt_ids.clone(), max_tokens: 40, ..Default::default() };
    let free = run(&model, &mut one, &mut PromptCache::default(), &base);
    // A stop string that starts after the 10th token's text (there is no earlier occurrence).
    let text_at = |k: usize| model.tokenizer().decode(&free.ids[..k], false).unwrap();
    let stop = (10..free.ids.len() - 4)
        .find_map(|k| {
            let rest = free.text.strip_prefix(text_at(k).as_str())?;
            let stop: String = rest.chars().take(2).collect();
            (stop.chars().count() == 2 && !text_at(k).contains(&stop)).then_some(stop)
        })
        .expect("a stop string");
    let cases = [
        ("greedy", base.clone()),
        ("sampled with penalties", GenerateRequest { sampling: penalized.clone(), ..base.clone() }),
        ("logprobs", GenerateRequest { sampling: penalized.clone(), logprobs: Some(4), ..base.clone() }),
        ("a stop string", GenerateRequest { stop_strings: vec![stop], ..base.clone() }),
        ("a budget of 1", GenerateRequest { max_tokens: 1, ..base.clone() }),
        (
            "a constraint",
            GenerateRequest { response_format: ResponseFormat::JsonObject, max_tokens: 12, ..base.clone() },
        ),
    ];
    // Each case on a cache the last one left (the prompt reused), as a chat's turns are.
    let (mut queued_cache, mut one_cache) = (PromptCache::default(), PromptCache::default());
    for (what, req) in cases {
        let dropped = queued.dropped;
        let a = run(&model, &mut queued, &mut queued_cache, &req);
        let b = run(&model, &mut one, &mut one_cache, &req);
        assert_eq!(a.ids, b.ids, "{what}");
        assert_eq!(a.text, b.text, "{what}");
        assert_eq!(a.finish_reason, b.finish_reason, "{what}");
        assert_eq!(a.logprobs, b.logprobs, "{what}");
        assert_eq!(a.usage.cached_tokens, b.usage.cached_tokens, "{what}");
        assert_eq!(queued.position, one.position(), "{what}: the cache's end");
        assert_eq!(queued.engine.position(), one.position(), "{what}");
        assert!(queued.queue.is_empty(), "{what}");
        // A stop string ends the output with steps queued behind it; at the budget none is queued
        // past the last token the budget allows.
        let expected =
            usize::from(a.finish_reason == hearth_core::generate::FinishReason::Stop && req.response_format.is_free());
        assert_eq!(queued.dropped - dropped, expected, "{what}: steps dropped ({:?})", a.finish_reason);
    }
}
