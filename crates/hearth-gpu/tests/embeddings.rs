//! Sentence embeddings on the GPU engine: the real all-MiniLM-L6-v2 (converted from its
//! Transformers directory) against the embeddings the `sentence-transformers` library computes
//! (tests/fixtures/minilm/embeddings.json, made by tests/fixtures/make_embeddings.py: 53 texts,
//! short, long past the 256-token limit, code, unicode in eight scripts). The texts run packed, as
//! many per step as fit (a step takes 512 tokens: the 53 make several steps, texts of 256 tokens
//! among them), and each must still be within cosine 0.9999 of its reference (the bar), rank
//! the retrieval check's documents as the reference does, and equal its embedding run alone.

mod common;

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::manifest::Pooling;
use hearth_core::model::Model;
use hearth_gpu::{GpuContext, GpuEncoder, GpuEngine, PACKED_TOKENS};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

fn fixture() -> serde_json::Value {
    let path = common::repo_root().join("tests/fixtures/minilm/embeddings.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn minilm(dir: &std::path::Path) -> Model {
    let root = common::repo_root();
    let status = std::process::Command::new("bash").arg(root.join("scripts/fetch-minilm.sh")).status().unwrap();
    assert!(status.success(), "scripts/fetch-minilm.sh failed");
    let out = dir.join("minilm");
    convert(&root.join(".cache/models/all-MiniLM-L6-v2"), &out, &ConvertOptions::default()).unwrap();
    Model::open(&out).unwrap()
}

#[test]
fn minilm_embeds_on_the_gpu_as_sentence_transformers_does() {
    if GpuContext::new().expect("opening the GPU device").is_none() {
        return;
    }
    let fixture = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let mut model = minilm(tmp.path());
    let encoder = model.package.manifest.config.encoder.clone().expect("an encoder");
    assert_eq!(encoder.pooling, Pooling::Mean);
    let texts = fixture["texts"].as_array().unwrap();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| model.prompter.tokenizer.encode_for_embedding(t.as_str().unwrap(), encoder.max_tokens).unwrap())
        .collect();
    let total: usize = ids.iter().map(Vec::len).sum();
    assert!(total > 2 * PACKED_TOKENS, "the texts fill several steps ({total} tokens)");
    let reference: Vec<Vec<f32>> = fixture["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect();

    // Both kinds of kernels: software adapters' (one invocation per row or query) and GPUs' (tiled
    // products, the split attention kernel, norms a workgroup per token), which lavapipe runs too.
    // GPUs' kernels are slow on lavapipe: every other text (still several steps) for them.
    let mut runs = Vec::new();
    for software in [false, true] {
        let mut ctx = GpuContext::new().unwrap().unwrap();
        ctx.software = software;
        let mut engine = GpuEncoder::new(ctx, &model.package).unwrap();
        assert_eq!(engine.packed_tokens(), PACKED_TOKENS);
        let every = if software { 1 } else { 2 };
        let chosen: Vec<Vec<u32>> = ids.iter().step_by(every).cloned().collect();
        let batched = engine.embed(&chosen, None).unwrap();
        assert_eq!(batched.len(), chosen.len());
        let (mut worst, mut largest) = (1f64, 0f32);
        for (j, (ours, want)) in batched.iter().zip(reference.iter().step_by(every)).enumerate() {
            let i = j * every;
            let cos = cosine(ours, want);
            assert!(cos >= 0.9999, "text {i} {:?}, software kernels {software}: cosine {cos}", texts[i]);
            // As the CPU engines: f32 rounding moves a component by ~1e-7 (the reference's own
            // batch against one-at-a-time: 2.2e-7); the tanh GELU in place of the exact one moves
            // it by 3e-4.
            let diff = largest_difference(ours, want);
            assert!(
                diff <= 1e-5,
                "text {i} {:?}, software kernels {software}: a component differs by {diff}",
                texts[i]
            );
            worst = worst.min(cos);
            largest = largest.max(diff);
        }
        eprintln!(
            "{} texts in steps of {PACKED_TOKENS} tokens on {}, software kernels {software}: 1 - the least cosine \
             {:.3e}, the largest |difference| {largest:.3e}",
            chosen.len(),
            engine.adapter_name(),
            1.0 - worst
        );
        runs.push((engine, batched));
    }
    let (mut engine, batched) = runs.pop().unwrap();

    // Retrieval: texts 10..14 are queries, 14..20 documents; each query's ranking of the documents.
    let ranking = |all: &[Vec<f32>], q: usize| {
        let mut docs: Vec<usize> = (14..20).collect();
        docs.sort_by(|&a, &b| cosine(&all[q], &all[b]).total_cmp(&cosine(&all[q], &all[a])));
        docs
    };
    for q in 10..14 {
        assert_eq!(ranking(&batched, q), ranking(&reference, q), "query {q}");
    }

    // One at a time (every text alone in its step, a one-token step among them) gives what the
    // packed steps gave: a token's work depends on its own text only. The reference's own batch
    // against one-at-a-time differs by 2.2e-7; the kernels for one token and for many add in other
    // orders.
    let mut alone_largest = 0f32;
    // A one-token text (a step of one token takes the decode kernels) against it packed with others.
    let one = vec![101];
    let packed_one = engine.embed(&[ids[1].clone(), one.clone(), ids[2].clone()], None).unwrap().remove(1);
    for (i, text) in ids.iter().enumerate().step_by(4).chain([(0, &one)]) {
        let alone = engine.embed(std::slice::from_ref(text), None).unwrap().remove(0);
        let want = if text.len() == 1 { &packed_one } else { &batched[i] };
        let diff = largest_difference(&alone, want);
        assert!(diff <= 1e-6, "text {i}: alone and packed differ by {diff}");
        alone_largest = alone_largest.max(diff);
        assert!((alone.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5, "normalized");
    }
    eprintln!("alone against packed: the largest |difference| {alone_largest:.3e}");

    // normalize: false gives the mean itself, in the same direction.
    let raw = engine.embed(&ids[..3], Some(false)).unwrap();
    for (r, n) in raw.iter().zip(&batched) {
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() > 0.01, "not scaled to unit length ({norm})");
        assert!(cosine(r, n) > 0.999_999);
    }

    // Bad texts are refused by name, and the engine still works after them.
    for (bad, why) in [
        (vec![], "1 to 256"),
        (vec![101; encoder.max_tokens + 1], "1 to 256"),
        (vec![101, 40_000, 102], "outside the vocabulary"),
    ] {
        let err = engine.embed(&[ids[0].clone(), bad], None).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(engine.embed(&ids[..1], None).unwrap()[0], batched[0]);
}

#[test]
fn each_engine_refuses_the_other_kind_of_model_by_name() {
    let Some(ctx) = GpuContext::new().expect("opening the GPU device") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let model = minilm(tmp.path());
    let err = GpuEngine::prepare(ctx, &model.package.manifest, "minilm", None).err().unwrap().to_string();
    assert!(err.contains("is an encoder") && err.contains("GpuEncoder"), "{err}");
    let qwen3 = tmp.path().join("qwen3");
    let tiny = common::repo_root().join("tests/fixtures/tiny/qwen3.gguf");
    let decoder = convert(&tiny, &qwen3, &ConvertOptions::default()).unwrap();
    let ctx = GpuContext::new().unwrap().unwrap();
    let err = GpuEncoder::prepare(ctx, &decoder, "qwen3").err().unwrap().to_string();
    assert!(err.contains("is a decoder"), "{err}");
}

/// A BERT converted from llama.cpp's GGUF (tests/fixtures/tiny_bert: a tiny random BERT with
/// all-MiniLM-L6-v2's vocabulary, its matrices q8, written by make_tiny_bert.py) on the GPU engine,
/// all its texts packed into one step, against sentence-transformers' embeddings of the same model:
/// within 1e-5 per component, hearth-core's bound for the same function of the same numbers (its
/// q8 weights are exact, and the GPU's products take f32 activations).
#[test]
fn a_bert_from_gguf_embeds_on_the_gpu_as_sentence_transformers_does() {
    let Some(ctx) = GpuContext::new().expect("opening the GPU device") else { return };
    let root = common::repo_root();
    let fx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("tests/fixtures/tiny_bert/bert.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bert");
    convert(&root.join("tests/fixtures/tiny_bert/bert.gguf"), &out, &ConvertOptions::default()).unwrap();
    let mut model = Model::open(&out).unwrap();
    let max_tokens = model.package.manifest.config.encoder.as_ref().unwrap().max_tokens;
    let texts = fx["texts"].as_array().unwrap();
    let picks: Vec<usize> =
        fx["embed_texts"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
    let ids: Vec<Vec<u32>> = picks
        .iter()
        .map(|&i| model.prompter.tokenizer.encode_for_embedding(texts[i].as_str().unwrap(), max_tokens).unwrap())
        .collect();
    let mut engine = GpuEncoder::new(ctx, &model.package).unwrap();
    let ours = engine.embed(&ids, None).unwrap();
    let mut largest = 0f32;
    for (k, (e, &i)) in ours.iter().zip(&picks).enumerate() {
        let want: Vec<f32> = fx["embeddings_sentence_transformers"][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let diff = largest_difference(e, &want);
        assert!(diff <= 1e-5, "text {i}: {diff} from sentence-transformers");
        largest = largest.max(diff);
    }
    eprintln!("{} texts of a BERT from GGUF: the largest |difference| {largest:.3e}", ours.len());
}
