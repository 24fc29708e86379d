//! Log-probabilities and logit biases (issue 15, item 4) on the real SmolLM2 with the fast CPU
//! engine: each generated token's figures against a log-softmax computed here, in f64, from the
//! logits of a second run of the same engine over the same inputs.
//!
//! Tolerance. The replay makes the same forward calls on the same engine (the prompt with the
//! tokens a grammar forces first, then each chosen token with those forced after it), so its
//! logits are the generation's bit for bit; the two log-softmaxes differ only in the generation's
//! result being rounded to f32 (half an ulp: 4e-6 at the -120 a -100 bias gives) and its sum
//! order: `TOL` = 1e-5.

mod common;

use std::collections::BTreeMap;

use common::Recording;
use hearth_core::chat::ChatMessage;
use hearth_core::constrain::ResponseFormat;
use hearth_core::fast::FastEngine;
use hearth_core::generate::{generate, Backend, GenerateOutput, GenerateRequest};
use hearth_core::model::Model;
use hearth_core::sampling::SamplingParams;
use hearth_core::HearthError;

const TOL: f64 = 1e-5;

fn open() -> (Model, FastEngine) {
    let model = Model::open(common::smollm2_package()).expect("open SmolLM2");
    let engine = FastEngine::from_source(&model.package).unwrap();
    (model, engine)
}

fn chat(model: &mut Model, text: &str) -> Vec<u32> {
    model.encode_chat(&[ChatMessage::new("user", text)]).unwrap()
}

fn run(model: &Model, engine: &mut dyn Backend, req: &GenerateRequest) -> hearth_core::Result<GenerateOutput> {
    generate(engine, model.tokenizer(), req, &|| 0.0, &mut |_| Ok(()))
}

/// `logits` with `bias` added, log-softmaxed in f64.
fn log_softmax(logits: &[f32], bias: &BTreeMap<u32, f32>) -> Vec<f64> {
    let mut biased: Vec<f64> = logits.iter().map(|&l| f64::from(l)).collect();
    for (&t, &b) in bias {
        biased[t as usize] += f64::from(b);
    }
    let max = biased.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + biased.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
    biased.iter().map(|l| l - lse).collect()
}

/// Replay `out` on `engine` (reset) and check every token's figures: a chosen token's log-
/// probability and top `k` (sorted, ties by id) against [`log_softmax`] of that step's logits; a
/// forced token's 0 and no alternatives. Returns how many tokens were chosen.
fn check_against_replay(model: &Model, engine: &mut dyn Backend, out: &GenerateOutput, k: usize) -> usize {
    let bias = &SamplingParams::default().logit_bias;
    check_biased_replay(model, engine, out, k, bias)
}

fn check_biased_replay(
    model: &Model,
    engine: &mut dyn Backend,
    out: &GenerateOutput,
    k: usize,
    bias: &BTreeMap<u32, f32>,
) -> usize {
    assert_eq!(out.logprobs.len(), out.ids.len(), "one entry per generated id");
    engine.reset();
    // The first input: the prompt and the tokens forced before the first choice.
    let leading = out.logprobs.iter().take_while(|e| e.forced).count();
    let mut input: Vec<u32> = out.prompt_ids.iter().chain(&out.ids[..leading]).copied().collect();
    let mut chosen = 0;
    for (i, entry) in out.logprobs.iter().enumerate() {
        assert_eq!(entry.id, out.ids[i]);
        let text = model.tokenizer().decode(&[entry.id], false).unwrap();
        assert_eq!(entry.token, text, "token {i}");
        if entry.forced {
            assert!(entry.logprob == 0.0 && entry.top_logprobs.is_empty(), "forced token {i}: {entry:?}");
            if i >= leading {
                input.push(entry.id);
            }
            continue;
        }
        chosen += 1;
        let logits = engine.forward(&input, false).unwrap();
        let want = log_softmax(&logits, bias);
        let got = f64::from(entry.logprob);
        assert!((got - want[entry.id as usize]).abs() < TOL, "token {i}: {got} vs {}", want[entry.id as usize]);
        let mut order: Vec<u32> = (0..want.len() as u32).collect();
        order.sort_by(|&a, &b| want[b as usize].total_cmp(&want[a as usize]).then(a.cmp(&b)));
        let ids: Vec<u32> = entry.top_logprobs.iter().map(|t| t.id).collect();
        assert_eq!(ids, order[..k], "token {i}: the top {k}");
        for t in &entry.top_logprobs {
            assert!((f64::from(t.logprob) - want[t.id as usize]).abs() < TOL, "token {i}, alternative {}", t.id);
            assert_eq!(t.token, model.tokenizer().decode(&[t.id], false).unwrap());
        }
        assert!(entry.top_logprobs.windows(2).all(|w| w[0].logprob >= w[1].logprob), "token {i}: not sorted");
        input = vec![entry.id];
    }
    chosen
}

/// Greedy, with and without a bias: every token's figures are the replay's, the first of the top
/// list is the token taken, and the text is the bytes of its tokens.
#[test]
fn logprobs_are_the_log_softmax_of_the_engines_logits() {
    let (mut model, mut engine) = open();
    let mut replay = FastEngine::from_source(&model.package).unwrap();
    let prompt_ids = chat(&mut model, "Name three colors.");
    let req = GenerateRequest { prompt_ids, max_tokens: 10, logprobs: Some(5), ..Default::default() };
    let out = run(&model, &mut engine, &req).unwrap();
    eprintln!("{:?}: {:?}", out.text, out.logprobs.iter().map(|e| e.logprob).collect::<Vec<_>>());
    assert_eq!(check_against_replay(&model, &mut replay, &out, 5), out.ids.len());
    for e in &out.logprobs {
        assert_eq!(e.top_logprobs[0].id, e.id, "greedy takes the most likely token");
        assert_eq!(e.top_logprobs[0].logprob, e.logprob);
    }
    let bytes: Vec<u8> = out.logprobs.iter().flat_map(|e| e.bytes.clone()).collect();
    assert_eq!(bytes, out.text.as_bytes());

    // A bias on the first choice's runner-up and against the choice: the figures follow the bias.
    let first = &out.logprobs[0];
    let bias: BTreeMap<u32, f32> = [(first.id, -3.0), (first.top_logprobs[1].id, 2.5)].into_iter().collect();
    let sampling = SamplingParams { logit_bias: bias.clone(), ..Default::default() };
    let biased =
        run(&model, &mut engine, &GenerateRequest { sampling, max_tokens: 4, logprobs: Some(2), ..req.clone() })
            .unwrap();
    check_biased_replay(&model, &mut replay, &biased, 2, &bias);
    assert_eq!(biased.ids[0], first.top_logprobs[1].id);
    // Without logprobs nothing is reported, and the ids are the same.
    let plain = run(&model, &mut engine, &GenerateRequest { logprobs: None, ..req.clone() }).unwrap();
    assert!(plain.logprobs.is_empty());
    assert_eq!(plain.ids, out.ids);
    assert!(!serde_json::to_string(&plain).unwrap().contains("logprobs"));
}

/// Under a grammar the figures are still the model's (before the mask); forced tokens get 0 and
/// `forced: true`. Sampled at temperature 1: the chosen token need not be the first of the list.
#[test]
fn forced_tokens_are_marked_and_chosen_ones_keep_the_models_distribution() {
    let (mut model, mut engine) = open();
    let mut replay = FastEngine::from_source(&model.package).unwrap();
    let grammar = "start: \"Answer: \" WORD \" -- the rest of this line is forced.\"\nWORD: /[a-z]{1,8}/\n";
    let req = GenerateRequest {
        prompt_ids: chat(&mut model, "Say one word."),
        max_tokens: 40,
        logprobs: Some(3),
        response_format: ResponseFormat::Grammar { grammar: grammar.into() },
        sampling: SamplingParams { temperature: 1.0, seed: 3, ..Default::default() },
        ..Default::default()
    };
    let out = run(&model, &mut engine, &req).unwrap();
    let forced = out.logprobs.iter().filter(|e| e.forced).count();
    eprintln!("{:?}: {forced} of {} tokens forced", out.text, out.ids.len());
    assert!(out.logprobs[0].forced, "the opening is forced");
    assert!(forced >= 5 && forced < out.ids.len(), "{forced} forced of {}", out.ids.len());
    let chosen = check_against_replay(&model, &mut replay, &out, 3);
    assert_eq!(chosen + forced, out.ids.len());
    let bytes: Vec<u8> = out.logprobs.iter().flat_map(|e| e.bytes.clone()).collect();
    assert_eq!(bytes, out.text.as_bytes());
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["logprobs"][0]["forced"], true);
    assert!(json["logprobs"].as_array().unwrap().iter().any(|e| e.get("forced").is_none()));
}

/// -100 on the greedy token moves the choice; +100 on another token takes it every step, with a
/// probability of almost 1.
#[test]
fn a_logit_bias_bans_or_forces_a_token() {
    let (mut model, mut engine) = open();
    let prompt_ids = chat(&mut model, "What is the capital of France?");
    let req = GenerateRequest { prompt_ids, max_tokens: 4, ..Default::default() };
    let greedy = run(&model, &mut engine, &req).unwrap().ids;
    let bias =
        |pairs: &[(u32, f32)]| SamplingParams { logit_bias: pairs.iter().copied().collect(), ..Default::default() };
    let banned = run(&model, &mut engine, &GenerateRequest { sampling: bias(&[(greedy[0], -100.0)]), ..req.clone() });
    let banned = banned.unwrap().ids;
    assert_ne!(banned[0], greedy[0]);
    assert!(!banned.contains(&greedy[0]), "{banned:?} takes the banned {}", greedy[0]);

    let banana = model.encode_text(" banana").unwrap();
    let target = *banana.last().unwrap();
    let sampled = SamplingParams { temperature: 0.8, seed: 1, ..bias(&[(target, 100.0)]) };
    let forced = run(&model, &mut engine, &GenerateRequest { sampling: sampled, logprobs: Some(0), ..req.clone() });
    let forced = forced.unwrap();
    assert_eq!(forced.ids, vec![target; 4], "{:?}", forced.text);
    assert!(forced.logprobs.iter().all(|e| e.logprob > -1e-3 && e.top_logprobs.is_empty()), "{:?}", forced.logprobs);
}

/// Out-of-range settings are refused before any forward pass, naming what is wrong.
#[test]
fn out_of_range_logprobs_and_biases_are_invalid_arguments() {
    let (mut model, mut engine) = open();
    let prompt_ids = chat(&mut model, "Hi");
    let vocab = model.tokenizer().vocab_size() as u32;
    let base = GenerateRequest { prompt_ids, max_tokens: 2, ..Default::default() };
    let bias = |t: u32, b: f32| SamplingParams { logit_bias: [(t, b)].into_iter().collect(), ..Default::default() };
    let cases = [
        (GenerateRequest { logprobs: Some(21), ..base.clone() }, "at most 20"),
        (GenerateRequest { sampling: bias(17, 100.5), ..base.clone() }, "token 17"),
        (GenerateRequest { sampling: bias(17, -250.0), ..base.clone() }, "token 17"),
        (GenerateRequest { sampling: bias(17, f32::NAN), ..base.clone() }, "token 17"),
        (GenerateRequest { sampling: bias(vocab, 1.0), ..base.clone() }, "outside the vocabulary"),
    ];
    for (req, why) in cases {
        let mut rec = Recording { inner: &mut engine, runs: Vec::new() };
        match run(&model, &mut rec, &req) {
            Err(HearthError::InvalidArgument(m)) => assert!(m.contains(why), "{m:?} does not say {why:?}"),
            other => panic!("{why}: {:?}", other.map(|o| o.ids)),
        }
        assert!(rec.runs.is_empty(), "{why}: a forward pass ran");
    }
    // The limits themselves are fine.
    let ok = GenerateRequest { logprobs: Some(20), sampling: bias(vocab - 1, -100.0), ..base };
    let out = run(&model, &mut engine, &ok).unwrap();
    assert!(!out.ids.is_empty() && out.logprobs.len() == out.ids.len());
    assert_eq!(out.logprobs[0].top_logprobs.len(), 20);
}
