//! Choosing the next token from logits: the logit bias, penalties, then greedy or temperature /
//! top-k / top-p / min-p sampling from a seeded generator (the same seed gives the same tokens).

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{HearthError, Result};
use crate::logprobs::StepLogprobs;

/// Most entries a `logit_bias` may hold (the GPU sampler uploads them to a buffer of this size).
pub const MAX_LOGIT_BIAS: usize = 1024;
/// A bias is between these, as OpenAI's: -100 all but bans a token, 100 all but forces it.
pub const LOGIT_BIAS_LIMIT: f32 = 100.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1 disables.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every recently seen token.
    pub presence_penalty: f32,
    /// Subtracted from a recently seen token's logit once per occurrence.
    pub frequency_penalty: f32,
    /// How many of the most recent tokens the penalties look at.
    pub penalty_last_n: usize,
    pub seed: u64,
    /// Added to the logits of these tokens before anything else (OpenAI's `logit_bias`: token id to
    /// a bias in [-100, 100]; JSON keys are strings, `{"logit_bias": {"123": -100}}`).
    #[serde(deserialize_with = "token_map")]
    pub logit_bias: BTreeMap<u32, f32>,
}

/// A map keyed by token id from JSON's string keys (`"123"`), also when serde buffers the map
/// first (a `#[serde(flatten)]`ed `SamplingParams`, where a plain `u32` key would be refused).
fn token_map<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<u32, f32>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Id(u32);
    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct Visit;
            impl serde::de::Visitor<'_> for Visit {
                type Value = Id;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a token id")
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Id, E> {
                    u32::try_from(v).map(Id).map_err(|_| E::custom(format!("{v} is not a token id")))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Id, E> {
                    v.parse().map(Id).map_err(|_| E::custom(format!("{v:?} is not a token id")))
                }
            }
            d.deserialize_any(Visit)
        }
    }
    let map = BTreeMap::<Id, f32>::deserialize(d)?;
    Ok(map.into_iter().map(|(id, bias)| (id.0, bias)).collect())
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
            logit_bias: BTreeMap::new(),
        }
    }
}

impl SamplingParams {
    /// Whether any penalty changes a logit (otherwise the history is not looked at).
    pub fn penalizes(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(HearthError::InvalidArgument(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be 0 or more, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("repetition_penalty must be positive, got {}", self.repetition_penalty));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad("presence and frequency penalties must be finite".into());
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return bad(format!("logit_bias has {} entries; at most {MAX_LOGIT_BIAS}", self.logit_bias.len()));
        }
        if let Some((t, b)) = self.logit_bias.iter().find(|(_, b)| !(-LOGIT_BIAS_LIMIT..=LOGIT_BIAS_LIMIT).contains(*b))
        {
            return bad(format!("logit_bias for token {t} is {b}; a bias must be between -100 and 100"));
        }
        Ok(())
    }

    /// Whether every token `logit_bias` names is one of the `vocab` a model has (the engine, or a
    /// tokenizer, knows that; [`validate`](Self::validate) does not).
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        match self.logit_bias.keys().next_back() {
            Some(&t) if t as usize >= vocab => Err(HearthError::InvalidArgument(format!(
                "logit_bias names token {t}, outside the vocabulary of {vocab} tokens"
            ))),
            _ => Ok(()),
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// The tokens allowed at the next step, a bit per vocabulary entry (bit `t % 32` of word
    /// `t / 32`), as a grammar constraint sets it; None allows every token.
    mask: Option<Vec<u32>>,
}

/// Whether token `t` is allowed by `mask` (bits as [`Sampler::set_mask`] takes them); tokens past
/// the mask's end are not.
pub fn mask_allows(mask: &[u32], t: u32) -> bool {
    mask.get(t as usize / 32).is_some_and(|w| w >> (t % 32) & 1 == 1)
}

/// Add each token's bias to its logit (tokens outside `logits` are ignored: the engines reject
/// them before a step, [`SamplingParams::check_vocab`]).
pub fn apply_logit_bias(logits: &mut [f32], bias: &BTreeMap<u32, f32>) {
    for (&t, &b) in bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
}

/// Set every logit that `mask` does not allow to minus infinity, before penalties and sampling:
/// such a token can then never be chosen, by argmax or by the sampling chain (which drops them).
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (t, l) in logits.iter_mut().enumerate() {
        if !mask_allows(mask, t as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng, mask: None })
    }

    /// Restrict the next choices to the tokens whose bits are set (a constraint's mask; see
    /// [`mask_allows`]), or lift the restriction with None. Stays until changed.
    pub fn set_mask(&mut self, mask: Option<Vec<u32>>) {
        self.mask = mask;
    }

    /// The mask [`set_mask`](Self::set_mask) set: a backend that samples on its device applies it there.
    pub fn mask(&self) -> Option<&[u32]> {
        self.mask.as_deref()
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token. `logits` is modified (the logit bias, the mask and the penalties
    /// applied, in that order). `history` holds the tokens so far. Consumes one
    /// [`draw`](Self::draw) when the temperature is above 0, none when greedy.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        apply_logit_bias(logits, &self.params.logit_bias);
        self.sample_biased(logits, history)
    }

    /// [`sample`](Self::sample), and the chosen token's log-probability with the `k` most likely
    /// tokens', computed from the logits with the bias applied, before the mask and the penalties
    /// (the distribution [`crate::logprobs`] defines).
    pub fn sample_with_logprobs(&mut self, logits: &mut [f32], history: &[u32], k: usize) -> (u32, StepLogprobs) {
        apply_logit_bias(logits, &self.params.logit_bias);
        let biased = logits.to_vec();
        let id = self.sample_biased(logits, history);
        (id, StepLogprobs::from_logits(&biased, id, k))
    }

    /// The rest of [`sample`](Self::sample) once the bias is in `logits`.
    fn sample_biased(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if let Some(mask) = &self.mask {
            apply_mask(logits, mask);
        }
        let counts = self.penalty_counts(history);
        let draw = if self.params.temperature > 0.0 { self.draw() } else { 0.0 };
        choose(&self.params, logits, &counts, draw)
    }

    /// The next uniform number in [0, 1) from the seeded generator: 24 random bits, as many as an f32
    /// mantissa holds, so every value is exact. A backend that samples elsewhere (the GPU) takes its
    /// draws from here to give the same tokens as [`sample`](Self::sample) for the same seed.
    pub fn draw(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// `(token, occurrences)` over the last `penalty_last_n` tokens of `history`, sorted by token
    /// (so each token appears once); empty when every penalty is neutral.
    pub fn penalty_counts(&self, history: &[u32]) -> Vec<(u32, u32)> {
        let p = &self.params;
        if !p.penalizes() {
            return Vec::new();
        }
        let mut recent = history[history.len().saturating_sub(p.penalty_last_n)..].to_vec();
        recent.sort_unstable();
        let mut counts: Vec<(u32, u32)> = Vec::new();
        for t in recent {
            match counts.last_mut() {
                Some((last, n)) if *last == t => *n += 1,
                _ => counts.push((t, 1)),
            }
        }
        counts
    }
}

/// Apply the penalties for `counts` (as [`Sampler::penalty_counts`] gives them) to `logits` in place.
/// Tokens outside the vocabulary are ignored.
pub fn apply_penalties(params: &SamplingParams, logits: &mut [f32], counts: &[(u32, u32)]) {
    for &(t, n) in counts {
        let Some(l) = logits.get_mut(t as usize) else { continue };
        if params.repetition_penalty != 1.0 {
            *l = if *l > 0.0 { *l / params.repetition_penalty } else { *l * params.repetition_penalty };
        }
        *l -= n as f32 * params.frequency_penalty + params.presence_penalty;
    }
}

/// The token [`Sampler::sample`] picks, as a pure function (after its bias and mask): penalties for `counts` are applied to
/// `logits` in place, then argmax (temperature 0; `draw` is unused) or the sampling chain with the
/// uniform `draw` in [0, 1). A draw of 1 or more takes the last kept candidate.
pub fn choose(params: &SamplingParams, logits: &mut [f32], counts: &[(u32, u32)], draw: f32) -> u32 {
    apply_penalties(params, logits, counts);
    if params.temperature == 0.0 {
        return argmax(logits);
    }
    let kept = kept_candidates(params, logits);
    let total: f32 = kept.iter().map(|c| c.1).sum();
    let r = draw * total;
    let mut acc = 0.0;
    for &(token, q) in &kept {
        acc += q;
        if r < acc {
            return token;
        }
    }
    kept.last().map_or(0, |c| c.0)
}

/// The candidates the sampling chain keeps (temperature > 0) from logits that already carry the
/// penalties: `(token, probability)` in sampling order (descending logit, lower index first on
/// ties), after top-k, softmax at the temperature (over the top-k set), top-p and min-p. Never
/// empty for a non-empty `logits`. The probabilities are not renormalized after top-p / min-p:
/// [`choose`] scales its draw by their sum.
pub fn kept_candidates(params: &SamplingParams, logits: &[f32]) -> Vec<(u32, f32)> {
    let p = params;
    // Candidates sorted by logit, best first. The index breaks ties so the order is fully defined
    // (the GPU sampler uses the same order).
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // Masked-out tokens (minus infinity) are never candidates; if every logit is masked out the
    // chain runs over all of them (a constraint never asks for that: it always allows a token).
    let mut cand: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, &l)| l != f32::NEG_INFINITY).map(|(i, &l)| (i as u32, l)).collect();
    if cand.is_empty() {
        cand = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    }
    if cand.is_empty() {
        return cand;
    }
    let k = if p.top_k > 0 { p.top_k.min(cand.len()) } else { cand.len() };
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, order);
        cand.truncate(k);
    }
    cand.sort_unstable_by(order);

    // Softmax at the requested temperature.
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand.iter().map(|c| ((c.1 - max) / p.temperature).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);

    let mut keep = probs.len();
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, &q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        let floor = probs[0] * p.min_p;
        keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
    }
    cand.truncate(keep);
    cand.iter_mut().zip(probs).for_each(|(c, q)| c.1 = q);
    cand
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_can_change_the_greedy_choice() {
        let params = SamplingParams { repetition_penalty: 1.5, ..Default::default() };
        let mut s = Sampler::new(params).unwrap();
        // 3.0 / 1.5 = 2.0 < 2.9
        assert_eq!(s.sample(&mut logits(), &[1]), 5);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_limits_choices() {
        let params = SamplingParams { temperature: 1.5, top_k: 2, seed: 42, ..Default::default() };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..200).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        let a = run(&params);
        assert_eq!(a, run(&params));
        assert!(a.iter().all(|&t| t == 1 || t == 5), "{a:?}");
        assert!(a.contains(&1) && a.contains(&5));
        let other = run(&SamplingParams { seed: 43, ..params });
        assert_ne!(a, other);
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let mut s =
            Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.01, seed: 1, ..Default::default() }).unwrap();
        assert!((0..50).all(|_| s.sample(&mut logits(), &[]) == 1));
        let mut s =
            Sampler::new(SamplingParams { temperature: 1.0, min_p: 0.95, seed: 1, ..Default::default() }).unwrap();
        // exp(2.9 - 3.0) = 0.905 < 0.95: only token 1 survives.
        assert!((0..50).all(|_| s.sample(&mut logits(), &[]) == 1));
    }

    #[test]
    fn sample_is_choose_with_one_draw_per_sampled_token() {
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 4,
            top_p: 0.9,
            repetition_penalty: 1.3,
            frequency_penalty: 0.2,
            seed: 7,
            ..Default::default()
        };
        let history = [1, 5, 5, 2];
        let mut a = Sampler::new(params.clone()).unwrap();
        let mut b = Sampler::new(params.clone()).unwrap();
        for _ in 0..100 {
            let counts = b.penalty_counts(&history);
            let expected = choose(&params, &mut logits(), &counts, b.draw());
            assert_eq!(a.sample(&mut logits(), &history), expected);
        }
        // Greedy consumes no draw.
        let greedy = SamplingParams { temperature: 0.0, ..params };
        let mut g = Sampler::new(greedy).unwrap();
        let mut fresh = Sampler::new(SamplingParams { temperature: 0.0, seed: 7, ..Default::default() }).unwrap();
        g.sample(&mut logits(), &[]);
        assert_eq!(g.draw(), fresh.draw());
    }

    #[test]
    fn penalty_counts_are_sorted_by_token_over_the_last_n() {
        let params = SamplingParams { presence_penalty: 0.5, penalty_last_n: 5, ..Default::default() };
        let s = Sampler::new(params).unwrap();
        assert_eq!(s.penalty_counts(&[9, 9, 7, 3, 7, 3, 3]), vec![(3, 3), (7, 2)]);
        let neutral = Sampler::new(SamplingParams::default()).unwrap();
        assert!(neutral.penalty_counts(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn ties_keep_the_lower_index_first_and_a_full_draw_takes_the_last_kept() {
        let params = SamplingParams { temperature: 1.0, top_k: 3, ..Default::default() };
        let tied = [0.5, 2.0, 1.0, 2.0, 2.0, 2.0];
        let kept = kept_candidates(&params, &tied);
        assert_eq!(kept.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 3, 4]);
        // Equal logits, equal thirds: each draw lands in its token's third.
        assert_eq!(choose(&params, &mut tied.to_vec(), &[], 0.1), 1);
        assert_eq!(choose(&params, &mut tied.to_vec(), &[], 0.5), 3);
        assert_eq!(choose(&params, &mut tied.to_vec(), &[], 0.9), 4);
        assert_eq!(choose(&params, &mut tied.to_vec(), &[], 1.0), 4);
        let sum: f32 = kept.iter().map(|c| c.1).sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_mask_limits_greedy_and_sampled_choices_to_its_tokens() {
        // Allow tokens 0, 2 and 4 only: greedy takes 2 (2.5), sampling never leaves the set.
        let mask = vec![0b10101];
        let mut g = Sampler::new(SamplingParams::default()).unwrap();
        g.set_mask(Some(mask.clone()));
        assert_eq!(g.sample(&mut logits(), &[]), 2);
        let mut s = Sampler::new(SamplingParams { temperature: 2.0, seed: 3, ..Default::default() }).unwrap();
        s.set_mask(Some(mask));
        let picks: Vec<u32> = (0..300).map(|_| s.sample(&mut logits(), &[])).collect();
        assert!(picks.iter().all(|t| [0, 2, 4].contains(t)), "{picks:?}");
        assert!([0, 2, 4].iter().all(|t| picks.contains(t)));
        // A draw of 1 takes the last kept candidate, which must still be allowed.
        let params = SamplingParams { temperature: 1.0, ..Default::default() };
        let mut masked = logits();
        apply_mask(&mut masked, &[0b10101]);
        assert_eq!(choose(&params, &mut masked, &[], 1.0), 4);
        s.set_mask(None);
        assert!((0..300).any(|_| s.sample(&mut logits(), &[]) == 1));
    }

    #[test]
    fn the_logit_bias_comes_before_the_mask_and_the_penalties() {
        let bias =
            |pairs: &[(u32, f32)]| SamplingParams { logit_bias: pairs.iter().copied().collect(), ..Default::default() };
        // -100 on the best (3.0) leaves 5 (2.9); +100 on the worst (-1.0) makes it the best.
        assert_eq!(Sampler::new(bias(&[(1, -100.0)])).unwrap().sample(&mut logits(), &[]), 5);
        assert_eq!(Sampler::new(bias(&[(3, 100.0)])).unwrap().sample(&mut logits(), &[]), 3);
        // Biased first: 2.9 - 4 = -1.1, then the repetition penalty multiplies it (-1.65 < -1.0 of
        // token 3, which wins with every other token biased away). Penalized first it would be
        // 2.9 / 1.5 - 4 = -2.07.
        let mut p = bias(&[(0, -50.0), (1, -50.0), (2, -50.0), (4, -50.0), (5, -4.0)]);
        p.repetition_penalty = 1.5;
        let mut l = logits();
        assert_eq!(Sampler::new(p).unwrap().sample(&mut l, &[5]), 3);
        assert!((l[5] - (2.9 - 4.0) * 1.5).abs() < 1e-6, "{}", l[5]);
        // A masked token stays masked whatever its bias.
        let mut s = Sampler::new(bias(&[(1, 100.0)])).unwrap();
        s.set_mask(Some(vec![0b10101]));
        assert_eq!(s.sample(&mut logits(), &[]), 2);
    }

    #[test]
    fn logit_bias_is_checked_and_read_from_json_string_keys() {
        let bias = |t: u32, b: f32| SamplingParams { logit_bias: [(t, b)].into_iter().collect(), ..Default::default() };
        assert!(bias(7, -100.0).validate().is_ok() && bias(7, 100.0).validate().is_ok());
        for b in [100.5, -101.0, f32::NAN, f32::INFINITY] {
            let err = bias(7, b).validate().unwrap_err().to_string();
            assert!(err.contains("token 7"), "{err}");
        }
        let many = SamplingParams {
            logit_bias: (0..=MAX_LOGIT_BIAS as u32).map(|t| (t, 1.0)).collect(),
            ..Default::default()
        };
        assert!(matches!(many.validate(), Err(HearthError::InvalidArgument(m)) if m.contains("1025 entries")));
        assert!(bias(5, 1.0).check_vocab(6).is_ok());
        assert!(matches!(bias(6, 1.0).check_vocab(6), Err(HearthError::InvalidArgument(m)) if m.contains("token 6")));

        let p: SamplingParams = serde_json::from_str(r#"{"logit_bias": {"123": -100, "7": 2.5}}"#).unwrap();
        assert_eq!(p.logit_bias, [(7, 2.5), (123, -100.0)].into_iter().collect());
        // Flattened into another request (the browser's), as `begin` reads it.
        #[derive(Deserialize)]
        struct Request {
            #[serde(default)]
            max_tokens: usize,
            #[serde(flatten)]
            sampling: SamplingParams,
        }
        let r: Request =
            serde_json::from_str(r#"{"max_tokens": 3, "temperature": 0.5, "logit_bias": {"9": 1}}"#).unwrap();
        assert_eq!((r.max_tokens, r.sampling.temperature), (3, 0.5));
        assert_eq!(r.sampling.logit_bias, [(9, 1.0)].into_iter().collect());
        assert!(serde_json::from_str::<SamplingParams>(r#"{"logit_bias": {"x": 1}}"#).is_err());
        assert!(serde_json::from_str::<SamplingParams>("{}").unwrap().logit_bias.is_empty());
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
        assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
    }
}
