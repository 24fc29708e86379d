//! The GPU sampler (`shaders/sample.wgsl`) against the CPU's `sampling::choose` on random logits
//! over awkward vocabulary sizes. With no adapter at all, each test says so loudly and returns.
//!
//! Tolerance. Counts and the order of candidates are exact on both sides, so greedy choices and
//! top-k sets must match exactly (penalized logits may differ by an ulp where a GPU divides or fuses
//! a multiply-add differently; the greedy test's margins are whole units). Probability masses are
//! sums of the same f32 terms added in a different order (the CPU walks the sorted list, the GPU
//! adds strided partial sums), and GPU `exp` may differ from the CPU's by a few ulps: a cumulative
//! probability differs by about sqrt(n) * 2^-24 for n terms, at most ~1e-5 for the 49157-token
//! vocabulary (the random draws that differ on lavapipe lie within 1e-6 of a boundary). A draw, a
//! top-p or a min-p cut can only go another way than on the CPU within that distance of a boundary
//! between two candidates. So the tests place draws at the midpoints of the CPU's cumulative
//! intervals and cuts halfway between candidates, and use only those whose distance to the nearest
//! boundary exceeds `TOL` = 1e-4 (ten times the bound): there the GPU must give exactly the CPU's
//! token. Random draws (anywhere) must give a token of the CPU's kept set, and the CPU's token
//! itself unless the draw lies within `TOL` of a boundary.
//!
//! Token masks (a constraint's allowed tokens): the GPU is given the logits and the mask, the CPU
//! the logits after `apply_mask`, as `Sampler::sample` does; both must pick the same token, always
//! an allowed one, with the mask dense, sparse, of one or a few tokens, shorter or longer than the
//! vocabulary, or allowing nothing; and a masked greedy step of a real (tiny) model on the GPU
//! engine must take the CPU engine's masked argmax.

use std::path::Path;

use hearth_core::convert::{convert, ConvertOptions};
use hearth_core::cpu::CpuEngine;
use hearth_core::generate::Backend;
use hearth_core::logprobs::StepLogprobs;
use hearth_core::package::Package;
use hearth_core::sampling::{
    apply_logit_bias, apply_mask, apply_penalties, argmax, choose, kept_candidates, mask_allows, Sampler,
    SamplingParams, MAX_LOGIT_BIAS,
};
use hearth_gpu::kernels::{map_read, storage};
use hearth_gpu::sampler::{result_bytes, GpuSampler, Penalties, RESULT_WORDS};
use hearth_gpu::{GpuContext, GpuEngine};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

const TOL: f32 = 1e-4;
/// Draws tested per setting and vocabulary (each is one dispatch; lavapipe runs them on one core).
const MAX_DRAWS: usize = 12;
const VOCABS: [usize; 2] = [49157, 1000];

fn context() -> Option<GpuContext> {
    let ctx = GpuContext::new().expect("opening the GPU device");
    if ctx.is_none() {
        eprintln!("\n!!! SKIPPED: no GPU adapter (install mesa-vulkan-drivers for lavapipe) !!!\n");
    }
    ctx
}

/// A logits buffer, the sampler over it and a staging buffer for the chosen id (and its
/// log-probabilities).
struct Rig<'a> {
    ctx: &'a GpuContext,
    logits: wgpu::Buffer,
    sampler: GpuSampler,
    staging: wgpu::Buffer,
}

impl<'a> Rig<'a> {
    fn new(ctx: &'a GpuContext, vocab: usize) -> Self {
        let logits = storage(&ctx.device, "logits", vocab).unwrap();
        let sampler = GpuSampler::new(ctx, &logits, vocab as u32, 64).unwrap();
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sampled token"),
            size: 4 * RESULT_WORDS as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Rig { ctx, logits, sampler, staging }
    }

    /// The GPU's token, through the engine's path: upload the logits (the engine's output head
    /// writes them), prepare, record, copy 4 bytes, read them.
    fn sample(&self, logits: &[f32], params: &SamplingParams, draw: f32, counts: &[(u32, u32)]) -> u32 {
        self.sample_masked(logits, params, draw, counts, None)
    }

    /// [`Rig::sample`] with a token mask (as `Sampler::mask` gives it).
    fn sample_masked(
        &self,
        logits: &[f32],
        params: &SamplingParams,
        draw: f32,
        counts: &[(u32, u32)],
        mask: Option<&[u32]>,
    ) -> u32 {
        self.sample_logprobs(logits, params, draw, counts, mask, None).0
    }

    /// [`Rig::sample_masked`] with the log-probabilities when `logprobs` is Some(k): the bytes the
    /// engine reads back for them.
    fn sample_logprobs(
        &self,
        logits: &[f32],
        params: &SamplingParams,
        draw: f32,
        counts: &[(u32, u32)],
        mask: Option<&[u32]>,
        logprobs: Option<usize>,
    ) -> (u32, Option<StepLogprobs>) {
        self.ctx.queue.write_buffer(&self.logits, 0, bytemuck::cast_slice(logits));
        self.sampler.prepare(&self.ctx.queue, params, draw, Penalties::Counts(counts), mask, logprobs).unwrap();
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.sampler.record(&mut pass);
        }
        encoder.copy_buffer_to_buffer(self.sampler.result(), 0, &self.staging, 0, result_bytes(logprobs));
        self.ctx.queue.submit([encoder.finish()]);
        self.sampler.read_result(&map_read::<u32>(self.ctx, &self.staging).unwrap(), logprobs).unwrap()
    }
}

/// Standard normal logits plus a dozen clear favourites, like a model's next-token distribution: a
/// handful of likely tokens over a long tail.
fn peaked_logits(vocab: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut logits: Vec<f32> = (0..vocab).map(|_| normal(&mut rng)).collect();
    for j in 0..12 {
        let i = (rng.next_u64() % vocab as u64) as usize;
        logits[i] += 8.0 + 0.37 * j as f32;
    }
    logits
}

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = 1.0 - (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    let u2 = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// The CPU's kept candidates for `logits` under `params` and `counts`, with their cumulative
/// intervals [lo, hi) as fractions of the total (the draw that lands in one takes its token).
fn intervals(params: &SamplingParams, logits: &[f32], counts: &[(u32, u32)]) -> Vec<(u32, f32, f32)> {
    let mut penalized = logits.to_vec();
    apply_penalties(params, &mut penalized, counts);
    let kept = kept_candidates(params, &penalized);
    // The same sums, in the same order, as `choose`.
    let total: f32 = kept.iter().map(|c| c.1).sum();
    let mut acc = 0.0f32;
    kept.iter()
        .map(|&(t, q)| {
            let lo = acc;
            acc += q;
            (t, lo / total, acc / total)
        })
        .collect()
}

/// Every candidate whose interval is wide enough for an exact comparison, with the draw at its
/// midpoint.
fn wide_midpoints(intervals: &[(u32, f32, f32)]) -> Vec<(u32, f32)> {
    intervals.iter().filter(|c| (c.2 - c.1) / 2.0 > TOL).map(|&(t, lo, hi)| (t, (lo + hi) / 2.0)).collect()
}

/// Up to MAX_DRAWS candidates whose interval is wide enough for an exact comparison, spread over
/// the kept list; each with the draw at its midpoint.
fn midpoint_draws(intervals: &[(u32, f32, f32)]) -> Vec<(u32, f32)> {
    let wide = wide_midpoints(intervals);
    let stride = wide.len().div_ceil(MAX_DRAWS).max(1);
    wide.into_iter().step_by(stride).collect()
}

/// Check every midpoint draw against the CPU and the GPU; returns how many were checked.
fn check_midpoints(rig: &Rig, logits: &[f32], params: &SamplingParams, counts: &[(u32, u32)], what: &str) -> usize {
    let cuts = intervals(params, logits, counts);
    let draws = midpoint_draws(&cuts);
    assert!(!draws.is_empty(), "{what}: no candidate wide enough to test");
    for &(token, draw) in &draws {
        let cpu = choose(params, &mut logits.to_vec(), counts, draw);
        assert_eq!(cpu, token, "{what}: the CPU's token for its own midpoint draw {draw}");
        let gpu = rig.sample(logits, params, draw, counts);
        assert_eq!(gpu, cpu, "{what}: draw {draw} ({} kept)", cuts.len());
    }
    draws.len()
}

/// A top-p that cuts halfway through a candidate (the first wide enough at or past the cumulative
/// probability `near`), so that rounding cannot move the cut.
fn top_p_between(params: &SamplingParams, logits: &[f32], counts: &[(u32, u32)], near: f32) -> f32 {
    try_top_p_between(params, logits, counts, near).unwrap()
}

/// [`top_p_between`], or None when no candidate is wide enough.
fn try_top_p_between(params: &SamplingParams, logits: &[f32], counts: &[(u32, u32)], near: f32) -> Option<f32> {
    let open = SamplingParams { top_p: 1.0, min_p: 0.0, ..params.clone() };
    let cuts = intervals(&open, logits, counts);
    let (_, lo, hi) = *cuts.iter().find(|c| c.2 >= near && (c.2 - c.1) / 2.0 > TOL)?;
    Some((lo + hi) / 2.0)
}

/// A min-p whose floor lies halfway (in log space) between the probabilities of two neighbouring
/// candidates, the first below `near` times the best, with at least 10% between them.
fn min_p_between(params: &SamplingParams, logits: &[f32], counts: &[(u32, u32)], near: f32) -> f32 {
    let cut = try_min_p_between(params, logits, counts, near);
    cut.unwrap_or_else(|| panic!("min-p {near}: no neighbours far enough apart to cut safely"))
}

/// [`min_p_between`], or None when no candidate lies below `near` times the best or the
/// neighbours there are too close.
fn try_min_p_between(params: &SamplingParams, logits: &[f32], counts: &[(u32, u32)], near: f32) -> Option<f32> {
    let open = SamplingParams { top_p: 1.0, min_p: 0.0, ..params.clone() };
    let mut penalized = logits.to_vec();
    apply_penalties(params, &mut penalized, counts);
    let kept = kept_candidates(&open, &penalized);
    let best = kept[0].1;
    let j = kept.iter().position(|c| c.1 < near * best)?;
    let (above, below) = (kept[j - 1].1, kept[j].1);
    (above > 1.1 * below).then(|| (above * below).sqrt() / best)
}

#[test]
fn greedy_takes_the_first_of_tied_maxima_and_penalties_move_it() {
    let Some(ctx) = context() else { return };
    for vocab in VOCABS {
        let rig = Rig::new(&ctx, vocab);
        let mut logits = peaked_logits(vocab, 1);
        let top = 40.0;
        for i in [vocab - 1, 17, vocab / 2, 300] {
            logits[i] = top;
        }
        let greedy = SamplingParams::default();
        let check = |params: &SamplingParams, counts: &[(u32, u32)], expected: u32| {
            let cpu = choose(params, &mut logits.clone(), counts, 0.0);
            assert_eq!(cpu, expected, "vocab {vocab}: CPU");
            assert_eq!(rig.sample(&logits, params, 0.0, counts), expected, "vocab {vocab}: GPU, {params:?}");
            // Past one block of 4096 tokens, top_blocks applies the penalties to its own tokens.
            assert_eq!(rig.sampler.dispatches(), if vocab > 4096 { 2 } else { 1 }, "vocab {vocab}: dispatches");
        };
        check(&greedy, &[], 17);
        // 40 / 1.5 < 40: token 17 drops behind the other tied maxima, the first of which is 300.
        let repetition = SamplingParams { repetition_penalty: 1.5, ..greedy.clone() };
        check(&repetition, &[(17, 1)], 300);
        // Frequency and presence penalties on 17 and 300 (and a token outside the vocabulary,
        // which both sides ignore) leave vocab / 2.
        let subtract = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..greedy.clone() };
        check(&subtract, &[(17, 3), (300, 1), (vocab as u32 + 5, 2)], (vocab / 2) as u32);
    }
}

/// A greedy step reads the per-block bests of `top_blocks` (4096 tokens each; 49,157 tokens make
/// 12 full blocks and one of 5): a single maximum at either end of a block, in the last (partial)
/// block and at the very end is found; tied maxima in different blocks give the lower index; a
/// masked-out maximum in another block gives way to the best allowed token; and top-k 1 at a
/// temperature (each block's top 1 by the chain's order) still takes the maximum with a draw of 0.
/// A maximum of 0 held as -0 at a lower index and +0 at a higher one in the same block: greedy
/// takes the lower (the CPU's argmax: -0 equals +0), top-k 1 the +0 (its order: +0 above -0).
#[test]
fn greedy_finds_the_maximum_in_any_block() {
    let Some(ctx) = context() else { return };
    let vocab = VOCABS[0];
    let rig = Rig::new(&ctx, vocab);
    let base = peaked_logits(vocab, 9);
    let greedy = SamplingParams::default();
    let hot = SamplingParams { temperature: 0.5, top_k: 1, ..Default::default() };
    for at in [0, 4095, 4096, 8191, 30_000, 49_151, 49_152, vocab - 1] {
        let mut logits = base.clone();
        logits[at] = 60.0;
        assert_eq!(rig.sample(&logits, &greedy, 0.0, &[]), at as u32, "a single maximum at {at}");
        assert_eq!(rig.sample(&logits, &hot, 0.0, &[]), at as u32, "top-k 1 at a temperature, maximum at {at}");
    }
    for (first, second) in [(4096, 40_000), (100, vocab - 1), (8191, 8192)] {
        let mut logits = base.clone();
        logits[first] = 60.0;
        logits[second] = 60.0;
        assert_eq!(rig.sample(&logits, &greedy, 0.0, &[]), first as u32, "tied at {first} and {second}");
    }
    let mut logits = base.clone();
    logits[vocab - 1] = 80.0;
    logits[100] = 60.0;
    let mut mask = vec![u32::MAX; vocab.div_ceil(32)];
    mask[(vocab - 1) / 32] &= !(1 << ((vocab - 1) % 32));
    assert_eq!(rig.sample_masked(&logits, &greedy, 0.0, &[], Some(&mask)), 100, "the maximum masked out");
    let cpu = choose(&greedy, &mut base.clone(), &[], 0.0);
    assert_eq!(rig.sample(&base, &greedy, 0.0, &[]), cpu, "the fixture's own logits");
    let mut zeros: Vec<f32> = base.iter().map(|l| -1.0 - l.abs()).collect();
    zeros[4096 + 5] = -0.0;
    zeros[4096 + 10] = 0.0;
    for (params, want) in [(&greedy, 4096 + 5), (&hot, 4096 + 10)] {
        assert_eq!(choose(params, &mut zeros.clone(), &[], 0.0), want, "CPU, {params:?}");
        assert_eq!(rig.sample(&zeros, params, 0.0, &[]), want, "-0 and +0, {params:?}");
    }
}

/// Top-k sampling (of at most 256, without log-probabilities) runs the chain over each block's
/// best k (`top_blocks`, 4096 tokens a block) instead of the vocabulary: a block must hand over
/// all of the top-k it holds. Each case puts the best candidates where a block that kept too few,
/// or the wrong ones of a tie, would change the kept set: all in one block (k = 40 and the largest
/// served, 256), spread with the k-th place tied across blocks (the last, partial block among
/// them), more tied in one block than k, and a mask that leaves that block fewer than k (the rest
/// from block 8). Every kept candidate's midpoint draw must give the CPU's token; a top-k of 257
/// takes the vocabulary path, which must agree too. The dispatch count shows which path ran.
#[test]
fn top_k_sampling_over_blocks_keeps_every_candidate_of_the_cpus_top_k() {
    let Some(ctx) = context() else { return };
    let vocab = VOCABS[0];
    let rig = Rig::new(&ctx, vocab);
    let base = peaked_logits(vocab, 11);
    let block = 4096;
    // n distinct leaders at stride 97 inside block b, from `top` down.
    let lead = |logits: &mut Vec<f32>, b: usize, n: usize, top: f32| {
        for j in 0..n {
            logits[b * block + (j * 97) % block] = top - 0.01 * j as f32;
        }
    };
    // (what, logits, mask, k)
    type Case = (String, Vec<f32>, Option<Vec<u32>>, usize);
    let mut cases: Vec<Case> = Vec::new();
    for k in [40, 256, 257] {
        let mut one_block = base.clone();
        lead(&mut one_block, 5, k + 20, 30.0);
        cases.push((format!("top-{k} all in block 5"), one_block, None, k));
    }
    let mut tied = base.clone();
    lead(&mut tied, 3, 38, 30.0);
    for t in [100, 3 * block + 5, 7 * block + 1, vocab - 2, 9 * block] {
        tied[t] = 29.5;
    }
    cases.push(("the 39th and 40th places tied across blocks".into(), tied, None, 40));
    let mut crowd = base.clone();
    for j in 0..60 {
        crowd[2 * block + 13 * j] = 25.0;
    }
    cases.push(("60 tied in one block".into(), crowd, None, 40));
    let mut masked = base.clone();
    lead(&mut masked, 5, 60, 30.0);
    lead(&mut masked, 8, 20, 29.0);
    let mut mask = vec![u32::MAX; vocab.div_ceil(32)];
    for j in (0..60).step_by(2) {
        disallow(&mut mask, (5 * block + (j * 97) % block) as u32);
    }
    cases.push(("block 5's leaders half masked".into(), masked, Some(mask), 40));

    for (what, logits, mask, k) in cases {
        let params = SamplingParams { temperature: 0.8, top_k: k, ..Default::default() };
        let mut cpu_logits = logits.clone();
        if let Some(mask) = &mask {
            apply_mask(&mut cpu_logits, mask);
        }
        let cuts = intervals(&params, &cpu_logits, &[]);
        assert_eq!(cuts.len(), k, "{what}: the CPU keeps k");
        // Every kept candidate's interval is wide enough for an exact comparison: each is drawn.
        let draws = wide_midpoints(&cuts);
        assert_eq!(draws.len(), k, "{what}: candidates wide enough to draw");
        for (token, draw) in draws {
            let gpu = rig.sample_masked(&logits, &params, draw, &[], mask.as_deref());
            assert_eq!(gpu, token, "{what}: draw {draw}");
        }
        let expected = if k <= 256 { 2 } else { 1 };
        assert_eq!(rig.sampler.dispatches(), expected, "{what}: dispatches");
    }
}

/// The sampling settings the midpoint test runs, on `logits` (some need the logits to place a cut).
fn settings(logits: &[f32], counts: &[(u32, u32)]) -> Vec<(&'static str, SamplingParams, bool)> {
    let temp = SamplingParams { temperature: 0.7, seed: 3, ..Default::default() };
    let penal =
        SamplingParams { repetition_penalty: 1.3, presence_penalty: 0.4, frequency_penalty: 0.2, ..temp.clone() };
    let top_p = top_p_between(&temp, logits, &[], 0.9);
    let min_p = min_p_between(&temp, logits, &[], 0.02);
    let top_k = SamplingParams { top_k: 40, ..temp.clone() };
    // All together: top-k 40, then whichever of top-p and min-p is tighter.
    let all_p = top_p_between(&top_k, logits, &[], 0.8);
    let all_min = min_p_between(&top_k, logits, &[], 0.05);
    let all = SamplingParams { top_p: all_p, min_p: all_min, ..top_k.clone() };
    let penal_all = SamplingParams {
        top_p: top_p_between(&SamplingParams { top_k: 40, ..penal.clone() }, logits, counts, 0.85),
        top_k: 40,
        ..penal.clone()
    };
    vec![
        ("temperature alone", temp.clone(), false),
        ("temperature 1.2", SamplingParams { temperature: 1.2, ..temp.clone() }, false),
        ("top-k", top_k, false),
        ("top-p", SamplingParams { top_p, ..temp.clone() }, false),
        ("min-p", SamplingParams { min_p, ..temp.clone() }, false),
        ("all together", all, false),
        ("penalties", penal, true),
        ("penalties, top-k and top-p", penal_all, true),
    ]
}

#[test]
fn sampling_matches_the_cpu_at_every_candidates_midpoint() {
    let Some(ctx) = context() else { return };
    for vocab in VOCABS {
        let rig = Rig::new(&ctx, vocab);
        let logits = peaked_logits(vocab, 2);
        // Penalize the six most likely tokens, some several times: the kept set and the order change.
        let mut sorted: Vec<u32> = (0..vocab as u32).collect();
        sorted.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let mut counts: Vec<(u32, u32)> = sorted[..6].iter().enumerate().map(|(j, &t)| (t, 1 + j as u32 % 3)).collect();
        counts.sort();
        for (what, params, penalized) in settings(&logits, &counts) {
            let counts = if penalized { &counts[..] } else { &[] };
            let what = format!("vocab {vocab}, {what}");
            let n = check_midpoints(&rig, &logits, &params, counts, &what);
            eprintln!("{what}: {n} midpoint draws match ({} kept)", intervals(&params, &logits, counts).len());
        }
    }
}

/// Draws from the seeded generator, anywhere in [0, 1): among thousands of narrow intervals some
/// land near a boundary, where only the neighbouring token is allowed instead of the CPU's.
#[test]
fn random_draws_stay_in_the_cpus_kept_set() {
    let Some(ctx) = context() else { return };
    let vocab = VOCABS[0];
    let rig = Rig::new(&ctx, vocab);
    let logits = peaked_logits(vocab, 3);
    let counts = [(7, 2), (1234, 1), (40000, 1)];
    let temperature = SamplingParams { temperature: 1.5, repetition_penalty: 1.2, ..Default::default() };
    // Top-p 0.9 lands among narrow candidates: the GPU's cut could include one more only if the
    // cumulative probability there is within ~1e-5 of 0.9, and a draw would then still have to land
    // in that last candidate's interval (~1e-4 wide) to notice.
    let chain = SamplingParams { top_k: 3000, top_p: 0.9, min_p: 0.0002, ..temperature.clone() };
    for params in [temperature, chain] {
        let cuts = intervals(&params, &logits, &counts);
        let mut sampler = Sampler::new(SamplingParams { seed: 11, ..params.clone() }).unwrap();
        let mut exact = 0;
        for _ in 0..50 {
            let draw = sampler.draw();
            let cpu = choose(&params, &mut logits.clone(), &counts, draw);
            let gpu = rig.sample(&logits, &params, draw, &counts);
            let Some(&(_, lo, hi)) = cuts.iter().find(|c| c.0 == gpu) else {
                panic!("draw {draw}: the GPU's token {gpu} is not among the CPU's {} kept", cuts.len());
            };
            if gpu == cpu {
                exact += 1;
            } else {
                eprintln!(
                    "draw {draw}: GPU {gpu}, CPU {cpu}, {:e} from the boundary",
                    (draw - lo).abs().min((draw - hi).abs())
                );
                // Only a draw next to the boundary between the two tokens may differ.
                assert!(
                    (draw - lo).abs() < TOL || (draw - hi).abs() < TOL,
                    "draw {draw}: GPU {gpu} [{lo}, {hi}), CPU {cpu}"
                );
            }
        }
        eprintln!("{exact} of 50 random draws gave exactly the CPU's token ({} kept)", cuts.len());
    }
}

#[test]
fn a_draw_past_the_total_takes_the_last_kept_candidate() {
    let Some(ctx) = context() else { return };
    for vocab in VOCABS {
        let rig = Rig::new(&ctx, vocab);
        let logits = peaked_logits(vocab, 4);
        let min_p = SamplingParams { temperature: 0.9, min_p: 0.05, ..Default::default() };
        for params in [SamplingParams { temperature: 0.9, top_k: 5, ..Default::default() }, min_p] {
            let cuts = intervals(&params, &logits, &[]);
            let last = cuts.last().unwrap().0;
            for draw in [1.0, 1.5] {
                assert_eq!(choose(&params, &mut logits.clone(), &[], draw), last, "CPU");
                assert_eq!(rig.sample(&logits, &params, draw, &[]), last, "vocab {vocab}, draw {draw}, {params:?}");
            }
        }
    }
}

/// Logits on a coarse grid, so that many tokens share each value: equal logits must be taken in
/// index order, with top-k, top-p and the draw each cutting inside a group of equals.
#[test]
fn tied_logits_are_taken_in_index_order() {
    let Some(ctx) = context() else { return };
    for vocab in VOCABS {
        let rig = Rig::new(&ctx, vocab);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Values -8..=8 (integers), with a group of ten tied favourites at 12.
        let mut logits: Vec<f32> = (0..vocab).map(|_| (3.0 * normal(&mut rng)).round().clamp(-8.0, 8.0)).collect();
        for j in 0..10 {
            logits[(j * 7919 + 3) % vocab] = 12.0;
        }
        let temp = SamplingParams { temperature: 1.0, ..Default::default() };
        // Top-k 7 cuts the group of ten.
        let top_k = SamplingParams { top_k: 7, ..temp.clone() };
        let cuts = intervals(&top_k, &logits, &[]);
        let mut tied: Vec<u32> = (0..10).map(|j| ((j * 7919 + 3) % vocab) as u32).collect();
        tied.sort();
        assert_eq!(cuts.iter().map(|c| c.0).collect::<Vec<_>>(), tied[..7], "the CPU keeps the first seven by index");
        check_midpoints(&rig, &logits, &top_k, &[], &format!("vocab {vocab}, top-k inside a tie"));
        // Top-p halfway through the sixth of the tied favourites.
        let open = intervals(&temp, &logits, &[]);
        let top_p = (open[5].1 + open[5].2) / 2.0;
        let params = SamplingParams { top_p, ..temp.clone() };
        assert_eq!(intervals(&params, &logits, &[]).len(), 6);
        check_midpoints(&rig, &logits, &params, &[], &format!("vocab {vocab}, top-p inside a tie"));
        // No cut: the draws walk through the tied favourites and into the tied groups below.
        check_midpoints(&rig, &logits, &temp, &[], &format!("vocab {vocab}, ties, temperature alone"));

        // Every eighth token tied at the top (6144 of them for the large vocabulary: more than the
        // shader can compact until the search reaches indices), top-k 40 inside that group.
        let mut flat = logits.clone();
        flat.iter_mut().step_by(8).for_each(|l| *l = 20.0);
        let params = SamplingParams { top_k: 40, ..temp.clone() };
        let cuts = intervals(&params, &flat, &[]);
        assert_eq!(cuts.iter().map(|c| c.0).collect::<Vec<_>>(), (0..40).map(|j| 8 * j).collect::<Vec<_>>());
        check_midpoints(&rig, &flat, &params, &[], &format!("vocab {vocab}, top-k inside a large tie"));
    }
}

#[test]
fn prepare_rejects_what_the_shader_cannot_apply() {
    let Some(ctx) = context() else { return };
    let logits = storage(&ctx.device, "logits", 100).unwrap();
    let sampler = GpuSampler::new(&ctx, &logits, 100, 2).unwrap();
    let params = SamplingParams { temperature: 1.0, presence_penalty: 1.0, ..Default::default() };
    let q = &ctx.queue;
    assert!(sampler.prepare(q, &params, 0.5, Penalties::Counts(&[(1, 1), (5, 2)]), None, None).is_ok());
    assert!(
        sampler.prepare(q, &params, 0.5, Penalties::Counts(&[(1, 1), (5, 2), (9, 1)]), None, None).is_err(),
        "more than max_penalized"
    );
    assert!(sampler.prepare(q, &params, 0.5, Penalties::Counts(&[(5, 1), (1, 2)]), None, None).is_err(), "not sorted");
    assert!(
        sampler.prepare(q, &params, 0.5, Penalties::Counts(&[(5, 1), (5, 2)]), None, None).is_err(),
        "a token twice"
    );
    assert!(sampler.prepare(q, &params, f32::NAN, Penalties::Counts(&[]), None, None).is_err(), "a NaN draw");
    assert!(
        sampler
            .prepare(q, &SamplingParams { top_p: 0.0, ..params.clone() }, 0.5, Penalties::Counts(&[]), None, None)
            .is_err(),
        "invalid params"
    );
    // Masks of any length (past the vocabulary's 4 words, or none at all) are fine.
    assert!(sampler.prepare(q, &params, 0.5, Penalties::Counts(&[]), Some(&[u32::MAX; 9]), None).is_ok());
    assert!(sampler.prepare(q, &params, 0.5, Penalties::Counts(&[]), Some(&[]), None).is_ok());
}

// ---- Token masks ----

/// Midpoint draws tested per masked setting (plus a draw of 1, past the total).
const MASKED_DRAWS: usize = 6;

/// A mask of `words` words allowing exactly `tokens` (those that fit).
fn mask_of(tokens: impl IntoIterator<Item = u32>, words: usize) -> Vec<u32> {
    let mut mask = vec![0u32; words];
    for t in tokens {
        if let Some(w) = mask.get_mut(t as usize / 32) {
            *w |= 1 << (t % 32);
        }
    }
    mask
}

/// Each of `vocab` tokens allowed with probability 1 / `one_in`.
fn random_mask(vocab: usize, one_in: u32, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let tokens: Vec<u32> = (0..vocab as u32).filter(|_| rng.next_u32() % one_in == 0).collect();
    mask_of(tokens, vocab.div_ceil(32))
}

fn disallow(mask: &mut [u32], t: u32) {
    if let Some(w) = mask.get_mut(t as usize / 32) {
        *w &= !(1 << (t % 32));
    }
}

/// Tokens by logit, best first (lower index first on ties).
fn by_logit(logits: &[f32]) -> Vec<u32> {
    let mut sorted: Vec<u32> = (0..logits.len() as u32).collect();
    sorted.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    sorted
}

/// The masks the masked tests run, in this order (each is written over the last one's words: a
/// shader that read past this step's words would see the dense mask's). None of them allows the
/// most likely token, so each changes the greedy choice.
fn masks(logits: &[f32], seed: u64) -> Vec<(&'static str, Vec<u32>)> {
    let vocab = logits.len();
    let words = vocab.div_ceil(32);
    let sorted = by_logit(logits);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tail = |rng: &mut ChaCha8Rng| sorted[100 + (rng.next_u64() % (vocab as u64 - 100)) as usize];
    let mut dense = random_mask(vocab, 2, &mut rng);
    disallow(&mut dense, sorted[0]);
    // A third of the dense mask's words: the tokens past them are not allowed.
    let short = dense[..words / 3].to_vec();
    let mut sparse = random_mask(vocab, 64, &mut rng);
    disallow(&mut sparse, sorted[0]);
    let one = mask_of([tail(&mut rng)], words);
    // Two favourites and three tail tokens: fewer than top-k.
    let few = mask_of([sorted[2], sorted[5], tail(&mut rng), tail(&mut rng), tail(&mut rng)], words);
    // Past the vocabulary: the last word's unused bits and extra words, all set.
    let mut long = random_mask(vocab, 2, &mut rng);
    disallow(&mut long, sorted[0]);
    if vocab % 32 != 0 {
        long[words - 1] |= u32::MAX << (vocab % 32);
    }
    long.extend([u32::MAX; 3]);
    vec![
        ("dense", dense),
        ("shorter than the vocabulary", short),
        ("sparse (1 in 64)", sparse),
        ("one token", one),
        ("a few tokens", few),
        ("longer than the vocabulary", long),
    ]
}

/// The settings the masked tests run on `masked` (the logits after the mask: cuts are placed
/// among the allowed candidates; those that cannot be placed safely are left out). `true`: with
/// the penalty counts.
fn masked_settings(masked: &[f32]) -> Vec<(String, SamplingParams, bool)> {
    let greedy = SamplingParams::default();
    let penalties = SamplingParams { repetition_penalty: 1.3, presence_penalty: 0.4, frequency_penalty: 0.2, ..greedy };
    let temp = SamplingParams { temperature: 0.7, ..Default::default() };
    let top_k = SamplingParams { top_k: 40, ..temp.clone() };
    let mut out = vec![
        ("greedy".to_string(), SamplingParams::default(), false),
        ("greedy, penalties".into(), penalties.clone(), true),
        ("temperature alone".into(), temp.clone(), false),
        ("top-k 40".into(), top_k.clone(), false),
        ("top-k 3".into(), SamplingParams { top_k: 3, ..temp.clone() }, false),
        ("penalties, top-k 40".into(), SamplingParams { top_k: 40, temperature: 0.9, ..penalties }, true),
    ];
    if let Some(top_p) = try_top_p_between(&temp, masked, &[], 0.9) {
        out.push(("top-p".into(), SamplingParams { top_p, ..temp.clone() }, false));
    }
    if let Some(min_p) = try_min_p_between(&temp, masked, &[], 0.05) {
        out.push(("min-p".into(), SamplingParams { min_p, ..temp.clone() }, false));
    }
    if let (Some(top_p), Some(min_p)) =
        (try_top_p_between(&top_k, masked, &[], 0.8), try_min_p_between(&top_k, masked, &[], 0.02))
    {
        out.push(("top-k, top-p and min-p".into(), SamplingParams { top_p, min_p, ..top_k }, false));
    }
    out
}

/// The GPU given `logits` and `mask` against the CPU given the masked logits, greedy or at the
/// midpoint draws of the CPU's kept candidates and at a draw of 1; returns how many were checked.
fn check_masked(
    rig: &Rig,
    logits: &[f32],
    mask: &[u32],
    params: &SamplingParams,
    counts: &[(u32, u32)],
    what: &str,
) -> usize {
    let mut masked = logits.to_vec();
    apply_mask(&mut masked, mask);
    let draws = if params.temperature == 0.0 {
        vec![0.0]
    } else {
        let cuts = intervals(params, &masked, counts);
        assert!(cuts.iter().all(|c| mask_allows(mask, c.0)), "{what}: the CPU kept a masked token");
        let midpoints: Vec<f32> = midpoint_draws(&cuts).into_iter().map(|c| c.1).collect();
        let stride = midpoints.len().div_ceil(MASKED_DRAWS).max(1);
        midpoints.into_iter().step_by(stride).chain([1.0]).collect()
    };
    for &draw in &draws {
        let cpu = choose(params, &mut masked.clone(), counts, draw);
        let gpu = rig.sample_masked(logits, params, draw, counts, Some(mask));
        assert_eq!(gpu, cpu, "{what}: draw {draw}");
        assert!(mask_allows(mask, gpu), "{what}: draw {draw}: the GPU took the masked token {gpu}");
    }
    draws.len()
}

#[test]
fn masked_choices_match_the_cpu_for_every_kind_of_mask() {
    let Some(ctx) = context() else { return };
    for vocab in VOCABS {
        let rig = Rig::new(&ctx, vocab);
        let logits = peaked_logits(vocab, 6);
        let sorted = by_logit(&logits);
        for (name, mask) in masks(&logits, 7) {
            let allowed = (0..vocab as u32).filter(|&t| mask_allows(&mask, t)).count();
            let mut masked = logits.clone();
            apply_mask(&mut masked, &mask);
            // Penalize favourites (masked or not) and the best allowed tokens, some several times.
            let best_allowed = by_logit(&masked);
            let mut counts: Vec<(u32, u32)> =
                sorted[..4].iter().chain(&best_allowed[..3]).enumerate().map(|(j, &t)| (t, 1 + j as u32 % 3)).collect();
            counts.sort();
            counts.dedup_by_key(|c| c.0);
            let mut checked = 0;
            for (what, params, penalized) in masked_settings(&masked) {
                let counts = if penalized { &counts[..] } else { &[] };
                checked +=
                    check_masked(&rig, &logits, &mask, &params, counts, &format!("vocab {vocab}, {name}, {what}"));
            }
            // The mask matters: greedy without it takes a token it does not allow.
            assert!(!mask_allows(&mask, sorted[0]), "{name}");
            assert_eq!(rig.sample(&logits, &SamplingParams::default(), 0.0, &[]), sorted[0], "{name}: unmasked");
            eprintln!("vocab {vocab}, {name} mask ({allowed} allowed): {checked} choices match the CPU's");
        }
    }
}

/// Equal logits cut inside by the mask: the tied group's allowed members in index order.
#[test]
fn masked_ties_are_taken_in_index_order() {
    let Some(ctx) = context() else { return };
    for vocab in VOCABS {
        let rig = Rig::new(&ctx, vocab);
        let mut logits = peaked_logits(vocab, 8);
        // Every fifth token tied at the top; the mask allows one in three of them and a tail.
        let tied: Vec<u32> = (0..vocab as u32).step_by(5).collect();
        tied.iter().for_each(|&t| logits[t as usize] = 30.0);
        let tail = (1..vocab as u32).step_by(7).filter(|t| t % 5 != 0);
        let mask = mask_of(tied.iter().step_by(3).copied().chain(tail), vocab.div_ceil(32));
        let temp = SamplingParams { temperature: 1.0, ..Default::default() };
        let mut masked = logits.clone();
        apply_mask(&mut masked, &mask);
        let first: Vec<u32> = tied.iter().step_by(3).take(9).copied().collect();
        for params in [SamplingParams::default(), SamplingParams { top_k: 9, ..temp.clone() }, temp.clone()] {
            let what = format!("vocab {vocab}, tied, {params:?}");
            if params.top_k == 9 {
                let kept: Vec<u32> = intervals(&params, &masked, &[]).iter().map(|c| c.0).collect();
                assert_eq!(kept, first, "the CPU keeps the first nine allowed by index");
            }
            check_masked(&rig, &logits, &mask, &params, &[], &what);
        }
    }
}

/// A mask that allows no token (all zeros, empty, or only tokens past the vocabulary): the CPU's
/// chain then runs over a vocabulary of minus infinities, and the GPU gives its token.
#[test]
fn a_mask_that_allows_nothing_gives_the_cpus_token() {
    let Some(ctx) = context() else { return };
    let vocab = VOCABS[1];
    let rig = Rig::new(&ctx, vocab);
    let logits = peaked_logits(vocab, 9);
    let words = vocab.div_ceil(32);
    let past_the_end = mask_of(vocab as u32..32 * words as u32 + 64, words + 2);
    let temp = SamplingParams { temperature: 0.8, ..Default::default() };
    let settings = [
        (SamplingParams::default(), 0),
        (temp.clone(), vocab as u32 - 1),
        (SamplingParams { top_k: 40, ..temp.clone() }, 39),
        (SamplingParams { top_p: 0.9, ..temp.clone() }, vocab as u32 - 1),
        (SamplingParams { min_p: 0.05, top_k: 40, ..temp.clone() }, 0),
    ];
    for mask in [vec![0; words], vec![], past_the_end] {
        for (params, expected) in &settings {
            for draw in [0.0, 0.5, 1.0] {
                let mut masked = logits.clone();
                apply_mask(&mut masked, &mask);
                let cpu = choose(params, &mut masked, &[], draw);
                assert_eq!(cpu, *expected, "CPU, {} words, {params:?}", mask.len());
                let gpu = rig.sample_masked(&logits, params, draw, &[], Some(&mask));
                assert_eq!(gpu, cpu, "{} words, {params:?}, draw {draw}", mask.len());
            }
        }
    }
}

/// Logits of minus infinity are never candidates (as on the CPU), with or without a mask: a top-k
/// larger than the finite logits keeps only those, and a draw of 1 takes the last of them.
#[test]
fn minus_infinity_logits_are_never_candidates() {
    let Some(ctx) = context() else { return };
    let vocab = VOCABS[1];
    let rig = Rig::new(&ctx, vocab);
    let mut logits = vec![f32::NEG_INFINITY; vocab];
    let finite = [3, 40, 41, 500, 777, 999];
    for (j, &t) in finite.iter().enumerate() {
        logits[t] = 1.0 - 0.5 * j as f32;
    }
    let temp = SamplingParams { temperature: 1.0, ..Default::default() };
    for params in [SamplingParams { top_k: 40, ..temp.clone() }, temp.clone()] {
        for draw in [0.1, 0.6, 0.97, 1.0] {
            let cpu = choose(&params, &mut logits.clone(), &[], draw);
            assert!(finite.contains(&(cpu as usize)));
            assert_eq!(rig.sample(&logits, &params, draw, &[]), cpu, "{params:?}, draw {draw}");
            // A mask that also allows tokens whose logits are minus infinity.
            let mask = mask_of([0, 1, 2, 40, 500, 999, 998], vocab.div_ceil(32));
            let mut masked = logits.clone();
            apply_mask(&mut masked, &mask);
            let cpu = choose(&params, &mut masked, &[], draw);
            assert!([40, 500, 999].contains(&cpu));
            assert_eq!(rig.sample_masked(&logits, &params, draw, &[], Some(&mask)), cpu, "masked, draw {draw}");
        }
    }
}

/// Two samplers with one seed, one sampling on the CPU and one handing its counts, draw and mask
/// to the GPU, over steps that change the mask (or lift it: the mask buffer's stale words must
/// then be ignored); random draws, so the GPU's token must be the CPU's unless the draw lies within
/// `TOL` of a boundary between two kept candidates, and it is always allowed.
#[test]
fn masked_steps_follow_the_cpu_sampler_draw_by_draw() {
    let Some(ctx) = context() else { return };
    let vocab = VOCABS[0];
    let rig = Rig::new(&ctx, vocab);
    let logits = peaked_logits(vocab, 10);
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: 21,
        ..Default::default()
    };
    let mut cpu = Sampler::new(params.clone()).unwrap();
    let mut gpu = Sampler::new(params.clone()).unwrap();
    let mut history: Vec<u32> = by_logit(&logits)[..8].to_vec();
    let mut exact = 0;
    // Three rounds of: no mask, then each kind of mask (other random ones each round).
    let steps: Vec<Option<Vec<u32>>> = (0..3)
        .flat_map(|round| [None].into_iter().chain(masks(&logits, 11 + round).into_iter().map(|m| Some(m.1))))
        .collect();
    for (step, mask) in steps.iter().enumerate() {
        cpu.set_mask(mask.clone());
        gpu.set_mask(mask.clone());
        let mask = mask.as_deref();
        let want = cpu.sample(&mut logits.clone(), &history);
        let counts = gpu.penalty_counts(&history);
        let draw = gpu.draw();
        let got = rig.sample_masked(&logits, gpu.params(), draw, &counts, gpu.mask());
        let mut masked = logits.clone();
        if let Some(mask) = mask {
            assert!(mask_allows(mask, got), "step {step}: the GPU took the masked token {got}");
            apply_mask(&mut masked, mask);
        }
        let cuts = intervals(&params, &masked, &counts);
        let Some(&(_, lo, hi)) = cuts.iter().find(|c| c.0 == got) else {
            panic!("step {step}, draw {draw}: the GPU's token {got} is not among the CPU's {} kept", cuts.len());
        };
        if got == want {
            exact += 1;
        } else {
            assert!(
                (draw - lo).abs() < TOL || (draw - hi).abs() < TOL,
                "step {step}, draw {draw}: GPU {got}, CPU {want}"
            );
        }
        history.push(want);
    }
    eprintln!("{exact} of {} masked and unmasked steps gave exactly the CPU sampler's token", steps.len());
}

/// A real model: the tiny Llama of `tests/fixtures/tiny/` on the GPU engine, each step's choice made
/// through `Backend::forward_sample` (the decode loop's path) with a mask set on the `Sampler`,
/// against the CPU engine's logits for the same tokens with `apply_mask` and argmax (greedy), or
/// `Sampler::sample` with the same seed (sampled; within `TOL` of a boundary the GPU's slightly
/// different logits may take the neighbour). Each mask excludes the unmasked argmax.
#[test]
fn a_masked_step_of_a_tiny_model_on_the_gpu_takes_the_cpu_engines_masked_choice() {
    let Some(mut ctx) = context() else { return };
    ctx.kv_f16 = false;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("llama_linear");
    convert(&root.join("tests/fixtures/tiny/llama_linear.gguf"), &out, &ConvertOptions::default()).unwrap();
    let package = Package::open(&out).unwrap();
    let mut gpu = GpuEngine::new(ctx, &package, None).unwrap();
    let mut cpu = CpuEngine::from_package(&package).unwrap();
    let vocab = gpu.config().vocab_size;
    let words = vocab.div_ceil(32);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let greedy = SamplingParams::default();
    let sampled = SamplingParams { temperature: 0.8, top_k: 20, repetition_penalty: 1.2, seed: 5, ..greedy.clone() };
    for params in [greedy, sampled] {
        gpu.reset();
        cpu.reset();
        let mut gpu_sampler = Sampler::new(params.clone()).unwrap();
        let mut cpu_sampler = Sampler::new(params.clone()).unwrap();
        // The same draws again, to tell how far each lies from a boundary.
        let mut draws = Sampler::new(params.clone()).unwrap();
        let mut history: Vec<u32> = (0..12u32).map(|i| (i * 37 + 11) % vocab as u32).collect();
        let mut input = history.clone();
        for step in 0..16 {
            let logits = cpu.forward(&input, false).unwrap();
            let free = argmax(&logits);
            let mut mask = match step % 4 {
                0 => random_mask(vocab, 4, &mut rng),
                // The least likely token alone.
                1 => mask_of([*by_logit(&logits).last().unwrap()], words),
                2 => random_mask(vocab, 2, &mut rng)[..words / 2].to_vec(),
                _ => mask_of((0..3).map(|_| rng.next_u32() % vocab as u32), words),
            };
            disallow(&mut mask, free);
            let mut masked = logits.clone();
            apply_mask(&mut masked, &mask);
            cpu_sampler.set_mask(Some(mask.clone()));
            gpu_sampler.set_mask(Some(mask.clone()));
            let counts = cpu_sampler.penalty_counts(&history);
            let want = cpu_sampler.sample(&mut logits.clone(), &history);
            let got = Backend::forward_sample(&mut gpu, &input, &mut gpu_sampler, &history).unwrap();
            let what = format!("temperature {}, step {step}", params.temperature);
            assert!(mask_allows(&mask, got), "{what}: the GPU took the masked token {got}");
            assert_ne!(got, free, "{what}");
            if params.temperature == 0.0 {
                assert_eq!(want, argmax(&masked));
                let order = by_logit(&masked);
                // Infinite when one token alone is allowed.
                let margin = masked[order[0] as usize] - masked[order[1] as usize];
                // The engines' logits differ by ~1e-5: a closer race could go either way.
                if margin > 1e-3 {
                    assert_eq!(got, want, "{what}: margin {margin}");
                } else {
                    eprintln!("{what}: margin {margin}, GPU {got}, CPU {want}");
                }
            } else {
                let draw = draws.draw();
                let cuts = intervals(&params, &masked, &counts);
                let near = cuts.iter().any(|c| (draw - c.1).abs() < TOL || (draw - c.2).abs() < TOL);
                assert!(got == want || near, "{what}: draw {draw}: GPU {got}, CPU {want}");
                assert!(cuts.iter().any(|c| c.0 == got), "{what}: the GPU's {got} is not among the CPU's kept");
            }
            history.push(want);
            input = vec![want];
        }
        eprintln!(
            "tiny Llama, temperature {}: 16 masked steps on the GPU engine match the CPU engine",
            params.temperature
        );
    }
}

// ---- Logit bias and log-probabilities ----

/// Log-probabilities: the GPU sums exp(l - max) in f32 over strided slices (192 adds per
/// invocation for the 49157-token vocabulary, then two levels of 16), the CPU in f64: the sum's
/// relative error is at most ~(192 + 32) * 2^-24 = 1.3e-5, WGSL's `exp` adds up to 3 + 2|x| ulps
/// per term (~4e-6 relative at x = -30, where terms stop mattering) and `log` 2^-21, so the
/// log-sum-exp is within ~2e-5 and each logprob, an f32 difference of two values below ~150, within
/// that plus an ulp (1.5e-5): `LOGPROB_TOL` = 1e-4. The ids need no tolerance: both sides order the
/// same biased logits (the bias is one f32 add on each side, the same bits) by value, then index.
const LOGPROB_TOL: f32 = 1e-4;

fn bias_of(pairs: impl IntoIterator<Item = (u32, f32)>) -> std::collections::BTreeMap<u32, f32> {
    pairs.into_iter().collect()
}

/// `n` (at most the vocabulary) biases in [-6, 6] on random tokens, the `also` tokens among them.
fn random_bias(vocab: usize, n: usize, also: &[u32], seed: u64) -> std::collections::BTreeMap<u32, f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bias = bias_of(also.iter().map(|&t| (t, 3.0 * normal(&mut rng))));
    while bias.len() < n {
        bias.insert(rng.next_u32() % vocab as u32, (3.0 * normal(&mut rng)).clamp(-6.0, 6.0));
    }
    bias
}

fn with_bias(params: &SamplingParams, bias: &std::collections::BTreeMap<u32, f32>) -> SamplingParams {
    SamplingParams { logit_bias: bias.clone(), ..params.clone() }
}

fn biased(logits: &[f32], bias: &std::collections::BTreeMap<u32, f32>) -> Vec<f32> {
    let mut out = logits.to_vec();
    apply_logit_bias(&mut out, bias);
    out
}

/// The GPU, given the logits and a bias, takes the token the CPU takes from the logits with the
/// bias added (as `Sampler::sample` does): greedy, and sampled at every wide candidate's midpoint
/// with penalties on the biased favourites; the bias goes in before the penalties; and a bias
/// that changes from call to call (it is uploaded only when it does) is the one applied.
#[test]
fn the_logit_bias_gives_the_cpus_token() {
    let Some(ctx) = context() else { return };
    let greedy = SamplingParams::default();
    let sampled = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        repetition_penalty: 1.3,
        presence_penalty: 0.5,
        ..greedy.clone()
    };
    for vocab in VOCABS {
        let rig = Rig::new(&ctx, vocab);
        let logits = peaked_logits(vocab, 12);
        let order = by_logit(&logits);
        let biases = [
            bias_of([(order[0], -100.0)]),
            bias_of([(order[vocab - 1], 100.0)]),
            // As many as the sampler takes (half the small vocabulary).
            random_bias(vocab, MAX_LOGIT_BIAS.min(vocab / 2), &order[..12], 1),
        ];
        for bias in &biases {
            let biased = biased(&logits, bias);
            let cpu = choose(&greedy, &mut biased.clone(), &[], 0.0);
            assert_eq!(cpu, argmax(&biased));
            assert_eq!(rig.sample(&logits, &with_bias(&greedy, bias), 0.0, &[]), cpu, "vocab {vocab}, greedy");
            let mut counts: Vec<(u32, u32)> = by_logit(&biased)[..6].iter().map(|&t| (t, 1 + t % 3)).collect();
            counts.sort();
            let cuts = intervals(&sampled, &biased, &counts);
            let draws = midpoint_draws(&cuts);
            assert!(!draws.is_empty());
            for (token, draw) in draws {
                let gpu = rig.sample(&logits, &with_bias(&sampled, bias), draw, &counts);
                assert_eq!(gpu, token, "vocab {vocab}, {} biases, draw {draw}", bias.len());
            }
        }
        // Token a: 3 - 4 = -1, then the repetition penalty doubles it to -2, above b's -2.2 (the
        // penalty first would give 3 / 2 - 4 = -2.5, below b). Every other logit is -10.
        let (a, b) = (vocab as u32 / 3, 17);
        let mut flat = vec![-10.0; vocab];
        flat[a as usize] = 3.0;
        flat[b as usize] = -2.2;
        let params = SamplingParams { repetition_penalty: 2.0, logit_bias: bias_of([(a, -4.0)]), ..greedy.clone() };
        let mut cpu = Sampler::new(params.clone()).unwrap();
        assert_eq!(cpu.sample(&mut flat.clone(), &[a]), a, "CPU: bias, then penalty");
        assert_eq!(rig.sample(&flat, &params, 0.0, &[(a, 1)]), a, "vocab {vocab}: bias, then penalty");
        // Changing biases of one entry each: a stale upload would apply the previous one.
        let steps = [
            bias_of([(order[0], -100.0)]),
            bias_of([(order[0], -100.0)]),
            bias_of([(order[5], 50.0)]),
            bias_of([]),
            bias_of([(order[0], -100.0)]),
            bias_of([(order[7], 60.0)]),
        ];
        for (step, bias) in steps.iter().enumerate() {
            let want = argmax(&biased(&logits, bias));
            assert_eq!(rig.sample(&logits, &with_bias(&greedy, bias), 0.0, &[]), want, "vocab {vocab}, step {step}");
        }
    }
}

#[test]
fn prepare_rejects_the_biases_and_logprobs_the_cpu_rejects() {
    let Some(ctx) = context() else { return };
    let logits = storage(&ctx.device, "logits", 100).unwrap();
    let sampler = GpuSampler::new(&ctx, &logits, 100, 2).unwrap();
    let q = &ctx.queue;
    let prepare = |bias: std::collections::BTreeMap<u32, f32>, logprobs| {
        let params = SamplingParams { logit_bias: bias, ..Default::default() };
        sampler.prepare(q, &params, 0.0, Penalties::Counts(&[]), None, logprobs).map_err(|e| e.to_string())
    };
    assert!(prepare(bias_of([(99, -100.0), (0, 100.0)]), Some(20)).is_ok());
    for (bias, logprobs, why) in [
        (bias_of([(3, 100.5)]), None, "token 3"),
        (bias_of([(3, f32::NAN)]), None, "token 3"),
        (bias_of([(100, 1.0)]), None, "outside the vocabulary of 100"),
        (bias_of((0..=MAX_LOGIT_BIAS as u32).map(|t| (t, 1.0))), None, "1025 entries"),
        (bias_of([]), Some(21), "at most 20"),
    ] {
        match prepare(bias, logprobs) {
            Err(e) => assert!(e.contains(why), "{e:?} does not say {why:?}"),
            Ok(()) => panic!("{why}: accepted"),
        }
    }
}

/// Check the GPU's token and log-probabilities against the CPU's for `logits` under `params` (with
/// its bias), `counts`, `draw` and `mask`, for each k.
fn check_logprobs(
    rig: &Rig,
    logits: &[f32],
    params: &SamplingParams,
    counts: &[(u32, u32)],
    draw: f32,
    mask: Option<&[u32]>,
    what: &str,
) {
    let biased = biased(logits, &params.logit_bias);
    let mut chain = biased.clone();
    if let Some(mask) = mask {
        apply_mask(&mut chain, mask);
    }
    let cpu = choose(params, &mut chain, counts, draw);
    for k in [0, 1, 7, 20] {
        let (gpu, figures) = rig.sample_logprobs(logits, params, draw, counts, mask, Some(k));
        let figures = figures.unwrap();
        assert_eq!(gpu, cpu, "{what}, k {k}: the token");
        // The distribution is the biased logits' before the mask and the penalties.
        let want = StepLogprobs::from_logits(&biased, cpu, k);
        let ids = |s: &StepLogprobs| s.top.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(ids(&figures), ids(&want), "{what}, k {k}: the top ids");
        for (g, w) in figures.top.iter().zip(&want.top).chain([(&(gpu, figures.logprob), &(cpu, want.logprob))]) {
            assert!((g.1 - w.1).abs() < LOGPROB_TOL, "{what}, k {k}, token {}: GPU {} vs CPU {}", w.0, g.1, w.1);
        }
    }
}

/// The GPU's log-probabilities are the CPU's for the same logits: greedy, sampled with penalties on
/// the favourites (so the chosen token is often a penalized one: its value is taken before the
/// penalty), under a mask that excludes the favourite (still first in the list), with a bias, on
/// tied logits (ids in index order) and on vocabularies smaller than the workgroup and than k.
#[test]
fn logprobs_match_the_cpus_log_softmax() {
    let Some(ctx) = context() else { return };
    for vocab in [VOCABS[0], VOCABS[1], 200, 13] {
        let rig = Rig::new(&ctx, vocab);
        let logits = peaked_logits(vocab, 14);
        let order = by_logit(&logits);
        let bias = random_bias(vocab, 40.min(vocab), &order[..3.min(vocab)], 2);
        let greedy = SamplingParams::default();
        let mut counts: Vec<(u32, u32)> = order[..6.min(vocab)].iter().map(|&t| (t, 2)).collect();
        counts.sort();
        let sampled =
            SamplingParams { temperature: 0.9, repetition_penalty: 1.2, presence_penalty: 0.3, ..greedy.clone() };
        check_logprobs(&rig, &logits, &greedy, &[], 0.0, None, &format!("vocab {vocab}, greedy"));
        check_logprobs(
            &rig,
            &logits,
            &with_bias(&greedy, &bias),
            &counts,
            0.0,
            None,
            &format!("vocab {vocab}, biased"),
        );
        let mut masked = vec![u32::MAX; vocab.div_ceil(32)];
        disallow(&mut masked, order[0]);
        check_logprobs(&rig, &logits, &greedy, &[], 0.0, Some(&masked), &format!("vocab {vocab}, masked"));
        let mut penalized = logits.clone();
        apply_penalties(&sampled, &mut penalized, &counts);
        for (token, draw) in midpoint_draws(&intervals(&sampled, &logits, &counts)).into_iter().take(4) {
            let what = format!("vocab {vocab}, sampled, draw {draw} (token {token})");
            check_logprobs(&rig, &logits, &sampled, &counts, draw, None, &what);
        }
        // Integer logits: many ties, which both sides list by index.
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let tied: Vec<f32> = (0..vocab).map(|_| (2.0 * normal(&mut rng)).round()).collect();
        check_logprobs(&rig, &tied, &greedy, &[], 0.0, None, &format!("vocab {vocab}, tied"));
    }
}
