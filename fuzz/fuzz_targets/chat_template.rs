//! A chat template (the part before the cut) rendered over a chat (the part after it, JSON
//! messages; a fixed chat when it does not parse) within the renderer's limits: a render ends, in
//! its step, output, memory and time budgets, with the text or a `ChatTemplate` error.
#![no_main]

use hearth_core::chat::{ChatMessage, ChatTemplate};
use hearth_core::tools::Tools;
use libfuzzer_sys::fuzz_target;

/// As in the CLI and the wasm module: compiles and renders run on their memory budget.
#[global_allocator]
static ALLOCATOR: hearth_core::budget::BudgetedAlloc<std::alloc::System> =
    hearth_core::budget::BudgetedAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    let (source, chat) = hearth_fuzz::split(data);
    let Ok(source) = std::str::from_utf8(source) else { return };
    let messages: Vec<ChatMessage> = serde_json::from_slice(chat).unwrap_or_else(|_| {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hello"),
            ChatMessage::new("assistant", "Hi!"),
        ]
    });
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else { return };
    for add_generation_prompt in [false, true] {
        let _ = template.render(&messages, &Tools::default(), add_generation_prompt);
    }
});
