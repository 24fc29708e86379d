//! Tool calls (issue 15, item 3) on the real SmolLM2 with the fast CPU engine: a required or named
//! choice always yields calls of allowed functions whose arguments validate against their schemas
//! (checked with the `jsonschema` crate), "auto" constrains a call once it is opened, and a whole
//! round trip (call, tool result, answer) runs, reusing the cached prefix.

use hearth_core::chat::ChatMessage;
use hearth_core::constrain::ResponseFormat;
use hearth_core::fast::FastEngine;
use hearth_core::generate::{generate_cached, FinishReason, GenerateOutput, GenerateRequest, PromptCache};
use hearth_core::model::Model;
use hearth_core::sampling::{mask_allows, SamplingParams};
use hearth_core::tools::{ToolCall, ToolChoice, Tools};
use hearth_core::HearthError;
use serde_json::{json, Value};

mod common;

fn tools(choice: ToolChoice) -> Tools {
    let mut t: Tools = serde_json::from_value(json!({ "tools": [
        { "type": "function", "function": {
            "name": "get_weather", "description": "Current weather in a city",
            "parameters": { "type": "object", "properties": {
                "city": { "type": "string", "minLength": 1, "maxLength": 40 },
                "unit": { "enum": ["celsius", "fahrenheit"] } },
              "required": ["city", "unit"], "additionalProperties": false } } },
        { "type": "function", "function": {
            "name": "search_web", "description": "Search the web",
            "parameters": { "type": "object", "properties": {
                "query": { "type": "string", "maxLength": 60 },
                "max_results": { "type": "integer", "minimum": 1, "maximum": 10 } },
              "required": ["query"], "additionalProperties": false } } },
        { "type": "function", "function": { "name": "get_time", "description": "The current time" } }
    ]}))
    .expect("tools");
    t.tool_choice = choice;
    t
}

/// What a call's arguments must satisfy: its tool's schema (no arguments: an empty object).
fn schema_of(tools: &Tools, name: &str) -> Option<Value> {
    let tool = tools.tools.iter().find(|t| t.function.name == name)?;
    Some(tool.function.parameters.clone().unwrap_or(json!({ "type": "object", "maxProperties": 0 })))
}

fn run(
    model: &mut Model,
    engine: &mut FastEngine,
    cache: &mut PromptCache,
    messages: &[ChatMessage],
    tools: &Tools,
    sampling: SamplingParams,
) -> hearth_core::Result<GenerateOutput> {
    let prompt_ids = model.encode_chat_with_tools(messages, tools)?;
    let req = GenerateRequest { prompt_ids, max_tokens: 120, sampling, tools: tools.clone(), ..Default::default() };
    generate_cached(engine, model.tokenizer(), &req, cache, &|| 0.0, &mut |_| Ok(()))
}

/// Why the output's calls are not valid calls of `tools` (names allowed, arguments valid), or None.
fn invalid_calls(tools: &Tools, allowed: &[&str], out: &GenerateOutput) -> Option<String> {
    if out.finish_reason != FinishReason::ToolCalls || out.tool_calls.is_empty() {
        return Some(format!("finish {:?} with {} calls", out.finish_reason, out.tool_calls.len()));
    }
    for call in &out.tool_calls {
        if !allowed.contains(&call.name.as_str()) {
            return Some(format!("called {:?}", call.name));
        }
        let schema = schema_of(tools, &call.name)?;
        let args: Value = match serde_json::from_str(&call.arguments) {
            Ok(v) => v,
            Err(e) => return Some(format!("arguments are not JSON ({e}): {}", call.arguments)),
        };
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        let first_error = validator.iter_errors(&args).next().map(|e| e.to_string());
        if let Some(e) = first_error {
            return Some(format!("{}: {e}", call.arguments));
        }
    }
    None
}

const PROMPTS: [&str; 4] = [
    "What's the weather like in Paris right now?",
    "Find me three articles about growing roses.",
    "What time is it?",
    "Tell me a joke.",
];

/// `required`: every prompt (one not about any tool too), greedy and at temperature 1, gives calls
/// of the tools with valid arguments, and the generation ends after them.
#[test]
fn required_and_named_choices_always_give_valid_calls() {
    let mut model = Model::open(common::smollm2_package()).expect("open SmolLM2");
    let mut engine = FastEngine::from_source(&model.package).expect("load");
    let mut cache = PromptCache::default();
    let sampled = SamplingParams { temperature: 1.0, seed: 11, ..Default::default() };
    let all = ["get_weather", "search_web", "get_time"];
    let mut failures = Vec::new();
    for prompt in PROMPTS {
        let messages = [ChatMessage::new("user", prompt)];
        for (choice, allowed) in
            [(ToolChoice::Required, &all[..]), (ToolChoice::Function("search_web".into()), &["search_web"][..])]
        {
            // Greedy with parallel calls allowed; sampled with one call, since at temperature 1
            // this small model keeps adding calls until the token budget ends.
            for (sampling, parallel) in [(SamplingParams::default(), true), (sampled.clone(), false)] {
                let tools = Tools { parallel_tool_calls: parallel, ..tools(choice.clone()) };
                let out =
                    run(&mut model, &mut engine, &mut cache, &messages, &tools, sampling.clone()).expect("generate");
                eprintln!("{prompt} / {choice:?} / t={}: {:?} {:?}", sampling.temperature, out.text, out.tool_calls);
                if let Some(why) = invalid_calls(&tools, allowed, &out) {
                    failures.push(format!("{prompt} / {choice:?} / t={}: {why}", sampling.temperature));
                }
            }
        }
    }
    assert!(failures.is_empty(), "invalid calls:\n{}", failures.join("\n"));
}

/// The check above can fail: a call of a tool not allowed, or arguments against the schema.
#[test]
fn the_call_check_rejects_what_the_grammar_forbids() {
    let tools = tools(ToolChoice::Required);
    let out = |name: &str, arguments: &str| -> GenerateOutput {
        serde_json::from_value(json!({"prompt_ids": [], "ids": [], "text": "", "top_logits": [],
            "finish_reason": "tool_calls", "usage": {"prompt_tokens": 0, "completion_tokens": 0,
            "prefill_tok_s": 0.0, "decode_tok_s": 0.0, "ttft_s": 0.0},
            "tool_calls": [{"name": name, "arguments": arguments}]}))
        .expect("an output")
    };
    let all = ["get_weather", "search_web", "get_time"];
    assert!(invalid_calls(&tools, &all, &out("get_weather", r#"{"city": "Paris", "unit": "celsius"}"#)).is_none());
    assert!(invalid_calls(&tools, &all, &out("get_weather", r#"{"city": "Paris", "unit": "kelvin"}"#)).is_some());
    assert!(invalid_calls(&tools, &all, &out("get_weather", r#"{"city": "Paris"}"#)).is_some());
    assert!(invalid_calls(&tools, &["search_web"], &out("get_weather", r#"{"city": "Paris"}"#)).is_some());
    assert!(invalid_calls(&tools, &all, &out("get_time", r#"{"x": 1}"#)).is_some());
}

/// `auto`: plain text may end anywhere, but once the text opens a call the grammar takes over:
/// the call's opening and (with one tool) its name are forced, and nothing but valid arguments
/// is allowed.
#[test]
fn auto_constrains_a_call_once_it_is_opened() {
    let mut model = Model::open(common::smollm2_package()).expect("open SmolLM2");
    let text_ids = model.prompter.tokenizer.encode("Let me check. <tool_call>", false, false).expect("encode");
    let tok = model.tokenizer();
    let mut one = tools(ToolChoice::Auto);
    one.tools.truncate(1);
    let grammars = tok.grammars().expect("grammars");
    let mut c = grammars.constraint_with_tools(&ResponseFormat::Text, &one).expect("compile").expect("a constraint");
    let eos = tok.info().stop_ids[0];
    for id in text_ids {
        let mask = c.mask().expect("mask");
        assert!(mask_allows(&mask, id), "text before a call must be free");
        assert!(mask_allows(&mask, eos), "plain text may end at any point");
        c.commit(id).expect("commit");
    }
    let forced = tok.decode(&c.forced().expect("forced"), false).expect("decode");
    // (The space after the colon is not forced alone: the model may write it with the brace.)
    assert_eq!(forced, "\n{\"name\": \"get_weather\", \"arguments\":", "opening and name are forced");
    let mask = c.mask().expect("mask");
    assert!(!mask_allows(&mask, eos), "a call cannot end before its arguments");
    let allowed: Vec<String> = (0..tok.vocab_size() as u32)
        .filter(|&t| mask_allows(&mask, t))
        .map(|t| tok.decode(&[t], false).expect("decode"))
        .collect();
    assert!(allowed.iter().any(|s| s.trim() == "{"), "the arguments object may open");
    for s in &allowed {
        assert!(
            s.trim().is_empty() || s.trim_start().starts_with('{'),
            "only the arguments object may follow, not {s:?}"
        );
    }
}

/// A call, its result as a `tool` message, and the answer: the second turn's prompt shows the call
/// as the model wrote it and the tool's result, and reuses the first turn's cache.
#[test]
fn a_round_trip_call_result_answer_works_and_reuses_the_prefix() {
    let mut model = Model::open(common::smollm2_package()).expect("open SmolLM2");
    let mut engine = FastEngine::from_source(&model.package).expect("load");
    let mut cache = PromptCache::default();
    let tools_required = tools(ToolChoice::Function("get_weather".into()));
    let mut messages = vec![ChatMessage::new("user", "What's the weather like in Paris?")];
    let first = run(&mut model, &mut engine, &mut cache, &messages, &tools_required, SamplingParams::default())
        .expect("turn 1");
    assert_eq!(first.finish_reason, FinishReason::ToolCalls);
    let mut assistant = ChatMessage::new("assistant", "");
    for (i, call) in first.tool_calls.iter().enumerate() {
        let args: Value = serde_json::from_str(&call.arguments).expect("JSON arguments");
        eprintln!("call: {} {args}", call.name);
        assistant.tool_calls.push(ToolCall {
            id: format!("call_{i}"),
            kind: Default::default(),
            function: call.clone(),
        });
    }
    let results: Vec<ChatMessage> = (0..first.tool_calls.len())
        .map(|i| {
            let mut result = ChatMessage::new("tool", r#"{"temperature": 18, "sky": "cloudy"}"#);
            result.tool_call_id = Some(format!("call_{i}"));
            result
        })
        .collect();
    messages.push(assistant);
    messages.extend(results);
    let auto = tools(ToolChoice::Auto);
    let rendered = model.prompter.render_chat(&messages, &auto).expect("render");
    assert!(rendered.contains("<tool_response>\n{\"temperature\": 18"), "{rendered}");
    assert!(rendered.contains(&first.text), "the call as generated is in the history: {rendered}");

    let second =
        run(&mut model, &mut engine, &mut cache, &messages, &tools(ToolChoice::None), SamplingParams::default())
            .expect("turn 2");
    eprintln!("answer: {:?} (cached {} of {})", second.text, second.usage.cached_tokens, second.usage.prompt_tokens);
    assert_eq!(second.finish_reason, FinishReason::Stop);
    assert!(second.tool_calls.is_empty() && !second.text.contains("<tool_call>"));
    assert!(!second.text.trim().is_empty());
    // The tools were shown the same way in both turns and the history is the generated text, so
    // the whole first prompt is reused.
    assert!(second.usage.cached_tokens >= first.prompt_ids.len(), "{} cached", second.usage.cached_tokens);
}

#[test]
fn bad_tool_requests_are_rejected_before_any_token() {
    let mut model = Model::open(common::smollm2_package()).expect("open SmolLM2");
    let mut engine = FastEngine::from_source(&model.package).expect("load");
    let mut cache = PromptCache::default();
    let messages = [ChatMessage::new("user", "Hi")];
    let mut bad_schema = tools(ToolChoice::Required);
    bad_schema.tools[0].function.parameters =
        Some(json!({ "type": "object", "properties": { "x": { "type": "nonsense" } } }));
    let mut with_regex = tools(ToolChoice::Auto);
    with_regex.tool_choice = ToolChoice::Auto;
    for (what, t, format) in [
        ("unknown named tool", tools(ToolChoice::Function("nope".into())), ResponseFormat::Text),
        ("invalid schema", bad_schema, ResponseFormat::Text),
        ("regex with auto", with_regex, ResponseFormat::Regex { pattern: "a+".into() }),
    ] {
        let prompt_ids = model.encode_chat_with_tools(&messages, &t).expect("encode");
        let req =
            GenerateRequest { prompt_ids, max_tokens: 8, tools: t, response_format: format, ..Default::default() };
        let err = generate_cached(&mut engine, model.tokenizer(), &req, &mut cache, &|| 0.0, &mut |_| Ok(()))
            .expect_err(what);
        eprintln!("{what}: {err}");
        assert!(matches!(err, HearthError::InvalidArgument(_)), "{what}: {err}");
    }
}
