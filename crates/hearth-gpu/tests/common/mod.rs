//! Shared by the GPU tests on the real SmolLM2 (agents.rs, logprobs.rs): the model converted into a
//! temporary directory, a GPU engine for it, and a generation run to its end.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::generate::{generate, GenerateOutput, GenerateRequest};
use hearth_core::model::Model;
use hearth_gpu::{GpuContext, GpuEngine};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// SmolLM2 converted into `dir`, and a GPU engine of `context` positions for it (None without an
/// adapter).
pub fn smollm2(dir: &Path, context: usize) -> Option<(Model, GpuEngine)> {
    let ctx = GpuContext::new().expect("opening the GPU device")?;
    let root = repo_root();
    assert!(Command::new("bash").arg(root.join("scripts/fetch-smollm2.sh")).status().unwrap().success());
    let out = dir.join("smollm2");
    convert(&root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"), &out, &ConvertOptions::default()).unwrap();
    let model = Model::open(&out).unwrap();
    let engine = GpuEngine::new(ctx, &model.package, Some(context)).unwrap();
    Some((model, engine))
}

pub fn run(model: &Model, engine: &mut GpuEngine, req: &GenerateRequest) -> GenerateOutput {
    generate(engine, model.tokenizer(), req, &|| 0.0, &mut |_| Ok(())).unwrap()
}
