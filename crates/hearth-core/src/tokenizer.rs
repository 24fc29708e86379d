//! Tokenization through the Hugging Face `tokenizers` library, plus incremental detokenization for
//! streaming.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use crate::constrain::Grammars;
use crate::error::{HearthError, Result};
use crate::manifest::TokenizerInfo;

pub struct Tokenizer {
    /// Shared with the grammar engine, which tokenizes the text a grammar forces. Encoding flips
    /// the special-token switch, so it takes the write lock; everything else reads.
    inner: Arc<RwLock<tokenizers::Tokenizer>>,
    info: TokenizerInfo,
    /// Built on the first constrained generation (a trie of every token's bytes: not worth its
    /// time and memory for a user who never constrains).
    grammars: OnceLock<Grammars>,
}

impl Tokenizer {
    pub fn from_json(json: &[u8], info: TokenizerInfo) -> Result<Self> {
        // The JSON first: `tokenizers` panics (`expect("Helper")`) on a syntax error, a byte that is
        // not UTF-8 or an escape that is no character inside a `decoder` object, where it should
        // return an error (found by fuzz/tokenizer_json).
        let text = std::str::from_utf8(json)
            .map_err(|e| HearthError::Tokenizer(format!("cannot load tokenizer.json: it is not JSON: {e}")))?;
        serde_json::from_str::<CheckedJson>(text)
            .map_err(|e| HearthError::Tokenizer(format!("cannot load tokenizer.json: it is not JSON: {e}")))?;
        let inner = text
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| HearthError::Tokenizer(format!("cannot load tokenizer.json: {e}")))?;
        Ok(Tokenizer { inner: Arc::new(RwLock::new(inner)), info, grammars: OnceLock::new() })
    }

    /// The library tokenizer, for the grammar engine.
    pub(crate) fn shared(&self) -> Arc<RwLock<tokenizers::Tokenizer>> {
        self.inner.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, tokenizers::Tokenizer> {
        // A panic while encoding cannot leave the tokenizer half-changed: carry on.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The compiled vocabulary for constrained generation, built once.
    pub fn grammars(&self) -> Result<&Grammars> {
        if let Some(g) = self.grammars.get() {
            return Ok(g);
        }
        let built = Grammars::new(self)?;
        Ok(self.grammars.get_or_init(|| built))
    }

    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    pub fn vocab_size(&self) -> usize {
        self.read().get_vocab_size(true)
    }

    /// Token ids of `text`. With `parse_special`, special-token texts such as `<|im_start|>` become their
    /// ids; without it they are tokenized as ordinary text. Adds the bos token if the model wants one
    /// and `add_bos` is set.
    pub fn encode(&mut self, text: &str, parse_special: bool, add_bos: bool) -> Result<Vec<u32>> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.set_encode_special_tokens(!parse_special);
        let enc =
            inner.encode_fast(text, false).map_err(|e| HearthError::Tokenizer(format!("cannot encode text: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.info.add_bos {
            if let Some(bos) = self.info.bos_id {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// An encoder's token ids of `text` (BERT's `[CLS] … [SEP]`: the tokenizer's post-processor),
    /// cut to `max_tokens` with its special tokens kept, as sentence-transformers cuts it.
    /// Special-token texts in `text` are tokenized as ordinary text.
    pub fn encode_for_embedding(&mut self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.set_encode_special_tokens(true);
        let truncation = tokenizers::TruncationParams { max_length: max_tokens, ..Default::default() };
        inner.with_truncation(Some(truncation)).map_err(|e| HearthError::Tokenizer(format!("truncation: {e}")))?;
        let enc = inner.encode_fast(text, true);
        // Left as loaded for whatever encodes next.
        let _ = inner.with_truncation(None);
        let enc = enc.map_err(|e| HearthError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included (a chat template's markers stay visible when asked for).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.read().decode(ids, skip_special).map_err(|e| HearthError::Tokenizer(format!("cannot decode tokens: {e}")))
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.read().id_to_token(id)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.info.stop_ids.contains(&id)
    }
}

/// Turns a growing token sequence into text pieces, never emitting part of a UTF-8 character.
///
/// Decoding token by token would cut characters that span tokens (emoji, CJK in byte-level BPE) and
/// lose the spaces some decoders add between tokens; so each step decodes a short window of recent
/// tokens twice, with and without the new ones, and emits the difference once it no longer ends in an
/// incomplete character.
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the window of tokens decoded for context.
    prefix_offset: usize,
    /// Tokens before this have been emitted as text.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one token; returns the text that became complete, possibly empty.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the very end), decoded lossily.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or("").to_string())
    }
}

/// Any JSON value, checked whole (every string decoded, escapes included) and kept nowhere: what
/// `serde::de::IgnoredAny` does, except that it skips strings without decoding their escapes.
struct CheckedJson;

impl<'de> serde::Deserialize<'de> for CheckedJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(CheckedJson)
    }
}

impl<'de> serde::de::Visitor<'de> for CheckedJson {
    type Value = CheckedJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(CheckedJson)
    }

    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(CheckedJson)
    }

    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(CheckedJson)
    }

    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(CheckedJson)
    }

    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(CheckedJson)
    }

    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(CheckedJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<CheckedJson>()?.is_some() {}
        Ok(CheckedJson)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self, A::Error> {
        while map.next_entry::<CheckedJson, CheckedJson>()?.is_some() {}
        Ok(CheckedJson)
    }
}
