// DeepSeek-V4 conversation format: renders chat messages into the prompt text the model was
// trained on (the format of DeepSeek's encoding_dsv4 reference: BOS, <｜User｜>/<｜Assistant｜>
// turns, <think>/</think>, DSML tool calls, <tool_result> blocks, latest-reminder and task tokens).
//
// The renderer records which byte ranges of the text the template itself wrote. Only there may
// special-token text become a special token; text taken from messages (content, reasoning, tool
// names, arguments and schemas) is always encoded as plain text, so a user cannot inject control
// tokens by typing them.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/pretokenizer.h"

namespace dsv4 {

struct ChatToolCall {
  std::string id;  // optional; orders the tool results that answer this call
  std::string name;
  std::string arguments;  // JSON text of an object, as in OpenAI's API
};

// One message, with the fields of the OpenAI chat format that the V4 format uses.
struct ChatMessage {
  std::string role;  // system, user, assistant, tool, developer or latest_reminder
  std::string content;
  std::string reasoning_content;         // assistant
  std::vector<ChatToolCall> tool_calls;  // assistant
  std::string tool_call_id;              // tool: the id of the call it answers
  std::string tools_json;                // system/developer: OpenAI-format tools list (JSON text), "" = none
  std::string response_format_json;      // system/developer: a JSON schema object (JSON text), "" = none
  std::string task;                      // "" or action, query, authority, domain, title, read_url
  bool wo_eos = false;                   // assistant: leave the turn open (no end-of-sentence token)
};

struct ChatOptions {
  bool thinking = false;         // "thinking" mode (open <think> after the last user turn) vs "chat"
  bool drop_thinking = true;     // drop reasoning of turns before the last user message (no tools only)
  std::string reasoning_effort;  // "", "high" or "max" ("max" prepends the maximum-effort preamble)
  bool add_bos = true;
};

// Rendered prompt text, and the spans of it that the template wrote (sorted, disjoint).
struct ChatPrompt {
  std::string text;
  std::vector<TextSpan> control;
};

// Renders `messages`. Tool messages are merged into user turns as <tool_result> blocks ordered by
// the preceding assistant's calls. Errors: empty `messages`, an unknown role, task or reasoning
// effort, a developer message without content, tools/response-format/arguments that are not the
// expected JSON. Text is sanitized to valid UTF-8 (see utf8.h) as it is copied.
absl::StatusOr<ChatPrompt> RenderDsv4Chat(std::span<const ChatMessage> messages, const ChatOptions& options);

// Parses OpenAI-style JSON: a list of message objects, or an object {"messages": [...], "tools":
// [...]} whose tools are attached to the first message. Content may be a string, null, or a list of
// {"type": "text", "text": ...} parts (joined with blank lines). Tool-call arguments given as a JSON
// object instead of a string are serialized first.
absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(std::string_view json);

// `value` (JSON text) re-serialized as Python's json.dumps(ensure_ascii=False) writes it: ", " and
// ": " separators, keys in their original order. The V4 format embeds JSON in this form.
absl::StatusOr<std::string> PythonJsonDumps(std::string_view json_text);

}  // namespace dsv4
