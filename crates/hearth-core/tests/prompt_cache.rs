//! Prefix reuse across calls (issue 15, item 5): a generation that shares a prefix with what the
//! cache holds runs only the rest, reports the reused count, and chooses exactly the ids a fresh
//! engine chooses — on full-attention models and on sliding-window (ring) layers, where a reuse the
//! ring can no longer serve falls back to running the whole prompt.

mod common;

use common::Recording;

use hearth_core::chat::ChatMessage;
use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::fast::FastEngine;
use hearth_core::generate::{
    generate, generate_cached, ring_rows, Backend, FinishReason, GenerateOutput, GenerateRequest, PromptCache,
};
use hearth_core::model::Model;

fn request(prompt_ids: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt_ids, max_tokens, ..Default::default() }
}

/// One call on the engine that keeps its cache; returns the output and the tokens of its first pass.
fn cached_call(
    model: &Model,
    engine: &mut dyn Backend,
    cache: &mut PromptCache,
    req: &GenerateRequest,
) -> (GenerateOutput, usize) {
    let mut rec = Recording { inner: engine, runs: Vec::new() };
    let out = generate_cached(&mut rec, model.tokenizer(), req, cache, &|| 0.0, &mut |_| Ok(())).unwrap();
    (out, rec.runs.first().copied().unwrap_or(0))
}

/// The ids a fresh engine (nothing cached) generates for `req`.
fn fresh(model: &Model, engine: &mut dyn Backend, req: &GenerateRequest) -> Vec<u32> {
    generate(engine, model.tokenizer(), req, &|| 0.0, &mut |_| Ok(())).unwrap().ids
}

/// What the cache holds after `out`: its prompt and the generated ids that ran (all of them when
/// a stop token ended it; all but the last when the budget did).
fn ran(out: &GenerateOutput) -> Vec<u32> {
    let generated = match out.finish_reason {
        FinishReason::Stop | FinishReason::ToolCalls => out.ids.len(),
        FinishReason::Length => out.ids.len().saturating_sub(1),
    };
    out.prompt_ids.iter().chain(&out.ids[..generated]).copied().collect()
}

fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Turn 2 of a chat reuses turn 1's prompt and answer: it runs only the new tokens and gives the
/// fresh engine's ids; `cache_prompt: false` runs everything.
#[test]
fn a_second_chat_turn_runs_only_its_new_tokens() {
    let mut model = Model::open(common::smollm2_package()).expect("open");
    let mut engine = FastEngine::from_source(&model.package).unwrap();
    let mut reference = FastEngine::from_source(&model.package).unwrap();
    let mut cache = PromptCache::default();
    let mut messages = vec![
        ChatMessage::new("system", "You are a concise assistant."),
        ChatMessage::new("user", "Name three rivers in Europe."),
    ];
    let turn1 = request(model.encode_chat(&messages).unwrap(), 40);
    let (out1, first1) = cached_call(&model, &mut engine, &mut cache, &turn1);
    assert_eq!((out1.usage.cached_tokens, first1), (0, turn1.prompt_ids.len()), "nothing cached at first");

    messages.push(ChatMessage::new("assistant", &out1.text));
    messages.push(ChatMessage::new("user", "Which of them is the longest?"));
    let turn2 = request(model.encode_chat(&messages).unwrap(), 40);
    let expected = shared_prefix(&ran(&out1), &turn2.prompt_ids);
    assert!(expected >= turn1.prompt_ids.len(), "turn 2 extends turn 1's prompt ({expected} shared)");
    let (out2, first2) = cached_call(&model, &mut engine, &mut cache, &turn2);
    eprintln!(
        "turn 2: {} prompt tokens, {} cached, first pass {first2}",
        turn2.prompt_ids.len(),
        out2.usage.cached_tokens
    );
    assert_eq!(out2.usage.cached_tokens, expected);
    assert_eq!(first2, turn2.prompt_ids.len() - expected, "the first pass runs only the new tokens");
    assert_eq!(out2.ids, fresh(&model, &mut reference, &turn2), "reuse changed the answer");

    let no_cache = GenerateRequest { cache_prompt: false, ..turn2.clone() };
    let (out3, first3) = cached_call(&model, &mut engine, &mut cache, &no_cache);
    assert_eq!((out3.usage.cached_tokens, first3), (0, turn2.prompt_ids.len()));
    assert_eq!(out3.ids, out2.ids);
    // The same prompt again: everything but its last token is reused.
    let (out4, first4) = cached_call(&model, &mut engine, &mut cache, &turn2);
    assert_eq!((out4.usage.cached_tokens, first4), (turn2.prompt_ids.len() - 1, 1));
    assert_eq!(out4.ids, out2.ids);
}

/// An agent-like loop: a long fixed prefix (instructions, tools, a page), then each step's history
/// and observation. From step 2 on, each call runs only what is new, with the fresh ids.
#[test]
fn an_agent_loop_prefills_only_what_each_step_adds() {
    let mut model = Model::open(common::smollm2_package()).expect("open");
    let mut engine = FastEngine::from_source(&model.package).unwrap();
    let mut reference = FastEngine::from_source(&model.package).unwrap();
    let mut cache = PromptCache::default();
    let page: String = (1..=30).map(|i| format!("[{i}] link \"Article {i} about gardening\"\n")).collect();
    let system = format!(
        "You control a browser. Tools: click(index), type(index, text), scroll(), done(answer). \
         Reply with one tool call per step.\nPage:\n{page}"
    );
    let mut messages =
        vec![ChatMessage::new("system", &system), ChatMessage::new("user", "Find the article about roses.")];
    let mut previous: Option<GenerateOutput> = None;
    for step in 1..=5 {
        let req = request(model.encode_chat(&messages).unwrap(), 12);
        let (out, first) = cached_call(&model, &mut engine, &mut cache, &req);
        let expected = previous.as_ref().map_or(0, |p| shared_prefix(&ran(p), &req.prompt_ids));
        eprintln!(
            "step {step}: {} prompt tokens, {} cached, first pass {first}",
            req.prompt_ids.len(),
            out.usage.cached_tokens
        );
        assert_eq!(out.usage.cached_tokens, expected, "step {step}");
        assert_eq!(first, req.prompt_ids.len() - expected, "step {step}");
        if step > 1 {
            assert!(expected > 300, "step {step} reuses the long prefix ({expected} tokens)");
        }
        assert_eq!(out.ids, fresh(&model, &mut reference, &req), "step {step}: reuse changed the ids");
        messages.push(ChatMessage::new("assistant", &out.text));
        messages.push(ChatMessage::new(
            "user",
            &format!("Observation {step}: the page scrolled; nothing about roses yet."),
        ));
        previous = Some(out);
    }
}

/// Sliding-window layers keep rings of more than their window (`ring_rows`): continuing from the end
/// of what ran reuses them even far past the window, and so does a prompt that diverges more than a
/// window (but less than the ring) before the end, as an agent's next step does; one that diverges
/// earlier than the ring still holds runs in full (0 cached) — and every time the ids are the fresh
/// engine's. Gemma 3 270M (window 512, 5 of 6 layers local) and the tiny Gemma 3 (window 8, so every
/// reuse is past it, and a ring of 24 that a short prompt outruns).
#[test]
fn sliding_window_models_reuse_only_what_their_rings_still_hold() {
    let tiny_dir = tempfile::tempdir().unwrap();
    let tiny = tiny_dir.path().join("gemma3");
    convert(&common::repo_root().join("tests/fixtures/tiny/gemma3.gguf"), &tiny, &ConvertOptions::default()).unwrap();
    let mut outran_a_ring = false;
    for (package, words) in [(common::gemma3_package(), 260), (tiny, 30)] {
        let mut model = Model::open(&package).expect("open");
        let window = model.package.manifest.config.sliding_window.expect("a windowed model");
        let mut engine = FastEngine::from_source(&model.package).unwrap();
        let mut reference = FastEngine::from_source(&model.package).unwrap();
        let mut cache = PromptCache::default();
        let long: String = (0..words).map(|i| format!("w{} ", i % 17)).collect();
        let first = request(model.encode_text(&long).unwrap(), 6);
        assert!(first.prompt_ids.len() > window + 8, "{} tokens for window {window}", first.prompt_ids.len());
        let (out1, _) = cached_call(&model, &mut engine, &mut cache, &first);

        // Continue after everything that ran: reused, though the rings wrapped long ago.
        let mut cont = ran(&out1);
        cont.extend(model.encode_text(" and then").unwrap().into_iter().skip(1));
        let cont = request(cont, 6);
        let (out2, first2) = cached_call(&model, &mut engine, &mut cache, &cont);
        assert_eq!(out2.usage.cached_tokens, ran(&out1).len(), "{}", package.display());
        assert_eq!(first2, cont.prompt_ids.len() - ran(&out1).len());
        assert_eq!(out2.ids, fresh(&model, &mut reference, &cont), "{}: reuse changed the ids", package.display());

        // Diverge a window and a bit before the end: inside the ring's slack, so reused.
        let keep = ran(&out2).len() - window - 4;
        let mut near = ran(&out2)[..keep].to_vec();
        near.extend(model.encode_text(" something else").unwrap().into_iter().skip(1));
        let near = request(near, 6);
        let (out4, first4) = cached_call(&model, &mut engine, &mut cache, &near);
        assert_eq!((out4.usage.cached_tokens, first4), (keep, near.prompt_ids.len() - keep), "{}", package.display());
        assert_eq!(out4.ids, fresh(&model, &mut reference, &near), "{}: reuse changed the ids", package.display());

        // Diverge earlier than the ring holds: run all.
        let (held, cached) = (ring_rows(window), ran(&out4));
        if cached.len() > held + 8 {
            outran_a_ring = true;
            let mut early = cached[..cached.len() - held - 4].to_vec();
            early.extend(model.encode_text(" something else").unwrap().into_iter().skip(1));
            let early = request(early, 6);
            let (out5, first5) = cached_call(&model, &mut engine, &mut cache, &early);
            assert_eq!((out5.usage.cached_tokens, first5), (0, early.prompt_ids.len()), "{}", package.display());
            assert_eq!(out5.ids, fresh(&model, &mut reference, &early));
        }
    }
    assert!(outran_a_ring, "no prompt was longer than a ring");
}
