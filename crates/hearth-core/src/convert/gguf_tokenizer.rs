//! Builds a Hugging Face `tokenizer.json` from the tokenizer that a GGUF file carries in its metadata
//! (`tokenizer.ggml.*`), reproducing llama.cpp's tokenization with the `tokenizers` library's parts.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::error::{HearthError, Result};
use crate::gguf::{GgufFile, GgufValue};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Token texts that llama.cpp treats as ending a generation, whatever their token type; it also makes
/// them control tokens (parsed as specials only on request). Kept in step with llama.cpp's list.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

// Pre-tokenizer regexes, as llama.cpp applies them for each `tokenizer.ggml.pre` value (each regex
// splits the pieces the previous one produced).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the converter learns about the tokenizer besides `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    pub json: String,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub stop_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

struct Vocab {
    tokens: Vec<String>,
    types: Vec<i64>,
}

pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<GgufTokenizer> {
    let file = gguf.path.display().to_string();
    let model = gguf.require_str("tokenizer.ggml.model")?;
    let vocab = read_vocab(gguf)?;
    let token_id = |key: &str| -> Option<u32> {
        gguf.get_u64(key).and_then(|v| u32::try_from(v).ok()).filter(|&id| (id as usize) < vocab.tokens.len())
    };
    if model == "bert" {
        return wordpiece(gguf, &vocab);
    }
    let bos_id = token_id("tokenizer.ggml.bos_token_id");
    let eos_id = token_id("tokenizer.ggml.eos_token_id");

    let (mut tokenizer, default_add_bos) = match model {
        "gpt2" => {
            let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
            (byte_level_bpe(gguf, &vocab, pre)?, pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3")
        }
        "llama" => (sentencepiece_bpe(gguf, &vocab)?, true),
        other => {
            return Err(HearthError::bad_file(
                &file,
                format!("tokenizer.ggml.model `{other}` is not supported (gpt2, llama and bert are)"),
            ))
        }
    };
    let end_of_generation = end_of_generation_ids(&vocab);
    // llama.cpp recognises Phi-3 by its name (general.name) and gives its special tokens the strip
    // rule of Phi-3's own tokenizer.json.
    let name = gguf.get_str("general.name").unwrap_or_default().to_lowercase();
    let phi3 = name.contains("phi-3") || name.contains("phi3");
    tokenizer["added_tokens"] = added_tokens(&vocab, &end_of_generation, phi3);

    let mut stop_ids: Vec<u32> =
        ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
            .iter()
            .filter_map(|k| token_id(k))
            .collect();
    stop_ids.extend(end_of_generation.iter().map(|&id| id as u32));
    stop_ids.sort_unstable();
    stop_ids.dedup();

    let json = serde_json::to_string(&tokenizer)
        .map_err(|e| HearthError::Tokenizer(format!("cannot serialize tokenizer.json: {e}")))?;
    // Prove the result loads before it goes into a package.
    tokenizers::Tokenizer::from_bytes(json.as_bytes())
        .map_err(|e| HearthError::Tokenizer(format!("tokenizer built from {file} does not load: {e}")))?;

    Ok(GgufTokenizer {
        json,
        bos_id,
        eos_id,
        stop_ids,
        pad_id: token_id("tokenizer.ggml.padding_token_id"),
        add_bos: gguf.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(default_add_bos),
        chat_template: gguf.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

fn read_vocab(gguf: &GgufFile) -> Result<Vocab> {
    let file = gguf.path.display().to_string();
    let tokens: Vec<String> = gguf
        .get("tokenizer.ggml.tokens")
        .and_then(GgufValue::as_array)
        .ok_or_else(|| HearthError::bad_file(&file, "missing tokenizer.ggml.tokens"))?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| HearthError::bad_file(&file, "tokenizer.ggml.tokens holds non-strings"))?;
    let types = match gguf.get("tokenizer.ggml.token_type").and_then(GgufValue::as_array) {
        Some(a) if a.len() == tokens.len() => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        Some(a) => {
            return Err(HearthError::bad_file(
                &file,
                format!("tokenizer.ggml.token_type has {} entries for {} tokens", a.len(), tokens.len()),
            ))
        }
        None => vec![1; tokens.len()],
    };
    Ok(Vocab { tokens, types })
}

fn vocab_map(vocab: &Vocab) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::with_capacity(vocab.tokens.len());
    for (id, t) in vocab.tokens.iter().enumerate() {
        // A repeated token text keeps its first id, as llama.cpp's text-to-token map does.
        map.entry(t.clone()).or_insert_with(|| json!(id));
    }
    map
}

/// Ids of the tokens llama.cpp treats as end-of-generation by their text. (`</s>` is an ordinary token
/// in vocabularies that also have `<|tool_response>`, as llama.cpp decides too.)
fn end_of_generation_ids(vocab: &Vocab) -> Vec<usize> {
    let mut ids: Vec<usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| END_OF_GENERATION_TEXTS.contains(&t.as_str()))
        .map(|(i, _)| i)
        .collect();
    if vocab.tokens.iter().any(|t| t == "<|tool_response>") {
        ids.retain(|&i| vocab.tokens[i] != "</s>");
    }
    ids
}

/// Control and user-defined tokens become added tokens, matched before the model runs. User-defined
/// ones are matched always; control ones (and end-of-generation texts, which llama.cpp turns into
/// control tokens) only when special-token parsing is on. `phi3`: whitespace after each is dropped
/// (`rstrip`), but after `<unk>`, `<s>` and `<|endoftext|>`, as llama.cpp and Phi-3's tokenizer do.
fn added_tokens(vocab: &Vocab, end_of_generation: &[usize], phi3: bool) -> Value {
    let tokens: Vec<Value> = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .enumerate()
        .map(|(id, (text, &ty))| (id, text, if end_of_generation.contains(&id) { TOKEN_TYPE_CONTROL } else { ty }))
        .filter(|&(_, text, ty)| {
            !text.is_empty() && (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED || ty == TOKEN_TYPE_UNKNOWN)
        })
        .map(|(id, text, ty)| {
            json!({
                "id": id,
                "content": text,
                "single_word": false,
                "lstrip": false,
                "rstrip": phi3 && !["<unk>", "<s>", "<|endoftext|>"].contains(&text.as_str()),
                "normalized": false,
                "special": ty != TOKEN_TYPE_USER_DEFINED,
            })
        })
        .collect();
    Value::Array(tokens)
}

fn split(regex: &str) -> Value {
    json!({ "type": "Split", "pattern": { "Regex": regex }, "behavior": "Isolated", "invert": false })
}

fn byte_level_bpe(gguf: &GgufFile, vocab: &Vocab, pre: &str) -> Result<Value> {
    let file = gguf.path.display().to_string();
    let regexes: Vec<&str> = match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => vec![r"\p{N}", GPT2_REGEX],
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => vec![GPT2_REGEX],
        "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe" => vec![LLAMA3_REGEX],
        "qwen2" | "stablelm2" | "megrez" | "deepseek-r1-qwen" => vec![QWEN2_REGEX],
        "default" => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", "[0-9][0-9][0-9]"],
        other => {
            return Err(HearthError::bad_file(
                &file,
                format!("pre-tokenizer `{other}` is not supported (smollm, gpt-2, llama-bpe, qwen2, default and their aliases are)"),
            ))
        }
    };
    let ignore_merges = matches!(pre, "llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe");

    let merges: Vec<Value> = gguf
        .get("tokenizer.ggml.merges")
        .and_then(GgufValue::as_array)
        .ok_or_else(|| HearthError::bad_file(&file, "missing tokenizer.ggml.merges"))?
        .iter()
        .map(|m| {
            let m = m.as_str()?;
            let (a, b) = m.split_once(' ')?;
            Some(json!([a, b]))
        })
        .collect::<Option<_>>()
        .ok_or_else(|| HearthError::bad_file(&file, "tokenizer.ggml.merges holds an entry that is not `left right`"))?;

    let mut pretokenizers: Vec<Value> = regexes.into_iter().map(split).collect();
    pretokenizers
        .push(json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false }));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "Sequence", "pretokenizers": pretokenizers },
        "post_processor": null,
        "decoder": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab_map(vocab),
            "merges": merges,
        }
    }))
}

/// SentencePiece-style BPE (`tokenizer.ggml.model = llama`): llama.cpp merges adjacent pieces whose
/// concatenation is in the vocabulary, highest score first. The same result comes from a BPE whose merge
/// list holds every split of every vocabulary piece into two vocabulary pieces, ranked by the score of
/// the merged piece. Characters missing from the vocabulary fall back to `<0xNN>` byte tokens.
fn sentencepiece_bpe(gguf: &GgufFile, vocab: &Vocab) -> Result<Value> {
    let file = gguf.path.display().to_string();
    let scores: Vec<f64> = match gguf.get("tokenizer.ggml.scores").and_then(GgufValue::as_array) {
        Some(a) if a.len() == vocab.tokens.len() => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
        _ => return Err(HearthError::bad_file(&file, "tokenizer.ggml.scores is missing or has the wrong length")),
    };
    let add_space_prefix = gguf.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let ids: HashMap<&str, usize> = vocab.tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();

    let hashes = PieceHashes::new(&vocab.tokens);

    let mut merges: Vec<(f64, usize, &str, &str)> = Vec::new();
    for (id, piece) in vocab.tokens.iter().enumerate() {
        if vocab.types[id] != 1 {
            continue;
        }
        // Looking each half up by its text would cost O(len²) per piece (a crafted 400 KB piece took
        // minutes); hashes of every prefix and suffix make it O(len), and the text lookup only
        // confirms the candidates.
        let (prefixes, suffixes) = hashes.prefix_and_suffix_hashes(piece.as_bytes());
        for (cut, _) in piece.char_indices().skip(1) {
            if !hashes.known(prefixes[cut]) || !hashes.known(suffixes[cut]) {
                continue;
            }
            let (a, b) = piece.split_at(cut);
            if ids.contains_key(a) && ids.contains_key(b) {
                merges.push((scores[id], id, a, b));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges: Vec<Value> = merges.into_iter().map(|(_, _, a, b)| json!([a, b])).collect();

    let unk = vocab.types.iter().position(|&t| t == TOKEN_TYPE_UNKNOWN).map(|i| vocab.tokens[i].clone());
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(json!({ "type": "Prepend", "prepend": "\u{2581}" }));
    }
    normalizers.push(json!({ "type": "Replace", "pattern": { "String": " " }, "content": "\u{2581}" }));
    let mut decoders = vec![
        json!({ "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " }),
        json!({ "type": "ByteFallback" }),
        json!({ "type": "Fuse" }),
    ];
    if add_space_prefix {
        decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": { "type": "Sequence", "normalizers": normalizers },
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": { "type": "Sequence", "decoders": decoders },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab_map(vocab),
            "merges": merges,
        }
    }))
}

/// BERT's WordPiece (`tokenizer.ggml.model = bert`) as the model's own `tokenizer.json` has it.
/// llama.cpp's converter rewrites the vocabulary: a piece that begins a word gets a phantom space
/// (`▁the`), a continuation loses its `##` (`##ing` → `ing`), control tokens (`[CLS]`, `[UNK]`)
/// stay as they are; the spelling is undone here. The normalizer is BERT's (`BertNormalizer`:
/// control characters dropped, CJK ideographs split off, accents stripped and text lowercased as
/// `tokenizer.ggml.normalizer.{lowercase,strip_accents}` say — llama.cpp's defaults: lowercase, and
/// strip accents when lowercasing), the pre-tokenizer BERT's (whitespace and punctuation), and
/// every text becomes `[CLS] … [SEP]` (llama.cpp adds its bos, default 101, and its separator,
/// default 102). Where llama.cpp's own WordPiece differs from the model's tokenizer (it strips
/// every combining mark, Devanagari's vowel signs and Hangul's vowel and final jamo included, where
/// BERT strips nonspacing marks only; it splits a word of more than 100 characters where BERT
/// gives `[UNK]`) this follows the model's tokenizer, which the model was trained with.
///
/// An encoder's tokenizer info is what the Transformers path gives a BERT: no bos or eos of its
/// own (the post-processor adds `[CLS]` and `[SEP]`), no stop tokens.
fn wordpiece(gguf: &GgufFile, vocab: &Vocab) -> Result<GgufTokenizer> {
    let file = gguf.path.display().to_string();
    let n = vocab.tokens.len();
    // A special token's id: the file's, else llama.cpp's default for a BERT vocabulary.
    let special = |key: &str, default: u64| -> Result<u32> {
        let id = gguf.get_u64(key).unwrap_or(default);
        u32::try_from(id).ok().filter(|&id| (id as usize) < n).ok_or_else(|| {
            HearthError::bad_file(&file, format!("`{key}` = {id} is not a token of the {n} in the vocabulary"))
        })
    };
    // llama.cpp opens a BERT text with its bos; a file with only a CLS id means the same token.
    let cls_key = match gguf.get_u64("tokenizer.ggml.bos_token_id") {
        None if gguf.get_u64("tokenizer.ggml.cls_token_id").is_some() => "tokenizer.ggml.cls_token_id",
        _ => "tokenizer.ggml.bos_token_id",
    };
    let cls = special(cls_key, 101)?;
    let sep = special("tokenizer.ggml.seperator_token_id", 102)?;
    let unk = special("tokenizer.ggml.unknown_token_id", 100)?;
    let pieces: Vec<String> = vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .map(|(text, &ty)| match text.strip_prefix('\u{2581}') {
            _ if ty == TOKEN_TYPE_CONTROL => text.clone(),
            Some(word) => word.to_string(),
            None => format!("##{text}"),
        })
        .collect();
    let piece = |id: u32| pieces[id as usize].clone();
    let lowercase = gguf.get_bool("tokenizer.ggml.normalizer.lowercase").unwrap_or(true);
    let strip_accents = gguf.get_bool("tokenizer.ggml.normalizer.strip_accents").unwrap_or(lowercase);
    let mut map = serde_json::Map::with_capacity(n);
    for (id, p) in pieces.iter().enumerate() {
        // A repeated piece keeps its first id, as llama.cpp's text-to-token map does.
        map.entry(p.clone()).or_insert_with(|| json!(id));
    }
    let added: Vec<Value> = pieces
        .iter()
        .zip(&vocab.types)
        .enumerate()
        .filter(|&(_, (p, &ty))| ty == TOKEN_TYPE_CONTROL && !p.is_empty())
        .map(|(id, (p, _))| {
            json!({
                "id": id, "content": p, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true,
            })
        })
        .collect();
    let (cls_text, sep_text) = (piece(cls), piece(sep));
    let mut specials = serde_json::Map::new();
    for (text, id) in [(&cls_text, cls), (&sep_text, sep)] {
        specials.insert(text.clone(), json!({ "id": text, "ids": [id], "tokens": [text] }));
    }
    let special_token = |text: &str, type_id: u32| json!({ "SpecialToken": { "id": text, "type_id": type_id } });
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": true,
            "handle_chinese_chars": true,
            "strip_accents": strip_accents,
            "lowercase": lowercase,
        },
        "pre_tokenizer": { "type": "BertPreTokenizer" },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special_token(&cls_text, 0), { "Sequence": { "id": "A", "type_id": 0 } }, special_token(&sep_text, 0)],
            "pair": [
                special_token(&cls_text, 0),
                { "Sequence": { "id": "A", "type_id": 0 } },
                special_token(&sep_text, 0),
                { "Sequence": { "id": "B", "type_id": 1 } },
                special_token(&sep_text, 1),
            ],
            "special_tokens": specials,
        },
        "decoder": { "type": "WordPiece", "prefix": "##", "cleanup": true },
        "model": {
            "type": "WordPiece",
            "unk_token": piece(unk),
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": map,
        },
    });
    let json = serde_json::to_string(&tokenizer)
        .map_err(|e| HearthError::Tokenizer(format!("cannot serialize tokenizer.json: {e}")))?;
    tokenizers::Tokenizer::from_bytes(json.as_bytes())
        .map_err(|e| HearthError::Tokenizer(format!("tokenizer built from {file} does not load: {e}")))?;
    let pad_id = gguf
        .get_u64("tokenizer.ggml.padding_token_id")
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&id| (id as usize) < n);
    Ok(GgufTokenizer {
        json,
        bos_id: None,
        eos_id: None,
        stop_ids: Vec::new(),
        pad_id,
        add_bos: false,
        chat_template: gguf.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

/// Polynomial hashes of byte strings modulo the prime 2^61 − 1: after O(len) work on a piece, whether
/// any of its prefixes or suffixes hashes like a vocabulary token is an O(1) question.
struct PieceHashes {
    tokens: std::collections::HashSet<u64>,
}

impl PieceHashes {
    const MODULUS: u64 = (1 << 61) - 1;
    const BASE: u64 = 0x5bd1_e995_3c6e_f372 % Self::MODULUS;

    fn new(tokens: &[String]) -> Self {
        PieceHashes { tokens: tokens.iter().map(|t| Self::hash(t.as_bytes())).collect() }
    }

    fn mul(a: u64, b: u64) -> u64 {
        ((a as u128 * b as u128) % Self::MODULUS as u128) as u64
    }

    fn hash(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0, |h, &b| (Self::mul(h, Self::BASE) + b as u64 + 1) % Self::MODULUS)
    }

    fn known(&self, hash: u64) -> bool {
        self.tokens.contains(&hash)
    }

    /// `(p, s)` with `p[i]` the hash of `bytes[..i]` and `s[i]` the hash of `bytes[i..]`.
    fn prefix_and_suffix_hashes(&self, bytes: &[u8]) -> (Vec<u64>, Vec<u64>) {
        let n = bytes.len();
        let mut prefix = Vec::with_capacity(n + 1);
        let mut power = Vec::with_capacity(n + 1);
        prefix.push(0);
        power.push(1);
        for (i, &b) in bytes.iter().enumerate() {
            prefix.push((Self::mul(prefix[i], Self::BASE) + b as u64 + 1) % Self::MODULUS);
            power.push(Self::mul(power[i], Self::BASE));
        }
        // hash(bytes[i..]) = hash(bytes) − hash(bytes[..i])·BASE^(n−i)
        let suffix =
            (0..=n).map(|i| (prefix[n] + Self::MODULUS - Self::mul(prefix[i], power[n - i])) % Self::MODULUS).collect();
        (prefix, suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::PieceHashes;

    #[test]
    fn prefix_and_suffix_hashes_equal_the_hashes_of_the_parts() {
        let hashes = PieceHashes::new(&[]);
        let piece = "▁hello wörld".as_bytes();
        let (prefix, suffix) = hashes.prefix_and_suffix_hashes(piece);
        for i in 0..=piece.len() {
            assert_eq!(prefix[i], PieceHashes::hash(&piece[..i]), "prefix {i}");
            assert_eq!(suffix[i], PieceHashes::hash(&piece[i..]), "suffix {i}");
        }
    }
}
