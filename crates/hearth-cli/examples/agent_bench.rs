//! Issue 15's figures: decode speed with and without a JSON Schema constraint, the mask's cost per
//! token, and the time to first token of a chat's second turn and an agent loop's fifth step with
//! and without prefix reuse. Prints one JSON object.
//!
//! `cargo run --release -p hearth-cli --example agent_bench -- PACKAGE [--gpu]`

use std::time::Instant;

use anyhow::{Context, Result};
use hearth_core::chat::ChatMessage;
use hearth_core::constrain::{JsonSchemaFormat, ResponseFormat};
use hearth_core::fast::FastEngine;
use hearth_core::generate::{generate_cached, Backend, GenerateOutput, GenerateRequest, PromptCache};
use hearth_core::model::Model;
use hearth_gpu::{GpuContext, GpuEngine};
use serde_json::json;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().context("usage: agent_bench PACKAGE [--gpu]")?;
    let mut model = Model::open(dir)?;
    // Both engines hold the same positions, so a LongRoPE model (Phi-3) rotates alike on either.
    const CONTEXT: usize = 4096;
    let (name, mut engine): (String, Box<dyn Backend>) = if args.iter().any(|a| a == "--gpu") {
        let ctx = GpuContext::new()?.context("no GPU adapter")?;
        let name = ctx.adapter_name.clone();
        (name, Box::new(GpuEngine::new(ctx, &model.package, Some(CONTEXT))?))
    } else {
        ("cpu (fast engine)".into(), Box::new(FastEngine::from_source_with_context(&model.package, CONTEXT)?))
    };
    let clock = Instant::now();
    let now = || clock.elapsed().as_secs_f64();
    let call = |model: &mut Model, engine: &mut dyn Backend, cache: &mut PromptCache, req: &GenerateRequest| {
        generate_cached(engine, model.tokenizer(), req, cache, &now, &mut |_| Ok(()))
    };

    // Decode with and without a constraint: the same prompt, free text, then a schema whose
    // answer is long (8 objects).
    let schema = json!({
        "type": "array", "minItems": 8, "maxItems": 8,
        "items": { "type": "object", "additionalProperties": false, "required": ["fruit", "colour"],
                   "properties": { "fruit": { "type": "string", "maxLength": 20 },
                                   "colour": { "type": "string", "maxLength": 12 } } }
    });
    let ask = [ChatMessage::new("user", "List eight fruits and their colours as a JSON array of {fruit, colour}.")];
    let prompt_ids = model.encode_chat(&ask)?;
    let free =
        GenerateRequest { prompt_ids: prompt_ids.clone(), max_tokens: 96, cache_prompt: false, ..Default::default() };
    let format = ResponseFormat::JsonSchema {
        json_schema: JsonSchemaFormat { name: None, description: None, schema, strict: None },
    };
    let constrained = GenerateRequest { response_format: format.clone(), max_tokens: 200, ..free.clone() };
    let mut cache = PromptCache::default();
    call(&mut model, engine.as_mut(), &mut cache, &free)?; // warm-up
                                                           // Generated tokens after the first per second of the time after the first (forced tokens
                                                           // count: they are output too, though they run in chunks).
    let timed = |out: GenerateOutput, started: f64| {
        let rate = (out.ids.len() as f64 - 1.0) / (now() - started - out.usage.ttft_s);
        (out, rate)
    };
    let t = now();
    let (f, free_rate) = timed(call(&mut model, engine.as_mut(), &mut cache, &free)?, t);
    let t = now();
    let (c, constrained_rate) = timed(call(&mut model, engine.as_mut(), &mut cache, &constrained)?, t);

    // The mask alone: replay the constrained output through a fresh constraint, timing each mask.
    let mut constraint = model.tokenizer().grammars()?.constraint(&format)?.context("a constraint")?;
    // Tokens the grammar forces are skipped (no mask was computed for them).
    let mut forced = constraint.forced()?.len();
    let (mut masks, t0) = (0usize, Instant::now());
    for &id in &c.ids {
        if forced > 0 {
            forced -= 1;
            continue;
        }
        constraint.mask()?;
        masks += 1;
        constraint.commit(id)?;
        forced = constraint.forced()?.len();
    }
    let mask_ms = t0.elapsed().as_secs_f64() * 1e3 / masks.max(1) as f64;

    // A chat's second turn, and an agent loop's fifth step, with and without reuse.
    let ttft = |out: &GenerateOutput| json!({ "ttft_s": out.usage.ttft_s, "prompt_tokens": out.usage.prompt_tokens, "cached_tokens": out.usage.cached_tokens });
    let mut messages = vec![ChatMessage::new("user", "Name three rivers in Europe.")];
    let turn1 = GenerateRequest { prompt_ids: model.encode_chat(&messages)?, max_tokens: 48, ..Default::default() };
    let out1 = call(&mut model, engine.as_mut(), &mut cache, &turn1)?;
    messages.push(ChatMessage::new("assistant", &out1.text));
    messages.push(ChatMessage::new("user", "Which of them is the longest?"));
    let turn2 = GenerateRequest { prompt_ids: model.encode_chat(&messages)?, max_tokens: 8, ..Default::default() };
    let reused = call(&mut model, engine.as_mut(), &mut cache, &turn2)?;
    let no_reuse = call(&mut model, engine.as_mut(), &mut cache, &GenerateRequest { cache_prompt: false, ..turn2 })?;

    let page: String = (1..=40).map(|i| format!("[{i}] link \"Article {i} about gardening\"\n")).collect();
    let system = format!("You control a browser. Tools: click(index), scroll(), done(answer).\nPage:\n{page}");
    let mut loop_messages = vec![ChatMessage::new("system", &system), ChatMessage::new("user", "Find roses.")];
    let mut step5 = None;
    for step in 1..=5 {
        let req =
            GenerateRequest { prompt_ids: model.encode_chat(&loop_messages)?, max_tokens: 12, ..Default::default() };
        let out = call(&mut model, engine.as_mut(), &mut cache, &req)?;
        if step == 5 {
            let fresh = call(&mut model, engine.as_mut(), &mut cache, &GenerateRequest { cache_prompt: false, ..req })?;
            step5 = Some((out, fresh));
            break;
        }
        loop_messages.push(ChatMessage::new("assistant", &out.text));
        loop_messages.push(ChatMessage::new("user", &format!("Observation {step}: nothing about roses yet.")));
    }
    let (step5, step5_fresh) = step5.context("five steps")?;

    println!(
        "{}",
        json!({
            "engine": name,
            "decode_tok_s": { "free": free_rate, "json_schema": constrained_rate,
                               "free_tokens": f.ids.len(), "json_schema_tokens": c.ids.len(),
                               "json_schema_forward_passes_per_s": c.usage.decode_tok_s },
            "mask_ms_per_token": mask_ms,
            "chat_turn_2": { "reused": ttft(&reused), "not_reused": ttft(&no_reuse) },
            "agent_step_5": { "reused": ttft(&step5), "not_reused": ttft(&step5_fresh) },
        })
    );
    Ok(())
}
