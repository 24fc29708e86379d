//! Attention's prepared dispatches (`shaders/attention.wgsl`): on software adapters the row split
//! while lavapipe's loop limiter allows it, everywhere else the split ("flash-decoding") kernel and
//! its combine pass. The uniform `AttentionDims` mirrors the shader's `Dims`.

use hearth_core::{HearthError, Result};

use crate::builder::{Dispatch, Step};
use crate::kernels::{
    bind_group, entry, grid_2d, uniform_of, whole, Kernels, ROWS_ATTENTION_MAX_ITERATIONS, WORKGROUP,
};

/// Workgroups the split kernel shares a query's positions among on GPUs, for one token (decode:
/// many, to fill the GPU from a single query) and for several (prefill: the tokens give
/// parallelism). Software adapters run workgroups a few at a time, on CPU cores: they get a few
/// splits, and more where a split's tiles would run past lavapipe's loop limiter.
const SPLITS_GPU: (u32, u32) = (64, 8);
const SPLITS_SOFTWARE: (u32, u32) = (4, 1);
/// Positions per tile of the split kernel (`TILE` in the shader).
const TILE: usize = 64;
/// Decode over at most this many tiles runs the split kernel as one split per head group, which
/// writes the output itself: no combine pass. A tile costs a workgroup about two dependent rounds
/// of memory loads (keys, then values), so four in a row cost about what one more dispatch does
/// natively (5–10 µs) and far less than one in a browser (20–40 µs). Past them, a split per tile
/// up to the adapter's decode splits.
const ONE_SPLIT_TILES: u32 = 4;
/// The widest head the split kernel's workgroup arrays hold (`HEAD_DIM_MAX` in the shader).
pub const HEAD_DIM_MAX: usize = 256;

/// The shader's `Dims`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AttentionDims {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Scores per (head, token) row of the row split's scratch buffer: the cache's positions.
    pub context: u32,
    pub scale: f32,
    pub cache_rows: u32,
    /// Keys a query sees, its own included; 0: every earlier position.
    pub window: u32,
    /// ALiBi's maximum bias; 0: no ALiBi.
    pub alibi_max_bias: f32,
    /// Gemma 2's cap on scores; 0: none.
    pub softcap: f32,
    /// Set by [`prepare`] for the adapter: the most splits of a decode step (it takes one per
    /// tile up to this many), and the splits of a prefill step.
    pub splits_decode: u32,
    pub splits_prefill: u32,
    /// Decode over at most this many tiles takes one split ([`ONE_SPLIT_TILES`]).
    pub one_split_tiles: u32,
}

impl AttentionDims {
    /// The model's facts; the splits are the adapter's, chosen by [`prepare`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        context: usize,
        scale: f32,
        cache_rows: usize,
        window: Option<usize>,
        alibi_max_bias: f32,
        softcap: Option<f32>,
    ) -> Self {
        AttentionDims {
            n_heads: n_heads as u32,
            n_kv_heads: n_kv_heads as u32,
            head_dim: head_dim as u32,
            context: context as u32,
            scale,
            cache_rows: cache_rows as u32,
            window: window.unwrap_or(0) as u32,
            alibi_max_bias,
            softcap: softcap.unwrap_or(0.0),
            splits_decode: 0,
            splits_prefill: 0,
            one_split_tiles: ONE_SPLIT_TILES,
        }
    }

    /// With the split counts that suit `kernels`' adapter.
    fn for_adapter(self, kernels: &Kernels) -> Self {
        let (decode, prefill) = if kernels.software { SPLITS_SOFTWARE } else { SPLITS_GPU };
        // lavapipe's loop limiter (ROWS_ATTENTION_MAX_ITERATIONS) counts an invocation's loop
        // iterations: per tile about 8 (heads, if the compiler keeps the loop) times the
        // dimensions it scores and the positions it weighs, plus the reductions.
        let hd4 = (self.head_dim as usize / 4).max(1);
        let per_tile = 8 * (hd4 + TILE / (TILE / hd4).max(1)) + 150;
        let most_tiles = (ROWS_ATTENTION_MAX_ITERATIONS / per_tile).max(1);
        let needed = self.visible().div_ceil(TILE).div_ceil(most_tiles) as u32;
        let at_least = |splits: u32| if kernels.software { splits.max(needed) } else { splits };
        AttentionDims { splits_decode: at_least(decode), splits_prefill: at_least(prefill), ..self }
    }

    /// Splits of the split kernel for `step` (the shader's `splits()`): a prefill step's fixed
    /// count; for decode one per tile the query sees, up to `splits_decode`, and one alone over
    /// at most `one_split_tiles`.
    pub fn splits(&self, step: Step) -> u32 {
        if step.n_tokens > 1 {
            return self.splits_prefill;
        }
        let mut seen = step.start + 1;
        if self.window > 0 {
            seen = seen.min(self.window);
        }
        let tiles = seen.div_ceil(TILE as u32);
        if tiles <= self.one_split_tiles {
            1
        } else {
            self.splits_decode.min(tiles)
        }
    }

    /// Positions one query sees at most: the window's, or the cache's.
    pub fn visible(&self) -> usize {
        if self.window == 0 {
            self.context as usize
        } else {
            self.window.min(self.context) as usize
        }
    }

    /// Workgroups per (split, token) of the split kernel: each takes one KV head's query heads, 8
    /// at most, so a KV head with more gets several.
    fn head_groups(&self) -> u32 {
        let group = self.n_heads / self.n_kv_heads.max(1);
        self.n_kv_heads * group.div_ceil(8)
    }
}

/// The buffers attention reads and writes.
pub struct AttentionBuffers<'a> {
    pub step: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    /// Scratch of at least [`scratch_len`] values: the row split's scores or the split kernel's
    /// per-split records. One buffer serves every layer (they run one after another).
    pub scratch: &'a wgpu::Buffer,
    /// The step's token buffer, always bound (WebGPU lays out every binding a shader names);
    /// read only with `spans`: after the ids, each token's first and last visible positions.
    pub tokens: &'a wgpu::Buffer,
    /// Each query attends over the span `tokens` gives it (an encoder: its own text, both ways),
    /// not the positions up to its own.
    pub spans: bool,
}

/// Whether attention with `dims` runs the row split on this adapter.
fn uses_rows(kernels: &Kernels, dims: &AttentionDims) -> bool {
    kernels.attention_uses_rows(dims.visible(), dims.head_dim as usize)
}

/// How many times attention with `dims` reads each cached key and value row: once per query head
/// in the row split, once per workgroup of a KV head's query heads in the split kernel.
pub fn reads_per_row(kernels: &Kernels, dims: &AttentionDims) -> usize {
    if uses_rows(kernels, dims) {
        (dims.n_heads / dims.n_kv_heads.max(1)) as usize
    } else {
        (dims.head_groups() / dims.n_kv_heads.max(1)) as usize
    }
}

/// f32 values of scratch that attention with `dims` needs for steps of up to `chunk` tokens.
pub fn scratch_len(kernels: &Kernels, dims: &AttentionDims, chunk: usize) -> usize {
    let heads = dims.n_heads as usize;
    if uses_rows(kernels, dims) {
        return chunk * heads * dims.context as usize;
    }
    let d = dims.for_adapter(kernels);
    let record = dims.head_dim as usize + 4;
    let records = (d.splits_decode as usize).max(chunk * d.splits_prefill as usize);
    heads * records * record
}

/// The dispatches of one layer's attention: one for the row split, two (split, combine) otherwise,
/// the combine pass recorded only for steps that take more than one split.
pub fn prepare(
    kernels: &Kernels,
    device: &wgpu::Device,
    dims: AttentionDims,
    kv_f16: bool,
    buffers: &AttentionBuffers<'_>,
) -> Result<Vec<Dispatch>> {
    let hd = dims.head_dim as usize;
    if hd % 4 != 0 || (hd > HEAD_DIM_MAX && !uses_rows(kernels, &dims)) {
        return Err(HearthError::AdapterLimit(format!(
            "attention heads of {hd} dimensions: the GPU engine takes multiples of 4 up to {HEAD_DIM_MAX}"
        )));
    }
    let dims = dims.for_adapter(kernels);
    let dims_buffer = uniform_of(device, "attention dims", &dims);
    let b = buffers;
    let n_heads = dims.n_heads;
    if uses_rows(kernels, &dims) {
        let pipeline = kernels.attention_rows(kv_f16, b.spans);
        let group = bind_group(
            device,
            &pipeline,
            &[
                entry(0, whole(&dims_buffer)),
                entry(1, whole(b.step)),
                entry(2, whole(b.q)),
                entry(3, whole(b.k_cache)),
                entry(4, whole(b.v_cache)),
                entry(5, whole(b.scratch)),
                entry(6, whole(b.out)),
                entry(8, whole(b.tokens)),
            ],
        );
        let grid = move |s: Step| Some(((n_heads * s.n_tokens).div_ceil(WORKGROUP), 1, 1));
        return Ok(vec![Dispatch::single(pipeline, group, Box::new(grid))]);
    }
    let split = kernels.attention_split(kv_f16, dims.head_dim, b.spans);
    let split_group = bind_group(
        device,
        &split,
        &[
            entry(0, whole(&dims_buffer)),
            entry(1, whole(b.step)),
            entry(2, whole(b.q)),
            entry(3, whole(b.k_cache)),
            entry(4, whole(b.v_cache)),
            entry(6, whole(b.out)),
            entry(7, whole(b.scratch)),
            entry(8, whole(b.tokens)),
        ],
    );
    let combine = kernels.attention_combine();
    let combine_group = bind_group(
        device,
        &combine,
        &[entry(0, whole(&dims_buffer)), entry(1, whole(b.step)), entry(6, whole(b.out)), entry(7, whole(b.scratch))],
    );
    let head_groups = dims.head_groups();
    let split_grid = move |s: Step| Some((dims.splits(s), head_groups, s.n_tokens));
    let combine_grid = move |s: Step| {
        let (x, y) = grid_2d(s.n_tokens * n_heads);
        (dims.splits(s) > 1).then_some((x, y, 1))
    };
    Ok(vec![
        Dispatch::single(split, split_group, Box::new(split_grid)),
        Dispatch::single(combine, combine_group, Box::new(combine_grid)),
    ])
}
