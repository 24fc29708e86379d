//! A model package opened for generation: manifest, tokenizer and chat template together.

use std::path::Path;
use std::sync::OnceLock;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::{HearthError, Result};
use crate::manifest::TokenizerInfo;
use crate::package::Package;
use crate::tokenizer::Tokenizer;
use crate::tools::Tools;

pub struct Model {
    pub package: Package,
    pub prompter: Prompter,
}

impl Model {
    /// Open a package directory, checking every file against the manifest's hashes.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let package = Package::open(dir)?;
        package.verify()?;
        let info = package.manifest.tokenizer.clone();
        let prompter = Prompter::new(&package.manifest.name, &package.read_file(&info.file)?, info)?;
        Ok(Model { package, prompter })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.prompter.tokenizer
    }

    pub fn encode_text(&mut self, text: &str) -> Result<Vec<u32>> {
        self.prompter.encode_text(text)
    }

    pub fn encode_chat(&mut self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.prompter.encode_chat(messages)
    }

    pub fn encode_chat_with_tools(&mut self, messages: &[ChatMessage], tools: &Tools) -> Result<Vec<u32>> {
        self.prompter.encode_chat_with_tools(messages, tools)
    }
}

/// A model's tokenizer and chat template: prompts (plain text or chat messages) to token ids.
pub struct Prompter {
    pub tokenizer: Tokenizer,
    model_name: String,
    /// The template's source and the bos and eos texts it is given, compiled on first chat use:
    /// it only matters there, so plain prompts work with a broken template, and a template that
    /// passes its budget while compiling (crate::budget) does so inside a chat call, where the
    /// browser's engine turns a wasm trap into `EngineDisposedError`, not inside a load.
    chat_source: Option<(String, String, String)>,
    /// `Err` holds why the model's template cannot be used.
    chat_template: OnceLock<std::result::Result<ChatTemplate, String>>,
    bos_text: String,
}

impl Prompter {
    /// From the package's `tokenizer.json` bytes and the manifest's tokenizer section.
    pub fn new(model_name: &str, tokenizer_json: &[u8], info: TokenizerInfo) -> Result<Self> {
        let tokenizer = Tokenizer::from_json(tokenizer_json, info.clone())?;
        let text_of = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id)).unwrap_or_default();
        let bos_text = text_of(info.bos_id);
        let eos_text = text_of(info.eos_id);
        let chat_source = info.chat_template.map(|src| (src, bos_text.clone(), eos_text));
        Ok(Prompter {
            tokenizer,
            model_name: model_name.to_string(),
            chat_source,
            chat_template: OnceLock::new(),
            bos_text,
        })
    }

    /// Whether the model has a chat template (messages can be used); without one, only plain prompts.
    pub fn has_chat_template(&self) -> bool {
        self.chat_source.is_some()
    }

    /// Token ids for a plain-text prompt (special-token texts are tokenized as text).
    pub fn encode_text(&mut self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, false, true)
    }

    /// Render `messages` with the model's chat template (generation prompt added) and tokenize the
    /// result, with the template's special tokens as specials.
    pub fn encode_chat(&mut self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode_chat_with_tools(messages, &Tools::default())
    }

    /// [`encode_chat`](Self::encode_chat) with functions the model may call shown to it.
    pub fn encode_chat_with_tools(&mut self, messages: &[ChatMessage], tools: &Tools) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, tools)?;
        // A template that writes the bos token itself must not get a second one.
        let add_bos = self.bos_text.is_empty() || !text.starts_with(&self.bos_text);
        self.tokenizer.encode(&text, true, add_bos)
    }

    pub fn render_chat(&self, messages: &[ChatMessage], tools: &Tools) -> Result<String> {
        let template = self.chat_source.as_ref().map(|(src, bos, eos)| {
            self.chat_template.get_or_init(|| {
                ChatTemplate::new(src, bos, eos).map_err(|e| match e {
                    HearthError::ChatTemplate(why) => why,
                    other => other.to_string(),
                })
            })
        });
        match template {
            Some(Ok(template)) => template.render(messages, tools, true),
            Some(Err(why)) => Err(HearthError::ChatTemplate(format!(
                "model `{}`'s chat template cannot be used ({why}); use a plain prompt",
                self.model_name
            ))),
            None => Err(HearthError::ChatTemplate(format!(
                "model `{}` has no chat template; use a plain prompt",
                self.model_name
            ))),
        }
    }
}
