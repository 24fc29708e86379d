//! Constrained generation (issue 15) on the real SmolLM2 (byte-level BPE) and Gemma 3 270M
//! (SentencePiece byte fallback) with the fast CPU engine: every output is checked by a validator
//! no one here wrote (the `jsonschema` crate, the `regex` crate) or by a parser written in this file
//! for the grammar's language.

mod common;

use common::Recording;
use hearth_core::chat::ChatMessage;
use hearth_core::constrain::{JsonSchemaFormat, ResponseFormat};
use hearth_core::fast::FastEngine;
use hearth_core::generate::{generate, Backend, FinishReason, GenerateOutput, GenerateRequest};
use hearth_core::model::Model;
use hearth_core::sampling::{mask_allows, SamplingParams};
use hearth_core::HearthError;
use serde_json::Value;

struct Run {
    out: GenerateOutput,
    passes: usize,
}

/// Chat messages (through the model's template), or plain text for a model without one.
enum Prompt<'a> {
    Chat(&'a [ChatMessage]),
    Text(&'a str),
}

fn run(
    model: &mut Model,
    engine: &mut dyn Backend,
    prompt: Prompt,
    format: ResponseFormat,
    sampling: SamplingParams,
    max_tokens: usize,
) -> hearth_core::Result<Run> {
    let prompt_ids = match prompt {
        Prompt::Chat(messages) => model.encode_chat(messages)?,
        Prompt::Text(text) => model.encode_text(text)?,
    };
    let req = GenerateRequest {
        prompt_ids,
        max_tokens,
        sampling,
        stop_strings: Vec::new(),
        top_logits: 0,
        margins: false,
        response_format: format,
        cache_prompt: true,
        ..Default::default()
    };
    let mut counting = Recording { inner: engine, runs: Vec::new() };
    let mut streamed = String::new();
    let out = generate(&mut counting, model.tokenizer(), &req, &|| 0.0, &mut |piece| {
        streamed.push_str(piece);
        Ok(())
    })?;
    // Forced text (a constant output too) streams like sampled text.
    assert_eq!(streamed, out.text, "the streamed pieces are not the output");
    Ok(Run { out, passes: counting.runs.len() })
}

fn schema_format(schema: &Value) -> ResponseFormat {
    ResponseFormat::JsonSchema {
        json_schema: JsonSchemaFormat { name: None, description: None, schema: schema.clone(), strict: Some(true) },
    }
}

fn schema_messages(schema: &Value, prompt: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", &format!("Reply with JSON only, valid against this JSON Schema: {schema}")),
        ChatMessage::new("user", prompt),
    ]
}

fn greedy() -> SamplingParams {
    SamplingParams::default()
}

/// Temperature 1 over the whole vocabulary: the constraint alone keeps the output valid.
fn sampled() -> SamplingParams {
    SamplingParams { temperature: 1.0, seed: 7, ..Default::default() }
}

/// Why `text` is not a valid instance of `schema` (formats checked too), or None.
fn invalid(schema: &Value, text: &str) -> Option<String> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON ({e})")),
    };
    let validator = jsonschema::options().should_validate_formats(true).build(schema).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// The 33 schemas of `tests/fixtures/schemas/json_schemas.json`, greedy and sampled at temperature
/// 1: every output ends because the schema is complete (not by the token budget) and validates.
#[test]
fn every_schema_of_the_suite_gives_valid_json_greedy_and_sampled() {
    let fx = common::fixture("schemas/json_schemas.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30);
    let mut model = Model::open(common::smollm2_package()).expect("open SmolLM2");
    let mut engine = FastEngine::from_source(&model.package).expect("load");
    let mut failures = Vec::new();
    for case in cases {
        let (name, schema) = (case["name"].as_str().unwrap(), &case["schema"]);
        let messages = schema_messages(schema, case["prompt"].as_str().unwrap());
        for (how, sampling) in [("greedy", greedy()), ("sampled", sampled())] {
            let r = match run(&mut model, &mut engine, Prompt::Chat(&messages), schema_format(schema), sampling, 400) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{name} ({how}): {e}"));
                    continue;
                }
            };
            let text = &r.out.text;
            eprintln!("{name} ({how}, {} tokens in {} passes): {text}", r.out.ids.len(), r.passes);
            if r.out.finish_reason != FinishReason::Stop {
                failures.push(format!("{name} ({how}): ended by {:?}: {text}", r.out.finish_reason));
            } else if let Some(why) = invalid(schema, text) {
                failures.push(format!("{name} ({how}): {why}: {text}"));
            } else if text.contains("\n\n") || text.contains(&" ".repeat(21)) {
                // A raw line break is whitespace between tokens (strings escape theirs).
                failures.push(format!("{name} ({how}): more whitespace in a gap than allowed: {text:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} outputs failed:\n{}", failures.len(), 2 * cases.len(), failures.join("\n"));
}

/// The validator used above does catch what the constraint prevents (so the suite can fail).
#[test]
fn the_validator_rejects_what_the_schemas_forbid() {
    let fx = common::fixture("schemas/json_schemas.json");
    let schema = &fx["cases"].as_array().unwrap().iter().find(|c| c["name"] == "nested-object").unwrap()["schema"];
    assert!(invalid(schema, r#"{"name":"A","address":{"city":"B","zip":"12345"}}"#).is_none());
    assert!(invalid(schema, r#"{"name":"A","address":{"city":"B","zip":"1234"}}"#).is_some());
    assert!(invalid(schema, r#"{"name":"A","address":{"city":"B","zip":"12345"},"x":1}"#).is_some());
    assert!(invalid(schema, r#"{"name":"A""#).is_some());
    let date = serde_json::json!({ "type": "string", "format": "date" });
    assert!(invalid(&date, r#""2024-02-30""#).is_some(), "formats are validated");
}

/// Regular expressions, on both tokenizer kinds: outputs match (checked with the `regex` crate).
#[test]
fn regex_outputs_match_on_byte_level_and_sentencepiece_vocabularies() {
    let cases = [
        ("Give a US phone number.", r"\(\d{3}\) \d{3}-\d{4}"),
        ("When was the Eiffel Tower finished? Give the date.", r"(19|18)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"),
        ("Is water wet? Answer yes or no, then explain in a few words.", r"(Yes|No), [a-z ,']{5,60}\."),
    ];
    for package in [common::smollm2_package(), common::gemma3_package()] {
        let mut model = Model::open(&package).expect("open");
        let mut engine = FastEngine::from_source(&model.package).expect("load");
        for (prompt, pattern) in cases {
            let whole = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
            for sampling in [greedy(), sampled()] {
                let text = format!("Question: {prompt}\nAnswer: ");
                let format = ResponseFormat::Regex { pattern: pattern.into() };
                let r = run(&mut model, &mut engine, Prompt::Text(&text), format, sampling, 120).unwrap();
                eprintln!("{} {pattern}: {:?}", package.display(), r.out.text);
                assert_eq!(r.out.finish_reason, FinishReason::Stop, "{:?}", r.out.text);
                assert!(whole.is_match(&r.out.text), "{:?} does not match {pattern}", r.out.text);
            }
        }
    }
}

/// A context-free grammar (nested lists, which no regular expression describes) checked by a
/// recursive-descent parser, and a grammar whose only continuation is long: the forced text runs
/// in one forward pass, not one per token.
#[test]
fn grammars_are_followed_and_forced_text_runs_in_one_pass() {
    let mut model = Model::open(common::smollm2_package()).expect("open");
    let mut engine = FastEngine::from_source(&model.package).expect("load");

    let nested = r#"
start: "Answer: " list "."
list: "[" item ("," " "? item)* "]"
item: WORD | list
WORD: /[a-z]{1,10}/
"#;
    for sampling in [greedy(), sampled()] {
        let messages = [ChatMessage::new("user", "Group the animals cat, dog, eagle and owl into nested lists.")];
        let format = ResponseFormat::Grammar { grammar: nested.into() };
        let r = run(&mut model, &mut engine, Prompt::Chat(&messages), format, sampling, 200).unwrap();
        eprintln!("nested: {:?}", r.out.text);
        assert_eq!(r.out.finish_reason, FinishReason::Stop, "{:?}", r.out.text);
        assert!(parses_as_nested_answer(&r.out.text), "{:?} is not in the grammar's language", r.out.text);
    }

    let suffix = " -- this line was written under a grammar, and everything after the first word was forced";
    let forced = format!("start: \"Answer: \" WORD \"{suffix}.\"\nWORD: /[a-z]{{1,12}}/\n");
    let messages = [ChatMessage::new("user", "Name one colour.")];
    let format = ResponseFormat::Grammar { grammar: forced };
    let r = run(&mut model, &mut engine, Prompt::Chat(&messages), format, greedy(), 100).unwrap();
    let whole = regex::Regex::new(&format!("^Answer: [a-z]{{1,12}}{}\\.$", regex::escape(suffix))).unwrap();
    eprintln!("forced: {:?}, {} tokens in {} passes", r.out.text, r.out.ids.len(), r.passes);
    assert_eq!(r.out.finish_reason, FinishReason::Stop);
    assert!(whole.is_match(&r.out.text), "{:?}", r.out.text);
    let suffix_tokens = model.prompter.tokenizer.encode(suffix, false, false).unwrap().len();
    // The opening "Answer: " runs with the prompt and the suffix after the word in one chunk: a
    // pass per token would make `passes` about `ids.len()`.
    assert!(
        r.passes + suffix_tokens - 2 <= r.out.ids.len(),
        "{} passes for {} tokens (suffix {suffix_tokens} tokens): forced tokens ran one by one",
        r.passes,
        r.out.ids.len()
    );
}

/// `Answer: ` list `.` where list = `[` item (`,` ` `? item)* `]`, item = a lowercase word or a list.
fn parses_as_nested_answer(text: &str) -> bool {
    fn list(s: &[u8], mut i: usize) -> Option<usize> {
        if s.get(i) != Some(&b'[') {
            return None;
        }
        i += 1;
        loop {
            i = item(s, i)?;
            match s.get(i) {
                Some(b']') => return Some(i + 1),
                Some(b',') => {
                    i += 1;
                    if s.get(i) == Some(&b' ') {
                        i += 1;
                    }
                }
                _ => return None,
            }
        }
    }
    fn item(s: &[u8], i: usize) -> Option<usize> {
        if s.get(i) == Some(&b'[') {
            return list(s, i);
        }
        let n = s[i..].iter().take_while(|c| c.is_ascii_lowercase()).count();
        (1..=10).contains(&n).then_some(i + n)
    }
    let Some(rest) = text.strip_prefix("Answer: ") else { return false };
    let s = rest.as_bytes();
    list(s, 0) == Some(s.len() - 1) && s.last() == Some(&b'.')
}

#[test]
fn the_nested_list_parser_rejects_what_the_grammar_does_not_produce() {
    assert!(parses_as_nested_answer("Answer: [cat, [dog,owl]]."));
    assert!(!parses_as_nested_answer("Answer: [cat, [dog,owl]."));
    assert!(!parses_as_nested_answer("Answer: [Cat]."));
    assert!(!parses_as_nested_answer("Answer: []."));
    assert!(!parses_as_nested_answer("Answer: [cat]"));
}

/// Special tokens never appear inside constrained text: even a pattern that allows any text never
/// allows `<|im_start|>`; the stop token is allowed exactly when the output may end.
#[test]
fn special_tokens_are_never_allowed_inside_constrained_text() {
    let mut model = Model::open(common::smollm2_package()).expect("open");
    let im_start = model.prompter.tokenizer.encode("<|im_start|>", true, false).unwrap()[0];
    let tokenizer = model.tokenizer();
    let im_end = tokenizer.info().stop_ids[0];
    let grammars = tokenizer.grammars().unwrap();
    let mut any = grammars.constraint(&ResponseFormat::Regex { pattern: r"(.|\n){0,50}".into() }).unwrap().unwrap();
    let mask = any.mask().unwrap();
    assert!(!mask_allows(&mask, im_start), "a special token inside text");
    assert!(mask_allows(&mask, im_end), "the empty text is complete: stopping is allowed");
    let allowed = (0..tokenizer.vocab_size() as u32).filter(|&t| mask_allows(&mask, t)).count();
    assert!(allowed > 40_000, "almost every token is text: {allowed} allowed");
    let mut one = grammars.constraint(&ResponseFormat::Regex { pattern: "ab+".into() }).unwrap().unwrap();
    assert!(!mask_allows(&one.mask().unwrap(), im_end), "an empty output is not complete");
}

/// A schema, pattern or grammar that llguidance rejects is an `InvalidArgument` before any forward
/// pass.
#[test]
fn invalid_constraints_are_rejected_before_any_token() {
    let mut model = Model::open(common::smollm2_package()).expect("open");
    let mut engine = FastEngine::from_source(&model.package).expect("load");
    let messages = [ChatMessage::new("user", "Hi")];
    let bad = [
        schema_format(&serde_json::json!({ "type": "strnig" })),
        schema_format(&serde_json::json!({ "type": "integer", "minimum": 5, "maximum": 1 })),
        ResponseFormat::Regex { pattern: "(unclosed".into() },
        ResponseFormat::Grammar { grammar: "start: undefined_rule".into() },
    ];
    for format in bad {
        let prompt_ids = model.encode_chat(&messages).unwrap();
        let req = GenerateRequest {
            prompt_ids,
            max_tokens: 10,
            sampling: greedy(),
            stop_strings: Vec::new(),
            top_logits: 0,
            margins: false,
            response_format: format.clone(),
            cache_prompt: true,
            ..Default::default()
        };
        let mut counting = Recording { inner: &mut engine, runs: Vec::new() };
        let err = generate(&mut counting, model.tokenizer(), &req, &|| 0.0, &mut |_| Ok(())).unwrap_err();
        eprintln!("{format:?}: {err}");
        assert!(matches!(err, HearthError::InvalidArgument(_)), "{format:?}: {err}");
        assert!(counting.runs.is_empty());
    }
}
