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

use hearth_core::sampling::{apply_penalties, choose, kept_candidates, Sampler, SamplingParams};
use hearth_gpu::kernels::{map_read, storage};
use hearth_gpu::sampler::GpuSampler;
use hearth_gpu::GpuContext;
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

/// A logits buffer, the sampler over it and a staging buffer for the chosen id.
struct Rig<'a> {
    ctx: &'a GpuContext,
    logits: wgpu::Buffer,
    sampler: GpuSampler,
    staging: wgpu::Buffer,
}

impl<'a> Rig<'a> {
    fn new(ctx: &'a GpuContext, vocab: usize) -> Self {
        let logits = storage(&ctx.device, "logits", vocab);
        let sampler = GpuSampler::new(ctx, &logits, vocab as u32, 64);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sampled token"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Rig { ctx, logits, sampler, staging }
    }

    /// The GPU's token, through the engine's path: upload the logits (the engine's output head
    /// writes them), prepare, record, copy 4 bytes, read them.
    fn sample(&self, logits: &[f32], params: &SamplingParams, draw: f32, counts: &[(u32, u32)]) -> u32 {
        self.ctx.queue.write_buffer(&self.logits, 0, bytemuck::cast_slice(logits));
        self.sampler.prepare(&self.ctx.queue, params, draw, counts).unwrap();
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            self.sampler.record(&mut pass);
        }
        encoder.copy_buffer_to_buffer(self.sampler.result(), 0, &self.staging, 0, 4);
        self.ctx.queue.submit([encoder.finish()]);
        map_read::<u32>(self.ctx, &self.staging).unwrap()[0]
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

/// Up to MAX_DRAWS candidates whose interval is wide enough for an exact comparison, spread over
/// the kept list; each with the draw at its midpoint.
fn midpoint_draws(intervals: &[(u32, f32, f32)]) -> Vec<(u32, f32)> {
    let wide: Vec<(u32, f32)> =
        intervals.iter().filter(|c| (c.2 - c.1) / 2.0 > TOL).map(|&(t, lo, hi)| (t, (lo + hi) / 2.0)).collect();
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
    let open = SamplingParams { top_p: 1.0, min_p: 0.0, ..params.clone() };
    let cuts = intervals(&open, logits, counts);
    let (_, lo, hi) = *cuts.iter().find(|c| c.2 >= near && (c.2 - c.1) / 2.0 > TOL).unwrap();
    (lo + hi) / 2.0
}

/// A min-p whose floor lies halfway (in log space) between the probabilities of two neighbouring
/// candidates, the first below `near` times the best, with at least 10% between them.
fn min_p_between(params: &SamplingParams, logits: &[f32], counts: &[(u32, u32)], near: f32) -> f32 {
    let open = SamplingParams { top_p: 1.0, min_p: 0.0, ..params.clone() };
    let mut penalized = logits.to_vec();
    apply_penalties(params, &mut penalized, counts);
    let kept = kept_candidates(&open, &penalized);
    let best = kept[0].1;
    let j = kept.iter().position(|c| c.1 < near * best).unwrap();
    let (above, below) = (kept[j - 1].1, kept[j].1);
    assert!(above > 1.1 * below, "min-p {near}: neighbours too close to cut safely");
    (above * below).sqrt() / best
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
    let logits = storage(&ctx.device, "logits", 100);
    let sampler = GpuSampler::new(&ctx, &logits, 100, 2);
    let params = SamplingParams { temperature: 1.0, presence_penalty: 1.0, ..Default::default() };
    let q = &ctx.queue;
    assert!(sampler.prepare(q, &params, 0.5, &[(1, 1), (5, 2)]).is_ok());
    assert!(sampler.prepare(q, &params, 0.5, &[(1, 1), (5, 2), (9, 1)]).is_err(), "more than max_penalized");
    assert!(sampler.prepare(q, &params, 0.5, &[(5, 1), (1, 2)]).is_err(), "not sorted");
    assert!(sampler.prepare(q, &params, 0.5, &[(5, 1), (5, 2)]).is_err(), "a token twice");
    assert!(sampler.prepare(q, &params, f32::NAN, &[]).is_err(), "a NaN draw");
    assert!(sampler.prepare(q, &SamplingParams { top_p: 0.0, ..params }, 0.5, &[]).is_err(), "invalid params");
}
