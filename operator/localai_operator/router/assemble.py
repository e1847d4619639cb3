"""A non-stream answer assembled from the stream local sent instead (the router streams non-stream requests
from local so that their first token can be timed): the OpenAI JSON a non-stream call returns, with
usage, finish_reason, tool calls, reasoning and logprobs as the chunks carried them."""

from __future__ import annotations

from typing import Any

from localai_operator.router.paths import StreamFormat

_TEXT_PARTS = ("content", "reasoning", "reasoning_content", "refusal")
_HEAD = ("id", "created", "model", "system_fingerprint")
_COMPLETION_LOGPROBS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


class _Choice:
    __slots__ = ("finish_reason", "function_call", "logprobs", "parts", "role", "tool_calls")

    def __init__(self) -> None:
        self.role = "assistant"
        self.parts: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None


class Assembler:
    """Feed every chunk's payload in order with `add`; `result` is the non-stream answer."""

    def __init__(self, fmt: StreamFormat) -> None:
        self.fmt = fmt
        self.head: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None  # Responses API: the terminal event's response
        self.finished = False  # a finish_reason was seen
        self._choices: dict[int, _Choice] = {}

    def add_all(self, payloads: list[Any]) -> None:
        if self.fmt is not StreamFormat.CHAT or not self._add_text(payloads):
            for payload in payloads:
                self.add(payload)

    def _add_text(self, payloads: list[Any]) -> bool:
        """The common read in one pass: one choice at index 0 whose deltas hold only text and maybe a role,
        then the finish chunk and usage. False, with nothing added, for anything else."""
        head = self.head
        usage = self.usage
        texts: list[str] = []
        role = finish = None
        seen_choice = False
        for payload in payloads:
            if payload.__class__ is not dict:
                return False
            if not head:
                head = {k: payload[k] for k in _HEAD if k in payload}
            chunk_usage = payload.get("usage")
            if chunk_usage is not None:
                if chunk_usage.__class__ is not dict:
                    return False
                if chunk_usage.get("completion_tokens") or chunk_usage.get("prompt_tokens"):
                    usage = chunk_usage
            choices = payload.get("choices")
            if not choices:
                continue
            if choices.__class__ is not list or len(choices) != 1:
                return False
            choice = choices[0]
            delta = choice.get("delta") if choice.__class__ is dict else None
            if (
                delta is None
                or delta.__class__ is not dict
                or choice.get("index", 0) != 0
                or choice.get("logprobs") is not None
            ):
                return False
            seen_choice = True
            for key, value in delta.items():
                if value is None:
                    continue
                if value.__class__ is not str:
                    return False
                if key == "content":
                    texts.append(value)
                elif key == "role":
                    role = value
                else:
                    return False
            if choice.get("finish_reason") is not None:
                finish = choice["finish_reason"]
        self.head = head
        self.usage = usage
        if seen_choice:
            target = self._choices.get(0)
            if target is None:
                target = self._choices[0] = _Choice()
            if texts:
                target.parts.setdefault("content", []).extend(texts)
            if role is not None:
                target.role = role
            if finish is not None:
                target.finish_reason = finish
                self.finished = True
        return True

    def add(self, payload: Any) -> None:
        if payload.__class__ is not dict:
            return
        if self.fmt is StreamFormat.RESPONSES:
            response = payload.get("response")
            if payload.get("type") in ("response.completed", "response.incomplete") and isinstance(
                response, dict
            ):
                self.final = response
            return
        if not self.head:
            self.head = {k: payload[k] for k in _HEAD if k in payload}
        usage = payload.get("usage")
        # LocalAI v3.12.0 puts a usage object of zeros on every chunk; the last one with counts wins.
        if (
            usage
            and usage.__class__ is dict
            and (usage.get("completion_tokens") or usage.get("prompt_tokens"))
        ):
            self.usage = usage
        for raw in payload.get("choices") or ():
            if raw.__class__ is not dict:
                continue
            delta = raw.get("delta")
            # The common chunk, one token of text: nothing else to merge.
            if (
                delta is not None
                and delta.__class__ is dict
                and len(delta) == 1
                and raw.get("finish_reason") is None
                and raw.get("logprobs") is None
                and raw.get("index", 0) in self._choices
            ):
                content = delta.get("content")
                if content.__class__ is str:
                    self._choices[raw.get("index", 0)].parts.setdefault("content", []).append(content)
                    continue
            self._add_choice(raw)

    def _add_choice(self, raw: dict[str, Any]) -> None:
        index = raw.get("index", 0)
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        if raw.get("finish_reason") is not None:
            choice.finish_reason = raw["finish_reason"]
            self.finished = True
        logprobs = raw.get("logprobs")
        if isinstance(logprobs, dict):
            merged = choice.logprobs if choice.logprobs is not None else {}
            choice.logprobs = merged
            for key, value in logprobs.items():
                if isinstance(value, list):
                    merged.setdefault(key, []).extend(value)
        if self.fmt is StreamFormat.COMPLETION:
            text = raw.get("text")
            if isinstance(text, str):
                choice.parts.setdefault("text", []).append(text)
            return
        delta = raw.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("role"), str):
            choice.role = delta["role"]
        for key in _TEXT_PARTS:
            value = delta.get(key)
            if isinstance(value, str):
                choice.parts.setdefault(key, []).append(value)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._add_tool_call(choice, call)
        function_call = delta.get("function_call")
        if isinstance(function_call, dict):
            merged_call = choice.function_call if choice.function_call is not None else {}
            choice.function_call = merged_call
            if function_call.get("name"):
                merged_call["name"] = function_call["name"]
            merged_call["arguments"] = merged_call.get("arguments", "") + str(
                function_call.get("arguments") or ""
            )

    @staticmethod
    def _add_tool_call(choice: _Choice, call: dict[str, Any]) -> None:
        index = call.get("index", len(choice.tool_calls))
        merged = choice.tool_calls.get(index)
        if merged is None:
            merged = choice.tool_calls[index] = {
                "id": "",
                "type": "function",
                "function": {"name": "", "arguments": ""},
            }
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            if function.get("name"):
                merged["function"]["name"] = function["name"]
            merged["function"]["arguments"] += str(function.get("arguments") or "")

    def result(self) -> dict[str, Any]:
        if self.fmt is StreamFormat.RESPONSES:
            return self.final or {}
        chat = self.fmt is StreamFormat.CHAT
        choices = [
            self._choice_result(index, choice, chat) for index, choice in sorted(self._choices.items())
        ]
        out: dict[str, Any] = {
            "id": self.head.get("id", ""),
            "object": "chat.completion" if chat else "text_completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in self.head:
            out["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            out["usage"] = self.usage
        return out

    @staticmethod
    def _choice_result(index: int, choice: _Choice, chat: bool) -> dict[str, Any]:
        logprobs: Any = choice.logprobs
        if chat:
            message: dict[str, Any] = {"role": choice.role}
            content = "".join(choice.parts["content"]) if "content" in choice.parts else None
            message["content"] = (
                None if content is None and (choice.tool_calls or choice.function_call) else (content or "")
            )
            for key in ("reasoning", "reasoning_content", "refusal"):
                if key in choice.parts:
                    message[key] = "".join(choice.parts[key])
            if choice.tool_calls:
                message["tool_calls"] = [choice.tool_calls[i] for i in sorted(choice.tool_calls)]
            if choice.function_call is not None:
                message["function_call"] = choice.function_call
            return {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason,
            }
        if logprobs is not None:
            logprobs = {key: logprobs.get(key, []) for key in _COMPLETION_LOGPROBS} | logprobs
        return {
            "index": index,
            "text": "".join(choice.parts.get("text", ())),
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
        }
