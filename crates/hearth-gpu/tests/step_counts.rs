//! The dispatches a decode step of the Llama-3.2-1B shape (`tests/fixtures/shapes/`, random weights)
//! records with the kernels hardware GPUs get (forced on any adapter, lavapipe included): five per
//! layer at a short context, six once attention's positions need several splits and their combine
//! pass; one each for the embedding and the head (one more each per extra piece, where the
//! adapter's binding limit cuts the 128,256-row table: lavapipe's does) and two for a greedy
//! sampler (the per-block argmax over the vocabulary's 32 blocks, then `sample`). Counted by the
//! engine as it records.

use std::path::Path;

use hearth_core::package::TensorSource;
use hearth_core::synthetic::SyntheticWeights;
use hearth_gpu::{GpuContext, GpuEngine, StoredMatrix};

#[test]
fn llama_1b_shape_decode_records_five_dispatches_per_layer_at_short_context() {
    let Some(mut ctx) = GpuContext::new().expect("opening the GPU device") else {
        eprintln!("\n!!! NO GPU ADAPTER: skipping GPU test (install mesa-vulkan-drivers for lavapipe) !!!\n");
        return;
    };
    ctx.software = false;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/shapes/llama-3.2-1b-instruct");
    let source = SyntheticWeights::open(dir).unwrap();
    let m = source.manifest();
    let layers = m.config.n_layers;
    let (i, table) = m.tensors.iter().enumerate().find(|(_, e)| e.name == "token_embd.weight").unwrap();
    let limit = ctx.limits.max_storage_buffer_binding_size;
    let pieces = StoredMatrix::from_entry(i, table).unwrap().row_ranges(limit).unwrap().len();
    let mut gpu = GpuEngine::new(ctx, &source, Some(4100)).unwrap();
    for (position, per_layer) in [(128usize, 5usize), (4096, 6)] {
        gpu.reset();
        gpu.skip_positions(position).unwrap();
        gpu.forward_argmax(&[1]).unwrap();
        let counts = gpu.last_step();
        eprintln!("Llama-3.2-1B shape, decode at position {position}: {counts:?}");
        let (embed, head) = (pieces, pieces);
        assert_eq!(counts.dispatches, embed + layers * per_layer + head + 2, "position {position}: {counts:?}");
    }
}
