//! Log-probabilities and logit biases (issue 15, item 4) on the GPU engine with the real SmolLM2:
//! a generation whose bias, choice and log-probabilities are computed in `sample.wgsl` (only the id
//! and the k best come back) against the same generation with each step's logits read back and
//! handed to hearth-core's `Sampler::sample_with_logprobs` (`GenerateRequest::margins` takes that
//! path). Both read the same logits (the same dispatches on the same inputs), so the ids, chosen and
//! listed, must be equal; the values differ by the GPU's f32 log-sum-exp against the CPU's f64 one,
//! within `TOL` = 1e-4 (the argument is in `tests/sampler.rs`, `LOGPROB_TOL`). With no adapter the
//! test says so loudly and returns.

mod common;

use common::{run, smollm2};
use hearth_core::chat::ChatMessage;
use hearth_core::generate::GenerateRequest;
use hearth_core::sampling::SamplingParams;

const TOL: f32 = 1e-4;

#[test]
fn gpu_logprobs_and_bias_equal_the_cpus_from_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((mut model, mut engine)) = smollm2(tmp.path(), 512) else {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
        return;
    };
    let prompt_ids = model.encode_chat(&[ChatMessage::new("user", "Name three colors.")]).unwrap();
    // Unbiased, the answer starts "1. Red\n2. Blue": ban "Red" and " Red", favour " green".
    let mut ids_of = |text: &str| *model.encode_text(text).unwrap().last().unwrap();
    let banned = [ids_of("Red"), ids_of(" Red")];
    let logit_bias = [(banned[0], -100.0), (banned[1], -100.0), (ids_of(" green"), 3.0)].into_iter().collect();
    let greedy = SamplingParams { repetition_penalty: 1.3, logit_bias, ..Default::default() };
    let sampled = SamplingParams { temperature: 0.7, top_k: 40, seed: 4, ..greedy.clone() };
    for sampling in [greedy, sampled] {
        let what = format!("temperature {}", sampling.temperature);
        let req = GenerateRequest {
            prompt_ids: prompt_ids.clone(),
            max_tokens: 8,
            logprobs: Some(5),
            sampling,
            ..Default::default()
        };
        let on_gpu = run(&model, &mut engine, &req);
        let on_cpu = run(&model, &mut engine, &GenerateRequest { margins: true, ..req.clone() });
        eprintln!("{what}: {:?}", on_gpu.text);
        assert_eq!(on_gpu.ids, on_cpu.ids, "{what}: GPU {:?} vs CPU {:?}", on_gpu.text, on_cpu.text);
        assert!(!on_gpu.ids.iter().any(|t| banned.contains(t)), "{what}: a banned token was taken");
        assert_eq!(on_gpu.logprobs.len(), on_gpu.ids.len());
        for (i, (g, c)) in on_gpu.logprobs.iter().zip(&on_cpu.logprobs).enumerate() {
            assert_eq!(g.id, c.id);
            assert!((g.logprob - c.logprob).abs() < TOL, "{what}, token {i}: GPU {} vs CPU {}", g.logprob, c.logprob);
            let ids = |e: &hearth_core::logprobs::TokenLogprob| e.top_logprobs.iter().map(|t| t.id).collect::<Vec<_>>();
            assert_eq!(ids(g), ids(c), "{what}, token {i}: the top 5");
            for (a, b) in g.top_logprobs.iter().zip(&c.top_logprobs) {
                assert!((a.logprob - b.logprob).abs() < TOL, "{what}, token {i}, alternative {}", a.id);
                assert_eq!((&a.token, &a.bytes), (&b.token, &b.bytes));
            }
            // The bias is in the distribution: the banned tokens are far down.
            assert!(g.top_logprobs.iter().all(|t| !banned.contains(&t.id)));
        }
    }
}
