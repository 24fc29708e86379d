//! Issue 15 on the GPU engine with the real SmolLM2: constrained output chooses the same ids with
//! the mask applied on the GPU (`sample.wgsl`) as with the logits read back and masked on the CPU
//! (a required tool call too), and prefix reuse gives a fresh engine's ids.

mod common;

use common::{repo_root, run, smollm2};
use hearth_core::chat::ChatMessage;
use hearth_core::constrain::{JsonSchemaFormat, ResponseFormat};
use hearth_core::generate::{generate_cached, FinishReason, GenerateOutput, GenerateRequest, PromptCache};
use hearth_core::model::Model;
use hearth_core::tools::Tools;
use hearth_gpu::GpuEngine;

/// `req` with the mask applied on the GPU, then with the logits read back and masked on the CPU
/// (`margins`). The prompt runs once, before both (on lavapipe each prompt token costs a fifth of a
/// second): each of the two then takes it from the cache but for its last token, so both compute
/// exactly the same logits.
fn both_masks(model: &Model, engine: &mut GpuEngine, req: &GenerateRequest) -> (GenerateOutput, GenerateOutput) {
    let mut cache = PromptCache::default();
    let mut cached = |req: &GenerateRequest| {
        generate_cached(engine, model.tokenizer(), req, &mut cache, &|| 0.0, &mut |_| Ok(())).unwrap()
    };
    // Unconstrained: a constraint's forced opening could use up a budget of 1 before the prompt runs.
    cached(&GenerateRequest { prompt_ids: req.prompt_ids.clone(), max_tokens: 1, ..Default::default() });
    let on_gpu = cached(req);
    let on_cpu = cached(&GenerateRequest { margins: true, ..req.clone() });
    for out in [&on_gpu, &on_cpu] {
        assert_eq!(out.usage.cached_tokens, req.prompt_ids.len() - 1, "the prompt came from the cache");
    }
    (on_gpu, on_cpu)
}

/// Greedy constrained generations: `margins` reads each step's logits back and chooses on the CPU
/// (hearth_core's `apply_mask` then argmax); without it the GPU sampler applies the uploaded mask.
/// Same ids, and every output is complete JSON / matches its pattern.
#[test]
fn the_gpu_mask_chooses_what_the_cpu_mask_chooses() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((mut model, mut engine)) = smollm2(tmp.path(), 1024) else {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
        return;
    };
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/schemas/json_schemas.json")).unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    // One schema (an agent's action), one pattern and one required tool call: on lavapipe each
    // generated token costs a third of a second or more.
    let picked = ["browser-action"];
    let mut formats: Vec<(String, String, ResponseFormat)> = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| picked.contains(&c["name"].as_str().unwrap()))
        .map(|c| {
            let schema = c["schema"].clone();
            // The schema is not repeated in the prompt (the constraint holds the output to it):
            // on lavapipe every prompt token costs a fifth of a second.
            let prompt = c["prompt"].as_str().unwrap().to_string();
            let format = JsonSchemaFormat { name: None, description: None, schema, strict: None };
            (c["name"].as_str().unwrap().to_string(), prompt, ResponseFormat::JsonSchema { json_schema: format })
        })
        .collect();
    assert_eq!(formats.len(), picked.len());
    formats.push((
        "regex".into(),
        "Give a US phone number.".into(),
        ResponseFormat::Regex { pattern: r"\(\d{3}\) \d{3}-\d{4}".into() },
    ));
    for (name, prompt, format) in formats {
        let prompt_ids = model.encode_chat(&[ChatMessage::new("user", &prompt)]).unwrap();
        let req = GenerateRequest { prompt_ids, max_tokens: 40, response_format: format.clone(), ..Default::default() };
        let (on_gpu, on_cpu) = both_masks(&model, &mut engine, &req);
        eprintln!("{name}: {:?}", on_gpu.text);
        assert_eq!(on_gpu.ids, on_cpu.ids, "{name}: GPU-masked {:?} vs CPU-masked {:?}", on_gpu.text, on_cpu.text);
        assert_eq!(on_gpu.finish_reason, FinishReason::Stop, "{name}: {:?}", on_gpu.text);
        match format {
            ResponseFormat::Regex { .. } => {
                let digits = on_gpu.text.chars().filter(char::is_ascii_digit).count();
                assert!(on_gpu.text.starts_with('(') && digits == 10, "{:?}", on_gpu.text);
            }
            _ => {
                serde_json::from_str::<serde_json::Value>(&on_gpu.text).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
    // A required tool call: the calls' grammar through the same mask.
    let tools: Tools = serde_json::from_value(serde_json::json!({
        "tools": [{ "type": "function", "function": { "name": "get_weather", "parameters": {
            "type": "object", "properties": { "city": { "type": "string", "maxLength": 30 } }, "required": ["city"] } } }],
        "tool_choice": "required",
        "parallel_tool_calls": false
    }))
    .unwrap();
    let messages = [ChatMessage::new("user", "What's the weather like in Paris?")];
    let prompt_ids = model.encode_chat_with_tools(&messages, &tools).unwrap();
    let req = GenerateRequest { prompt_ids, max_tokens: 40, tools, ..Default::default() };
    let (on_gpu, on_cpu) = both_masks(&model, &mut engine, &req);
    eprintln!("tool call: {:?}", on_gpu.tool_calls);
    assert_eq!(on_gpu.ids, on_cpu.ids, "tool call: GPU-masked {:?} vs CPU-masked {:?}", on_gpu.text, on_cpu.text);
    assert_eq!(on_gpu.finish_reason, FinishReason::ToolCalls, "{:?}", on_gpu.text);
    assert_eq!(on_gpu.tool_calls.len(), 1);
    let args: serde_json::Value = serde_json::from_str(&on_gpu.tool_calls[0].arguments).unwrap();
    assert!(args["city"].is_string(), "{args}");
}

/// A second chat turn on the GPU engine runs only its new tokens and gives a fresh engine's ids.
#[test]
fn a_second_turn_on_the_gpu_reuses_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((mut model, mut engine)) = smollm2(tmp.path(), 1024) else {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test !!!\n");
        return;
    };
    let mut cache = PromptCache::default();
    let mut messages = vec![ChatMessage::new("user", "Name two colours of the rainbow.")];
    let turn1 =
        GenerateRequest { prompt_ids: model.encode_chat(&messages).unwrap(), max_tokens: 12, ..Default::default() };
    let out1 = generate_cached(&mut engine, model.tokenizer(), &turn1, &mut cache, &|| 0.0, &mut |_| Ok(())).unwrap();
    messages.push(ChatMessage::new("assistant", &out1.text));
    messages.push(ChatMessage::new("user", "And one more?"));
    let turn2 =
        GenerateRequest { prompt_ids: model.encode_chat(&messages).unwrap(), max_tokens: 12, ..Default::default() };
    let out2 = generate_cached(&mut engine, model.tokenizer(), &turn2, &mut cache, &|| 0.0, &mut |_| Ok(())).unwrap();
    eprintln!("turn 2: {} prompt tokens, {} cached: {:?}", turn2.prompt_ids.len(), out2.usage.cached_tokens, out2.text);
    assert!(out2.usage.cached_tokens >= turn1.prompt_ids.len(), "turn 1's prompt is reused");
    let fresh = run(&model, &mut engine, &turn2);
    assert_eq!(out2.ids, fresh.ids, "reuse changed the answer: {:?} vs {:?}", out2.text, fresh.text);
}
