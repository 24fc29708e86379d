//! Tool calls in OpenAI's shape (`tools`, `tool_choice`, `message.tool_calls`).
//!
//! A call is written the way Hermes-style models (Qwen 2.5/3, Hermes, SmolLM3) were trained to
//! write one, and the only way Hearth writes one:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! [`Tools::grammar`] turns the request into a grammar: with `tool_choice` `"required"` or a named
//! function the output is one or more such calls (the name one of the allowed functions, the
//! arguments valid against its schema); with `"auto"` the model may answer in text, and once it
//! writes `<tool_call>` the rest is constrained. [`ToolCallParser`] splits the generated text into
//! content and calls as it streams, so streamed deltas and the final message are the same parse.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::constrain::{bounded_whitespace, ResponseFormat};
use crate::error::{HearthError, Result};

/// What opens a call in the generated text.
pub const CALL_OPEN: &str = "<tool_call>";
/// What closes it.
pub const CALL_CLOSE: &str = "</tool_call>";
/// The text between `<tool_call>` and a function's name.
const NAME_OPEN: &str = "\n{\"name\": \"";
/// The text between the name and the arguments.
const ARGUMENTS_OPEN: &str = "\", \"arguments\": ";
/// The text after the arguments.
const CALL_END: &str = "}\n</tool_call>";
/// Between two calls of one message.
const NEXT_CALL: &str = "\n<tool_call>";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// The only kind OpenAI's chat API has.
    #[default]
    Function,
}

/// One tool the model may call: OpenAI's `{type: "function", function: {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of the arguments object; none means no arguments (`{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Accepted; the arguments always follow the schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ChoiceRepr", into = "ChoiceRepr")]
pub enum ToolChoice {
    /// Text or calls, as the model decides.
    #[default]
    Auto,
    /// Text only (the tools are still shown to the model).
    None,
    /// At least one call.
    Required,
    /// A call of this function.
    Function(String),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ChoiceRepr {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: ToolKind,
        function: NamedFunction,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedFunction {
    name: String,
}

impl TryFrom<ChoiceRepr> for ToolChoice {
    type Error = String;
    fn try_from(repr: ChoiceRepr) -> std::result::Result<Self, String> {
        match repr {
            ChoiceRepr::Mode(mode) => match mode.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Required),
                _ => Err(format!(
                    "tool_choice must be \"auto\", \"none\", \"required\" or {{type: \"function\", function: {{name}}}}, got {mode:?}"
                )),
            },
            ChoiceRepr::Named { function, .. } => Ok(ToolChoice::Function(function.name)),
        }
    }
}

impl From<ToolChoice> for ChoiceRepr {
    fn from(choice: ToolChoice) -> Self {
        match choice {
            ToolChoice::Auto => ChoiceRepr::Mode("auto".into()),
            ToolChoice::None => ChoiceRepr::Mode("none".into()),
            ToolChoice::Required => ChoiceRepr::Mode("required".into()),
            ToolChoice::Function(name) => {
                ChoiceRepr::Named { kind: ToolKind::Function, function: NamedFunction { name } }
            }
        }
    }
}

/// A call in a message: OpenAI's `{id, type: "function", function: {name, arguments}}`, the
/// arguments a JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// The tools of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// Whether one message may hold several calls (OpenAI's `parallel_tool_calls`, default true).
    pub parallel_tool_calls: bool,
}

impl Default for Tools {
    fn default() -> Self {
        Tools { tools: Vec::new(), tool_choice: ToolChoice::Auto, parallel_tool_calls: true }
    }
}

/// How many tools one request may carry (OpenAI allows 128).
pub const MAX_TOOLS: usize = 128;

impl Tools {
    /// Whether the output may hold calls (tools given, and `tool_choice` is not `"none"`).
    pub fn may_call(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }

    /// Names as OpenAI takes them (letters, digits, `_` and `-`, at most 64), each once; a named
    /// or required choice needs a tool to call.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(HearthError::InvalidArgument(m));
        if self.tools.len() > MAX_TOOLS {
            return bad(format!("{} tools given; at most {MAX_TOOLS}", self.tools.len()));
        }
        for (i, tool) in self.tools.iter().enumerate() {
            let name = &tool.function.name;
            let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
                return bad(format!(
                    "tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-', got {name:?}"
                ));
            }
            if self.tools[..i].iter().any(|t| &t.function.name == name) {
                return bad(format!("tools[{i}]: two tools are named {name:?}"));
            }
            if let Some(p) = &tool.function.parameters {
                if !p.is_object() {
                    return bad(format!("tools[{i}].function.parameters must be a JSON Schema object"));
                }
            }
        }
        match &self.tool_choice {
            ToolChoice::Required if self.tools.is_empty() => bad("tool_choice \"required\" needs tools".into()),
            ToolChoice::Function(name) if !self.tools.iter().any(|t| &t.function.name == name) => {
                bad(format!("tool_choice names {name:?}, which is not among the tools"))
            }
            _ => Ok(()),
        }
    }

    /// The grammar the output follows (Lark, as llguidance takes it), or None when no call may
    /// be made. `text` is what an answer without a call must be (free text or JSON; a regular
    /// expression or grammar cannot be combined with calls).
    pub fn grammar(&self, text: &ResponseFormat) -> Result<Option<String>> {
        self.validate()?;
        if !self.may_call() {
            return Ok(None);
        }
        let calls = if self.parallel_tool_calls { "call (NEXT call)*" } else { "call" };
        let mut g = String::from("%llguidance {}\n");
        let lit = |s: &str| serde_json::to_string(s).unwrap_or_default();
        match (&self.tool_choice, text) {
            (ToolChoice::Auto, ResponseFormat::Text) => {
                // Any text, or text up to the first `<tool_call>` and then calls: the lazy
                // lexeme ends at the marker, and from there only the calls' grammar goes on.
                let _ = writeln!(g, "start: PLAIN | opening {calls}");
                let _ = writeln!(g, "PLAIN: /(?s:.*)/");
                let _ = writeln!(g, "opening[lazy]: /(?s:.*){CALL_OPEN}/");
            }
            (ToolChoice::Auto, ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. }) => {
                let schema = match text {
                    ResponseFormat::JsonSchema { json_schema } => json_schema.schema.clone(),
                    _ => json!({ "type": "object" }),
                };
                let _ = writeln!(g, "start: answer | {} {calls}", lit(CALL_OPEN));
                let _ = writeln!(g, "answer: %json {}", bounded_whitespace(schema));
            }
            (ToolChoice::Auto, _) => {
                return Err(HearthError::InvalidArgument(
                    "a regex or grammar response_format cannot be combined with tools (use tool_choice \"none\")"
                        .into(),
                ))
            }
            _ => {
                let _ = writeln!(g, "start: {} {calls}", lit(CALL_OPEN));
            }
        }
        let _ = writeln!(g, "NEXT: {}", lit(NEXT_CALL));
        let allowed: Vec<&Tool> = match &self.tool_choice {
            ToolChoice::Function(name) => self.tools.iter().filter(|t| &t.function.name == name).collect(),
            _ => self.tools.iter().collect(),
        };
        let names: Vec<String> = (0..allowed.len()).map(|i| format!("f{i}")).collect();
        let _ = writeln!(g, "call: {} ({}) {}", lit(NAME_OPEN), names.join(" | "), lit(CALL_END));
        for (i, tool) in allowed.iter().enumerate() {
            let name = &tool.function.name;
            let _ = writeln!(g, "f{i}: {} a{i}", lit(&format!("{name}{ARGUMENTS_OPEN}")));
            let _ = writeln!(g, "a{i}: %json {}", bounded_whitespace(arguments_schema(tool)));
        }
        Ok(Some(g))
    }

    /// The tools as chat templates take them (Hugging Face's `tools` variable).
    pub fn template_value(&self) -> Vec<Value> {
        self.tools.iter().map(|t| serde_json::to_value(t).unwrap_or(Value::Null)).collect()
    }

    /// For a chat template without a `tools` variable: the system prompt that lists the tools
    /// and shows how to call one (the Hermes convention the grammar enforces).
    pub fn system_prompt(&self) -> String {
        let mut s = String::from(
            "You may call functions to help with the user's request. The functions are listed in <tools></tools> as JSON:\n<tools>\n",
        );
        for t in &self.tools {
            let _ = writeln!(s, "{}", serde_json::to_string(t).unwrap_or_default());
        }
        s.push_str("</tools>\nTo call a function, reply with its name and arguments as JSON inside <tool_call></tool_call> tags:\n");
        s.push_str(&call_text("function_name", "{\"argument\": \"value\"}"));
        s
    }
}

/// The arguments' schema: the tool's, or an object without members.
fn arguments_schema(tool: &Tool) -> Value {
    tool.function
        .parameters
        .clone()
        .unwrap_or_else(|| json!({ "type": "object", "properties": {}, "additionalProperties": false }))
}

/// A call as the model writes it (and as a chat template without tool support shows past calls,
/// so the history is the text that was generated and its cache is reused).
pub fn call_text(name: &str, arguments: &str) -> String {
    format!("{CALL_OPEN}{NAME_OPEN}{name}{ARGUMENTS_OPEN}{arguments}{CALL_END}")
}

/// What the streamed text holds, in order: content, then calls (each opened by its name, then
/// its arguments in pieces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolDelta {
    Content { text: String },
    Call { index: usize, name: String },
    Arguments { index: usize, text: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Content,
    /// After `<tool_call>`, before the arguments.
    Name,
    Arguments,
    /// After a call's `</tool_call>`.
    Between,
}

/// Splits generated text into [`ToolDelta`]s as it streams, holding back only what may be the
/// start of a marker.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    part: Part,
    pending: String,
    calls: usize,
}

impl Default for ToolCallParser {
    fn default() -> Self {
        ToolCallParser { part: Part::Content, pending: String::new(), calls: 0 }
    }
}

impl ToolCallParser {
    pub fn push(&mut self, text: &str) -> Vec<ToolDelta> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            let progressed = match self.part {
                Part::Content => self.content(&mut out, CALL_OPEN, Part::Name),
                Part::Name => self.name(&mut out),
                Part::Arguments => self.arguments(&mut out),
                Part::Between => self.between(&mut out),
            };
            if !progressed {
                return out;
            }
        }
    }

    /// At the end of the text: content still held back. A call cut short (by `max_tokens`) keeps
    /// the arguments it streamed; one cut before its name is dropped.
    pub fn finish(&mut self) -> Vec<ToolDelta> {
        let rest = std::mem::take(&mut self.pending);
        match self.part {
            Part::Content | Part::Between if !rest.is_empty() => vec![ToolDelta::Content { text: rest }],
            Part::Arguments if !rest.is_empty() => vec![ToolDelta::Arguments { index: self.calls, text: rest }],
            _ => Vec::new(),
        }
    }

    /// Calls whose `</tool_call>` has been seen.
    pub fn complete_calls(&self) -> usize {
        self.calls
    }

    /// Emit content up to `marker`, then go to `next`; false when waiting for more text.
    fn content(&mut self, out: &mut Vec<ToolDelta>, marker: &str, next: Part) -> bool {
        if let Some(at) = self.pending.find(marker) {
            push_content(out, &self.pending[..at]);
            self.pending.drain(..at + marker.len());
            self.part = next;
            return true;
        }
        let keep = held_prefix(&self.pending, marker);
        let emit = self.pending.len() - keep;
        push_content(out, &self.pending[..emit]);
        self.pending.drain(..emit);
        false
    }

    fn name(&mut self, out: &mut Vec<ToolDelta>) -> bool {
        let bytes = self.pending.as_bytes();
        let n = bytes.len().min(NAME_OPEN.len());
        let opens = bytes[..n] == NAME_OPEN.as_bytes()[..n];
        match self.pending.find(ARGUMENTS_OPEN) {
            Some(end) if opens && end >= NAME_OPEN.len() => {
                let name = self.pending[NAME_OPEN.len()..end].to_string();
                out.push(ToolDelta::Call { index: self.calls, name });
                self.pending.drain(..end + ARGUMENTS_OPEN.len());
                self.part = Part::Arguments;
                true
            }
            // A name is at most 64 characters: wait for the rest of it.
            None if opens && bytes.len() <= NAME_OPEN.len() + 64 => false,
            // Not what the grammar writes (text without one): the marker was content after all.
            _ => {
                push_content(out, CALL_OPEN);
                self.part = Part::Content;
                true
            }
        }
    }

    fn arguments(&mut self, out: &mut Vec<ToolDelta>) -> bool {
        // JSON strings cannot hold a raw line break, so `}\n</tool_call>` never occurs inside the
        // arguments: its first occurrence ends them.
        let (emit, done) = match self.pending.find(CALL_END) {
            Some(at) => (at, true),
            None => (self.pending.len() - held_prefix(&self.pending, CALL_END), false),
        };
        if emit > 0 {
            out.push(ToolDelta::Arguments { index: self.calls, text: self.pending[..emit].to_string() });
        }
        if done {
            self.pending.drain(..emit + CALL_END.len());
            self.calls += 1;
            self.part = Part::Between;
        } else {
            self.pending.drain(..emit);
        }
        done
    }

    fn between(&mut self, out: &mut Vec<ToolDelta>) -> bool {
        if let Some(rest) = self.pending.strip_prefix(NEXT_CALL) {
            self.pending = rest.to_string();
            self.part = Part::Name;
            return true;
        }
        if NEXT_CALL.starts_with(self.pending.as_str()) {
            return false;
        }
        // Text after the calls (the grammar allows none): content.
        push_content(out, &std::mem::take(&mut self.pending));
        false
    }
}

fn push_content(out: &mut Vec<ToolDelta>, text: &str) {
    if !text.is_empty() {
        out.push(ToolDelta::Content { text: text.to_string() });
    }
}

/// Length of the longest tail of `text` that is a proper prefix of `marker` (ASCII, so the cut is
/// a character boundary).
fn held_prefix(text: &str, marker: &str) -> usize {
    (1..marker.len()).rev().find(|&n| text.ends_with(&marker[..n])).unwrap_or(0)
}

/// A whole generated text split into its content and calls, as [`ToolCallParser`] streams it
/// (`complete`: how many calls were closed).
pub struct ParsedOutput {
    pub content: String,
    pub calls: Vec<FunctionCall>,
    pub complete: usize,
}

impl ParsedOutput {
    /// Collect deltas (all of one generation, in order).
    pub fn collect(deltas: impl IntoIterator<Item = ToolDelta>, complete: usize) -> Self {
        let mut out = ParsedOutput { content: String::new(), calls: Vec::new(), complete };
        for d in deltas {
            match d {
                ToolDelta::Content { text } => out.content.push_str(&text),
                ToolDelta::Call { name, .. } => out.calls.push(FunctionCall { name, arguments: String::new() }),
                ToolDelta::Arguments { text, .. } => {
                    if let Some(c) = out.calls.last_mut() {
                        c.arguments.push_str(&text);
                    }
                }
            }
        }
        out
    }

    pub fn parse(text: &str) -> Self {
        let mut parser = ToolCallParser::default();
        let mut deltas = parser.push(text);
        deltas.extend(parser.finish());
        Self::collect(deltas, parser.complete_calls())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tools {
        serde_json::from_value(json!({
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "required"
        }))
        .unwrap()
    }

    #[test]
    fn tool_choice_takes_openai_shapes() {
        let c: ToolChoice = serde_json::from_value(json!({"type": "function", "function": {"name": "f"}})).unwrap();
        assert_eq!(c, ToolChoice::Function("f".into()));
        assert_eq!(serde_json::from_value::<ToolChoice>(json!("none")).unwrap(), ToolChoice::None);
        assert!(serde_json::from_value::<ToolChoice>(json!("sometimes")).is_err());
        assert_eq!(serde_json::to_value(ToolChoice::Function("f".into())).unwrap()["function"]["name"], "f");
    }

    #[test]
    fn bad_tools_are_rejected_by_name() {
        let mut t = weather();
        t.tools[0].function.name = "get weather".into();
        assert!(t.validate().unwrap_err().to_string().contains("tools[0].function.name"));
        let mut t = weather();
        t.tool_choice = ToolChoice::Function("nope".into());
        assert!(t.validate().unwrap_err().to_string().contains("\"nope\""));
        let mut t = weather();
        t.tools.push(t.tools[0].clone());
        assert!(t.validate().unwrap_err().to_string().contains("two tools"));
    }

    #[test]
    fn streamed_pieces_split_into_content_and_calls() {
        let text = format!(
            "Let me check.{}\n{}",
            call_text("get_weather", "{\"city\": \"Paris\"}"),
            call_text("get_time", "{}")
        );
        let whole = ParsedOutput::parse(&text);
        assert_eq!(whole.content, "Let me check.");
        assert_eq!(
            whole.calls,
            vec![
                FunctionCall { name: "get_weather".into(), arguments: "{\"city\": \"Paris\"}".into() },
                FunctionCall { name: "get_time".into(), arguments: "{}".into() }
            ]
        );
        assert_eq!(whole.complete, 2);
        // Every split point gives the same result, and no delta holds marker text.
        for cut in 1..text.len() {
            let mut p = ToolCallParser::default();
            let mut d = p.push(&text[..cut]);
            d.extend(p.push(&text[cut..]));
            d.extend(p.finish());
            for delta in &d {
                if let ToolDelta::Content { text } | ToolDelta::Arguments { text, .. } = delta {
                    assert!(!text.contains('<'), "cut {cut}: {delta:?}");
                }
            }
            let parsed = ParsedOutput::collect(d, p.complete_calls());
            assert_eq!((parsed.content, parsed.calls), (whole.content.clone(), whole.calls.clone()), "cut {cut}");
        }
    }

    #[test]
    fn text_that_only_looks_like_a_call_stays_content() {
        let p = ParsedOutput::parse("a <tool_call> b <tool");
        assert_eq!((p.content.as_str(), p.calls.len()), ("a <tool_call> b <tool", 0));
    }
}
