//! Shared by the integration tests: the real SmolLM2 model (fetched once into `.cache/`, outside git)
//! and the llama.cpp fixtures under `tests/fixtures/`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::generate::Backend;

mod scratch;
pub use scratch::scratch_dir;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = repo_root().join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {} is not JSON: {e}", path.display()))
}

/// Every tiny random model of `tests/fixtures/tiny/` (the GGUFs `make_tiny.py` writes), in name order.
pub fn tiny_ggufs() -> Vec<PathBuf> {
    let dir = repo_root().join("tests/fixtures/tiny");
    let mut ggufs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    ggufs.sort();
    assert!(ggufs.len() >= 10, "the tiny fixtures in {}", dir.display());
    ggufs
}

/// Run a fetch script (idempotent) and return the model file it provides.
fn fetched(script: &str, file: &str) -> PathBuf {
    let root = repo_root();
    let status = Command::new("bash").arg(root.join("scripts").join(script)).status().expect("run fetch script");
    assert!(status.success(), "scripts/{script} failed: this test needs {file}");
    root.join(".cache/models").join(file)
}

/// The SmolLM2-135M-Instruct GGUF, fetched by `scripts/fetch-smollm2.sh` if it is not there yet.
pub fn smollm2_gguf() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("fetch-smollm2.sh", "SmolLM2-135M-Instruct.Q4_1.gguf")).clone()
}

/// The Gemma 3 270M GGUF (a SentencePiece-style vocabulary of 262k tokens), fetched if needed.
pub fn gemma3_gguf() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("fetch-gemma3.sh", "gemma-3-270m-q4_k_m.gguf")).clone()
}

/// SmolLM2 converted with default options (lossless `keep`), once per test process.
pub fn smollm2_package() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch_dir().join("smollm2");
        convert(&smollm2_gguf(), &out, &ConvertOptions::default()).expect("convert SmolLM2");
        out
    })
    .clone()
}

/// Gemma 3 270M converted with default options (`keep`: every block type kept losslessly, Q8_0 as
/// q8, Q5_0 as q5, Q4_K and Q6_K as q4k and q6k), once per test process.
pub fn gemma3_package() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch_dir().join("gemma3");
        convert(&gemma3_gguf(), &out, &ConvertOptions::default()).expect("convert Gemma 3");
        out
    })
    .clone()
}

/// Records how many tokens each forward pass runs, and passes truncation through.
pub struct Recording<'a> {
    pub inner: &'a mut dyn Backend,
    pub runs: Vec<usize>,
}

impl Backend for Recording<'_> {
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> hearth_core::Result<Vec<f32>> {
        self.runs.push(tokens.len());
        self.inner.forward(tokens, all_logits)
    }
    fn forward_sample(
        &mut self,
        tokens: &[u32],
        sampler: &mut hearth_core::sampling::Sampler,
        history: &[u32],
    ) -> hearth_core::Result<u32> {
        self.runs.push(tokens.len());
        self.inner.forward_sample(tokens, sampler, history)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn truncate(&mut self, len: usize) -> bool {
        self.inner.truncate(len)
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
}

/// Models split across files by gguf-py (`scripts/split-ggufs.sh`, run if needed): for each, the
/// split's files in order and the GGUF they were split from.
pub fn split_ggufs() -> Vec<(Vec<PathBuf>, PathBuf)> {
    static SPLITS: OnceLock<Vec<(Vec<PathBuf>, PathBuf)>> = OnceLock::new();
    SPLITS
        .get_or_init(|| {
            let whole = smollm2_gguf();
            let root = repo_root();
            let status =
                Command::new("bash").arg(root.join("scripts/split-ggufs.sh")).status().expect("run the script");
            assert!(status.success(), "scripts/split-ggufs.sh failed");
            let dir = root.join(".cache/models/split");
            let tiny = root.join("tests/fixtures/tiny");
            [("smollm2", whole), ("qwen3", tiny.join("qwen3.gguf")), ("phi3", tiny.join("phi3.gguf"))]
                .into_iter()
                .map(|(name, whole)| {
                    let files = (1..=3).map(|i| dir.join(format!("{name}-{i:05}-of-00003.gguf"))).collect();
                    (files, whole)
                })
                .collect()
        })
        .clone()
}

/// all-MiniLM-L6-v2 as a Transformers directory (`scripts/fetch-minilm.sh`, run if needed).
pub fn minilm_dir() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = repo_root();
        let status = Command::new("bash").arg(root.join("scripts/fetch-minilm.sh")).status().expect("run the script");
        assert!(status.success(), "scripts/fetch-minilm.sh failed");
        root.join(".cache/models/all-MiniLM-L6-v2")
    })
    .clone()
}
