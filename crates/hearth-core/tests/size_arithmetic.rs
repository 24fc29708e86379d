//! The size arithmetic on hostile numbers (issue 17, docs/SECURITY.md): for random configs and
//! tensor tables in a manifest, either the reader accepts it and every size the loader plans
//! (`CpuPlan`, and `GpuPlan`'s KV cache) and allocates (`ShardAssembler`) equals one computed here
//! independently in u128,
//! or it refuses with a typed error. Never a panic, a wrapped product, or an allocation larger than
//! what the plan said (the assembler is only built where the plan is small, and its bytes checked).

#![cfg(not(target_arch = "wasm32"))]

mod common;

use hearth_core::assemble::ShardAssembler;
use hearth_core::generate::ring_rows;
use hearth_core::package::parse_manifest;
use hearth_core::plan::{CpuPlan, GpuPlan, CPU_WORKING_BYTES};
use hearth_core::HearthError;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A real manifest (the Llama 3.2 1B shape fixture) to vary.
fn base() -> Value {
    let path = common::repo_root().join("tests/fixtures/shapes/llama-3.2-1b-instruct/manifest.json");
    serde_json::from_slice(&std::fs::read(path).expect("the shape fixture")).expect("JSON")
}

/// Sizes from the plausible to the absurd: small, powers of two up to 2^63, any u64, zero.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..=64, 1u64..=1 << 20, (0u32..64).prop_map(|s| 1u64 << s), any::<u64>(), Just(0)]
}

fn typed(e: &HearthError) -> bool {
    matches!(
        e,
        HearthError::BadPackage { .. } | HearthError::OutOfMemory { .. } | HearthError::UnsupportedArchitecture(_)
    )
}

/// The KV cache of the fast engine (f16 keys and values) at `positions`, from the definitions.
fn cache_bytes(c: &Value, positions: u64) -> u128 {
    let n = |k: &str| c[k].as_u64().map(u128::from);
    let (layers, kv_heads, head_dim) = (n("n_layers").unwrap(), n("n_kv_heads").unwrap(), n("head_dim").unwrap());
    let window = n("sliding_window");
    let pattern = n("sliding_window_pattern");
    (0..layers)
        .map(|l| {
            let windowed = window.filter(|_| !matches!(pattern, Some(p) if p > 0 && (l + 1) % p == 0));
            let rows = windowed.map_or(positions as u128, |w| (ring_rows(w as usize) as u128).min(positions as u128));
            rows * kv_heads * head_dim * 2 * 2
        })
        .sum()
}

/// The GPU engine's K (or V) buffer of each layer at `positions`, chunks of `chunk` tokens: rows
/// of f32, or of f16 pairs in one 4-byte word each (GpuPlan's definition, written out again).
fn gpu_layer_bytes(c: &Value, positions: u64, f16: bool, chunk: u64) -> Vec<u128> {
    let n = |k: &str| c[k].as_u64().map(u128::from);
    let (layers, kv_heads, head_dim) = (n("n_layers").unwrap(), n("n_kv_heads").unwrap(), n("head_dim").unwrap());
    let (window, pattern) = (n("sliding_window"), n("sliding_window_pattern"));
    let words = if f16 { kv_heads * head_dim / 2 } else { kv_heads * head_dim };
    (0..layers)
        .map(|l| {
            let windowed = window.filter(|_| !matches!(pattern, Some(p) if p > 0 && (l + 1) % p == 0));
            let rows = windowed.map_or(positions as u128, |w| (w + u128::from(chunk) - 1).min(positions as u128));
            rows * words * 4
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random sizes in every count of the config: refused naming a field, or planned exactly.
    #[test]
    fn config_sizes_are_refused_or_planned_exactly(
        layers in size(), hidden in size(), heads in size(), kv_heads in size(), head_dim in size(),
        ffn in size(), vocab in size(), context in size(), window in proptest::option::of(size()),
        pattern in proptest::option::of(size()), max_context in proptest::option::of(0usize..1 << 26),
        limit in size(), kv_f16 in any::<bool>(), chunk in 1usize..=64, binding in size(),
    ) {
        let mut m = base();
        let c = &mut m["config"];
        for (k, v) in [("n_layers", layers), ("hidden_size", hidden), ("n_heads", heads), ("n_kv_heads", kv_heads),
                       ("head_dim", head_dim), ("ffn_size", ffn), ("vocab_size", vocab), ("context_length", context)] {
            c[k] = json!(v);
        }
        c["sliding_window"] = json!(window);
        c["sliding_window_pattern"] = json!(pattern);
        // RoPE rotates all of the head (the manifest's 64 would not suit every head_dim).
        c["rope"]["dim"] = json!(head_dim);
        let json = serde_json::to_vec(&m).unwrap();
        let manifest = match parse_manifest(&json, "manifest.json") {
            Ok(manifest) => manifest,
            Err(e) => { prop_assert!(typed(&e), "{e:?}"); return Ok(()); }
        };
        let plan = match CpuPlan::fast(&manifest, max_context) {
            Ok(plan) => plan,
            Err(e) => {
                prop_assert!(typed(&e), "{e:?}");
                prop_assert!(layers > manifest.tensors.len() as u64, "only more layers than tensors is refused here: {e}");
                return Ok(());
            }
        };
        let positions = max_context.map_or(context, |p| (p as u64).clamp(1, context));
        prop_assert_eq!(plan.positions as u64, positions);
        let cache = cache_bytes(&m["config"], positions);
        prop_assert_eq!(u128::from(plan.cache), cache);
        let weights: u128 = m["tensors"].as_array().unwrap().iter()
            .flat_map(|t| t["parts"].as_object().unwrap().values())
            .map(|p| u128::from(p["length"].as_u64().unwrap()))
            .sum();
        prop_assert_eq!(u128::from(plan.weights), weights);
        let total = weights + cache + u128::from(CPU_WORKING_BYTES);
        match plan.check(&manifest.name, limit, "the test's limit") {
            Ok(()) => prop_assert!(total <= u128::from(limit)),
            Err(e) => {
                prop_assert!(matches!(e, HearthError::OutOfMemory { bytes, .. } if u128::from(bytes) == total), "{e:?}");
                prop_assert!(total > u128::from(limit));
            }
        }
        // The GPU engine's KV cache: planned from the same checked manifest, each layer's buffer
        // checked against one binding.
        let gpu = GpuPlan::new(&manifest, max_context, kv_f16, chunk).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let layers = gpu_layer_bytes(&m["config"], positions, kv_f16, chunk as u64);
        prop_assert_eq!(u128::from(gpu.cache), layers.iter().map(|b| 2 * b).sum::<u128>());
        prop_assert_eq!(gpu.weights, plan.weights);
        let over = layers.iter().any(|&b| b > u128::from(binding));
        match gpu.check_binding(binding) {
            Ok(()) => prop_assert!(!over),
            Err(e) => prop_assert!(over && matches!(e, HearthError::AdapterLimit(_)), "{e:?}"),
        }
    }

    /// One tensor of a random shape, encoding and part table: refused, or its parts are what the
    /// encoding gives for its shape and the assembler allocates exactly the planned bytes.
    #[test]
    fn tensor_sizes_are_refused_or_allocated_exactly(
        shape in proptest::collection::vec(size(), 1..=4),
        dtype in prop_oneof![Just("f32"), Just("f16"), Just("q8"), Just("q4")],
        group in prop_oneof![Just(32u64), Just(64), Just(128), size()],
        honest in any::<bool>(),
        lengths in proptest::collection::vec(size(), 3),
    ) {
        let n: Option<u128> = shape.iter().try_fold(1u128, |n, &d| n.checked_mul(u128::from(d)));
        let cols = u128::from(*shape.last().unwrap());
        // The parts the encoding needs (codes, then per-group f16 scales and mins), when it suits the shape.
        let expected: Option<Vec<(&str, u128)>> = n.filter(|&n| n <= u128::from(u64::MAX)).and_then(|n| {
            let groups = |g: u128| (cols > 0 && cols % g == 0).then_some(n / g * 2);
            match dtype {
                "f32" => Some(vec![("data", n * 4)]),
                "f16" => Some(vec![("data", n * 2)]),
                "q8" => Some(vec![("codes", n), ("scales", groups(32)?)]),
                _ => [32, 64, 128].contains(&group).then_some(())
                    .and_then(|_| Some(vec![("codes", n / 2), ("scales", groups(u128::from(group))?), ("mins", groups(u128::from(group))?)])),
            }
        });
        let names: &[&str] = match dtype { "f32" | "f16" => &["data"], "q8" => &["codes", "scales"], _ => &["codes", "scales", "mins"] };
        // Honest part tables take the sizes computed here (where they fit a u64), others random ones.
        let (parts, canonical): (Vec<(&str, u64)>, bool) = match (&expected, honest) {
            (Some(e), true) if e.iter().all(|(_, l)| *l <= u128::from(u64::MAX / 2)) => (e.iter().map(|(k, l)| (*k, *l as u64)).collect(), true),
            _ => (names.iter().zip(&lengths).map(|(k, l)| (*k, *l)).collect(), false),
        };
        // Each part starts at a multiple of 256 (docs/FORMAT.md), as `hearth convert` writes them.
        let mut offset = 0u64;
        let mut table = serde_json::Map::new();
        for (k, l) in &parts {
            offset = offset.div_ceil(256).saturating_mul(256);
            table.insert(k.to_string(), json!({"offset": offset, "length": l}));
            offset = offset.saturating_add(*l);
        }
        let mut m = base();
        m["config"]["n_layers"] = json!(1);
        m["shards"] = json!([{"file": "shard-00000.bin", "size": offset, "sha256": "0".repeat(64)}]);
        m["tensors"] = json!([{"name": "t", "dtype": dtype, "shape": shape, "shard": 0, "offset": 0,
                                "length": offset, "group_size": group, "parts": table}]);
        let json = serde_json::to_vec(&m).unwrap();
        let manifest = match parse_manifest(&json, "manifest.json") {
            Ok(manifest) => manifest,
            Err(e) => { prop_assert!(typed(&e), "{e:?}"); return Ok(()); }
        };
        // Accepted: the part table is exactly what the encoding needs for this shape.
        let expected = expected.expect("an accepted tensor suits its encoding");
        let accepted: Vec<(&str, u128)> = parts.iter().map(|(k, l)| (*k, u128::from(*l))).collect();
        prop_assert_eq!(&accepted, &expected);
        let plan = CpuPlan::fast(&manifest, Some(1)).expect("a planned manifest");
        prop_assert_eq!(u128::from(plan.weights), expected.iter().map(|(_, l)| l).sum::<u128>());
        if plan.weights <= 16 << 20 {
            match ShardAssembler::new(manifest) {
                Ok(assembler) => prop_assert_eq!(assembler.bytes(), plan.weights),
                // Random lengths can match the encoding's with parts elsewhere than it puts them.
                Err(e) => prop_assert!(!canonical && typed(&e), "{e:?}"),
            }
        }
    }
}
