#include "runtime/tokenizer/chat_format.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "runtime/tokenizer/utf8.h"

namespace dsv4 {
namespace {

using Json = nlohmann::ordered_json;

// ---- the format's fixed strings ---------------------------------------------------------------

constexpr char kBos[] = "<｜begin▁of▁sentence｜>";
constexpr char kEos[] = "<｜end▁of▁sentence｜>";
constexpr char kUser[] = "<｜User｜>";
constexpr char kAssistant[] = "<｜Assistant｜>";
constexpr char kLatestReminder[] = "<｜latest_reminder｜>";
constexpr char kThinkStart[] = "<think>";
constexpr char kThinkEnd[] = "</think>";
constexpr char kDsml[] = "｜DSML｜";

constexpr char kReasoningEffortMax[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

constexpr char kResponseFormatHeader[] =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

// The tools section before and after the tool schemas.
std::string ToolsHeader() {
  const std::string d(kDsml);
  return absl::StrCat(
      "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by "
      "writing a \"<",
      d, "tool_calls>\" block like the following:\n\n<", d, "tool_calls>\n<", d, "invoke name=\"$TOOL_NAME\">\n<", d,
      "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</", d, "parameter>\n...\n</", d,
      "invoke>\n<", d, "invoke name=\"$TOOL_NAME2\">\n...\n</", d, "invoke>\n</", d,
      "tool_calls>\n\nString parameters should be specified as is and set `string=\"true\"`. For all other types "
      "(numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
      "If thinking_mode is enabled (triggered by ",
      kThinkStart, "), you MUST output your complete reasoning inside ", kThinkStart, "...", kThinkEnd,
      " BEFORE any tool calls or final response.\n\nOtherwise, output directly after ", kThinkEnd,
      " with tool calls or final response.\n\n### Available Tool Schemas\n\n");
}
constexpr char kToolsFooter[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";

const std::map<std::string, std::string_view>& TaskTokens() {
  static const auto* const kTasks = new std::map<std::string, std::string_view>{
      {"action", "<｜action｜>"}, {"query", "<｜query｜>"}, {"authority", "<｜authority｜>"},
      {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"}, {"read_url", "<｜read_url｜>"}};
  return *kTasks;
}

// ---- Python-compatible JSON output ------------------------------------------------------------

// repr() of a Python float: shortest round-trip digits, positional for decimal exponents in
// [-4, 16), else d.ddde+XX.
std::string PythonFloat(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  std::string mantissa = sci.substr(0, e);
  const int exp10 = std::stoi(sci.substr(e + 1));
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits.push_back(c);
  std::string out = negative ? "-" : "";
  if (exp10 < -4 || exp10 >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    return out + ebuf;
  }
  if (exp10 < 0) return out + "0." + std::string(-exp10 - 1, '0') + digits;
  const size_t int_digits = static_cast<size_t>(exp10) + 1;
  if (digits.size() <= int_digits) return out + digits + std::string(int_digits - digits.size(), '0') + ".0";
  return out + digits.substr(0, int_digits) + "." + digits.substr(int_digits);
}

void AppendPythonString(const std::string& s, std::string& out) {
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned char>(c));
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

void AppendPythonJson(const Json& j, std::string& out) {
  switch (j.type()) {
    case Json::value_t::null:
      out += "null";
      break;
    case Json::value_t::boolean:
      out += j.get<bool>() ? "true" : "false";
      break;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      out += j.dump();
      break;
    case Json::value_t::number_float:
      out += PythonFloat(j.get<double>());
      break;
    case Json::value_t::string:
      AppendPythonString(j.get<std::string>(), out);
      break;
    case Json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : j) {
        if (!first) out += ", ";
        first = false;
        AppendPythonJson(e, out);
      }
      out.push_back(']');
      break;
    }
    case Json::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (const auto& [k, v] : j.items()) {
        if (!first) out += ", ";
        first = false;
        AppendPythonString(k, out);
        out += ": ";
        AppendPythonJson(v, out);
      }
      out.push_back('}');
      break;
    }
    default:
      out += "null";  // binary and discarded values never come from parsing text
  }
}

std::string PyDumps(const Json& j) {
  std::string out;
  AppendPythonJson(j, out);
  return out;
}

absl::StatusOr<Json> ParseJson(std::string_view text, const std::string& what) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(what, ": not valid JSON"));
  return j;
}

// ---- the renderer -----------------------------------------------------------------------------

// Appends text and remembers which of it the template wrote.
class PromptBuilder {
 public:
  void Control(std::string_view s) {
    if (s.empty()) return;
    const size_t begin = prompt_.text.size();
    prompt_.text.append(s);
    if (!prompt_.control.empty() && prompt_.control.back().end == begin)
      prompt_.control.back().end = prompt_.text.size();
    else
      prompt_.control.push_back({begin, prompt_.text.size()});
  }
  void Text(std::string_view s) { prompt_.text += utf8::Sanitize(s); }
  ChatPrompt Take() { return std::move(prompt_); }

 private:
  ChatPrompt prompt_;
};

// A piece of a user turn after tool messages were merged in.
struct Block {
  bool tool_result = false;
  std::string text;
  std::string tool_use_id;
};

// A message as the renderer sees it: the input plus the blocks of a (merged) user turn.
struct Turn {
  ChatMessage msg;
  bool has_blocks = false;
  std::vector<Block> blocks;
};

bool IsUserLike(const std::string& role) { return role == "user" || role == "developer"; }

absl::Status Validate(std::span<const ChatMessage> messages, const ChatOptions& options) {
  if (messages.empty()) return absl::InvalidArgumentError("chat: no messages");
  if (!options.reasoning_effort.empty() && options.reasoning_effort != "max" && options.reasoning_effort != "high")
    return absl::InvalidArgumentError(absl::StrCat("chat: unknown reasoning effort '", options.reasoning_effort, "'"));
  static const char* const kRoles[] = {"system", "user", "assistant", "tool", "developer", "latest_reminder"};
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (std::find(std::begin(kRoles), std::end(kRoles), m.role) == std::end(kRoles))
      return absl::InvalidArgumentError(absl::StrCat("chat: message ", i, " has unknown role '", m.role, "'"));
    if (!m.task.empty() && !TaskTokens().count(m.task))
      return absl::InvalidArgumentError(absl::StrCat("chat: message ", i, " has unknown task '", m.task, "'"));
    if (m.role == "developer" && m.content.empty())
      return absl::InvalidArgumentError(absl::StrCat("chat: developer message ", i, " has no content"));
  }
  return absl::OkStatus();
}

// Tool results become <tool_result> blocks of a user turn; consecutive user turns (and a user turn
// following tool results) are joined into one turn of blocks.
std::vector<Turn> MergeToolMessages(std::span<const ChatMessage> messages) {
  std::vector<Turn> merged;
  for (const ChatMessage& m : messages) {
    const bool can_join = !merged.empty() && merged.back().msg.role == "user" && merged.back().has_blocks;
    if (m.role == "tool") {
      Block b{true, m.content, m.tool_call_id};
      if (can_join) {
        merged.back().blocks.push_back(std::move(b));
      } else {
        Turn t;
        t.msg.role = "user";
        t.has_blocks = true;
        t.blocks.push_back(std::move(b));
        merged.push_back(std::move(t));
      }
    } else if (m.role == "user") {
      Block b{false, m.content, ""};
      if (can_join && merged.back().msg.task.empty()) {
        merged.back().blocks.push_back(std::move(b));
      } else {
        Turn t;
        t.msg.role = "user";
        t.msg.content = m.content;
        t.msg.task = m.task;
        t.msg.wo_eos = m.wo_eos;
        t.has_blocks = true;
        t.blocks.push_back(std::move(b));
        merged.push_back(std::move(t));
      }
    } else {
      merged.push_back(Turn{m, false, {}});
    }
  }
  return merged;
}

// Orders the tool results of each user turn like the calls of the latest assistant turn with calls
// (results with unknown ids sort as if answering the first call; ties keep their order).
void SortToolResults(std::vector<Turn>& turns) {
  std::map<std::string, int> call_order;
  for (Turn& t : turns) {
    if (t.msg.role == "assistant" && !t.msg.tool_calls.empty()) {
      call_order.clear();
      for (size_t i = 0; i < t.msg.tool_calls.size(); ++i)
        if (!t.msg.tool_calls[i].id.empty()) call_order[t.msg.tool_calls[i].id] = static_cast<int>(i);
    } else if (t.msg.role == "user" && t.has_blocks && !call_order.empty()) {
      std::vector<Block> results;
      for (const Block& b : t.blocks)
        if (b.tool_result) results.push_back(b);
      if (results.size() <= 1) continue;
      auto order = [&](const Block& b) {
        auto it = call_order.find(b.tool_use_id);
        return it == call_order.end() ? 0 : it->second;
      };
      std::stable_sort(results.begin(), results.end(),
                       [&](const Block& a, const Block& b) { return order(a) < order(b); });
      size_t next = 0;
      for (Block& b : t.blocks)
        if (b.tool_result) b = results[next++];
    }
  }
}

int LastUserIndex(const std::vector<Turn>& turns) {
  for (int i = static_cast<int>(turns.size()) - 1; i >= 0; --i)
    if (IsUserLike(turns[i].msg.role)) return i;
  return -1;
}

// Before the last user turn: assistant turns lose their reasoning, developer turns are dropped.
std::vector<Turn> DropEarlierThinking(std::vector<Turn> turns) {
  const int last_user = LastUserIndex(turns);
  std::vector<Turn> kept;
  for (int i = 0; i < static_cast<int>(turns.size()); ++i) {
    Turn& t = turns[i];
    if (i >= last_user || t.msg.role != "developer") {
      if (i < last_user && t.msg.role == "assistant") t.msg.reasoning_content.clear();
      kept.push_back(std::move(t));
    }
  }
  return kept;
}

absl::Status RenderTools(const std::string& tools_json, PromptBuilder& b) {
  DSV4_ASSIGN_OR_RETURN(Json tools, ParseJson(tools_json, "chat: tools"));
  if (!tools.is_array()) return absl::InvalidArgumentError("chat: tools must be a list");
  std::vector<std::string> schemas;
  for (const auto& tool : tools) {
    if (!tool.is_object() || !tool.contains("function"))
      return absl::InvalidArgumentError("chat: each tool needs a 'function' object (OpenAI format)");
    schemas.push_back(PyDumps(tool["function"]));
  }
  b.Control(ToolsHeader());
  b.Text(absl::StrJoin(schemas, "\n"));
  b.Control(kToolsFooter);
  return absl::OkStatus();
}

bool HasTools(const ChatMessage& m) {
  if (m.tools_json.empty()) return false;
  auto j = ParseJson(m.tools_json, "tools");
  return !j.ok() || !j->empty();  // a malformed list counts, so that its error is reported
}

// The tools and response-format sections that system and developer messages may carry.
absl::Status RenderToolsAndFormat(const ChatMessage& m, PromptBuilder& b) {
  if (HasTools(m)) {
    b.Control("\n\n");
    DSV4_RETURN_IF_ERROR(RenderTools(m.tools_json, b));
  }
  if (!m.response_format_json.empty()) {
    DSV4_ASSIGN_OR_RETURN(Json format, ParseJson(m.response_format_json, "chat: response_format"));
    if (!format.empty() && !format.is_null() && format != false) {
      b.Control("\n\n");
      b.Control(kResponseFormatHeader);
      b.Text(PyDumps(format));
    }
  }
  return absl::OkStatus();
}

absl::Status RenderToolCall(const ChatToolCall& call, PromptBuilder& b) {
  Json args = Json::parse(call.arguments, nullptr, /*allow_exceptions=*/false);
  if (args.is_discarded()) args = Json{{"arguments", call.arguments}};
  if (!args.is_object())
    return absl::InvalidArgumentError(absl::StrCat("chat: arguments of tool call '", call.name, "' are not an object"));
  b.Control(absl::StrCat("<", kDsml, "invoke name=\""));
  b.Text(call.name);
  b.Control("\">\n");
  bool first = true;
  for (const auto& [key, value] : args.items()) {
    if (!first) b.Control("\n");
    first = false;
    b.Control(absl::StrCat("<", kDsml, "parameter name=\""));
    b.Text(key);
    b.Control(absl::StrCat("\" string=\"", value.is_string() ? "true" : "false", "\">"));
    b.Text(value.is_string() ? value.get<std::string>() : PyDumps(value));
    b.Control(absl::StrCat("</", kDsml, "parameter>"));
  }
  b.Control(absl::StrCat("\n</", kDsml, "invoke>"));
  return absl::OkStatus();
}

absl::Status RenderAssistant(const std::vector<Turn>& turns, int index, bool thinking, bool drop_thinking,
                             PromptBuilder& b) {
  const ChatMessage& m = turns[index].msg;
  const bool prev_has_task = index > 0 && !turns[index - 1].msg.task.empty();
  if (thinking && !prev_has_task && (!drop_thinking || index > LastUserIndex(turns))) {
    b.Text(m.reasoning_content);
    b.Control(kThinkEnd);
  }
  b.Text(m.content);
  if (!m.tool_calls.empty()) {
    b.Control(absl::StrCat("\n\n<", kDsml, "tool_calls>\n"));
    for (size_t i = 0; i < m.tool_calls.size(); ++i) {
      if (i > 0) b.Control("\n");
      DSV4_RETURN_IF_ERROR(RenderToolCall(m.tool_calls[i], b));
    }
    b.Control(absl::StrCat("\n</", kDsml, "tool_calls>"));
  }
  if (!m.wo_eos) b.Control(kEos);
  return absl::OkStatus();
}

void RenderUserBlocks(const Turn& t, PromptBuilder& b) {
  for (size_t i = 0; i < t.blocks.size(); ++i) {
    if (i > 0) b.Control("\n\n");
    const Block& block = t.blocks[i];
    if (block.tool_result) b.Control("<tool_result>");
    b.Text(block.text);
    if (block.tool_result) b.Control("</tool_result>");
  }
}

// What follows a turn: nothing when the next turn is not an assistant or reminder turn; else the
// task token, or the assistant prefix and the thinking marker after a user turn.
void RenderTransition(const std::vector<Turn>& turns, int index, bool thinking, bool drop_thinking, PromptBuilder& b) {
  if (index + 1 < static_cast<int>(turns.size())) {
    const std::string& next = turns[index + 1].msg.role;
    if (next != "assistant" && next != "latest_reminder") return;
  }
  const ChatMessage& m = turns[index].msg;
  if (!m.task.empty()) {
    const std::string_view token = TaskTokens().at(m.task);
    if (m.task == "action") {
      b.Control(kAssistant);
      b.Control(thinking ? kThinkStart : kThinkEnd);
    }
    b.Control(token);
  } else if (IsUserLike(m.role)) {
    b.Control(kAssistant);
    const bool open_thinking = thinking && (!drop_thinking || index >= LastUserIndex(turns));
    b.Control(open_thinking ? kThinkStart : kThinkEnd);
  }
}

absl::Status RenderTurn(const std::vector<Turn>& turns, int index, const ChatOptions& options, bool drop_thinking,
                        PromptBuilder& b) {
  const Turn& t = turns[index];
  const ChatMessage& m = t.msg;
  if (index == 0 && options.thinking && options.reasoning_effort == "max") b.Control(kReasoningEffortMax);
  if (m.role == "system") {
    b.Text(m.content);
    DSV4_RETURN_IF_ERROR(RenderToolsAndFormat(m, b));
  } else if (m.role == "developer") {
    b.Control(kUser);
    b.Text(m.content);
    DSV4_RETURN_IF_ERROR(RenderToolsAndFormat(m, b));
  } else if (m.role == "user") {
    b.Control(kUser);
    if (t.has_blocks)
      RenderUserBlocks(t, b);
    else
      b.Text(m.content);
  } else if (m.role == "latest_reminder") {
    b.Control(kLatestReminder);
    b.Text(m.content);
  } else if (m.role == "assistant") {
    DSV4_RETURN_IF_ERROR(RenderAssistant(turns, index, options.thinking, drop_thinking, b));
  }
  RenderTransition(turns, index, options.thinking, drop_thinking, b);
  return absl::OkStatus();
}

// ---- parsing ----------------------------------------------------------------------------------

absl::StatusOr<std::string> ContentText(const Json& c, const std::string& where) {
  if (c.is_null()) return std::string();
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {
    std::vector<std::string> parts;
    for (const auto& part : c) {
      if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
          !part["text"].is_string())
        return absl::InvalidArgumentError(absl::StrCat(where, ": only text content parts are supported"));
      parts.push_back(part["text"].get<std::string>());
    }
    return absl::StrJoin(parts, "\n\n");
  }
  return absl::InvalidArgumentError(absl::StrCat(where, ": content must be a string, null or a list of parts"));
}

absl::StatusOr<std::string> StringField(const Json& m, const char* key, const std::string& where) {
  if (!m.contains(key) || m[key].is_null()) return std::string();
  if (!m[key].is_string()) return absl::InvalidArgumentError(absl::StrCat(where, ": '", key, "' must be a string"));
  return m[key].get<std::string>();
}

absl::StatusOr<ChatToolCall> ParseToolCall(const Json& tc, const std::string& where) {
  if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object())
    return absl::InvalidArgumentError(absl::StrCat(where, ": a tool call needs a 'function' object"));
  const Json& f = tc["function"];
  ChatToolCall call;
  DSV4_ASSIGN_OR_RETURN(call.id, StringField(tc, "id", where));
  if (call.id.empty()) {
    DSV4_ASSIGN_OR_RETURN(call.id, StringField(f, "id", where));
  }
  DSV4_ASSIGN_OR_RETURN(call.name, StringField(f, "name", where));
  if (f.contains("arguments") && !f["arguments"].is_string() && !f["arguments"].is_null()) {
    call.arguments = f["arguments"].dump();
  } else {
    DSV4_ASSIGN_OR_RETURN(call.arguments, StringField(f, "arguments", where));
  }
  return call;
}

absl::StatusOr<ChatMessage> ParseMessage(const Json& j, size_t index) {
  const std::string where = absl::StrCat("messages[", index, "]");
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected an object"));
  ChatMessage m;
  DSV4_ASSIGN_OR_RETURN(m.role, StringField(j, "role", where));
  if (j.contains("content")) {
    DSV4_ASSIGN_OR_RETURN(m.content, ContentText(j["content"], where));
  }
  DSV4_ASSIGN_OR_RETURN(m.reasoning_content, StringField(j, "reasoning_content", where));
  DSV4_ASSIGN_OR_RETURN(m.tool_call_id, StringField(j, "tool_call_id", where));
  DSV4_ASSIGN_OR_RETURN(m.task, StringField(j, "task", where));
  if (j.contains("tools") && !j["tools"].is_null()) m.tools_json = j["tools"].dump();
  if (j.contains("response_format") && !j["response_format"].is_null())
    m.response_format_json = j["response_format"].dump();
  if (j.contains("wo_eos")) m.wo_eos = j["wo_eos"].is_boolean() ? j["wo_eos"].get<bool>() : j["wo_eos"] != 0;
  if (j.contains("tool_calls") && j["tool_calls"].is_array())
    for (const auto& tc : j["tool_calls"]) {
      DSV4_ASSIGN_OR_RETURN(ChatToolCall call, ParseToolCall(tc, where));
      m.tool_calls.push_back(std::move(call));
    }
  return m;
}

}  // namespace

absl::StatusOr<std::string> PythonJsonDumps(std::string_view json_text) {
  DSV4_ASSIGN_OR_RETURN(Json j, ParseJson(json_text, "json"));
  return PyDumps(j);
}

absl::StatusOr<ChatPrompt> RenderDsv4Chat(std::span<const ChatMessage> messages, const ChatOptions& options) {
  DSV4_RETURN_IF_ERROR(Validate(messages, options));
  std::vector<Turn> turns = MergeToolMessages(messages);
  SortToolResults(turns);
  // Tools anywhere keep every turn's reasoning: multi-step tool use needs the whole trace.
  bool drop_thinking = options.drop_thinking;
  for (const ChatMessage& m : messages)
    if (HasTools(m)) drop_thinking = false;
  if (options.thinking && drop_thinking) turns = DropEarlierThinking(std::move(turns));

  PromptBuilder b;
  if (options.add_bos) b.Control(kBos);
  for (int i = 0; i < static_cast<int>(turns.size()); ++i)
    DSV4_RETURN_IF_ERROR(RenderTurn(turns, i, options, drop_thinking, b));
  return b.Take();
}

absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(std::string_view json) {
  DSV4_ASSIGN_OR_RETURN(Json j, ParseJson(json, "chat messages"));
  Json list = j;
  if (j.is_object()) {
    if (!j.contains("messages")) return absl::InvalidArgumentError("chat messages: object without 'messages'");
    list = j["messages"];
  }
  if (!list.is_array()) return absl::InvalidArgumentError("chat messages: expected a list of messages");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    // Every field's type is checked before it is read; a JSON type error that slipped through
    // would otherwise abort a server on a client's request.
    absl::StatusOr<ChatMessage> m = absl::InternalError("");
    try {
      m = ParseMessage(list[i], i);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "]: a field has the wrong JSON type (", e.what(), ")"));
    }
    if (!m.ok()) return m.status();
    out.push_back(std::move(*m));
  }
  if (j.is_object() && j.contains("tools") && !j["tools"].is_null() && !out.empty())
    out[0].tools_json = j["tools"].dump();
  return out;
}

}  // namespace dsv4
