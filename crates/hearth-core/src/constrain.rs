//! Constrained decoding: output that must follow a JSON Schema, a regular expression or a grammar,
//! enforced token by token with `llguidance`.
//!
//! [`Grammars`] is built once per tokenizer (every token's bytes in a trie); [`Grammars::constraint`]
//! compiles one [`ResponseFormat`] into a [`Constraint`], which the decode loop asks for the mask of
//! allowed tokens before each choice, tells each chosen token, and asks for the tokens the grammar
//! forces (fed to the model in one chunk).

use std::sync::{Arc, PoisonError, RwLock};

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{HearthError, Result};
use crate::tokenizer::Tokenizer;
use crate::tools::Tools;

/// What the generated text must be, in OpenAI's `response_format` shapes plus Hearth's `regex` and
/// `grammar` (Lark syntax as llguidance takes it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    JsonSchema {
        json_schema: JsonSchemaFormat,
    },
    /// A regular expression the whole output matches.
    Regex {
        pattern: String,
    },
    /// A Lark-style context-free grammar.
    Grammar {
        grammar: String,
    },
}

/// OpenAI's `json_schema` member: the schema and its name (`strict` is accepted; the output always
/// follows the schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub schema: Value,
    #[serde(default)]
    pub strict: Option<bool>,
}

impl ResponseFormat {
    pub fn is_free(&self) -> bool {
        matches!(self, ResponseFormat::Text)
    }

    fn grammar(&self) -> Option<TopLevelGrammar> {
        Some(match self {
            ResponseFormat::Text => return None,
            ResponseFormat::JsonObject => {
                TopLevelGrammar::from_json_schema(bounded_whitespace(json!({ "type": "object" })))
            }
            ResponseFormat::JsonSchema { json_schema } => {
                TopLevelGrammar::from_json_schema(bounded_whitespace(json_schema.schema.clone()))
            }
            ResponseFormat::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
            ResponseFormat::Grammar { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            ResponseFormat::Text => "text",
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::JsonSchema { .. } => "JSON schema",
            ResponseFormat::Regex { .. } => "regular expression",
            ResponseFormat::Grammar { .. } => "grammar",
        }
    }
}

/// JSON may put whitespace between any two tokens, and a small model easily falls into emitting
/// newlines forever. So a gap holds at most one line break and 20 spaces or tabs (pretty-printed
/// JSON ten levels deep), unless the schema sets llguidance's own `x-guidance` options.
pub(crate) fn bounded_whitespace(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| json!({ "whitespace_pattern": WHITESPACE }));
    }
    bound_integers(&mut schema, 0);
    schema
}

/// The integers a JSON parser in JavaScript reads exactly: ±(2^53 − 1), as I-JSON (RFC 7493)
/// recommends.
const SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Give every integer without a bound the safe range: an unbounded integer lets a small model write
/// digits until the token budget ends ("population": 1111111…) and no JavaScript reader could
/// hold such a value anyway. Data (`const`, `enum`, `default`, `examples`) is left alone; the walk
/// stops at a depth no real schema reaches (the schema is someone else's input).
fn bound_integers(schema: &mut Value, depth: usize) {
    if depth > 64 {
        return;
    }
    match schema {
        Value::Object(obj) => {
            let integer = match obj.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            if integer {
                if !obj.contains_key("minimum") && !obj.contains_key("exclusiveMinimum") {
                    obj.insert("minimum".into(), json!(-SAFE_INTEGER));
                }
                if !obj.contains_key("maximum") && !obj.contains_key("exclusiveMaximum") {
                    obj.insert("maximum".into(), json!(SAFE_INTEGER));
                }
            }
            for (key, value) in obj.iter_mut() {
                if !matches!(key.as_str(), "const" | "enum" | "default" | "examples" | "x-guidance") {
                    bound_integers(value, depth + 1);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| bound_integers(v, depth + 1)),
        _ => {}
    }
}

/// The whitespace allowed between two JSON tokens (a regular expression, as llguidance takes it).
const WHITESPACE: &str = r"[\x20\x09]{1,20}|\r?\n[\x20\x09]{0,20}";

/// A tokenizer's vocabulary compiled for llguidance; makes a [`Constraint`] per generation.
pub struct Grammars {
    factory: ParserFactory,
    /// The tokens that end a generation; allowed exactly when the grammar may end.
    stop_ids: Vec<u32>,
    vocab_size: usize,
}

impl Grammars {
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let words = token_bytes(tokenizer)?;
        let vocab_size = words.len();
        let stop_ids: Vec<u32> =
            tokenizer.info().stop_ids.iter().copied().filter(|&id| (id as usize) < vocab_size).collect();
        let eos = *stop_ids.first().ok_or_else(|| {
            HearthError::Tokenizer("the model has no stop token, so a constrained output could never end".into())
        })?;
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(HearthTokEnv { trie, tokenizer: tokenizer.shared() });
        let factory = ParserFactory::new(
            &env,
            InferenceCapabilities { ff_tokens: true, ..Default::default() },
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| HearthError::Tokenizer(format!("cannot prepare the vocabulary for constrained output: {e}")))?;
        Ok(Grammars { factory, stop_ids, vocab_size })
    }

    /// Compile `format`; None for free text. A schema or grammar llguidance rejects is an
    /// `InvalidArgument` naming what is wrong.
    pub fn constraint(&self, format: &ResponseFormat) -> Result<Option<Constraint>> {
        match format.grammar() {
            Some(grammar) => self.compile(grammar, format.kind()).map(Some),
            None => Ok(None),
        }
    }

    /// The constraint of a request that may call `tools`: their grammar when a call may be made
    /// (with `format` for an answer without one), else `format`'s.
    pub fn constraint_with_tools(&self, format: &ResponseFormat, tools: &Tools) -> Result<Option<Constraint>> {
        match tools.grammar(format)? {
            Some(lark) => self.compile(TopLevelGrammar::from_lark(lark), "tools").map(Some),
            None => self.constraint(format),
        }
    }

    /// `what` names the grammar's source in errors.
    fn compile(&self, grammar: TopLevelGrammar, what: &str) -> Result<Constraint> {
        let invalid = |e: String| HearthError::InvalidArgument(format!("invalid {what}: {e}"));
        // The default limits bound the work of one step and the size of a grammar (hostile schemas
        // included); they are generous for real schemas.
        let limits = ParserLimits::default();
        let parser = self
            .factory
            .create_parser_from_init_ext(
                llguidance::api::GrammarInit::Serialized(grammar),
                llguidance::Logger::new(0, 0),
                InferenceCapabilities { ff_tokens: true, ..Default::default() },
                limits,
            )
            .map_err(|e| invalid(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(e));
        }
        Ok(Constraint { matcher, stop_ids: self.stop_ids.clone(), vocab_size: self.vocab_size })
    }
}

/// One generation's grammar state.
pub struct Constraint {
    matcher: Matcher,
    stop_ids: Vec<u32>,
    vocab_size: usize,
}

impl Constraint {
    /// The tokens allowed next, a bit per token (as `Sampler::set_mask` takes them). A stop token
    /// is allowed exactly when the output so far is complete.
    pub fn mask(&mut self) -> Result<Vec<u32>> {
        let vob = self.matcher.compute_mask().map_err(|e| self.failed(e))?;
        let mut words: Vec<u32> = vob.as_slice().to_vec();
        words.resize(self.vocab_size.div_ceil(32), 0);
        let may_end = self.stop_ids.first().is_some_and(|&eos| vob.is_allowed(eos));
        for &id in &self.stop_ids {
            let (w, bit) = (id as usize / 32, 1 << (id % 32));
            if may_end {
                words[w] |= bit;
            } else {
                words[w] &= !bit;
            }
        }
        if words.iter().all(|&w| w == 0) {
            return Err(HearthError::InvalidArgument("the constraint allows no token here".into()));
        }
        Ok(words)
    }

    /// Record the chosen token (a stop token ends the grammar).
    pub fn commit(&mut self, id: u32) -> Result<()> {
        let id = if self.stop_ids.contains(&id) { self.stop_ids[0] } else { id };
        self.matcher.consume_token(id).map_err(|e| self.failed(e))
    }

    /// The tokens the grammar forces now (possibly none), already recorded.
    pub fn forced(&mut self) -> Result<Vec<u32>> {
        let ids = self.matcher.consume_ff_tokens();
        match self.matcher.get_error() {
            Some(e) => Err(HearthError::InvalidArgument(format!("constrained output failed: {e}"))),
            None => Ok(ids),
        }
    }

    /// Whether the output is complete and nothing more may follow.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    fn failed(&self, e: impl std::fmt::Display) -> HearthError {
        HearthError::InvalidArgument(format!("constrained output failed: {e}"))
    }
}

/// The trie plus our own tokenizer, which llguidance uses to tokenize forced text the way the
/// model would (so forced tokens are the canonical ones).
struct HearthTokEnv {
    trie: TokTrie,
    tokenizer: Arc<RwLock<tokenizers::Tokenizer>>,
}

impl TokenizerEnv for HearthTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Text that is not UTF-8 (a forced prefix cut inside a character) keeps its valid part
        // canonical and the rest greedy.
        let valid = match std::str::from_utf8(s) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&s[..e.valid_up_to()]).unwrap_or_default(),
        };
        let inner = self.tokenizer.read().unwrap_or_else(PoisonError::into_inner);
        let mut ids = match inner.encode_fast(valid, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            Err(_) => return self.trie.greedy_tokenize(s),
        };
        drop(inner);
        ids.extend(self.trie.greedy_tokenize(&s[valid.len()..]));
        ids
    }
}

/// Every token's bytes as the decoder writes them (special tokens behind llguidance's marker byte,
/// so no grammar's text can ever contain one), for byte-level BPE and SentencePiece byte-fallback
/// vocabularies. Tokens of no known form get no bytes and are never allowed.
fn token_bytes(tokenizer: &Tokenizer) -> Result<Vec<Vec<u8>>> {
    let inner = tokenizer.shared();
    let inner = inner.read().unwrap_or_else(PoisonError::into_inner);
    let decoder = serde_json::to_value(inner.get_decoder()).unwrap_or(Value::Null);
    let byte_level = decoder["type"] == "ByteLevel"
        || decoder["decoders"].as_array().is_some_and(|d| d.iter().any(|d| d["type"] == "ByteLevel"));
    let byte_fallback = decoder["decoders"].as_array().is_some_and(|d| d.iter().any(|d| d["type"] == "ByteFallback"));
    if !byte_level && !byte_fallback {
        return Err(HearthError::Tokenizer(format!(
            "constrained output needs a byte-level BPE or byte-fallback tokenizer; this one's decoder is {}",
            decoder["type"]
        )));
    }
    let vocab = inner.get_vocab(true);
    let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let byte_of_char = byte_level_chars();
    let mut words = vec![Vec::new(); size];
    for (piece, &id) in &vocab {
        words[id as usize] = if byte_level {
            piece.chars().map(&byte_of_char).collect::<Option<Vec<u8>>>().unwrap_or_default()
        } else {
            sentencepiece_bytes(piece)
        };
    }
    // Added tokens are written as they are; special ones behind the marker.
    for (id, added) in inner.get_added_tokens_decoder() {
        if let Some(w) = words.get_mut(id as usize) {
            *w = added.content.as_bytes().to_vec();
            if added.special {
                w.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
        }
    }
    for &id in &tokenizer.info().stop_ids {
        if let Some(w) = words.get_mut(id as usize) {
            if w.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                w.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
        }
    }
    Ok(words)
}

/// A SentencePiece piece's bytes: `<0xAB>` is the byte 0xAB, `▁` a space.
fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>')) {
        if hex.len() == 2 {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

/// GPT-2's byte-level alphabet backwards: each of the 256 characters it uses for a byte, to that byte.
pub(crate) fn byte_level_chars() -> impl Fn(char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = std::collections::HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        if let Some(c) = char::from_u32(c) {
            table.insert(c, b);
        }
    }
    move |c| table.get(&c).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_maps_back_to_every_byte() {
        let back = byte_level_chars();
        assert_eq!(back('A'), Some(b'A'));
        assert_eq!(back('\u{0120}'), Some(b' ')); // "Ġ"
        assert_eq!(back('\u{010A}'), Some(b'\n')); // "Ċ"
        assert_eq!(back('\u{0100}'), Some(0));
        assert_eq!(back('\u{4E00}'), None);
    }

    #[test]
    fn sentencepiece_pieces_become_their_bytes() {
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("\u{2581}the"), b" the");
        assert_eq!(sentencepiece_bytes("<0xZZ>"), b"<0xZZ>");
    }

    #[test]
    fn unbounded_integers_get_the_safe_range_and_data_is_left_alone() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "n": { "type": "integer" },
                "m": { "type": ["integer", "null"], "maximum": 5 },
                "x": { "type": "number" },
                "c": { "const": { "type": "integer" } }
            },
            "$defs": { "d": { "type": "integer", "exclusiveMinimum": 0 } }
        });
        bound_integers(&mut schema, 0);
        assert_eq!(
            schema["properties"]["n"],
            json!({ "type": "integer", "minimum": -SAFE_INTEGER, "maximum": SAFE_INTEGER })
        );
        assert_eq!(schema["properties"]["m"]["maximum"], 5);
        assert_eq!(schema["properties"]["m"]["minimum"], -SAFE_INTEGER);
        assert_eq!(schema["properties"]["x"], json!({ "type": "number" }));
        assert_eq!(schema["properties"]["c"], json!({ "const": { "type": "integer" } }));
        assert_eq!(schema["$defs"]["d"], json!({ "type": "integer", "exclusiveMinimum": 0, "maximum": SAFE_INTEGER }));
    }

    #[test]
    fn response_formats_parse_from_openai_shapes_and_reject_unknown_fields() {
        let f: ResponseFormat = serde_json::from_str(
            r#"{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":true}}"#,
        )
        .unwrap();
        assert!(matches!(f, ResponseFormat::JsonSchema { .. }));
        let f: ResponseFormat = serde_json::from_str(r#"{"type":"regex","pattern":"a+"}"#).unwrap();
        assert_eq!(f, ResponseFormat::Regex { pattern: "a+".into() });
        assert!(serde_json::from_str::<ResponseFormat>(r#"{"type":"regex","pattern":"a","x":1}"#).is_err());
        assert!(serde_json::from_str::<ResponseFormat>(r#"{"type":"xml"}"#).is_err());
    }
}
