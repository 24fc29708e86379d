//! A Hugging Face Llama directory (sharded safetensors, BF16 and F32 tensors, half-split "neox" RoPE)
//! converts into a package whose CPU logits equal those of the same weights laid out the way
//! llama.cpp's GGUF converter does (Q/K rows permuted, interleaved RoPE) — the layout that the
//! SmolLM2 tests check against llama.cpp itself.

use std::fs;
use std::path::Path;

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::cpu::CpuEngine;
use hearth_core::manifest::RopeStyle;
use hearth_core::package::{Package, PackageWriter};
use hearth_core::quant::{DType, Tensor};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const HIDDEN: usize = 64;
const FFN: usize = 96;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const LAYERS: usize = 2;
const VOCAB: usize = 40;

fn random(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn hf_weights() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut seed = 17u64;
    let mut w =
        vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN], random(VOCAB * HIDDEN, &mut seed, 1.0))];
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let norm = |seed: &mut u64| random(HIDDEN, seed, 0.2).iter().map(|v| 1.0 + v).collect::<Vec<_>>();
        w.push((p("input_layernorm.weight"), vec![HIDDEN], norm(&mut seed)));
        w.push((p("self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN], random(HIDDEN * HIDDEN, &mut seed, 0.3)));
        w.push((
            p("self_attn.k_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            random(KV_HEADS * HEAD_DIM * HIDDEN, &mut seed, 0.3),
        ));
        w.push((
            p("self_attn.v_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            random(KV_HEADS * HEAD_DIM * HIDDEN, &mut seed, 0.3),
        ));
        w.push((p("self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN], random(HIDDEN * HIDDEN, &mut seed, 0.2)));
        w.push((p("post_attention_layernorm.weight"), vec![HIDDEN], norm(&mut seed)));
        w.push((p("mlp.gate_proj.weight"), vec![FFN, HIDDEN], random(FFN * HIDDEN, &mut seed, 0.2)));
        w.push((p("mlp.up_proj.weight"), vec![FFN, HIDDEN], random(FFN * HIDDEN, &mut seed, 0.2)));
        w.push((p("mlp.down_proj.weight"), vec![HIDDEN, FFN], random(HIDDEN * FFN, &mut seed, 0.2)));
    }
    w.push(("model.norm.weight".into(), vec![HIDDEN], vec![1.0; HIDDEN]));
    w.push(("lm_head.weight".into(), vec![VOCAB, HIDDEN], random(VOCAB * HIDDEN, &mut seed, 0.5)));
    // Matrices are stored as BF16 below; round them here so both layouts hold identical values.
    for (_, shape, v) in &mut w {
        if shape.len() == 2 {
            v.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
        }
    }
    w
}

fn write_hf_dir(dir: &Path, weights: &[(String, Vec<usize>, Vec<f32>)]) {
    fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
        "tie_word_embeddings": false,
    });
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB)
        .map(|i| (if i == 0 { "<unk>".to_string() } else { format!("w{i}") }, serde_json::json!(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "w1", "bos_token": "w2", "add_bos_token": true}"#)
        .unwrap();

    // Two shards; matrices as BF16, vectors as F32.
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(name, shape, v)| {
            if shape.len() == 2 {
                (
                    name.clone(),
                    Dtype::BF16,
                    shape.clone(),
                    v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                )
            } else {
                (name.clone(), Dtype::F32, shape.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
        })
        .collect();
    let (a, b) = encoded.split_at(encoded.len() / 2);
    for (i, part) in [a, b].iter().enumerate() {
        let views: Vec<(String, TensorView)> =
            part.iter().map(|(n, d, s, bytes)| (n.clone(), TensorView::new(*d, s.clone(), bytes).unwrap())).collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        fs::write(dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)), bytes).unwrap();
    }
}

/// llama.cpp's permutation of Q/K rows: within each head, row `2i + j` takes HF row `j * d/2 + i`.
fn permute_rows(v: &[f32], n_heads: usize) -> Vec<f32> {
    let rows_per_head = v.len() / HIDDEN / n_heads;
    let mut out = vec![0f32; v.len()];
    for h in 0..n_heads {
        for r in 0..rows_per_head {
            let src = h * rows_per_head + (r % 2) * rows_per_head / 2 + r / 2;
            let dst = h * rows_per_head + r;
            out[dst * HIDDEN..(dst + 1) * HIDDEN].copy_from_slice(&v[src * HIDDEN..(src + 1) * HIDDEN]);
        }
    }
    out
}

#[test]
fn hf_directory_and_gguf_layout_give_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let weights = hf_weights();
    write_hf_dir(&hf, &weights);

    let from_hf = tmp.path().join("from-hf");
    let m = convert(&hf, &from_hf, &ConvertOptions::default()).unwrap();
    assert_eq!(m.config.rope.as_ref().unwrap().style, RopeStyle::Neox);
    assert!(!m.config.tied_embeddings);
    assert!(m.tokenizer.add_bos && m.tokenizer.bos_id == Some(2) && m.tokenizer.stop_ids == vec![1]);
    assert_eq!(
        m.tensors.iter().find(|t| t.name == "blk.1.attn_q.weight").unwrap().dtype,
        DType::F32,
        "BF16 kept losslessly"
    );

    // The same weights, written the way llama.cpp's GGUF converter lays them out.
    let gguf_style = tmp.path().join("gguf-style");
    let mut writer = PackageWriter::new(&gguf_style, 1 << 20, false).unwrap();
    let rename = |hf: &str| -> String {
        let map = [
            ("model.embed_tokens.weight", "token_embd.weight".to_string()),
            ("model.norm.weight", "output_norm.weight".to_string()),
            ("lm_head.weight", "output.weight".to_string()),
        ];
        if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
            return g.clone();
        }
        let rest = hf.strip_prefix("model.layers.").unwrap();
        let (l, part) = rest.split_once('.').unwrap();
        let part = match part {
            "input_layernorm.weight" => "attn_norm",
            "self_attn.q_proj.weight" => "attn_q",
            "self_attn.k_proj.weight" => "attn_k",
            "self_attn.v_proj.weight" => "attn_v",
            "self_attn.o_proj.weight" => "attn_output",
            "post_attention_layernorm.weight" => "ffn_norm",
            "mlp.gate_proj.weight" => "ffn_gate",
            "mlp.up_proj.weight" => "ffn_up",
            _ => "ffn_down",
        };
        format!("blk.{l}.{part}.weight")
    };
    for (name, shape, v) in &weights {
        let v = if name.ends_with("q_proj.weight") {
            permute_rows(v, HEADS)
        } else if name.ends_with("k_proj.weight") {
            permute_rows(v, KV_HEADS)
        } else {
            v.clone()
        };
        writer.add_tensor(&rename(name), &Tensor::from_f32(shape.clone(), &v, DType::F32, 32).unwrap()).unwrap();
    }
    writer.add_file("tokenizer.json", &fs::read(from_hf.join("tokenizer.json")).unwrap()).unwrap();
    let mut manifest = m.clone();
    manifest.config.rope.as_mut().unwrap().style = RopeStyle::Interleaved;
    writer.finish(manifest).unwrap();

    let tokens = [3u32, 17, 5, 39, 8, 8, 21, 1, 30, 12];
    let mut a = CpuEngine::from_package(&Package::open(&from_hf).unwrap()).unwrap();
    let mut b = CpuEngine::from_package(&Package::open(&gguf_style).unwrap()).unwrap();
    // Prefill of a few tokens, then single steps, to cover both paths of the engine.
    let mut la = a.forward(&tokens[..6], true).unwrap();
    let mut lb = b.forward(&tokens[..6], true).unwrap();
    for &t in &tokens[6..] {
        la.extend(a.forward(&[t], false).unwrap());
        lb.extend(b.forward(&[t], false).unwrap());
    }
    assert_eq!(la.len(), tokens.len() * VOCAB);
    // Same arithmetic up to summation order inside RoPE'd dot products: f32 rounding only.
    let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "logits differ by {worst}");

    // The comparison is sensitive to the pairing: the GGUF layout run with the wrong RoPE style differs.
    let pkg = Package::open(&gguf_style).unwrap();
    let mut config = pkg.manifest.config.clone();
    config.rope.as_mut().unwrap().style = RopeStyle::Neox;
    let mut wrong = CpuEngine::new(config, pkg.load_tensors().unwrap()).unwrap();
    let lw = wrong.forward(&tokens[..6], true).unwrap();
    let off = lw.iter().zip(&la).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(off > 1e-2, "a wrong RoPE pairing went unnoticed ({off})");
}
