"""Chat messages → prompt text, with the student's bank system block first.

The bank block is the student's system prompt (:func:`ted_sglang.prompts.student_system`
of the rendered bank) wrapped in the system role of the SGLang frontend chat template
the TED programs use, so a served prompt starts with the very bytes distillation and
evaluation sent, and every request of one bank version shares that prefix in the
server's radix cache.  The client's messages follow in their order; a client system
(or developer) message becomes a second system turn right after the bank block, so
the bank block's bytes never change.  Multimodal content: text parts are joined as
they come; one ``image_url`` part with a ``data:`` URI becomes the template's image
token at its place and the request's ``image_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ted_sglang.chat_templates import chat_templates
from ted_sglang.serve.errors import ServeError
from ted_sglang.serve.openai_protocol import ChatMessage

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ChatPrompt:
    """The prompt text for ``/generate`` and its image (a data URI), if any."""

    text: str
    image_data: str | None = None


class ChatFormat:
    """Formats with one SGLang frontend chat template (``sglang.lang.chat_template``)."""

    def __init__(self, template_name: str) -> None:
        self.template = chat_templates().get_chat_template(template_name)
        self.name = template_name
        self.stop = tuple(self.template.stop_str or ())
        self.image_token = self.template.image_token

    def system_block(self, system_prompt: str) -> str:
        """``system_prompt`` in the system role, as the frontend's ``sgl.system`` sends it."""
        prefix, suffix = self.template.get_prefix_and_suffix("system", [])
        return f"{prefix}{system_prompt}{suffix}"

    def prompt(
        self, messages: list[ChatMessage], system_prompt: str | None, system_block: str | None
    ) -> ChatPrompt:
        """The prompt for ``messages`` after the bank's system turn (``system_block``,
        the formatted ``system_prompt``; both None: no bank), ending with the assistant's
        turn opened for generation."""
        history: list[dict[str, Any]] = []
        parts: list[str] = []
        if system_block is not None:
            parts.append(system_block)
            history.append({"role": "system", "content": system_prompt})
        image: str | None = None
        for i, message in enumerate(messages):
            role = _ROLES.get(message.role)
            if role is None:
                raise ServeError(
                    f"messages[{i}]: role {message.role!r} is not supported (no tools)",
                    param=f"messages.{i}.role",
                )
            content, found = self._content(message, i)
            if found is not None:
                if image is not None:
                    raise ServeError(
                        "at most one image per request is supported", param=f"messages.{i}"
                    )
                image = found
            prefix, suffix = self.template.get_prefix_and_suffix(role, history)
            parts.append(f"{prefix}{content}{suffix}")
            history.append({"role": role, "content": content})
        parts.append(self.template.get_prefix_and_suffix("assistant", history)[0])
        return ChatPrompt("".join(parts), image)

    def _content(self, message: ChatMessage, index: int) -> tuple[str, str | None]:
        content = message.content
        if content is None:
            return "", None
        if isinstance(content, str):
            return content, None
        texts: list[str] = []
        image: str | None = None
        for j, part in enumerate(content):
            where = f"messages.{index}.content.{j}"
            if part.type == "text":
                if part.text is None:
                    raise ServeError("a text part needs text", param=where)
                texts.append(part.text)
            elif part.type == "image_url":
                if part.image_url is None:
                    raise ServeError("an image_url part needs image_url.url", param=where)
                if image is not None:
                    raise ServeError("at most one image per request is supported", param=where)
                url = part.image_url.url
                if not url.startswith("data:"):
                    raise ServeError(
                        "images must be sent inline as a data: URI "
                        "(data:image/png;base64,...); URLs are not fetched",
                        param=where,
                    )
                image = url
                texts.append(self.image_token)
            else:
                raise ServeError(f"content part type {part.type!r} is not supported", param=where)
        return "".join(texts), image
