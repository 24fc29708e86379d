//! A package's `manifest.json` on any bytes, through what the browser's CPU loader does with it:
//! parsed and validated, planned against a memory limit, every tensor's arrays allocated, every
//! shard fed (its bytes made up, as a verified shard's would be), and the engine built and run.
//! The plan must hold the allocation to what it said: libFuzzer's malloc limit catches one past it.
#![no_main]

use hearth_core::assemble::ShardAssembler;
use hearth_core::fast::FastEngine;
use hearth_core::package::parse_manifest;
use hearth_core::plan::CpuPlan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = parse_manifest(data, "manifest.json") else { return };
    let Ok(plan) = CpuPlan::fast(&manifest, Some(64)) else { return };
    if plan.check(&manifest.name, hearth_fuzz::ENGINE_BYTES, "the fuzz target's limit").is_err() {
        return;
    }
    let Ok(mut assembler) = ShardAssembler::new(manifest.clone()) else { return };
    assert_eq!(assembler.bytes(), plan.weights, "the plan says what the assembler allocates");
    for (index, shard) in manifest.shards.iter().enumerate() {
        let mut copy = |at: u64, dst: &mut [u8]| {
            for (i, b) in dst.iter_mut().enumerate() {
                *b = (at as usize + i).wrapping_mul(31) as u8 & 0x3f;
            }
        };
        assembler.feed_shard(index, shard.size, &mut copy).expect("a shard of the declared size is taken");
    }
    let Ok((manifest, tensors)) = assembler.finish() else { return };
    if let Ok(mut engine) = FastEngine::new(manifest.config, tensors) {
        let _ = engine.forward(&[0, 1], false);
    }
});
