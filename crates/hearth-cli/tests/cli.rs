//! The `hearth` binary end to end, on the real SmolLM2 model, through its exact command-line interface.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[path = "../../hearth-core/tests/common/scratch.rs"]
mod scratch;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn hearth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth")).args(args).output().expect("run hearth")
}

fn ok(args: &[&str]) -> String {
    let out = hearth(args);
    assert!(out.status.success(), "hearth {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The model converted by `hearth convert`, once for this test process.
fn package() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new("bash").arg(root().join("scripts/fetch-smollm2.sh")).status().unwrap();
        assert!(status.success(), "fetching SmolLM2 failed");
        let gguf = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let out = scratch::scratch_dir().join("smollm2").display().to_string();
        ok(&["convert", gguf.to_str().unwrap(), "--out", &out]);
        out
    })
}

/// `hearth generate --model PACKAGE ARGS... --json`, parsed.
fn generate_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["generate", "--model", package()];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&ok(&all)).expect("one JSON object")
}

fn fixture(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures").join(name)).unwrap()).unwrap()
}

fn prompt_fixture(prompt: &str) -> serde_json::Value {
    fixture("smollm2/generation.json")["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["prompt"] == prompt)
        .cloned()
        .expect("prompt in fixture")
}

#[test]
fn tokenize_prints_llama_cpp_ids() {
    let corpus = fixture("smollm2/tokenizer_corpus.json");
    let case = corpus["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == "<|im_start|>user\nHello<|im_end|>\n")
        .unwrap();
    let plain: serde_json::Value =
        serde_json::from_str(&ok(&["tokenize", "--model", package(), case["text"].as_str().unwrap()])).unwrap();
    assert_eq!(plain, case["ids"]);
    let special: serde_json::Value =
        serde_json::from_str(&ok(&["tokenize", "--model", package(), "--special", case["text"].as_str().unwrap()]))
            .unwrap();
    assert_eq!(special, case["ids_special"]);
}

#[test]
fn generate_json_reports_ids_text_logits_and_usage() {
    let fx = prompt_fixture("The capital of France is");
    // The exact reference: the fixture is llama.cpp on the F32 weights, and the default engine may be
    // the fast CPU one, whose 8-bit activations can part from it at a near-tie.
    let exact = ["--backend", "cpu-ref"];
    let args = ["--prompt", "The capital of France is", "--max-tokens", "8", "--top-logits", "5"];
    let out = generate_json(&[&args[..], &exact[..]].concat());
    assert_eq!(out["prompt_ids"], fx["prompt_ids"]);
    let expected: Vec<_> = fx["greedy_ids"].as_array().unwrap()[..8].to_vec();
    assert_eq!(out["ids"].as_array().unwrap(), &expected);
    assert_eq!(out["top_logits"].as_array().unwrap().len(), 5);
    assert_eq!(out["top_logits"][0][0], fx["top_logits"][0][0]);
    assert_eq!(out["usage"]["prompt_tokens"], fx["prompt_ids"].as_array().unwrap().len());
    assert_eq!(out["usage"]["completion_tokens"], 8);
    assert!(out["usage"]["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert!(out["usage"]["decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(out["text"].as_str().unwrap().contains("Paris"), "{}", out["text"]);

    // Streaming prints the same text.
    let args = ["generate", "--model", package(), "--prompt", "The capital of France is", "--max-tokens", "8"];
    let streamed = ok(&[&args[..], &exact[..]].concat());
    assert_eq!(streamed.trim_end_matches('\n'), out["text"].as_str().unwrap());
}

#[test]
fn chat_prompt_uses_the_template_and_stops_at_end_of_turn() {
    let fx = prompt_fixture("List three fruits.");
    let out = generate_json(&["--prompt", "List three fruits.", "--chat", "--max-tokens", "64"]);
    assert_eq!(
        out["prompt_ids"], fx["prompt_ids"],
        "chat template rendering or special-token parsing differs from llama.cpp"
    );
    let text = out["text"].as_str().unwrap();
    assert!(!text.contains("<|im_end|>") && !text.is_empty(), "{text:?}");
}

#[test]
fn stop_string_spanning_tokens_ends_generation_before_it() {
    let full = generate_json(&["--prompt", "The capital of France is", "--max-tokens", "16"]);
    let text = full["text"].as_str().unwrap();
    // A stop string made of the end of one token and the start of the next.
    let at = text.find("Paris").expect("Paris in the continuation");
    let stop = &text[at + 3..at + 7];
    let out = generate_json(&["--prompt", "The capital of France is", "--max-tokens", "16", "--stop", stop]);
    assert_eq!(out["text"].as_str().unwrap(), &text[..at + 3]);
    assert_eq!(out["finish_reason"], "stop");
}

const SAMPLING: [&str; 12] = [
    "--temperature",
    "1.0",
    "--top-k",
    "40",
    "--top-p",
    "0.95",
    "--min-p",
    "0.02",
    "--repetition-penalty",
    "1.1",
    "--presence-penalty",
    "0.2",
];

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let run = |seed: &str| {
        let args = ["--prompt", "Once upon a time", "--max-tokens", "12", "--backend", "cpu", "--seed", seed];
        generate_json(&[&args[..], &SAMPLING[..]].concat())["ids"].clone()
    };
    let a = run("7");
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
}

#[test]
fn errors_are_readable_and_exit_non_zero() {
    let out = hearth(&["convert", "/nonexistent/model.gguf", "--out", "/tmp/never-written"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains("/nonexistent/model.gguf"), "{err}");
    assert!(!Path::new("/tmp/never-written").exists());

    let out = hearth(&["generate", "--model", "/nonexistent", "--prompt", "hi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("manifest.json"));

    let out = hearth(&["generate", "--model", package(), "--prompt", "hi", "--max-tokens", "100000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds the context length of 8192"));

    let out = hearth(&["generate", "--model", package(), "--prompt", "hi", "--temperature=-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
}

/// Whether wgpu finds an adapter here (lavapipe counts); GPU tests say so loudly when it does not.
fn has_gpu() -> bool {
    let out = hearth(&["bench", "--model", package(), "--backend", "gpu", "--prompt-tokens", "1", "--gen-tokens", "2"]);
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no GPU adapter") {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU command-line test !!!\n");
        return false;
    }
    true
}

#[test]
fn gpu_backend_generates_what_the_cpu_backend_generates() {
    if !has_gpu() {
        return;
    }
    let args = ["--prompt", "The capital of France is", "--max-tokens", "4"];
    let gpu = generate_json(&[&args[..], &["--backend", "gpu"]].concat());
    let cpu = generate_json(&[&args[..], &["--backend", "cpu-ref"]].concat());
    assert_eq!(gpu["ids"], cpu["ids"]);
    assert_eq!(gpu["text"], cpu["text"]);
}

/// The sampler on the GPU (penalties, top-k, top-p, min-p, the seeded draw), through `generate`:
/// a seed repeats, another seed differs. (GPU and CPU draw the same numbers, but their logits
/// differ in the last bits, so a draw that lands on a boundary may pick a neighbour: equality
/// across backends is not asserted.)
#[test]
fn seeded_sampling_on_the_gpu_repeats_and_seeds_differ() {
    if !has_gpu() {
        return;
    }
    let run = |seed: &str| {
        let args = ["--prompt", "Once upon a time", "--max-tokens", "8", "--backend", "gpu", "--seed", seed];
        generate_json(&[&args[..], &SAMPLING[..]].concat())["ids"].clone()
    };
    let a = run("7");
    assert_eq!(a.as_array().map(Vec::len), Some(8));
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
}

#[test]
fn bench_prints_one_json_line() {
    let backends: &[&str] = if has_gpu() { &["gpu", "cpu"] } else { &["cpu"] };
    for &backend in backends {
        // On the GPU, ask for the f16 KV cache (the default only where the adapter has shader-f16).
        let kv: &[&str] = if backend == "gpu" { &["--kv-cache", "f16"] } else { &[] };
        let args = ["bench", "--model", package(), "--backend", backend, "--prompt-tokens", "4", "--gen-tokens", "3"];
        let out = ok(&[&args[..], kv].concat());
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
        assert_eq!(v["f16"], backend == "gpu");
        assert_eq!(v["backend"], backend);
        for key in ["load_s", "prefill_tok_s", "decode_tok_s", "ttft_s"] {
            assert!(v[key].as_f64().unwrap() > 0.0, "{key} in {v}");
        }
        assert_eq!(v["prompt_tokens"], 4);
        assert_eq!(v["gen_tokens"], 3);
        assert!(v["adapter"].is_string() && v["f16"].is_boolean());
        assert_eq!(v["synthetic"], false);
    }
}

#[test]
fn bench_synthetic_needs_only_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(package()).join("manifest.json"), tmp.path().join("manifest.json")).unwrap();
    let dir = tmp.path().to_str().unwrap();
    let backends: &[&str] = if has_gpu() { &["gpu", "cpu"] } else { &["cpu"] };
    for &backend in backends {
        let args = ["--backend", backend, "--prompt-tokens", "4", "--gen-tokens", "2"];
        let out = ok(&[&["bench", "--synthetic", "--model", dir][..], &args].concat());
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
        let mut keys: Vec<_> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want = vec![
            "adapter",
            "backend",
            "context",
            "decode_tok_s",
            "f16",
            "gen_tokens",
            "load_s",
            "prefill_tok_s",
            "prompt_tokens",
            "sampling",
            "synthetic",
            "ttft_s",
        ];
        if backend == "gpu" {
            want.extend([
                "achieved_gb_s",
                "decode_rows",
                "dispatches_per_token",
                "gemm",
                "kv_bytes_per_token",
                "queued",
                "subgroups",
                "weight_bytes_per_token",
            ]);
            want.sort_unstable();
            // Decode steps queued as `generate` queues them, unless asked to wait for each token.
            assert_eq!(v["queued"], true);
            assert_eq!(v["decode_rows"], 4, "the default rows per decode workgroup");
            // The register-blocked prompt kernel on GPUs (software adapters take the row split).
            let software = v["adapter"].as_str().is_some_and(|a| a.contains("llvmpipe") || a.contains("SwiftShader"));
            assert_eq!(v["gemm"], !software, "{}", v["adapter"]);
            let one = ok(&[&["bench", "--synthetic", "--one-at-a-time", "--model", dir][..], &args].concat());
            let one: serde_json::Value = serde_json::from_str(one.trim()).expect("one JSON line");
            assert_eq!(one["queued"], false);
            // The products' variants, as asked for, and a clear refusal outside 1..=8.
            let flags = ["bench", "--synthetic", "--decode-rows", "2", "--no-subgroups", "--no-gemm", "--model", dir];
            let other = ok(&[&flags[..], &args].concat());
            let other: serde_json::Value = serde_json::from_str(other.trim()).expect("one JSON line");
            assert_eq!(
                (&other["decode_rows"], &other["subgroups"], &other["gemm"]),
                (&serde_json::json!(2), &serde_json::json!(false), &serde_json::json!(false))
            );
            let out = hearth(&[&["bench", "--synthetic", "--decode-rows", "9", "--model", dir][..], &args].concat());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("--decode-rows") && err.contains("1..=8"), "{err}");
        }
        assert_eq!(keys, want);
        assert_eq!(v["backend"], backend);
        assert_eq!(v["synthetic"], true);
        assert_eq!(v["prompt_tokens"], 4);
        assert_eq!(v["gen_tokens"], 2);
        for key in ["load_s", "prefill_tok_s", "decode_tok_s", "ttft_s"] {
            let x = v[key].as_f64().unwrap();
            assert!(x > 0.0 && x.is_finite(), "{key} in {v}");
        }
        assert!(v["adapter"].is_string() && v["f16"].is_boolean());
        if backend == "cpu" {
            assert_eq!(v["adapter"], "cpu");
        }

        // Without --synthetic the same directory is not a whole package.
        let out = hearth(&[&["bench", "--model", dir][..], &args].concat());
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("shard-00000.bin"));
    }

    let out = hearth(&["bench", "--synthetic", "--model", "/nonexistent", "--backend", "cpu"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error:") && err.contains("/nonexistent/manifest.json"), "{err}");
}

/// `hearth bench` on the GPU: decode measured 100 positions in (`--context`, skipped rather than
/// computed), the counters of a decode step, the bandwidth they make at the measured speed, and a
/// kernel profile whose dispatches add up to the step's (or, without timestamp queries, why not).
#[test]
fn bench_reports_counters_context_and_profile() {
    if !has_gpu() {
        return;
    }
    let args = ["bench", "--model", package(), "--backend", "gpu", "--kv-cache", "f16", "--prompt-tokens", "4"];
    let out = ok(&[&args[..], &["--gen-tokens", "3", "--context", "100", "--profile"]].concat());
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["context"], 104, "{v}");
    let dispatches = v["dispatches_per_token"].as_u64().unwrap();
    let (weights, kv) = (v["weight_bytes_per_token"].as_u64().unwrap(), v["kv_bytes_per_token"].as_u64().unwrap());
    // The last decode step ran at position 105: 106 visible positions of 30 layers' K and V rows
    // of 192 f16 values, read once per KV head (split kernel) or per query head (row split).
    let per_position = 30 * 2 * 192 * 2;
    assert!(kv == 106 * per_position || kv == 3 * 106 * per_position, "{v}");
    assert!(weights > 90_000_000 && weights < 110_000_000, "{v}");
    let gb_s = (weights + kv) as f64 * v["decode_tok_s"].as_f64().unwrap() / 1e9;
    assert!((v["achieved_gb_s"].as_f64().unwrap() - gb_s).abs() <= 1e-9 * gb_s.max(1.0), "{v}");
    match &v["profile"] {
        serde_json::Value::Array(kernels) => {
            let total: u64 = kernels.iter().map(|k| k["dispatches"].as_u64().unwrap()).sum();
            assert_eq!(total, dispatches, "{v}");
            assert!(kernels.iter().all(|k| k["ms"].as_f64().unwrap() >= 0.0 && k["kernel"].is_string()));
        }
        why => assert!(why.as_str().unwrap().contains("timestamp"), "{v}"),
    }
    assert_eq!(v["sampling"], "greedy", "{v}");
    // The demo's sampling (top-k 40 over SmolLM2's 49,152 tokens) records what greedy decoding
    // records: the blocks' best 40 take the place of their best one (`top_blocks`), then `sample`.
    let out = ok(&[&args[..], &["--gen-tokens", "3", "--context", "100", "--sampled"]].concat());
    let sampled: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(sampled["sampling"], serde_json::json!({"temperature": 0.7f32, "top_k": 40, "top_p": 0.9f32}));
    assert_eq!(sampled["dispatches_per_token"], dispatches, "{sampled}");
    let out = hearth(&["bench", "--model", package(), "--backend", "cpu", "--context", "10"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--context needs the GPU"));
}

/// `--json-schema FILE`, `--regex PATTERN`, `--grammar FILE`: the output in `text` follows them;
/// one that llguidance rejects exits 2 naming the problem, as does giving two of them.
#[test]
fn constrained_generation_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = tmp.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"city":{"type":"string","maxLength":20},"population":{"type":"integer","minimum":0}},"required":["city","population"],"additionalProperties":false}"#,
    )
    .unwrap();
    let out = generate_json(&[
        "--chat",
        "--prompt",
        "The largest city in France, as JSON.",
        "--json-schema",
        schema.to_str().unwrap(),
    ]);
    let value: serde_json::Value = serde_json::from_str(out["text"].as_str().unwrap()).expect("the text is JSON");
    assert!(value["city"].is_string() && value["population"].is_u64(), "{value}");
    assert_eq!(value.as_object().unwrap().len(), 2, "{value}");
    assert_eq!(out["finish_reason"], "stop");

    let out = generate_json(&["--prompt", "Today's date:", "--regex", r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"]);
    let text = out["text"].as_str().unwrap();
    assert!(text.len() == 10 && text.starts_with("20") && &text[4..5] == "-" && &text[7..8] == "-", "{text:?}");

    let grammar = tmp.path().join("answer.lark");
    std::fs::write(&grammar, "start: (\"yes\" | \"no\") \", because \" /[a-z ]{1,30}/ \".\"\n").unwrap();
    let out = generate_json(&["--chat", "--prompt", "Is the sea salty?", "--grammar", grammar.to_str().unwrap()]);
    let text = out["text"].as_str().unwrap();
    assert!((text.starts_with("yes, because ") || text.starts_with("no, because ")) && text.ends_with('.'), "{text:?}");

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"type":"integer","minimum":3,"maximum":1}"#).unwrap();
    for args in [
        vec!["--json-schema", bad.to_str().unwrap()],
        vec!["--regex", "(unclosed"],
        vec!["--regex", "a", "--grammar", grammar.to_str().unwrap()],
    ] {
        let mut all = vec!["generate", "--model", package(), "--prompt", "hi"];
        all.extend(args.iter().copied());
        let out = hearth(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "nothing generated for {args:?}");
        assert!(err.contains("invalid") || err.contains("cannot be used with"), "{args:?}: {err}");
    }
}

/// `--logprobs K` adds `logprobs` to the JSON: per generated id its text, bytes, log-probability
/// and the K most likely tokens (sorted, the greedy choice first); `--logit-bias ID=BIAS` moves the
/// choice; out-of-range values exit 2 naming the problem.
#[test]
fn logprobs_and_logit_bias_flags() {
    let args = ["--prompt", "The capital of France is", "--max-tokens", "4", "--backend", "cpu"];
    let out = generate_json(&[&args[..], &["--logprobs", "2"]].concat());
    let ids = out["ids"].as_array().unwrap();
    let logprobs = out["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), ids.len());
    let mut text = Vec::new();
    for (entry, id) in logprobs.iter().zip(ids) {
        assert_eq!(&entry["id"], id);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(&top[0]["id"], id, "greedy takes the most likely token");
        let (lp, first, second) = (
            entry["logprob"].as_f64().unwrap(),
            top[0]["logprob"].as_f64().unwrap(),
            top[1]["logprob"].as_f64().unwrap(),
        );
        assert!(lp <= 0.0 && lp == first && first >= second, "{entry}");
        assert!(entry.get("forced").is_none());
        text.extend(entry["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8));
    }
    assert_eq!(String::from_utf8(text).unwrap(), out["text"].as_str().unwrap());
    // Without the flag there is no such key.
    assert!(generate_json(&args).get("logprobs").is_none());

    // Banning the first choice changes it.
    let first = ids[0].as_u64().unwrap();
    let banned = generate_json(&[&args[..], &["--logit-bias", &format!("{first}=-100")]].concat());
    assert_ne!(banned["ids"][0].as_u64().unwrap(), first);

    for (flag, value, why) in [
        ("--logprobs", "21", "at most 20"),
        ("--logit-bias", "5=101", "token 5"),
        ("--logit-bias", "49152=1", "outside the vocabulary"),
    ] {
        let out = hearth(&[&["generate", "--model", package()], &args[..], &[flag, value, "--json"]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(why), "{flag} {value}: {err}");
    }
    // Malformed values are clap's usage errors.
    let out = hearth(&[&["generate", "--model", package()], &args[..], &["--logit-bias", "5"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ID=BIAS"));
}

/// `hearth inspect` of the GGUF (its header, planned as the conversion will lay it out) and of the
/// package `hearth convert` made from it give the same figures, and the package's bytes are the
/// files' real sizes on disk; a smaller context shrinks only the caches; an f32 GPU cache is twice
/// the f16 one. (That the plans are what the engines allocate is tested with the plans, in
/// hearth-core's size_arithmetic and the GPU engine's tests.)
#[test]
fn inspect_sizes_a_gguf_as_its_converted_package() {
    let gguf = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let inspect = |args: &[&str]| -> serde_json::Value { serde_json::from_str(&ok(args)).expect("one JSON line") };
    let mut of_gguf = inspect(&["inspect", gguf.to_str().unwrap()]);
    let mut of_package = inspect(&["inspect", package()]);
    assert_eq!(of_gguf["source"]["kind"], "gguf");
    assert_eq!(of_gguf["source"]["bytes"], std::fs::metadata(&gguf).unwrap().len());
    let on_disk: u64 = std::fs::read_dir(package())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "manifest.json")
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(of_package["downloadBytes"], on_disk, "the package's shards and tokenizer");
    assert_eq!(of_package["source"], serde_json::json!({ "kind": "package", "bytes": on_disk }));
    assert_eq!(of_package["architecture"], "llama");
    assert_eq!(of_package["context"], 8192);
    // 134.5M parameters: SmolLM2-135M's, tied embeddings counted once.
    assert_eq!(of_package["parameters"], 134_515_008u64);
    for v in [&mut of_gguf, &mut of_package] {
        v.as_object_mut().unwrap().remove("source");
    }
    assert_eq!(of_gguf, of_package);
    // The same model split in 3 files (gguf-py's split: scripts/split-ggufs.sh), from its first
    // file: the same figures, and `bytes` all three files'.
    let split = Command::new("bash").arg(root().join("scripts/split-ggufs.sh")).status().unwrap();
    assert!(split.success(), "scripts/split-ggufs.sh");
    let files: Vec<_> =
        (1..=3).map(|i| root().join(format!(".cache/models/split/smollm2-0000{i}-of-00003.gguf"))).collect();
    let mut of_split = inspect(&["inspect", files[0].to_str().unwrap()]);
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert_eq!(of_split["source"], serde_json::json!({ "kind": "gguf", "bytes": bytes }));
    of_split.as_object_mut().unwrap().remove("source");
    assert_eq!(of_split, of_package);

    let short = inspect(&["inspect", package(), "--max-context", "1024"]);
    let f32_cache = inspect(&["inspect", package(), "--kv-cache", "f32"]);
    assert_eq!(short["context"], 1024);
    assert_eq!(short["cpu"]["weights"], of_package["cpu"]["weights"]);
    assert_eq!(short["gpu"]["kvCache"].as_u64().unwrap() * 8, of_package["gpu"]["kvCache"].as_u64().unwrap());
    assert_eq!(f32_cache["gpu"]["kvCache"].as_u64().unwrap(), 2 * of_package["gpu"]["kvCache"].as_u64().unwrap());

    let err = hearth(&["inspect", root().join("README.md").to_str().unwrap()]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("not a GGUF file"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

/// `hearth embed` of an encoder (all-MiniLM-L6-v2 converted from its Transformers directory): one
/// JSON line whose embeddings are sentence-transformers' (tests/fixtures/minilm, cosine ≥ 0.9999
/// as hearth-core's embeddings test argues) and token counts its tokenizer's; a decoder refused.
#[test]
fn embed_prints_the_embeddings_of_an_encoder() {
    let fetch = Command::new("bash").arg(root().join("scripts/fetch-minilm.sh")).status().unwrap();
    assert!(fetch.success(), "scripts/fetch-minilm.sh");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("minilm");
    let source = root().join(".cache/models/all-MiniLM-L6-v2");
    ok(&["convert", source.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    let reference = fixture("minilm/embeddings.json");
    let picks = [4usize, 30, 47];
    let texts: Vec<&str> = picks.iter().map(|&i| reference["texts"][i].as_str().unwrap()).collect();
    let out: serde_json::Value =
        serde_json::from_str(&ok(&[&["embed", "--model", dir.to_str().unwrap()], &texts[..]].concat())).unwrap();
    assert_eq!(out["dims"], 384);
    for (k, &i) in picks.iter().enumerate() {
        assert_eq!(out["tokens"][k], reference["token_ids"][i].as_array().unwrap().len(), "text {i}");
        let ours: Vec<f64> = out["embeddings"][k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let theirs: Vec<f64> =
            reference["embeddings"][i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let dot: f64 = ours.iter().zip(&theirs).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos = dot / (norm(&ours) * norm(&theirs));
        assert!(cos >= 0.9999, "text {i}: cosine {cos}");
    }
    assert_eq!(out["backend"], "cpu", "a software adapter is passed over unless asked for");
    // The GPU engine (lavapipe here, asked for by name): the same embeddings, all texts in one step.
    let gpu: serde_json::Value =
        serde_json::from_str(&ok(
            &[&["embed", "--model", dir.to_str().unwrap(), "--backend", "gpu"], &texts[..]].concat()
        ))
        .unwrap();
    assert_eq!((&gpu["backend"], &gpu["tokens"]), (&serde_json::json!("gpu"), &out["tokens"]));
    for k in 0..picks.len() {
        let (a, b) = (gpu["embeddings"][k].as_array().unwrap(), out["embeddings"][k].as_array().unwrap());
        let diff = a.iter().zip(b).map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs()).fold(0.0, f64::max);
        // Both within 1e-5 of the library's per component (embeddings.rs on each engine).
        assert!(diff <= 2e-5, "text {}: the GPU's embedding differs from the CPU's by {diff}", picks[k]);
    }
    let err = hearth(&["embed", "--model", package(), "hello"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("is a decoder"), "{}", String::from_utf8_lossy(&err.stderr));

    // `hearth bench` of an encoder: its embeddings per second for batches of 1, 16 and 64 texts
    // (figures, not asserted: speed lives in the README), and texts longer than it takes refused.
    let bench: serde_json::Value = serde_json::from_str(&ok(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--backend",
        "cpu",
        "--prompt-tokens",
        "12",
    ]))
    .unwrap();
    assert_eq!(bench["tokens_per_text"], 12);
    let texts: Vec<u64> = bench["batches"].as_array().unwrap().iter().map(|b| b["texts"].as_u64().unwrap()).collect();
    assert_eq!(texts, [1, 16, 64]);
    assert!(bench["batches"].as_array().unwrap().iter().all(|b| b["embeddings_per_s"].as_f64().unwrap() > 0.0));
    let err = hearth(&["bench", "--model", dir.to_str().unwrap(), "--backend", "cpu", "--prompt-tokens", "257"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("more than the 256 tokens"), "{err:?}");
    let args = ["bench", "--model", dir.to_str().unwrap(), "--backend", "gpu", "--prompt-tokens", "12"];
    let bench: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(bench["backend"], "gpu");
    assert!(bench["adapter"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(bench["batches"].as_array().unwrap().len(), 3);
}
